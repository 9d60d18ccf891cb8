"""Tests for the built-in C-alpha coarse-grained models (openmm_ldb.cg): real, short OpenMM runs on CPU."""

import math
import time

import mdtraj as md
import numpy as np
import openmm
import pytest
from openmm import app, unit

from openmm_ldb import cg

GB1_SEQUENCE = "MTYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"
ASYN_1_40 = "MDVFMKGLSKAKEGVVAAAEKTKQGVAEAAGKTKEGVLYV"  # disordered N-terminal region of alpha-synuclein


def _nm(positions):
    return np.array(positions.value_in_unit(unit.nanometer), dtype=float)


def _energies_by_force(system, positions):
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    for i, force in enumerate(system.getForces()):
        force.setForceGroup(i)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    return {
        force.getName(): context.getState(getEnergy=True, groups={i}).getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole
        )
        for i, force in enumerate(system.getForces())
    }


@pytest.fixture(scope="module")
def gb1():
    topology, positions = cg.ca_from_structure(cg.demo_structure_path())
    return topology, positions


# --------------------------------------------------------------------------------------------------------
# Topologies and structures
# --------------------------------------------------------------------------------------------------------
def test_ca_topology_counts_and_names():
    top = cg.ca_topology(["ACDEFGHIKLMNPQRSTVWY", "gk"], chain_ids=["X", "Y"])
    assert top.getNumChains() == 2
    assert top.getNumResidues() == top.getNumAtoms() == 22
    assert top.getNumBonds() == 19 + 1  # consecutive beads within each chain only
    assert [c.id for c in top.chains()] == ["X", "Y"]
    names = [r.name for r in top.residues()]
    assert names[:5] == ["ALA", "CYS", "ASP", "GLU", "PHE"] and names[-2:] == ["GLY", "LYS"]
    assert {a.name for a in top.atoms()} == {"CA"}
    assert {a.element.symbol for a in top.atoms()} == {"C"}
    assert [r.id for r in top.residues()][:3] == ["1", "2", "3"]
    bonded = sorted((a.index, b.index) for a, b in top.bonds())
    assert (19, 20) not in bonded and (20, 21) in bonded
    # a single string is one chain, default chain ids are A, B, ...
    top1 = cg.ca_topology("GSGS")
    assert [c.id for c in top1.chains()] == ["A"] and top1.getNumBonds() == 3


def test_ca_topology_unknown_residue():
    with pytest.raises(ValueError, match=r"'X' at index 2 of sequence 1"):
        cg.ca_topology(["AAAA", "GGXG"])
    with pytest.raises(ValueError, match="chain ids"):
        cg.ca_topology(["AAAA"], chain_ids=["A", "B"])


def test_demo_structure(gb1):
    path = cg.demo_structure_path()
    assert path.is_file() and path.suffix == ".pdb"
    topology, positions = gb1
    assert topology.getNumAtoms() == topology.getNumResidues() == 56
    three_to_one = {v[0]: k for k, v in cg.RESIDUE_PARAMETERS.items()}
    seq = "".join(three_to_one[r.name] for r in topology.residues())
    assert seq == GB1_SEQUENCE
    assert [c.id for c in topology.chains()] == ["A"]
    assert topology.getNumBonds() == 55
    xyz = _nm(positions)
    assert xyz.shape == (56, 3)
    ca_ca = np.linalg.norm(np.diff(xyz, axis=0), axis=1)
    assert np.all((ca_ca > 0.36) & (ca_ca < 0.40))  # nm, trans peptides


