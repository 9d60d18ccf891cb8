"""The Sphinx documentation builds with warnings as errors (skipped where Sphinx is not installed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
API_MODULES = ["backmapper", "reporter", "writers", "refine", "cg", "topology", "residues", "geometry", "exchange",
               "snapshots", "export"]


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    out = tmp_path / "html"
    # the command of the docs CI step, built into a temporary folder (a fresh environment: -E)
    cmd = [sys.executable, "-m", "sphinx", "-W", "-E", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
           str(DOCS), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    for page in ["index", "install", "quickstart", "cli", "models", "exchange", "snapshots", "cpp", "benchmarks",
                 "model_card", "api"]:
        assert (out / f"{page}.html").exists(), page
    api = (out / "api.html").read_text()
    for module in API_MODULES:  # autodoc imported every module and documented it
        assert f'id="module-openmm_ldb.{module}"' in api, module
    for name in ["openmm_ldb.exchange.to_all_atom", "openmm_ldb.snapshots.SnapshotReporter",
                 "openmm_ldb.reporter.LDBReporter", "openmm_ldb.backmapper.Backmapper"]:
        assert f'id="{name}"' in api, name
    # result pages are generated from measured JSON (tools/write_result_docs.py): no placeholders left
    for page in ("benchmarks", "model_card"):
        text = (out / f"{page}.html").read_text()
        assert "TO BE FILLED" not in text and "TBF" not in text, page
    assert "PULCHRA" in (out / "benchmarks.html").read_text()
