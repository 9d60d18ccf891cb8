"""LDB vs PULCHRA on the same validation chains' Cα traces, scored with the same metrics.

PULCHRA 3.07 (C++) through the PyPI package ``pypulchra`` (``pip install pypulchra``; builds a
small C++ extension), run with its defaults (``run_from_pdb_str``: backbone + side chains,
Cα optimisation on, so PULCHRA moves Cα slightly; ``ca_rmsd`` reports by how much).
Its PDB output is mapped to the slot layout by residue number and atom name and scored with
:func:`openmm_ldb.metrics.chain_metrics` exactly like the LDB output (same chains, same
reference, same segments).  Timings are CPU wall time of the reconstruction call alone
(``Backmapper.sample`` after a warm-up, ``pypulchra.run_from_pdb_str``), per residue.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/pulchra_compare.py --model model.pt --max-chains 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from importlib import metadata

import numpy as np

from openmm_ldb import evaluate as ev
from openmm_ldb import metrics
from openmm_ldb import residues as rc
from openmm_ldb.topology import read_cg_topology

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "pulchra_compare.json")
COMPARE_KEYS = [("heavy_rmsd", "heavy-atom RMSD (Å)", "{:.3f}"),
                ("backbone_rmsd", "backbone N,C,O RMSD (Å)", "{:.3f}"),
                ("sidechain_rmsd", "side-chain RMSD (Å)", "{:.3f}"), ("ca_rmsd", "Cα RMSD (Å)", "{:.3f}"),
                ("chi1_acc", "χ1 accuracy (<40°)", "{:.3f}"), ("chi12_acc", "χ1+2 accuracy", "{:.3f}"),
                ("bond_validity", "bond validity (±0.1 Å)", "{:.3f}"), ("ged", "GED (added+broken)", "{:.1f}"),
                ("ged_added", "  GED added", "{:.1f}"), ("ged_broken", "  GED broken", "{:.1f}"),
                ("clashes_per_1000", "clashes / 1000 atoms", "{:.1f}"),
                ("clashes_per_1000_ref", "  reference clashes / 1000", "{:.2f}"),
                ("chirality_L", "L-chirality", "{:.3f}"), ("cis_trans_agreement", "cis/trans agreement", "{:.3f}"),
                ("disulfides_recovered", "disulfides recovered", "{:.2f}"),
                ("ms_per_residue", "time (ms/residue, CPU)", "{:.3f}")]


def ca_pdb_text(chain) -> str:
    """Cα-only PDB text of a chain (chain A, residues numbered 1..N)."""
    lines = []
    for i, (rt, xyz) in enumerate(zip(chain.restype, chain.xyz[0, :, 1])):
        lines.append(f"ATOM  {i + 1:5d}  CA  {rc.RESTYPES_3[int(rt)]} A{i + 1:4d}    "
                     f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00           C  ")
    lines.append("TER")
    lines.append("END")
    return "\n".join(lines) + "\n"


def pdb_to_slots(text: str, restype: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PULCHRA's PDB output -> ([N, NUM_SLOTS, 3] Å with NaN where missing, [N, NUM_SLOTS] present).

    Residue i is the one numbered i+1 (as written by :func:`ca_pdb_text`); atoms by name (with
    ``residues.canonical_atom_name`` aliases), hydrogens ignored; a residue-name mismatch raises.
    """
    n = len(restype)
    xyz = np.full((n, rc.NUM_SLOTS, 3), np.nan)
    present = np.zeros((n, rc.NUM_SLOTS), dtype=bool)
    index = {r: {a: s for s, a in enumerate(rc.slot_names(r)) if a and s <= rc.OXT_SLOT} for r in rc.RESTYPES_3}
    for line in text.splitlines():
        if not line.startswith(("ATOM", "HETATM")):
            continue
        name = line[12:16].strip()
        resname = rc.canonical_residue_name(line[17:20].strip())
        i = int(line[22:26]) - 1
        if not 0 <= i < n:
            continue
        expect = rc.RESTYPES_3[int(restype[i])]
        if resname != expect:
            raise ValueError(f"PULCHRA residue {i + 1} is {resname}, expected {expect}")
        if name.startswith("H") or (name[:1].isdigit() and name[1:2] == "H"):
            continue
        slot = index[resname].get(rc.canonical_atom_name(resname, name))
        if slot is None:
            continue
        xyz[i, slot] = [float(line[30:38]), float(line[38:46]), float(line[46:54])]
        present[i, slot] = True
    return xyz, present


