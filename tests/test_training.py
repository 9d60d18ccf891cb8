"""Training on real chains: single process, and DistributedDataParallel with two gloo processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from openmm_ldb.export import export_model, load_model
from openmm_ldb.training import train


def _dataset(real_chains, path):
    chains = []
    for i, c in enumerate(real_chains[:4]):
        heavy = 15
        chains.append({"name": c.name, "cluster": f"c{i}", "split": "train" if i < 3 else "val",
                       "restype": c.restype, "segment": c.segment, "xyz": c.xyz[0, :, :heavy],
                       "present": c.present[:, :heavy]})
    torch.save({"chains": chains, "skipped": {}}, path)
    return path


def test_train_resume_and_export(real_chains, tmp_path):
    ds = _dataset(real_chains, str(tmp_path / "ds.pt"))
    from openmm_ldb.model import LDBConfig
    cfg = LDBConfig(hidden=16, encoder_layers=1, decoder_layers=1, denoiser_layers=1, num_codes=64)
    ck = train(ds, str(tmp_path / "run"), minutes=5, batch_chains=2, crop=40, config=cfg, max_steps=4,
               log_every=1, threads=1)
    ck2 = train(ds, str(tmp_path / "run"), minutes=5, batch_chains=2, crop=40, config=cfg, max_steps=6,
                log_every=1, threads=1)  # resumes from step 4
    assert ck == ck2
    state = torch.load(ck, weights_only=False)
    assert state["step"] == 6
    log = [json.loads(x) for x in open(tmp_path / "run" / "train.log")]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] == r["loss"] for r in log if "loss" in r)  # no NaN
    out = export_model(ck, str(tmp_path / "m.pt"))
    module, card = load_model(out)
    assert card["config"]["hidden"] == 16


@pytest.mark.slow
def test_distributed_two_gloo_processes(real_chains, tmp_path):
    ds = _dataset(real_chains, str(tmp_path / "ds.pt"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "openmm_ldb.training", ds, str(tmp_path / "ddp"), "--max-steps", "3", "--batch", "2",
           "--crop", "40", "--hidden", "16", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in open(tmp_path / "ddp" / "train.log")]
    assert log[0]["world_size"] == 2
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert os.path.exists(tmp_path / "ddp" / "checkpoint.pt")


def _items(real_chains):
    items = []
    for i, c in enumerate(real_chains[:3]):
        items.append({"name": c.name, "cluster": f"c{i}", "frame": 0, "restype": c.restype, "segment": c.segment,
                      "xyz": c.xyz[0, :, :15], "present": c.present[:, :15]})
    return items


@pytest.mark.slow
def test_best_guess_training_resumes_exactly(real_chains, tmp_path):
    """Two steps, stop, two more from the checkpoint == four steps in one go (model, optimizer,
    RNG state and data order all carried); the log counts steps and CPU-hours."""
    from openmm_ldb.training import train_guess

    items = _items(real_chains)
    kw = dict(chains=items, val=None, batch_chains=2, crop=32, threads=1, log_every=1, ckpt_every=1000)
    a = train_guess("", str(tmp_path / "a"), max_steps=4, **kw)
    train_guess("", str(tmp_path / "b"), max_steps=2, **kw)
    b = train_guess("", str(tmp_path / "b"), max_steps=4, **kw)
    sa, sb = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    assert sa["step"] == sb["step"] == 4
    for k in sa["model"]:
        assert torch.allclose(sa["model"][k], sb["model"][k], atol=1e-6), k
    log = [json.loads(x) for x in open(tmp_path / "b" / "train.log")]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert log[-1]["event"] == "end" and log[-1]["cpu_hours_total"] > 0


@pytest.mark.slow
def test_finetune_end_to_end(tmp_path):
    """openmm-ldb train --init default on two structure files: held-out report, exported model
    that the Backmapper loads like the default."""
    import mdtraj

    from openmm_ldb import cg
    from openmm_ldb.backmapper import Backmapper
    from openmm_ldb.cli import main

    traj = mdtraj.load(str(cg.demo_structure_path()))
    a, b = tmp_path / "a.pdb", tmp_path / "b.pdb"
    traj.save_pdb(str(a))
    moved = traj.xyz + np.random.default_rng(0).normal(0, 0.01, traj.xyz.shape).astype(np.float32)
    mdtraj.Trajectory(moved, traj.topology).save_pdb(str(b))
    code = main(["train", "--init", "default", "--structures", str(a), str(b), "--out", str(tmp_path / "ft"),
                 "--max-steps", "2", "--threads", "1"])
    assert code == 0
    model = tmp_path / "ft" / "model.pt"
    bm = Backmapper(str(model), threads=1)
    assert bm.card["training"]["steps"] == 2
    assert "validation_before" in bm.card["training"] and "validation_after" in bm.card["training"]
    go = cg.GoModel.from_structure(cg.demo_structure_path())
    top, pos = bm.backmap(go.topology, go.native_positions)
    assert top.getNumAtoms() > 400


def test_best_guess_run_changes_loss_and_neighbours(real_chains, tmp_path):
    """``python -m openmm_ldb.training guess ... --coord-loss squared --k 20`` changes the run from
    then on: the checkpoint and the log carry the new settings, and an unknown field is refused."""
    from openmm_ldb.training import train_guess

    kw = dict(chains=_items(real_chains), val=None, batch_chains=2, crop=32, threads=1, log_every=1, ckpt_every=1000)
    path = train_guess("", str(tmp_path / "a"), max_steps=1, config={"coord_loss": "squared", "k": 20}, **kw)
    ck = torch.load(path, weights_only=False)
    assert ck["config"]["coord_loss"] == "squared" and ck["config"]["k"] == 20
    start = json.loads(open(tmp_path / "a" / "train.log").readline())
    assert start["config"]["k"] == 20
    with pytest.raises(ValueError, match="unknown LDBConfig field"):
        train_guess("", str(tmp_path / "b"), max_steps=1, config={"neighbours": 20}, **kw)


def test_heads_only_run_trains_the_well_heads_alone(real_chains, tmp_path):
    """``--heads-only`` trains the chi1/chi2 well head and the per-well chi2-chi4 head and nothing
    else: after two steps every other weight is the shipped one and both heads moved; the log
    carries the heads' losses, and the run resumes only the way it started."""
    from openmm_ldb.export import model_from_exported
    from openmm_ldb.training import train_guess

    kw = dict(chains=_items(real_chains), val=None, batch_chains=2, crop=32, threads=1, log_every=1, ckpt_every=1000)
    path = train_guess("", str(tmp_path / "a"), max_steps=2, heads_only=True, **kw)
    ck = torch.load(path, weights_only=False)
    shipped = model_from_exported()[0].state_dict()
    moved = {k for k, v in ck["model"].items() if not torch.equal(v, shipped[k])}
    assert any(k.startswith("guess_decoder.well_head.") for k in moved)
    assert any(k.startswith("guess_decoder.well_chi_head.") for k in moved)
    assert all(k.startswith(("guess_decoder.well_head.", "guess_decoder.well_chi_head.")) for k in moved), moved
    rows = [json.loads(x) for x in open(tmp_path / "a" / "train.log")]
    steps = [r for r in rows if r.get("phase") == "heads"]
    assert len(steps) == 2 and all(r["well_chi"] > 0 and r["wells"] > 0 for r in steps)
    with pytest.raises(ValueError, match="heads_only"):
        train_guess("", str(tmp_path / "a"), max_steps=3, **kw)


