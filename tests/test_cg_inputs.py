"""Real CG inputs as other engines make them (issue 11): connectivity from the CG System or
Topology, several molecules in one chain id, periodic boxes, engine residue names, non-protein
particles, lone residues, and what the user sees when an input is wrong."""

from __future__ import annotations

import os
import warnings

import mdtraj
import numpy as np
import openmm
import pytest
from openmm import app, unit
from openmm.app import Element, ForceField, Topology

from openmm_ldb import cg
from openmm_ldb import residues as rc
from openmm_ldb import topology as tp
from openmm_ldb.backmapper import Backmapper

CARBON = Element.getBySymbol("C")


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gb1():
    """Protein G B1 Cα: (sequence of 3-letter names, positions nm [56, 3])."""
    top, pos = cg.ca_from_structure(cg.demo_structure_path())
    names = [r.name for r in top.residues()]
    return names, np.array(pos.value_in_unit(unit.nanometer))


@pytest.fixture(scope="module")
def shipped():
    """The shipped default model (the product's real behaviour); a file that does not load fails."""
    return Backmapper(device="cpu", threads=1)


@pytest.fixture(scope="module")
def amber():
    return ForceField("amber14-all.xml")


def one_chain_topology(names_per_molecule, chain_id="A", bonds=False, renumber=False) -> Topology:
    """All molecules in one chain id, residue numbers restarting at 1 per molecule (OpenABC)."""
    top = Topology()
    chain = top.addChain(chain_id)
    k = 0
    for names in names_per_molecule:
        prev = None
        for i, name in enumerate(names):
            k += 1
            atom = top.addAtom("CA", CARBON, top.addResidue(name, chain, id=str(k if renumber else i + 1)))
            if bonds and prev is not None:
                top.addBond(prev, atom)
            prev = atom
    return top


def unnumbered(top: Topology) -> Topology:
    """``top`` with every residue numbered 1: residue numbers that say nothing about bonds."""
    for res in top.residues():
        res.id = "1"
    return top


def harmonic_system(n_per_molecule, n_molecules, box_nm=None, k=500.0, extra_particles=0) -> openmm.System:
    """Soft harmonic bonds (MOFF-like) between consecutive beads of each molecule, nothing between
    molecules; a small repulsion so it can be simulated."""
    system = openmm.System()
    n = n_per_molecule * n_molecules + extra_particles
    for _ in range(n):
        system.addParticle(110.0)
    bonds = openmm.HarmonicBondForce()
    for m in range(n_molecules):
        for i in range(n_per_molecule - 1):
            a = m * n_per_molecule + i
            bonds.addBond(a, a + 1, 0.38, k)
    system.addForce(bonds)
    rep = openmm.CustomNonbondedForce("4*0.5*((0.4/r)^12)")
    for _ in range(n):
        rep.addParticle([])
    for a, b in [(bonds.getBondParameters(j)[0], bonds.getBondParameters(j)[1]) for j in range(bonds.getNumBonds())]:
        rep.addExclusion(a, b)
    rep.setCutoffDistance(1.0)
    if box_nm is not None:
        bonds.setUsesPeriodicBoundaryConditions(True)
        rep.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
        system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*v) for v in np.eye(3) * box_nm))
    else:
        rep.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    system.addForce(rep)
    return system


def stretched(pos, bonds_to_stretch, by_nm=0.1):
    """Stretch the given bonds (index i: bond i -> i+1) by ``by_nm`` each (soft-bond snapshot)."""
    pos = pos.copy()
    for i in bonds_to_stretch:
        d = pos[i + 1] - pos[i]
        pos[i + 1:] += by_nm * d / np.linalg.norm(d)
    return pos


def n_chains(plan) -> int:
    return plan.topology.getNumChains()


# ---------------------------------------------------------------------------------------------- connectivity
SOFT = [5, 14, 22, 30, 41, 48]  # six bonds at 4.8 Å: the distance rule would make 7 chains


