"""Resolution exchange: CG -> all-atom -> CG with real OpenMM Simulations (tiny untrained model).

The untrained model's structures are crude (clashes), so these tests check that the switch
itself is sound: minimisation removes overlaps, energies stay finite, the Cα follow the beads,
and both simulations keep running.
"""

import os

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch
from openmm import app
from scipy.spatial import cKDTree

from openmm_ldb import cg, exchange

torch.set_num_threads(1)
CPU = {"platform": "CPU", "platform_properties": {"Threads": "1"}}
MIN_HEAVY_DISTANCE = 1.0  # Å, any two heavy atoms not bonded to each other


def _go_sim(seed=3, **kwargs):
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()), **kwargs)
    return go, cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=seed, **CPU)


def _positions(sim):
    return sim.context.getState(positions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)


def _energy(sim):
    return sim.context.getState(energy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def _closest_heavy_pair(topology, xyz_angstrom, cutoff=MIN_HEAVY_DISTANCE):
    """Non-bonded heavy-atom pairs closer than ``cutoff`` Å (neighbour search, solvent included)."""
    heavy = np.array([a.index for a in topology.atoms() if a.element is not None and a.element.symbol != "H"])
    bonded = {(min(a.index, b.index), max(a.index, b.index)) for a, b in topology.bonds()}
    pairs = cKDTree(xyz_angstrom[heavy]).query_pairs(cutoff, output_type="ndarray")
    return [(int(heavy[i]), int(heavy[j])) for i, j in pairs
            if (min(heavy[i], heavy[j]), max(heavy[i], heavy[j])) not in bonded]


def _check_all_atom(aa, cg_sim, max_rms, max_dev):
    energy = _energy(aa)
    # finite and not strained (a minimised protein is near or below zero; a clash is 1e5+ kJ/mol)
    assert np.isfinite(energy) and energy < 10 * aa.system.getNumParticles(), energy
    xyz = _positions(aa)
    assert not _closest_heavy_pair(aa.topology, xyz)
    rmap = aa.resolution_map
    dev = np.linalg.norm(xyz[rmap.ca_index] - _positions(cg_sim)[rmap.bead_index], axis=1)
    assert np.sqrt((dev**2).mean()) < max_rms and dev.max() < max_dev, (np.sqrt((dev**2).mean()), dev.max())


def test_round_trips_implicit(backmapper):
    go, cg_sim = _go_sim()
    n_res = go.topology.getNumResidues()
    cg_sim.step(100)
    for cycle in range(2):
        cg_time = cg_sim.context.getState().getTime()
        aa = exchange.to_all_atom(cg_sim, backmapper, solvent="implicit", minimize_iterations=200,
                                  free_minimize_iterations=50, seed=cycle, **CPU)
        rmap = aa.resolution_map
        assert rmap.n_residues == n_res and rmap.solvent == "implicit"
        assert any(a.element.symbol == "H" for a in aa.topology.atoms())
        assert aa.integrator.getStepSize() == 2 * unit.femtosecond
        assert aa.system.getNumConstraints() > 0
        assert any(isinstance(f, openmm.GBSAOBCForce) for f in aa.system.getForces())
        assert not any(isinstance(f, openmm.CustomExternalForce) for f in aa.system.getForces())  # restraint gone
        assert aa.context.getState().getTime() == cg_time
        _check_all_atom(aa, cg_sim, max_rms=1.5, max_dev=3.0)
        aa.step(50)
        assert np.isfinite(_energy(aa))
        aa_ca = _positions(aa)[rmap.ca_index]
        assert exchange.to_coarse_grained(aa, cg_sim, seed=cycle) is cg_sim
        # the beads are exactly the all-atom Cα; the clock went on through the all-atom segment
        assert np.abs(_positions(cg_sim)[rmap.bead_index] - aa_ca).max() < 1e-4
        assert cg_sim.context.getState().getTime() == aa.context.getState().getTime()
        step = cg_sim.currentStep
        cg_sim.step(200)
        assert cg_sim.currentStep == step + 200
        xyz = _positions(cg_sim)
        assert np.isfinite(xyz).all() and np.isfinite(_energy(cg_sim))
        bonds = np.linalg.norm(xyz[1:] - xyz[:-1], axis=1)
        assert bonds.max() < 4.3 and bonds.min() > 3.3  # the CG chain is intact, no blow-up


def test_restrained_minimization_keeps_calpha(backmapper):
    _, cg_sim = _go_sim()
    aa = exchange.to_all_atom(cg_sim, backmapper, solvent="vacuum", minimize_iterations=300,
                              free_minimize_iterations=0, restraint_k=50000.0, seed=0, **CPU)
    assert not any(isinstance(f, openmm.GBSAOBCForce) for f in aa.system.getForces())
    _check_all_atom(aa, cg_sim, max_rms=0.5, max_dev=1.0)


@pytest.mark.slow
def test_explicit_solvent(backmapper):
    _, cg_sim = _go_sim()
    aa = exchange.to_all_atom(cg_sim, backmapper, solvent="explicit", box_padding=0.6 * unit.nanometer,
                              minimize_iterations=60, free_minimize_iterations=20, seed=0, **CPU)
    rmap = aa.resolution_map
    assert aa.system.usesPeriodicBoundaryConditions()
    names = {r.name for r in aa.topology.residues()}
    assert "HOH" in names and aa.topology.getNumAtoms() > 3 * rmap.n_protein_atoms
    nb = next(f for f in aa.system.getForces() if isinstance(f, openmm.NonbondedForce))
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.PME
    assert abs(sum(nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
                   for i in range(aa.system.getNumParticles()))) < 1e-3  # neutralised
    assert np.isfinite(_energy(aa))
    assert not _closest_heavy_pair(aa.topology, _positions(aa))
    aa.step(10)
    assert np.isfinite(_energy(aa))
    exchange.to_coarse_grained(aa, cg_sim)  # solvent ignored
    cg_sim.step(50)
    assert np.isfinite(_energy(cg_sim))


def test_periodic_cg_chain_is_made_whole(backmapper):
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()), use_pbc=True, box=4.0 * unit.nanometer)
    pos = np.array(go.native_positions.value_in_unit(unit.nanometer))
    pos -= pos.mean(0) - 0.2  # the protein straddles the box corner: wrapped beads are scattered
    wrapped = pos - 4.0 * np.floor(pos / 4.0)
    cg_sim = cg.make_simulation(go.topology, go.create_system(), wrapped, seed=1, **CPU)
    aa = exchange.to_all_atom(cg_sim, backmapper, solvent="vacuum", minimize_iterations=100,
                              free_minimize_iterations=0, restraint_k=50000.0, seed=0, **CPU)
    ca = _positions(aa)[aa.resolution_map.ca_index] / 10.0
    bonds = np.linalg.norm(ca[1:] - ca[:-1], axis=1)
    assert bonds.max() < 0.45  # whole chain, not split at the box faces
    assert np.abs((ca - wrapped) / 4.0 - np.round((ca - wrapped) / 4.0)).max() < 0.03  # same beads, imaged
    exchange.to_coarse_grained(aa, cg_sim)
    cg_sim.step(20)
    assert np.isfinite(_energy(cg_sim))