def run_pulchra(chains, segments) -> list[dict]:
    import pypulchra

    rows = []
    if chains:  # warm-up (page in the extension, first allocations)
        pypulchra.run_from_pdb_str(ca_pdb_text(chains[0]))
    for chain, seg in zip(chains, segments):
        text = ca_pdb_text(chain)
        t0 = time.perf_counter()
        result = pypulchra.run_from_pdb_str(text)
        dt = time.perf_counter() - t0
        if not result.pdb_str:
            rows.append({"name": chain.name, "n_residues": len(chain.restype), "failed": True})
            continue
        xyz, present = pdb_to_slots(result.pdb_str, chain.restype)
        m = ev.score_chain(chain, xyz, present, seg)
        m.pop("details")
        m.update(name=chain.name, ms_per_residue=1000 * dt / len(chain.restype), sample_ms=1000 * dt,
                 missing_atoms=int(((chain.present[:, : metrics.HEAVY] > 0) & ~present[:, : metrics.HEAVY]).sum()))
        rows.append(m)
    return rows


def _fmt(v, spec):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return spec.format(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="exported LDB model (default: shipped model)")
    p.add_argument("--data", default=None, help="data folder (default $OPENMM_LDB_DATA or ../shared/data)")
    p.add_argument("--max-chains", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads for LDB (PULCHRA is single-threaded)")
    p.add_argument("--steps", type=int, default=None, help="LDB denoising steps (default: the Backmapper default)")
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    skipped = Counter()
    chains = ev.validation_chains(args.data, args.max_chains, skipped)
    if not chains:
        print("no validation chains found", file=sys.stderr)
        return 1
    # the segments the backmapper uses (plan.segment): chain starts and Cα–Cα > 4.5 Å breaks
    segments = [read_cg_topology(ev.cg_topology(c)).segments(c.xyz[0, :, 1]) for c in chains]
    print(f"{len(chains)} validation chains, {sum(len(c.restype) for c in chains)} residues")

    ldb = ev.evaluate(args.model, chains, samples=1, out_dir=None, threads=args.threads, device="cpu",
                      steps=args.steps, verbose=False)
    pul = run_pulchra(chains, segments)
    pul_ok = [r for r in pul if not r.get("failed")]
    keys = [k for k, _, _ in COMPARE_KEYS]
    mean_l = metrics.summarize(ldb["chains"], keys)
    mean_p = metrics.summarize(pul_ok, keys)
    mean_l["ms_per_residue_pooled"] = ldb["mean"].get("ms_per_residue_pooled")
    n_res = sum(r["n_residues"] for r in pul_ok)
    mean_p["ms_per_residue_pooled"] = sum(r["sample_ms"] for r in pul_ok) / max(n_res, 1)

    try:
        pul_version = metadata.version("pypulchra")
    except metadata.PackageNotFoundError:
        pul_version = "?"
    title = (f"LDB ({args.model or 'shipped model'}) vs PULCHRA (pypulchra {pul_version}), "
             f"mean over {len(chains)} chains")
    print(title)
    print(f"{'metric':30s} {'LDB':>10s} {'PULCHRA':>10s}")
    print("-" * 52)
    for k, label, spec in COMPARE_KEYS:
        print(f"{label:30s} {_fmt(mean_l.get(k), spec):>10s} {_fmt(mean_p.get(k), spec):>10s}")
    print(f"{'  pooled ms/residue':30s} {_fmt(mean_l['ms_per_residue_pooled'], '{:.3f}'):>10s} "
          f"{_fmt(mean_p['ms_per_residue_pooled'], '{:.3f}'):>10s}")
    print()
    print(f"{'chain':34s} {'N':>4s} {'heavy LDB':>9s} {'PULCHRA':>8s} {'chi1 LDB':>8s} {'PULCHRA':>8s}")
    by_name = {r["name"]: r for r in pul_ok}
    for r in ldb["chains"]:
        q = by_name.get(r["name"], {})
        print(f"{r['name'][:34]:34s} {r['n_residues']:4d} {_fmt(r['heavy_rmsd'], '{:.2f}'):>9s} "
              f"{_fmt(q.get('heavy_rmsd'), '{:.2f}'):>8s} {_fmt(r['chi1_acc'], '{:.2f}'):>8s} "
              f"{_fmt(q.get('chi1_acc'), '{:.2f}'):>8s}")

    out = {"title": title, "n_chains": len(chains), "n_residues": int(sum(len(c.restype) for c in chains)),
           "model": ldb["model"], "pulchra_package": f"pypulchra {pul_version}",
           "settings": {"ldb_steps": args.steps, "torch_threads": args.threads, "device": "cpu",
                        "ldb_mode": "deterministic", "pulchra_options": "defaults (run_from_pdb_str)",
                        "timing": "wall time of the reconstruction call only, after one warm-up call",
                        "metric_definitions": "openmm_ldb.metrics module docstring"},
           "mean": {"ldb": mean_l, "pulchra": mean_p},
           "chains": {"ldb": ldb["chains"], "pulchra": pul}, "skipped": dict(skipped)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(ev._jsonable(out), f, indent=1)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
