"""Clean atoms from frames of real CG runs: clashes, GED and bond validity per CG model.

    OPENMM_LDB_DATA=../shared/data python benchmarks/cg_traces.py [--proteins 5] [--frames 20]
        [--split val|train] [--settings '{"backbone_relax_steps": 0}'] [--per-frame] [--baseline]

Runs the project's own CG models on held-out proteins (``--split val``, the validation clusters;
``--split train`` for choosing settings) and backmaps every frame with the default best guess,
as ``LDBReporter`` does (a coherent stream; ``--per-frame`` backmaps every frame on its own):

* ``go``: the Go model (``cg.GoModel``, contacts from the native Cα map), stiff bonds;
* ``go_soft``: the same with MOFF-like soft bonds (k = 1000 kJ/mol/nm², Cα–Cα 3.8 ± 0.5 Å);
* ``calvados``: one chain of the protein's sequence with CALVADOS2 in a periodic box (a coil);
* ``condensate``: four α-synuclein chains with CALVADOS2 in a 10 nm periodic box (one chain id
  per copy), frames wrapped as OpenMM writes them.

Each frame is scored without a reference: heavy-atom clashes (< 2.2 Å, more than three bonds
apart) per 1000 heavy atoms, GED (bonds the atoms add + bonds they break), bond validity (bond
lengths within 0.1 Å of ideal) and the largest Cα move (Å); GED per chain.  ``--baseline``
backmaps the same frames with the side-chain steps only as well (the function before its
backbone stages: ``SIDE_CHAINS_ONLY``).  Writes
``benchmarks/results/cg_traces.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib

import numpy as np
import openmm
from openmm import unit

from _results import write_result
from openmm_ldb import cg
from openmm_ldb import evaluate as ev
from openmm_ldb import residues as rc
from openmm_ldb.backmapper import Backmapper
from openmm_ldb.data import list_chains, read_chain

SOFT_BOND_K = 1000.0       # kJ/mol/nm^2, OpenABC MOFF's bond constant
# human alpha-synuclein (UniProt P37840), a disordered protein: four copies make the condensate
ASYN = ("MDVFMKGLSKAKEGVVAAAEKTKQGVAEAAGKTKEGVLYVGSKTKEGVVHGVATVAEKTKEQVTNVGGAVVTGVTAVAQKTVEGAGSIAAATGFVKKDQ"
        "LGKNEEGAPQEGILEDMPVDPDNEAYEMPSEEGYQDYEPEA")
STEPS_BEFORE = 2000
INTERVAL = 500


def _chains(split: str, count: int, min_res: int = 50, max_res: int = 160):
    """``count`` chains of ``split`` ('val': the validation chains; 'train': one per training
    cluster in a fixed order), 50-160 residues, one segment (a Go model needs a whole chain)."""
    if split == "val":
        pool = ev.validation_chains(max_chains=4 * count, min_res=min_res, max_res=max_res)
    else:
        rows = [r for r in list_chains() if r["split"] == "train" and min_res <= int(r["nres"]) <= max_res]
        seen, pool = set(), []
        for r in sorted(rows, key=lambda r: (zlib.crc32(r["cluster30"].encode()), r["file"])):
            if r["cluster30"] in seen or len(pool) >= 4 * count:
                continue
            seen.add(r["cluster30"])
            try:
                c = read_chain(r["path"], r["chain"])
            except Exception:  # noqa: BLE001 -- unreadable: skip
                continue
            c = ev.clean_chain(c) if c is not None else None
            if c is not None and min_res <= len(c.restype) <= max_res:
                pool.append(c)
    whole = [c for c in pool if c.segment.max() == 0]
    return whole[:count]


def _run(topology, system, positions, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """([frames, particles, 3] nm, box vectors nm): frames every INTERVAL steps after STEPS_BEFORE (10 fs steps, 5 fs
    for several chains in a box: their random-coil start is tighter)."""
    step = 5.0 if topology.getNumChains() > 1 else 10.0
    sim = cg.make_simulation(topology, system, positions, seed=seed, timestep=step * unit.femtosecond)
    sim.minimizeEnergy()      # random-coil starts of several chains may overlap
    sim.step(STEPS_BEFORE)
    out = []
    for _ in range(frames):
        sim.step(INTERVAL)
        state = sim.context.getState(getPositions=True, enforcePeriodicBox=system.usesPeriodicBoundaryConditions())
        out.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.array(out), sim.context.getState().getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)


def frame_scores(plan, aa_positions_nm: np.ndarray) -> dict:
    """Reference-free scores of one backmapped frame (heavy atoms, OXT): the plan's
    :class:`~openmm_ldb.metrics.FrameCheck`, the definitions of ``metrics.chain_metrics``."""
    figures = plan.frame_check.of_positions(aa_positions_nm * 10.0)
    return {k: float(figures[k]) for k in ("clashes_per_1000", "ged", "ged_added", "ged_broken", "bond_validity")}


def systems(chain, kind: str, seed: int):
    """(topology, system, positions nm) of one CG model of ``chain``."""
    top = ev.cg_topology(chain)
    ca = ev.ca_positions_nm(chain)
    if kind in ("go", "go_soft"):
        kw = {"bond_k": SOFT_BOND_K / 4.184} if kind == "go_soft" else {}
        go = cg.GoModel(top, ca, **kw)
        return top, go.create_system(), go.native_positions
    seq = "".join(rc.RESTYPES_1[int(r)] for r in chain.restype)
    if kind == "calvados":
        top = cg.ca_topology([seq])
        box = 30.0
    else:
        top = cg.ca_topology([ASYN] * 4)
        box = 10.0
    system = cg.hps_system(top, box)
    return top, system, cg.random_coil_positions(top, box, seed=seed)


# the function before the backbone stages: no peptide-plane turns, no Cα(i)–Cα(i+2) cap, no
# backbone-aware clash relaxation (side-chain steps only)
SIDE_CHAINS_ONLY = {"tau_rounds": 0, "max_ca_i2": 99.0, "backbone_relax_steps": 0}


def _score_run(bm, name, kind, chain, top, system, frames, box, per_frame) -> dict:
    """Backmap ``frames`` as the reporter does (a coherent stream unless ``per_frame``) and score
    each frame; one row of the results."""
    plan = bm.plan(top, frames[0], system=system, box_vectors=box)
    t0 = time.perf_counter()
    shifts, out = [], []
    state = None if per_frame else {}
    for f in frames:
        one: dict = {}
        xyz = bm.sample(plan, f, info=one, stream_state=state, box_vectors=box, frame_checks=False)
        out.append(xyz[0, 0] / 10.0)
        shifts.append(float(one["ca_shift"].max()))
    ms = 1000 * (time.perf_counter() - t0) / (len(frames) * plan.mapping.n_residues)
    scores = [frame_scores(plan, x) for x in out]
    row = {"variant": name, "model": kind, "protein": "4 x alpha-synuclein" if kind == "condensate" else chain.name,
           "residues": plan.mapping.n_residues, "chains": int(plan.segment.max() + 1), "ms_per_residue": ms,
           "max_ca_shift": float(np.max(shifts)), "mean_ca_shift": float(np.mean(shifts))}
    n_chains = top.getNumChains()
    for s in scores:                      # GED per chain, as the validation figures count it
        s["ged_per_chain"] = s["ged"] / n_chains
    for key in ("clashes_per_1000", "ged", "ged_per_chain", "ged_added", "ged_broken", "bond_validity"):
        v = np.array([s[key] for s in scores])
        row[key] = float(v.mean())
        row[key + "_max"] = float(v.max() if key != "bond_validity" else v.min())
    print(f"{name[:16]:16s} {kind:10s} {row['protein'][:26]:26s} {row['residues']:4d} res  clashes "
          f"{row['clashes_per_1000']:5.2f} (max {row['clashes_per_1000_max']:5.2f})  GED/chain "
          f"{row['ged_per_chain']:5.2f}  bonds {row['bond_validity']:.4f}  Cα shift {row['mean_ca_shift']:.2f} "
          f"(max {row['max_ca_shift']:.2f})  {ms:.2f} ms/res", flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proteins", type=int, default=5)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--split", default="val", choices=["val", "train"])
    p.add_argument("--models", default="go,go_soft,calvados,condensate")
    p.add_argument("--settings", default=None, help="JSON of sampler settings on top of the model card's")
    p.add_argument("--per-frame", action="store_true", help="backmap every frame on its own (no coherent stream)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline", action="store_true",
                   help="also backmap every frame with the side-chain steps only (the function before the "
                        "backbone stages), on the same frames")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cg_traces.json"))
    a = p.parse_args()
    variants = {"default": json.loads(a.settings) if a.settings else None}
    if a.baseline:
        variants["side chains only"] = SIDE_CHAINS_ONLY
    bms = {name: Backmapper(threads=a.threads, settings=st) for name, st in variants.items()}
    chains = _chains(a.split, a.proteins)
    kinds = a.models.split(",")
    rows = []
    for kind in kinds:
        todo = chains[:1] if kind == "condensate" else chains     # the condensate is one system
        for ci, chain in enumerate(todo):
            top, system, pos = systems(chain, kind, seed=ci)
            frames, box = _run(top, system, pos, a.frames, seed=ci)
            pbc = box if system.usesPeriodicBoundaryConditions() else None
            for name, bm in bms.items():          # every variant on the same frames
                rows.append(_score_run(bm, name, kind, chain, top, system, frames, pbc, a.per_frame))
    summary = {}
    for name in bms:
        for kind in kinds:
            r = [x for x in rows if x["model"] == kind and x["variant"] == name]
            s = {k: float(np.mean([x[k] for x in r])) for k in
                 ("clashes_per_1000", "ged_per_chain", "bond_validity", "mean_ca_shift", "max_ca_shift",
                  "ms_per_residue")}
            s["clashes_per_1000_worst_protein"] = float(max(x["clashes_per_1000"] for x in r))
            s["ged_per_chain_worst_protein"] = float(max(x["ged_per_chain"] for x in r))
            s["bond_validity_worst_protein"] = float(min(x["bond_validity"] for x in r))
            summary.setdefault(name, {})[kind] = s
            print(f"== {name:16s} {kind:10s} clashes {s['clashes_per_1000']:.2f} (worst protein "
                  f"{s['clashes_per_1000_worst_protein']:.2f})  GED/chain {s['ged_per_chain']:.2f} (worst "
                  f"{s['ged_per_chain_worst_protein']:.2f})  bonds {s['bond_validity']:.4f} (worst "
                  f"{s['bond_validity_worst_protein']:.4f})  Cα shift {s['mean_ca_shift']:.2f} (max "
                  f"{s['max_ca_shift']:.2f})  {s['ms_per_residue']:.2f} ms/res")
    result = {"command": "python benchmarks/cg_traces.py " + " ".join(sys.argv[1:]),
              "split": a.split, "frames": a.frames, "interval": INTERVAL, "variants": variants,
              "coherent": not a.per_frame, "summary": summary, "rows": rows,
              "torch_threads": a.threads, "openmm": openmm.__version__}
    write_result(a.out, result)


if __name__ == "__main__":
    main()
