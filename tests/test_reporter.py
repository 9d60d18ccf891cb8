"""LDBReporter and Backmapper on real OpenMM simulations (tiny model made here, and the shipped one)."""

import os
import subprocess
import sys
import textwrap
import time

import mdtraj
import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch
from openmm.app import DCDReporter, Element, Topology

from openmm_ldb import cg
from openmm_ldb import residues as rc
from openmm_ldb.backmapper import Backmapper
from openmm_ldb.export import default_model_path, load_model
from openmm_ldb.reporter import LDBReporter

torch.set_num_threads(1)


@pytest.fixture()
def go_sim():
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=3)
    return go, sim


def _load(path, top):
    return mdtraj.load(path, top=top)


@pytest.mark.shipped_weights
def test_reporter_frames_match_cg_frames(go_sim, backmapper, tmp_path):
    go, sim = go_sim
    sim.reporters.append(DCDReporter(str(tmp_path / "cg.dcd"), 25))
    with LDBReporter(str(tmp_path / "aa.dcd"), 25, backmapper=backmapper, batchSize=4) as rep:
        sim.reporters.append(rep)
        sim.step(500)
    assert rep.framesWritten == 20
    aa = _load(str(tmp_path / "aa.dcd"), str(tmp_path / "aa.pdb"))
    cgt = _load(str(tmp_path / "cg.dcd"), mdtraj.Topology.from_openmm(go.topology))
    assert aa.n_frames == cgt.n_frames == 20
    ca = aa.atom_slice(aa.topology.select("name CA"))
    # one to one, in order: every all-atom frame's Cα are that CG frame's beads
    # (but those the trace regularization and the clash relaxation move: measured on this run, by
    # at most 0.03 nm, most by less than 0.001 nm; the bounds leave room for other weights)
    dev = np.linalg.norm(ca.xyz - cgt.xyz, axis=-1)
    assert np.median(dev) < 0.003 and dev.max() < 0.06
    cross = np.linalg.norm(ca.xyz[:, None] - cgt.xyz[None], axis=-1).mean(-1)    # [aa frame, cg frame]
    assert (cross.argmin(1) == np.arange(20)).all()
    assert aa.n_residues == go.topology.getNumResidues()


def test_describe_next_report_dict(go_sim, backmapper, tmp_path):
    _, sim = go_sim
    rep = LDBReporter(str(tmp_path / "aa.pdb"), 10, backmapper=backmapper)
    d = rep.describeNextReport(sim)
    assert d["steps"] == 10 and d["include"] == ["positions"]
    rep.close()


def test_slow_consumer_no_lost_or_reordered_frames(go_sim, tiny_model, tmp_path):
    go, sim = go_sim
    out = str(tmp_path / "aa.xtc")
    with LDBReporter(out, 5, model=tiny_model, batchSize=2, workerDelay=0.05) as rep:
        sim.reporters.append(rep)
        sim.step(300)
    with mdtraj.formats.XTCTrajectoryFile(out) as f:
        xyz, time_ps, step, box = f.read()
    assert list(step) == list(range(5, 305, 5))
    assert np.all(np.diff(time_ps) > 0)


@pytest.mark.parametrize("ext", [".pdb", ".cif", ".h5", ".xtc"])
def test_formats_readable(go_sim, backmapper, tmp_path, ext):
    _, sim = go_sim
    out = str(tmp_path / f"aa{ext}")
    with LDBReporter(out, 50, backmapper=backmapper, hydrogens=False) as rep:
        sim.reporters.append(rep)
        sim.step(150)
    if ext == ".xtc":
        t = mdtraj.load(out, top=str(tmp_path / "aa.pdb"))
    elif ext == ".cif":
        from openmm.app import PDBxFile
        pdbx = PDBxFile(out)
        assert pdbx.getNumFrames() == 3
        return
    else:
        t = mdtraj.load(out)
    assert t.n_frames == 3
    assert not any(a.element.symbol == "H" for a in t.topology.atoms)


