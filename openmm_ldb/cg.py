"""Built-in one-bead-per-residue (C-alpha) coarse-grained models.

These models exist so that the backmapping code has something realistic to backmap in demos and tests.
Everything is built from plain OpenMM objects; lengths are in nm and energies in kJ/mol.

Contents
--------
ca_topology
    Build a C-alpha topology (one ``CA`` bead per residue) from one-letter sequences.
ca_from_structure
    Reduce an all-atom PDB/mmCIF structure to its C-alpha topology and positions.
GoModel, go_model_system
    Structure-based (Go) C-alpha model after Clementi, Nymeyer & Onuchic, J. Mol. Biol. 298, 937 (2000).
hps_system
    Sequence-based models of disordered chains: CALVADOS2 (Tesei & Lindorff-Larsen, Open Res. Europe 2, 94
    (2022)) or HPS (Dignon et al., PLoS Comput. Biol. 14, e1005941 (2018)).
random_coil_positions
    Non-overlapping random-walk starting positions for disordered chains.
make_simulation
    A ``Simulation`` with a ``LangevinMiddleIntegrator`` set up for these models.
demo_structure_path
    Path of the shipped demo structure (protein G B1 domain, PDB 1GB1 model 1, heavy atoms).
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import openmm
from openmm import app, unit

__all__ = [
    "RESIDUE_PARAMETERS",
    "GoModel",
    "ca_from_structure",
    "ca_topology",
    "demo_structure_path",
    "go_model_system",
    "hps_system",
    "make_simulation",
    "random_coil_positions",
]

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
    return Path(__file__).resolve().parent / "resources" / "gb1.pdb"


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------
def _standard_name(name: str) -> str | None:
    """Standard three-letter name for a residue name (any alias of the chemistry table: protonation
    variants, MSE, engines' terminal names), or None when it is not a standard amino acid."""
    from . import residues as rc

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


def _load_structure(structure, frame: int = 0):
    """Load an all-atom structure as a one-frame mdtraj Trajectory."""
    import mdtraj as md

    if isinstance(structure, md.Trajectory):
        traj = structure
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
    return traj[frame]


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
    for cid, items in selection:
        chain = topology.addChain(str(cid))
        previous, previous_xyz = None, None
        for residue, std, ca in items:
            res = topology.addResidue(std, chain, id=str(residue.resSeq))
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


# ---------------------------------------------------------------------------------------------------------
# Go model
# ---------------------------------------------------------------------------------------------------------
def _bead_masses(codes: list[str], bead_mass) -> list[float]:
    if bead_mass is None:
        return [RESIDUE_PARAMETERS[c][1] for c in codes]
    m = bead_mass.value_in_unit(unit.dalton) if unit.is_quantity(bead_mass) else float(bead_mass)
    if m <= 0:
        raise ValueError("bead_mass must be positive")
    return [m] * len(codes)


class GoModel:
    """Structure-based C-alpha (Go) model of a protein in its native state.

    The potential follows Clementi, Nymeyer & Onuchic (2000), with every term scaled by ``epsilon``:

    * bonds: ``0.5 * k_b * (r - r0)**2`` with ``k_b = bond_k * epsilon / nm**2`` and ``r0`` native;
    * angles: ``0.5 * k_theta * (theta - theta0)**2`` with ``k_theta = angle_k * epsilon / rad**2``;
    * dihedrals: ``K1 * [1 - cos(phi - phi0)] + K3 * [1 - cos(3 (phi - phi0))]`` with
      ``K1 = dihedral_k1 * epsilon``, ``K3 = dihedral_k3 * epsilon``;
    * native contacts: ``eps_c * [5 (r0/r)**12 - 6 (r0/r)**10]`` (12-10 well of depth
      ``eps_c = contact_epsilon * epsilon`` at the native C-alpha distance ``r0``);
    * every other pair more than three beads apart along a chain (or in different chains):
      ``eps_nn * [(sigma_nn/r)**12 - (sigma_nn/rc)**12]`` for ``r < rc``.

    Parameters
    ----------
    topology : openmm.app.Topology
        C-alpha topology (one ``CA`` bead per residue, e.g. from :func:`ca_from_structure`). Bonds define
        the chain connectivity: angles and dihedrals are built along runs of consecutive bonded beads.
    native_positions : openmm.unit.Quantity
        Native C-alpha positions, one per bead (plain arrays are taken as nm).
    contacts : sequence of (int, int), optional
        Native contacts as bead-index pairs. Default: from ``all_atom_structure`` if given, else C-alpha
        pairs closer than ``ca_contact_cutoff``.
    all_atom_structure : path, mdtraj.Trajectory or openmm PDBFile/PDBxFile, optional
        The all-atom native structure the C-alpha topology was made from; native contacts are then residue
        pairs with heavy atoms closer than ``heavy_atom_cutoff``. Its standard residues (restricted to
        ``chains``) must match the topology bead for bead.
    chains : optional
        Chains of ``all_atom_structure`` to use (as in :func:`ca_from_structure`).
    epsilon : openmm.unit.Quantity, optional
        Energy scale. Default 1 kcal/mol, which keeps small proteins folded at 300 K.
    heavy_atom_cutoff, ca_contact_cutoff : openmm.unit.Quantity, optional
        Contact definitions (defaults 0.45 nm between heavy atoms, 0.8 nm between C-alpha atoms).
    min_sequence_separation : int, optional
        Contacts within a chain need ``|i - j| >= min_sequence_separation`` (default 4). Pairs in different
        chains always qualify.
    bond_k, angle_k, dihedral_k1, dihedral_k3, contact_epsilon, repulsion_epsilon : float, optional
        Force constants in units of ``epsilon`` (per nm**2 for bonds, per rad**2 for angles). Defaults
        20000, 40, 1, 0.5, 1, 1 (Clementi et al. 2000).
    repulsion_sigma, repulsion_cutoff : openmm.unit.Quantity, optional
        Non-native excluded-volume radius (default 0.4 nm) and cutoff (default 1.2 nm).
    bead_mass : openmm.unit.Quantity, optional
        Mass of every bead; default: the average mass of each bead's residue type.
    use_pbc : bool, optional
        Use periodic boundary conditions (default False).
    box : optional
        Periodic box (a length, three lengths or three vectors; nm if plain numbers) when ``use_pbc``;
        default the topology's box, else a cube 5 nm larger than the native structure's extent.

    Attributes
    ----------
    topology, native_positions
        As given (positions as a Quantity of ``Vec3`` in nm).
    contacts : numpy.ndarray
        ``(n_contacts, 2)`` bead indices, ``i < j``.
    """

    def __init__(
        self,
        topology: app.Topology,
        native_positions,
        contacts: Iterable[tuple[int, int]] | None = None,
        *,
        all_atom_structure=None,
        chains=None,
        epsilon=1.0 * unit.kilocalorie_per_mole,
        heavy_atom_cutoff=0.45 * unit.nanometer,
        ca_contact_cutoff=0.8 * unit.nanometer,
        min_sequence_separation: int = 4,
        bond_k: float = 20000.0,
        angle_k: float = 40.0,
        dihedral_k1: float = 1.0,
        dihedral_k3: float = 0.5,
        contact_epsilon: float = 1.0,
        repulsion_epsilon: float = 1.0,
        repulsion_sigma=0.4 * unit.nanometer,
        repulsion_cutoff=1.2 * unit.nanometer,
        bead_mass=None,
        use_pbc: bool = False,
        box=None,
    ):
        self.topology = topology
        self._codes = _residue_codes(topology, "GoModel")
        xyz = _positions_nm(native_positions, topology.getNumAtoms())
        self._xyz = xyz
        self.native_positions = _vec3_quantity(xyz)
        if min_sequence_separation < 1:
            raise ValueError("min_sequence_separation must be at least 1")
        self.min_sequence_separation = int(min_sequence_separation)
        self.epsilon = _energy_kj(epsilon, "epsilon")
        if self.epsilon <= 0:
            raise ValueError("epsilon must be positive")
        self.bond_k, self.angle_k = float(bond_k), float(angle_k)
        self.dihedral_k1, self.dihedral_k3 = float(dihedral_k1), float(dihedral_k3)
        self.contact_epsilon, self.repulsion_epsilon = float(contact_epsilon), float(repulsion_epsilon)
        self.repulsion_sigma = _length_nm(repulsion_sigma, "repulsion_sigma")
        self.repulsion_cutoff = _length_nm(repulsion_cutoff, "repulsion_cutoff")
        self.bead_mass = bead_mass
        self.use_pbc = bool(use_pbc)
        self.box = box

        # chain membership and position within the chain, for sequence separations
        self._chain_of = np.empty(len(self._codes), dtype=int)
        self._pos_in_chain = np.empty(len(self._codes), dtype=int)
        for c, chain in enumerate(topology.chains()):
            for k, atom in enumerate(chain.atoms()):
                self._chain_of[atom.index] = c
                self._pos_in_chain[atom.index] = k

        if contacts is not None:
            pairs = set()
            n = len(self._codes)
            for i, j in contacts:
                i, j = int(i), int(j)
                if not (0 <= i < n and 0 <= j < n) or i == j:
                    raise ValueError(f"invalid contact ({i}, {j}) for {n} beads")
                pairs.add((min(i, j), max(i, j)))
        elif all_atom_structure is not None:
            traj = _load_structure(all_atom_structure)
            selection = _select_residues(traj, chains)
            names = [std for _, items in selection for _, std, _ in items]
            if len(names) != len(self._codes):
                raise ValueError(
                    f"all_atom_structure has {len(names)} standard residues but the topology has "
                    f"{len(self._codes)} beads"
                )
            for k, (name, code) in enumerate(zip(names, self._codes)):
                if _THREE_TO_ONE[name] != code:
                    raise ValueError(
                        f"residue {k} is {name} in all_atom_structure but {RESIDUE_PARAMETERS[code][0]} in "
                        "the topology"
                    )
            pairs = _heavy_atom_contacts(traj, selection, _length_nm(heavy_atom_cutoff, "heavy_atom_cutoff"))
        else:
            cut = _length_nm(ca_contact_cutoff, "ca_contact_cutoff")
            d = np.linalg.norm(xyz[:, None, :] - xyz[None, :, :], axis=-1)
            ii, jj = np.nonzero(np.triu(d < cut, k=1))
            pairs = set(zip(ii.tolist(), jj.tolist()))
        pairs = {p for p in pairs if self._separated(*p)}
        self.contacts = np.array(sorted(pairs), dtype=int).reshape(-1, 2)

    def _separated(self, i: int, j: int) -> bool:
        if self._chain_of[i] != self._chain_of[j]:
            return True
        return abs(int(self._pos_in_chain[i]) - int(self._pos_in_chain[j])) >= self.min_sequence_separation

    @classmethod
    def from_structure(cls, structure, chains=None, frame: int = 0, **kwargs) -> GoModel:
        """Build a Go model from an all-atom structure (heavy-atom contact map).

        Parameters
        ----------
        structure : path, mdtraj.Trajectory or openmm PDBFile/PDBxFile
            The native all-atom structure (see :func:`ca_from_structure`).
        chains : optional
            Chains to keep.
        frame : int, optional
            Model/frame of a multi-model file. Default 0.
        **kwargs
            Further :class:`GoModel` parameters.

        Returns
        -------
        GoModel
        """
        traj = _load_structure(structure, frame)
        topology, positions = ca_from_structure(traj, chains=chains)
        return cls(topology, positions, all_atom_structure=traj, chains=chains, **kwargs)

    def create_system(self) -> openmm.System:
        """Create the OpenMM System.

        Returns
        -------
        openmm.System
        """
        xyz, eps, n = self._xyz, self.epsilon, len(self._codes)
        system = openmm.System()
        for m in _bead_masses(self._codes, self.bead_mass):
            system.addParticle(m)
        if self.use_pbc:
            box = self.box if self.box is not None else self.topology.getPeriodicBoxVectors()
            if box is None:
                extent = xyz.max(axis=0) - xyz.min(axis=0)
                box = float(extent.max()) + 5.0
            vectors = _box_vectors(box)
            if min(vectors[0][0], vectors[1][1], vectors[2][2]) < 2 * self.repulsion_cutoff:
                raise ValueError("the periodic box must be at least twice the repulsion cutoff")
            system.setDefaultPeriodicBoxVectors(*vectors)

        bonds = openmm.HarmonicBondForce()
        bond_pairs = []
        for a, b in self.topology.bonds():
            i, j = a.index, b.index
            bonds.addBond(i, j, float(np.linalg.norm(xyz[i] - xyz[j])), self.bond_k * eps)
            bond_pairs.append((i, j))
        angles = openmm.HarmonicAngleForce()
        torsions = openmm.PeriodicTorsionForce()
        excluded = set()
        for seg in _chain_segments(self.topology):
            for k in range(len(seg)):
                for d in range(1, 4):
                    if k + d < len(seg):
                        excluded.add((seg[k], seg[k + d]))
                if k + 2 < len(seg):
                    i, j, m = seg[k:k + 3]
                    angles.addAngle(i, j, m, _angle(xyz[i], xyz[j], xyz[m]), self.angle_k * eps)
                if k + 3 < len(seg):
                    i, j, m, q = seg[k:k + 4]
                    phi0 = _dihedral(xyz[i], xyz[j], xyz[m], xyz[q])
                    # k (1 + cos(n phi - delta)) with delta = n phi0 + pi gives k [1 - cos(n (phi - phi0))]
                    if self.dihedral_k1:
                        torsions.addTorsion(i, j, m, q, 1, phi0 + math.pi, self.dihedral_k1 * eps)
                    if self.dihedral_k3:
                        torsions.addTorsion(i, j, m, q, 3, 3 * phi0 + math.pi, self.dihedral_k3 * eps)
        for i, j in bond_pairs:
            excluded.add((min(i, j), max(i, j)))

        contacts = openmm.CustomBondForce("eps_c*(5*(r0/r)^12 - 6*(r0/r)^10)")
        contacts.addGlobalParameter("eps_c", self.contact_epsilon * eps)
        contacts.addPerBondParameter("r0")
        for i, j in self.contacts:
            contacts.addBond(int(i), int(j), [float(np.linalg.norm(xyz[i] - xyz[j]))])
            excluded.add((int(i), int(j)))

        rc = self.repulsion_cutoff
        repulsion = openmm.CustomNonbondedForce("eps_nn*((sigma_nn/r)^12 - (sigma_nn/rc_nn)^12)")
        repulsion.addGlobalParameter("eps_nn", self.repulsion_epsilon * eps)
        repulsion.addGlobalParameter("sigma_nn", self.repulsion_sigma)
        repulsion.addGlobalParameter("rc_nn", rc)
        for _ in range(n):
            repulsion.addParticle([])
        for i, j in sorted(excluded):
            repulsion.addExclusion(int(i), int(j))
        repulsion.setCutoffDistance(rc)
        repulsion.setNonbondedMethod(
            openmm.CustomNonbondedForce.CutoffPeriodic if self.use_pbc else openmm.CustomNonbondedForce.CutoffNonPeriodic
        )

        for force, name in (
            (bonds, "GoBonds"), (angles, "GoAngles"), (torsions, "GoDihedrals"), (contacts, "GoNativeContacts"),
        ):
            force.setUsesPeriodicBoundaryConditions(self.use_pbc)
            force.setName(name)
            system.addForce(force)
        repulsion.setName("GoRepulsion")
        system.addForce(repulsion)
        system.addForce(openmm.CMMotionRemover())
        return system


def go_model_system(topology: app.Topology, native_positions, **kwargs) -> openmm.System:
    """Create a structure-based C-alpha Go-model System (see :class:`GoModel` for the potential).

    Parameters
    ----------
    topology : openmm.app.Topology
        C-alpha topology (one ``CA`` bead per residue).
    native_positions : openmm.unit.Quantity
        Native C-alpha positions, one per bead.
    **kwargs
        Further :class:`GoModel` parameters (``contacts``, ``all_atom_structure``, ``epsilon``,
        ``use_pbc``, ``box``, ...).

    Returns
    -------
    openmm.System

    Raises
    ------
    ValueError
        For an unknown residue name (naming the residue and its index) or a number of positions that does
        not match the topology.
    """
    return GoModel(topology, native_positions, **kwargs).create_system()


# ---------------------------------------------------------------------------------------------------------
# HPS / CALVADOS2
# ---------------------------------------------------------------------------------------------------------
def _relative_permittivity_water(temperature_k: float) -> float:
    """Relative permittivity of water vs temperature (the empirical fit used by CALVADOS)."""
    t = temperature_k
    return 5321.0 / t + 233.76 - 0.9297 * t + 0.1417e-2 * t * t - 0.8292e-6 * t ** 3


def hps_system(
    topology: app.Topology,
    box_nm,
    model: str = "calvados2",
    *,
    temperature=300.0 * unit.kelvin,
    ionic_strength=0.15 * unit.molar,
    relative_permittivity: float | None = None,
    ph: float = 7.0,
    histidine_charge: float | None = None,
    charged_termini: bool | None = None,
    epsilon=0.8368 * unit.kilojoule_per_mole,
    bond_length=0.38 * unit.nanometer,
    bond_k=8033.0 * unit.kilojoule_per_mole / unit.nanometer ** 2,
    ah_cutoff=None,
    dh_cutoff=4.0 * unit.nanometer,
    bead_mass=None,
) -> openmm.System:
    """Create a CALVADOS2 or HPS C-alpha System for disordered chains in a periodic box.

    Potential: harmonic bonds (``0.5 k (r - b)**2``) between bonded beads; Ashbaugh-Hatch short-range
    interactions with per-residue hydropathy ``lambda`` and size ``sigma`` (arithmetic-mean combination),
    with the Lennard-Jones part shifted to zero at ``ah_cutoff``; Debye-Hueckel electrostatics
    ``q_i q_j exp(-kappa r) / (4 pi eps0 eps_r r)``, shifted to zero at ``dh_cutoff``. Bonded pairs are
    excluded from both.

    Parameters
    ----------
    topology : openmm.app.Topology
        C-alpha topology (e.g. from :func:`ca_topology`).
    box_nm : float, sequence or openmm.unit.Quantity
        Periodic box: a cube edge, three edges or three vectors (nm when plain numbers).
    model : {'calvados2', 'hps'}
        ``'calvados2'``: CALVADOS2 lambdas (Tesei & Lindorff-Larsen 2022). ``'hps'``: the original HPS
        model's Kapcha-Rossky lambdas (Dignon et al. 2018). Both use the same sigmas.
    temperature : openmm.unit.Quantity, optional
        Temperature for the Debye length and the permittivity of water. Default 300 K.
    ionic_strength : openmm.unit.Quantity, optional
        Default 0.15 M.
    relative_permittivity : float, optional
        Default: the temperature-dependent permittivity of water used by CALVADOS (about 77.7 at 300 K) for
        ``'calvados2'``, 80 for ``'hps'``.
    ph : float, optional
        pH for the histidine charge ``1 / (1 + 10**(pH - 6))`` (CALVADOS convention). Default 7.
    histidine_charge : float, optional
        Overrides the pH-derived histidine charge. Default: from ``ph`` for ``'calvados2'``, 0 for ``'hps'``.
    charged_termini : bool, optional
        Add +1 to the first and -1 to the last bead of each chain. Default True for ``'calvados2'``,
        False for ``'hps'``.
    epsilon : openmm.unit.Quantity, optional
        Ashbaugh-Hatch energy scale. Default 0.8368 kJ/mol (0.2 kcal/mol).
    bond_length, bond_k : openmm.unit.Quantity, optional
        Default 0.38 nm and 8033 kJ/mol/nm**2.
    ah_cutoff : openmm.unit.Quantity, optional
        Ashbaugh-Hatch cutoff. Default 2.4 nm for ``'calvados2'`` (its published value) and 2.0 nm for
        ``'hps'``.
    dh_cutoff : openmm.unit.Quantity, optional
        Debye-Hueckel cutoff. Default 4.0 nm.
    bead_mass : openmm.unit.Quantity, optional
        Mass of every bead; default: the average mass of each bead's residue type.

    Returns
    -------
    openmm.System

    Raises
    ------
    ValueError
        For an unknown model or residue name, or a box smaller than twice the largest cutoff.
    """
    model_key = model.lower().replace("-", "").replace("_", "")
    if model_key not in ("calvados2", "hps"):
        raise ValueError(f"unknown model {model!r}; use 'calvados2' or 'hps'")
    calvados = model_key == "calvados2"
    codes = _residue_codes(topology, "hps_system")
    t = _kelvin(temperature)
    if t <= 0:
        raise ValueError("temperature must be positive")
    if relative_permittivity is None:
        relative_permittivity = _relative_permittivity_water(t) if calvados else 80.0
    if histidine_charge is None:
        histidine_charge = 1.0 / (1.0 + 10.0 ** (ph - 6.0)) if calvados else 0.0
    if charged_termini is None:
        charged_termini = calvados
    if ah_cutoff is None:
        ah_cutoff = 2.4 if calvados else 2.0
    rc_ah = _length_nm(ah_cutoff, "ah_cutoff")
    rc_dh = _length_nm(dh_cutoff, "dh_cutoff")
    ionic = ionic_strength.value_in_unit(unit.molar) if unit.is_quantity(ionic_strength) else float(ionic_strength)
    if ionic < 0:
        raise ValueError("ionic_strength must be non-negative")
    eps_ah = _energy_kj(epsilon, "epsilon")
    b0 = _length_nm(bond_length, "bond_length")
    kb = bond_k.value_in_unit(unit.kilojoule_per_mole / unit.nanometer ** 2) if unit.is_quantity(bond_k) else float(bond_k)

    vectors = _box_vectors(box_nm)
    if min(vectors[0][0], vectors[1][1], vectors[2][2]) < 2 * max(rc_ah, rc_dh):
        raise ValueError(
            f"box {box_nm} is smaller than twice the largest cutoff ({max(rc_ah, rc_dh):.2f} nm)"
        )

    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*vectors)
    for m in _bead_masses(codes, bead_mass):
        system.addParticle(m)

    charges = [_CHARGES.get(c, histidine_charge if c == "H" else 0.0) for c in codes]
    if charged_termini:
        for chain in topology.chains():
            idx = [a.index for a in chain.atoms()]
            if idx:
                charges[idx[0]] += 1.0
                charges[idx[-1]] -= 1.0

    bonds = openmm.HarmonicBondForce()
    bonds.setName("HPSBonds")
    bond_pairs = []
    for a, b in topology.bonds():
        bonds.addBond(a.index, b.index, b0, kb)
        bond_pairs.append((a.index, b.index))
    bonds.setUsesPeriodicBoundaryConditions(True)
    system.addForce(bonds)

    lam_col = 2 if calvados else 4
    ah = openmm.CustomNonbondedForce(
        "select(step(r - 2^(1/6)*s), 4*eps_ah*l*((s/r)^12 - (s/r)^6 - shift),"
        " 4*eps_ah*((s/r)^12 - (s/r)^6 - l*shift) + eps_ah*(1 - l));"
        "shift = (s/rc_ah)^12 - (s/rc_ah)^6; s = 0.5*(s1 + s2); l = 0.5*(l1 + l2)"
    )
    ah.setName("AshbaughHatch")
    ah.addGlobalParameter("eps_ah", eps_ah)
    ah.addGlobalParameter("rc_ah", rc_ah)
    ah.addPerParticleParameter("s")
    ah.addPerParticleParameter("l")
    for c in codes:
        ah.addParticle([RESIDUE_PARAMETERS[c][3], RESIDUE_PARAMETERS[c][lam_col]])
    for i, j in bond_pairs:
        ah.addExclusion(i, j)
    ah.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    ah.setCutoffDistance(rc_ah)
    system.addForce(ah)

    charged = [i for i, q in enumerate(charges) if q != 0.0]
    if charged:
        kt = _KB * t
        bjerrum = _ONE_4PI_EPS0 / (relative_permittivity * kt)  # nm
        kappa = math.sqrt(8.0 * math.pi * bjerrum * ionic * _AVOGADRO_PER_NM3_PER_MOLAR)  # 1/nm
        dh = openmm.CustomNonbondedForce(
            "prefactor*q1*q2*(exp(-kappa*r)/r - exp(-kappa*rc_dh)/rc_dh)"
        )
        dh.setName("DebyeHueckel")
        dh.addGlobalParameter("prefactor", _ONE_4PI_EPS0 / relative_permittivity)
        dh.addGlobalParameter("kappa", kappa)
        dh.addGlobalParameter("rc_dh", rc_dh)
        dh.addPerParticleParameter("q")
        for q in charges:
            dh.addParticle([q])
        for i, j in bond_pairs:
            dh.addExclusion(i, j)
        dh.addInteractionGroup(charged, charged)
        dh.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
        dh.setCutoffDistance(rc_dh)
        system.addForce(dh)
    return system


