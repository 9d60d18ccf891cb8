"""Accuracy and validity metrics of backmapped structures (pure numpy, no model code).

All coordinates are in Å and in the model's slot layout (:mod:`openmm_ldb.residues`): slots
0-13 heavy atoms, 14 OXT, 15+ hydrogens.  Only heavy atoms (slots 0-14) are scored.

Definitions (what :func:`chain_metrics` computes)
-------------------------------------------------
Scored atoms
    A heavy atom (incl. OXT) is scored when the reference has it (``present``) *and* the
    prediction has it (``pred_present``).  No superposition anywhere: Cα is the given input.
Symmetric swap
    Per residue, the prediction's symmetric atoms (``residues.SYMMETRIC_ATOMS``: ASP OD1/OD2,
    GLU OE1/OE2, PHE/TYR ring CD/CE pairs, ARG NH1/NH2; all pairs of a residue together) are
    swapped when that lowers the residue's squared error.  All RMSDs use the swapped copy.
RMSDs
    ``heavy_rmsd``: all scored heavy atoms incl. Cα and OXT, pooled over the chain.
    ``backbone_rmsd``: N, C, O (Cα is given).  ``sidechain_rmsd``: slots 4-13 (CB onwards).
    ``ca_rmsd``: Cα alone (0 for LDB; PULCHRA moves Cα slightly).
Chi accuracy
    χ from the four chi atoms (both structures need them); a chi is correct when
    |Δχ| < 40° (mod 360°, mod 180° for ``CHI_PI_PERIODIC`` chis).  ``chi1_acc``: fraction of
    residues with χ1 whose χ1 is correct; ``chi12_acc``: fraction of residues with χ2 whose χ1
    and χ2 are both correct.
Reference graph
    Template bonds of every residue (``residues.residue_bonds``, heavy atoms), C–OXT,
    C(i)–N(i+1) for consecutive residues of one segment, and the reference disulfides
    (``disulfides_true``, by default CYS pairs with SG–SG < 2.5 Å in the reference).
Bond validity
    Fraction of reference-graph bonds (both atoms scored) whose predicted length is within
    ±0.10 Å of the ideal length (z-matrix table of ``residues``, Engh & Huber backbone values,
    SG–SG 2.04 Å).  Crystal structures deviate by ~0.02 Å rms, so 0.10 Å is ~5σ.
GED (graph edit distance to the reference bond graph, a count per chain)
    Covalent cutoff of a pair = r_i + r_j + 0.4 Å with covalent radii C 0.76, N 0.71,
    O 0.66, S 1.05 Å (Cordero et al. 2008); e.g. C–C 1.92 Å, C–N 1.87 Å, S–S 2.50 Å.
    ``ged_added``: scored pairs within their cutoff that the reference graph does not bond;
    ``ged_broken``: reference-graph bonds longer than their cutoff.  ``ged`` = added + broken
    (both counted, they never cancel).
Clashes
    Scored heavy-atom pairs closer than 2.2 Å that are more than three bonds apart in the
    reference graph (1-2, 1-3 and 1-4 pairs excluded); reported per 1000 scored atoms for the
    prediction (``clashes_per_1000``) and for the reference (``clashes_per_1000_ref``) on the
    same atoms.  Pairs come from a numpy grid (cell list), never an N×N matrix.
    :class:`FrameCheck` gives the same clash, bond-validity and GED figures for many frames of
    one topology at the cost of a neighbour search per frame.
Chirality
    ``chirality_L``: fraction of non-Gly residues (N, CA, C, CB scored) whose signed volume
    (N−CA × C−CA)·(CB−CA) is positive (L), as in ``geometry.chirality_ok``.
Peptide cis/trans
    ω = CA(i)–C(i)–N(i+1)–CA(i+1) within segments; cis when |ω| < 90°.  ``cis_trans_agreement``:
    fraction of peptide bonds with the same class as the reference.
Disulfides
    ``disulfides_recovered``: fraction of reference disulfides (SG–SG < 2.5 Å) whose predicted
    SG–SG is < 2.5 Å (NaN when the reference has none).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import residues as rc

HEAVY = rc.NUM_HEAVY_SLOTS + 1           # heavy slots incl. OXT (0..14)
N_, CA_, C_, O_, CB_ = 0, 1, 2, 3, 4
BACKBONE_SLOTS = (N_, C_, O_)
SIDECHAIN_SLOTS = tuple(range(4, rc.NUM_HEAVY_SLOTS))
CHI_TOLERANCE_DEG = 40.0
BOND_TOLERANCE = 0.10                     # Å
COVALENT_MARGIN = 0.40                    # Å added to the sum of covalent radii
COVALENT_RADII = {"C": 0.76, "N": 0.71, "O": 0.66, "S": 1.05}
CLASH_DISTANCE = 2.2                      # Å
CLASH_EXCLUDE_BONDS = 3                   # 1-2, 1-3, 1-4 pairs are never clashes
DISULFIDE_CUTOFF = 2.5                    # Å, SG-SG
# Ring-closure bonds that the z-matrix does not build (Engh & Huber 1991 lengths, Å).
_RING_CLOSURE = {("PHE", "CE1", "CZ"): 1.382, ("TYR", "CE1", "CZ"): 1.381, ("HIS", "CD2", "NE2"): 1.374,
                 ("PRO", "CD", "N"): 1.473, ("TRP", "CD2", "CE2"): 1.409, ("TRP", "CH2", "CZ2"): 1.368}

__all__ = [
    "FrameCheck",
    "backbone_dihedrals",
    "chain_metrics",
    "chi_angles",
    "chi_rotamer_bin",
    "close_pairs",
    "dihedral",
    "ensemble_diversity",
    "heavy_atom_rmsd_to_reference",
    "summarize",
]


# ----------------------------------------------------------------------------------------
# Small geometry helpers
# ----------------------------------------------------------------------------------------
def dihedral(a, b, c, d) -> np.ndarray:
    """Dihedral a-b-c-d in degrees, (-180, 180]; broadcasts over leading axes."""
    b0 = a - b
    b1 = c - b
    b1 = b1 / np.maximum(np.linalg.norm(b1, axis=-1, keepdims=True), 1e-12)
    b2 = d - c
    v = b0 - (b0 * b1).sum(-1, keepdims=True) * b1
    w = b2 - (b2 * b1).sum(-1, keepdims=True) * b1
    x = (v * w).sum(-1)
    y = (np.cross(b1, v) * w).sum(-1)
    return np.degrees(np.arctan2(y, x))


def _angle_diff(a, b, period=360.0):
    d = np.abs((a - b) % period)
    return np.minimum(d, period - d)


def close_pairs(xyz: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j with |x_i − x_j| < ``cutoff`` by grid hashing (cell list).

    Memory and time are O(N · atoms per cell), not O(N²).  Non-finite rows are ignored.
    Returns ``(i, j, distance)``.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(xyz).all(-1))
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if len(idx) < 2:
        return empty
    p = xyz[idx]
    cell = np.floor((p - p.min(0)) / cutoff).astype(np.int64) + 1
    dims = cell.max(0) + 2
    key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    order = np.argsort(key, kind="stable")
    skey = key[order]
    n = len(p)
    ii, jj = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dz in (-1, 0, 1):
                nkey = ((cell[:, 0] + dx) * dims[1] + cell[:, 1] + dy) * dims[2] + cell[:, 2] + dz
                lo = np.searchsorted(skey, nkey, "left")
                cnt = np.searchsorted(skey, nkey, "right") - lo
                total = int(cnt.sum())
                if total == 0:
                    continue
                i = np.repeat(np.arange(n), cnt)
                start = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
                j = order[np.arange(total) + start]
                keep = i < j
                ii.append(i[keep])
                jj.append(j[keep])
    if not ii:
        return empty
    i = np.concatenate(ii)
    j = np.concatenate(jj)
    d = np.linalg.norm(p[i] - p[j], axis=-1)
    keep = d < cutoff
    return idx[i[keep]], idx[j[keep]], d[keep]


# ----------------------------------------------------------------------------------------
# Tables derived from residues.py
# ----------------------------------------------------------------------------------------
@functools.cache
def _slot_index(resname: str) -> dict:
    return {n: i for i, n in enumerate(rc.slot_names(resname)[:HEAVY]) if n}


@functools.cache
def _residue_bond_table(resname: str) -> tuple:
    """Intra-residue heavy bonds as (slot_a, slot_b, ideal length)."""
    index = _slot_index(resname)
    ideal = {frozenset(("N", "CA")): rc.BOND_N_CA, frozenset(("CA", "C")): rc.BOND_CA_C,
             frozenset(("C", "O")): rc.BOND_C_O}
    for e in rc.ideal_geometry()[resname]:
        if not e[0].startswith("H"):
            ideal[frozenset((e[0], e[3]))] = float(e[4])
    for (r, a, b), length in _RING_CLOSURE.items():
        if r == resname:
            ideal[frozenset((a, b))] = length
    out = []
    for a, b in rc.residue_bonds(resname, hydrogens=False):
        out.append((index[a], index[b], float(ideal[frozenset((a, b))])))
    out.append((C_, rc.OXT_SLOT, rc.BOND_C_OXT))
    return tuple(out)


@functools.cache
def _element_radius_table() -> np.ndarray:
    """[NUM_RESTYPES, HEAVY] covalent radius of each heavy slot (0 where unused)."""
    out = np.zeros((rc.NUM_RESTYPES, HEAVY))
    for r, name in enumerate(rc.RESTYPES_3):
        for s, a in enumerate(rc.slot_names(name)[:HEAVY]):
            if a:
                out[r, s] = COVALENT_RADII[rc.element_of(a)]
    return out


def default_pred_present(restype: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """[N, HEAVY] heavy atoms the backmapper outputs: all heavy slots, OXT on segment ends."""
    mask = rc.heavy_mask_array()[restype][:, :HEAVY].copy()
    last = np.append(segment[1:] != segment[:-1], True)
    mask[:, rc.OXT_SLOT] = last
    return mask > 0


def find_disulfides_xyz(xyz: np.ndarray, mask: np.ndarray, restype: np.ndarray,
                        cutoff: float = DISULFIDE_CUTOFF) -> list[tuple[int, int]]:
    """CYS pairs (i < j) whose SG atoms are within ``cutoff`` Å."""
    sg = _slot_index("CYS")["SG"]
    cys = np.flatnonzero((restype == rc.RESTYPE_INDEX["CYS"]) & (mask[:, sg] > 0))
    out = []
    for a in range(len(cys)):
        for b in range(a + 1, len(cys)):
            i, j = int(cys[a]), int(cys[b])
            if np.linalg.norm(xyz[i, sg] - xyz[j, sg]) < cutoff:
                out.append((i, j))
    return out


# ----------------------------------------------------------------------------------------
# Reference graph
# ----------------------------------------------------------------------------------------
class _Graph:
    """Reference bond graph over scored atoms, addressed by flat index residue*HEAVY + slot."""

    def __init__(self, restype, segment, atom_mask, disulfides):
        n = len(restype)
        a, b, ideal = [], [], []
        for i in range(n):
            base = i * HEAVY
            for sa, sb, length in _residue_bond_table(rc.RESTYPES_3[restype[i]]):
                a.append(base + sa)
                b.append(base + sb)
                ideal.append(length)
        same = np.flatnonzero(segment[1:] == segment[:-1])
        a.extend((same * HEAVY + C_).tolist())
        b.extend(((same + 1) * HEAVY + N_).tolist())
        ideal.extend([rc.BOND_C_N] * len(same))
        sg = _slot_index("CYS")["SG"]
        for i, j in disulfides:
            a.append(i * HEAVY + sg)
            b.append(j * HEAVY + sg)
            ideal.append(rc.BOND_SG_SG)
        a, b, ideal = np.array(a, np.int64), np.array(b, np.int64), np.array(ideal)
        flat = atom_mask.reshape(-1)
        keep = flat[a] & flat[b]
        self.n_flat = n * HEAVY
        self.a, self.b, self.ideal = a[keep], b[keep], ideal[keep]
        # topology for exclusions uses every template bond (missing atoms do not shorten paths)
        self._all_a, self._all_b = a, b

    @staticmethod
    def _pair_key(i, j, n):
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        return lo * n + hi

    @functools.cached_property
    def bonded_keys(self) -> np.ndarray:
        return np.unique(self._pair_key(self.a, self.b, self.n_flat))

    @functools.cached_property
    def excluded_keys(self) -> np.ndarray:
        """Keys of pairs at most CLASH_EXCLUDE_BONDS bonds apart (on the full template graph)."""
        a, b = self._all_a, self._all_b
        nbrs: dict[int, list[int]] = {}
        for x, y in zip(a.tolist(), b.tolist()):
            nbrs.setdefault(x, []).append(y)
            nbrs.setdefault(y, []).append(x)
        keys = []
        for start in nbrs:
            seen = {start}
            frontier = [start]
            for _ in range(CLASH_EXCLUDE_BONDS):
                nxt = []
                for x in frontier:
                    for y in nbrs[x]:
                        if y not in seen:
                            seen.add(y)
                            nxt.append(y)
                frontier = nxt
            keys.extend(start * self.n_flat + y for y in seen if y > start)
        return np.unique(np.array(keys, dtype=np.int64))


def _clashes(xyz_flat, graph: _Graph) -> int:
    i, j, _ = close_pairs(xyz_flat, CLASH_DISTANCE)
    keys = _Graph._pair_key(i, j, graph.n_flat)
    return int((~np.isin(keys, graph.excluded_keys)).sum())


def _member(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``np.isin(keys, table)`` for a sorted, unique ``table`` (a binary search per key)."""
    if len(table) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return table[pos] == keys


