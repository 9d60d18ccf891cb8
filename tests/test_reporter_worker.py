"""LDBReporter's worker process and spool: report() never waits, no accepted frame is ever lost.

Real OpenMM simulations (the GB1 Go model) and real worker processes; the interrupted-run tests
run the simulation in a subprocess and interrupt it (SIGINT, an exception, SIGKILL).
"""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import mdtraj
import numpy as np
import pytest
import torch

from openmm_ldb import cg
from openmm_ldb.backmapper import stream_seed
from openmm_ldb.frames import CGFrame
from openmm_ldb.reporter import LDBReporter
from openmm_ldb.spool import SPOOL_SUFFIX, recover

torch.set_num_threads(1)
CPU1 = {"platform": "CPU", "platform_properties": {"Threads": "1"}}


def _go_sim(seed=3):
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    return go, cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=seed, **CPU1)


def _steps(path, top):
    """Steps of the frames of an XTC file (exact per frame), after checking mdtraj reads it."""
    assert mdtraj.load(path, top=top).n_frames >= 0
    with mdtraj.formats.XTCTrajectoryFile(path) as f:
        _, _, step, _ = f.read()
    return [int(s) for s in step]


class TimedReporter(LDBReporter):
    """Records how long each report() call takes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.durations = []

    def report(self, simulation, state):
        t0 = time.perf_counter()
        super().report(simulation, state)
        self.durations.append(time.perf_counter() - t0)


@pytest.mark.slow
def test_report_never_blocks_when_worker_is_slow(tmp_path, caplog):
    """The shipped model, and a worker that needs 1 s more per batch of 4 frames: report() still
    returns at once, the simulation finishes long before the worker, every frame is written in
    order at close()."""
    _, sim = _go_sim()
    out = str(tmp_path / "aa.xtc")
    rep = TimedReporter(out, 10, batchSize=4, workerDelay=1.0, warnBacklog=8)
    sim.reporters.append(rep)
    rep.waitUntilReady()
    caplog.set_level(logging.INFO, logger="openmm_ldb.reporter")
    t0 = time.perf_counter()
    sim.step(400)
    step_wall = time.perf_counter() - t0
    assert rep.framesAccepted == 40 and len(rep.durations) == 40
    # the worker needs >= 10 s for 40 frames; a blocking report() would make step() take as long
    assert step_wall < 3.0, step_wall
    assert max(rep.durations) < 0.25, max(rep.durations)
    assert rep.framesQueued > 20 and rep.framesWritten == rep.framesAccepted - rep.framesQueued
    assert rep.stepsBehind >= 10 * (rep.framesQueued - 1)
    assert any("behind the simulation" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    rep.close()
    assert rep.framesWritten == 40 and rep.framesQueued == 0 and rep.stepsBehind == 0
    assert rep.workerState == "finished" and rep.workerPeakMemory > 50
    assert any("40 frame(s) written" in r.getMessage() for r in caplog.records)
    assert _steps(out, str(tmp_path / "aa.pdb")) == list(range(10, 410, 10))
    assert not os.path.exists(out + SPOOL_SUFFIX)  # the spool is gone once everything is written


def _script(tmp_path, model, body, interval=10, delay=0.3):
    """A CG run with LDBReporter (no ``with`` block, no close) that prints accepted frame counts."""
    return textwrap.dedent(f"""
        import os, signal, sys, time
        # Ctrl-C raises KeyboardInterrupt even where the parent ignores SIGINT (background jobs)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import torch; torch.set_num_threads(1)
        from openmm_ldb import cg
        from openmm_ldb.reporter import LDBReporter
        go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
        sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=1,
                                 platform='CPU', platform_properties={{'Threads': '1'}})
        rep = LDBReporter({str(tmp_path / 'aa.xtc')!r}, {interval}, model={model!r}, batchSize=4,
                          workerDelay={delay})
        print('worker', rep.workerPid, flush=True)
        class Count:
            def describeNextReport(self, s):
                return {{'steps': {interval} - s.currentStep % {interval}, 'include': []}}
            def report(self, s, st):
                print('accepted', rep.framesAccepted, flush=True)
                time.sleep(0.01)
        sim.reporters += [rep, Count()]
    """) + textwrap.dedent(body)


def _run_until(script, n_frames, timeout=120):
    """Start ``script``; return (process, worker pid, last accepted count) once it has accepted
    ``n_frames`` frames."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    worker, accepted = None, 0
    t0 = time.time()
    for line in proc.stdout:
        if len(line.split()) != 2:
            continue
        word, value = line.split()
        if word == "worker":
            worker = int(value)
        elif word == "accepted":
            accepted = int(value)
            if accepted >= n_frames:
                break
        assert time.time() - t0 < timeout
    return proc, worker, accepted


