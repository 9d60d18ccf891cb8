"""A ``Simulation`` set up for the built-in CG models."""

from __future__ import annotations


import numpy as np
import openmm
from openmm import app, unit

from .common import _positions_nm
from .structures import _vec3_quantity


# ---------------------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------------------
def make_simulation(
    topology: app.Topology,
    system: openmm.System,
    positions,
    temperature=300.0 * unit.kelvin,
    friction=0.1 / unit.picosecond,
    timestep=10.0 * unit.femtosecond,
    platform: str | openmm.Platform | None = None,
    seed: int | None = None,
    platform_properties: dict | None = None,
) -> app.Simulation:
    """Create a Simulation for a C-alpha model with a ``LangevinMiddleIntegrator``.

    Positions are set and velocities drawn from the Maxwell-Boltzmann distribution at ``temperature``.

    Parameters
    ----------
    topology : openmm.app.Topology
        C-alpha topology.
    system : openmm.System
        System from :func:`go_model_system` or :func:`hps_system`.
    positions : openmm.unit.Quantity
        One position per particle (plain arrays are taken as nm).
    temperature : openmm.unit.Quantity, optional
        Default 300 K.
    friction : openmm.unit.Quantity, optional
        Default 0.1/ps: light damping (CALVADOS uses 0.01/ps) that still brings a Go model started at its
        native energy minimum to ``temperature`` within about 10 ps (about 100 ps at 0.01/ps).
    timestep : openmm.unit.Quantity, optional
        Default 10 fs. Checked with constant-energy runs: total-energy fluctuations stay below 0.5 kJ/mol
        for the GB1 Go model started at 600 K and below 0.05 kJ/mol for a 40-residue CALVADOS2 chain.
    platform : str or openmm.Platform, optional
        Platform or platform name; default: the fastest available.
    seed : int, optional
        Seed for the integrator's random numbers and the initial velocities; default random.
    platform_properties : dict, optional
        Platform properties (e.g. ``{'Threads': '2'}``).

    Returns
    -------
    openmm.app.Simulation

    Raises
    ------
    ValueError
        If the numbers of particles in topology, system and positions differ.
    """
    n = system.getNumParticles()
    if topology.getNumAtoms() != n:
        raise ValueError(f"topology has {topology.getNumAtoms()} atoms but the system has {n} particles")
    xyz = _positions_nm(positions, n)
    if not unit.is_quantity(temperature):
        temperature = temperature * unit.kelvin
    if not unit.is_quantity(friction):
        friction = friction / unit.picosecond
    if not unit.is_quantity(timestep):
        timestep = timestep * unit.picosecond
    integrator = openmm.LangevinMiddleIntegrator(temperature, friction, timestep)
    if seed is None:
        seed = int(np.random.default_rng().integers(1, 2**31 - 1))
    integrator.setRandomNumberSeed(int(seed))
    if isinstance(platform, str):
        platform = openmm.Platform.getPlatformByName(platform)
    if platform is None and platform_properties:
        raise ValueError("platform_properties need a platform")
    if platform is None:
        simulation = app.Simulation(topology, system, integrator)
    else:
        simulation = app.Simulation(topology, system, integrator, platform, platform_properties or {})
    simulation.context.setPositions(_vec3_quantity(xyz))
    simulation.context.setVelocitiesToTemperature(temperature, int(seed))
    return simulation