class FrameCheck:
    """Clashes, bond validity and GED of many frames of one topology, without a reference.

    The figures are those of :func:`chain_metrics` for a prediction scored against itself
    (``chain_metrics(x, x, present, restype, segment, disulfides_true=disulfides,
    pred_present=present)``): ``clashes``, ``bond_validity`` and ``ged`` (see the module
    docstring).  The bond graph and its 1-4 exclusions are built once here, so a frame costs
    one neighbour search (``scipy.spatial.cKDTree``) and a few vectorised lookups.

    Parameters
    ----------
    restype, segment : array_like of int, shape (N,)
        Residue types and segment ids.
    present : array_like, shape (N, ≥15)
        Nonzero where the structure has the heavy atom (slot layout; slots past OXT ignored).
    disulfides : sequence of (int, int)
        Residue pairs bonded SG–SG.
    """

    def __init__(self, restype, segment, present, disulfides=()):
        restype = np.asarray(restype, dtype=np.int64)
        segment = np.asarray(segment, dtype=np.int64)
        exists = rc.heavy_mask_array()[restype][:, :HEAVY] > 0
        exists[:, rc.OXT_SLOT] = True
        mask = (np.asarray(present)[:, :HEAVY] > 0) & exists       # as chain_metrics scores them
        pairs = [tuple(sorted(map(int, p))) for p in disulfides]
        graph = _Graph(restype, segment, mask, pairs)
        self.n_residues = len(restype)
        self.mask = mask
        self.flat = np.flatnonzero(mask.reshape(-1))                # scored atoms, ascending flat index
        self.n_atoms = len(self.flat)
        self.n_bonds = len(graph.a)
        self._n_flat = graph.n_flat
        self._excluded = graph.excluded_keys
        self._bonded = graph.bonded_keys
        # bond ends as positions in the list of scored atoms (both ends are scored: _Graph keeps only those)
        self._bond_a = np.searchsorted(self.flat, graph.a)
        self._bond_b = np.searchsorted(self.flat, graph.b)
        self._ideal = graph.ideal
        radius = _element_radius_table()[restype].reshape(-1)[self.flat]
        self._radius = radius
        self._bond_cut = radius[self._bond_a] + radius[self._bond_b] + COVALENT_MARGIN
        # one search reaches both the clash distance and the largest covalent cutoff; the slack
        # keeps pairs that cKDTree's own rounding would put a hair past the radius (the strict
        # tests below decide, on the same float64 distances as chain_metrics)
        self._reach = max(CLASH_DISTANCE, 2 * max(COVALENT_RADII.values()) + COVALENT_MARGIN) + 1e-6
        self._topology_atoms = None

    @classmethod
    def from_layout(cls, layout, restype, segment, disulfides=()) -> FrameCheck:
        """The check of an all-atom layout (:class:`openmm_ldb.topology.AllAtomLayout`): its heavy
        atoms are the scored ones, and :meth:`of_positions` takes its topology-order positions.

        Cap atoms (ACE/NME of lone residues) are left out: the layout files them under their
        residue's Cα slot, and they belong to no residue template of the graph."""
        residue = np.asarray(layout.residue, dtype=np.int64)
        slot = np.asarray(layout.slot, dtype=np.int64)
        caps = np.concatenate([np.asarray(v, dtype=np.int64) for v in layout.cap_atoms.values()] or
                              [np.zeros(0, np.int64)])
        keep = slot < HEAVY
        keep[caps[caps >= 0]] = False
        present = np.zeros((len(restype), HEAVY), dtype=bool)
        present[residue[keep], slot[keep]] = True
        check = cls(restype, segment, present, disulfides)
        index = np.full(check.mask.size, -1, dtype=np.int64)
        index[residue[keep] * HEAVY + slot[keep]] = np.flatnonzero(keep)
        check._topology_atoms = index[check.flat]
        return check

    def __call__(self, slots) -> dict:
        """Figures of positions in slot layout.

        Parameters
        ----------
        slots : array_like, shape (..., N, ≥15, 3)
            Å; any leading axes (frames, samples).

        Returns
        -------
        dict of arrays of the leading shape
            ``clashes`` and ``clashes_per_1000`` (per 1000 scored heavy atoms), ``bad_bonds``
            (bonds off their ideal length by ``BOND_TOLERANCE`` or more) and ``bond_validity``
            (NaN without bonds), ``ged``, ``ged_added`` and ``ged_broken``.
        """
        xyz = np.asarray(slots, dtype=np.float64)[..., :HEAVY, :]
        lead = xyz.shape[:-3]
        return self._score(xyz.reshape(lead + (-1, 3))[..., self.flat, :])

    def of_positions(self, positions) -> dict:
        """Figures of topology-order positions (..., n_atoms, 3) in Å; needs :meth:`from_layout`."""
        if self._topology_atoms is None:
            raise ValueError("of_positions needs a FrameCheck made with FrameCheck.from_layout")
        return self._score(np.asarray(positions, dtype=np.float64)[..., self._topology_atoms, :])

    def _score(self, atoms: np.ndarray) -> dict:
        """``atoms`` (..., n_atoms, 3): the scored atoms in ascending flat order."""
        from scipy.spatial import cKDTree

        lead = atoms.shape[:-2]
        frames = atoms.reshape((-1, self.n_atoms, 3))
        if not np.isfinite(frames).all():
            raise ValueError("FrameCheck: non-finite coordinates")
        names = ("clashes", "bad_bonds", "ged_added", "ged_broken")
        counts = {k: np.zeros(len(frames), dtype=np.int64) for k in names}
        for f, x in enumerate(frames):
            pairs = cKDTree(x).query_pairs(self._reach, output_type="ndarray")
            i, j = pairs[:, 0], pairs[:, 1]
            d = np.linalg.norm(x[i] - x[j], axis=-1)
            keys = _Graph._pair_key(self.flat[i], self.flat[j], self._n_flat)
            clash = d < CLASH_DISTANCE
            counts["clashes"][f] = int((~_member(keys[clash], self._excluded)).sum())
            near = d < self._radius[i] + self._radius[j] + COVALENT_MARGIN
            counts["ged_added"][f] = int((~_member(keys[near], self._bonded)).sum())
            d_bond = np.linalg.norm(x[self._bond_a] - x[self._bond_b], axis=-1)
            counts["bad_bonds"][f] = int((~(np.abs(d_bond - self._ideal) < BOND_TOLERANCE)).sum())
            counts["ged_broken"][f] = int((d_bond > self._bond_cut).sum())
        out = {k: v.reshape(lead) for k, v in counts.items()}
        out["ged"] = out["ged_added"] + out["ged_broken"]
        out["clashes_per_1000"] = 1000.0 * out["clashes"] / max(self.n_atoms, 1)
        # (good bonds) / (bonds), as chain_metrics' mean of a boolean array: the same float
        valid = (self.n_bonds - out["bad_bonds"]) / self.n_bonds if self.n_bonds else np.full(lead, np.nan)
        out["bond_validity"] = np.asarray(valid, dtype=np.float64)
        return out