def _finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _recover_cli(spool):
    """The documented command: ``openmm-ldb recover <spool>``."""
    return subprocess.run([sys.executable, "-m", "openmm_ldb.cli", "recover", spool], capture_output=True,
                          text=True, timeout=300)


def _check_all_frames(tmp_path, accepted):
    """Every accepted frame is in the trajectory, each once, in order (recovering the spool if left)."""
    out = str(tmp_path / "aa.xtc")
    spool = out + SPOOL_SUFFIX
    if os.path.exists(spool):
        res = _recover_cli(spool)
        assert res.returncode == 0, res.stderr
        assert not os.path.exists(spool)
    steps = _steps(out, str(tmp_path / "aa.pdb"))
    assert len(steps) >= accepted
    assert steps == list(range(10, 10 * len(steps) + 1, 10))
    return steps


@pytest.mark.slow
def test_sigint_keeps_every_accepted_frame(tiny_model, tmp_path):
    """Ctrl-C in the middle of Simulation.step(): the frames accepted so far are all written
    (the reporter drains at interpreter exit) and the files are readable."""
    script = _script(tmp_path, tiny_model, "sim.step(10**9)\n")
    proc, worker, accepted = _run_until(script, 12)
    os.kill(proc.pid, signal.SIGINT)
    code, err = _finish(proc)
    assert code != 0 and "KeyboardInterrupt" in err
    steps = _check_all_frames(tmp_path, accepted)
    assert len(steps) >= 12


