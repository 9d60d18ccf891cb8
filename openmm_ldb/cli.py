"""The ``openmm-ldb`` command: backmap, demo, train, export, evaluate, recover."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np


class InputError(Exception):
    """A problem with one input file: reported as one line, the batch goes on."""


_WHOLE_FILE = (".pdb", ".pdb.gz", ".ent", ".cif", ".cif.gz", ".pdbx", ".mmcif", ".gro")
_TRAJECTORY_ONLY = (".dcd", ".xtc", ".trr", ".nc", ".netcdf", ".dtr", ".lammpstrj", ".xyz", ".binpos")
# Residues x frames per model call of the CLI's default batch on CPU.  Measured (shipped model, one
# thread): 168 residues 132/126/178 ms per frame at batches 1/4/16; 1,176 residues 830/1036/2020 ms:
# on CPU batching does not pay, so a batch holds about 512 residues (one frame of a big protein).
_DEFAULT_BATCH_RESIDUES = 512


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    msg = text[0] if text else type(err).__name__
    if isinstance(err, (InputError, ValueError)) and not isinstance(err, UnicodeDecodeError):
        return msg
    return f"{type(err).__name__}: {msg}"


def parse_residues(spec: str, topology) -> list[int]:
    """``--residues``: residue indices and ranges ('0-55,60') or an mdtraj selection
    ('protein and chainid 0')."""
    import re

    spec = spec.strip()
    if re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", spec.replace(" ", "")):
        out = []
        for part in spec.replace(" ", "").split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
        return out
    try:
        atoms = topology.select(spec)
    except Exception as err:  # mdtraj raises its own parse errors  # noqa: BLE001
        raise InputError(f"--residues {spec!r} is neither index ranges (0-55,60) nor an mdtraj selection: "
                         f"{_one_line(err)}") from None
    return sorted({topology.atom(int(i)).residue.index for i in atoms})


def _load_system(path: str):
    import openmm

    try:
        with open(path) as f:
            system = openmm.XmlSerializer.deserialize(f.read())
    except Exception as err:  # noqa: BLE001
        raise InputError(f"--system {path}: not a serialized OpenMM System ({_one_line(err)})") from None
    if not isinstance(system, openmm.System):
        raise InputError(f"--system {path}: holds a {type(system).__name__}, not a System")
    return system


def _particles_in_file(path: str) -> int | None:
    """Particles per frame of a trajectory file, where mdtraj can tell without reading it all."""
    import mdtraj

    try:
        with mdtraj.open(path) as f:
            xyz = f.read(n_frames=1)
            xyz = xyz[0] if isinstance(xyz, tuple) else xyz
            return int(np.asarray(xyz).shape[1])
    except Exception:  # noqa: BLE001
        return None


def _dcd_header_frames(path: str) -> int | None:
    """Frames a DCD file's header announces (None for other files)."""
    import struct

    if not path.lower().endswith(".dcd"):
        return None
    try:
        with open(path, "rb") as f:
            header = f.read(12)
        if len(header) == 12 and header[4:8] == b"CORD":
            return int(struct.unpack("<i", header[8:12])[0])
    except OSError:
        pass
    return None


def _read_topology(path: str, top: str | None):
    import mdtraj

    source = top or path
    if top is None and os.path.splitext(path)[1].lower() in _TRAJECTORY_ONLY:
        raise InputError("a trajectory without a topology: pass --top (a PDB of the CG system)")
    if not os.path.exists(source):
        raise InputError(f"no such file {source!r}")
    if os.path.getsize(source) == 0:
        raise InputError(f"{'topology ' if top else ''}file {source} is empty")
    try:
        topology = mdtraj.load_topology(source)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"cannot read {'topology ' if top else ''}{source}: {_one_line(err)}") from None
    if topology.n_atoms == 0:
        raise InputError(f"{source} holds no atoms")
    return topology


def _iter_chunks(path: str, topology, chunk: int):
    import mdtraj

    try:
        if path.lower().endswith(_WHOLE_FILE):  # structure files: read whole (small), then in chunks
            whole = mdtraj.load(path, top=topology)
            it = iter([whole[k:k + chunk] for k in range(0, whole.n_frames, chunk)])
        else:
            it = mdtraj.iterload(path, top=topology, chunk=chunk)
        while True:
            try:
                traj = next(it)
            except StopIteration:
                return
            yield traj
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001
        raise InputError(_read_error(path, topology, err)) from None