def test_soft_bond_chain_is_one_chain(backmapper, gb1, amber):
    names, pos = gb1
    pos = stretched(pos, SOFT)
    d = np.linalg.norm(np.diff(pos, axis=0), axis=1) * 10
    assert (d[SOFT] > rc.CHAIN_BREAK_CA_CA).all()
    top = one_chain_topology([names])  # no topology bonds (OpenABC writes none)
    # the old rule, for contrast: Cα distances at 4.5 Å -> 7 chains
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert n_chains(backmapper.plan(top, pos, chain_break=0.45 * unit.nanometer)) == 7
    # the residue numbers say it is one chain
    plan = backmapper.plan(top, pos)
    assert plan.mapping.connectivity == "numbering" and n_chains(plan) == 1
    # the System's soft bonds say it is one molecule
    system = harmonic_system(len(names), 1)
    plan = backmapper.plan(top, pos, system=system)
    assert plan.mapping.connectivity == "system"
    assert n_chains(plan) == 1 and plan.segment.max() == 0
    assert sum(a.name == "OXT" for a in plan.topology.atoms()) == 1
    amber.createSystem(plan.topology)
    # the Topology's bonds say so too, and so does a longer chain break
    assert n_chains(backmapper.plan(one_chain_topology([names], bonds=True), pos)) == 1
    assert n_chains(backmapper.plan(top, pos, chain_break=0.55 * unit.nanometer)) == 1
    # a native-contact CustomBondForce (Go/SMOG style) is not taken for bonds
    contacts = openmm.CustomBondForce("0")
    for i in range(len(names) - 4):
        contacts.addBond(i, i + 4, [])
    contacts.addBond(3, 4, [])  # one contact between neighbours does not make it a bond force
    only_contacts = openmm.System()
    for _ in names:
        only_contacts.addParticle(1.0)
    only_contacts.addForce(contacts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert backmapper.plan(top, pos, system=only_contacts).mapping.connectivity == "numbering"


def test_backmap_keywords(backmapper, gb1):
    """``Backmapper.backmap`` takes skip_unknown/system/chain_break (it raised TypeError)."""
    names, pos = gb1
    top = one_chain_topology([names + ["NA", "CL"]])
    full = np.concatenate([stretched(pos, SOFT), [[3.0, 3.0, 3.0], [3.5, 3.0, 3.0]]])
    system = harmonic_system(len(names), 1, extra_particles=2)
    aa_top, aa_pos = backmapper.backmap(top, full, skip_unknown=True, system=system)
    assert aa_top.getNumChains() == 1 and aa_pos.shape == (aa_top.getNumAtoms(), 3)


def test_distance_rule_checked_every_frame(backmapper, gb1):
    names, pos = gb1
    top = unnumbered(one_chain_topology([names]))
    plan = backmapper.plan(top, pos)
    assert plan.mapping.connectivity == "distance" and n_chains(plan) == 1
    frames = np.stack([pos, stretched(pos, [20], 0.3), pos])  # 6.8 Å: beyond CHAIN_BREAK_CG
    with pytest.warns(UserWarning, match=r"changed \(frame 1 of this batch.*system=.*chain_break="):
        backmapper.sample(plan, frames)


def test_plan_cache_follows_content(backmapper, gb1):
    names, pos = gb1
    top = one_chain_topology([names])
    t1, _ = backmapper.backmap(top, pos)
    next(iter(top.residues())).name = "ALA"  # same object, other protein: a new plan
    t2, _ = backmapper.backmap(top, pos)
    assert next(t1.residues()).name == "MET" and next(t2.residues()).name == "ALA"
    for k in range(10):
        other = one_chain_topology([names[k:]])
        backmapper.backmap(other, pos[k:])
    assert len(backmapper._plan_cache) <= 8


# ---------------------------------------------------------------------------------------------- copies, boxes
class _RawPositions:
    """Unwrapped positions at the same steps as a DCDReporter (what LDBReporter receives)."""

    def __init__(self, interval):
        self.interval, self.frames, self.boxes = interval, [], []

    def describeNextReport(self, simulation):
        steps = self.interval - simulation.currentStep % self.interval
        return (steps, True, False, False, False, False)  # positions, not wrapped

    def report(self, simulation, state):
        self.frames.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
        self.boxes.append(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer))


