"""LDBReporter: a live all-atom trajectory beside a coarse-grained OpenMM simulation.

``report()`` only appends the CG frame to a spool file (one ``write`` system call) and returns;
a separate worker *process*, at the lowest scheduling priority and with a set number of torch
threads, backmaps the frames with :meth:`Backmapper.stream` and writes them.  Why a process and
not a thread: ``Simulation.step()`` gives up and retakes Python's GIL every ten steps, so any
Python thread working in the simulation's process stalls it (measured: a busy thread made 20,000
steps of a 100-bead model take 5-9 s instead of 1 s), and torch's thread pool spins against
OpenMM's threads.  See ``benchmarks/reporter_overhead.py`` for the measurements.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import time
import weakref

import openmm.unit as unit

from . import spool as sp
from .reporting import BackmapReporterBase, bond_system_spec, default_worker_threads, frame_from_state

__all__ = ["LDBReporter", "frame_from_state"]

logger = logging.getLogger("openmm_ldb.reporter")


# seconds the worker may take to write its first frame before a backlog is reported
_STARTUP_GRACE_S = 30.0


class LDBReporter(BackmapReporterBase):
    """LDBReporter backmaps the frames of a Cα coarse-grained simulation to all-atom
    structures and writes them to a trajectory file, one all-atom frame per CG frame.

    ``report()`` never waits for backmapping: it appends the CG frame to a spool file beside
    the trajectory (``<file>.ldbspool``) and returns.  A worker process started with the
    reporter backmaps the spooled frames in batches, at the lowest scheduling priority
    (``nice``) and with ``threads`` torch threads, and writes them in order with the CG frame's
    step and time.  When backmapping is slower than the simulation, frames wait on disk (memory
    stays bounded; a warning is logged while the backlog keeps growing) and :meth:`close` waits
    for the last of them.  No frame is ever dropped.

    An error in the worker is raised at the next ``report()`` and at :meth:`close`; frames
    written before it stay in the (flushed) file.  If the run is interrupted (Ctrl-C, an
    exception, a killed process), every frame ``report()`` accepted is either written (the
    reporter is closed at interpreter exit; the worker also finishes the spool on its own when
    the simulation's process is gone) or still in the spool, and ``openmm-ldb recover
    <file>.ldbspool`` writes it.

    To use it, create an LDBReporter, then add it to the Simulation's list of reporters::

        simulation.reporters.append(LDBReporter('aa.dcd', 1000))

    Close it (or leave a ``with`` block) to wait for the last frames; it is also closed at
    interpreter exit.  Progress: :attr:`framesAccepted`, :attr:`framesWritten`,
    :attr:`framesQueued`, :attr:`stepsBehind`; a log line (``logging``, logger
    ``openmm_ldb.reporter``) at close.
    """

    def __init__(self, file, reportInterval, append=False, backmapper=None, model=None, device=None,
                 nSamples=1, seed=None, hydrogens=True, minimize=False, solvent="vacuum", minimizeIterations=100,
                 refinePlatform=None, beadName="CA", residues=None, skipUnknown=False, batchSize=8, maxQueue=None,
                 steps=None, threads=None, nice=19, spool=None, warnBacklog=32, workerDelay=0.0, coherent=True,
                 chainBreak=None):
        """Create an LDBReporter.

        Parameters
        ----------
        file : string
            The all-atom trajectory file.  Its extension picks the format: ``.dcd``, ``.xtc``,
            ``.pdb``, ``.cif``/``.pdbx`` or ``.h5``.  For DCD and XTC a PDB topology file is
            written beside it.  With ``nSamples > 1`` one file per sample (``aa_s0.dcd``...).
        reportInterval : int
            The interval (in time steps) at which to backmap and write frames.
        append : bool=False
            If True, continue an existing file.
        backmapper : Backmapper=None
            Take the model, device and denoising steps of this Backmapper (its TorchScript
            module is handed to the worker process; Python overrides of a subclass are not).
        model : string=None
            Path of an exported model; the shipped default when None.
        device : string=None
            ``'cuda'`` or ``'cpu'`` for the model in the worker; CUDA when a GPU is available
            (then the simulation's CPU cores are not used for backmapping at all).
        nSamples : int=1
            All-atom structures drawn per CG frame (written to separate files).
        seed : int=None
            Seed of the sampler.  With one sample and no seed, the deterministic mode writes the
            single best structure.
        hydrogens : bool=True
            Write hydrogens (placed by the model's ideal geometry).
        minimize : bool=False
            Run a short restrained amber14 minimisation of each frame (needs hydrogens).
        solvent : string='vacuum'
            'vacuum' or 'obc' (a fast native implicit solvent) for the minimisation.
        minimizeIterations : int=100
            Minimiser iterations per frame.
        refinePlatform : string=None
            OpenMM platform for the minimisation (the CPU platform uses ``threads`` threads).
        beadName : string='CA'
            Name of the Cα bead of each residue.
        residues : list of int=None
            Indices of the CG residues to backmap (others, e.g. ions or ligands, are left out).
        skipUnknown : bool=False
            Leave out residues that are not amino acids instead of raising an error.
        chainBreak : length=None
            Decide the chains by Cα–Cα distance (a Quantity, or nm) where neither the System's bonds
            nor the topology's say which residues are bonded (by default their residue numbering
            does, and else a 0.65 nm rule).
        batchSize : int=8
            Frames backmapped together by the worker (and the most it holds in memory).
        maxQueue : int=None
            Ignored (frames wait on disk, not in a bounded queue); kept for old scripts.
        steps : int=None
            DDIM steps of the sampler for samples (default 10); the best guess is one network pass
            and ignores it.
        threads : int=None
            torch CPU threads of the worker.  By default the cores the simulation's platform
            leaves free: the number of usable cores minus the CPU platform's ``Threads`` (minus
            one for GPU platforms), at least 1 and at most 8.  On a 2-core machine with a
            1-thread CPU simulation that is 1.
        nice : int=19
            Scheduling priority increment of the worker.  19 (the default) also puts it under
            Linux's ``SCHED_IDLE`` policy while the simulation runs: it gets only CPU time that
            nothing else wants (with nice 0 a busy machine's simulation slowed down
            by a large factor); at :meth:`close` it goes back to the normal policy (at nice 19) to finish.
        spool : string=None
            The spool folder (default ``<file>.ldbspool``).
        warnBacklog : int=32
            Log a warning when this many frames wait for the worker, and again each time the
            backlog doubles; not while the worker is still starting (loading torch and the
            model), unless that takes over 30 s.
        workerDelay : float=0.0
            Extra seconds the worker waits per batch (for tests of a slow worker).
        coherent : bool=True
            With the best guess (one sample, no seed), keep each residue's rotamer from frame to
            frame while its neighbourhood barely moves, so the trajectory does not flicker
            between rotamers (the per-frame best guess changes a side chain's rotamer between
            consecutive MD frames 6-70x more often than the MD does; see the benchmarks).  False
            backmaps each frame on its own.
        """
        super().__init__(reportInterval, backmapper, model, device, nSamples, seed, hydrogens, minimize, solvent,
                         minimizeIterations, refinePlatform, beadName, residues, skipUnknown, steps, chainBreak)
        self._file = os.path.abspath(os.fspath(file))
        from .writers import _format_of

        _format_of(self._file)  # an unsupported extension fails here, not in the worker
        self._append = bool(append)
        self._batchSize = max(1, int(batchSize))
        self._threads = None if threads is None else max(1, int(threads))
        self._nice = int(nice)
        self._warnAt = max(1, int(warnBacklog))
        self._closed = False
        self._accepted = 0
        self._lastStep = None
        self._periodic = None
        self._errorRaised = None
        self._t0 = None
        self._spoolPath = os.path.abspath(spool) if spool else sp.default_spool_path(self._file)
        options = dict(output=self._file, append=self._append, n_samples=self._nSamples, seed=self._seed,
                       hydrogens=self._hydrogens, minimize=self._minimize, solvent=self._solvent,
                       minimize_iterations=self._minimizeIterations, refine_platform=self._refinePlatform,
                       bead_name=self._beadName, residues=self._residues, skip_unknown=self._skipUnknown,
                       batch_size=self._batchSize, interval=self._reportInterval, model=self._model,
                       device=self._device, steps=steps, threads=self._threads, max_batch_residues=None,
                       coherent=bool(coherent), chain_break=self._chainBreak)
        self._spool = sp.Spool.create(self._spoolPath, options)
        if backmapper is not None:
            self._handOver(backmapper, options)
        env = dict(os.environ)
        # the worker's thread pools start small; it sets torch's count when it knows the platform
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENMM_CPU_THREADS=str(self._threads or 1))
        self._log = open(os.path.join(self._spoolPath, "worker.log"), "ab")
        cmd = [sys.executable, "-m", "openmm_ldb.worker", self._spoolPath, "--nice", str(self._nice)]
        if workerDelay:
            cmd += ["--delay", str(float(workerDelay))]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
                                      env=env, close_fds=True)
        _LIVE.add(self)

    def _handOver(self, backmapper, options):
        """Give the worker the model of a Backmapper object (saved into the spool)."""
        import json

        import torch

        from .export import CARD_NAME

        path = os.path.join(self._spoolPath, "model.pt")
        try:
            module = backmapper.module
            if not isinstance(module, torch.jit.ScriptModule):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.script(module)
            # the card carries the sampler settings the worker builds the function with: those of
            # this backmapper (its file's, and any it was given), not only the file's
            card = dict(backmapper.card)
            card["sampler_settings"] = {**card.get("sampler_settings", {}), **backmapper.settings}
            torch.jit.save(module, path, _extra_files={CARD_NAME: json.dumps(card)})
        except Exception as exc:  # noqa: BLE001 - e.g. a .pt2 program
            raise ValueError("LDBReporter cannot hand this Backmapper's model to its worker process; "
                             "pass model=<path of the model file> instead") from exc
        options.update(model=path, device=options["device"] or str(backmapper.device),
                       steps=options["steps"] if options["steps"] is not None else backmapper.steps,
                       max_batch_residues=backmapper.max_batch_residues)
        sp.write_json(os.path.join(self._spoolPath, sp.OPTIONS), dict(options, version=sp.VERSION))

    # ------------------------------------------------------------------ progress
    @property
    def spoolPath(self):
        """The spool folder (``openmm-ldb recover <it>`` finishes an interrupted run)."""
        return self._spoolPath

    @property
    def framesAccepted(self):
        """Frames ``report()`` has handed over (each is written, or waits in the spool)."""
        return self._accepted

    @property
    def framesWritten(self):
        """Frames backmapped and in the output file(s)."""
        if self._spool is None:
            return self._finalWritten
        return min(self._accepted, int(self._spool.status[sp.S_WRITTEN]))

    @property
    def framesQueued(self):
        """Frames accepted and not yet written (waiting in the spool or being backmapped)."""
        return self._accepted - self.framesWritten

    @property
    def stepsBehind(self):
        """Simulation steps the written trajectory lags behind the newest accepted frame (0 when
        every frame is written; one interval when one frame waits)."""
        written = self.framesWritten
        if self._spool is None or written >= self._accepted:
            return 0
        oldest = self._spool.step_of(written)  # the oldest frame not yet written
        return 0 if oldest is None else self._lastStep - oldest + self._reportInterval

    @property
    def workerState(self):
        """'starting', 'loading the model', 'running', 'finished' or 'failed'."""
        if self._spool is None:
            return self._finalState
        return sp.STATE_NAMES.get(int(self._spool.status[sp.S_STATE]), "unknown")

    @property
    def workerPeakMemory(self):
        """Peak resident memory of the worker process in MiB (0 before its first frame)."""
        if self._spool is None:
            return self._finalPeak
        return int(self._spool.status[sp.S_PEAK_KB]) / 1024.0

    @property
    def workerPid(self):
        """Process id of the worker."""
        return self._proc.pid

    def waitUntilReady(self, timeout=300.0):
        """Wait until the worker has loaded its model (it starts with the reporter, in the
        background); returns the seconds waited.  Never needed: ``report()`` does not wait for
        it.  Raises the worker's error, or TimeoutError."""
        t0 = time.perf_counter()
        while int(self._spool.status[sp.S_STATE]) < sp.READY:
            self._checkWorker()
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"the LDBReporter worker is not ready after {timeout} s")
            time.sleep(0.01)
        self._checkWorker()
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ reporting
    def report(self, simulation, state):
        """Hand a frame over to the worker and return at once.

        Parameters
        ----------
        simulation : Simulation
            The Simulation to generate a report for
        state : State
            The current state of the simulation
        """
        if self._closed:
            raise RuntimeError("LDBReporter is closed")
        if self._periodic is None:
            self._periodic = simulation.system.usesPeriodicBoundaryConditions()
        positions, box = frame_from_state(simulation, state, self._periodic)
        if self._planInput is None:
            self._start(simulation, positions, box)
        step = int(simulation.currentStep)
        self._spool.append(step, state.getTime().value_in_unit(unit.picosecond), positions, box)
        self._accepted += 1
        self._lastStep = step
        self._checkWorker()
        queued = self._accepted - int(self._spool.status[sp.S_WRITTEN])
        # frames queue while the worker starts (it imports torch and loads the model, a few
        # seconds): a backlog is worth a warning once the worker is ready, or if starting takes
        # too long
        started = int(self._spool.status[sp.S_STATE]) not in (sp.STARTING, sp.LOADING) or \
            time.perf_counter() - self._t0 > _STARTUP_GRACE_S
        if queued >= self._warnAt and started:
            self._warnAt *= 2
            elapsed = max(time.perf_counter() - self._t0, 1e-9)
            logger.warning(
                "LDBReporter %s: backmapping is %d frames (%d steps) behind the simulation and the backlog keeps "
                "growing (%.3g frames/s reported, %.3g written; worker %s). No frame is lost: they wait in %s "
                "(%.1f MB) and close() writes them. A longer reportInterval, fewer samples or a GPU keeps up.",
                os.path.basename(self._file), queued, self.stepsBehind, self._accepted / elapsed,
                self.framesWritten / elapsed, self.workerState, self._spoolPath,
                queued * sp.record_size(len(positions)) / 1e6)

    def _start(self, simulation, positions, box):
        self._t0 = time.perf_counter()
        self._planInput = (simulation.topology, positions, box, simulation.system)
        integrator = simulation.integrator
        dt = integrator.getStepSize().value_in_unit(unit.picosecond) if hasattr(integrator, "getStepSize") else None
        try:
            platform = simulation.context.getPlatform().getName()
        except Exception:  # noqa: BLE001
            platform = None
        threads = self._threads or default_worker_threads(simulation)
        system = bond_system_spec(simulation.system)  # XML of the bond forces: the worker rebuilds it
        self._spool.write_topology(dict(topology=simulation.topology, system=system, positions=positions, box=box,
                                        dt_ps=dt, n_particles=len(positions), periodic=box is not None,
                                        platform=platform, threads=threads))

    def _checkWorker(self):
        """Raise the worker's error (or its unexpected exit) in the simulation's thread."""
        failed = int(self._spool.status[sp.S_STATE]) == sp.FAILED
        code = self._proc.poll()
        if not failed and code is None:
            return
        if code is None:  # failed: give it a moment to finish writing error.txt and exit
            try:
                code = self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        error = self._spool.error()
        if error is None and code == 0 and not self._closed:
            error = "the worker process exited before the reporter was closed"
        if error is None and code not in (0, None):
            error = f"the worker process (pid {self._proc.pid}) stopped unexpectedly (exit code {code})"
        if error is None:
            return
        first = error.strip().splitlines()[0]
        self._errorRaised = first
        raise RuntimeError(f"LDBReporter backmapping failed: {first}. The frames not written are kept in "
                           f"{self._spoolPath}; `openmm-ldb recover {self._spoolPath}` writes them.\n"
                           f"Worker log:\n{self._spool.log_tail()}")

    def close(self):
        """Wait until every accepted frame is backmapped and written, close the files and log a
        summary.  Raises the worker's error (the spool is then kept for ``openmm-ldb recover``)."""
        if self._closed:
            if self._errorRaised is not None:
                raise RuntimeError(f"LDBReporter backmapping failed: {self._errorRaised}. The frames not written "
                                   f"are kept in {self._spoolPath}; `openmm-ldb recover {self._spoolPath}` "
                                   "writes them.")
            return
        self._closed = True
        _LIVE.discard(self)
        self._spool.close_writer()
        t0 = time.perf_counter()
        if hasattr(os, "SCHED_IDLE"):  # the simulation is done: the worker may now compete for the CPU
            try:
                os.sched_setscheduler(self._proc.pid, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass
        try:
            self._proc.stdin.write(b"close\n")
            self._proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        last = t0
        try:
            while self._proc.poll() is None:
                time.sleep(0.02)
                if time.perf_counter() - last > 30:
                    last = time.perf_counter()
                    logger.info("LDBReporter %s: waiting for the worker, %d of %d frames written",
                                os.path.basename(self._file), self.framesWritten, self._accepted)
        except KeyboardInterrupt:
            logger.warning("LDBReporter: interrupted while waiting; the worker (pid %d) goes on writing the %d "
                           "remaining frames in the background. If it is stopped, `openmm-ldb recover %s` "
                           "writes them.", self._proc.pid, self.framesQueued, self._spoolPath)
            raise
        waited = time.perf_counter() - t0
        self._log.close()
        status = self._spool.status
        self._finalWritten = min(self._accepted, int(status[sp.S_WRITTEN]))
        self._finalState = sp.STATE_NAMES.get(int(status[sp.S_STATE]), "unknown")
        self._finalPeak = int(status[sp.S_PEAK_KB]) / 1024.0
        try:
            self._checkWorker()
        finally:
            self._spool.close()
            self._spool = None
        if self._finalWritten != self._accepted:  # e.g. the worker was killed after its last report
            self._errorRaised = (f"{self._accepted - self._finalWritten} of {self._accepted} frames were not written "
                                 f"(worker state: {self._finalState})")
            raise RuntimeError(f"LDBReporter: {self._errorRaised}; `openmm-ldb recover {self._spoolPath}` "
                               "writes them.")
        elapsed = time.perf_counter() - (self._t0 or t0)
        logger.info("LDBReporter %s: %d frame(s) written in %.1f s (%.1f s waiting at close), worker peak "
                    "memory %.0f MiB", self._file, self._finalWritten, elapsed, waited, self._finalPeak)

    def __enter__(self):
        return self

    def __exit__(self, excType, excValue, traceback):
        if excType is None:
            self.close()
        else:  # keep the simulation's own exception; still write every accepted frame
            try:
                self.close()
            except Exception as exc:  # noqa: BLE001
                logger.error("LDBReporter: %s", exc)
        return False

    def __del__(self):
        # garbage collection does not wait for the worker (close() does): it is told to finish the
        # frames it has, which it does on its own, as a separate process, and then exits
        try:
            if not self._closed and getattr(self, "_proc", None) is not None:
                self._closed = True
                self._spool.close_writer()
                self._proc.stdin.write(b"close\n")
                self._proc.stdin.close()
        except Exception:  # noqa: BLE001
            pass


_LIVE = weakref.WeakSet()


@atexit.register
def _close_all():
    for reporter in list(_LIVE):
        try:
            reporter.close()
        except Exception as exc:  # noqa: BLE001
            logger.error("LDBReporter: %s", exc)