def test_well_chi_loss_reads_the_true_chi1_well():
    """The per-well head is scored in the true chi1's well only: right there and wrong in the two
    other wells costs nothing, wrong there costs; a residue without chi2 costs nothing."""
    import math

    from openmm_ldb import geometry as geo
    from openmm_ldb import residues as rc
    from openmm_ldb.model.ldb import well_chi_loss

    tables = geo.GeometryTables()
    restype = torch.tensor([[rc.RESTYPE_INDEX["LYS"], rc.RESTYPE_INDEX["SER"]]])
    chis = torch.tensor([[[-65.0, 175.0, 60.0, 180.0], [178.0, 0.0, 0.0, 0.0]]]) * math.pi / 180
    true = torch.zeros(1, 2, geo.NUM_ANGLES, 2)
    true[..., 0] = 1.0
    true[:, :, geo.CHI0:, 0], true[:, :, geo.CHI0:, 1] = torch.cos(chis), torch.sin(chis)
    mask = torch.zeros(1, 2, geo.NUM_ANGLES)
    mask[0, 0, geo.CHI0:] = 1.0
    mask[0, 1, geo.CHI0] = 1.0
    wrong = torch.tensor([0.0, -1.0])
    well_chi = wrong.expand(1, 2, 3, 3, 2).clone()
    well_chi[0, 0, 2] = true[0, 0, geo.CHI0 + 1:]          # LYS chi1 -65: the third well (-60)
    assert float(well_chi_loss(well_chi, true, mask, restype, tables)) < 1e-6
    well_chi[0, 0, 2] = wrong
    well_chi[0, 0, 0] = true[0, 0, geo.CHI0 + 1:]
    assert float(well_chi_loss(well_chi, true, mask, restype, tables)) > 0.5


class _RunsCode:
    """Unpickling this runs a shell command (what a crafted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_checkpoints_and_datasets_are_read_without_running_code(tmp_path):
    """A crafted checkpoint or featurized dataset is refused where it would have run code when
    read (``torch.load(weights_only=False)`` before); real ones, with tensors and numpy arrays,
    still load."""
    import pickle

    from openmm_ldb import export, training
    from openmm_ldb.data import load_tensors

    marker = tmp_path / "code_ran"
    crafted = tmp_path / "crafted.pt"
    torch.save({"model": {}, "config": _RunsCode(marker), "chains": []}, crafted)
    for read in (load_tensors, export.load_checkpoint, training.load_split):
        with pytest.raises(pickle.UnpicklingError):
            read(str(crafted))
    assert not marker.exists()
    real = tmp_path / "dataset.pt"
    arrays = {"name": "x", "split": "train", "restype": np.arange(3), "xyz": np.zeros((3, 15, 3), np.float32)}
    torch.save({"chains": [arrays], "skipped": {"unreadable": 1}}, real)
    back = load_tensors(str(real))
    assert np.array_equal(back["chains"][0]["restype"], np.arange(3)) and back["skipped"] == {"unreadable": 1}