def test_ca_from_structure_skips_waters_ions_ligands(tmp_path):
    pdb = app.PDBFile(str(cg.demo_structure_path()))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    extra = app.Topology()
    chain = extra.addChain("W")
    hoh = extra.addResidue("HOH", chain)
    extra.addAtom("O", app.Element.getBySymbol("O"), hoh)
    na = extra.addResidue("NA", chain)
    extra.addAtom("NA", app.Element.getBySymbol("Na"), na)
    lig = extra.addResidue("LIG", chain)
    extra.addAtom("C1", app.Element.getBySymbol("C"), lig)
    extra.addAtom("CA", app.Element.getBySymbol("Ca"), lig)  # a calcium-containing ligand is not a residue
    modeller.add(extra, [openmm.Vec3(3.0, 3.0, 3.0), openmm.Vec3(3.5, 3.0, 3.0), openmm.Vec3(4.0, 3.0, 3.0),
                         openmm.Vec3(4.2, 3.0, 3.0)] * unit.nanometer)
    path = tmp_path / "gb1_with_het.pdb"
    with open(path, "w") as handle:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, handle)
    cif = tmp_path / "gb1_with_het.cif"
    with open(cif, "w") as handle:
        app.PDBxFile.writeFile(modeller.topology, modeller.positions, handle)

    reference = _nm(cg.ca_from_structure(cg.demo_structure_path())[1])
    for source in (str(path), path, md.load_pdb(str(path)), app.PDBFile(str(path)), str(cif)):
        top, pos = cg.ca_from_structure(source)
        assert top.getNumAtoms() == 56, type(source)
        assert [c.id for c in top.chains()] == ["A"]
        assert np.allclose(_nm(pos), reference, atol=1e-3)
    top, pos = cg.ca_from_structure(path, chains=["A"])
    assert top.getNumAtoms() == 56
    with pytest.raises(ValueError, match="not found"):
        cg.ca_from_structure(path, chains=["Q"])


# --------------------------------------------------------------------------------------------------------
# Go model
# --------------------------------------------------------------------------------------------------------
def test_insertion_codes_kept(tmp_path):
    """A PDB numbered with insertion codes (1AYE numbers 4A-99A before 1-309) keeps them in the
    CG topology, so two residues never share a number downstream (a docking program's receptor
    preparation reads such a file as interrupted residues)."""
    lines = [line for line in open(cg.demo_structure_path()) if line.startswith(("ATOM", "HETATM", "TER", "END"))]
    out = []
    for line in lines:
        if line.startswith("ATOM") and int(line[22:26]) <= 3:
            line = line[:22] + f"{int(line[22:26]):4d}" + "A" + line[27:]        # 1A, 2A, 3A
        elif line.startswith("ATOM"):
            line = line[:22] + f"{int(line[22:26]) - 3:4d}" + " " + line[27:]    # then 1, 2, ...
        out.append(line)
    path = tmp_path / "icode.pdb"
    path.write_text("".join(out))
    top, _ = cg.ca_from_structure(str(path))
    keys = [(r.id, r.insertionCode) for r in top.residues()]
    assert keys[:4] == [("1", "A"), ("2", "A"), ("3", "A"), ("1", "")]
    assert len(set(keys)) == len(keys)
    go = cg.GoModel.from_structure(str(path))
    assert [(r.id, r.insertionCode) for r in go.topology.residues()] == keys


def test_go_model_native_energy_terms(gb1):
    model = cg.GoModel.from_structure(cg.demo_structure_path())
    assert model.topology.getNumAtoms() == 56
    assert 60 < len(model.contacts) < 250
    i, j = model.contacts.T
    assert np.all(j - i >= 4)
    system = model.create_system()
    assert system.getNumParticles() == 56
    assert not system.usesPeriodicBoundaryConditions()
    assert math.isclose(system.getParticleMass(0).value_in_unit(unit.dalton), 131.20)  # MET
    e = _energies_by_force(system, model.native_positions)
    for name in ("GoBonds", "GoAngles", "GoDihedrals"):
        assert abs(e[name]) < 1e-6, (name, e[name])
    assert math.isclose(e["GoNativeContacts"], -4.184 * len(model.contacts), rel_tol=1e-6)
    assert 0.0 <= e["GoRepulsion"] < 5.0

    # function form, C-alpha (8 A) contact map when no all-atom structure is given
    topology, positions = gb1
    system2 = cg.go_model_system(topology, positions)
    e2 = _energies_by_force(system2, positions)
    n_ca = len(cg.GoModel(topology, positions).contacts)
    assert math.isclose(e2["GoNativeContacts"], -4.184 * n_ca, rel_tol=1e-6)