# ----------------------------------------------------------------------------------------
# Swapping and angles
# ----------------------------------------------------------------------------------------
def _swap_symmetric(pred, true, mask, restype):
    """pred with symmetric atoms swapped per residue where that lowers the squared error."""
    perm = rc.symmetric_swap_array()[restype][:, :HEAVY]
    swapped = np.take_along_axis(pred, perm[..., None], axis=1)
    mask_perm = np.take_along_axis(mask, perm, axis=1)
    allowed = (mask == mask_perm).all(-1)  # both atoms of every pair scored (or neither)
    e0 = np.where(mask, ((pred - true) ** 2).sum(-1), 0.0).sum(-1)
    e1 = np.where(mask, ((swapped - true) ** 2).sum(-1), 0.0).sum(-1)
    use = allowed & (e1 < e0)
    return np.where(use[:, None, None], swapped, pred), use


def chi_angles(xyz, mask, restype) -> tuple[np.ndarray, np.ndarray]:
    """χ1-χ4 in degrees [N, 4] and a validity mask (chi exists and its four atoms are in mask)."""
    slots = rc.chi_atom_slots()[restype]                                  # [N, 4, 4]
    exists = rc.chi_mask_array()[restype] > 0
    pts = np.take_along_axis(xyz[:, None, :, :], slots[..., None], axis=2)  # [N, 4, 4, 3]
    ok = exists & np.take_along_axis(mask[:, None, :], slots, axis=2).all(-1)
    chi = dihedral(pts[..., 0, :], pts[..., 1, :], pts[..., 2, :], pts[..., 3, :])
    return np.where(ok, chi, np.nan), ok