@pytest.mark.slow
def test_exception_keeps_every_accepted_frame(tiny_model, tmp_path):
    script = _script(tmp_path, tiny_model, """
        class Boom:
            def describeNextReport(self, s): return {'steps': 155 - s.currentStep % 155, 'include': []}
            def report(self, s, st): raise RuntimeError('boom')
        sim.reporters.append(Boom())
        sim.step(10**6)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "RuntimeError: boom" in proc.stderr
    accepted = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("accepted")]
    assert accepted[-1] == 15  # steps 10..150, then the exception at step 155
    assert len(_check_all_frames(tmp_path, 15)) == 15


@pytest.mark.slow
def test_killed_run_is_recovered_by_the_documented_command(tmp_path):
    """SIGKILL of the simulation and of its worker at once (shipped model): the frames wait in
    the spool and ``openmm-ldb recover`` writes exactly the missing ones after those already in
    the file."""
    script = _script(tmp_path, None, "sim.step(10**9)\n", delay=0.5)
    proc, worker, accepted = _run_until(script, 20)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole session: simulation and worker
    proc.communicate(timeout=60)
    for _ in range(100):  # the worker is gone too
        try:
            os.kill(worker, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    out = str(tmp_path / "aa.xtc")
    spool = out + SPOOL_SUFFIX
    assert os.path.isdir(spool)
    before = _steps(out, str(tmp_path / "aa.pdb")) if os.path.exists(str(tmp_path / "aa.pdb")) else []
    assert len(before) < accepted  # the slow worker had not written them all
    steps = _check_all_frames(tmp_path, accepted)
    assert steps[:len(before)] == before


@pytest.mark.slow
def test_killed_worker_surfaces_at_next_report_and_frames_recover(tiny_model, tmp_path):
    _, sim = _go_sim()
    out = str(tmp_path / "aa.xtc")
    rep = LDBReporter(out, 10, model=tiny_model, workerDelay=0.5)
    sim.reporters.append(rep)
    sim.step(100)
    os.kill(rep.workerPid, signal.SIGKILL)
    time.sleep(0.5)
    with pytest.raises(RuntimeError, match="openmm-ldb recover"):
        sim.step(100)
    accepted = rep.framesAccepted
    assert accepted == 11  # the frame of the report that raised is kept too
    with pytest.raises(RuntimeError, match="stopped unexpectedly|not written"):
        rep.close()
    assert recover(rep.spoolPath) > 0
    assert _steps(out, str(tmp_path / "aa.pdb")) == list(range(10, 120, 10))
    assert not os.path.exists(rep.spoolPath)


def test_stale_spool_is_not_overwritten(tiny_model, tmp_path):
    out = str(tmp_path / "aa.dcd")
    os.makedirs(out + SPOOL_SUFFIX)
    with pytest.raises(FileExistsError, match="openmm-ldb recover"):
        LDBReporter(out, 10, model=tiny_model)


def test_stream_is_the_pipeline(backmapper):
    """Backmapper.stream: order, metadata, batching does not change the atoms, seeds per frame."""
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    plan = backmapper.plan(go.topology, go.native_positions)
    x = np.asarray(go.native_positions.value_in_unit(go.native_positions.unit))
    rng = np.random.default_rng(0)
    frames = [CGFrame(x + rng.normal(0, 0.02, x.shape), None, 10 * (k + 1), 0.1 * (k + 1)) for k in range(5)]
    a = list(backmapper.stream(plan, frames, batch_size=2))
    b = list(backmapper.stream(plan, frames[:2] + [None] + frames[2:], batch_size=8))
    assert [f.index for f in a] == list(range(5)) and [f.step for f in a] == [10, 20, 30, 40, 50]
    assert a[2].time == pytest.approx(0.3) and a[0].positions.shape == (1, plan.topology.getNumAtoms(), 3)
    for fa, fb in zip(a, b):
        assert np.abs(fa.positions - fb.positions).max() < 1e-4  # nm: batches differ by float rounding only
    ca = [at.index for at in plan.topology.atoms() if at.name == "CA"]
    assert np.abs(a[3].positions[0, ca] - frames[3].positions).max() < 0.05
    # seeded samples: frame k of the stream gets stream_seed(seed, n, k) whatever the batch
    s1 = list(backmapper.stream(plan, frames, n_samples=2, seed=7, batch_size=3))
    s2 = list(backmapper.stream(plan, frames[3:], n_samples=2, seed=7, start_index=3))
    assert np.abs(s1[3].positions - s2[0].positions).max() < 1e-4
    direct = backmapper.sample(plan, frames[4].positions, 2, seed=stream_seed(7, 2, 4), deterministic=False)[0]
    assert np.abs(s1[4].positions * 10 - direct).max() < 1e-3  # Å
    assert np.abs(s1[4].positions[0] - s1[4].positions[1]).max() > 1e-3  # two different samples


def test_stream_accepts_tuples_and_quantities(backmapper):
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    plan = backmapper.plan(go.topology, go.native_positions)
    out = list(backmapper.stream(plan, [go.native_positions, (go.native_positions, None, 5, 0.05)], coherent=False))
    assert [f.step for f in out] == [None, 5] and np.abs(out[0].positions - out[1].positions).max() < 1e-6


def test_default_threads_leave_the_simulation_its_cores():
    from openmm_ldb.reporting import available_cpus, default_worker_threads

    _, sim = _go_sim()
    assert default_worker_threads(sim) == max(1, min(8, available_cpus() - 1))


def test_backmapper_object_is_handed_to_the_worker(backmapper, tmp_path):
    """A Backmapper object's model goes to the worker: the file matches backmapping in process
    (the coherent stream by default: frame 2 carries frame 1's rotamers)."""
    go, sim = _go_sim()
    out = str(tmp_path / "aa.xtc")
    cg_frames = []
    with LDBReporter(out, 50, backmapper=backmapper) as rep:
        sim.reporters.append(rep)
        for _ in range(2):
            sim.step(50)
            cg_frames.append(sim.context.getState(positions=True).getPositions(asNumpy=True))
    with mdtraj.formats.XTCTrajectoryFile(out) as f:
        xyz, _, step, _ = f.read()
    assert list(step) == [50, 100]
    expected = [f.positions[0] for f in backmapper.stream(rep.plan, cg_frames)]
    assert np.abs(xyz - np.stack(expected)).max() < 2e-3  # XTC precision (nm)


@pytest.mark.slow
def test_worker_finishes_the_spool_when_the_simulation_process_dies(tiny_model, tmp_path):
    """SIGKILL of the simulation's process only: the worker sees its stdin close, writes every
    frame left in the spool and removes it; nothing to recover."""
    script = _script(tmp_path, tiny_model, "sim.step(10**9)\n", delay=0.3)
    proc, worker, accepted = _run_until(script, 12)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    t0 = time.time()
    while True:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        assert time.time() - t0 < 180, "the worker did not finish"
        time.sleep(0.1)
    out = str(tmp_path / "aa.xtc")
    assert not os.path.exists(out + SPOOL_SUFFIX)
    steps = _steps(out, str(tmp_path / "aa.pdb"))
    assert len(steps) >= accepted and steps == list(range(10, 10 * len(steps) + 1, 10))


def test_spool_records_and_released_space(tmp_path):
    """Frames round-trip through the spool (float32 nm, box, step, time); written frames give
    their disk space back while the file keeps its offsets."""
    from openmm_ldb.spool import Spool

    spool = Spool.create(str(tmp_path / "s.ldbspool"), {"output": "x.dcd"})
    n = 1000
    spool.write_topology({"n_particles": n, "periodic": True, "topology": None})
    rng = np.random.default_rng(1)
    frames = [rng.normal(size=(n, 3)) for _ in range(40)]
    box = np.diag([5.0, 6.0, 7.0])
    for k, x in enumerate(frames):
        spool.append(100 * (k + 1), 0.5 * (k + 1), x, box)
    reader = Spool(spool.path)
    assert reader.count() == 40
    got = reader.read(3, 5)
    assert got[0].step == 400 and got[1].time == pytest.approx(2.5)
    assert np.abs(got[0].positions - frames[3]).max() < 1e-6 and np.allclose(got[0].box, box)
    path = os.path.join(spool.path, "frames.bin")
    size, blocks = os.path.getsize(path), os.stat(path).st_blocks
    reader.release(0, 30)
    assert os.path.getsize(path) == size and reader.count() == 40
    assert os.stat(path).st_blocks < blocks * 0.5  # the space of 30 of 40 frames is back
    assert np.abs(reader.read(35, 36)[0].positions - frames[35]).max() < 1e-6
    assert reader.step_of(39) == 4000
    spool.remove()
    assert not os.path.exists(spool.path)


def _soft_run(out, kill_after=None, monkeypatch=None):
    """30 frames of a soft-bond Go model of GB1 (Reference platform: the same frames every run)
    through LDBReporter (coherent stream, batches of 3); with ``kill_after``, the worker is killed
    once it has written that many frames and ``recover`` writes the rest."""
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()), bond_k=240.0)
    sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=4, platform="Reference")
    rep = LDBReporter(out, 20, batchSize=3, hydrogens=False, workerDelay=0.2 if kill_after else 0.0)
    sim.reporters.append(rep)
    rep.waitUntilReady()
    sim.step(600)
    if kill_after is None:
        rep.close()
        return
    for _ in range(600):
        if rep.framesWritten >= kill_after:
            break
        time.sleep(0.05)
    os.kill(rep.workerPid, signal.SIGKILL)
    time.sleep(0.3)
    with pytest.raises(RuntimeError):
        rep.close()
    recover(rep.spoolPath)