def _read_error(path: str, topology, err: BaseException) -> str:
    n = _particles_in_file(path)
    if n is not None and n != topology.n_atoms:
        return f"the trajectory has {n} particles per frame but the topology has {topology.n_atoms}"
    return f"cannot read {path} (empty, truncated or not a trajectory?): {_one_line(err)}"


def _backmap_file(bm, path: str, out: str, args, system) -> str:
    """Backmap one input file; returns the summary line.  Raises InputError (or other errors)."""
    from .writers import TrajectoryWriter, sample_paths

    if not os.path.exists(path):
        raise InputError("no such file")
    if os.path.getsize(path) == 0:
        raise InputError("empty file (no frames)")
    topology = _read_topology(path, args.top)
    residues = parse_residues(args.residues, topology) if args.residues else None
    n_res = topology.n_residues if residues is None else len(residues)
    per_call = _DEFAULT_BATCH_RESIDUES if bm.device.type == "cpu" else bm.max_batch_residues
    batch = args.batch_size or max(1, min(64, per_call // max(1, n_res)))
    chunks = _iter_chunks(path, topology, max(batch, 1))
    first = next(chunks, None)
    if first is None or first.n_frames == 0:
        raise InputError("no frames in the file (empty or truncated)")
    top = topology.to_openmm()
    box0 = None if first.unitcell_vectors is None else first.unitcell_vectors[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = bm.plan(top, first.xyz[0], args.bead, residues, skip_unknown=args.skip_unknown,
                       hydrogens=args.hydrogens or args.minimize, box_vectors=box0, system=system,
                       chain_break=args.chain_break, entry_point="cli")
    for w in caught:
        print(f"openmm-ldb backmap: {path}: warning: {w.message}", file=sys.stderr)
    refiner = None
    if args.minimize:
        from .refine import Refiner

        refiner = Refiner(plan.topology, solvent=args.solvent)

    def frames():
        index = 0
        for traj in _chain(first, chunks):
            for f in range(traj.n_frames):
                box = None if traj.unitcell_vectors is None else traj.unitcell_vectors[f]
                t = None if traj.time is None else float(traj.time[f])
                yield np.asarray(traj.xyz[f], dtype=np.float64), box, index, t  # (positions, box, step, time)
                index += 1

    from tqdm import tqdm

    writers = [TrajectoryWriter(p, plan.topology, standard_names=not args.ff_names)
               for p in sample_paths(out, args.samples)]
    n = 0
    ok = False
    report = _CheckSummary()
    try:
        bar = tqdm(desc=os.path.basename(path), unit="frame", disable=args.quiet, leave=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            options = {"keep_ca": True} if args.keep_ca else {}
            for frame in bm.stream(plan, frames(), args.samples, seed=args.seed, batch_size=batch, refiner=refiner,
                                   coherent=not args.per_frame, check=True, **options):
                for s, w in enumerate(writers):
                    w.write(frame.positions[s], step=frame.step, time=frame.time, box_vectors=frame.box)
                report.add(frame)
                n += 1
                bar.update(1)
        bar.close()
        for w in {str(w.message): w for w in caught}.values():
            print(f"openmm-ldb backmap: {path}: warning: {w.message}", file=sys.stderr)
        ok = True
    finally:
        for w in writers:
            w.close()
            if not ok and n == 0:  # nothing backmapped: leave no empty output behind
                for f in {w.path, w.topology_pdb} - {None}:
                    if os.path.exists(f):
                        os.remove(f)
    announced = _dcd_header_frames(path)
    if announced is not None and n < announced:
        raise InputError(f"truncated: the DCD header announces {announced} frames but only {n} are complete "
                         f"(those are written to {', '.join(w.path for w in writers)})")
    return (f"{path}: {n} frame(s), {plan.mapping.n_residues} residues in {plan.segment.max() + 1} chain(s) -> "
            + ", ".join(w.path for w in writers)
            + (f" (disulfides: {len(plan.disulfides)})" if plan.disulfides else "")
            + report.line())


class _CheckSummary:
    """Per-file summary of the stream's frame checks (every frame and sample of a file)."""

    def __init__(self):
        self._parts: dict[str, list[np.ndarray]] = {"clashes_per_1000": [], "bond_validity": [], "ged": [],
                                                    "ca_shift": []}

    def add(self, frame) -> None:
        """Keep the figures of one :class:`openmm_ldb.frames.AAFrame` (from ``stream(check=True)``)."""
        figures = dict(frame.check or {}, ca_shift=frame.ca_shift)
        for key, values in self._parts.items():
            if figures.get(key) is not None:
                values.append(np.ravel(figures[key]))

    def line(self) -> str:
        """'; clashes/1000 atoms 0.8 mean (2.1 max), bonds valid 1.000, GED 0.3, Cα moved ≤ 0.42 Å'
        (the bond figure is the worst structure's; empty without checked frames)."""
        if not self._parts["clashes_per_1000"]:
            return ""
        v = {k: np.concatenate(p) for k, p in self._parts.items() if p}
        text = (f"; clashes/1000 atoms {v['clashes_per_1000'].mean():.1f} mean ({v['clashes_per_1000'].max():.1f} max), "
                f"bonds valid {np.nanmin(v['bond_validity']):.3f}, GED {v['ged'].mean():.1f}")
        if "ca_shift" in v:
            text += f", Cα moved ≤ {v['ca_shift'].max():.2f} Å"
        return text


def _chain(first, rest):
    yield first
    yield from rest


def _backmap(args) -> int:
    from .backmapper import Backmapper

    if (args.output is None) == (args.out_dir is None):
        print("openmm-ldb backmap: give exactly one of -o/--output or --out-dir", file=sys.stderr)
        return 2
    if args.output and len(args.inputs) > 1:
        print("openmm-ldb backmap: several inputs need --out-dir", file=sys.stderr)
        return 2
    if args.batch_size is not None and args.batch_size < 1:
        print("openmm-ldb backmap: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        system = _load_system(args.system) if args.system else None
    except InputError as err:
        print(f"openmm-ldb backmap: {err}", file=sys.stderr)
        return 2
    bm = Backmapper(args.model, device=args.device, threads=args.threads, steps=args.steps)
    failures = []
    outputs: dict[str, str] = {}
    for path in args.inputs:
        if args.out_dir:
            os.makedirs(args.out_dir, exist_ok=True)
            name = os.path.basename(path)
            name = name.removesuffix(".gz")
            stem = os.path.splitext(name)[0]  # frame.0.gro -> frame.0
            out = os.path.join(args.out_dir, stem + (args.format if args.format.startswith(".") else "." + args.format))
        else:
            out = args.output
        try:
            if out in outputs:
                raise InputError(f"its output {out} is also the output of {outputs[out]}; rename one input")
            outputs[out] = path
            line = _backmap_file(bm, path, out, args, system)
        except KeyboardInterrupt:
            raise
        except Exception as err:
            if os.environ.get("OPENMM_LDB_TRACEBACK"):
                raise
            print(f"openmm-ldb backmap: {path}: {_one_line(err)}", file=sys.stderr)
            failures.append(path)
            continue
        if not args.quiet:
            print(line)
    if failures:
        print(f"openmm-ldb backmap: {len(failures)} of {len(args.inputs)} input(s) failed: {', '.join(failures)}",
              file=sys.stderr)
        return 1
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out_dir, steps=args.steps, interval=args.interval, model=args.model, minimize=args.minimize)
    return 0


def _train(args) -> int:
    from .data import data_dir, featurize_dataset
    from .export import export_model
    from .training import finetune, train

    os.makedirs(args.out, exist_ok=True)
    if args.init is not None or args.trajectory or args.structures:
        if len(args.top) not in (0, 1, len(args.trajectory)):
            print("error: give one --top for all trajectories or one per --trajectory", file=sys.stderr)
            return 2
        tops = args.top * len(args.trajectory) if len(args.top) == 1 else (args.top or [None] * len(args.trajectory))
        init = None if args.init in (None, "default") else args.init
        s = finetune(args.out, init=init, trajectories=list(zip(args.trajectory, tops)), structures=args.structures,
                     minutes=args.minutes if args.minutes is not None else 5.0, max_steps=args.max_steps,
                     threads=args.threads)
        b, a = s["validation_before"], s["validation_after"]
        print(f"held-out ({s['split']}; {s['val_items']} frames): best-guess heavy-atom RMSD "
              f"{b['val_guess_rmsd']:.3f} -> {a['val_guess_rmsd']:.3f} Å; with 0.3 Å Cα noise "
              f"{b['val_guess_rmsd_noise03']:.3f} -> {a['val_guess_rmsd_noise03']:.3f} Å "
              f"({s['steps']} steps, {s['cpu_hours']} CPU-h)")
        print(f"fine-tuned model: {s['model']}")
        return 0
    cache = os.path.join(args.out, "dataset.pt")
    if not os.path.exists(cache):
        featurize_dataset(data_dir(args.data), out=cache, workers=args.workers)
    minutes = args.minutes if args.minutes is not None else 100.0
    ckpt = train(cache, args.out, minutes=minutes, batch_chains=args.batch, lr=args.lr, threads=args.threads)
    path = export_model(ckpt, os.path.join(args.out, "model.pt"), {"training": {"minutes": minutes}})
    print(f"trained model: {path}")
    return 0


def _export(args) -> int:
    from .export import export_model

    path = export_model(args.checkpoint, args.output, fmt=args.format)
    print(path)
    return 0


def _recover(args) -> int:
    from .spool import recover

    n = recover(args.spool, device=args.device, threads=args.threads)
    print(f"{args.spool}: {n} frame(s) written")
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
    b.add_argument("--system", default=None,
                   help="the CG System as OpenMM XML (XmlSerializer): its bonds give the chains and molecules, "
                        "its box the periodic cell")
    b.add_argument("--chain-break", type=float, default=None, metavar="NM",
                   help="decide chains that neither --system nor the topology bonds by this Cα–Cα distance (nm) "
                        "instead of by their residue numbering (default: the numbering; 0.65 where residues are "
                        "not numbered one after the other)")
    b.add_argument("--skip-unknown", action="store_true",
                   help="leave out non-protein particles (ions, nucleic acids, ligands) instead of stopping")
    b.add_argument("--residues", default=None,
                   help="residues to backmap: indices and ranges (0-55,60) or an mdtraj selection")
    b.add_argument("--keep-ca", action="store_true",
                   help="keep every Cα exactly on its CG bead, even where the trace is infeasible (bonds stretch)")
    b.add_argument("--per-frame", action="store_true",
                   help="backmap each frame of a trajectory on its own (default: the best guess keeps a residue's "
                        "rotamer from frame to frame while its neighbourhood barely moves, so it does not flicker)")
    b.add_argument("--ff-names", action="store_true",
                   help="write force-field residue names (CYX for bonded cysteines) instead of PDB names (CYS + SSBOND)")
    b.add_argument("--device", default=None)
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--batch-size", type=int, default=None,
                   help=f"frames per model call (default: about {_DEFAULT_BATCH_RESIDUES} residues per call on CPU)")
    b.add_argument("--steps", type=int, default=None, help="denoising steps of the diffusion samples")
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
    # None: 100 minutes for a new model, 5 for a fine-tune (a --minutes the user gives is taken as
    # given: before, --minutes 100 on a fine-tune silently became 5)
    t.add_argument("--minutes", type=float, default=None,
                   help="training wall time (default: 100 for a new model, 5 for a fine-tune)")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--init", default=None,
                   help="fine-tune this exported model ('default' = the shipped one) instead of training anew")
    t.add_argument("--trajectory", action="append", default=[], help="MD trajectory to fine-tune on (repeatable)")
    t.add_argument("--top", action="append", default=[], help="topology of the trajectories (one, or one each)")
    t.add_argument("--structures", nargs="*", default=[], help="structure files (PDB/mmCIF) to fine-tune on")
    t.add_argument("--max-steps", type=int, default=None)
    t.set_defaults(func=_train)

    e = sub.add_parser("export", help="export a model file ('default': the shipped one) or a training checkpoint "
                                      "as a self-describing TorchScript (.pt) or torch.export (.pt2) model")
    e.add_argument("checkpoint", nargs="?", default="default",
                   help="model file or training checkpoint (default: the shipped model)")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--format", default=None, choices=["torchscript", "pt2"],
                   help="default: from the output's suffix (.pt2: pt2, else torchscript)")
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
    v.add_argument("--ca-noise", type=float, default=0.0,
                   help="Gaussian noise (Å) added to the reference Cα, as CG traces carry")
    v.add_argument("--settings", default=None,
                   help='sampler settings to try, JSON (e.g. \'{"repack_sweeps": 5}\'; see the model card)')
    v.set_defaults(func=_evaluate)

    r = sub.add_parser("recover", help="write the frames an interrupted LDBReporter run left in its spool")
    r.add_argument("spool", help="the spool folder (<trajectory>.ldbspool) or the trajectory")
    r.add_argument("--device", default=None)
    r.add_argument("--threads", type=int, default=None)
    r.set_defaults(func=_recover)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    code = args.func(args)
    if code == 0 and getattr(args, "command", "") not in ("export",) and not getattr(args, "quiet", False):
        print(f"done in {time.time() - t0:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
