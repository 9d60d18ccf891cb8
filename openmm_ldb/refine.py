"""Short restrained minimisation of backmapped structures (amber14, vacuum or fast OBC).

The System and Context are built once per topology; each frame only sets positions and
the Cα restraint targets, then runs a bounded number of minimiser iterations.
"""

from __future__ import annotations

import numpy as np
import openmm
import openmm.unit as unit
from openmm import app

# OBC2 (GBSAOBCForce) radii (mbondi2, nm) and screening factors by element; H on N uses 0.13.
_OBC_RADIUS = {"H": 0.12, "C": 0.17, "N": 0.155, "O": 0.15, "S": 0.18}
_OBC_SCALE = {"H": 0.85, "C": 0.72, "N": 0.79, "O": 0.85, "S": 0.96}


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
            nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
            gb = openmm.GBSAOBCForce()
            bonded_to_n = set()
            for a, b in topology.bonds():
                for x, y in ((a, b), (b, a)):
                    if x.element.symbol == "H" and y.element.symbol == "N":
                        bonded_to_n.add(x.index)
            for atom in topology.atoms():
                charge = nb.getParticleParameters(atom.index)[0]
                sym = atom.element.symbol
                radius = 0.13 if atom.index in bonded_to_n else _OBC_RADIUS.get(sym, 0.17)
                gb.addParticle(charge, radius, _OBC_SCALE.get(sym, 0.8))
            gb.setNonbondedMethod(openmm.GBSAOBCForce.NoCutoff)
            system.addForce(gb)
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
        openmm.LocalEnergyMinimizer.minimize(self.context, self.tolerance, self.max_iterations)
        state = self.context.getState(positions=True)
        return np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))

    def energy(self, positions_nm: np.ndarray) -> float:
        """Potential energy (kJ/mol) of a frame, restraints included."""
        self.context.setPositions(np.asarray(positions_nm, dtype=np.float64))
        return self.context.getState(energy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
