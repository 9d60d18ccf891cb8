"""Cα topologies from sequences, and Cα models of all-atom structures (the one structure reader of
the CG models)."""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Sequence

import numpy as np
import openmm
from openmm import app, unit

from .common import RESIDUE_PARAMETERS, _length_nm, _positions_nm, _standard_name


# ---------------------------------------------------------------------------------------------------------
# Topologies
# ---------------------------------------------------------------------------------------------------------
def _default_chain_ids(n: int) -> list[str]:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return [letters[i] if i < 26 else f"{letters[i // 26 - 1]}{letters[i % 26]}" for i in range(n)]


def ca_topology(sequences: str | Sequence[str], chain_ids: Sequence[str] | None = None) -> app.Topology:
    """Build a C-alpha coarse-grained topology from one-letter sequences.

    Parameters
    ----------
    sequences : str or sequence of str
        One one-letter amino-acid sequence per chain (a single string means one chain). Case is ignored.
    chain_ids : sequence of str, optional
        Chain identifiers; default ``'A'``, ``'B'``, ...

    Returns
    -------
    openmm.app.Topology
        One residue per amino acid (standard three-letter names, ids numbered from 1 in each chain), one atom
        named ``CA`` (element carbon) per residue, and bonds between consecutive beads of each chain.

    Raises
    ------
    ValueError
        For an unknown one-letter code (naming it, its chain and position), an empty sequence, or a number of
        chain ids that does not match the number of sequences.
    """
    if isinstance(sequences, str):
        sequences = [sequences]
    sequences = list(sequences)
    if not sequences:
        raise ValueError("sequences is empty")
    if chain_ids is None:
        chain_ids = _default_chain_ids(len(sequences))
    chain_ids = list(chain_ids)
    if len(chain_ids) != len(sequences):
        raise ValueError(f"got {len(chain_ids)} chain ids for {len(sequences)} sequences")
    topology = app.Topology()
    carbon = app.Element.getBySymbol("C")
    for c, (seq, cid) in enumerate(zip(sequences, chain_ids)):
        seq = seq.strip().upper()
        if not seq:
            raise ValueError(f"sequence {c} (chain {cid}) is empty")
        for i, code in enumerate(seq):
            if code not in RESIDUE_PARAMETERS:
                raise ValueError(
                    f"unknown residue {code!r} at index {i} of sequence {c} (chain {cid}); "
                    f"known one-letter codes: {''.join(sorted(RESIDUE_PARAMETERS))}"
                )
        chain = topology.addChain(str(cid))
        previous = None
        for i, code in enumerate(seq):
            residue = topology.addResidue(RESIDUE_PARAMETERS[code][0], chain, id=str(i + 1))
            atom = topology.addAtom("CA", carbon, residue)
            if previous is not None:
                topology.addBond(previous, atom)
            previous = atom
    return topology


