"""Training on real chains: single process, and DistributedDataParallel with two gloo processes."""

import json
import os
import subprocess
import sys

import torch

from openmm_ldb import data
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


def test_distributed_two_gloo_processes(real_chains, tmp_path):
    ds = _dataset(real_chains, str(tmp_path / "ds.pt"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "openmm_ldb.training", ds, str(tmp_path / "ddp"), "--max-steps", "3", "--batch", "2",
           "--crop", "40", "--hidden", "16", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in open(tmp_path / "ddp" / "train.log")]
    assert log[0]["world_size"] == 2
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert os.path.exists(tmp_path / "ddp" / "checkpoint.pt")
