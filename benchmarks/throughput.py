"""Batched backmapping throughput on CPU (the default best guess), median of repeats, and the
cost of the first call after loading.

    python benchmarks/throughput.py --residues 100 --batch 1 8 32 --threads 1

Reports ms per frame and residue-frames per second for a real 100-residue protein Cα trace
(the first 100 residues of a validation chain, or protein G when no data folder), and
``first_call_s``: the wall time of the first ``Backmapper.sample`` after the model is loaded in
this (fresh) process, and ``load_s``, the load itself.
"""

import argparse
import json
import os
import time

import numpy as np
import torch

from openmm_ldb import cg
from openmm_ldb.backmapper import Backmapper


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--residues", type=int, default=100)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--settings", default=None, help="JSON sampler settings to override (measurements)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--model", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # a real Cα trace: protein G (56) + its first 44 residues shifted, as one chain of 100 residues
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    seq_top, pos = go.topology, np.asarray(go.native_positions.value_in_unit(go.native_positions.unit))
    from openmm_ldb.data import data_dir, list_chains, read_chain
    try:
        rows = [r for r in list_chains(data_dir()) if r["split"] == "val" and int(r["nres"]) >= args.residues]
        chain = read_chain(rows[0]["path"], rows[0]["chain"])
        n = args.residues
        ca = chain.xyz[0, :n, 1] / 10.0
        from openmm_ldb import residues as rc
        seq = "".join(rc.RESTYPES_1[i] for i in chain.restype[:n])
        source = rows[0]["file"]
    except FileNotFoundError:
        n = len(pos)
        ca, seq, source = pos, None, "protein G"
    top = cg.ca_topology([seq]) if seq else seq_top
    t0 = time.perf_counter()
    bm = Backmapper(args.model, device="cpu", steps=args.steps)
    load_s = time.perf_counter() - t0
    if args.settings:
        from openmm_ldb.export import model_from_exported
        from openmm_ldb.model.sampler import Sampler

        model, card = model_from_exported(args.model)
        bm.module = Sampler(model, {**card["sampler_settings"], **json.loads(args.settings)}).eval()
    plan = bm.plan(top, ca)
    t0 = time.perf_counter()
    bm.sample(plan, ca[None])
    first_call_s = time.perf_counter() - t0
    print({"load_s": round(load_s, 3), "first_call_s": round(first_call_s, 3)}, flush=True)
    out = []
    for b in args.batch:
        frames = np.repeat(ca[None], b, axis=0)
        bm.sample(plan, frames)  # warm up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            bm.sample(plan, frames)
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        row = {"batch": b, "ms_per_frame": round(1000 * med / b, 2), "residue_frames_per_s": round(n * b / med, 1)}
        out.append(row)
        print(row, flush=True)
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "throughput.json"), "w") as f:
        json.dump({"residues": n, "source": source, "threads": args.threads, "settings": args.settings,
                   "load_s": round(load_s, 3), "first_call_s": round(first_call_s, 3), "results": out}, f, indent=1)


if __name__ == "__main__":
    main()
