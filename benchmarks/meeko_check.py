"""Do backmapped snapshots go into docking receptor preparation as they are?

Runs a Go-model CG simulation of each structure (the GB1 demo and real proteins of the data),
backmaps snapshots with the defaults (best guess, hydrogens, no minimization) through
``SnapshotReporter``, and runs Meeko's
``mk_prepare_receptor.py --read_pdb X -p`` (AutoDock Vina's receptor preparation) on it, without
``--allow_bad_res``.  Also counts atom pairs of different residues (hydrogens included) within
bonding distance (sum of covalent radii + 0.3 Å) that are not bonded, which Meeko rejects.

    python benchmarks/meeko_check.py --meeko /path/to/mk_prepare_receptor.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
from openmm.app import PDBFile

from openmm_ldb import metrics
from openmm_ldb.backmapper import Backmapper

RADII = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66, "S": 1.05}


def bad_contacts(topology, xyz_nm) -> list[str]:
    """Pairs of atoms in different residues within r_i + r_j + 0.3 Å that the topology does not
    bond, as 'RES12:H -- RES40:O 1.02'."""
    atoms = list(topology.atoms())
    xyz = np.asarray(xyz_nm) * 10.0
    bonded = {(min(a.index, b.index), max(a.index, b.index)) for a, b in topology.bonds()}
    rad = np.array([RADII.get(a.element.symbol if a.element else a.name[0], 0.76) for a in atoms])
    i, j, d = metrics.close_pairs(xyz, 2.4)
    res = np.array([a.residue.index for a in atoms])
    out = []
    for x, y, dd in zip(i, j, d):
        if res[x] != res[y] and dd < rad[x] + rad[y] + 0.3 and (min(x, y), max(x, y)) not in bonded:
            ax, ay = atoms[x], atoms[y]
            out.append(f"{ax.residue.name}{ax.residue.id}:{ax.name} -- {ay.residue.name}{ay.residue.id}:{ay.name} "
                       f"{dd:.2f}")
    return out


def declared_disulfides(path) -> list[float]:
    """SG–SG length (Å) of every disulfide the file declares: its SSBOND records, whose last
    column is the length in the frame (OpenMM's PDBFile would also bond any two SG within 3 Å on
    its own, so its topology does not tell what the file declares)."""
    return [float(line[73:78]) for line in open(path) if line.startswith("SSBOND")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meeko", default="mk_prepare_receptor.py")
    p.add_argument("--structures", nargs="*", default=["kortemme_ddg/1EL1.pdb.gz", "kortemme_ddg/1BNI.pdb.gz"],
                   help="paths under <data>/structures")
    p.add_argument("--interval", type=int, default=1000)
    p.add_argument("--snapshots", type=int, default=3)
    p.add_argument("--model", default=None)
    p.add_argument("--settings", default=None, help="JSON of sampler settings for the snapshots' backmapper")
    p.add_argument("--out", default="benchmarks/results/meeko_check.json")
    a = p.parse_args()
    from openmm_ldb import cg
    from openmm_ldb.snapshots import SnapshotReporter

    data = os.environ.get("OPENMM_LDB_DATA", "../shared/data")
    structures = [str(cg.demo_structure_path())] + [os.path.join(data, "structures", p) for p in a.structures]
    bm = Backmapper(a.model, threads=1, settings=json.loads(a.settings) if a.settings else None)
    rows = []
    work = tempfile.mkdtemp()
    for path in structures:
        if not os.path.exists(path):
            continue
        try:
            go = cg.GoModel.from_structure(path, chains=[0])
        except ValueError as e:              # first chain not a protein
            print(path, "skipped:", e)
            continue
        sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=1)
        name = os.path.basename(path).split(".")[0]
        out_dir = os.path.join(work, name)
        rep = SnapshotReporter(out_dir, a.interval, backmapper=bm)
        sim.reporters.append(rep)
        sim.step(a.interval * a.snapshots)
        rep.close()
        for pdb in sorted(f for f in os.listdir(out_dir) if f.endswith(".pdb")):
            fpath = os.path.join(out_dir, pdb)
            proc = subprocess.run([a.meeko, "--read_pdb", fpath, "-o", fpath[:-4] + "_rec", "-p"],
                                  capture_output=True, text=True)
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            pdbf = PDBFile(fpath)
            bad = bad_contacts(pdbf.topology, pdbf.getPositions(asNumpy=True)._value)
            rows.append({"structure": name, "snapshot": pdb, "residues": pdbf.topology.getNumResidues(),
                         "meeko_ok": proc.returncode == 0,
                         "bad_contacts": len(bad), "bad_pairs": bad,
                         "declared_ss_lengths": [round(x, 2) for x in declared_disulfides(fpath)],
                         "meeko_tail": tail if proc.returncode else []})
            print(name, pdb, rows[-1]["meeko_ok"], rows[-1]["bad_contacts"], bad[:8], flush=True)
    out = {"n": len(rows), "meeko_passed": sum(r["meeko_ok"] for r in rows),
           "chains_with_bad_contacts": sum(r["bad_contacts"] > 0 for r in rows),
           "declared_disulfides": sum(len(r["declared_ss_lengths"]) for r in rows),
           "declared_disulfides_open": sum(sum(x > 2.2 for x in r["declared_ss_lengths"]) for r in rows),
           "rows": rows}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"Meeko accepted {out['meeko_passed']} of {out['n']}; chains with inter-residue contacts "
          f"within bonding distance: {out['chains_with_bad_contacts']}; declared disulfides "
          f"{out['declared_disulfides']}, of them longer than 2.2 Å: {out['declared_disulfides_open']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
