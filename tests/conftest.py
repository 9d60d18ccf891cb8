"""Shared fixtures: real protein structures for the tests.

``real_chains`` are a handful of real X-ray chains from *validation* clusters of the training
data (``data.list_chains`` rows with ``split == 'val'``), found through ``OPENMM_LDB_DATA`` or
``<repo>/../shared/data``.  Without the data folder the tests fall back to the shipped GB1
structure (``openmm_ldb/resources/gb1.pdb``), so they always run on real coordinates.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from openmm.app import Element, Topology

from openmm_ldb import data
from openmm_ldb import residues as rc

REPO = Path(__file__).resolve().parents[1]
N_REAL_CHAINS = 6
XRAY_FOLDERS = ("bm5_clean/", "loop_modeling_reference/raw/")

# One intra-op thread: with other processes on the few cores, torch's default thread pool
# makes the small builder/fit calls of the tests 10-30x slower (spin-waiting threads).
torch.set_num_threads(1)


def _find_data_dir() -> str | None:
    """``$OPENMM_LDB_DATA`` if set (None when it holds no train.tsv: set it to a missing folder to
    run the tests on the shipped demo structure), else ``<repo>/../shared/data`` if present."""
    path = os.environ.get("OPENMM_LDB_DATA") or str(REPO.parent / "shared" / "data")
    return path if os.path.exists(os.path.join(path, "train.tsv")) else None


@pytest.fixture(scope="session")
def data_dir() -> str | None:
    """The training-data folder, or None where it is not available."""
    return _find_data_dir()


def _validation_chains(root: str, n: int = N_REAL_CHAINS) -> list[data.Chain]:
    """``n`` complete single-model X-ray chains (50-250 residues) of distinct validation clusters.

    One chain per cluster (the smallest the reader returns complete: some files split a chain
    with TER records); the ``n - 1`` smallest, plus the smallest with a disulfide bond so that
    CYX handling is exercised on real data (or the ``n``-th smallest if none has one).
    """
    rows = [r for r in data.list_chains(root)
            if r["split"] == "val" and r["nmodels"] == "1" and float(r["frac_sc_complete"]) >= 0.98
            and 50 <= int(r["nres"]) <= 250 and r["file"].startswith(XRAY_FOLDERS)]
    rows.sort(key=lambda r: (int(r["nres"]), r["file"], r["chain"]))
    candidates, clusters = [], set()
    for r in rows:
        if r["cluster30"] in clusters:
            continue
        chain = data.read_chain(r["path"], r["chain"])
        if chain is None or len(chain.restype) < 0.95 * int(r["nres"]):
            continue
        chain.cluster = r["cluster30"]
        candidates.append(chain)
        clusters.add(r["cluster30"])
    chains = candidates[: n - 1]
    rest = candidates[n - 1:]
    if rest and not any(disulfide_pairs(c) for c in chains):
        rest.sort(key=lambda c: not disulfide_pairs(c))  # stable: smallest with a disulfide first
    return chains + rest[:1]


def _demo_chain() -> data.Chain:
    import mdtraj

    from openmm_ldb.cg import demo_structure_path

    chain = data.chain_from_mdtraj(mdtraj.load(str(demo_structure_path())), 0, name="gb1.pdb:A")
    assert chain is not None
    return chain


@pytest.fixture(scope="session")
def real_chains(data_dir) -> list[data.Chain]:
    """Real protein chains (see module docstring); at least one, each with >= 50 residues."""
    chains = _validation_chains(data_dir) if data_dir else []
    if not chains:
        chains = [_demo_chain()]
    return chains


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """An untrained, tiny exported LDB model: real code paths, crude structures."""
    import torch

    from openmm_ldb.export import export_model
    from openmm_ldb.model import LDBConfig, LDBModel

    torch.manual_seed(0)
    model = LDBModel(LDBConfig(hidden=16, encoder_layers=1, decoder_layers=1, denoiser_layers=1, num_codes=64))
    path = str(tmp_path_factory.mktemp("model") / "tiny.pt")
    export_model(model, path, {"note": "untrained test model"})
    return path


@pytest.fixture(scope="session")
def backmapper(tiny_model):
    from openmm_ldb.backmapper import Backmapper

    return Backmapper(tiny_model, device="cpu")


def disulfide_pairs(chain: data.Chain, cutoff: float = 2.3) -> list[tuple[int, int]]:
    """Residue index pairs of CYS whose SG atoms (present in the file) are bonded."""
    cys = np.flatnonzero((chain.restype == rc.RESTYPE_INDEX["CYS"]) & (chain.present[:, 5] > 0))
    sg = chain.xyz[0, cys, 5]
    return [(int(cys[i]), int(cys[j])) for i in range(len(cys)) for j in range(i + 1, len(cys))
            if np.linalg.norm(sg[i] - sg[j]) < cutoff]


def cg_topology(chains: list[data.Chain], bead_name: str = "CA") -> Topology:
    """A one-bead-per-residue OpenMM topology with one chain per :class:`data.Chain`; residues
    numbered from 1, a number skipped at every segment break (as a file shows a gap)."""
    top = Topology()
    carbon = Element.getBySymbol("C")
    for k, chain in enumerate(chains):
        c = top.addChain(chr(ord("A") + k))
        for i, rt in enumerate(chain.restype):
            res = top.addResidue(rc.RESTYPES_3[rt], c, id=str(i + 1 + int(chain.segment[i])))
            top.addAtom(bead_name, carbon, res)
    return top


def as_batch(chain: data.Chain):
    """Torch tensors (xyz [1, N, S, 3], restype, segment, present) of the first frame."""
    return (torch.tensor(chain.xyz[:1]), torch.tensor(chain.restype), torch.tensor(chain.segment),
            torch.tensor(chain.present))


def concat_chains(chains: list[data.Chain]):
    """All chains as one batch element with a distinct segment id per chain (one builder call)."""
    offset, segs = 0, []
    for c in chains:
        segs.append(c.segment + offset)
        offset = int(segs[-1].max()) + 1
    return (torch.tensor(np.concatenate([c.xyz[:1] for c in chains], axis=1)),
            torch.tensor(np.concatenate([c.restype for c in chains])),
            torch.tensor(np.concatenate(segs)),
            torch.tensor(np.concatenate([c.present for c in chains])))