@pytest.fixture(scope="module")
def copies_run(tmp_path_factory, gb1):
    """Three copies of GB1 in chain A of a 7 nm periodic box, straddling the box faces, simulated
    with soft harmonic bonds; OpenMM's DCDReporter writes the CG trajectory."""
    names, pos = gb1
    box = 7.0
    centre = pos.mean(0)
    offsets = [np.array([6.8, 3.5, 3.5]), np.array([3.5, 6.9, 0.2]), np.array([0.1, 0.2, 6.9])]
    xyz = np.concatenate([pos - centre + o for o in offsets])
    top = one_chain_topology([names] * 3)
    top.setPeriodicBoxVectors(np.eye(3) * box * unit.nanometer)
    system = harmonic_system(len(names), 3, box_nm=box, k=2000.0)
    integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.01 * unit.picosecond)
    integ.setRandomNumberSeed(3)
    sim = app.Simulation(top, system, integ, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(xyz)
    folder = tmp_path_factory.mktemp("copies")
    dcd = str(folder / "cg.dcd")
    raw = _RawPositions(10)
    sim.reporters += [app.DCDReporter(dcd, 10), raw]
    sim.step(60)
    with open(folder / "cg.pdb", "w") as f:  # the CG topology as a file: one chain A, no CONECT
        app.PDBFile.writeFile(top, xyz, f)
    with open(folder / "system.xml", "w") as f:
        f.write(openmm.XmlSerializer.serialize(system))
    return {"top": top, "system": system, "raw": np.array(raw.frames), "boxes": np.array(raw.boxes),
            "dcd": dcd, "pdb": str(folder / "cg.pdb"), "xml": str(folder / "system.xml"), "n": len(names),
            "folder": folder}


def _ca(topology, xyz):
    return xyz[..., [a.index for a in topology.atoms() if a.name == "CA"], :]


def test_copies_in_one_chain_are_separate_molecules(backmapper, copies_run, amber):
    run = copies_run
    plan = backmapper.plan(run["top"], run["raw"][0], box_vectors=run["boxes"][0], system=run["system"])
    assert n_chains(plan) == 3 and [c.id for c in plan.topology.chains()] == ["A", "A", "A"]
    assert list(plan.mapping.molecule) == [m for m in range(3) for _ in range(run["n"])]
    # never bonded to each other
    assert not [(a, b) for a, b in plan.topology.bonds() if a.residue.chain is not b.residue.chain]
    # CG residue numbers kept (each copy 1..56), box in the all-atom topology
    assert [r.id for r in plan.topology.chains().__next__().residues()][:3] == ["1", "2", "3"]
    assert plan.topology.getPeriodicBoxVectors() is not None
    amber.createSystem(plan.topology)
    # copies whose ends touch are still separate without a System: residue numbers restart
    names = [r.name for r in run["top"].residues()][:run["n"]]
    xyz = run["raw"][0][: 2 * run["n"]].copy()
    xyz[run["n"]:] += xyz[run["n"] - 1] + [0.38, 0, 0] - xyz[run["n"]]
    assert n_chains(backmapper.plan(one_chain_topology([names] * 2), xyz)) == 2


def test_periodic_frames_overlay_openmm_dcd(backmapper, copies_run, tmp_path):
    run = copies_run
    cg_dcd = mdtraj.load(run["dcd"], top=run["pdb"])
    plan = backmapper.plan(run["top"], run["raw"][0], box_vectors=run["boxes"][0], system=run["system"])
    # raw unwrapped positions (what a reporter sees), molecules that diffused whole boxes away, and
    # per-particle wrapped positions (other engines)
    n = run["n"]
    drifted = run["raw"].copy()
    drifted[:, n:2 * n] += [14.0, -7.0, 21.0]
    drifted[:, 2 * n:] -= [7.0, 0.0, 0.0]
    for frames in (run["raw"], drifted, run["raw"] % 7.0):
        xyz = backmapper.sample(plan, frames, box_vectors=run["boxes"], keep_ca=True)[:, 0] / 10.0
        ca = _ca(plan.topology, xyz)
        assert np.abs(ca - cg_dcd.xyz).max() < 1e-3
    # written with the unit cell in every frame, chain ids and residue numbers of the CG topology
    from openmm_ldb.writers import TrajectoryWriter

    for ext in (".dcd", ".pdb", ".xtc"):
        path = str(tmp_path / ("aa" + ext))
        with TrajectoryWriter(path, plan.topology) as w:
            for f in range(len(xyz)):
                w.write(xyz[f], box_vectors=run["boxes"][f])
        aa = mdtraj.load(path, top=str(tmp_path / "aa.pdb")) if ext != ".pdb" else mdtraj.load(path)
        assert aa.unitcell_vectors is not None and np.allclose(aa.unitcell_vectors, run["boxes"], atol=1e-3)
        assert np.abs(aa.xyz[:, aa.topology.select("name CA")] - cg_dcd.xyz).max() < 2e-3
    pdb = app.PDBFile(str(tmp_path / "aa.pdb"))
    chains = list(pdb.topology.chains())
    assert len(chains) == 3 and {c.id for c in chains} == {"A"}
    assert [r.id for r in chains[1].residues()][:2] == ["1", "2"]
    assert "CRYST1" in (tmp_path / "aa.pdb").read_text()


def test_cli_periodic_copies_with_system(copies_run, tmp_path, capsys, tiny_model):
    """The CLI on OpenMM's own CG DCD + a CA-only PDB (no CONECT) + the System XML."""
    from openmm_ldb.cli import main

    run = copies_run
    out = str(tmp_path / "aa.dcd")
    code = main(["backmap", run["dcd"], "--top", run["pdb"], "--system", run["xml"], "-o", out, "-q",
                 "--model", tiny_model, "--keep-ca"])
    assert code == 0, capsys.readouterr().err
    aa = mdtraj.load(out, top=str(tmp_path / "aa.pdb"))
    cg_dcd = mdtraj.load(run["dcd"], top=run["pdb"])
    assert aa.topology.n_chains == 3 and aa.unitcell_vectors is not None
    assert np.abs(aa.xyz[:, aa.topology.select("name CA")] - cg_dcd.xyz).max() < 2e-3


# ---------------------------------------------------------------------------------------------- names
def test_engine_residue_names(backmapper, gb1, amber):
    """SMOG's GLYT, MSE and amber/CHARMM protonation names map through the chemistry table;
    the written files say the PDB names."""
    names, pos = gb1
    engine = list(names)
    engine[-1] = names[-1] + "T"  # SMOG's C-terminal name (GLUT here; CI2 ends with GLYT)
    engine[0] = "MSE" if names[0] == "MET" else engine[0]
    swaps = {"HIS": "HSD", "ASP": "ASH", "GLU": "GLH", "LYS": "LYN", "CYS": "CYM"}
    for i, n in enumerate(engine[1:-1], start=1):
        engine[i] = swaps.get(n, n)
    top = one_chain_topology([engine], bonds=True)
    plan = backmapper.plan(top, pos)
    assert [rc.RESTYPES_3[t] for t in plan.mapping.restype] == names
    assert [r.name for r in plan.topology.residues()] == names
    amber.createSystem(plan.topology)
    assert rc.canonical_residue_name("GLYT") == "GLY" and rc.canonical_residue_name("hsp") == "HIS"
    assert rc.canonical_residue_name("NALA") == "ALA" and rc.canonical_residue_name("CYX") == "CYS"


# ---------------------------------------------------------------------------------------------- non-protein
def _mixed(gb1):
    """Protein chain A, an RNA-like chain B (one P bead per nucleotide), ions: an Mpipi-like system."""
    names, pos = gb1
    top = one_chain_topology([names], bonds=True)
    rna = top.addChain("B")
    prev = None
    for i, base in enumerate("AUGCAUGC"):
        atom = top.addAtom("P", Element.getBySymbol("P"), top.addResidue(base, rna, id=str(i + 1)))
        if prev is not None:
            top.addBond(prev, atom)
        prev = atom
    ions = top.addChain("C")
    for name, el in (("NA", "Na"), ("CL", "Cl"), ("NA", "Na")):
        top.addAtom(name, Element.getBySymbol(el), top.addResidue(name, ions))
    extra = np.array([[3.0 + 0.6 * i, 3.0, 3.0] for i in range(8)] + [[5.0, 5.0, 5.0], [5.5, 5.0, 5.0], [6, 5, 5]])
    return top, np.concatenate([pos, extra])


def test_non_protein_particles_skip_option(backmapper, gb1):
    top, pos = _mixed(gb1)
    with pytest.raises(tp.CGTopologyError, match=r"'A' 1 .*skip_unknown=True") as err:
        backmapper.plan(top, pos)
    assert "skipUnknown" not in str(err.value)
    with pytest.raises(tp.CGTopologyError, match="skipUnknown=True"):
        backmapper.plan(top, pos, entry_point="reporter")
    with pytest.raises(tp.CGTopologyError, match="--skip-unknown"):
        backmapper.plan(top, pos, entry_point="cli")
    plan = backmapper.plan(top, pos, skip_unknown=True)
    assert plan.mapping.n_residues == 56 and n_chains(plan) == 1
    aa_top, _ = backmapper.backmap(top, pos, skip_unknown=True)
    assert aa_top.getNumResidues() == 56
    aa_top, _ = backmapper.backmap(top, pos, residues=range(56))
    assert aa_top.getNumResidues() == 56


# ---------------------------------------------------------------------------------------------- lone residues
def test_lone_residue_capped_and_parameterized(backmapper, gb1, amber):
    names, pos = gb1
    top = one_chain_topology([names], bonds=True)
    keep = list(range(20)) + [25] + list(range(30, 56))  # residue 26 alone between two gaps
    plan = backmapper.plan(top, pos, residues=keep)
    assert plan.segment.max() + 1 == 3 and n_chains(plan) == 3
    chain = list(plan.topology.chains())[1]
    assert [(r.name, r.id) for r in chain.residues()] == [("ACE", "25"), (names[25], "26"), ("NME", "27")]
    xyz = backmapper.sample(plan, pos)[0, 0]
    # caps at ideal geometry, the lone Cα where the bead is
    atoms = {(a.residue.name, a.name): a.index for a in chain.atoms()}
    assert np.allclose(xyz[atoms[(names[25], "CA")]], pos[25] * 10, atol=1e-3)
    for (r1, a1), (r2, a2), ideal in [(("ACE", "C"), (names[25], "N"), rc.BOND_C_N),
                                      ((names[25], "C"), ("NME", "N"), rc.BOND_C_N),
                                      (("ACE", "C"), ("ACE", "O"), rc.BOND_C_O)]:
        assert abs(np.linalg.norm(xyz[atoms[(r1, a1)]] - xyz[atoms[(r2, a2)]]) - ideal) < 0.01
    system = amber.createSystem(plan.topology)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(xyz / 10.0)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 300)
    energy = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert np.isfinite(energy) and energy < 0
    from openmm_ldb.refine import Refiner

    refined = Refiner(plan.topology).minimize(xyz / 10.0)
    assert np.isfinite(np.asarray(refined)).all()


