"""The house's layers (shared/DESIGN.md): each module imports only modules of its own layer or
below.  One change from DESIGN.md: ``evaluate`` sits in layer 7 beside ``exchange``, since it
consumes ``Backmapper.stream`` as DESIGN.md asks (a layer-6 module could not)."""
from __future__ import annotations

import ast
import pathlib

import openmm_ldb

LAYERS = {
    "residues": 1, "geometry": 2, "topology": 3, "data": 4, "model": 5,
    "training": 6, "export": 6, "metrics": 6,
    "backmapper": 7, "refine": 7, "writers": 7, "reporter": 7, "reporting": 7, "snapshots": 7, "exchange": 7,
    "cg": 7, "cg_torch": 7, "spool": 7, "worker": 7, "frames": 7, "evaluate": 7,
    "cli": 8, "demo": 8, "__init__": 8,
}
ROOT = pathlib.Path(openmm_ldb.__file__).parent


def _imports(path: pathlib.Path):
    """(line, top-level package module) of every relative import of a module of the package."""
    tree = ast.parse(path.read_text())
    inner = len(path.relative_to(ROOT).parts) - 1           # depth below the package root
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            if node.level <= inner:                          # within its own subpackage
                continue
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            for name in names:
                yield node.lineno, name


def test_every_module_has_a_layer():
    mods = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.rglob("*.py")}
    assert mods <= set(LAYERS), sorted(mods - set(LAYERS))


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for path in ROOT.rglob("*.py"):
        own = LAYERS[path.relative_to(ROOT).parts[0].removesuffix(".py")]
        for line, name in _imports(path):
            if name in LAYERS and LAYERS[name] > own:
                upward.append(f"{path.relative_to(ROOT)}:{line} (layer {own}) imports {name} (layer {LAYERS[name]})")
    assert not upward, "\n".join(upward)


def test_package_imports_without_posix_only_modules():
    """The package (Backmapper, the reporters, the CLI) imports where fcntl and resource do not
    exist (Windows): before, spool.py imported them at module level and ``import openmm_ldb``
    failed there.  Checked in a fresh interpreter with both modules made unimportable."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['fcntl'] = None; sys.modules['resource'] = None\n"
            "import openmm_ldb\nfrom openmm_ldb import Backmapper, LDBReporter, SnapshotReporter\n"
            "from openmm_ldb import cli, spool\nprint('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]
