"""Reading real all-atom structures, featurizing them for the model, and splitting by protein."""

from __future__ import annotations

import zlib
import csv
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from . import residues as rc

VALIDATION_FRACTION_PERCENT = 10


def is_validation_cluster(cluster: str) -> bool:
    """Deterministic validation split by sequence cluster (30 % identity), never by chain or frame."""
    return zlib.crc32(cluster.encode()) % 100 < VALIDATION_FRACTION_PERCENT




def data_dir(path: str | None = None) -> str:
    """The training-data folder: ``path``, else ``$OPENMM_LDB_DATA``, else ``../shared/data``."""
    path = path or os.environ.get("OPENMM_LDB_DATA") or os.path.join(os.getcwd(), "..", "shared", "data")
    if not os.path.exists(os.path.join(path, "train.tsv")):
        raise FileNotFoundError(f"no train.tsv in {path!r}: pass the data folder or set OPENMM_LDB_DATA")
    return path


@dataclass
class Chain:
    """One protein chain in slot layout (Å).  ``xyz`` is [frames, N, NUM_SLOTS, 3]."""

    name: str
    restype: np.ndarray      # [N] int
    segment: np.ndarray      # [N] int, new id after every chain break
    xyz: np.ndarray          # [F, N, S, 3] float32, zeros where missing
    present: np.ndarray      # [N, S] float32, 1 where the file has the atom
    cluster: str = ""


_SLOT_INDEX = {r: {n: i for i, n in enumerate(rc.slot_names(r)) if n} for r in rc.RESTYPES_3}
# Non-standard residues that are the same side chain with one atom renamed.
_MODIFIED = {"MSE": ("MET", {"SE": "SD"})}


def chain_from_mdtraj(traj, chain_index: int | None = None, name: str = "", skipped: Counter | None = None,
                      heavy_only: bool = True) -> Chain | None:
    """Convert (one chain of) an mdtraj trajectory into a :class:`Chain`.

    Non-standard residues (other than MSE) are removed and leave a segment break; residues
    missing any backbone heavy atom are removed likewise.  Reasons are counted in ``skipped``.
    """
    skipped = skipped if skipped is not None else Counter()
    top = traj.topology
    residues = [r for r in top.residues if r.is_protein and (chain_index is None or r.chain.index == chain_index)]
    restype, slots_of, keep_break = [], [], []
    brk = False
    for res in residues:
        rname, rename = res.name, {}
        if rname in _MODIFIED:
            rname, rename = _MODIFIED[rname]
        try:
            rname = rc.canonical_residue_name(rname)
        except KeyError:
            skipped["nonstandard_residue"] += 1
            brk = True
            continue
        index = _SLOT_INDEX[rname]
        atom_slots = {}
        for atom in res.atoms:
            aname = rc.canonical_atom_name(rname, rename.get(atom.name, atom.name))
            if heavy_only and atom.element is not None and atom.element.symbol == "H":
                continue
            if aname in index and index[aname] < rc.NUM_HEAVY_SLOTS:
                atom_slots[index[aname]] = atom.index
        if any(s not in atom_slots for s in range(4)):
            skipped["missing_backbone_atom"] += 1
            brk = True
            continue
        n_heavy = len(rc.BACKBONE_ATOMS) + len(rc.SIDECHAIN_ATOMS[rname])
        if len(atom_slots) < n_heavy:
            skipped["residue_missing_sidechain_atoms"] += 1
        restype.append(rc.RESTYPE_INDEX[rname])
        slots_of.append(atom_slots)
        keep_break.append(brk)
        brk = False
    if len(restype) < 2:
        skipped["too_short"] += 1
        return None
    nres = len(restype)
    xyz = np.zeros((traj.n_frames, nres, rc.NUM_SLOTS, 3), dtype=np.float32)
    present = np.zeros((nres, rc.NUM_SLOTS), dtype=np.float32)
    for i, atom_slots in enumerate(slots_of):
        for s, a in atom_slots.items():
            xyz[:, i, s] = traj.xyz[:, a] * 10.0  # nm -> Å
            present[i, s] = 1.0
    ca = xyz[0, :, 1]
    gap = np.linalg.norm(ca[1:] - ca[:-1], axis=-1) > rc.CHAIN_BREAK_CA_CA
    breaks = np.concatenate([[False], gap | np.array(keep_break[1:])])
    segment = np.cumsum(breaks).astype(np.int64)
    lone = np.bincount(segment)[segment] < 2
    if lone.any():  # a residue alone between two gaps cannot be a bonded segment
        skipped["isolated_residue"] += int(lone.sum())
        keep = ~lone
        xyz, present, segment = xyz[:, keep], present[keep], np.unique(segment[keep], return_inverse=True)[1]
        restype = list(np.array(restype)[keep])
        if len(restype) < 2:
            skipped["too_short"] += 1
            return None
    return Chain(name=name, restype=np.array(restype, dtype=np.int64), segment=segment, xyz=xyz, present=present)