def test_to_coarse_grained_without_map(backmapper):
    go, cg_sim = _go_sim()
    aa = exchange.to_all_atom(cg_sim, backmapper, solvent="vacuum", minimize_iterations=50,
                              free_minimize_iterations=0, **CPU)
    ca = _positions(aa)[aa.resolution_map.ca_index]
    del aa.resolution_map  # e.g. an all-atom Simulation built elsewhere: residues matched in order
    exchange.to_coarse_grained(aa, cg_sim, velocities=None)
    assert np.abs(_positions(cg_sim) - ca).max() < 1e-4
    other = cg.ca_topology("A" * go.topology.getNumResidues())
    with pytest.raises(ValueError, match="residue 0"):
        exchange.ResolutionMap.from_topologies(other, aa.topology)
    with pytest.raises(ValueError, match="amino-acid residues"):
        exchange.ResolutionMap.from_topologies(cg.ca_topology("GG"), aa.topology)


def test_native_obc2_matches_obc2_xml(backmapper):
    _, cg_sim = _go_sim()
    aa = exchange.to_all_atom(cg_sim, backmapper, solvent="vacuum", minimize_iterations=0,
                              free_minimize_iterations=100, **CPU)  # no overlaps
    top, pos = aa.topology, aa.context.getState(positions=True).getPositions()
    ff = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
    reference = ff.createSystem(top, nonbondedMethod=app.NoCutoff)
    native = app.ForceField("amber14-all.xml").createSystem(top, nonbondedMethod=app.NoCutoff)
    exchange.add_obc2(native, top)
    energies = []
    for system in (reference, native):
        for force in system.getForces():
            force.setForceGroup(1 if isinstance(force, (openmm.GBSAOBCForce, openmm.CustomGBForce)) else 0)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"),
                                 {"Threads": "1"})
        context.setPositions(pos)
        energies.append(context.getState(energy=True, groups={1}).getPotentialEnergy()
                        .value_in_unit(unit.kilojoule_per_mole))
    assert energies[0] < 0 and abs(energies[0] - energies[1]) < 1e-3 * abs(energies[0])