def test_append_continues(go_sim, backmapper, tmp_path):
    _, sim = go_sim
    out = str(tmp_path / "aa.dcd")
    with LDBReporter(out, 20, backmapper=backmapper) as rep:
        sim.reporters.append(rep)
        sim.step(100)
    sim.reporters.clear()
    with LDBReporter(out, 20, backmapper=backmapper, append=True) as rep:
        sim.reporters.append(rep)
        sim.step(60)
    assert _load(out, str(tmp_path / "aa.pdb")).n_frames == 8


def test_samples_write_separate_files(go_sim, backmapper, tmp_path):
    _, sim = go_sim
    with LDBReporter(str(tmp_path / "aa.dcd"), 50, backmapper=backmapper, nSamples=2, seed=5) as rep:
        sim.reporters.append(rep)
        sim.step(100)
    a = _load(str(tmp_path / "aa_s0.dcd"), str(tmp_path / "aa_s0.pdb"))
    b = _load(str(tmp_path / "aa_s1.dcd"), str(tmp_path / "aa_s1.pdb"))
    assert a.n_frames == b.n_frames == 2


def test_nan_positions_error_and_file_stays_valid(go_sim, backmapper, tmp_path):
    _, sim = go_sim
    out = str(tmp_path / "aa.dcd")
    rep = LDBReporter(out, 10, backmapper=backmapper, batchSize=1)
    sim.reporters.append(rep)
    sim.step(30)
    pos = sim.context.getState(positions=True).getPositions(asNumpy=True)
    bad = pos.value_in_unit(unit.nanometer).copy()
    bad[7] = np.nan
    sim.context.setPositions(bad)
    state = sim.context.getState(positions=True)
    rep.report(sim, state)
    with pytest.raises(RuntimeError, match="NaN"):
        for _ in range(50):  # the worker's error surfaces at a later report or at close
            time.sleep(0.05)
            rep.report(sim, state)
        rep.close()
    with pytest.raises(RuntimeError, match="NaN"):  # close() still reports it, after flushing
        rep.close()
    assert _load(out, str(tmp_path / "aa.pdb")).n_frames == 3


def test_particle_count_mismatch(backmapper):
    top = cg.ca_topology(["ACDEFGHIK"])
    with pytest.raises(ValueError, match="particle count mismatch.*8.*9"):
        backmapper.backmap(top, np.zeros((8, 3)))


def test_unknown_residue_named_at_construction(backmapper):
    top = Topology()
    ch = top.addChain("A")
    for name in ["ALA", "XYZ", "GLY"]:
        top.addAtom("CA", Element.getBySymbol("C"), top.addResidue(name, ch))
    with pytest.raises(ValueError, match="XYZ"):
        backmapper.plan(top, np.zeros((3, 3)))


def _extended_ca(n, start=np.zeros(3)):
    pts = [start + np.array([3.8 * i, 0.9 * (i % 2), 0.0]) for i in range(n)]
    return np.array(pts) / 10.0  # nm


def test_chain_break_gives_two_segments_with_termini(backmapper):
    top = cg.ca_topology(["GAVLKGAVLK"])
    pos = _extended_ca(10)
    pos[5:] += np.array([1.5, 0.0, 0.0])  # 15 Å gap
    plan = backmapper.plan(top, pos)
    assert list(plan.segment) == [0] * 5 + [1] * 5
    names = [(a.residue.index, a.name) for a in plan.topology.atoms()]
    assert (4, "OXT") in names and (5, "H1") in names and (9, "OXT") in names and (0, "H1") in names


def test_periodic_chain_made_whole(backmapper, tmp_path):
    top = cg.ca_topology(["GSGSGSGSGSGSGSGSGSGS"])
    box = 5.0
    pos = _extended_ca(20) + np.array([4.0, 2.5, 2.5])  # extends past the box edge at x = 5 nm
    wrapped = pos % box
    aa_top, aa_pos = backmapper.backmap(top, wrapped, box_vectors=np.eye(3) * box)
    ca = np.array([aa_pos.value_in_unit(unit.nanometer)[a.index] for a in aa_top.atoms() if a.name == "CA"])
    steps = np.linalg.norm(np.diff(ca, axis=0), axis=1)
    assert steps.max() < 0.45