def random_coil_positions(
    topology: app.Topology,
    box_nm,
    bond_length=0.38 * unit.nanometer,
    min_distance=0.5 * unit.nanometer,
    seed: int | None = None,
) -> unit.Quantity:
    """Non-overlapping random-walk positions for the chains of a C-alpha topology.

    Each chain is grown bead by bead with fixed bond length, rejecting steps that come closer than
    ``min_distance`` to any bead placed so far (other than the previous one); chains start at random points
    in the box. Intended as starting positions for :func:`hps_system` simulations.

    Parameters
    ----------
    topology : openmm.app.Topology
        C-alpha topology.
    box_nm : float, sequence or openmm.unit.Quantity
        Box (as in :func:`hps_system`); positions are placed inside it.
    bond_length, min_distance : openmm.unit.Quantity, optional
        Defaults 0.38 nm and 0.5 nm.
    seed : int, optional
        Random seed.

    Returns
    -------
    openmm.unit.Quantity
        Positions (list of ``Vec3``) in nm.
    """
    rng = np.random.default_rng(seed)
    vectors = _box_vectors(box_nm)
    edges = np.array([vectors[0][0], vectors[1][1], vectors[2][2]])
    b = _length_nm(bond_length, "bond_length")
    dmin = _length_nm(min_distance, "min_distance")
    placed = np.zeros((0, 3))
    out = np.zeros((topology.getNumAtoms(), 3))
    for chain in topology.chains():
        idx = [a.index for a in chain.atoms()]
        for attempt in range(200):
            start = rng.uniform(0.2, 0.8) * edges if attempt == 0 else rng.uniform(0.1, 0.9, 3) * edges
            coords = [start]
            ok = True
            for _ in idx[1:]:
                for _try in range(500):
                    step = rng.normal(size=3)
                    candidate = coords[-1] + b * step / np.linalg.norm(step)
                    others = np.vstack([placed] + [np.array(coords[:-1]).reshape(-1, 3)])
                    if len(others) == 0 or np.min(np.linalg.norm(others - candidate, axis=1)) >= dmin:
                        coords.append(candidate)
                        break
                else:
                    ok = False
                    break
            if ok:
                break
        else:
            raise RuntimeError("could not place a non-overlapping random coil; use a larger box")
        coords = np.array(coords)
        out[idx] = coords
        placed = np.vstack([placed, coords])
    return _vec3_quantity(out)


