"""The ``openmm-ldb`` command: backmap, demo, train, export, evaluate."""

from __future__ import annotations

import argparse
import os
import sys
import time


def _backmap(args) -> int:
    import mdtraj
    from tqdm import tqdm

    from .backmapper import Backmapper
    from .writers import TrajectoryWriter, sample_paths

    if (args.output is None) == (args.out_dir is None):
        print("openmm-ldb backmap: give exactly one of -o/--output or --out-dir", file=sys.stderr)
        return 2
    bm = Backmapper(args.model, device=args.device, threads=args.threads, steps=args.steps)
    jobs = []
    for path in args.inputs:
        if not os.path.exists(path):
            print(f"openmm-ldb backmap: no such file {path!r}", file=sys.stderr)
            return 2
        if args.top:
            traj = mdtraj.load(path, top=args.top)
        else:
            traj = mdtraj.load(path)
        if args.out_dir:
            os.makedirs(args.out_dir, exist_ok=True)
            stem = os.path.basename(path).split(".")[0]
            out = os.path.join(args.out_dir, stem + (args.format if args.format.startswith(".") else "." + args.format))
        else:
            out = args.output
        jobs.append((path, traj, out))
    if args.output and len(jobs) > 1:
        print("openmm-ldb backmap: several inputs need --out-dir", file=sys.stderr)
        return 2
    for path, traj, out in jobs:
        top = traj.topology.to_openmm()
        plan = bm.plan(top, traj.xyz[0], args.bead, hydrogens=args.hydrogens,
                       box_vectors=None if traj.unitcell_vectors is None else traj.unitcell_vectors[0])
        writers = [TrajectoryWriter(p, plan.topology) for p in sample_paths(out, args.samples)]
        refiner = None
        if args.minimize:
            from .refine import Refiner

            refiner = Refiner(plan.topology, solvent=args.solvent)
        try:
            bar = tqdm(total=traj.n_frames, desc=os.path.basename(path), disable=traj.n_frames < 2 or args.quiet)
            for start in range(0, traj.n_frames, args.batch_size):
                stop = min(start + args.batch_size, traj.n_frames)
                box = None if traj.unitcell_vectors is None else traj.unitcell_vectors[start:stop]
                seed = None if args.seed is None else args.seed + start
                xyz = bm.sample(plan, traj.xyz[start:stop], args.samples, seed=seed, box_vectors=box) / 10.0
                for f in range(stop - start):
                    t = float(traj.time[start + f]) if traj.time is not None else None
                    for s, w in enumerate(writers):
                        frame = xyz[f, s] if refiner is None else refiner.minimize(xyz[f, s])
                        w.write(frame, step=start + f, time=t)
                bar.update(stop - start)
            bar.close()
        finally:
            for w in writers:
                w.close()
        if not args.quiet:
            print(f"{path}: {traj.n_frames} frame(s), {plan.mapping.n_residues} residues -> "
                  + ", ".join(w.path for w in writers)
                  + (f" (disulfides: {len(plan.disulfides)})" if plan.disulfides else ""))
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out_dir, steps=args.steps, interval=args.interval, model=args.model, minimize=args.minimize)
    return 0


def _train(args) -> int:
    from .data import data_dir, featurize_dataset
    from .export import export_model
    from .training import train

    os.makedirs(args.out, exist_ok=True)
    cache = os.path.join(args.out, "dataset.pt")
    if not os.path.exists(cache):
        featurize_dataset(data_dir(args.data), out=cache, workers=args.workers)
    ckpt = train(cache, args.out, minutes=args.minutes, batch_chains=args.batch, lr=args.lr, threads=args.threads)
    path = export_model(ckpt, os.path.join(args.out, "model.pt"), {"training": {"minutes": args.minutes}})
    print(f"trained model: {path}")
    return 0


def _export(args) -> int:
    from .export import export_model

    path = export_model(args.checkpoint, args.output, fmt=args.format)
    print(path)
    return 0


def _evaluate(args) -> int:
    from .evaluate import main as evaluate_main

    return evaluate_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="openmm-ldb", description="Latent diffusion backmapping for OpenMM")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("backmap", help="backmap CG trajectories or Cα PDB/mmCIF files to all-atom")
    b.add_argument("inputs", nargs="+", help="CG trajectory (with --top) or Cα-only PDB/mmCIF files")
    b.add_argument("--top", help="topology for trajectory inputs (PDB, ...)")
    b.add_argument("-o", "--output", help="output trajectory (.dcd .xtc .pdb .cif .h5)")
    b.add_argument("--out-dir", help="output folder, one file per input")
    b.add_argument("--format", default=".pdb", help="output extension with --out-dir (default .pdb)")
    b.add_argument("--samples", type=int, default=1, help="structures per frame (separate files)")
    b.add_argument("--seed", type=int, default=None, help="sampler seed (default: deterministic best guess)")
    b.add_argument("--hydrogens", action="store_true", help="write hydrogens")
    b.add_argument("--minimize", action="store_true", help="restrained amber14 minimisation (adds hydrogens)")
    b.add_argument("--solvent", default="vacuum", choices=["vacuum", "obc"])
    b.add_argument("--device", default=None)
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--steps", type=int, default=None, help="denoising steps (default 4 best guess, 10 samples)")
    b.add_argument("--bead", default="CA", help="bead (atom) name at Cα")
    b.add_argument("--model", default=None, help="exported model file (default: shipped model)")
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(func=_backmap)

    d = sub.add_parser("demo", help="Go-model CG simulation of protein G with the live reporter")
    d.add_argument("--out-dir", default="ldb_demo")
    d.add_argument("--steps", type=int, default=100000)
    d.add_argument("--interval", type=int, default=500)
    d.add_argument("--model", default=None)
    d.add_argument("--minimize", action="store_true")
    d.set_defaults(func=_demo)

    t = sub.add_parser("train", help="train an LDB model on a folder of structures (train.tsv layout)")
    t.add_argument("--data", default=None, help="data folder (default $OPENMM_LDB_DATA or ../shared/data)")
    t.add_argument("--out", default="runs/ldb")
    t.add_argument("--minutes", type=float, default=100.0)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--workers", type=int, default=2)
    t.set_defaults(func=_train)

    e = sub.add_parser("export", help="export a training checkpoint as a self-describing model file")
    e.add_argument("checkpoint")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--format", default=None, choices=["torchscript", "pt2"])
    e.set_defaults(func=_export)

    v = sub.add_parser("evaluate", help="metrics of a model on the validation split or a folder of PDBs")
    v.add_argument("--model", default=None)
    v.add_argument("--data", default=None, help="data folder (validation split by cluster)")
    v.add_argument("--pdb-dir", default=None, help="evaluate on every PDB/mmCIF in this folder instead")
    v.add_argument("--max-chains", type=int, default=None)
    v.add_argument("--samples", type=int, default=1, help=">1 also reports ensemble diversity")
    v.add_argument("--out", default="ldb_eval")
    v.add_argument("--minimize", choices=["vacuum", "obc"], default=None,
                   help="score structures after a short restrained amber14 minimisation")
    v.add_argument("--threads", type=int, default=None)
    v.set_defaults(func=_evaluate)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    code = args.func(args)
    if getattr(args, "command", "") not in ("export",) and not getattr(args, "quiet", False):
        print(f"done in {time.time() - t0:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