@pytest.mark.slow
def test_large_system_batches(backmapper):
    n = 5000
    top = cg.ca_topology(["".join(rc.RESTYPES_1[i % 20] for i in range(n))])
    t = np.linspace(0, 60 * np.pi, n)
    # a helical trace with ~3.8 Å spacing
    pos = np.stack([2.3 * np.cos(t * 1.7), 2.3 * np.sin(t * 1.7), 1.5 * t / (60 * np.pi) * n / 10], 1)
    pos = pos / 10.0
    small = backmapper
    small.max_batch_residues = 4096
    plan = small.plan(top, pos)
    out = small.sample(plan, np.stack([pos, pos]), n_samples=1)
    assert out.shape == (2, 1, plan.topology.getNumAtoms(), 3)
    assert np.isfinite(out).all()
    small.max_batch_residues = 16384


def test_refiner_lowers_energy(backmapper):
    from openmm_ldb.refine import Refiner

    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    plan = backmapper.plan(go.topology, go.native_positions)
    xyz = backmapper.sample(plan, go.native_positions)[0, 0] / 10.0
    ref = Refiner(plan.topology, solvent="obc", max_iterations=50)
    e0 = ref.energy(xyz)
    out = ref.minimize(xyz)
    e1 = ref.energy(out)
    assert np.isfinite(e1) and e1 < e0
    ca = [a.index for a in plan.topology.atoms() if a.name == "CA"]
    # Cα restrained (nm); this untrained model leaves large clashes, so allow some drift
    assert np.abs(out[ca] - xyz[ca]).max() < 0.2