def test_go_model_stays_folded(gb1):
    model = cg.GoModel.from_structure(cg.demo_structure_path())
    system = model.create_system()
    sim = cg.make_simulation(model.topology, system, model.native_positions, friction=1.0 / unit.picosecond,
                             platform="CPU", seed=2024)
    native = md.Trajectory(_nm(model.native_positions)[None].astype(np.float32),
                           md.Topology.from_openmm(model.topology))
    frames, start = [], time.perf_counter()
    for _ in range(10):
        sim.step(200)
        state = sim.context.getState(getPositions=True, getEnergy=True)
        assert math.isfinite(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        frames.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    elapsed = time.perf_counter() - start
    traj = md.Trajectory(np.array(frames, dtype=np.float32), native.topology)
    rmsd_angstrom = 10.0 * md.rmsd(traj, native)  # with optimal superposition
    print(f"GB1 Go model: {2000 / elapsed:.0f} steps/s on CPU; C-alpha RMSD {rmsd_angstrom.max():.2f} A max")
    assert np.all(np.isfinite(rmsd_angstrom))
    assert rmsd_angstrom.max() < 3.0
    assert rmsd_angstrom.max() > 0.1  # it actually moved


def test_go_model_periodic(gb1):
    topology, positions = gb1
    system = cg.go_model_system(topology, positions, use_pbc=True, box=8.0 * unit.nanometer)
    assert system.usesPeriodicBoundaryConditions()
    box = system.getDefaultPeriodicBoxVectors()
    assert math.isclose(box[0][0].value_in_unit(unit.nanometer), 8.0)
    sim = cg.make_simulation(topology, system, positions, platform="CPU", seed=1)
    sim.step(200)
    energy = sim.context.getState(getEnergy=True).getPotentialEnergy()
    assert math.isfinite(energy.value_in_unit(unit.kilojoule_per_mole))


def test_go_model_errors(gb1):
    topology, positions = gb1
    xyz = _nm(positions)
    with pytest.raises(ValueError, match="55 positions but the topology has 56"):
        cg.go_model_system(topology, xyz[:-1] * unit.nanometer)
    bad = cg.ca_topology([GB1_SEQUENCE])
    list(bad.residues())[7].name = "XYZ"
    with pytest.raises(ValueError, match=r"unknown residue name 'XYZ' at residue index 7"):
        cg.go_model_system(bad, positions)
    with pytest.raises(ValueError, match="invalid contact"):
        cg.go_model_system(topology, positions, contacts=[(0, 56)])
    with pytest.raises(ValueError, match="standard residues"):
        cg.go_model_system(cg.ca_topology([GB1_SEQUENCE[:10]]), xyz[:10],
                           all_atom_structure=cg.demo_structure_path())


# --------------------------------------------------------------------------------------------------------
# HPS / CALVADOS2
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, n_steps", [("calvados2", 2000), ("hps", 2000)])
def test_hps_disordered_chain_runs(model, n_steps):
    top = cg.ca_topology([ASYN_1_40])
    system = cg.hps_system(top, 20.0, model=model)
    assert system.usesPeriodicBoundaryConditions()
    assert system.getNumParticles() == 40
    names = {f.getName() for f in system.getForces()}
    assert {"HPSBonds", "AshbaughHatch", "DebyeHueckel"} <= names
    positions = cg.random_coil_positions(top, 20.0 * unit.nanometer, seed=7)
    sim = cg.make_simulation(top, system, positions, platform="CPU", seed=11)
    sim.step(n_steps)
    state = sim.context.getState(getPositions=True, getEnergy=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert math.isfinite(energy)
    xyz = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    assert np.all(np.isfinite(xyz))
    bonds = np.linalg.norm(np.diff(xyz, axis=0), axis=1)  # chain is unwrapped (no wrapping in getPositions)
    assert abs(bonds.mean() - 0.38) < 0.01
    assert bonds.min() > 0.3 and bonds.max() < 0.46


def test_hps_pair_energy_matches_reference():
    """Two free beads (K and E, one per chain) against a by-hand Ashbaugh-Hatch + Debye-Hueckel energy."""
    top = cg.ca_topology(["K", "E"])
    system = cg.hps_system(top, 20.0, model="calvados2", ionic_strength=0.15 * unit.molar,
                           temperature=300 * unit.kelvin)
    r = 0.9  # nm
    e = _energies_by_force(system, [openmm.Vec3(1, 1, 1), openmm.Vec3(1 + r, 1, 1)] * unit.nanometer)
    lam = 0.5 * (cg.RESIDUE_PARAMETERS["K"][2] + cg.RESIDUE_PARAMETERS["E"][2])
    sig = 0.5 * (cg.RESIDUE_PARAMETERS["K"][3] + cg.RESIDUE_PARAMETERS["E"][3])
    eps, rc = 0.8368, 2.4

    def lj(x):
        return 4 * eps * ((sig / x) ** 12 - (sig / x) ** 6)

    assert r > 2 ** (1 / 6) * sig
    assert math.isclose(e["AshbaughHatch"], lam * (lj(r) - lj(rc)), rel_tol=1e-5)
    temp = 300.0
    eps_r = 5321 / temp + 233.76 - 0.9297 * temp + 0.1417e-2 * temp ** 2 - 0.8292e-6 * temp ** 3
    kt = 0.0083144626 * temp
    lb = 138.935456 / (eps_r * kt)
    kappa = math.sqrt(8 * math.pi * lb * 0.15 * 0.602214076)
    assert 1.2 < kappa < 1.35  # Debye length ~0.78 nm at 150 mM
    # single-bead chains: the +1/-1 terminal charges cancel, so q = +1 and -1
    dh = 138.935456 / eps_r * (-1.0) * (math.exp(-kappa * r) / r - math.exp(-kappa * 4.0) / 4.0)
    assert math.isclose(e["DebyeHueckel"], dh, rel_tol=1e-5)


def test_hps_errors():
    top = cg.ca_topology([ASYN_1_40])
    with pytest.raises(ValueError, match="twice the largest cutoff"):
        cg.hps_system(top, 6.0)
    with pytest.raises(ValueError, match="unknown model"):
        cg.hps_system(top, 20.0, model="martini")
    bad = cg.ca_topology([ASYN_1_40])
    list(bad.residues())[3].name = "UNK"
    with pytest.raises(ValueError, match=r"'UNK' at residue index 3"):
        cg.hps_system(bad, 20.0)


def test_make_simulation_count_mismatch(gb1):
    topology, positions = gb1
    system = cg.go_model_system(topology, positions)
    with pytest.raises(ValueError, match="55 positions"):
        cg.make_simulation(topology, system, _nm(positions)[:-1] * unit.nanometer, platform="CPU")
    with pytest.raises(ValueError, match="particles"):
        cg.make_simulation(cg.ca_topology(["AAA"]), system, positions, platform="CPU")


def test_random_coils_of_several_chains_do_not_overlap_and_run():
    """Chains of a periodic condensate start apart, periodic images included: before, every
    chain's first bead was drawn on the box diagonal unchecked, two chains started 0.25 nm apart
    and the first steps blew up (NaN)."""
    top = cg.ca_topology([ASYN_1_40 * 3] * 4)
    box = 10.0
    positions = cg.random_coil_positions(top, box, seed=0)
    xyz = np.asarray(positions.value_in_unit(unit.nanometer))
    d = xyz[:, None] - xyz[None]
    d -= box * np.round(d / box)
    r = np.linalg.norm(d, axis=-1)
    bonded = {(a.index, b.index) for a, b in top.bonds()} | {(b.index, a.index) for a, b in top.bonds()}
    far = np.ones_like(r, dtype=bool)
    np.fill_diagonal(far, False)
    for i, j in bonded:
        far[i, j] = False
    assert r[far].min() >= 0.5 - 1e-6
    sim = cg.make_simulation(top, cg.hps_system(top, box), positions, seed=0)
    sim.minimizeEnergy()
    sim.step(2000)
    assert np.isfinite(sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