def test_bad_solvent(backmapper):
    _, cg_sim = _go_sim()
    with pytest.raises(ValueError, match="unknown solvent"):
        exchange.to_all_atom(cg_sim, backmapper, solvent="water")


def test_example_quick(tiny_model, tmp_path):
    """examples/resolution_exchange.py --quick runs and writes both trajectories."""
    import importlib.util

    import mdtraj

    spec = importlib.util.spec_from_file_location(
        "resolution_exchange", os.path.join(os.path.dirname(__file__), "..", "examples", "resolution_exchange.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--quick", "--model", tiny_model, "--out-dir", str(tmp_path), "--threads", "1"])
    kinds = [row["segment"] for row in result["rows"]]
    assert kinds == ["CG", "switch", "all-atom"] * 2 + ["CG"]
    assert all(np.isfinite(row["energy"]) for row in result["rows"])
    aa = mdtraj.load(str(tmp_path / "aa.dcd"), top=str(tmp_path / "aa.pdb"))
    cg_traj = mdtraj.load(str(tmp_path / "cg.dcd"), top=str(tmp_path / "cg.pdb"))
    assert aa.n_frames == 4 and aa.n_residues == cg_traj.n_atoms == 56  # 2 segments x 20 steps / 10
    assert cg_traj.n_frames == 6  # 3 CG segments x 200 steps / 100


@pytest.mark.slow
def test_to_all_atom_of_a_real_protein_is_fast_and_clean():
    """A ~130-residue protein (lysozyme-size) switched to all-atom with the defaults and the
    shipped model: no broken bond, no threaded ring, energy relaxed.  (The time is measured by
    benchmarks/exchange_time.py, not here.)"""
    from openmm_ldb import metrics
    from openmm_ldb.backmapper import Backmapper

    data = os.environ.get("OPENMM_LDB_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    path = os.path.join(data, "structures", "kortemme_ddg", "1EL1.pdb.gz")
    if not os.path.exists(path):
        path = str(cg.demo_structure_path())
    go = cg.GoModel.from_structure(path, chains=[0])
    sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=1, **CPU)
    sim.step(2000)
    aa = exchange.to_all_atom(sim, backmapper=Backmapper(threads=1), **CPU)
    xyz_nm = _positions(aa) / 10.0
    bonds = np.array([[a.index, b.index] for a, b in aa.topology.bonds()])
    lengths = np.linalg.norm(xyz_nm[bonds[:, 0]] - xyz_nm[bonds[:, 1]], axis=1)
    assert lengths.max() < 0.22, lengths.max()              # S–S is the longest bond (0.204 nm)
    assert metrics.threaded_rings(aa.topology, xyz_nm) == []
    assert _energy(aa) < 0


def test_to_all_atom_takes_its_chains_from_the_system():
    """A CG System without the bond between residues 28 and 29 (the topology's numbering runs on):
    the all-atom system has a chain break there, as the reporter's plan has; before, the plan
    ignored the System and joined them (the test can fail)."""
    import openmm

    from openmm_ldb.backmapper import Backmapper

    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    system = go.create_system()
    index = next(k for k in range(system.getNumForces())
                 if isinstance(system.getForce(k), openmm.HarmonicBondForce))
    bonds = system.getForce(index)
    kept = openmm.HarmonicBondForce()
    for k in range(bonds.getNumBonds()):
        i, j, r0, kb = bonds.getBondParameters(k)
        if {i, j} != {27, 28}:
            kept.addBond(i, j, r0, kb)
    system.removeForce(index)
    system.addForce(kept)
    cg_sim = cg.make_simulation(go.topology, system, go.native_positions, seed=1, **CPU)
    bm = Backmapper(threads=1)
    reporter_plan = bm.plan(go.topology, go.native_positions, system=system)
    assert reporter_plan.segment[27] != reporter_plan.segment[28]
    aa = exchange.to_all_atom(cg_sim, bm, solvent="vacuum", minimize_iterations=20, free_minimize_iterations=0,
                              **CPU)
    res = list(aa.topology.residues())
    oxt = [r.index for r in res if any(a.name == "OXT" for a in r.atoms())]
    assert aa.topology.getNumChains() == 2 and len(oxt) == 2, (aa.topology.getNumChains(), oxt)