@pytest.mark.slow
def test_recover_writes_the_atoms_of_an_uninterrupted_run(tmp_path, monkeypatch):
    """A run whose worker is killed mid-way and finished with ``openmm-ldb recover`` writes the
    atoms of an uninterrupted run, the coherent stream included (its state is checkpointed in the
    spool per batch).  Without the checkpoint the stream restarts at the first missing frame and
    side chains differ from there on (the test can fail)."""
    from openmm_ldb import spool as spool_module

    whole, cut, restarted = (str(tmp_path / f"{name}.dcd") for name in ("whole", "cut", "restarted"))
    _soft_run(whole)
    _soft_run(cut, kill_after=7)
    monkeypatch.setattr(spool_module, "_load_stream_state", lambda path, device: None)
    _soft_run(restarted, kill_after=7)
    xyz = {name: mdtraj.load(path, top=path[:-4] + ".pdb").xyz * 10.0
           for name, path in (("whole", whole), ("cut", cut), ("restarted", restarted))}
    assert xyz["whole"].shape[0] == xyz["cut"].shape[0] == xyz["restarted"].shape[0] == 30
    assert np.abs(xyz["cut"] - xyz["whole"]).max() < 1e-3                   # Å
    assert np.abs(xyz["restarted"] - xyz["whole"]).max() > 0.1


