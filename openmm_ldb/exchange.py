"""Resolution exchange: switch a running simulation between Cα coarse-grained and all-atom.

:func:`to_all_atom` backmaps the current state of a CG ``Simulation`` and returns a ready
all-atom ``Simulation`` (amber14; implicit solvent, explicit TIP3P water or vacuum), minimised
first with the Cα held at the CG beads and then freely.  :func:`to_coarse_grained` puts the
all-atom Cα positions back into the CG ``Simulation``'s context.  The all-atom Simulation keeps
a :class:`ResolutionMap` (``simulation.resolution_map``) that says which CG bead belongs to
which Cα atom, so the switch back needs nothing else::

    from openmm_ldb import cg, exchange

    go = cg.GoModel.from_structure(cg.demo_structure_path())
    cg_sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions)
    for cycle in range(3):
        cg_sim.step(10000)                                   # CG sampling
        aa_sim = exchange.to_all_atom(cg_sim, solvent="implicit")
        aa_sim.step(1000)                                    # all-atom refinement
        exchange.to_coarse_grained(aa_sim, cg_sim)           # and back

Implicit solvent is amber14 plus OpenMM's native ``GBSAOBCForce`` with the mbondi2 radii of
``implicit/obc2.xml``: the same energies as ``implicit/obc2.xml`` (which builds a
``CustomGBForce``) to 0.01 %, about 7x faster on CPU (GB1, 855 atoms: 12 vs 89 ms per step on
one core).  Put an ``implicit/*.xml`` file in ``forcefield`` to use that model instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import openmm
import openmm.unit as unit
from openmm import app

from . import residues as rc
from .refine import add_obc2, minimize_context  # noqa: F401  (re-exported)

__all__ = ["ResolutionMap", "add_obc2", "minimize_context", "to_all_atom", "to_coarse_grained"]

SOLVENTS = ("implicit", "explicit", "vacuum")
RESTRAINT_PARAMETER = "ldb_ca_restraint_k"

# OBC2 radii (mbondi2, nm) and screening factors by element, as implicit/obc2.xml; H on N: 0.13 nm.

_default_backmapper = None


@dataclass
class ResolutionMap:
    """Which CG bead and which all-atom Cα belong to each residue.

    Attributes
    ----------
    cg_topology : openmm.app.Topology
        The coarse-grained topology.
    aa_topology : openmm.app.Topology
        The all-atom topology (protein first, then water and ions with explicit solvent).
    bead_index : numpy.ndarray
        ``[n_residues]`` CG particle index of each mapped residue.
    ca_index : numpy.ndarray
        ``[n_residues]`` all-atom index of the Cα atom of the same residue.
    chain_index : numpy.ndarray
        ``[n_residues]`` chain number of each residue (for making chains whole).
    n_protein_atoms : int
        Atoms of the backmapped protein; the solvent follows them.
    solvent : str
        ``'implicit'``, ``'explicit'`` or ``'vacuum'`` (``None`` for a map built from topologies).
    plan : BackmapPlan or None
        The backmapping plan (residues, chain segments, disulfides) of the switch.
    """

    cg_topology: app.Topology
    aa_topology: app.Topology
    bead_index: np.ndarray
    ca_index: np.ndarray
    chain_index: np.ndarray
    n_protein_atoms: int
    solvent: str | None = None
    plan: object = field(default=None, repr=False)

    @property
    def n_residues(self) -> int:
        return len(self.bead_index)

    @classmethod
    def from_topologies(cls, cg_topology: app.Topology, aa_topology: app.Topology, bead_name: str = "CA",
                        residues=None, skip_unknown: bool = True) -> ResolutionMap:
        """Match residues of a CG and an all-atom topology in order (for any all-atom Simulation).

        The amino-acid residues of the CG topology (``residues`` selects some; see
        :func:`openmm_ldb.topology.read_cg_topology`) are paired in order with the residues of
        the all-atom topology that have a ``CA`` atom and an amino-acid name.  Water, ions and
        ligands are ignored.

        Raises
        ------
        ValueError
            When the numbers of residues or their names (up to protonation variants) differ.
        """
        from .topology import read_cg_topology

        mapping = read_cg_topology(cg_topology, bead_name, residues, skip_unknown)
        aa_res = []
        for res in aa_topology.residues():
            try:
                name = rc.canonical_residue_name(res.name)
            except KeyError:
                continue
            ca = [a for a in res.atoms() if a.name == "CA"]
            if ca:
                aa_res.append((res, name, ca[0].index))
        if len(aa_res) != mapping.n_residues:
            raise ValueError(f"the CG topology has {mapping.n_residues} amino-acid residues but the all-atom "
                             f"topology has {len(aa_res)} residues with a CA atom")
        for i, (res, name, _) in enumerate(aa_res):
            cg_name = rc.RESTYPES_3[mapping.restype[i]]
            if name != cg_name:
                raise ValueError(f"residue {i} is {cg_name} {mapping.residue_ids[i]} in the CG topology but "
                                 f"{res.name} {res.id} (chain {res.chain.id}) in the all-atom topology")
        protein_atoms = sum(len(list(r.atoms())) for r, _, _ in aa_res)
        return cls(cg_topology, aa_topology, mapping.bead_index.copy(),
                   np.array([i for _, _, i in aa_res], dtype=np.int64), mapping.chain_index.copy(), protein_atoms)


# ---------------------------------------------------------------------------------------------- helpers
def _quantity(x, u):
    return x if unit.is_quantity(x) else x * u


def _platform(platform):
    if platform is None or isinstance(platform, openmm.Platform):
        return platform
    return openmm.Platform.getPlatformByName(str(platform))


def _is_periodic(simulation: app.Simulation) -> bool:
    return simulation.system.usesPeriodicBoundaryConditions()


def _whole(ca_nm: np.ndarray, chain_index: np.ndarray, box_nm: np.ndarray | None) -> np.ndarray:
    from .backmapper import make_whole

    if box_nm is None:
        return ca_nm
    return make_whole(ca_nm[None] * 10.0, chain_index, box_nm[None] * 10.0)[0] / 10.0


def _gather_chains(ca_nm: np.ndarray, chain_index: np.ndarray, box_nm: np.ndarray) -> np.ndarray:
    """Move whole chains by box vectors so that each chain's centre is the image nearest to the
    centre of the chains placed before it (a complex from a periodic box, for a non-periodic system)."""
    out = ca_nm.copy()
    placed = chain_index == chain_index[0]
    for c in np.unique(chain_index)[1:]:
        sel = chain_index == c
        d = out[sel].mean(0) - out[placed].mean(0)
        shift = np.zeros(3)
        for k in (2, 1, 0):
            n = np.round((d - shift)[k] / box_nm[k, k])
            shift += n * box_nm[k]
        out[sel] -= shift
        placed |= sel
    return out


def _parse_box(box_padding):
    """-> ('padding', Quantity) | ('boxVectors', (Vec3,)*3) | ('boxSize', Vec3)."""
    if box_padding is None:
        return "padding", 1.0 * unit.nanometer
    value = box_padding.value_in_unit(unit.nanometer) if unit.is_quantity(box_padding) else box_padding
    arr = np.asarray([[float(c) for c in v] if hasattr(v, "__len__") else float(v) for v in value]
                     if hasattr(value, "__len__") else float(value), dtype=np.float64)
    if arr.ndim == 0:
        return "padding", float(arr) * unit.nanometer
    if arr.shape == (3,):
        return "boxSize", openmm.Vec3(*(float(v) for v in arr)) * unit.nanometer
    if arr.shape == (3, 3):
        return "boxVectors", tuple(openmm.Vec3(*(float(v) for v in row)) * unit.nanometer for row in arr)
    raise ValueError(f"box_padding must be a length (padding), three box lengths or three box vectors; "
                     f"got shape {arr.shape}")


def _default_forcefield(solvent: str) -> tuple[str, ...]:
    if solvent == "explicit":
        return ("amber14-all.xml", "amber14/tip3p.xml")
    return ("amber14-all.xml",)


def _minimize(system, topology, positions, ca_index, ca_targets_nm, restraint_k, restrained_iterations,
              free_iterations, tolerance, platform, platform_properties):
    """Cα-restrained, then free minimisation on an unconstrained copy of the System.

    OpenMM's minimiser handles constraints with a sequence of stiff penalty terms, which costs
    5-10x more energy evaluations; the unconstrained System (flexible water, amber's own X-H
    bond terms) minimises the same structure far faster, and the constraints are then applied
    to the result.  Returns positions (Quantity, nm)."""
    if system.usesPeriodicBoundaryConditions():
        expression = f"0.5*{RESTRAINT_PARAMETER}*periodicdistance(x, y, z, x0, y0, z0)^2"
    else:
        expression = f"0.5*{RESTRAINT_PARAMETER}*((x-x0)^2+(y-y0)^2+(z-z0)^2)"
    restraint = openmm.CustomExternalForce(expression)
    restraint.addGlobalParameter(RESTRAINT_PARAMETER, float(restraint_k))
    for p in ("x0", "y0", "z0"):
        restraint.addPerParticleParameter(p)
    for i in ca_index:
        restraint.addParticle(int(i), [float(v) for v in ca_targets_nm[i]])
    system.addForce(restraint)
    integrator = openmm.VerletIntegrator(0.001)
    if platform_properties:
        context = openmm.Context(system, integrator, platform, platform_properties)
    else:
        context = openmm.Context(system, integrator, platform)
    box = topology.getPeriodicBoxVectors()
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(positions)
    if restrained_iterations > 0:
        minimize_context(context, tolerance, restrained_iterations)
    if free_iterations > 0:
        context.setParameter(RESTRAINT_PARAMETER, 0.0)
        minimize_context(context, tolerance, free_iterations)
    return context.getState(positions=True).getPositions(asNumpy=True)


# ---------------------------------------------------------------------------------------------- CG -> AA
def to_all_atom(cg_simulation: app.Simulation, backmapper=None, solvent: str = "implicit", box_padding=None,
                forcefield=None, platform=None, platform_properties: dict | None = None,
                temperature=300.0 * unit.kelvin, friction=1.0 / unit.picosecond, timestep=2.0 * unit.femtosecond,
                minimize_iterations: int = 500, free_minimize_iterations: int = 200,
                restraint_k: float = 5000.0, tolerance: float = 10.0, seed: int | None = None,
                bead_name: str = "CA", residues=None, skip_unknown: bool = False,
                ionic_strength=0.0 * unit.molar, pressure=None, carry_time: bool = True) -> app.Simulation:
    """Backmap a CG Simulation's current state into a ready all-atom Simulation.

    Steps: backmap the Cα beads (hydrogens included; CYS pairs within 6.8 Å Cα–Cα whose CB face
    each other become disulfides), build the amber14 System, add solvent, minimise with harmonic restraints that
    hold every Cα at its CG bead, minimise again without them, draw velocities at
    ``temperature``.  The result has a ``LangevinMiddleIntegrator`` and HBonds constraints, and
    carries a :class:`ResolutionMap` as ``simulation.resolution_map`` for
    :func:`to_coarse_grained`.

    Parameters
    ----------
    cg_simulation : openmm.app.Simulation
        The coarse-grained simulation (one bead per residue, standard residue names).
    backmapper : Backmapper, optional
        The backmapper to use; the shipped model (created once and reused) when omitted.
    solvent : {'implicit', 'explicit', 'vacuum'}
        ``'implicit'``: amber14 + OBC2 (see :func:`add_obc2`), no cutoff.  ``'explicit'``: TIP3P
        water added by ``Modeller.addSolvent`` (neutralised; PME, 1 nm cutoff).  ``'vacuum'``:
        no cutoff, no solvent.
    box_padding : Quantity or box, optional
        Explicit solvent only: a length is the padding around the protein (default 1 nm); three
        lengths are a rectangular box size; three vectors are the box vectors.
    forcefield : sequence of str, optional
        Force-field files; default ``('amber14-all.xml',)``, plus ``'amber14/tip3p.xml'`` for
        explicit solvent.  With an ``implicit/*.xml`` file among them, implicit solvent uses that
        model instead of the native OBC2 force.
    platform : str or openmm.Platform, optional
        OpenMM platform; the fastest when omitted.
    platform_properties : dict, optional
        Platform properties, e.g. ``{'Threads': '2'}``.
    temperature, friction, timestep : Quantity
        ``LangevinMiddleIntegrator`` settings (300 K, 1/ps, 2 fs).
    minimize_iterations : int
        Iterations of the Cα-restrained minimisation (0 skips it).
    free_minimize_iterations : int
        Iterations of the following unrestrained minimisation (0 skips it).
    restraint_k : float
        Cα restraint force constant in kJ/mol/nm².
    tolerance : float
        Minimiser tolerance in kJ/mol/nm.
    seed : int, optional
        Seeds the backmapping sampler, the integrator and the velocities.  Without a seed the
        backmapping is the deterministic best guess and the dynamics are randomly seeded.
    bead_name, residues, skip_unknown
        Which CG particles are residues (see :meth:`Backmapper.plan`); others are left out of
        the all-atom system.
    ionic_strength : Quantity
        Explicit solvent: salt added besides the neutralising ions.
    pressure : Quantity, optional
        Explicit solvent: add a ``MonteCarloBarostat`` at this pressure (NPT); NVT when omitted.
    carry_time : bool
        Start the all-atom clock at the CG simulation's time.

    Returns
    -------
    openmm.app.Simulation
        Ready to ``step()``; ``simulation.resolution_map`` is its :class:`ResolutionMap`.
    """
    if solvent not in SOLVENTS:
        raise ValueError(f"unknown solvent {solvent!r}: use one of {', '.join(SOLVENTS)}")
    if backmapper is None:
        global _default_backmapper
        if _default_backmapper is None:
            from .backmapper import Backmapper

            _default_backmapper = Backmapper()
        backmapper = _default_backmapper
    temperature = _quantity(temperature, unit.kelvin)
    friction = _quantity(friction, 1 / unit.picosecond)
    timestep = _quantity(timestep, unit.picosecond)
    platform = _platform(platform)

    state = cg_simulation.context.getState(positions=True, enforcePeriodicBox=False)
    cg_xyz = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer) \
        if _is_periodic(cg_simulation) else None
    # the chains and molecules from the CG System's bonds, as the reporter's worker takes them
    plan = backmapper.plan(cg_simulation.topology, cg_xyz, bead_name, residues, skip_unknown, hydrogens=True,
                           box_vectors=box, system=cg_simulation.system)
    mapping = plan.mapping
    ca = np.asarray(cg_xyz, dtype=np.float64)[mapping.bead_index]
    if box is not None:  # whole chains; for a non-periodic all-atom system also the complex gathered
        ca = _whole(ca, mapping.chain_index, np.asarray(box, dtype=np.float64))
        if solvent != "explicit":
            ca = _gather_chains(ca, mapping.chain_index, np.asarray(box, dtype=np.float64))
    # backmap the (whole, gathered) Cα trace: the all-atom Cα sit exactly on it
    full = np.zeros((mapping.n_particles, 3))
    full[mapping.bead_index] = ca
    xyz = next(backmapper.stream(plan, [full], 1, seed=seed)).positions[0]   # nm
    topology = plan.topology
    ca_index = np.array([a.index for a in topology.atoms() if a.name == "CA"], dtype=np.int64)
    n_protein = topology.getNumAtoms()

    files = tuple(forcefield) if forcefield is not None else _default_forcefield(solvent)
    ff = app.ForceField(*files)
    positions = xyz * unit.nanometer
    if solvent == "explicit":
        modeller = app.Modeller(topology, positions)
        kind, value = _parse_box(box_padding)
        modeller.addSolvent(ff, model="tip3p", neutralize=True, ionicStrength=ionic_strength, **{kind: value})
        topology, positions = modeller.topology, modeller.positions

    def create(constraints, rigid_water, cutoff=False):
        if solvent == "explicit":
            system = ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=1.0 * unit.nanometer,
                                     constraints=constraints, rigidWater=rigid_water)
        elif cutoff:  # minimisation only: a 1.2 nm cutoff finds the same minimum several times faster
            system = ff.createSystem(topology, nonbondedMethod=app.CutoffNonPeriodic,
                                     nonbondedCutoff=1.2 * unit.nanometer, constraints=constraints,
                                     rigidWater=rigid_water)
        else:
            system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=constraints,
                                     rigidWater=rigid_water)
            if solvent == "implicit" and not any(f.startswith("implicit/") for f in files):
                add_obc2(system, topology)
        return system

    system = create(app.HBonds, True)
    if pressure is not None:
        system.addForce(openmm.MonteCarloBarostat(_quantity(pressure, unit.bar), temperature))
    integrator = openmm.LangevinMiddleIntegrator(temperature, friction, timestep)
    if seed is not None:
        integrator.setRandomNumberSeed(int(seed))
    if platform is None:
        simulation = app.Simulation(topology, system, integrator)
    else:
        simulation = app.Simulation(topology, system, integrator, platform, platform_properties or {})
    free = int(free_minimize_iterations or 0)
    if minimize_iterations or free:
        positions = _minimize(create(None, False, cutoff=True), topology, positions, ca_index, xyz, restraint_k,
                              int(minimize_iterations), int(free), tolerance, simulation.context.getPlatform(),
                              platform_properties if platform is not None else None)
    simulation.context.setPositions(positions)
    simulation.context.applyConstraints(1e-6)
    if seed is None:
        simulation.context.setVelocitiesToTemperature(temperature)
    else:
        simulation.context.setVelocitiesToTemperature(temperature, int(seed))
    if carry_time:
        simulation.context.setTime(state.getTime())
    simulation.resolution_map = ResolutionMap(cg_simulation.topology, topology, mapping.bead_index.copy(),
                                              ca_index, mapping.chain_index.copy(), n_protein, solvent, plan)
    return simulation


# ---------------------------------------------------------------------------------------------- AA -> CG
def to_coarse_grained(aa_simulation: app.Simulation, cg_simulation: app.Simulation,
                      resolution_map: ResolutionMap | None = None, velocities: str | None = "temperature",
                      temperature=None, seed: int | None = None, carry_time: bool = True,
                      bead_name: str = "CA") -> app.Simulation:
    """Set the all-atom Cα positions into a CG Simulation's context.

    The all-atom Cα of every mapped residue becomes that residue's CG bead; solvent and all
    other atoms are ignored, CG particles without a residue in the map (e.g. skipped ligand
    beads) keep their positions.  Chains are made whole across periodic boundaries.

    Parameters
    ----------
    aa_simulation : openmm.app.Simulation
        The all-atom simulation (from :func:`to_all_atom`, or any Simulation whose protein
        residues match the CG residues in order).
    cg_simulation : openmm.app.Simulation
        The CG simulation to continue; its context is updated in place.
    resolution_map : ResolutionMap, optional
        Default: ``aa_simulation.resolution_map``, else matched with
        :meth:`ResolutionMap.from_topologies`.
    velocities : {'temperature', None}
        ``'temperature'`` draws new CG velocities at ``temperature``; None keeps the CG
        context's velocities from before the switch.  All-atom velocities are never carried
        over (a Cα moves with its residue's fast motions, not the CG bead's).
    temperature : Quantity, optional
        Default: the CG integrator's temperature, else 300 K.
    seed : int, optional
        Seed of the new velocities.
    carry_time : bool
        Set the CG clock to the all-atom simulation's time.
    bead_name : str
        Name of the CG beads (for matching without a map).

    Returns
    -------
    openmm.app.Simulation
        ``cg_simulation``.
    """
    rmap = resolution_map or getattr(aa_simulation, "resolution_map", None)
    if rmap is None:
        rmap = ResolutionMap.from_topologies(cg_simulation.topology, aa_simulation.topology, bead_name)
    if cg_simulation.topology.getNumAtoms() != cg_simulation.system.getNumParticles():
        raise ValueError("the CG Simulation's topology and system differ in particle count")
    state = aa_simulation.context.getState(positions=True, enforcePeriodicBox=False)
    aa_xyz = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    if aa_xyz.shape[0] <= int(rmap.ca_index.max()):
        raise ValueError("the all-atom Simulation does not match the resolution map (too few atoms)")
    ca = np.asarray(aa_xyz[rmap.ca_index], dtype=np.float64)
    if _is_periodic(aa_simulation):
        ca = _whole(ca, rmap.chain_index, state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer))
    cg_state = cg_simulation.context.getState(positions=True, enforcePeriodicBox=False)
    cg_xyz = np.array(cg_state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), dtype=np.float64)
    cg_xyz[rmap.bead_index] = ca
    if not np.isfinite(cg_xyz).all():
        raise FloatingPointError("the all-atom state has non-finite Cα positions")
    cg_simulation.context.setPositions(cg_xyz * unit.nanometer)
    if velocities == "temperature":
        if temperature is None:
            integrator = cg_simulation.integrator
            temperature = integrator.getTemperature() if hasattr(integrator, "getTemperature") else 300.0
        temperature = _quantity(temperature, unit.kelvin)
        if seed is None:
            cg_simulation.context.setVelocitiesToTemperature(temperature)
        else:
            cg_simulation.context.setVelocitiesToTemperature(temperature, int(seed))
    elif velocities is not None:
        raise ValueError(f"velocities must be 'temperature' or None, got {velocities!r}")
    if carry_time:
        cg_simulation.context.setTime(state.getTime())
    return cg_simulation
