"""benchmarks/gpu_check.py: its CPU dry run (CI) and, where a GPU is present, CUDA against the CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")


@pytest.mark.slow
def test_gpu_check_dry_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = subprocess.run([sys.executable, SCRIPT, "--dry", "--out", str(out)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["pass"] and report["dry"] and report["device"] == "cpu"
    assert report["agreement"]["pass"]
    assert {r["batch"] for r in report["throughput"]} == {1, 2}
    rep = report["reporter"]
    assert rep["ldb_frames_written"] == rep["frames"] == rep["ldb2_frames_written"]
    assert report["training_step"]["finite"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_agrees_with_cpu():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from gpu_check import check_agreement

    out = check_agreement(None, "cuda", 2)
    assert out["pass"], out
