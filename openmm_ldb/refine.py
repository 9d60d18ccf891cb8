"""Short restrained minimisation of backmapped structures (amber14, vacuum or fast OBC).

The System and Context are built once per topology; each frame only sets positions and
the Cα restraint targets, then runs a bounded number of minimiser iterations.
"""

from __future__ import annotations

import numpy as np
import openmm
import openmm.unit as unit
from openmm import app

# OBC2 (GBSAOBCForce) radii (mbondi2, nm) and screening factors by element; H on N uses 0.13 nm.
_OBC_RADIUS = {"H": 0.12, "C": 0.17, "N": 0.155, "O": 0.15, "S": 0.18, "P": 0.185, "F": 0.15, "Cl": 0.17,
               "Br": 0.185, "I": 0.198}
_OBC_SCALE = {"H": 0.85, "C": 0.72, "N": 0.79, "O": 0.85, "S": 0.96, "P": 0.86, "F": 0.88}


def add_obc2(system: openmm.System, topology: app.Topology, solvent_dielectric: float = 78.5,
             solute_dielectric: float = 1.0) -> openmm.GBSAOBCForce:
    """Add OBC2 implicit solvent as a native ``GBSAOBCForce`` (mbondi2 radii) to an amber System.

    Charges are read from the System's ``NonbondedForce``; the cutoff method follows it
    (no cutoff, or a cutoff for periodic and cutoff systems).

    Returns
    -------
    openmm.GBSAOBCForce
        The force added.
    """
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    gb = openmm.GBSAOBCForce()
    gb.setSolventDielectric(float(solvent_dielectric))
    gb.setSoluteDielectric(float(solute_dielectric))
    h_on_n = set()
    for a, b in topology.bonds():
        for x, y in ((a, b), (b, a)):
            if x.element is not None and y.element is not None and x.element.symbol == "H" \
                    and y.element.symbol == "N":
                h_on_n.add(x.index)
    for atom in topology.atoms():
        charge = nb.getParticleParameters(atom.index)[0]
        sym = atom.element.symbol if atom.element is not None else "C"
        radius = 0.13 if atom.index in h_on_n else _OBC_RADIUS.get(sym, 0.15)
        gb.addParticle(charge, radius, _OBC_SCALE.get(sym, 0.8))
    if nb.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff:
        gb.setNonbondedMethod(openmm.GBSAOBCForce.NoCutoff)
    else:
        gb.setNonbondedMethod(openmm.GBSAOBCForce.CutoffPeriodic if system.usesPeriodicBoundaryConditions()
                              else openmm.GBSAOBCForce.CutoffNonPeriodic)
        gb.setCutoffDistance(nb.getCutoffDistance())
    system.addForce(gb)
    return gb


def minimize_context(context: openmm.Context, tolerance: float = 10.0, max_iterations: int = 500,
                     max_restarts: int = 10) -> float:
    """``LocalEnergyMinimizer.minimize`` that restarts while the energy is absurd.

    From near-overlapping atoms (energies of 1e19 kJ/mol) the L-BFGS minimiser can stop after a
    few iterations with the energy still ~1e11; a restart from there proceeds normally.  The
    minimiser is restarted while the energy is above 1000 kJ/mol per particle (up to
    ``max_restarts`` times).  Returns the final potential energy in kJ/mol.
    """
    limit = 1000.0 * context.getSystem().getNumParticles()
    energy = float("inf")
    for _ in range(max_restarts + 1):
        openmm.LocalEnergyMinimizer.minimize(context, tolerance, max_iterations)
        energy = context.getState(energy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        if np.isfinite(energy) and energy < limit:
            break
    return energy


class Refiner:
    """Restrained energy minimisation with amber14 for one all-atom topology.

    Parameters
    ----------
    topology : openmm.app.Topology
        All-atom topology with hydrogens (from :class:`Backmapper`).
    solvent : {'vacuum', 'obc'}
        Vacuum, or amber14 plus a native ``GBSAOBCForce`` (OBC2 with mbondi2 radii), which is
        far cheaper on CPU than amber14's CustomGBForce implicit models.
    restraint_k : float
        Force constant of the harmonic Cα restraints, kJ/mol/nm².
    max_iterations : int
        Minimiser iterations per frame.
    platform : str, optional
        OpenMM platform name; OpenMM picks the fastest when omitted.
    """

    def __init__(self, topology: app.Topology, solvent: str = "vacuum", restraint_k: float = 10000.0,
                 max_iterations: int = 100, platform: str | None = None, tolerance: float = 10.0):
        if not any(a.element is not None and a.element.symbol == "H" for a in topology.atoms()):
            raise ValueError("refinement needs hydrogens: backmap with hydrogens=True")
        if solvent not in ("vacuum", "obc"):
            raise ValueError(f"unknown solvent {solvent!r}: use 'vacuum' or 'obc'")
        ff = app.ForceField("amber14-all.xml")
        system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None)
        if solvent == "obc":
            add_obc2(system, topology)
        self.ca_atoms = [a.index for a in topology.atoms() if a.name == "CA"]
        restraint = openmm.CustomExternalForce("0.5*k*((x-x0)^2+(y-y0)^2+(z-z0)^2)")
        restraint.addGlobalParameter("k", float(restraint_k))
        for p in ("x0", "y0", "z0"):
            restraint.addPerParticleParameter(p)
        for i in self.ca_atoms:
            restraint.addParticle(i, [0.0, 0.0, 0.0])
        system.addForce(restraint)
        self.restraint = restraint
        self.system = system
        self.max_iterations = int(max_iterations)
        self.tolerance = float(tolerance)
        integrator = openmm.VerletIntegrator(0.001)
        if platform:
            self.context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
        else:
            self.context = openmm.Context(system, integrator)

    def minimize(self, positions_nm: np.ndarray) -> np.ndarray:
        """Minimise one frame (positions in nm, [n_atoms, 3]); returns new positions in nm."""
        pos = np.asarray(positions_nm, dtype=np.float64)
        for k, i in enumerate(self.ca_atoms):
            self.restraint.setParticleParameters(k, i, pos[i].tolist())
        self.restraint.updateParametersInContext(self.context)
        self.context.setPositions(pos)
        minimize_context(self.context, self.tolerance, self.max_iterations)
        state = self.context.getState(positions=True)
        return np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))

    def energy(self, positions_nm: np.ndarray) -> float:
        """Potential energy (kJ/mol) of a frame, restraints included."""
        self.context.setPositions(np.asarray(positions_nm, dtype=np.float64))
        return self.context.getState(energy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