def test_interrupted_run_leaves_readable_file(tiny_model, tmp_path):
    script = textwrap.dedent(f"""
        import torch; torch.set_num_threads(1)
        from openmm_ldb import cg
        from openmm_ldb.reporter import LDBReporter
        go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
        sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=1)
        sim.reporters.append(LDBReporter({str(tmp_path / 'aa.dcd')!r}, 10, model={tiny_model!r}))
        class Boom:
            def describeNextReport(self, s): return {{'steps': 95 - s.currentStep % 95, 'include': []}}
            def report(self, s, st): raise KeyboardInterrupt
        sim.reporters.append(Boom())
        sim.step(1000)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    t = _load(str(tmp_path / "aa.dcd"), str(tmp_path / "aa.pdb"))
    assert t.n_frames == 9  # steps 10..90 reported before the interrupt at step 95


def test_same_seed_same_ensemble(backmapper):
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    _, a = backmapper.backmap(go.topology, go.native_positions, n_samples=3, seed=11)
    _, b = backmapper.backmap(go.topology, go.native_positions, n_samples=3, seed=11)
    _, c = backmapper.backmap(go.topology, go.native_positions, n_samples=3, seed=12)
    a, b, c = (x.value_in_unit(unit.nanometer) for x in (a, b, c))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_shipped_default_model_backmaps_protein_g():
    path = default_model_path()
    assert os.path.exists(path), "the default model must ship in openmm_ldb/weights/"
    module, card = load_model(path)
    assert card["residues"] == rc.RESTYPES_3 and "validation" in card
    bm = Backmapper(device="cpu")
    from openmm_ldb.metrics import heavy_atom_rmsd_to_reference
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    top, pos = bm.backmap(go.topology, go.native_positions, hydrogens=False)
    pred = mdtraj.Trajectory(pos.value_in_unit(unit.nanometer)[None], mdtraj.Topology.from_openmm(top))
    ref = mdtraj.load(str(cg.demo_structure_path()))
    rmsd = heavy_atom_rmsd_to_reference(pred, ref)
    assert rmsd < 2.0, rmsd
    # amber14 accepts the output as is
    top_h, pos_h = bm.backmap(go.topology, go.native_positions, hydrogens=True)
    system = openmm.app.ForceField("amber14-all.xml").createSystem(top_h)
    assert system.getNumParticles() == top_h.getNumAtoms()


def test_demo_command_runs(tmp_path, tiny_model):
    from openmm_ldb.cli import main

    assert main(["demo", "--out-dir", str(tmp_path), "--steps", "2000", "--interval", "200", "--model", tiny_model]) == 0
    for name in ("aa.dcd", "aa.pdb", "cg.dcd", "demo.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert mdtraj.load(str(tmp_path / "aa.dcd"), top=str(tmp_path / "aa.pdb")).n_frames == 10
    # the CLI backmaps the demo's CG trajectory offline too
    out = str(tmp_path / "offline.xtc")
    assert main(["backmap", str(tmp_path / "cg.dcd"), "--top", str(tmp_path / "cg.pdb"), "-o", out,
                 "--model", tiny_model, "-q"]) == 0
    assert mdtraj.load(out, top=str(tmp_path / "offline.pdb")).n_frames == 10


def test_backmap_command_on_ca_pdb(tmp_path, tiny_model):
    from openmm.app import PDBFile

    from openmm_ldb.cli import main

    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    ca_pdb = tmp_path / "ca.pdb"
    with open(ca_pdb, "w") as f:
        PDBFile.writeFile(go.topology, go.native_positions, f)
    assert main(["backmap", str(ca_pdb), "--out-dir", str(tmp_path / "out"), "--hydrogens", "--model", tiny_model,
                 "-q"]) == 0
    t = mdtraj.load(str(tmp_path / "out" / "ca.pdb"))
    assert t.n_residues == 56 and t.n_atoms == 855


def test_reporter_keeps_the_backmappers_settings(tmp_path):
    """A Backmapper given settings (here: without the backbone stages) and handed to LDBReporter
    writes that backmapper's atoms: before, the worker rebuilt the function from the model file's
    card and the settings were silently lost.  The shipped defaults give other atoms on these
    soft-bond frames (the test can fail)."""
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()), bond_k=240.0)
    sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=2, platform="Reference")
    custom = Backmapper(threads=1, settings={"backbone_relax_steps": 0, "tau_rounds": 0})
    sim.reporters.append(DCDReporter(str(tmp_path / "cg.dcd"), 200))
    with LDBReporter(str(tmp_path / "aa.dcd"), 200, backmapper=custom, hydrogens=False) as rep:
        sim.reporters.append(rep)
        sim.step(600)
    aa = _load(str(tmp_path / "aa.dcd"), str(tmp_path / "aa.pdb"))
    frames = _load(str(tmp_path / "cg.dcd"), mdtraj.Topology.from_openmm(go.topology)).xyz
    written = aa.xyz * 10.0
    out = {}
    for name, bm in (("custom", custom), ("default", Backmapper(threads=1))):
        plan = bm.plan(go.topology, frames[0], hydrogens=False, system=sim.system)
        out[name] = np.concatenate([f.positions[None] for f in bm.stream(plan, list(frames))])[:, 0] * 10.0
    assert np.abs(written - out["custom"]).max() < 2e-3          # Å (DCD keeps float32 nm)
    assert np.abs(written - out["default"]).max() > 0.1


def test_no_backlog_warning_while_the_worker_starts(tmp_path, caplog, monkeypatch):
    """Frames queue while the worker imports torch and loads the model: that is not a backlog
    worth a warning (the demo printed three before its worker had started).  Without the start-up
    grace the same run warns (the test can fail)."""
    import logging

    from openmm_ldb import reporter as reporter_module

    warned = {}
    for grace in (30.0, 0.0):
        monkeypatch.setattr(reporter_module, "_STARTUP_GRACE_S", grace)
        go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
        sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=1)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="openmm_ldb"):
            with LDBReporter(str(tmp_path / f"aa{grace:g}.dcd"), 20, warnBacklog=4, workerDelay=2.0) as rep:
                sim.reporters.append(rep)
                sim.step(400)                       # 20 frames, all before the worker writes one
        warned[grace] = [r for r in caplog.records if "behind the simulation" in r.getMessage()]
        assert rep.framesWritten == 20
    assert not warned[30.0] and warned[0.0]