def read_chain(path: str, chain_id: str, skipped: Counter | None = None) -> Chain | None:
    """Read one chain (by PDB chain id) of a structure file with mdtraj.

    mdtraj starts a new chain at every TER record, and many files put TER records inside a
    chain; all mdtraj chains with the requested id are joined in file order (real gaps are
    then found from Cα–Cα distances and become segments).
    """
    import mdtraj

    traj = mdtraj.load(path) if not path.endswith(".pdb.gz") else mdtraj.load_pdb(path)
    chains = [c.index for c in traj.topology.chains if getattr(c, "chain_id", None) == chain_id]
    if not chains and chain_id in ("", None):
        chains = [0]
    if not chains:
        if skipped is not None:
            skipped["chain_not_found"] += 1
        return None
    atoms = [a.index for a in traj.topology.atoms if a.residue.chain.index in chains]
    sub = traj.atom_slice(atoms)
    return chain_from_mdtraj(sub, None, name=f"{os.path.basename(path)}:{chain_id}", skipped=skipped)


def list_chains(path: str | None = None) -> list[dict]:
    """Rows of ``train.tsv`` with absolute file paths and a ``split`` field ('train'/'val')."""
    root = data_dir(path)
    rows = list(csv.DictReader(open(os.path.join(root, "train.tsv")), delimiter="\t"))
    for r in rows:
        r["path"] = os.path.join(root, "structures", r["file"])
        r["split"] = "val" if is_validation_cluster(r["cluster30"]) else "train"
    return rows


def _featurize_row(row: dict) -> tuple[dict | None, Counter]:
    skipped: Counter = Counter()
    try:
        chain = read_chain(row["path"], row["chain"], skipped)
    except Exception as exc:  # unreadable file: count it, never crash the whole run
        skipped[f"unreadable:{type(exc).__name__}"] += 1
        return None, skipped
    if chain is None:
        return None, skipped
    heavy = rc.NUM_HEAVY_SLOTS + 1  # heavy atoms and OXT
    return {"name": chain.name, "cluster": row["cluster30"], "split": row["split"],
            "restype": chain.restype, "segment": chain.segment,
            "xyz": chain.xyz[0, :, :heavy].astype(np.float32), "present": chain.present[:, :heavy]}, skipped


def load_tensors(path: str, map_location="cpu"):
    """A checkpoint or featurized dataset written with ``torch.save``, read weights-only: tensors,
    numpy arrays and plain containers come back, and a file that would run code when read (a
    crafted pickle) is refused with ``pickle.UnpicklingError`` instead."""
    import torch

    core = getattr(np, "_core", None) or np.core
    # numpy arrays and their dtypes (numpy 2 pickles a dtype by its class, e.g. Int64DType)
    dtypes = [t for t in vars(getattr(np, "dtypes", np)).values() if isinstance(t, type) and issubclass(t, np.dtype)]
    with torch.serialization.safe_globals([np.ndarray, np.dtype, core.multiarray._reconstruct, *dtypes]):
        return torch.load(path, map_location=map_location, weights_only=True)


def featurize_dataset(path: str | None = None, out: str = "cache/dataset.pt", workers: int = 2,
                      limit: int | None = None) -> dict:
    """Read every chain of ``train.tsv`` once and cache the model's inputs and targets.

    Returns (and saves with ``torch.save``) ``{"chains": [...], "skipped": Counter}``; chains
    that cannot be used are skipped with counted reasons.
    """
    import multiprocessing

    import torch
    from tqdm import tqdm

    rows = list_chains(path)[:limit]
    chains, skipped = [], Counter()
    with multiprocessing.Pool(workers) as pool:
        for item, sk in tqdm(pool.imap(_featurize_row, rows, chunksize=4), total=len(rows), desc="featurize"):
            skipped.update(sk)
            if item is not None:
                chains.append(item)
    result = {"chains": chains, "skipped": dict(skipped)}
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    torch.save(result, out)
    return result


def geometry_source_chains(path: str | None = None, n: int = 40) -> list[tuple[str, str]]:
    """Complete single-model X-ray chains of distinct training clusters: the structures the ideal
    geometry table of :mod:`residues` is derived from."""
    root = data_dir(path)
    rows = list(csv.DictReader(open(os.path.join(root, "train.tsv")), delimiter="\t"))
    picked, clusters = [], set()
    for r in rows:
        if (r["file"].startswith(("bm5_clean/", "loop_modeling_reference/raw/")) and r["nmodels"] == "1"
                and float(r["frac_sc_complete"]) == 1.0 and 80 <= int(r["nres"]) <= 300
                and r["cluster30"] not in clusters and not is_validation_cluster(r["cluster30"])):
            picked.append((os.path.join(root, "structures", r["file"]), r["chain"]))
            clusters.add(r["cluster30"])
        if len(picked) == n:
            break
    return picked


def write_geometry_table(path: str | None = None) -> str:
    """Regenerate the cached chemistry table (``residues.ideal_geometry``) from real structures."""
    import json

    out = rc._GEOMETRY_JSON
    out.parent.mkdir(exist_ok=True)
    with open(out, "w") as f:
        json.dump(rc.derive_ideal_geometry(geometry_source_chains(path)), f, indent=0)
    return str(out)


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--geometry":  # python -m openmm_ldb.data --geometry [DATA]
        print("wrote", write_geometry_table(sys.argv[2] if len(sys.argv) > 2 else None))
        raise SystemExit(0)

    res = featurize_dataset(sys.argv[1] if len(sys.argv) > 1 else None, out=sys.argv[2] if len(sys.argv) > 2 else "cache/dataset.pt")
    n = sum(len(c["restype"]) for c in res["chains"])
    print(f"{len(res['chains'])} chains, {n} residues; skipped: {res['skipped']}")
