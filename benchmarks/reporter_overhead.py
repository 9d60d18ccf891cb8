"""Wall time of a CG run with LDBReporter + DCDReporter vs DCDReporter alone (same interval).

    python benchmarks/reporter_overhead.py --steps 20000 --intervals 500 1000 2000

Prints and writes benchmarks/results/reporter_overhead.json.  The ratio is what a user pays
for the live all-atom trajectory; it stays near 1 when backmapping keeps up (the worker
thread shares the CPU with the simulation on small machines).
"""

import argparse
import json
import os
import tempfile
import time

import torch
from openmm.app import DCDReporter

from openmm_ldb import cg
from openmm_ldb.backmapper import Backmapper
from openmm_ldb.reporter import LDBReporter


def run(steps, interval, with_ldb, backmapper, tmp, threads):
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=1,
                             platform="CPU", platform_properties={"Threads": str(threads)})
    sim.step(100)  # warm up
    sim.reporters.append(DCDReporter(os.path.join(tmp, f"cg_{interval}_{with_ldb}.dcd"), interval))
    rep = None
    if with_ldb:
        rep = LDBReporter(os.path.join(tmp, f"aa_{interval}.dcd"), interval, backmapper=backmapper)
        sim.reporters.append(rep)
    t0 = time.perf_counter()
    sim.step(steps)
    if rep is not None:
        rep.close()  # the run is only done when the last all-atom frame is on disk
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--intervals", type=int, nargs="+", default=[250, 500, 1000, 2000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--openmm-threads", type=int, default=1)
    p.add_argument("--model", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)
    bm = Backmapper(args.model, device="cpu")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for interval in args.intervals:
            base = sorted(run(args.steps, interval, False, bm, tmp, args.openmm_threads) for _ in range(args.repeats))
            ldb = sorted(run(args.steps, interval, True, bm, tmp, args.openmm_threads) for _ in range(args.repeats))
            b, w = base[len(base) // 2], ldb[len(ldb) // 2]
            row = {"interval": interval, "steps": args.steps, "frames": args.steps // interval,
                   "dcd_only_s": round(b, 3), "with_ldb_s": round(w, 3), "ratio": round(w / b, 3)}
            results.append(row)
            print(row, flush=True)
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "reporter_overhead.json"), "w") as f:
        json.dump({"protein": "protein G B1 (56 residues), Go model", "cpu_threads": os.cpu_count(),
                   "torch_threads": args.torch_threads, "openmm_threads": args.openmm_threads,
                   "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
