"""Noised Cα traces written as PDB files, backmapped by the CLI as a user would.

    OPENMM_LDB_DATA=../shared/data python benchmarks/noised_pdb.py [--chains 40] [--noise 0.3]

Each validation chain's Cα (Gaussian noise ``--noise`` Å on every coordinate, seeded per chain)
is written as a Cα-only PDB file: one chain id, residue numbers as the structure has them (a gap
where residues are missing, as a PDB file shows one).  One ``openmm-ldb backmap`` call (defaults,
``--threads 1``) backmaps them all.  Reported per chain and on average: the chains the output
has against the segments the file states (a split the file does not make is a failure), the CLI's
warning lines, and the reference-free and reference scores of the output (clashes per 1000 heavy
atoms, GED, bond validity, heavy-atom RMSD to the structure).  Writes
``benchmarks/results/noised_pdb.json``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import mdtraj
import numpy as np
from openmm.app import Element, PDBFile, Topology

from _results import write_result
from openmm_ldb import data, metrics
from openmm_ldb import evaluate as ev
from openmm_ldb import residues as rc


def write_ca_pdb(chain: data.Chain, path: str, noise: float, seed: int) -> None:
    """Cα-only PDB of ``chain`` with Gaussian noise (Å); residue numbers jump at segment breaks."""
    top = Topology()
    c = top.addChain("A")
    number = 0
    for i, rt in enumerate(chain.restype):
        number += 1 if i == 0 or chain.segment[i] == chain.segment[i - 1] else 2
        res = top.addResidue(rc.RESTYPES_3[int(rt)], c, id=str(number))
        top.addAtom("CA", Element.getBySymbol("C"), res)
    ca = chain.xyz[0, :, 1] + np.random.default_rng(seed).normal(0.0, noise, chain.xyz[0, :, 1].shape)
    with open(path, "w") as fh:
        PDBFile.writeFile(top, ca, fh, keepIds=True)          # plain numbers are Å; our residue numbers


def score(out_pdb: str, ref: data.Chain) -> dict:
    traj = mdtraj.load(out_pdb)
    prot = [r for r in traj.topology.residues if r.is_protein and r.name not in ("ACE", "NME")]
    chains_out = len({r.chain.index for r in prot})
    pred = data.chain_from_mdtraj(traj, name=out_pdb)
    if pred is None or len(pred.restype) != len(ref.restype):
        return {"chains_out": chains_out, "error": "residue count"}
    # the output's own segments (one OpenMM chain per segment the backmapper made)
    seg = np.cumsum(np.r_[0, np.diff([r.chain.index for r in prot]) != 0])
    m = metrics.chain_metrics(pred.xyz[0], ref.xyz[0], ref.present, ref.restype, seg,
                              pred_present=pred.present)
    return {"chains_out": chains_out, "heavy_rmsd": m["heavy_rmsd"], "clashes_per_1000": m["clashes_per_1000"],
            "ged": m["ged"], "ged_added": m["ged_added"], "ged_broken": m["ged_broken"],
            "bond_validity": m["bond_validity"], "chi1_acc": m["chi1_acc"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chains", type=int, default=40)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "noised_pdb.json"))
    a = p.parse_args()
    chains = ev.validation_chains(max_chains=a.chains)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for k, ch in enumerate(chains):
            path = os.path.join(tmp, f"ca_{k:03d}.pdb")
            write_ca_pdb(ch, path, a.noise, seed=k)
            files.append(path)
        out_dir = os.path.join(tmp, "aa")
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", "import sys; from openmm_ldb.cli import main; sys.exit(main())", "backmap", *files, "--out-dir", out_dir,
                              "--threads", "1", "--quiet"], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if run.returncode != 0:
            print(run.stdout, run.stderr)
            raise SystemExit(f"openmm-ldb backmap failed ({run.returncode})")
        warnings = [line for line in run.stderr.splitlines() if "warning" in line]
        rows = []
        for k, (ch, path) in enumerate(zip(chains, files)):
            out_pdb = os.path.join(out_dir, os.path.basename(path))
            row = {"chain": ch.name, "residues": len(ch.restype), "segments_in_file": int(ch.segment.max() + 1),
                   "warnings": [w for w in warnings if os.path.basename(path) in w]}
            row.update(score(out_pdb, ch))
            rows.append(row)
            print(f"{ch.name[:30]:30s} {row['residues']:4d} res  chains {row['chains_out']:2d} (file: "
                  f"{row['segments_in_file']})  clashes {row.get('clashes_per_1000', float('nan')):5.2f}  GED "
                  f"{row.get('ged', float('nan')):4.1f}  bonds {row.get('bond_validity', float('nan')):.4f}  "
                  f"heavy {row.get('heavy_rmsd', float('nan')):.2f} Å", flush=True)
    ok = [r for r in rows if "error" not in r]
    mean = {k: float(np.mean([r[k] for r in ok])) for k in
            ("heavy_rmsd", "clashes_per_1000", "ged", "bond_validity", "chi1_acc")}
    split = sum(r["chains_out"] != r["segments_in_file"] for r in rows)
    print(f"== {len(rows)} files, {split} with chains the file does not make; clashes {mean['clashes_per_1000']:.2f}  "
          f"GED {mean['ged']:.2f}  bonds {mean['bond_validity']:.4f}  heavy {mean['heavy_rmsd']:.3f} Å; "
          f"{len(warnings)} warning line(s); CLI {seconds:.1f} s")
    result = {"command": "python benchmarks/noised_pdb.py " + " ".join(sys.argv[1:]), "noise": a.noise,
              "files": len(rows), "files_with_extra_chains": split, "mean": mean, "warnings": warnings,
              "cli_seconds": seconds, "rows": rows}
    write_result(a.out, result)


if __name__ == "__main__":
    main()