# ---------------------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------------------
def make_simulation(
    topology: app.Topology,
    system: openmm.System,
    positions,
    temperature=300.0 * unit.kelvin,
    friction=0.1 / unit.picosecond,
    timestep=10.0 * unit.femtosecond,
    platform: str | openmm.Platform | None = None,
    seed: int | None = None,
    platform_properties: dict | None = None,
) -> app.Simulation:
    """Create a Simulation for a C-alpha model with a ``LangevinMiddleIntegrator``.

    Positions are set and velocities drawn from the Maxwell-Boltzmann distribution at ``temperature``.

    Parameters
    ----------
    topology : openmm.app.Topology
        C-alpha topology.
    system : openmm.System
        System from :func:`go_model_system` or :func:`hps_system`.
    positions : openmm.unit.Quantity
        One position per particle (plain arrays are taken as nm).
    temperature : openmm.unit.Quantity, optional
        Default 300 K.
    friction : openmm.unit.Quantity, optional
        Default 0.1/ps: light damping (CALVADOS uses 0.01/ps) that still brings a Go model started at its
        native energy minimum to ``temperature`` within about 10 ps (about 100 ps at 0.01/ps).
    timestep : openmm.unit.Quantity, optional
        Default 10 fs. Checked with constant-energy runs: total-energy fluctuations stay below 0.5 kJ/mol
        for the GB1 Go model started at 600 K and below 0.05 kJ/mol for a 40-residue CALVADOS2 chain.
    platform : str or openmm.Platform, optional
        Platform or platform name; default: the fastest available.
    seed : int, optional
        Seed for the integrator's random numbers and the initial velocities; default random.
    platform_properties : dict, optional
        Platform properties (e.g. ``{'Threads': '2'}``).

    Returns
    -------
    openmm.app.Simulation

    Raises
    ------
    ValueError
        If the numbers of particles in topology, system and positions differ.
    """
    n = system.getNumParticles()
    if topology.getNumAtoms() != n:
        raise ValueError(f"topology has {topology.getNumAtoms()} atoms but the system has {n} particles")
    xyz = _positions_nm(positions, n)
    if not unit.is_quantity(temperature):
        temperature = temperature * unit.kelvin
    if not unit.is_quantity(friction):
        friction = friction / unit.picosecond
    if not unit.is_quantity(timestep):
        timestep = timestep * unit.picosecond
    integrator = openmm.LangevinMiddleIntegrator(temperature, friction, timestep)
    if seed is None:
        seed = int(np.random.default_rng().integers(1, 2**31 - 1))
    integrator.setRandomNumberSeed(int(seed))
    if isinstance(platform, str):
        platform = openmm.Platform.getPlatformByName(platform)
    if platform is None and platform_properties:
        raise ValueError("platform_properties need a platform")
    if platform is None:
        simulation = app.Simulation(topology, system, integrator)
    else:
        simulation = app.Simulation(topology, system, integrator, platform, platform_properties or {})
    simulation.context.setPositions(_vec3_quantity(xyz))
    simulation.context.setVelocitiesToTemperature(temperature, int(seed))
    return simulation