def _pdb_insertion_codes(path: str) -> list[str]:
    """The insertion code of every residue of a PDB file's first model, in file order (mdtraj
    keeps residue numbers but drops insertion codes: 1AYE numbers 4A-99A before 1-309)."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    codes, last = [], None
    with opener(path, "rt") as handle:
        for line in handle:
            if line.startswith("ENDMDL"):
                break
            if line.startswith(("ATOM  ", "HETATM")):
                key = (line[21:22], line[22:26], line[26:27], line[17:20])
                if key != last:
                    codes.append(line[26:27].strip())
                    last = key
    return codes


def _load_structure(structure, frame: int = 0):
    """Load an all-atom structure as a one-frame mdtraj Trajectory (a PDB file's insertion codes
    ride along as ``_ldb_insertion_codes``, one per residue, where they match its residues)."""
    import mdtraj as md

    icodes = None
    if isinstance(structure, md.Trajectory):
        traj = structure
        icodes = getattr(structure, "_ldb_insertion_codes", None)
    elif isinstance(structure, (str, os.PathLike)):
        path = str(structure)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        lower = path.lower()
        stem = lower.removesuffix(".gz")
        if stem.endswith((".cif", ".mmcif", ".pdbx")):
            opener = gzip.open if lower.endswith(".gz") else open
            with opener(path, "rt") as handle:
                pdbx = app.PDBxFile(handle)
            return _load_structure(pdbx, frame)
        if stem.endswith((".pdb", ".ent")):
            traj = md.load_pdb(path, frame=frame)
            frame = 0
            icodes = _pdb_insertion_codes(path)
            if len(icodes) != traj.topology.n_residues or not any(icodes):
                icodes = None
        else:
            traj = md.load(path)
    elif hasattr(structure, "topology") and (hasattr(structure, "getPositions") or hasattr(structure, "positions")):
        # openmm.app.PDBFile, PDBxFile, Modeller, ...
        if hasattr(structure, "getPositions"):
            try:
                pos = structure.getPositions(asNumpy=True, frame=frame)
            except TypeError:
                pos = structure.getPositions()
            frame = 0
        else:
            pos = structure.positions
        xyz = _positions_nm(pos)
        top = md.Topology.from_openmm(structure.topology)
        traj = md.Trajectory(xyz[None].astype(np.float32), top)
    else:
        raise TypeError(
            "structure must be a path to a PDB/mmCIF file, an mdtraj.Trajectory, or an object with "
            f"topology and positions (openmm PDBFile/PDBxFile); got {type(structure).__name__}"
        )
    if not 0 <= frame < traj.n_frames:
        raise ValueError(f"frame {frame} out of range: the structure has {traj.n_frames} frames")
    out = traj[frame]
    if icodes is not None:
        out._ldb_insertion_codes = icodes
    return out


def _select_residues(traj, chains=None):
    """Standard amino-acid residues that have a CA atom, grouped by chain.

    Returns a list of (chain_id, [(mdtraj residue, standard name, CA atom index), ...]).
    """
    selected = []
    wanted = None if chains is None else ([chains] if isinstance(chains, (str, int)) else list(chains))
    n_skipped = 0
    skipped_names = set()
    found = set()
    for ci, chain in enumerate(traj.topology.chains):
        cid = getattr(chain, "chain_id", None) or _default_chain_ids(ci + 1)[ci]
        if wanted is not None and cid not in wanted and ci not in wanted:
            continue
        found.update({cid, ci})
        items = []
        for residue in chain.residues:
            std = _standard_name(residue.name)
            ca = [a.index for a in residue.atoms if a.name == "CA"]
            if std is None:
                names = {a.name for a in residue.atoms}
                if {"N", "CA", "C"} <= names:  # a non-standard amino acid, not a water/ion/ligand
                    n_skipped += 1
                    skipped_names.add(residue.name)
                continue
            if not ca:
                n_skipped += 1
                skipped_names.add(f"{residue.name} without CA")
                continue
            items.append((residue, std, ca[0]))
        if items:
            selected.append((cid, items))
    if wanted is not None:
        missing = [c for c in wanted if c not in found]
        if missing:
            raise ValueError(f"chains {missing} not found in the structure")
    if n_skipped:
        warnings.warn(
            f"skipped {n_skipped} amino-acid residue(s) that are non-standard or lack a CA atom: "
            f"{sorted(skipped_names)}",
            stacklevel=3,
        )
    if not selected:
        raise ValueError("no standard protein residues with a CA atom found in the structure")
    return selected


def _cg_from_selection(traj, selection, max_bond_nm: float):
    topology = app.Topology()
    carbon = app.Element.getBySymbol("C")
    xyz = []
    icodes = getattr(traj, "_ldb_insertion_codes", None)
    for cid, items in selection:
        chain = topology.addChain(str(cid))
        previous, previous_xyz = None, None
        for residue, std, ca in items:
            res = topology.addResidue(std, chain, id=str(residue.resSeq),
                                      insertionCode=icodes[residue.index] if icodes else "")
            atom = topology.addAtom("CA", carbon, res)
            pos = traj.xyz[0, ca].astype(float)
            if previous is not None and np.linalg.norm(pos - previous_xyz) <= max_bond_nm:
                topology.addBond(previous, atom)
            previous, previous_xyz = atom, pos
            xyz.append(pos)
    return topology, np.array(xyz)


def _vec3_quantity(xyz: np.ndarray) -> unit.Quantity:
    return unit.Quantity([openmm.Vec3(*map(float, p)) for p in xyz], unit.nanometer)


def ca_from_structure(structure, chains=None, frame: int = 0, max_bond_length=0.45 * unit.nanometer):
    """Reduce an all-atom structure to a C-alpha topology and C-alpha positions.

    Parameters
    ----------
    structure : str, os.PathLike, mdtraj.Trajectory, openmm.app.PDBFile or openmm.app.PDBxFile
        A PDB (``.pdb``, ``.pdb.gz``, read with mdtraj) or mmCIF file (``.cif``, ``.cif.gz``, read with
        ``openmm.app.PDBxFile``), or an already loaded structure.
    chains : str, int or sequence of these, optional
        Chains to keep, by chain id (``'A'``) or by index in the file; default: all chains with protein.
    frame : int, optional
        Model/frame to use for multi-model files. Default 0.
    max_bond_length : openmm.unit.Quantity, optional
        Consecutive residues of a chain are bonded only when their C-alpha atoms are at most this far apart
        (default 0.45 nm), so chain breaks (missing residues) are not bridged by a bond.

    Returns
    -------
    topology : openmm.app.Topology
        One residue (standard name; protonation variants such as ``HID`` become ``HIS``, ``MSE`` becomes
        ``MET``; original residue numbers kept as ids) with one ``CA`` atom per standard amino-acid residue,
        chains kept.
    positions : openmm.unit.Quantity
        C-alpha positions (list of ``Vec3``) in nm.

    Notes
    -----
    Waters, ions and ligands are skipped silently; non-standard amino acids and residues without a CA atom
    are skipped with a warning.
    """
    traj = _load_structure(structure, frame)
    selection = _select_residues(traj, chains)
    topology, xyz = _cg_from_selection(traj, selection, _length_nm(max_bond_length, "max_bond_length"))
    return topology, _vec3_quantity(xyz)


def _heavy_atom_contacts(traj, selection, cutoff_nm: float) -> set[tuple[int, int]]:
    """Bead pairs (i < j) with any heavy atoms within ``cutoff_nm`` in the all-atom structure."""
    from scipy.spatial import cKDTree

    atom_idx, owner = [], []
    bead = 0
    for _, items in selection:
        for residue, _, _ in items:
            for atom in residue.atoms:
                if atom.element is None or atom.element.symbol != "H":
                    atom_idx.append(atom.index)
                    owner.append(bead)
            bead += 1
    owner = np.asarray(owner)
    pairs = cKDTree(traj.xyz[0, atom_idx].astype(float)).query_pairs(cutoff_nm, output_type="ndarray")
    if len(pairs) == 0:
        return set()
    ri, rj = owner[pairs[:, 0]], owner[pairs[:, 1]]
    keep = ri != rj
    return {(int(min(a, b)), int(max(a, b))) for a, b in zip(ri[keep], rj[keep])}