def backbone_dihedrals(xyz, mask, segment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """phi, psi, omega in degrees [N] (NaN where undefined).  omega[i] is the peptide i -> i+1."""
    n = len(segment)
    phi = np.full(n, np.nan)
    psi = np.full(n, np.nan)
    omega = np.full(n, np.nan)
    if n < 2:
        return phi, psi, omega
    link = (segment[1:] == segment[:-1]) & mask[:-1, C_] & mask[1:, N_] & mask[:-1, CA_] & mask[1:, CA_]
    bb_ok = mask[:, N_] & mask[:, CA_] & mask[:, C_]
    p = dihedral(xyz[:-1, C_], xyz[1:, N_], xyz[1:, CA_], xyz[1:, C_])
    phi[1:] = np.where(link & bb_ok[1:], p, np.nan)
    s = dihedral(xyz[:-1, N_], xyz[:-1, CA_], xyz[:-1, C_], xyz[1:, N_])
    psi[:-1] = np.where(link & bb_ok[:-1], s, np.nan)
    w = dihedral(xyz[:-1, CA_], xyz[:-1, C_], xyz[1:, N_], xyz[1:, CA_])
    omega[:-1] = np.where(link, w, np.nan)
    return phi, psi, omega


def chi_rotamer_bin(chi_deg) -> np.ndarray:
    """Rotamer bin of a χ angle: 0 = g+ (0 ≤ χ < 120°, centred +60°), 1 = t (|χ| ≥ 120°),
    2 = g− (−120° ≤ χ < 0, centred −60°); −1 for NaN."""
    chi = np.asarray(chi_deg, dtype=float)
    out = np.full(chi.shape, -1, dtype=np.int64)
    fin = np.isfinite(chi)
    out[fin & (chi >= 0) & (chi < 120)] = 0
    out[fin & (np.abs(chi) >= 120)] = 1
    out[fin & (chi < 0) & (chi >= -120)] = 2
    return out


def _rmsd(sq, mask):
    n = int(mask.sum())
    return float(math.sqrt(sq[mask].sum() / n)) if n else float("nan")


# ----------------------------------------------------------------------------------------
# Main entry points
# ----------------------------------------------------------------------------------------
def chain_metrics(pred, true, present, restype, segment, disulfides_true=None, disulfides_pred=None,
                  pred_present=None, details: bool = False) -> dict:
    """Metrics of one predicted chain against its reference (see the module docstring).

    Parameters
    ----------
    pred : [N, ≥15, 3] predicted positions (Å, slot layout).
    true : [N, ≥15, 3] reference positions (Å, slot layout).
    present : [N, ≥15] 1 where the reference has the atom.
    restype, segment : [N] residue types and segment ids (those the backmapper used).
    disulfides_true : reference disulfide pairs (i, j); default: SG–SG < 2.5 Å in ``true``.
    disulfides_pred : disulfides the backmapper declared in its topology (reported only:
        precision/recall of the declared pairs against the reference).
    pred_present : [N, ≥15] atoms the prediction has; default: every heavy atom, OXT on
        segment ends (the backmapper's convention).
    details : also return per-residue arrays under ``"details"`` (for plots).

    Returns
    -------
    dict of floats/ints (NaN where a metric has nothing to count).
    """
    restype = np.asarray(restype, dtype=np.int64)
    segment = np.asarray(segment, dtype=np.int64)
    n = len(restype)
    pred = np.asarray(pred, dtype=np.float64)[:, :HEAVY]
    true = np.asarray(true, dtype=np.float64)[:, :HEAVY]
    ref_mask = np.asarray(present)[:, :HEAVY] > 0
    if pred_present is None:
        pred_mask = default_pred_present(restype, segment)
    else:
        pred_mask = np.asarray(pred_present)[:, :HEAVY] > 0
    exists = rc.heavy_mask_array()[restype][:, :HEAVY] > 0
    exists[:, rc.OXT_SLOT] = True
    mask = ref_mask & pred_mask & exists & np.isfinite(pred).all(-1) & np.isfinite(true).all(-1)
    pred = np.where(mask[..., None], pred, np.nan)
    true_m = np.where(mask[..., None], true, np.nan)
    if disulfides_true is None:
        disulfides_true = find_disulfides_xyz(true, ref_mask, restype)
    disulfides_true = [tuple(sorted(map(int, p))) for p in disulfides_true]

    # --- RMSDs with the symmetric swap
    pred_s, swapped = _swap_symmetric(np.nan_to_num(pred), np.nan_to_num(true_m), mask, restype)
    sq = np.where(mask, ((pred_s - np.nan_to_num(true_m)) ** 2).sum(-1), 0.0)
    bb = np.zeros_like(mask)
    bb[:, list(BACKBONE_SLOTS)] = True
    sc = np.zeros_like(mask)
    sc[:, list(SIDECHAIN_SLOTS)] = True
    ca = np.zeros_like(mask)
    ca[:, CA_] = True
    out: dict = {"n_residues": n, "n_atoms": int(mask.sum()),
                 "heavy_rmsd": _rmsd(sq, mask), "backbone_rmsd": _rmsd(sq, mask & bb),
                 "sidechain_rmsd": _rmsd(sq, mask & sc), "ca_rmsd": _rmsd(sq, mask & ca),
                 "n_swapped": int(swapped.sum())}

    # --- chi accuracy
    chi_p, ok_p = chi_angles(pred, mask, restype)
    chi_t, ok_t = chi_angles(true_m, mask, restype)
    ok = ok_p & ok_t
    period = np.where(rc.chi_pi_periodic_array()[restype] > 0, 180.0, 360.0)
    good = ok & (_angle_diff(chi_p, chi_t, period) < CHI_TOLERANCE_DEG)
    has1, has2 = ok[:, 0], ok[:, 0] & ok[:, 1]
    out["chi1_acc"] = float(good[has1, 0].mean()) if has1.any() else float("nan")
    out["chi12_acc"] = float((good[has2, 0] & good[has2, 1]).mean()) if has2.any() else float("nan")
    out["n_chi1"] = int(has1.sum())

    # --- bonds, GED, clashes
    graph = _Graph(restype, segment, mask, disulfides_true)
    flat_p = pred.reshape(-1, 3)
    flat_t = true_m.reshape(-1, 3)
    d_bond = np.linalg.norm(flat_p[graph.a] - flat_p[graph.b], axis=-1)
    good_bond = np.abs(d_bond - graph.ideal) < BOND_TOLERANCE
    out["bond_validity"] = float(good_bond.mean()) if len(d_bond) else float("nan")
    out["n_bonds"] = len(d_bond)
    radius = np.where(mask, _element_radius_table()[restype], 0.0).reshape(-1)
    bond_cut = radius[graph.a] + radius[graph.b] + COVALENT_MARGIN
    broken = int((d_bond > bond_cut).sum())
    i, j, d = close_pairs(flat_p, 2 * max(COVALENT_RADII.values()) + COVALENT_MARGIN)
    within = d < radius[i] + radius[j] + COVALENT_MARGIN
    keys = _Graph._pair_key(i[within], j[within], graph.n_flat)
    added = int((~np.isin(keys, graph.bonded_keys)).sum())
    out.update(ged=added + broken, ged_added=added, ged_broken=broken)
    n_atoms = max(int(mask.sum()), 1)
    out["clashes"] = _clashes(flat_p, graph)
    out["clashes_ref"] = _clashes(flat_t, graph)
    out["clashes_per_1000"] = 1000.0 * out["clashes"] / n_atoms
    out["clashes_per_1000_ref"] = 1000.0 * out["clashes_ref"] / n_atoms

    # --- chirality
    chiral_ok = mask[:, N_] & mask[:, CA_] & mask[:, C_] & mask[:, CB_] & (restype != rc.RESTYPE_INDEX["GLY"])
    vol = (np.cross(pred[:, N_] - pred[:, CA_], pred[:, C_] - pred[:, CA_]) * (pred[:, CB_] - pred[:, CA_])).sum(-1)
    out["chirality_L"] = float((vol[chiral_ok] > 0).mean()) if chiral_ok.any() else float("nan")

    # --- peptide cis/trans
    phi_p, psi_p, om_p = backbone_dihedrals(pred, mask, segment)
    phi_t, psi_t, om_t = backbone_dihedrals(true_m, mask, segment)
    pep = np.isfinite(om_p) & np.isfinite(om_t)
    cis_p, cis_t = np.abs(om_p) < 90.0, np.abs(om_t) < 90.0
    out["cis_trans_agreement"] = float((cis_p[pep] == cis_t[pep]).mean()) if pep.any() else float("nan")
    out["n_cis_ref"] = int((cis_t & pep).sum())
    out["n_cis_pred"] = int((cis_p & pep).sum())

    # --- disulfides
    sg = _slot_index("CYS")["SG"]
    if disulfides_true:
        hit = [bool(mask[a, sg] and mask[b, sg] and np.linalg.norm(pred[a, sg] - pred[b, sg]) < DISULFIDE_CUTOFF)
               for a, b in disulfides_true]
        out["disulfides_recovered"] = float(np.mean(hit))
    else:
        out["disulfides_recovered"] = float("nan")
    out["n_disulfides_ref"] = len(disulfides_true)
    if disulfides_pred is not None:
        declared = {tuple(sorted(map(int, p))) for p in disulfides_pred}
        truth = set(disulfides_true)
        out["n_disulfides_declared"] = len(declared)
        out["disulfide_topology_precision"] = len(declared & truth) / len(declared) if declared else float("nan")
        out["disulfide_topology_recall"] = len(declared & truth) / len(truth) if truth else float("nan")

    if details:
        res_sq = sq.sum(-1)
        res_n = mask.sum(-1)
        out["details"] = {
            "residue_heavy_rmsd": np.where(res_n > 0, np.sqrt(res_sq / np.maximum(res_n, 1)), np.nan),
            "chi_pred": chi_p, "chi_true": chi_t, "chi_ok": ok,
            "phi_pred": phi_p, "psi_pred": psi_p, "phi_true": phi_t, "psi_true": psi_t,
        }
    return out


def ensemble_diversity(samples, mask, restype=None) -> float:
    """DIV: mean pairwise heavy-atom RMSD (Å) between the samples of one frame.

    For every unordered pair of samples (s < t): the RMSD over the heavy atoms in ``mask``
    (slots 0-14 of [N, ≥15], pooled over the chain; no superposition, Cα is identical in all
    samples and counts as zero error).  With ``restype`` given, the symmetric atoms of sample t
    are swapped per residue where that lowers the residue's error, so that naming flips of
    OD1/OD2 etc. do not count as diversity.  DIV is the mean over the S(S−1)/2 pairs; 0 for
    fewer than two samples.

    samples : [S, N, ≥15, 3] Å; mask : [N, ≥15] atoms to score; restype : [N], optional.
    """
    samples = np.asarray(samples, dtype=np.float64)[:, :, :HEAVY]
    mask = np.asarray(mask)[:, :HEAVY] > 0
    s = samples.shape[0]
    if s < 2 or not mask.any():
        return 0.0
    vals = []
    for a in range(s):
        for b in range(a + 1, s):
            other = samples[b]
            if restype is not None:
                other, _ = _swap_symmetric(other, samples[a], mask, np.asarray(restype, dtype=np.int64))
            sq = np.where(mask, ((samples[a] - other) ** 2).sum(-1), 0.0)
            vals.append(math.sqrt(sq.sum() / mask.sum()))
    return float(np.mean(vals))


def heavy_atom_rmsd_to_reference(pred, ref) -> float:
    """Heavy-atom RMSD (Å) between two mdtraj frames of the same protein, no superposition.

    Protein residues are matched in order (their names must agree up to aliases such as
    HIE/HIS or CYX/CYS), atoms by name (``residues.canonical_atom_name``); hydrogens are ignored
    and so is any atom (e.g. OXT) missing from either structure.  Symmetric atoms
    (``residues.SYMMETRIC_ATOMS``) are swapped per residue when that lowers the error.
    Uses the first frame of each trajectory.
    """
    def residues_of(traj):
        out = []
        for res in traj.topology.residues:
            try:
                name = rc.canonical_residue_name(res.name)
            except KeyError:
                continue
            atoms = {}
            for atom in res.atoms:
                if atom.element is not None and atom.element.symbol == "H":
                    continue
                aname = rc.canonical_atom_name(name, atom.name)
                if name == "MET" and aname == "SE":
                    aname = "SD"
                atoms[aname] = atom.index
            out.append((name, atoms))
        return out

    rp, rr = residues_of(pred), residues_of(ref)
    if len(rp) != len(rr):
        raise ValueError(f"different numbers of amino-acid residues: {len(rp)} vs {len(rr)}")
    xp, xr = pred.xyz[0] * 10.0, ref.xyz[0] * 10.0
    total, count = 0.0, 0
    for k, ((np_, ap), (nr, ar)) in enumerate(zip(rp, rr)):
        if np_ != nr:
            raise ValueError(f"residue {k}: {np_} in the prediction but {nr} in the reference")
        common = sorted(set(ap) & set(ar))
        if not common:
            continue
        p = np.array([xp[ap[a]] for a in common])
        r = np.array([xr[ar[a]] for a in common])
        err = ((p - r) ** 2).sum()
        pairs = rc.SYMMETRIC_ATOMS.get(np_, [])
        if pairs:
            swap = {a: a for a in common}
            for a, b in pairs:
                if a in swap and b in swap:
                    swap[a], swap[b] = b, a
            ps = np.array([xp[ap[swap[a]]] for a in common])
            err = min(err, ((ps - r) ** 2).sum())
        total += err
        count += len(common)
    if count == 0:
        raise ValueError("no heavy atoms in common")
    return float(math.sqrt(total / count))


SUMMARY_KEYS = ["heavy_rmsd", "backbone_rmsd", "sidechain_rmsd", "ca_rmsd", "chi1_acc", "chi12_acc",
                "bond_validity", "ged", "ged_added", "ged_broken", "clashes_per_1000", "clashes_per_1000_ref",
                "chirality_L", "cis_trans_agreement", "disulfides_recovered"]


def summarize(rows: list[dict], keys=SUMMARY_KEYS) -> dict:
    """Mean over chains of each metric (NaNs skipped; disulfides pooled over pairs)."""
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows if k in r], dtype=float)
        vals = vals[np.isfinite(vals)]
        out[k] = float(vals.mean()) if len(vals) else float("nan")
    n_ss = sum(r.get("n_disulfides_ref", 0) for r in rows)
    if n_ss:
        out["disulfides_recovered"] = float(sum(r["disulfides_recovered"] * r["n_disulfides_ref"] for r in rows
                                                if r.get("n_disulfides_ref")) / n_ss)
    out["n_disulfides_ref"] = int(n_ss)
    return out


