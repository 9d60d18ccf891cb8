"""Shared pieces of the built-in CG models: residue parameters, unit helpers, small geometry."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import openmm
from openmm import app, unit



# ---------------------------------------------------------------------------------------------------------
# Residue table
# ---------------------------------------------------------------------------------------------------------
# one-letter: (three-letter, average residue mass in Da, CALVADOS2 lambda, sigma in nm, HPS lambda)
# Masses, sigmas and CALVADOS2 lambdas as published with CALVADOS 2 (Tesei & Lindorff-Larsen 2022,
# residues.csv of KULL-Centre/CALVADOS); sigmas are the van der Waals diameters of the HPS model.
# HPS lambdas: Kapcha-Rossky hydropathy scale normalised as in Dignon et al. 2018.
RESIDUE_PARAMETERS: dict[str, tuple[str, float, float, float, float]] = {
    "A": ("ALA", 71.07, 0.2743297969040348, 0.504, 0.730),
    "R": ("ARG", 156.19, 0.7307624767517166, 0.656, 0.000),
    "N": ("ASN", 114.10, 0.4255859009787713, 0.568, 0.432),
    "D": ("ASP", 115.09, 0.0416040480605567, 0.558, 0.378),
    "C": ("CYS", 103.14, 0.5615435099141777, 0.548, 0.595),
    "Q": ("GLN", 128.13, 0.3934318551056041, 0.602, 0.514),
    "E": ("GLU", 129.11, 0.0006935460962935, 0.592, 0.459),
    "G": ("GLY", 57.05, 0.7058843733666401, 0.450, 0.649),
    "H": ("HIS", 137.14, 0.4663667290557992, 0.608, 0.514),
    "I": ("ILE", 113.16, 0.5423623610671892, 0.618, 0.973),
    "L": ("LEU", 113.16, 0.6440005007782226, 0.618, 0.973),
    "K": ("LYS", 128.17, 0.1790211738990582, 0.636, 0.514),
    "M": ("MET", 131.20, 0.5308481134337497, 0.618, 0.838),
    "F": ("PHE", 147.18, 0.8672358982062975, 0.636, 1.000),
    "P": ("PRO", 97.12, 0.3593126576364644, 0.556, 1.000),
    "S": ("SER", 87.08, 0.4625416811611541, 0.518, 0.595),
    "T": ("THR", 101.11, 0.3713162976273964, 0.562, 0.676),
    "W": ("TRP", 186.22, 0.9893764740371644, 0.678, 0.946),
    "Y": ("TYR", 163.18, 0.9774611449343455, 0.646, 0.865),
    "V": ("VAL", 99.13, 0.2083769608174481, 0.586, 0.892),
}

_THREE_TO_ONE = {v[0]: k for k, v in RESIDUE_PARAMETERS.items()}
_CHARGES = {"K": 1.0, "R": 1.0, "D": -1.0, "E": -1.0}

_ONE_4PI_EPS0 = 138.935456  # kJ mol^-1 nm e^-2
_KB = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
_AVOGADRO_PER_NM3_PER_MOLAR = 0.602214076  # (mol/L) -> particles per nm^3

_KCAL = 4.184


def demo_structure_path() -> Path:
    """Return the path of the shipped demo structure.

    Returns
    -------
    pathlib.Path
        ``openmm_ldb/resources/gb1.pdb``: the protein G B1 domain (56 residues, chain A), model 1 of the NMR
        ensemble PDB 1GB1, hydrogens removed. PDB coordinates are public domain (CC0).
    """
    return Path(__file__).resolve().parent.parent / "resources" / "gb1.pdb"


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------
def _standard_name(name: str) -> str | None:
    """Standard three-letter name for a residue name (any alias of the chemistry table: protonation
    variants, MSE, engines' terminal names), or None when it is not a standard amino acid."""
    from .. import residues as rc

    try:
        name = rc.canonical_residue_name(name.strip().upper())
    except KeyError:
        return None
    return name if name in _THREE_TO_ONE else None


def _length_nm(value, name: str) -> float:
    if unit.is_quantity(value):
        return float(value.value_in_unit(unit.nanometer))
    return float(value)


def _energy_kj(value, name: str) -> float:
    if unit.is_quantity(value):
        return float(value.value_in_unit(unit.kilojoule_per_mole))
    return float(value)


def _kelvin(value) -> float:
    if unit.is_quantity(value):
        return float(value.value_in_unit(unit.kelvin))
    return float(value)


def _positions_nm(positions, n_expected: int | None = None) -> np.ndarray:
    """Positions (Quantity of Vec3s or of an array, or a plain array in nm) as an (N, 3) array in nm."""
    if unit.is_quantity(positions):
        positions = positions.value_in_unit(unit.nanometer)
    xyz = np.array([[float(c) for c in p] for p in positions], dtype=float).reshape(-1, 3)
    if n_expected is not None and xyz.shape[0] != n_expected:
        raise ValueError(
            f"got {xyz.shape[0]} positions but the topology has {n_expected} particles; "
            "give one position per C-alpha bead"
        )
    if not np.all(np.isfinite(xyz)):
        raise ValueError("positions contain NaN or infinite values")
    return xyz


def _box_vectors(box) -> tuple[openmm.Vec3, openmm.Vec3, openmm.Vec3]:
    """Periodic box vectors (nm) from a number, 3 lengths, 3 vectors, or Quantities of these."""
    if unit.is_quantity(box):
        box = box.value_in_unit(unit.nanometer)
    if isinstance(box, (int, float, np.floating, np.integer)):
        arr = np.array(float(box))
    else:
        arr = np.array(
            [[_length_nm(c, "box") for c in b] if hasattr(b, "__len__") else _length_nm(b, "box") for b in box],
            dtype=float,
        )
    if arr.ndim == 0:
        arr = np.diag([float(arr)] * 3)
    elif arr.shape == (3,):
        arr = np.diag(arr)
    elif arr.shape != (3, 3):
        raise ValueError(f"box must be a length, three lengths or three vectors; got shape {arr.shape}")
    if np.any(np.diag(arr) <= 0):
        raise ValueError("box lengths must be positive")
    return tuple(openmm.Vec3(*row) for row in arr)  # type: ignore[return-value]


def _residue_codes(topology: app.Topology, what: str) -> list[str]:
    """One-letter code of every particle (one C-alpha bead per residue), with clear errors."""
    codes = []
    atoms = list(topology.atoms())
    for index, residue in enumerate(topology.residues()):
        n_atoms = len(list(residue.atoms()))
        if n_atoms != 1:
            raise ValueError(
                f"{what} needs one bead per residue; residue {residue.name} (index {index}, id {residue.id}) "
                f"has {n_atoms} atoms"
            )
        std = _standard_name(residue.name)
        if std is None:
            raise ValueError(
                f"unknown residue name {residue.name!r} at residue index {index} (chain "
                f"{residue.chain.id}, id {residue.id}); known: {sorted(_THREE_TO_ONE)}"
            )
        codes.append(_THREE_TO_ONE[std])
    if len(codes) != len(atoms):
        raise ValueError(f"{what}: topology has {len(atoms)} atoms but {len(codes)} residues")
    if not codes:
        raise ValueError(f"{what}: the topology is empty")
    return codes


def _chain_segments(topology: app.Topology) -> list[list[int]]:
    """Runs of consecutive, bonded beads within each chain (bead indices in order)."""
    bonded = {tuple(sorted((a.index, b.index))) for a, b in topology.bonds()}
    segments = []
    for chain in topology.chains():
        idx = [atom.index for atom in chain.atoms()]
        if not idx:
            continue
        current = [idx[0]]
        for a, b in itertools.pairwise(idx):
            if tuple(sorted((a, b))) in bonded:
                current.append(b)
            else:
                segments.append(current)
                current = [b]
        segments.append(current)
    return segments


def _dihedral(p0, p1, p2, p3) -> float:
    """Dihedral angle in radians (IUPAC sign convention, as OpenMM)."""
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    return float(math.atan2(np.linalg.norm(b2) * np.dot(b1, n2), np.dot(n1, n2)))


def _angle(p0, p1, p2) -> float:
    u, v = p0 - p1, p2 - p1
    c = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
    return float(math.acos(min(1.0, max(-1.0, c))))
