"""LDBReporter: a live all-atom trajectory beside a coarse-grained OpenMM simulation."""

from __future__ import annotations

import atexit
import queue
import threading
import weakref

import numpy as np
import openmm.unit as unit

from .backmapper import Backmapper, stream_seed
from .writers import TrajectoryWriter, sample_paths

_STOP = object()


def frame_from_state(simulation, state):
    """CG positions (nm, numpy) and, for periodic systems, box vectors (nm) of a State."""
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    box = None
    if simulation.system.usesPeriodicBoundaryConditions():
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
    return positions, box


class LDBReporter(object):
    """LDBReporter backmaps the frames of a Cα coarse-grained simulation to all-atom
    structures and writes them to a trajectory file, one all-atom frame per CG frame.

    Backmapping runs on a worker thread, in batches, so ``Simulation.step()`` is not held up.
    A bounded queue gives back-pressure: when the worker falls behind, ``report()`` waits,
    and no frame is ever dropped.  Frames are written in order with the CG frame's step and
    time.  An error in the worker is raised in the simulation's thread at the next report
    and at :meth:`close`; frames written before it stay in the (flushed) file.

    To use it, create an LDBReporter, then add it to the Simulation's list of reporters::

        simulation.reporters.append(LDBReporter('aa.dcd', 1000))

    Close it (or leave a ``with`` block) to wait for the last frames; it is also closed at
    interpreter exit.
    """

    def __init__(self, file, reportInterval, append=False, backmapper=None, model=None, device=None,
                 nSamples=1, seed=None, hydrogens=True, minimize=False, solvent="vacuum", minimizeIterations=100,
                 refinePlatform=None, beadName="CA", residues=None, skipUnknown=False, batchSize=8, maxQueue=32,
                 steps=None):
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
            The backmapper to use (shared between reporters); one is created from ``model``
            and ``device`` otherwise.
        model : string=None
            Path of an exported model; the shipped default when None.
        device : string=None
            ``'cuda'`` or ``'cpu'``; CUDA when available by default.
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
            OpenMM platform for the minimisation.
        beadName : string='CA'
            Name of the Cα bead of each residue.
        residues : list of int=None
            Indices of the CG residues to backmap (others, e.g. ions or ligands, are left out).
        skipUnknown : bool=False
            Leave out residues that are not amino acids instead of raising an error.
        batchSize : int=8
            Frames backmapped together by the worker.
        maxQueue : int=32
            Frames waiting for the worker before ``report()`` blocks.
        steps : int=None
            Denoising steps of the sampler (default 4 for the best guess, 10 for samples).
        """
        self._reportInterval = int(reportInterval)
        self._file = file
        self._append = append
        self._backmapper = backmapper or Backmapper(model, device=device, steps=steps)
        self._nSamples = int(nSamples)
        self._seed = seed
        self._hydrogens = bool(hydrogens) or bool(minimize)
        self._minimize = bool(minimize)
        self._solvent = solvent
        self._minimizeIterations = minimizeIterations
        self._refinePlatform = refinePlatform
        self._beadName = beadName
        self._residues = residues
        self._skipUnknown = skipUnknown
        self._batchSize = max(1, int(batchSize))
        self._queue = queue.Queue(maxsize=max(1, int(maxQueue)))
        self._plan = None
        self._writers = []
        self._worker = None
        self._error = None
        self._closed = False
        self._framesWritten = 0
        self._refiner = None
        self._frameIndex = 0
        _LIVE.add(self)

    @property
    def plan(self):
        """The :class:`BackmapPlan` (all-atom topology, chains, disulfides); None before the first report."""
        return self._plan

    @property
    def topology(self):
        """The all-atom ``openmm.app.Topology`` written (None before the first report)."""
        return None if self._plan is None else self._plan.topology

    @property
    def framesWritten(self):
        return self._framesWritten

    def describeNextReport(self, simulation):
        """Get information about the next report this object will generate.

        Parameters
        ----------
        simulation : Simulation
            The Simulation to generate a report for

        Returns
        -------
        dict
            A dictionary describing the required information for the next report
        """
        steps = self._reportInterval - simulation.currentStep % self._reportInterval
        # unwrapped positions: molecules stay whole; chains are also made whole explicitly
        return {'steps': steps, 'periodic': False, 'include': ['positions']}

    def report(self, simulation, state):
        """Queue a frame for backmapping.

        Parameters
        ----------
        simulation : Simulation
            The Simulation to generate a report for
        state : State
            The current state of the simulation
        """
        self._raiseWorkerError()
        if self._closed:
            raise RuntimeError("LDBReporter is closed")
        positions, box = frame_from_state(simulation, state)
        if self._plan is None:
            self._start(simulation, positions, box)
        time = state.getTime().value_in_unit(unit.picosecond)
        item = (int(simulation.currentStep), float(time), np.array(positions, dtype=np.float64), box)
        while True:  # block (back-pressure) but keep noticing worker failures
            try:
                self._queue.put(item, timeout=0.5)
                break
            except queue.Full:
                self._raiseWorkerError()

    def _start(self, simulation, positions, box):
        self._plan = self._backmapper.plan(simulation.topology, positions, self._beadName, self._residues,
                                           self._skipUnknown, self._hydrogens, box_vectors=box)
        dt = simulation.integrator.getStepSize() if hasattr(simulation.integrator, "getStepSize") else None
        for path in sample_paths(self._file, self._nSamples):
            self._writers.append(TrajectoryWriter(path, self._plan.topology, append=self._append, dt=dt,
                                                  interval=self._reportInterval))
        if self._minimize:
            from .refine import Refiner

            self._refiner = Refiner(self._plan.topology, self._solvent, max_iterations=self._minimizeIterations,
                                    platform=self._refinePlatform)
        self._worker = threading.Thread(target=self._run, name="LDBReporter-worker", daemon=True)
        self._worker.start()

    def _run(self):
        stop = False
        while not stop:
            items = [self._queue.get()]
            while len(items) < self._batchSize:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(it is _STOP for it in items):
                stop = True
                items = [it for it in items if it is not _STOP]
            if not items or self._error is not None:
                continue
            try:
                self._process(items)
            except BaseException as exc:  # noqa: BLE001 - handed to the simulation thread
                self._error = exc

    def _process(self, items):
        positions = np.stack([it[2] for it in items])
        box = None
        if items[0][3] is not None:
            box = np.stack([it[3] for it in items])
        seed = stream_seed(self._seed, self._nSamples, self._frameIndex)
        xyz = self._backmapper.sample(self._plan, positions, self._nSamples, seed=seed,
                                      deterministic=(self._nSamples == 1 and self._seed is None),
                                      box_vectors=box)  # [F, S, atoms, 3] Å
        xyz = xyz / 10.0
        for f, (step, time, _, _) in enumerate(items):
            for s, writer in enumerate(self._writers):
                frame = xyz[f, s]
                if self._refiner is not None:
                    frame = self._refiner.minimize(frame)
                writer.write(frame, step=step, time=time)
            self._framesWritten += 1
            self._frameIndex += 1

    def _raiseWorkerError(self):
        if self._error is not None:
            err = self._error
            raise RuntimeError(f"LDBReporter backmapping failed: {err}") from err

    def close(self):
        """Backmap the frames still queued, flush and close the files.  Raises the worker's error."""
        if self._closed:
            self._raiseWorkerError()
            return
        self._closed = True
        _LIVE.discard(self)
        if self._worker is not None:
            self._queue.put(_STOP)
            self._worker.join()
        for writer in self._writers:
            writer.close()
        self._raiseWorkerError()

    def __enter__(self):
        return self

    def __exit__(self, excType, excValue, traceback):
        if excType is None:
            self.close()
        else:  # keep the simulation's own exception; still drain and flush
            try:
                self.close()
            except Exception:
                pass
        return False

    def __del__(self):
        try:
            if not self._closed and self._worker is not None:
                self.close()
        except Exception:
            pass


_LIVE = weakref.WeakSet()


@atexit.register
def _close_all():
    for reporter in list(_LIVE):
        try:
            reporter.close()
        except Exception:
            pass
