"""LDBReporter on a CG System with an ion beside the protein: the error names the reporter's own
option (skipUnknown), and with it the protein is written and the ion left out."""

import mdtraj
import openmm
import openmm.unit as unit
import pytest
from openmm import app

from openmm_ldb import cg
from openmm_ldb.reporter import LDBReporter


def _protein_and_ion():
    go = cg.GoModel.from_structure(cg.demo_structure_path())
    modeller = app.Modeller(go.topology, go.native_positions)
    ion = app.Topology()
    res = ion.addResidue("NA", ion.addChain("I"))
    ion.addAtom("NA", app.Element.getBySymbol("Na"), res)
    modeller.add(ion, [openmm.Vec3(3.0, 3.0, 3.0)] * unit.nanometer)
    system = go.create_system()
    system.addParticle(23.0)
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.addParticle(0.0, 0.1, 0.0)
        elif isinstance(force, openmm.CustomNonbondedForce):
            force.addParticle([0.0] * force.getNumPerParticleParameters())
    return cg.make_simulation(modeller.topology, system, modeller.positions, platform="Reference"), go


def test_unknown_particle_error_names_skipUnknown(tmp_path):
    sim, _ = _protein_and_ion()
    reporter = LDBReporter(str(tmp_path / "aa.dcd"), 10)
    sim.reporters.append(reporter)
    with pytest.raises(Exception, match="skipUnknown=True"):
        sim.step(10)
        reporter.close()


def test_skipUnknown_writes_the_protein(tmp_path):
    sim, go = _protein_and_ion()
    with LDBReporter(str(tmp_path / "aa.dcd"), 10, skipUnknown=True) as reporter:
        sim.reporters.append(reporter)
        sim.step(20)
    traj = mdtraj.load(str(tmp_path / "aa.dcd"), top=str(tmp_path / "aa.pdb"))
    assert traj.n_frames == 2 and traj.topology.n_residues == go.topology.getNumResidues()
    assert not any(r.name == "NA" for r in traj.topology.residues)
