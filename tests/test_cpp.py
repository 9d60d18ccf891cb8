"""The C++ backmapper (cpp/) against the Python model.

Builds cpp/ with CMake against the installed torch and openmm wheels (skipped only where
cmake or a C++ compiler is missing), writes reference outputs of the exported TorchScript model
as loaded by ``torch.jit.load`` in Python, checks that the C++ test binary reproduces them
(``ctest``), and runs the example Cα simulation, reading its PDB back with mdtraj.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from openmm_ldb import residues as rc
from openmm_ldb.export import export_model

REPO = Path(__file__).resolve().parents[1]
CPP = REPO / "cpp"
EXAMPLE_SEQUENCE = "MTYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"  # as in ca_simulation.cpp

ONE_TO_THREE = {"A": "ALA", "C": "CYS", "D": "ASP", "E": "GLU", "F": "PHE", "G": "GLY", "H": "HIS", "I": "ILE",
                "K": "LYS", "L": "LEU", "M": "MET", "N": "ASN", "P": "PRO", "Q": "GLN", "R": "ARG", "S": "SER",
                "T": "THR", "V": "VAL", "W": "TRP", "Y": "TYR"}


def _compiler() -> str | None:
    for name in [os.environ.get("CXX"), "c++", "g++", "clang++"]:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _tiny_model(path: Path) -> Path:
    from openmm_ldb.model import LDBConfig, LDBModel

    torch.manual_seed(0)
    model = LDBModel(LDBConfig(hidden=16, encoder_layers=1, decoder_layers=1, denoiser_layers=1, num_codes=64))
    export_model(model, str(path))
    return path


def _demo_ca_nm() -> tuple[np.ndarray, np.ndarray]:
    """Cα positions (nm, float64) and restype of the shipped GB1 structure."""
    import mdtraj

    from openmm_ldb.cg import demo_structure_path

    traj = mdtraj.load(str(demo_structure_path()))
    ca = traj.topology.select("name CA")
    restype = np.array([rc.RESTYPE_INDEX[traj.topology.atom(i).residue.name] for i in ca], dtype=np.int64)
    return traj.xyz[0, ca].astype(np.float64), restype


def _with_disulfide(ca: np.ndarray, restype: np.ndarray) -> tuple[np.ndarray, list]:
    """GB1 with two residues 4.5-6.5 Å apart (Cα–Cα, not neighbours) made CYS and bonded."""
    d = np.linalg.norm(ca[:, None] - ca[None], axis=-1) * 10.0
    i, j = next((i, j) for i in range(len(ca)) for j in range(i + 3, len(ca)) if 4.5 < d[i, j] < 6.5)
    rt = restype.copy()
    rt[[i, j]] = rc.RESTYPE_INDEX["CYS"]
    return rt, [(int(i), int(j))]


def reference_cases() -> list[dict]:
    ca, restype = _demo_ca_nm()
    n = len(restype)
    two_segments = np.array([0] * 30 + [1] * (n - 30), dtype=np.int64)
    cys_restype, pairs = _with_disulfide(ca, restype)
    return [
        {"name": "deterministic", "ca": ca, "restype": restype, "segment": two_segments, "samples": 1, "seed": 0,
         "deterministic": True, "steps": 10},
        {"name": "disulfide", "ca": ca, "restype": cys_restype, "segment": np.zeros(n, dtype=np.int64),
         "samples": 1, "seed": 0, "deterministic": True, "steps": 10, "disulfides": pairs},
        {"name": "stochastic", "ca": ca, "restype": restype, "segment": two_segments, "samples": 3, "seed": 12345,
         "deterministic": False, "steps": 10},
        # shorter than the k=16 neighbours of the graph: padded edges
        {"name": "short_chain", "ca": ca[10:22], "restype": restype[10:22], "segment": np.zeros(12, dtype=np.int64),
         "samples": 2, "seed": 2**31 - 5, "deterministic": False, "steps": 4},
    ]


def write_reference(model_path: Path, out: Path) -> list[dict]:
    """Run the TorchScript file in Python and write inputs + outputs in the format of
    cpp/tests/test_agreement.cpp."""
    module = torch.jit.load(str(model_path))
    cases = reference_cases()
    lines = ["openmm_ldb_agreement 2", f"cases {len(cases)}"]
    for c in cases:
        # float64 nm -> float32 Å exactly as both backmappers convert
        ca = torch.as_tensor(c["ca"] * 10.0, dtype=torch.float32)[None]
        pairs = torch.as_tensor(np.asarray(c.get("disulfides", []), dtype=np.int64).reshape(-1, 2))
        with torch.no_grad():
            atoms, mask, _, _ = module(ca, torch.as_tensor(c["restype"]), torch.as_tensor(c["segment"]), pairs,
                                    torch.tensor([c["seed"]]), c["steps"], c["samples"], c["deterministic"], False)
        c["atoms"], c["mask"] = atoms[0].numpy(), mask.numpy()
        n, slots = mask.shape
        lines.append(f"case {c['name']} n {n} samples {c['samples']} seed {c['seed']} "
                     f"deterministic {int(c['deterministic'])} steps {c['steps']} slots {slots}")
        lines.append("restype " + " ".join(str(int(r)) for r in c["restype"]))
        lines.append("segment " + " ".join(str(int(s)) for s in c["segment"]))
        lines.append(f"disulfides {len(c.get('disulfides', []))} " +
                     " ".join(f"{a} {b}" for a, b in c.get("disulfides", [])))
        lines.append("ca_nm " + " ".join(repr(float(x)) for x in c["ca"].reshape(-1)))
        lines.append("mask " + " ".join(f"{float(x):.9g}" for x in c["mask"].reshape(-1)))
        lines.append("atoms " + " ".join(f"{float(x):.9g}" for x in c["atoms"].reshape(-1)))
    out.write_text("\n".join(lines) + "\n")
    return cases


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, env=env, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def cpp_build(tmp_path_factory):
    """(build dir, model path, reference cases): cpp/ configured and built against the wheels."""
    if shutil.which("cmake") is None or _compiler() is None:
        pytest.skip("cmake or a C++ compiler is not available")
    import openmm.version

    work = tmp_path_factory.mktemp("cpp")
    model = _tiny_model(work / "tiny.pt")
    reference = work / "reference.txt"
    cases = write_reference(model, reference)
    build = work / "build"
    _run(["cmake", "-S", CPP, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
          f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
          f"-DOPENMM_DIR={os.path.dirname(openmm.version.openmm_library_path)}",
          f"-DOPENMM_LDB_PYTHON={sys.executable}",
          f"-DOPENMM_LDB_TEST_MODEL={model}", f"-DOPENMM_LDB_TEST_REFERENCE={reference}"])
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(min(2, os.cpu_count() or 1))
    _run(["cmake", "--build", build, "-j", jobs])
    return build, model, cases


@pytest.mark.slow
def test_cpp_agrees_with_python(cpp_build):
    build, _, cases = cpp_build
    proc = _run(["ctest", "-V", "--output-on-failure"], cwd=build)
    out = proc.stdout
    assert "100% tests passed" in out and "Skipped" not in out, out
    for c in cases:
        assert f"ok   {c['name']}:" in out, out


@pytest.mark.slow
def test_cpp_example_simulation(cpp_build, tmp_path):
    import mdtraj

    from openmm_ldb.topology import CGMapping, build_aa_topology

    build, model, _ = cpp_build
    pdb = tmp_path / "ca_sim.pdb"
    proc = _run([build / "ca_simulation", model, pdb, 300, 100], timeout=300)
    assert "wrote 4 models" in proc.stdout, proc.stdout

    traj = mdtraj.load(str(pdb))
    n = len(EXAMPLE_SEQUENCE)
    assert traj.n_frames == 4 and traj.topology.n_residues == n
    assert [r.name for r in traj.topology.residues] == [ONE_TO_THREE[c] for c in EXAMPLE_SEQUENCE]
    assert np.isfinite(traj.xyz).all()
    # units: backbone bonds are ideal (Å in the model, nm in mdtraj), CA-CA are the CG bonds
    top = traj.topology
    n_ca = np.array([[top.select(f"resid {i} and name N")[0], top.select(f"resid {i} and name CA")[0]]
                     for i in range(n)])
    d = mdtraj.compute_distances(traj, n_ca)
    assert abs(float(np.median(d)) - 0.1458) < 0.002 and 0.12 < d.min() and d.max() < 0.17, (d.min(), d.max())
    ca = top.select("name CA")
    dca = np.linalg.norm(np.diff(traj.xyz[:, ca], axis=1), axis=-1)
    assert 0.3 < dca.min() and dca.max() < 0.46

    # atom names and order per residue are those of the Python all-atom topology
    restype = np.array([rc.RESTYPE_INDEX[ONE_TO_THREE[c]] for c in EXAMPLE_SEQUENCE])
    mapping = CGMapping(restype, np.arange(n), np.zeros(n, dtype=np.int64), ["A"], [str(i + 1) for i in range(n)], n)
    layout = build_aa_topology(mapping, np.zeros(n, dtype=np.int64), hydrogens=True)
    expected = [(a.residue.index, a.name) for a in layout.topology.atoms()]
    written = []
    for line in pdb.read_text().splitlines():
        if line.startswith("ENDMDL"):
            break
        if line.startswith("ATOM"):
            written.append((int(line[22:26]) - 1, line[12:16].strip()))
    assert written == expected
