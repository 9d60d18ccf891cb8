"""The spool: CG frames waiting on disk for the backmapping worker, and the worker's drain loop.

A spool is a folder (by default ``<trajectory>.ldbspool`` beside the all-atom trajectory) that
:class:`~openmm_ldb.reporter.LDBReporter` creates when it is constructed and removes when every
frame is written:

``options.json``
    The reporter's settings (output file, samples, seed, model, writers' settings).
``topology.json``
    Written at the first report: the CG topology (chains, residues, atoms, bonds), the first
    frame (for the plan), the CG System's bond forces (OpenMM XML), the time step, the
    simulation's platform and the worker's thread count.  JSON, not pickle: reading a spool
    (``openmm-ldb recover``) runs no code from it.
``frames.bin``
    Append-only fixed-size records, one per accepted frame: step (int64), time (float64, ps),
    box vectors (9 float32, nm; zeros when not periodic), positions (float32, nm).  The reporter
    writes each record with one ``write`` system call before ``report()`` returns, so a frame
    that ``report()`` accepted survives the simulation process being killed.
``status.bin``
    Progress written by the worker (shared memory through ``mmap``): state, frames written,
    peak memory, and the frame counts the output files had when the worker opened them.
``lock``
    Held (``flock``) by the process that writes the output files.
``error.txt``, ``worker.log``
    The worker's error (if any) and its log.

:func:`drain` is the whole job of the worker process (``python -m openmm_ldb.worker``) and of
``openmm-ldb recover <spool>``: it backmaps with :meth:`Backmapper.stream` every frame of the
spool that is not yet in the output files, writes it with the writers, and removes the spool when
all frames are written.  Which frames are written is read off the output files themselves (their
frame count minus the count they had when the run opened them), so a run killed at any moment is
finished by ``openmm-ldb recover`` without losing or repeating a frame.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import select
import shutil
import struct
import sys
import time

import numpy as np

logger = logging.getLogger("openmm_ldb.spool")

SPOOL_SUFFIX = ".ldbspool"
VERSION = 2          # 2: JSON files (1 pickled them; such a spool is refused, not unpickled)
_RECORD_HEAD = struct.Struct("<qd")  # step, time (ps)
_STATUS_SLOTS = 64
_MAX_OUTPUTS = _STATUS_SLOTS - 16

# status slots
S_VERSION, S_PID, S_STATE, S_WRITTEN, S_PEAK_KB, S_OPENED, S_OUTPUTS, S_READ = range(8)
S_BASE = 16  # base frame count of output k at S_BASE + k
STARTING, LOADING, READY, RUNNING, FINISHED, FAILED = range(6)
STATE_NAMES = {STARTING: "starting", LOADING: "loading the model", READY: "ready", RUNNING: "running",
               FINISHED: "finished", FAILED: "failed"}


def default_spool_path(output: str) -> str:
    """``<output>.ldbspool``: where the reporter keeps frames that are not yet backmapped."""
    return os.path.abspath(os.fspath(output)) + SPOOL_SUFFIX


def record_size(n_particles: int) -> int:
    return _RECORD_HEAD.size + 9 * 4 + int(n_particles) * 12


class Spool:
    """One spool folder (see the module documentation)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.fspath(path))
        self._status_mm = None
        self._status = None
        self._fd = None
        self._read_fd = None
        self._punch_fd = None
        self._topology = None
        self._options = None

    # ------------------------------------------------------------------ creating (the reporter)
    @classmethod
    def create(cls, path: str, options: dict) -> Spool:
        path = os.path.abspath(os.fspath(path))
        if os.path.exists(path):
            raise FileExistsError(
                f"{path} holds the frames of an earlier run that were not all backmapped: finish them with "
                f"`openmm-ldb recover {path}` (or delete the folder) before starting a new run with this output")
        os.makedirs(path)
        spool = cls(path)
        write_json(os.path.join(path, OPTIONS), dict(options, version=VERSION))
        with open(os.path.join(path, "status.bin"), "wb") as f:
            f.write(b"\0" * (8 * _STATUS_SLOTS))
        spool.status[S_VERSION] = VERSION
        return spool

    def write_topology(self, info: dict) -> None:
        """The CG topology and first frame (once, at the first report), then open ``frames.bin``."""
        self._topology = dict(info)
        self._n_particles = int(info["n_particles"])
        self._record_size = record_size(self._n_particles)
        self._fd = os.open(os.path.join(self.path, "frames.bin"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        write_json(os.path.join(self.path, TOPOLOGY), _topology_record(self._topology))

    def append(self, step: int, time_ps: float, positions: np.ndarray, box: np.ndarray | None) -> None:
        """Append one frame with a single ``write`` (complete in the file when this returns)."""
        pos = np.ascontiguousarray(positions, dtype=np.float32)
        if pos.shape != (self._n_particles, 3):
            raise ValueError(f"positions must have shape ({self._n_particles}, 3), got {pos.shape}")
        boxb = (np.zeros(9, np.float32) if box is None else np.ascontiguousarray(box, dtype=np.float32)).tobytes()
        parts = [_RECORD_HEAD.pack(int(step), float(time_ps)), boxb, pos.tobytes()]
        written = os.writev(self._fd, parts)
        if written != self._record_size:
            raise OSError(f"short write to {self.path}/frames.bin ({written} of {self._record_size} bytes): disk full?")

    def close_writer(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------------ reading (the worker)
    @property
    def options(self) -> dict:
        if self._options is None:
            with open(os.path.join(self.path, OPTIONS)) as f:
                self._options = json.load(f)
        return self._options

    def has_topology(self) -> bool:
        return os.path.exists(os.path.join(self.path, TOPOLOGY))

    @property
    def topology(self) -> dict:
        if self._topology is None:
            with open(os.path.join(self.path, TOPOLOGY)) as f:
                self._topology = _topology_from_record(json.load(f))
            self._n_particles = int(self._topology["n_particles"])
            self._record_size = record_size(self._n_particles)
        return self._topology

    def count(self) -> int:
        """Complete frame records in the spool."""
        try:
            size = os.path.getsize(os.path.join(self.path, "frames.bin"))
        except FileNotFoundError:
            return 0
        self.topology  # noqa: B018 - sets the record size
        return size // self._record_size

    def step_of(self, index: int) -> int | None:
        """The step of frame ``index`` (None if it is not in the spool)."""
        if self._read_fd is None:
            try:
                self._read_fd = os.open(os.path.join(self.path, "frames.bin"), os.O_RDONLY)
            except FileNotFoundError:
                return None
        raw = os.pread(self._read_fd, 8, index * self._record_size)
        return struct.unpack("<q", raw)[0] if len(raw) == 8 else None

    def release(self, start: int, stop: int) -> None:
        """Give the disk space of frames ``start`` to ``stop - 1`` back (they are written): the
        file keeps its size and offsets, the blocks become a hole (Linux; elsewhere nothing)."""
        offset = -(-start * self._record_size // 4096) * 4096  # whole blocks inside the range only
        end = stop * self._record_size // 4096 * 4096
        if end <= offset or _libc() is None:
            return
        if self._punch_fd is None:
            self._punch_fd = os.open(os.path.join(self.path, "frames.bin"), os.O_RDWR)
        import ctypes

        _libc().fallocate(self._punch_fd, 0x01 | 0x02, ctypes.c_long(offset), ctypes.c_long(end - offset))

    def read(self, start: int, stop: int) -> list:
        """Frames ``start`` to ``stop - 1`` as :class:`CGFrame` (positions and box in nm)."""
        from .frames import CGFrame

        if self._read_fd is None:
            self._read_fd = os.open(os.path.join(self.path, "frames.bin"), os.O_RDONLY)
        n = stop - start
        raw = os.pread(self._read_fd, n * self._record_size, start * self._record_size)
        if len(raw) != n * self._record_size:
            raise OSError(f"{self.path}/frames.bin: frames {start}..{stop - 1} are incomplete")
        periodic = bool(self.topology.get("periodic"))
        out = []
        for k in range(n):
            rec = raw[k * self._record_size:(k + 1) * self._record_size]
            step, t = _RECORD_HEAD.unpack_from(rec)
            box = np.frombuffer(rec, np.float32, 9, _RECORD_HEAD.size).reshape(3, 3).astype(np.float64)
            xyz = np.frombuffer(rec, np.float32, 3 * self._n_particles, _RECORD_HEAD.size + 36)
            out.append(CGFrame(xyz.reshape(-1, 3).astype(np.float64), box if periodic else None, int(step), float(t)))
        return out

    # ------------------------------------------------------------------ status
    @property
    def status(self) -> np.ndarray:
        """int64[64] shared with the worker (see the ``S_*`` slots)."""
        if self._status is None:
            with open(os.path.join(self.path, "status.bin"), "r+b") as f:
                self._status_mm = mmap.mmap(f.fileno(), 8 * _STATUS_SLOTS)
            self._status = np.ndarray((_STATUS_SLOTS,), dtype=np.int64, buffer=self._status_mm)
        return self._status

    def error(self) -> str | None:
        try:
            with open(os.path.join(self.path, "error.txt")) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(os.path.join(self.path, "worker.log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return ""

    def lock(self, blocking: bool = False):
        """Take the writer's lock; returns the open file (keep it) or raises BlockingIOError."""
        try:
            import fcntl  # POSIX only: imported here so that the package imports on Windows too
        except ImportError:
            raise RuntimeError("LDBReporter's spool needs POSIX file locks (Linux, macOS); on this system "
                               "backmap with Backmapper or the openmm-ldb CLI") from None
        f = open(os.path.join(self.path, "lock"), "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            f.close()
            raise
        return f

    def close(self) -> None:
        self.close_writer()
        for name in ("_read_fd", "_punch_fd"):
            if getattr(self, name) is not None:
                os.close(getattr(self, name))
                setattr(self, name, None)
        self._status = None
        if self._status_mm is not None:
            try:
                self._status_mm.close()
            except BufferError:
                pass
            self._status_mm = None

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)


_LIBC = []


def _libc():
    """libc with ``fallocate`` (to punch holes), or None."""
    if not _LIBC:
        lib = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes
                import ctypes.util

                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                lib.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
            except (OSError, AttributeError):
                lib = None
        _LIBC.append(lib)
    return _LIBC[0]


OPTIONS, TOPOLOGY = "options.json", "topology.json"


def write_json(path: str, obj) -> None:
    """``obj`` as JSON, atomically (numpy arrays and numbers as lists and numbers)."""
    def plain(x):
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, np.generic):
            return x.item()
        if hasattr(x, "getName"):  # an openmm Platform: its name
            return x.getName()
        raise TypeError(f"{type(x).__name__} is not JSON serialisable")

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, default=plain)
    os.replace(tmp, path)


def _topology_record(info: dict) -> dict:
    """The topology info of :meth:`Spool.write_topology` with its ``openmm.app.Topology`` spelled
    out: chains (id), residues (name, id, insertion code), atoms (name, element), bonds."""
    top = info.get("topology")
    if top is None:
        return dict(info)
    chains = [{"id": c.id, "residues": [{"name": r.name, "id": r.id, "icode": r.insertionCode,
                                         "atoms": [[a.name, a.element.symbol if a.element is not None else None]
                                                   for a in r.atoms()]} for r in c.residues()]}
              for c in top.chains()]
    return dict(info, topology={"chains": chains, "bonds": [[a.index, b.index] for a, b in top.bonds()]})


def _topology_from_record(record: dict) -> dict:
    from openmm.app import Element, Topology

    spec = record.get("topology")
    out = dict(record)
    for key in ("positions", "box"):
        if record.get(key) is not None:
            out[key] = np.asarray(record[key], dtype=np.float64)
    if spec is None:
        return out
    top = Topology()
    atoms = []
    for c in spec["chains"]:
        chain = top.addChain(c["id"])
        for r in c["residues"]:
            res = top.addResidue(r["name"], chain, r["id"], r["icode"])
            for name, symbol in r["atoms"]:
                atoms.append(top.addAtom(name, None if symbol is None else Element.getBySymbol(symbol), res))
    for a, b in spec["bonds"]:
        top.addBond(atoms[a], atoms[b])
    out["topology"] = top
    return out


# ---------------------------------------------------------------------------------------------- draining
class _Sink:
    """The output files of one spool: one TrajectoryWriter per sample; skips frames already in a file."""

    def __init__(self, spool: Spool, topology, resume: bool):
        from .writers import TrajectoryWriter, sample_paths

        opts, info, status = spool.options, spool.topology, spool.status
        paths = sample_paths(opts["output"], opts["n_samples"])
        if len(paths) > _MAX_OUTPUTS:
            raise ValueError(f"at most {_MAX_OUTPUTS} samples per reporter")
        opened = bool(status[S_OPENED])
        # a recovery appends to what the run wrote; a run appends only when asked
        append = opts["append"] or (resume and opened)
        self.writers = [TrajectoryWriter(p, topology, append=append, dt=info.get("dt_ps"), interval=opts["interval"])
                        for p in paths]
        if not opened:
            for k, w in enumerate(self.writers):
                status[S_BASE + k] = w.n_frames
            status[S_OUTPUTS] = len(self.writers)
            status[S_OPENED] = 1
        # frames of this spool already in output k
        self.done = [w.n_frames - int(status[S_BASE + k]) for k, w in enumerate(self.writers)]
        if min(self.done) < 0:
            raise RuntimeError(f"{paths}: the output files have fewer frames than when this run opened them")

    def write(self, frame) -> None:
        for k, w in enumerate(self.writers):
            if frame.index >= self.done[k]:
                w.write(frame.positions[k], step=frame.step, time=frame.time, box_vectors=frame.box)
                self.done[k] = frame.index + 1

    def close(self) -> None:
        for w in self.writers:
            w.close()


class _Control:
    """The worker's side of its stdin: ``close`` (or end of file: the simulation's process is gone)
    means no more frames will come."""

    def __init__(self, stream):
        self.stream = stream
        self.closing = stream is None

    def wait(self, timeout: float) -> None:
        if self.closing:
            return
        ready, _, _ = select.select([self.stream], [], [], timeout)
        if ready:
            line = self.stream.readline()
            if not line or line.strip() in (b"close", "close"):
                self.closing = True


def _peak_kb() -> int:
    try:
        import resource  # POSIX only
    except ImportError:
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def drain(path: str, follow: bool = False, control=None, device=None, threads: int | None = None,
          delay: float = 0.0, keep: bool = False) -> int:
    """Backmap and write every frame of a spool that is not yet in its output files.

    Parameters
    ----------
    path : str
        The spool folder.
    follow : bool
        Keep waiting for new frames until ``control`` says the run is closing (the worker);
        otherwise stop at the end of the spool (``openmm-ldb recover``).
    control : file, optional
        The worker's stdin (see :class:`_Control`).
    device, threads
        Override the spool's device and torch thread count.
    delay : float
        Extra seconds per batch (to test a slow worker).
    keep : bool
        Keep the spool folder after success.

    Returns
    -------
    int
        Frames written by this call.
    """
    import torch

    from .backmapper import Backmapper

    spool = Spool(path)
    status = spool.status
    try:
        lock = spool.lock()
    except BlockingIOError:
        raise RuntimeError(f"another process (worker pid {int(status[S_PID])}) is writing the frames of {path}; "
                           "wait for it to finish or stop it first") from None
    ctl = _Control(control if follow else None)
    written = 0
    try:
        status[S_PID] = os.getpid()
        opts = spool.options
        status[S_STATE] = LOADING  # the model loads while the simulation starts
        if threads or opts.get("threads"):
            torch.set_num_threads(int(threads or opts["threads"]))
        device = device or opts.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        bm = Backmapper(opts.get("model"), device=device, steps=opts.get("steps"))
        if opts.get("max_batch_residues"):
            bm.max_batch_residues = int(opts["max_batch_residues"])
        if bm.device.type == "cuda":
            _warm_up(bm)  # CUDA context, kernels and libraries load now, not at the first frame
        status[S_STATE] = READY
        while not spool.has_topology():  # the reporter writes it at the first report
            if ctl.closing:
                status[S_STATE] = FINISHED
                if not keep:
                    spool.remove()
                return 0
            ctl.wait(0.05)
        info = spool.topology
        torch.set_num_threads(int(threads or info.get("threads") or opts.get("threads") or 1))
        from .reporting import system_from_spec

        system = info.get("system")
        if isinstance(system, dict):
            system = system_from_spec(system)
        plan = bm.plan(info["topology"], info["positions"], opts["bead_name"], opts["residues"],
                       opts["skip_unknown"], opts["hydrogens"], box_vectors=info.get("box"),
                       chain_break=opts.get("chain_break"), entry_point="reporter", system=system)
        refiner = None
        if opts["minimize"]:
            from .refine import Refiner

            refiner = Refiner(plan.topology, opts["solvent"], max_iterations=opts["minimize_iterations"],
                              platform=opts["refine_platform"])
        sink = _Sink(spool, plan.topology, resume=not follow)
        start = min(sink.done)
        status[S_WRITTEN] = start
        status[S_STATE] = RUNNING
        batch = int(opts["batch_size"])
        coherent = bool(opts.get("coherent", True))
        # the coherent stream's state (each residue's kept rotamer and anchor) is checkpointed
        # after every batch written, so that a run finished by ``openmm-ldb recover`` writes the
        # atoms an uninterrupted run writes: frames from the checkpoint to the first one missing
        # are backmapped again (not written) to bring the state up to it
        state: dict = {}
        checkpoint = _load_stream_state(spool.path, bm.device) if coherent else None
        if coherent and start > 0:
            if checkpoint is not None and checkpoint[0] <= start:
                state = checkpoint[1]
                if checkpoint[0] < start:
                    for _ in bm.stream(plan, spool.read(checkpoint[0], start), opts["n_samples"], opts["seed"],
                                       batch, start_index=checkpoint[0], coherent=True, stream_state=state):
                        pass
            else:
                logger.warning("%s: no stream state for frame %d: the coherent stream starts again there (side "
                               "chains may differ from an uninterrupted run's)", path, start)
        released = checkpoint[0] if checkpoint is not None and checkpoint[0] <= start else start
        k = start
        try:
            while True:
                n = spool.count()
                if k >= n:
                    if ctl.closing and spool.count() <= k:
                        break
                    ctl.wait(0.05)
                    continue
                stop = min(n, k + batch)
                if delay:
                    time.sleep(delay)
                chunk = spool.read(k, stop)
                status[S_READ] = stop
                for frame in bm.stream(plan, chunk, opts["n_samples"], opts["seed"], batch, refiner=refiner,
                                       start_index=k, coherent=coherent, stream_state=state):
                    sink.write(frame)
                    written += 1
                    status[S_WRITTEN] = frame.index + 1
                    status[S_PEAK_KB] = _peak_kb()
                k = stop
                if state:
                    _save_stream_state(spool.path, k, state)
                # the disk holds only the frames not yet written (and those since the checkpoint)
                done = min(min(sink.done), k)
                if done - released >= 8:
                    spool.release(released, done)
                    released = done
        finally:
            sink.close()
        status[S_STATE] = FINISHED
        logger.info("%s: %d frame(s) written", path, written)
    except BaseException as exc:
        import traceback

        status[S_STATE] = FAILED
        with open(os.path.join(spool.path, "error.txt"), "w") as f:
            f.write(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
        raise
    finally:
        lock.close()
    if not keep:
        spool.remove()
    return written


STREAM_STATE = "stream_state.npz"


def _save_stream_state(path: str, index: int, state: dict) -> None:
    """The coherent stream's state before frame ``index`` (arrays only: nothing that runs code)."""
    tmp = os.path.join(path, STREAM_STATE + ".tmp.npz")
    np.savez(tmp, index=np.asarray(index), **{k: v.detach().cpu().numpy() for k, v in state.items()})
    os.replace(tmp, os.path.join(path, STREAM_STATE))


def _load_stream_state(path: str, device) -> tuple[int, dict] | None:
    """``(index, state)`` of the last checkpoint, or None."""
    import torch

    try:
        with np.load(os.path.join(path, STREAM_STATE), allow_pickle=False) as f:
            return int(f["index"]), {k: torch.as_tensor(f[k], device=device) for k in f.files if k != "index"}
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None


def _warm_up(bm) -> None:
    """One small backmapping call (a 20-residue extended chain)."""
    try:
        from .cg import ca_topology

        top = ca_topology("ACDEFGHIKLMNPQRSTVWY")
        xyz = np.stack([np.arange(20) * 0.38, 0.05 * (np.arange(20) % 2), np.zeros(20)], 1)
        bm.sample(bm.plan(top, xyz), xyz[None])
    except Exception as exc:  # noqa: BLE001 - only a warm-up
        logger.info("warm-up skipped: %s", exc)


def recover(path: str, device=None, threads: int | None = None, keep: bool = False) -> int:
    """Write the frames an interrupted run left in its spool (``openmm-ldb recover``).

    Frames already in the output files are skipped (the files are continued, not rewritten); the
    spool is removed when all its frames are written.  Returns the number of frames written.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path) and os.path.isdir(path + SPOOL_SUFFIX):
        path = path + SPOOL_SUFFIX  # the trajectory's name was given
    if not os.path.exists(os.path.join(path, OPTIONS)):
        if os.path.exists(os.path.join(path, "options.pkl")):
            raise ValueError(f"{path} was written by an older openmm-ldb (pickled settings, which could run code "
                             "when read): finish it with the openmm-ldb version that wrote it")
        raise FileNotFoundError(f"{path} is not an LDBReporter spool (no {OPTIONS})")
    spool = Spool(path)
    err = spool.error()
    if err:
        logger.warning("the run's worker had failed with: %s", err.splitlines()[0])
        os.replace(os.path.join(path, "error.txt"), os.path.join(path, "error.previous.txt"))
    if not spool.has_topology():  # the run never reported a frame
        spool.remove()
        return 0
    return drain(path, follow=False, device=device, threads=threads, keep=keep)


def lower_priority(nice: int) -> str:
    """Lower this process's scheduling priority by ``nice``; with 19 (the most) also take Linux's
    ``SCHED_IDLE`` policy: the process then runs only on CPU time nothing else wants.  Returns
    what was set."""
    done = []
    if nice:
        try:
            os.nice(int(nice))
            done.append(f"nice {int(nice)}")
        except OSError:
            pass
    if nice >= 19 and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            done.append("SCHED_IDLE")
        except OSError:
            pass
    return ", ".join(done) or "normal priority"


def worker_main(argv=None) -> int:
    """``python -m openmm_ldb.worker SPOOL [--nice N] [--delay S]``: the reporter's worker process."""
    import argparse
    import signal

    p = argparse.ArgumentParser(prog="openmm_ldb.worker")
    p.add_argument("spool")
    p.add_argument("--nice", type=int, default=19)
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the simulation; it closes us
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logger.info("worker %d for %s: %s", os.getpid(), args.spool, lower_priority(args.nice))
    try:
        drain(args.spool, follow=True, control=sys.stdin.buffer, delay=args.delay)
    except BaseException:  # noqa: BLE001 - recorded in error.txt for the reporter
        logger.exception("worker failed")
        return 1
    return 0