# ---------------------------------------------------------------------------------------------- input checks
def test_input_checks_name_the_cause(backmapper, gb1):
    names, pos = gb1
    top = one_chain_topology([names], bonds=True)
    with pytest.raises(tp.CGTopologyError, match="look like Å, not nm"):
        backmapper.plan(top, pos * 10.0)
    # beads at side-chain centroids: consecutive beads 5-7 Å apart, no bonds
    rng = np.random.default_rng(1)
    centroids = pos + rng.normal(0, 0.25, pos.shape)
    with pytest.raises(tp.CGTopologyError, match=r"beads not at Cα\?.*chain_break="):
        backmapper.plan(one_chain_topology([names]), centroids)
    # a periodic run given without its box: bonded beads a box length apart
    box = 2.0
    wrapped = (pos - pos.min(0) + 1.2) % box
    system = harmonic_system(len(names), 1)
    with pytest.raises(tp.CGTopologyError, match=r"periodic system without box vectors\? pass box_vectors="):
        backmapper.plan(top, wrapped, system=system)
    with pytest.warns(UserWarning, match=r"taken as a chain break .*periodic system without box vectors\?"):
        assert n_chains(backmapper.plan(top, wrapped)) > 1  # Topology bonds: a long one is a break
    assert n_chains(backmapper.plan(top, wrapped, box_vectors=np.eye(3) * box, system=system)) == 1
    assert n_chains(backmapper.plan(top, wrapped, box_vectors=np.eye(3) * box)) == 1
    # a System of another size
    with pytest.raises(tp.CGTopologyError, match="System has 3 particles"):
        backmapper.plan(top, pos, system=harmonic_system(3, 1))


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def cg_files(tmp_path, gb1):
    names, pos = gb1
    top = one_chain_topology([names], bonds=True)
    pdb = str(tmp_path / "ca.pdb")
    with open(pdb, "w") as f:
        app.PDBFile.writeFile(top, pos * unit.nanometer, f)
    traj = mdtraj.load(pdb)
    rng = np.random.default_rng(0)
    frames = mdtraj.Trajectory(traj.xyz + rng.normal(0, 0.01, (4, *traj.xyz.shape[1:])).astype(np.float32),
                               traj.topology)
    good = str(tmp_path / "good.dcd")
    frames.save_dcd(good)
    empty = str(tmp_path / "empty.dcd")
    open(empty, "w").close()
    return {"pdb": pdb, "good": good, "empty": empty, "frames": frames}