def threaded_rings(topology, xyz_nm) -> list[tuple[str, str]]:
    """Bonds that pass through a ring of another residue (aromatic, histidine or proline ring).

    A bond threads a ring when it crosses the ring's mean plane at a point closer to the ring's
    centre than 0.8 times the ring's mean radius.  ``topology`` is an ``openmm.app.Topology``
    with bonds, ``xyz_nm`` its positions (nm).  Returns (ring residue, bond residue) labels.
    """
    xyz = np.asarray(xyz_nm, dtype=np.float64) * 10.0
    atoms = list(topology.atoms())
    bonds = np.array([[a.index, b.index] for a, b in topology.bonds()], dtype=np.int64).reshape(-1, 2)
    res_of = np.array([a.residue.index for a in atoms])
    mid = xyz[bonds].mean(1)
    found = []
    for residue in topology.residues():
        names = {a.name: a.index for a in residue.atoms()}
        for ring in rc.RINGS.get(rc.canonical_residue_name(residue.name), []):
            if not all(n in names for n in ring):
                continue
            pts = xyz[[names[n] for n in ring]]
            centre = pts.mean(0)
            u, s, vt = np.linalg.svd(pts - centre)
            normal = vt[2]
            radius = np.linalg.norm(pts - centre, axis=1).mean()
            near = np.flatnonzero((np.linalg.norm(mid - centre, axis=1) < 3.0) &
                                  (res_of[bonds[:, 0]] != residue.index) & (res_of[bonds[:, 1]] != residue.index))
            for k in near:
                p, q = xyz[bonds[k, 0]], xyz[bonds[k, 1]]
                sp, sq = (p - centre) @ normal, (q - centre) @ normal
                if sp * sq > 0 or sp == sq:
                    continue
                cross = p + (q - p) * (sp / (sp - sq))
                if np.linalg.norm(cross - centre) < 0.8 * radius:
                    other = atoms[bonds[k, 0]].residue
                    found.append((f"{residue.name}{residue.id}", f"{other.name}{other.id}"))
    return found
