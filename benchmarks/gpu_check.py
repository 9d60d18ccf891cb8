"""One GPU check, a few minutes long: CUDA agrees with the CPU, and how fast it is.

    python benchmarks/gpu_check.py                 # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --dry           # everything on the CPU, tiny (CI)

1. ``agreement``: the same frames backmapped with the same seeds on CUDA and on the CPU (the best
   guess and seeded samples); the largest atom difference must be <= 1e-3 Å.
2. ``throughput``: residue-frames per second of :meth:`Backmapper.sample` at batch 1, 8 and 64
   for ~100- and ~1,000-residue frames (GB1 Go-model chains), on the device.
3. ``reporter``: a Go-model simulation of 1,008 residues on OpenMM's CUDA platform, DCDReporter
   alone vs DCDReporter + LDBReporter (model on CUDA): step() wall time, whole run, frames.
4. ``training_step``: one optimisation step of ``LDBModel(LDBConfig())`` on a batch from
   :func:`openmm_ldb.training.make_batch`, on the device.

Writes ``benchmarks/results/gpu_check.json`` (or ``--out``).  Exit status 1 when the agreement
check fails.  ``--dry`` runs the same code on the CPU with a tiny model and small sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _systems(copies):
    from reporter_overhead import build

    return build(f"gb1x{copies}", None)


def _frames(pos, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([pos + rng.normal(0, 0.02, pos.shape) for _ in range(n)])


def check_agreement(model, device, copies, tol=1e-3):
    from openmm_ldb.backmapper import Backmapper

    top, system, pos = _systems(copies)
    frames = _frames(pos, 4)
    ref = Backmapper(model, device="cpu")
    dev = Backmapper(model, device=device)
    out = {"residues": top.getNumResidues(), "frames": len(frames), "tolerance_A": tol}
    for name, kwargs in (("best_guess", dict(n_samples=1, seed=None)), ("samples", dict(n_samples=2, seed=11))):
        plan_cpu = ref.plan(top, pos)
        plan_dev = dev.plan(top, pos)
        a = ref.sample(plan_cpu, frames, deterministic=name == "best_guess", **kwargs)
        b = dev.sample(plan_dev, frames, deterministic=name == "best_guess", **kwargs)
        out[f"{name}_max_abs_diff_A"] = float(np.abs(a - b).max())
    out["pass"] = all(out[k] <= tol for k in out if k.endswith("_diff_A"))
    return out


def throughput(model, device, sizes, batches, repeats):
    from openmm_ldb.backmapper import Backmapper

    bm = Backmapper(model, device=device)
    rows = []
    for copies in sizes:
        top, system, pos = _systems(copies)
        plan = bm.plan(top, pos)
        n = top.getNumResidues()
        for batch in batches:
            frames = _frames(pos, batch)
            bm.sample(plan, frames)  # warm-up (allocations, kernels)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                bm.sample(plan, frames)
            _sync(device)
            dt = (time.perf_counter() - t0) / repeats
            rows.append({"residues": n, "batch": batch, "s_per_call": round(dt, 5),
                         "residue_frames_per_s": round(n * batch / dt, 1), "frames_per_s": round(batch / dt, 2)})
            print(f"  {n:5d} residues, batch {batch:3d}: {n * batch / dt:10.0f} residue-frames/s", flush=True)
    return rows


def reporter_run(model, device, platform_name, copies, steps, interval):
    """DCD-only vs DCD + LDBReporter on ``platform_name``; fresh Simulation each arm."""
    from openmm.app import DCDReporter

    from openmm_ldb import cg
    from openmm_ldb.reporter import LDBReporter

    top, system, pos = _systems(copies)
    out = {"residues": top.getNumResidues(), "platform": platform_name, "steps": steps, "interval": interval}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in ("dcd", "ldb", "dcd2", "ldb2"):
            sim = cg.make_simulation(top, system, pos, seed=1, platform=platform_name)
            sim.step(100)
            sim.currentStep = 0
            sim.reporters.append(DCDReporter(os.path.join(tmp, f"{arm}.dcd"), interval))
            rep = None
            if arm.startswith("ldb"):
                rep = LDBReporter(os.path.join(tmp, f"aa_{arm}.dcd"), interval, model=model, device=device)
                out[f"{arm}_setup_s"] = round(rep.waitUntilReady(), 2)
                sim.reporters.append(rep)
            t0 = time.perf_counter()
            sim.step(steps)
            t1 = time.perf_counter()
            if rep is not None:
                out[f"{arm}_queued_after_step"] = rep.framesQueued
                rep.close()
                out[f"{arm}_frames_written"] = rep.framesWritten
                out[f"{arm}_worker_peak_mib"] = round(rep.workerPeakMemory, 1)
            sim.reporters.clear()
            t2 = time.perf_counter()
            out[f"{arm}_step_s"] = round(t1 - t0, 3)
            out[f"{arm}_total_s"] = round(t2 - t0, 3)
    for k in ("step", "total"):
        base = min(out[f"dcd_{k}_s"], out[f"dcd2_{k}_s"])
        out[f"{k}_ratio"] = round(min(out[f"ldb_{k}_s"], out[f"ldb2_{k}_s"]) / base, 3)
    out["frames"] = steps // interval
    return out


def training_step(device, config, chain_copies=2, crop=128):
    import mdtraj

    from openmm_ldb import data
    from openmm_ldb.cg import demo_structure_path
    from openmm_ldb.model import LDBConfig, LDBModel
    from openmm_ldb.training import make_batch

    chain = data.chain_from_mdtraj(mdtraj.load(str(demo_structure_path())), 0, name="gb1")
    c = {"restype": chain.restype, "segment": chain.segment, "xyz": chain.xyz[0], "present": chain.present}
    torch.manual_seed(0)
    model = LDBModel(LDBConfig(**config)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = make_batch([c] * chain_copies, list(range(chain_copies)), crop, random.Random(0), ca_noise=0.1)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    times = []
    for _ in range(3):  # the first step includes start-up costs
        _sync(device)
        t0 = time.perf_counter()
        out = model.losses(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"device": str(device), "batch_chains": chain_copies, "crop": crop, "loss": float(out["loss"].detach()),
            "finite": bool(torch.isfinite(out["loss"])), "first_step_s": round(times[0], 3),
            "step_s": round(min(times[1:]), 4),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.device(device).type == "cuda"
            else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="CPU only, tiny model and sizes (for CI)")
    p.add_argument("--model", default=None, help="model file (default: the shipped model)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "gpu_check.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1 if args.dry else max(1, min(8, os.cpu_count() or 1)))
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.dry:
            device, other, omm_platform = "cpu", "cpu", "CPU"
            sizes, batches, repeats = [2], [1, 2], 1
            rep_copies, rep_steps, rep_interval = 2, 400, 100
            config = dict(hidden=16, encoder_layers=1, decoder_layers=1, denoiser_layers=1, num_codes=64)
            if model is None:
                from openmm_ldb.export import export_model
                from openmm_ldb.model import LDBConfig, LDBModel

                torch.manual_seed(0)
                model = export_model(LDBModel(LDBConfig(**config)), os.path.join(tmp, "tiny.pt"), {"note": "dry"})
        else:
            if not torch.cuda.is_available():
                print("gpu_check: no CUDA device (torch.cuda.is_available() is False); use --dry for a CPU run",
                      file=sys.stderr)
                return 2
            device, other, omm_platform = "cuda", "cpu", "CUDA"
            sizes, batches, repeats = [2, 18], [1, 8, 64], 3
            rep_copies, rep_steps, rep_interval = 18, 20000, 1000
            config = {}
        report = {"dry": args.dry, "device": device,
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                  "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                  "model": model or "shipped default"}
        import openmm

        report["openmm"] = openmm.__version__
        failures = []
        sections = [
            ("agreement", lambda: check_agreement(model, device if not args.dry else other, 2)),
            ("throughput", lambda: throughput(model, device, sizes, batches, repeats)),
            ("reporter", lambda: reporter_run(model, device, omm_platform, rep_copies, rep_steps, rep_interval)),
            ("training_step", lambda: training_step(device, config)),
        ]
        for name, fn in sections:
            print(f"{name}...", flush=True)
            t0 = time.perf_counter()
            try:
                report[name] = fn()
            except Exception as exc:  # noqa: BLE001 - one failing section must not hide the others
                report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                failures.append(name)
            report[name + "_s"] = round(time.perf_counter() - t0, 1)
            print(f"  {json.dumps(report[name])[:400]}", flush=True)
    report["duration_s"] = round(time.time() - t_start, 1)
    ok = not failures and report["agreement"].get("pass", False)
    report["pass"] = ok
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"gpu_check: {'pass' if ok else 'FAIL ' + ', '.join(failures or ['agreement'])} "
          f"({report['duration_s']} s) -> {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