def test_cli_batch_goes_on_after_a_bad_file(cg_files, tmp_path, capsys, tiny_model, monkeypatch):
    from openmm_ldb.cli import main

    def no_whole_load(*args, **kwargs):
        raise AssertionError("the CLI must stream trajectories (mdtraj.iterload), not load them whole")

    monkeypatch.setattr(mdtraj, "load", no_whole_load)
    out = tmp_path / "out"
    code = main(["backmap", cg_files["empty"], cg_files["good"], "--top", cg_files["pdb"], "--out-dir", str(out),
                 "--model", tiny_model, "--chain-break", "0.5"])
    captured = capsys.readouterr()
    assert code == 1
    monkeypatch.undo()
    written = mdtraj.load(str(out / "good.pdb"))
    assert written.n_frames == 4
    assert not (out / "empty.pdb").exists()
    bad = [ln for ln in captured.err.splitlines() if "empty.dcd" in ln and "failed" not in ln]
    assert len(bad) == 1 and "empty" in bad[0] and "Traceback" not in captured.err
    assert "1 of 2 input(s) failed: " + cg_files["empty"] in captured.err
    assert "done in" not in captured.out
    # a trajectory with more particles than the topology, a truncated one, a missing one: one line each
    wrong = str(tmp_path / "wrong.dcd")
    with mdtraj.formats.DCDTrajectoryFile(wrong, "w") as f:
        f.write(np.zeros((2, 60, 3), np.float32))
    trunc = str(tmp_path / "trunc.dcd")
    with open(cg_files["good"], "rb") as f:
        data = f.read()
    with open(trunc, "wb") as f:
        f.write(data[:200])
    cut = str(tmp_path / "cut.dcd")  # header and two and a half frames of four
    with open(cut, "wb") as f:
        f.write(data[:len(data) - (len(data) - 276) * 3 // 8])
    code = main(["backmap", wrong, trunc, cut, str(tmp_path / "missing.dcd"), "--top", cg_files["pdb"],
                 "--out-dir", str(out), "--model", tiny_model, "--chain-break", "0.5"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "60 particles per frame but the topology has 56" in err
    assert "missing.dcd: no such file" in err and "trunc.dcd: " in err
    assert "cut.dcd: truncated: the DCD header announces 4 frames but only 2 are complete" in err
    assert "4 of 4 input(s) failed" in err


def test_cli_skip_unknown_and_residues(gb1, tmp_path, capsys, tiny_model):
    from openmm_ldb.cli import main

    top, pos = _mixed(gb1)
    pdb = str(tmp_path / "mixed.pdb")
    with open(pdb, "w") as f:
        app.PDBFile.writeFile(top, pos * unit.nanometer, f)
    out = str(tmp_path / "aa.pdb")
    assert main(["backmap", pdb, "-o", out, "--model", tiny_model, "-q"]) == 1
    err = capsys.readouterr().err
    assert "--skip-unknown" in err and "skip_unknown=" not in err and len(err.strip().splitlines()) == 2
    assert main(["backmap", pdb, "-o", out, "--model", tiny_model, "-q", "--skip-unknown"]) == 0
    assert mdtraj.load(out).topology.n_residues == 56
    assert main(["backmap", pdb, "-o", out, "--model", tiny_model, "-q", "--residues", "0-9,20-29"]) == 0
    assert mdtraj.load(out).topology.n_residues == 20
    assert main(["backmap", pdb, "-o", out, "--model", tiny_model, "-q", "--residues", "protein"]) == 0
    cif = str(tmp_path / "mixed.cif")  # mmCIF input, mmCIF output
    with open(cif, "w") as f:
        app.PDBxFile.writeFile(top, pos * unit.nanometer, f)
    assert main(["backmap", cif, "-o", str(tmp_path / "aa.cif"), "--model", tiny_model, "-q", "--skip-unknown"]) == 0
    assert app.PDBxFile(str(tmp_path / "aa.cif")).topology.getNumResidues() == 56


def test_cli_minimize_without_hydrogens(cg_files, tmp_path, tiny_model):
    """--minimize adds hydrogens, as its help says (it raised before)."""
    from openmm_ldb.cli import main

    out = str(tmp_path / "min.pdb")
    assert main(["backmap", cg_files["pdb"], "-o", out, "--model", tiny_model, "--minimize", "-q"]) == 0
    assert any(a.element.symbol == "H" for a in mdtraj.load(out).topology.atoms)


def test_shipped_model_on_soft_bonds_and_a_lone_residue(shipped, gb1, amber):
    """The shipped model on a MOFF-like snapshot (System bonds) with a lone residue: one chain
    per segment, Cα where the beads are, and a structure amber14 minimises to a low energy."""
    names, pos = gb1
    pos = stretched(pos, [5, 41], 0.06)
    keep = list(range(20)) + [25] + list(range(30, 56))
    plan = shipped.plan(one_chain_topology([names]), pos, residues=keep, system=harmonic_system(len(names), 1))
    assert n_chains(plan) == 3
    info = {}
    xyz = shipped.sample(plan, pos, info=info)[0, 0] / 10.0
    # two 4.4 Å Cα–Cα bonds are longer than a peptide allows: those Cα move a little, the rest not
    moved = np.linalg.norm(_ca(plan.topology, xyz) - pos[keep], axis=1)
    assert moved.max() < 0.05 and np.median(moved) < 1e-3
    ctx = openmm.Context(amber.createSystem(plan.topology), openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(xyz)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 500)
    energy = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert energy < -1000.0


def test_cli_out_dir_names(cg_files, tmp_path, capsys, tiny_model):
    """frame.0.pdb and frame.5.pdb get their own outputs; one output is never written twice."""
    import shutil

    from openmm_ldb.cli import main

    a, b = str(tmp_path / "frame.0.pdb"), str(tmp_path / "frame.5.pdb")
    shutil.copy(cg_files["pdb"], a)
    shutil.copy(cg_files["pdb"], b)
    out = tmp_path / "out"
    assert main(["backmap", a, b, "--out-dir", str(out), "--model", tiny_model, "-q"]) == 0
    assert sorted(os.listdir(out)) == ["frame.0.pdb", "frame.5.pdb"]
    assert main(["backmap", a, a, "--out-dir", str(out), "--model", tiny_model, "-q"]) == 1
    assert "is also the output of" in capsys.readouterr().err


def test_go_complex_overlays_openmm_dcd(backmapper, gb1, tmp_path):
    """Two chains held together by inter-chain native contacts are one OpenMM molecule: imaged
    as one, like DCDReporter does, while each chain stays its own all-atom chain."""
    names, pos = gb1
    top = cg.ca_topology([cg_seq(names)] * 2)
    shift = np.array([0.0, 0.0, 0.9])  # a stacked dimer: contacts across the interface
    native = np.concatenate([pos, pos + shift]) - pos.mean(0) + [5.9, 3.0, 5.6]  # straddles the box face
    go = cg.GoModel(top, native * unit.nanometer, use_pbc=True, box=6.0)
    assert any((i < 56) != (j < 56) for i, j in go.contacts)  # inter-chain contacts exist
    system = go.create_system()
    integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.005 * unit.picosecond)
    integ.setRandomNumberSeed(1)
    sim = app.Simulation(top, system, integ, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(native)
    raw = _RawPositions(10)
    dcd = str(tmp_path / "cg.dcd")
    top.setPeriodicBoxVectors(np.eye(3) * 6.0 * unit.nanometer)
    sim.reporters += [app.DCDReporter(dcd, 10), raw]
    sim.step(40)
    with open(tmp_path / "cg.pdb", "w") as f:
        app.PDBFile.writeFile(top, native, f)
    cg_dcd = mdtraj.load(dcd, top=str(tmp_path / "cg.pdb"))
    frames = np.array(raw.frames) % 6.0  # every bead wrapped on its own
    plan = backmapper.plan(top, frames[0], box_vectors=np.array(raw.boxes[0]), system=system)
    assert n_chains(plan) == 2 and len(set(plan.mapping.molecule)) == 1
    xyz = backmapper.sample(plan, frames, box_vectors=np.array(raw.boxes), keep_ca=True)[:, 0] / 10.0
    assert np.abs(_ca(plan.topology, xyz) - cg_dcd.xyz).max() < 1e-3


def cg_seq(names):
    return "".join(rc.THREE_TO_ONE[n] for n in names)


# ---------------------------------------------------------------------------------------------- chains as the file says
def _write_ca_pdb(path, names_per_chain, pos_nm, numbers=None) -> str:
    """A Cα-only PDB written by OpenMM's PDBFile: one chain id per chain (TER between them),
    residues numbered 1.. per chain (or as ``numbers`` says)."""
    top = Topology()
    for k, names in enumerate(names_per_chain):
        chain = top.addChain(chr(ord("A") + k))
        for i, name in enumerate(names):
            rid = str(i + 1) if numbers is None else str(numbers[k][i])
            top.addAtom("CA", CARBON, top.addResidue(name, chain, id=rid))
    with open(path, "w") as f:
        app.PDBFile.writeFile(top, pos_nm * unit.nanometer, f, keepIds=True)
    return str(path)


def _chains_and_oxt(path) -> tuple[int, list[bool]]:
    """Chains of a written PDB and, per OXT atom, whether it sits on its chain's last residue."""
    top = app.PDBFile(str(path)).topology
    last = {list(c.residues())[-1].index for c in top.chains()}
    return top.getNumChains(), [a.residue.index in last for a in top.atoms() if a.name == "OXT"]


def test_cli_noisy_ca_file_keeps_its_chains(gb1, tmp_path, capsys, tiny_model):
    """Two chains of a Cα PDB with CG-like noise (σ = 0.3 Å per coordinate, one Cα–Cα stretched
    to 5.0 Å, past the old 4.5 Å rule) come out as exactly two chains: the file says so."""
    from openmm_ldb.cli import main

    names, pos = gb1
    rng = np.random.default_rng(7)
    two = np.concatenate([pos, pos + [3.0, 0.0, 0.0]]) + rng.normal(0.0, 0.03, (2 * len(names), 3))
    two[21:56] += (0.5 - np.linalg.norm(two[21] - two[20])) * (two[21] - two[20]) / np.linalg.norm(two[21] - two[20])
    d = np.linalg.norm(np.diff(two, axis=0), axis=1) * 10.0
    assert abs(d[20] - 5.0) < 1e-6 and d.max() > rc.CHAIN_BREAK_CA_CA  # the old rule would cut here
    pdb = _write_ca_pdb(tmp_path / "ca.pdb", [names, names], two)
    out = tmp_path / "aa.pdb"
    assert main(["backmap", pdb, "-o", str(out), "--model", tiny_model]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "112 residues in 2 chain(s)" in captured.out
    n, oxt_at_end = _chains_and_oxt(out)
    assert n == 2 and oxt_at_end == [True, True]  # no terminus mid-chain
    # a trajectory of such frames read with --top: the same chains on every frame, no warning
    frames = two[None] + rng.normal(0.0, 0.03, (3, *two.shape))
    dcd = str(tmp_path / "cg.dcd")
    mdtraj.Trajectory(frames.astype(np.float32), mdtraj.load_topology(pdb)).save_dcd(dcd)
    assert main(["backmap", dcd, "--top", pdb, "-o", str(out), "--model", tiny_model, "-q"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert _chains_and_oxt(out) == (2, [True, True]) and mdtraj.load(str(out)).n_frames == 3


def test_cli_numbering_gap_splits_with_one_warning(gb1, tmp_path, capsys, tiny_model):
    """A jump in the residue numbers splits the chain there (Cα 3.8 Å apart or not), and one
    warning line names the residue and the CLI option that decides by distance instead."""
    from openmm_ldb.cli import main

    names, pos = gb1
    numbers = [list(range(1, 42)) + list(range(45, 45 + len(names) - 41))]  # 42-44 missing from the numbering
    pdb = _write_ca_pdb(tmp_path / "gap.pdb", [names], pos, numbers)
    out = tmp_path / "aa.pdb"
    assert main(["backmap", pdb, "-o", str(out), "--model", tiny_model, "-q"]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warned) == 1
    assert (f"chain A split in 1 place(s) where the residue numbering jumps or repeats: after {names[40]} 41 "
            "(index 40, chain A; next 45)") in warned[0]
    assert "--chain-break" in warned[0] and "chain_break=" not in warned[0]
    n, oxt_at_end = _chains_and_oxt(out)
    assert n == 2 and oxt_at_end == [True, True]
    # the user's --chain-break puts the distance rule in charge: no gap in the Cα trace, one chain
    assert main(["backmap", pdb, "-o", str(out), "--model", tiny_model, "-q", "--chain-break", "0.65"]) == 0
    assert "warning" not in capsys.readouterr().err and _chains_and_oxt(out)[0] == 1


def test_unnumbered_chain_falls_back_to_the_distance_rule(backmapper, gb1):
    """Residues all numbered alike say nothing: Cα farther apart than CHAIN_BREAK_CG (6.5 Å) split
    the chain, with one warning line naming the residue; noise of σ = 0.3 Å does not."""
    names, pos = gb1
    noisy = pos + np.random.default_rng(3).normal(0.0, 0.03, pos.shape)
    top = unnumbered(one_chain_topology([names]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = backmapper.plan(top, noisy)
    assert plan.mapping.connectivity == "distance" and n_chains(plan) == 1
    far = stretched(noisy, [30], 0.7 - np.linalg.norm(noisy[31] - noisy[30]))  # 7.0 Å
    with pytest.warns(UserWarning) as caught:
        plan = backmapper.plan(top, far)
    assert n_chains(plan) == 2 and plan.segment.tolist() == [0] * 31 + [1] * (len(names) - 31)
    notes = [str(w.message) for w in caught]
    assert len(notes) == 1
    assert (f"chain A split in 1 place(s) where consecutive Cα are farther apart than 6.50 Å (their residues are "
            f"not numbered one after the other): after {names[30]} 1 (index 30, chain A; 7.0 Å)") in notes[0]
    assert "chain_break=" in notes[0] and "system=" in notes[0]


# ---------------------------------------------------------------------------------------------- per-file check line
def test_cli_summary_reports_clashes_bonds_and_ca_moves(cg_files, tmp_path, capsys, shipped):
    """The summary line of `openmm-ldb backmap` (shipped model, four GB1 frames with CG-like noise of
    σ = 0.3 Å, two samples) gives the mean and max clashes per 1000 heavy atoms, the worst bond
    validity, the mean GED and the largest Cα move: those of the written files (chain_metrics)."""
    import re

    from openmm_ldb import evaluate as ev
    from openmm_ldb import metrics
    from openmm_ldb.cli import main

    ref = cg_files["frames"][0]
    noisy = mdtraj.Trajectory(ref.xyz + np.random.default_rng(0).normal(0, 0.03, (4, *ref.xyz.shape[1:])).astype(
        np.float32), ref.topology)
    dcd = str(tmp_path / "noisy.dcd")
    noisy.save_dcd(dcd)
    out = tmp_path / "aa.pdb"
    assert main(["backmap", dcd, "--top", cg_files["pdb"], "-o", str(out), "--samples", "2", "--seed", "4",
                 "--threads", "1"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(dcd))
    found = re.search(r"; clashes/1000 atoms ([\d.]+) mean \(([\d.]+) max\), bonds valid ([\d.]+), GED ([\d.]+), "
                      r"Cα moved ≤ ([\d.]+) Å$", line)
    assert line.startswith(f"{dcd}: 4 frame(s), 56 residues in 1 chain(s)") and found, line
    mean, worst, valid, ged, moved = map(float, found.groups())
    # what the files hold (PDB: 0.001 Å), scored by chain_metrics
    plan = shipped.plan(mdtraj.load_topology(cg_files["pdb"]).to_openmm(), noisy.xyz[0], hydrogens=False)
    ca = np.array([a.index for a in plan.topology.atoms() if a.name == "CA"])
    rows, shown = [], 0.0
    for s in range(2):
        written = mdtraj.load(str(tmp_path / f"aa_s{s}.pdb"))
        assert written.n_frames == 4 and written.n_atoms == plan.topology.getNumAtoms()
        shown = max(shown, np.linalg.norm(written.xyz[:, ca] - noisy.xyz, axis=-1).max() * 10.0)
        for x in written.xyz * 10.0:
            slots, present = ev.to_slots(plan.layout, x.astype(np.float64), plan.mapping.n_residues)
            rows.append(metrics.chain_metrics(slots, slots, present, plan.mapping.restype, plan.segment,
                                              disulfides_true=plan.disulfides, pred_present=present))
    per_1000 = np.array([r["clashes_per_1000"] for r in rows])
    assert per_1000.max() > 0  # the noise leaves some clashes: the figures are not all zero
    assert mean == pytest.approx(per_1000.mean(), abs=0.051) and worst == pytest.approx(per_1000.max(), abs=0.051)
    assert valid == pytest.approx(min(r["bond_validity"] for r in rows), abs=0.0051)
    assert ged == pytest.approx(np.mean([r["ged"] for r in rows]), abs=0.051)
    assert moved > 0.0 and moved == pytest.approx(shown, abs=0.006)  # the model's Cα move is what the files show
