"""What LDBReporter and SnapshotReporter share: settings, describeNextReport, the plan, the refiner."""

from __future__ import annotations

import os

import numpy as np
import openmm.unit as unit


def frame_from_state(simulation, state, periodic=None):
    """CG positions (nm, numpy) and, for periodic systems, box vectors (nm) of a State
    (``periodic``: whether the System is periodic, when already known)."""
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    box = None
    if periodic is None:
        periodic = simulation.system.usesPeriodicBoundaryConditions()
    if periodic:
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
    return np.asarray(positions), None if box is None else np.asarray(box)


def bond_system_spec(system) -> dict:
    """What a plan reads from a CG ``System``, cheap to hand to the worker process: the particle
    count, default box, constraints and the bond-type forces (any force with ``getNumBonds``) as
    XML.  :func:`system_from_spec` rebuilds a System from it."""
    import openmm

    box = [[v.x, v.y, v.z] for v in (b.value_in_unit(unit.nanometer) for b in system.getDefaultPeriodicBoxVectors())]
    return {"n_particles": system.getNumParticles(), "box": box,
            "constraints": [tuple(system.getConstraintParameters(k))[:2] for k in range(system.getNumConstraints())],
            "forces": [openmm.XmlSerializer.serialize(f) for f in system.getForces()
                       if hasattr(f, "getNumBonds") and hasattr(f, "getBondParameters")]}


def system_from_spec(spec: dict):
    """The reduced System of :func:`bond_system_spec` (unit masses, zero-length constraints)."""
    import openmm

    out = openmm.System()
    for _ in range(int(spec["n_particles"])):
        out.addParticle(1.0)
    out.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*v) * unit.nanometer for v in spec["box"]])
    for a, b in spec["constraints"]:
        out.addConstraint(int(a), int(b), 0.1)
    for xml in spec["forces"]:
        out.addForce(openmm.XmlSerializer.deserialize(xml))
    return out


def bond_system(system):
    """A copy of ``system`` with only what a plan reads from it (see :func:`bond_system_spec`)."""
    return system_from_spec(bond_system_spec(system))


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def simulation_cpu_threads(simulation) -> int:
    """CPU threads the simulation's platform keeps busy: the CPU platform's ``Threads``, else one
    (the thread that drives a GPU, or the Reference platform)."""
    try:
        platform = simulation.context.getPlatform()
        if platform.getName() == "CPU":
            return max(1, int(platform.getPropertyValue(simulation.context, "Threads")))
    except Exception:  # noqa: BLE001 - a platform without the property
        pass
    return 1


def default_worker_threads(simulation, cap: int = 8) -> int:
    """torch CPU threads for backmapping beside ``simulation``: the cores its platform leaves free
    (at least one, at most ``cap``)."""
    return max(1, min(cap, available_cpus() - simulation_cpu_threads(simulation)))


class BackmapReporterBase(object):
    """Settings, ``describeNextReport`` and the plan shared by the backmapping reporters."""

    def __init__(self, reportInterval, backmapper=None, model=None, device=None, nSamples=1, seed=None,
                 hydrogens=True, minimize=False, solvent="vacuum", minimizeIterations=100, refinePlatform=None,
                 beadName="CA", residues=None, skipUnknown=False, steps=None, chainBreak=None):
        self._reportInterval = int(reportInterval)
        if self._reportInterval < 1:
            raise ValueError(f"reportInterval must be >= 1, got {reportInterval}")
        self._backmapper = backmapper
        self._model = None if model is None else os.path.abspath(os.fspath(model))
        self._device = None if device is None else str(device)
        self._steps = steps
        self._nSamples = int(nSamples)
        if self._nSamples < 1:
            raise ValueError(f"nSamples must be >= 1, got {nSamples}")
        self._seed = seed
        self._hydrogens = bool(hydrogens) or bool(minimize)
        self._minimize = bool(minimize)
        self._solvent = solvent
        self._minimizeIterations = int(minimizeIterations)
        self._refinePlatform = refinePlatform
        self._beadName = beadName
        self._residues = None if residues is None else [int(i) for i in residues]
        self._skipUnknown = bool(skipUnknown)
        # nm (a Quantity is converted): where the CG topology and System say nothing of the chains
        self._chainBreak = None if chainBreak is None else (
            chainBreak.value_in_unit(unit.nanometer) if unit.is_quantity(chainBreak) else float(chainBreak))
        self._plan = None
        self._planInput = None  # (cg topology, positions nm, box nm, System) of the first frame

    # ------------------------------------------------------------------ OpenMM reporter protocol
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

    # ------------------------------------------------------------------ plan
    @property
    def plan(self):
        """The :class:`BackmapPlan` (all-atom topology, chains, disulfides); None before the first report."""
        if self._plan is None and self._planInput is not None:
            self._plan = self._makePlan(*self._planInput)
        return self._plan

    @property
    def topology(self):
        """The all-atom ``openmm.app.Topology`` written (None before the first report)."""
        plan = self.plan
        return None if plan is None else plan.topology

    def _getBackmapper(self):
        if self._backmapper is None:
            from .backmapper import Backmapper

            self._backmapper = Backmapper(self._model, device=self._device, steps=self._steps)
        return self._backmapper

    def _makePlan(self, cg_topology, positions, box, system=None):
        bm = self._getBackmapper()
        # errors name the reporter's options (skipUnknown, chainBreak)
        return bm.plan(cg_topology, positions, self._beadName, self._residues, self._skipUnknown, self._hydrogens,
                       box_vectors=box, chain_break=self._chainBreak, entry_point="reporter", system=system)

    def _makeRefiner(self, topology):
        if not self._minimize:
            return None
        from .refine import Refiner

        return Refiner(topology, self._solvent, max_iterations=self._minimizeIterations, platform=self._refinePlatform)