class _RunsCode:
    """Unpickling this runs a shell command (a crafted spool file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_spool_files_run_no_code_when_read(tmp_path, tiny_model):
    """A spool's settings and topology are JSON (the CG topology spelled out); ``recover`` of a
    folder holding a crafted pickle in the old layout refuses it with one line and runs nothing
    (before, ``openmm-ldb recover`` unpickled options.pkl and topology.pkl)."""
    import json
    import pickle

    _, sim = _go_sim()
    out = str(tmp_path / "aa.dcd")
    rep = LDBReporter(out, 10, model=tiny_model)
    sim.reporters.append(rep)
    sim.step(30)
    spool_dir = rep.spoolPath
    for name in ("options.json", "topology.json"):
        with open(os.path.join(spool_dir, name)) as f:
            json.load(f)
    rep.close()
    assert rep.framesWritten == 3
    crafted = tmp_path / "old.dcd.ldbspool"
    crafted.mkdir()
    marker = tmp_path / "code_ran"
    with open(crafted / "options.pkl", "wb") as f:
        pickle.dump({"output": str(tmp_path / "x.dcd"), "hook": _RunsCode(marker)}, f)
    with pytest.raises(ValueError, match="older openmm-ldb"):
        recover(str(crafted))
    assert not marker.exists()


def test_garbage_collection_does_not_wait_for_the_worker(tmp_path, tiny_model):
    """A reporter dropped without close() is collected at once (before, ``__del__`` waited for a
    slow worker); the worker finishes the frames it has on its own and removes the spool."""
    import gc

    _, sim = _go_sim()
    out = str(tmp_path / "aa.xtc")
    rep = LDBReporter(out, 10, model=tiny_model, workerDelay=0.5, batchSize=2)
    sim.reporters.append(rep)
    rep.waitUntilReady()
    sim.step(60)
    spool_dir = rep.spoolPath
    sim.reporters.clear()
    t0 = time.perf_counter()
    del rep
    gc.collect()
    assert time.perf_counter() - t0 < 0.5
    for _ in range(600):
        if not os.path.exists(spool_dir):
            break
        time.sleep(0.05)
    assert not os.path.exists(spool_dir)
    assert _steps(out, str(tmp_path / "aa.pdb")) == list(range(10, 70, 10))
