"""Batched, TorchScript-compatible protein geometry (plain Å tensors).

The all-atom builder used by the model lives here:

* the backbone is a chain of rigid, planar peptide units CA(i)-C(i)-O(i)-N(i+1)-H(i+1)-CA(i+1)
  hung between consecutive Cα atoms; each unit has one degree of freedom, its rotation
  about the Cα–Cα axis, so bond lengths and the peptide plane are ideal by construction and
  the builder never moves the Cα it is given (the sampler's trace regularization and clash
  relaxation move a few, by a bounded, reported amount);
* chain termini get the missing N (from psi) or C, O, OXT (from phi, psi);
* side chains and hydrogens follow a z-matrix (NeRF placement) with ideal bonds and angles
  and chi torsions.

Chemistry enters only through the tables built by :class:`GeometryTables` from
:mod:`openmm_ldb.residues`.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from . import residues as rc

# Indices into the per-residue angle vector the model predicts.
ANGLE_NAMES = ["peptide", "psi_nterm", "phi_cterm", "psi_cterm", "chi1", "chi2", "chi3", "chi4"]
NUM_ANGLES = len(ANGLE_NAMES)
PEPTIDE, PSI_NTERM, PHI_CTERM, PSI_CTERM, CHI0 = 0, 1, 2, 3, 4

N_SLOT, CA_SLOT, C_SLOT, O_SLOT = 0, 1, 2, 3
GLY_INDEX = rc.RESTYPE_INDEX["GLY"]


def exporting() -> bool:
    """True while ``torch.export`` traces the function (for the .pt2 file).  A shortcut that
    skips work by looking at the data (``if bool(x.any())``, an early ``break``) is then taken
    as if the data asked for the work: the skipped work changes nothing, so the traced program
    computes the same atoms with shapes that do not depend on the data."""
    if torch.jit.is_scripting():
        return False
    else:
        return torch.compiler.is_exporting()


def at_most(k: int, n: int) -> int:
    """``min(k, n)``; while exporting, ``k``, and the exported program checks ``n >= k`` when
    it runs (a minimum of a fixed and a run-time size is a shape torch.export cannot keep)."""
    if torch.jit.is_scripting():
        return min(k, n)
    else:
        if torch.compiler.is_exporting():
            torch._check(n >= k)
            return k
        return min(k, n)


def run_time_size(k: int, lo: int, hi: int) -> int:
    """``k``; while exporting, a size the exported program reads when it runs and checks to lie
    in [``lo``, ``hi``] (the shapes that follow from it then need no guard at export)."""
    if torch.jit.is_scripting():
        return k
    else:
        if torch.compiler.is_exporting():
            u = torch.scalar_tensor(k, dtype=torch.long).item()
            torch._check(u >= lo)
            torch._check(u <= hi)
            return u
        return k


def chunk_bounds(n: int, chunk: int) -> List[Tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of ``n`` rows (one chunk while exporting: a loop
    over a size that is only known at run time cannot be traced)."""
    if exporting():
        return [(0, n)]
    return [(start, min(start + chunk, n)) for start in range(0, n, chunk)]


def nearest_points(query: torch.Tensor, points: torch.Tensor, k: int, chunk: int = 512) -> torch.Tensor:
    """Indices [B, N, k] of the k ``points`` [B, M, 3] nearest each ``query`` [B, N, 3] (chunked)."""
    kk = at_most(k, points.shape[1])
    out: List[torch.Tensor] = []
    for start, stop in chunk_bounds(query.shape[1], chunk):
        d = torch.cdist(query[:, start:stop], points)
        out.append(torch.topk(d, kk, dim=-1, largest=False)[1])
    idx = torch.cat(out, dim=1)
    if kk < k:
        idx = torch.cat([idx, idx[..., :1].expand(idx.shape[0], idx.shape[1], k - kk)], dim=-1)
    return idx


def normalize(v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum(-1, keepdim=True) + eps)


def dihedral(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Dihedral angle a-b-c-d in radians, in (-pi, pi]."""
    b0 = a - b
    b1 = normalize(c - b)
    b2 = d - c
    v = b0 - (b0 * b1).sum(-1, keepdim=True) * b1
    w = b2 - (b2 * b1).sum(-1, keepdim=True) * b1
    x = (v * w).sum(-1)
    y = (torch.cross(b1, v, dim=-1) * w).sum(-1)
    return torch.atan2(y, x)


def angle(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Angle a-b-c in radians."""
    v1 = normalize(a - b)
    v2 = normalize(c - b)
    return torch.acos(torch.clamp((v1 * v2).sum(-1), -1.0 + 1e-7, 1.0 - 1e-7))


def nerf(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, bond: torch.Tensor, bond_angle: torch.Tensor,
         torsion: torch.Tensor) -> torch.Tensor:
    """Place atom d with ``|cd| = bond``, angle b-c-d = bond_angle, dihedral a-b-c-d = torsion.

    Natural extension reference frame (Parsons et al. 2005); angles in radians, broadcastable.
    """
    bc = normalize(c - b)
    n = normalize(torch.cross(b - a, bc, dim=-1))
    m = torch.cross(n, bc, dim=-1)
    d2 = torch.stack([-torch.cos(bond_angle), torch.sin(bond_angle) * torch.cos(torsion),
                      torch.sin(bond_angle) * torch.sin(torsion)], dim=-1) * bond.unsqueeze(-1)
    return c + d2[..., 0:1] * bc + d2[..., 1:2] * m + d2[..., 2:3] * n


def nerf_frame(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Rotation [..., 3, 3] (columns bc, m, n) of the NeRF frame at ``c``: an atom placed by
    :func:`nerf` from (a, b, c) has fixed coordinates in it, and a torsion change of chi about
    b-c is a rotation of its last two columns by chi."""
    bc = normalize(c - b)
    n = normalize(torch.cross(b - a, bc, dim=-1))
    m = torch.cross(n, bc, dim=-1)
    return torch.stack([bc, m, n], dim=-1)


def frames_from_three_points(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] (columns e1, e2, e3) of the frame at b: e1 along c-b,
    e2 in the plane of a, b, c (Gram–Schmidt), e3 = e1 x e2."""
    e1 = normalize(c - b)
    u = a - b
    e2 = normalize(u - (u * e1).sum(-1, keepdim=True) * e1)
    e3 = torch.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1)


def segment_neighbours(segment: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(has_prev, has_next) bool [N] for residues whose neighbour is in the same segment."""
    same = segment[1:] == segment[:-1]
    false = torch.zeros(1, dtype=torch.bool, device=segment.device)
    return torch.cat([false, same]), torch.cat([same, false])


def peptide_axes(ca: torch.Tensor, segment: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame of each peptide unit i -> i+1 built from the Cα trace only.

    Returns x (unit Cα(i)->Cα(i+1)), u and w (perpendicular unit vectors; u points towards
    the flanking Cα atoms i-1 and i+2) and the Cα–Cα distance, each [B, N, ...]; rows of
    residues without a next residue hold finite but meaningless values.
    """
    n = ca.shape[-2]
    has_prev, has_next = segment_neighbours(segment)
    nxt = torch.cat([ca[..., 1:, :], ca[..., -1:, :]], dim=-2)
    prv = torch.cat([ca[..., :1, :], ca[..., :-1, :]], dim=-2)
    nxt2 = torch.cat([ca[..., 2:, :], ca[..., -1:, :], ca[..., -1:, :]], dim=-2)[..., :n, :]
    has_next2 = torch.cat([has_next[1:], torch.zeros(1, dtype=torch.bool, device=ca.device)]) & has_next
    bond = nxt - ca
    dist = torch.sqrt((bond * bond).sum(-1) + 1e-8)
    x = bond / dist.unsqueeze(-1)
    ref = (prv - ca) * has_prev.to(ca.dtype).unsqueeze(-1) + (nxt2 - nxt) * has_next2.to(ca.dtype).unsqueeze(-1)
    # segments of two residues have no flanking atom: fall back to a fixed lab direction
    # that is not parallel to x
    fallback = torch.where(x[..., 0:1].abs() < 0.9, torch.tensor([1.0, 0.0, 0.0], device=ca.device, dtype=ca.dtype),
                           torch.tensor([0.0, 1.0, 0.0], device=ca.device, dtype=ca.dtype))
    lonely = ((~has_prev) & (~has_next2)).unsqueeze(-1)
    ref = torch.where(lonely, fallback.expand_as(ref), ref)
    u = normalize(ref - (ref * x).sum(-1, keepdim=True) * x)
    w = torch.cross(x, u, dim=-1)
    return x, u, w, dist


def _rigid_groups(z: Dict[str, "np.ndarray"]):
    """Rigid groups of the z-matrix: per residue type and slot the group (0 = backbone frame
    (C, N, CA); k = the frame of chi k-1's atoms a-b-c, rotated by chi), the atom's fixed
    coordinates in it, and the three slots that define each group's frame.

    An atom placed by chi k belongs to group k+1; any other atom to the highest group of its
    reference atoms (its internal coordinates are fixed, so it moves with them) unless a lower
    reference is off that group's rotation axis: then to a last group framed by its own references.
    """
    import numpy as np

    refs, target, valid, chi = z["refs"], z["target"], z["valid"], z["chi"]
    nres, nsteps = target.shape
    late = 1 + rc.MAX_CHI
    ngroups = 2 + rc.MAX_CHI
    group = np.full((nres, rc.NUM_SLOTS), -1, dtype=np.int64)
    frame_atoms = np.zeros((nres, ngroups, 3), dtype=np.int64)
    frame_atoms[:, :] = [2, 0, 1]  # C, N, CA
    chi_slots = rc.chi_atom_slots()
    for r in range(nres):
        g = {0: 0, 1: 0, 2: 0}  # N, CA, C
        for s in range(nsteps):
            if valid[r, s] == 0:
                continue
            a, b, c = (int(x) for x in refs[r, s])
            k = int(chi[r, s])
            if k >= 0:
                g[int(target[r, s])] = k + 1
                frame_atoms[r, k + 1] = chi_slots[r, k, :3]
                continue
            top = max(g[a], g[b], g[c])
            axis = frame_atoms[r, top, 1:] if top > 0 else [0, 1, 2]
            if all(g[x] == top or x in axis for x in (a, b, c)):
                g[int(target[r, s])] = top
            else:
                # reference atoms in two groups, the lower one off the higher one's axis (PRO's
                # HD2/HD3 hang on N and CD): the atom is rigid only in its own references' frame
                g[int(target[r, s])] = late
                if frame_atoms[r, late].tolist() not in ([2, 0, 1], [a, b, c]):
                    raise ValueError(f"{rc.RESTYPES_3[r]}: two non-rigid reference triples")
                frame_atoms[r, late] = [a, b, c]
        for slot, gg in g.items():
            if slot > 2:
                group[r, slot] = gg
    # local coordinates from one reference build with every chi at 0 (rotation = identity)
    tables = _ReferenceBuild(z)
    local = tables.local_coordinates(group, frame_atoms)
    return group, local.astype(np.float32), frame_atoms


class _ReferenceBuild:
    """Builds each residue type once with the z-matrix (chis 0) to read off rigid-group coordinates."""

    def __init__(self, z):
        self.z = z

    def local_coordinates(self, group, frame_atoms):
        import numpy as np

        z = self.z
        nres = group.shape[0]
        atoms = torch.zeros(1, nres, rc.NUM_SLOTS, 3, dtype=torch.float64)
        atoms[0, :, 0] = torch.tensor([-0.525, 1.363, 0.0], dtype=torch.float64)   # N
        atoms[0, :, 2] = torch.tensor([1.526, 0.0, 0.0], dtype=torch.float64)      # C
        for s in range(z["target"].shape[1]):
            for r in range(nres):
                if z["valid"][r, s] == 0:
                    continue
                a, b, c = (int(x) for x in z["refs"][r, s])
                new = nerf(atoms[0, r, a], atoms[0, r, b], atoms[0, r, c],
                           torch.tensor(float(z["bond"][r, s]), dtype=torch.float64),
                           torch.tensor(float(z["angle"][r, s]), dtype=torch.float64),
                           torch.tensor(float(z["torsion"][r, s]), dtype=torch.float64))
                atoms[0, r, int(z["target"][r, s])] = new
        local = np.zeros((nres, rc.NUM_SLOTS, 3))
        for r in range(nres):
            for slot in range(rc.NUM_SLOTS):
                g = int(group[r, slot])
                if g < 0:
                    continue
                a, b, c = (atoms[0, r, int(i)] for i in frame_atoms[r, g])
                rot = nerf_frame(a, b, c)
                local[r, slot] = (rot.T @ (atoms[0, r, slot] - c)).numpy()
        return local


def trace_bounds(dist: torch.Tensor, cis_threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cα–Cα distances an ideal peptide unit can span: trans 3.60–4.00 Å, cis 2.70 Å to just below
    the cis threshold (stretching the template within these keeps each backbone bond within
    0.08 Å of ideal; 99.7 % of crystal Cα–Cα fall inside)."""
    cis = dist < cis_threshold
    lo = torch.where(cis, torch.full_like(dist, 2.70), torch.full_like(dist, 3.60))
    # a cis unit ends below the threshold, so the builder sees it cis as well
    hi = torch.where(cis, torch.full_like(dist, min(3.10, cis_threshold - 0.05)), torch.full_like(dist, 4.00))
    return lo, hi


def regularize_trace(ca: torch.Tensor, segment: torch.Tensor, cis_threshold: float = 3.0,
                     min_ca_i2: float = 4.4, iterations: int = 40, disulfides: Optional[torch.Tensor] = None,
                     max_ca_ss: float = rc.DISULFIDE_CA_CA_MAX, max_ca_i2: float = 99.0) -> torch.Tensor:
    """Move Cα as little as needed so every peptide unit can be ideal.

    Consecutive Cα of a segment are brought inside :func:`trace_bounds` and Cα(i)–Cα(i+2) to at
    least ``min_ca_i2`` Å (tighter i, i+2 turns put O(i) onto N(i+2)) and at most ``max_ca_i2``
    (a straighter trace, which CG models without angle terms make, leaves no N–CA–C angle near
    ideal for any peptide plane), by alternating
    projections: each pass corrects every other constraint (no two of them share an atom, so
    each is met exactly, both ends moving half-way), then the others.  A trace that already
    satisfies every bound (any native structure) comes back unchanged, bit for bit.

    The two Cα of each bonded cysteine pair (``disulfides`` [P, 2] residue indices) are kept
    within ``max_ca_ss`` Å, the window in which a pair is declared bonded (a CG model without
    that bond lets them drift apart, and a file would then declare a bond its atoms do not make).
    """
    n = ca.shape[1]
    if n < 2:
        return ca
    has_prev, has_next = segment_neighbours(segment)
    k1 = torch.arange(n - 1, device=ca.device)
    bond_ok = has_next[:-1].to(ca.dtype)
    d0 = torch.sqrt(((ca[:, 1:] - ca[:, :-1]) ** 2).sum(-1) + 1e-12)
    lo, hi = trace_bounds(d0, cis_threshold)  # cis or trans decided once, from the input
    k2 = torch.arange(n - 2, device=ca.device)  # n >= 2 here
    span_ok = (has_next[:-2] & has_next[1:-1]).to(ca.dtype) if n > 2 else torch.zeros(0, device=ca.device)
    x = ca
    for _ in range(iterations):
        moved = False
        for parity in range(2):
            bond = x[:, 1:] - x[:, :-1]
            d = torch.sqrt((bond * bond).sum(-1) + 1e-12)
            excess = (d - torch.minimum(torch.maximum(d, lo), hi)) * bond_ok * ((k1 % 2) == parity).to(ca.dtype)
            # violations below the tolerance are left alone in every frame, so that a frame's
            # result does not depend on the other frames of its batch
            excess = torch.where(excess.abs() > 1e-4, excess, torch.zeros_like(excess))
            if exporting() or bool((excess != 0).any()):
                moved = True
                corr = (excess / d).unsqueeze(-1) * bond * 0.5
                z1 = torch.zeros_like(x[:, :1])
                x = x + torch.cat([corr, z1], 1) - torch.cat([z1, corr], 1)
            if n > 2:
                span = x[:, 2:] - x[:, :-2]
                d2 = torch.sqrt((span * span).sum(-1) + 1e-12)
                excess2 = (d2 - torch.clamp(d2, min=min_ca_i2, max=max_ca_i2)) * span_ok * \
                    (((k2 // 2) % 2) == parity).to(ca.dtype)
                excess2 = torch.where(excess2.abs() > 1e-4, excess2, torch.zeros_like(excess2))
                if exporting() or bool((excess2 != 0).any()):
                    moved = True
                    corr2 = (excess2 / d2).unsqueeze(-1) * span * 0.5
                    z2 = torch.zeros_like(x[:, :2])
                    x = x + torch.cat([corr2, z2], 1) - torch.cat([z2, corr2], 1)
        if disulfides is not None and disulfides.shape[0] > 0:
            i, j = disulfides[:, 0], disulfides[:, 1]
            gap = x[:, j] - x[:, i]
            d3 = torch.sqrt((gap * gap).sum(-1) + 1e-12)
            far = torch.clamp(d3 - max_ca_ss, min=0.0)
            far = torch.where(far > 1e-4, far, torch.zeros_like(far))
            if exporting() or bool((far != 0).any()):
                moved = True
                corr3 = (far / d3).unsqueeze(-1) * gap * 0.5
                x = x.index_add(1, i, corr3).index_add(1, j, -corr3)
        if not moved and not exporting():
            break
    return x


class GeometryTables(torch.nn.Module):
    """Chemistry tables from :mod:`residues` as buffers (so they travel with an exported model)."""

    def __init__(self):
        super().__init__()
        z = rc.zmatrix_arrays()
        self.register_buffer("z_refs", torch.as_tensor(z["refs"]))
        self.register_buffer("z_target", torch.as_tensor(z["target"]))
        self.register_buffer("z_bond", torch.as_tensor(z["bond"]))
        self.register_buffer("z_angle", torch.as_tensor(z["angle"]))
        self.register_buffer("z_torsion", torch.as_tensor(z["torsion"]))
        self.register_buffer("z_chi", torch.as_tensor(z["chi"]))
        self.register_buffer("z_valid", torch.as_tensor(z["valid"]))
        self.register_buffer("atom_mask", torch.as_tensor(rc.atom_mask_array()))
        self.register_buffer("chi_mask", torch.as_tensor(rc.chi_mask_array()))
        self.register_buffer("chi_pi_periodic", torch.as_tensor(rc.chi_pi_periodic_array()))
        self.register_buffer("chi_atoms", torch.as_tensor(rc.chi_atom_slots()))
        self.register_buffer("symmetric_swap", torch.as_tensor(rc.symmetric_swap_array()))
        group, local, frame_atoms = _rigid_groups(z)
        # side-chain atoms by rigid group: 0 = backbone frame (C, N, CA), k = chi_k frame
        self.register_buffer("sc_group", torch.as_tensor(group))
        self.register_buffer("sc_local", torch.as_tensor(local))
        self.register_buffer("group_frame_atoms", torch.as_tensor(frame_atoms))
        self.num_groups = int(group.max()) + 1
        self.max_chi = int(rc.MAX_CHI)
        # atoms whose reference atoms span two groups off the chi axis (PRO's HD2/HD3 hang on
        # N and CD) are not rigid in either: they keep the NeRF step, after the groups
        trans = rc.peptide_template(cis=False)
        cis = rc.peptide_template(cis=True)
        names = ["C", "O", "N", "H", "CA1"]
        self.register_buffer("peptide_trans", torch.tensor([[float(trans[k][0]), float(trans[k][1])] for k in names]))
        self.register_buffer("peptide_cis", torch.tensor([[float(cis[k][0]), float(cis[k][1])] for k in names]))
        nterm = rc.ideal_geometry()["_NTERM"]
        self.register_buffer("nterm_ic", torch.tensor([[e[4], math.radians(e[5]), math.radians(e[6])] for e in nterm]))
        self.cis_threshold = float(rc.CIS_CA_CA_THRESHOLD)
        self.bond_n_ca = float(rc.BOND_N_CA)
        self.bond_ca_c = float(rc.BOND_CA_C)
        self.bond_c_o = float(rc.BOND_C_O)
        self.bond_c_oxt = float(rc.BOND_C_OXT)
        self.angle_n_ca_c = math.radians(rc.ANGLE_N_CA_C)
        self.angle_ca_c_o = math.radians(rc.ANGLE_CA_C_O)
        # carboxylate: O and OXT share the 240 degrees left by O-C-O (~125 degrees)
        self.angle_ca_c_oxt = math.radians(117.5)
        self.num_slots = int(rc.NUM_SLOTS)
        self.pro_index = int(rc.RESTYPE_INDEX["PRO"])
        self.pro_cd_slot = rc.slot_names("PRO").index("CD")
        self.h_slot = int(rc.H_SLOT)
        self.h2_slot = int(rc.H2_SLOT)
        self.h3_slot = int(rc.H3_SLOT)
        self.oxt_slot = int(rc.OXT_SLOT)

    def forward(self, restype: torch.Tensor) -> torch.Tensor:
        """Atom mask of internal residues [N, NUM_SLOTS]."""
        return self.atom_mask[restype]

    @torch.jit.export
    def peptide_template_xy(self, dist: torch.Tensor) -> torch.Tensor:
        """Per-peptide in-plane coordinates [..., 5, 2] of C, O, N, H, CA1 (trans or cis from the
        Cα–Cα distance).  C and O stay attached to Cα(i); N and H to Cα(i+1)."""
        cis = (dist < self.cis_threshold).unsqueeze(-1).unsqueeze(-1)
        xy = torch.where(cis, self.peptide_cis, self.peptide_trans)
        # stretch the unit along the Cα–Cα axis to the real distance: the change spreads over
        # the three backbone bonds instead of landing on C–N alone
        scale = (dist / xy[..., 4, 0]).unsqueeze(-1)
        return torch.stack([xy[..., 0] * scale, xy[..., 1]], dim=-1)

    @torch.jit.export
    def build_atoms(self, ca: torch.Tensor, restype: torch.Tensor, segment: torch.Tensor,
                    angles: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """All atoms of every residue from the Cα trace and the predicted angles.

        Parameters
        ----------
        ca : [B, N, 3] Cα positions (Å).
        restype : [N] residue type indices.
        segment : [N] segment (chain piece) id; consecutive residues with equal ids are bonded.
        angles : [B, N, NUM_ANGLES, 2] unit (cos, sin) pairs, see ``ANGLE_NAMES``.

        Returns
        -------
        atoms : [B, N, NUM_SLOTS, 3] positions (Å); mask : [N, NUM_SLOTS] atom existence.
        """
        bsz, n = ca.shape[0], ca.shape[1]
        has_prev, has_next = segment_neighbours(segment)
        x, u, w, dist = peptide_axes(ca, segment)
        xy = self.peptide_template_xy(dist)  # [B, N, 5, 2]
        cos_t = angles[..., 0, 0].unsqueeze(-1)
        sin_t = angles[..., 0, 1].unsqueeze(-1)
        perp = cos_t * u + sin_t * w  # in-plane perpendicular direction of each peptide unit
        pep = ca.unsqueeze(-2) + xy[..., 0:1] * x.unsqueeze(-2) + xy[..., 1:2] * perp.unsqueeze(-2)  # [B,N,5,3]
        c_pep, o_pep = pep[..., 0, :], pep[..., 1, :]
        n_next, h_next = pep[..., 2, :], pep[..., 3, :]
        # N(i), H(i) come from the peptide before residue i
        n_from_prev = torch.cat([n_next[:, :1], n_next[:, :-1]], dim=1)
        h_from_prev = torch.cat([h_next[:, :1], h_next[:, :-1]], dim=1)
        # chain termini: N from psi (needs C(i), N(i+1)); C from phi (needs N(i), C(i-1))
        n_next_res = torch.cat([n_from_prev[:, 1:], n_from_prev[:, -1:]], dim=1)
        psi_n = torch.atan2(angles[..., 1, 1], angles[..., 1, 0])
        fill = torch.full_like(psi_n, self.bond_n_ca)
        n_term = nerf(n_next_res, c_pep, ca, fill, torch.full_like(psi_n, self.angle_n_ca_c), psi_n)
        hp = has_prev.view(1, n, 1)
        hn = has_next.view(1, n, 1)
        n_atom = torch.where(hp, n_from_prev, n_term)
        c_prev = torch.cat([c_pep[:, :1], c_pep[:, :-1]], dim=1)
        phi_c = torch.atan2(angles[..., 2, 1], angles[..., 2, 0])
        c_term = nerf(c_prev, n_atom, ca, torch.full_like(phi_c, self.bond_ca_c),
                      torch.full_like(phi_c, self.angle_n_ca_c), phi_c)
        c_atom = torch.where(hn, c_pep, c_term)
        psi_c = torch.atan2(angles[..., 3, 1], angles[..., 3, 0])
        o_term = nerf(n_atom, ca, c_atom, torch.full_like(psi_c, self.bond_c_o),
                      torch.full_like(psi_c, self.angle_ca_c_oxt), psi_c + math.pi)
        oxt = nerf(n_atom, ca, c_atom, torch.full_like(psi_c, self.bond_c_oxt),
                   torch.full_like(psi_c, self.angle_ca_c_oxt), psi_c)
        o_atom = torch.where(hn, o_pep, o_term)
        # N-terminal NH3+
        nt = self.nterm_ic
        h_nterm: List[torch.Tensor] = []
        for k in range(3):
            h_nterm.append(nerf(c_atom, ca, n_atom, nt[k, 0].expand(bsz, n), nt[k, 1].expand(bsz, n),
                                nt[k, 2].expand(bsz, n)))
        h_atom = torch.where(hp, h_from_prev, h_nterm[0])

        slots: List[torch.Tensor] = [torch.zeros_like(ca) for _ in range(self.num_slots)]
        slots[0] = n_atom
        slots[1] = ca
        slots[2] = c_atom
        slots[3] = o_atom
        slots[self.oxt_slot] = oxt
        slots[self.h_slot] = h_atom
        slots[self.h2_slot] = h_nterm[1]
        slots[self.h3_slot] = h_nterm[2]
        atoms = torch.stack(slots, dim=2)  # [B, N, S, 3]
        atoms = self.place_sidechains(atoms, restype, angles, -1, 0, -1)
        # an N-terminal proline's NH2+ takes the two of the three NH3+ positions away from its CD
        cd = atoms[:, :, self.pro_cd_slot]
        d = torch.stack([((h - cd) ** 2).sum(-1) for h in h_nterm], -1)       # [B, N, 3]
        drop = d.argmin(-1, keepdim=True)                                     # the one CD occupies
        cand = torch.stack(h_nterm, 2)                                        # [B, N, 3, 3]
        order = torch.tensor([[1, 2], [0, 2], [0, 1]], device=ca.device)[drop.squeeze(-1)]  # [B, N, 2]
        keep = torch.gather(cand, 2, order.unsqueeze(-1).expand(bsz, n, 2, 3))
        pro_start = ((restype == self.pro_index) & ~has_prev).view(1, n, 1)
        atoms[:, :, self.h2_slot] = torch.where(pro_start, keep[:, :, 0], atoms[:, :, self.h2_slot])
        atoms[:, :, self.h3_slot] = torch.where(pro_start, keep[:, :, 1], atoms[:, :, self.h3_slot])
        mask = self.residue_atom_mask(restype, has_prev, has_next)
        return atoms * mask.unsqueeze(0).unsqueeze(-1), mask

    @torch.jit.export
    def residue_atom_mask(self, restype: torch.Tensor, has_prev: torch.Tensor,
                          has_next: torch.Tensor) -> torch.Tensor:
        """[N, NUM_SLOTS] which slots exist, with terminal atoms (OXT, H1-3) switched on/off."""
        mask = self.atom_mask[restype].clone()
        nterm = (~has_prev).to(mask.dtype)
        cterm = (~has_next).to(mask.dtype)
        is_pro = (restype == self.pro_index).to(mask.dtype)
        mask[:, self.oxt_slot] = cterm
        mask[:, self.h_slot] = torch.maximum(mask[:, self.h_slot], nterm) * (1.0 - nterm * is_pro)
        mask[:, self.h2_slot] = nterm
        mask[:, self.h3_slot] = nterm
        return mask

    @torch.jit.export
    def place_sidechains(self, atoms: torch.Tensor, restype: torch.Tensor,
                         angles: torch.Tensor, slots: int = -1, first_group: int = 0,
                         last_group: int = -1) -> torch.Tensor:
        """Side-chain heavy atoms and hydrogens by rigid groups (AlphaFold-style): every atom has
        fixed coordinates in the frame of its group, the backbone frame at CA or the frame of a
        chi torsion rotated by that chi, so all residues and atoms of a group move at once.
        Same atoms as the z-matrix walk (:meth:`place_sidechains_zmatrix`).  ``slots`` > 0 places
        only the first ``slots`` slots (heavy atoms: ``NUM_HEAVY_SLOTS``) of ``atoms`` [B, N, slots, 3];
        ``first_group``/``last_group`` place only those groups (the others' atoms are kept: with
        the backbone fixed, the chi groups 1..MAX_CHI are all a torsion change moves)."""
        bsz, n = atoms.shape[0], atoms.shape[1]
        s = self.num_slots if slots <= 0 else slots
        group = self.sc_group[restype][:, :s]             # [N, S]
        local = self.sc_local[restype][:, :s]             # [N, S, 3]
        frame_atoms = self.group_frame_atoms[restype]     # [N, G, 3] slots (a, b, c)
        out = atoms
        last = self.num_groups - 1 if last_group < 0 else last_group
        for g in range(first_group, last + 1):
            sel = (group == g)
            idx = frame_atoms[:, g, :].view(1, n, 3, 1).expand(bsz, n, 3, 3)
            abc = torch.gather(out, 2, idx)
            rot = nerf_frame(abc[:, :, 0], abc[:, :, 1], abc[:, :, 2])      # [B, N, 3, 3]
            if 0 < g <= self.max_chi:
                cs = angles[:, :, 3 + g, 0].unsqueeze(-1)
                sn = angles[:, :, 3 + g, 1].unsqueeze(-1)
                m, nn_ = rot[..., 1], rot[..., 2]
                rot = torch.stack([rot[..., 0], cs * m + sn * nn_, cs * nn_ - sn * m], dim=-1)
            pos = abc[:, :, 2].unsqueeze(2) + torch.einsum("bnij,nsj->bnsi", rot, local)
            out = torch.where(sel.view(1, n, -1, 1), pos, out)
        return out

    @torch.jit.export
    def place_sidechains_zmatrix(self, atoms: torch.Tensor, restype: torch.Tensor,
                         angles: torch.Tensor) -> torch.Tensor:
        """Reference builder: walk the z-matrix atom by atom (NeRF).  :meth:`place_sidechains`
        gives the same atoms with rigid groups; this one defines what they must be."""
        bsz, n = atoms.shape[0], atoms.shape[1]
        chi = torch.atan2(angles[..., 4:, 1], angles[..., 4:, 0])  # [B, N, 4]
        refs = self.z_refs[restype]        # [N, steps, 3]
        target = self.z_target[restype]    # [N, steps]
        bond = self.z_bond[restype]
        bond_angle = self.z_angle[restype]
        torsion0 = self.z_torsion[restype]
        chi_index = self.z_chi[restype]
        valid = self.z_valid[restype]
        slot_ids = torch.arange(self.num_slots, device=atoms.device)
        for s in range(refs.shape[1]):
            if not bool(valid[:, s].any()):
                break
            idx = refs[:, s, :].unsqueeze(0).unsqueeze(-1).expand(bsz, n, 3, 3)
            ref_xyz = torch.gather(atoms, 2, idx)  # [B, N, 3, 3]
            ci = chi_index[:, s]
            chi_val = torch.gather(chi, 2, ci.clamp(min=0).view(1, n, 1).expand(bsz, n, 1)).squeeze(-1)
            tors = torsion0[:, s].unsqueeze(0) + chi_val * (ci >= 0).to(chi.dtype).unsqueeze(0)
            new = nerf(ref_xyz[:, :, 0], ref_xyz[:, :, 1], ref_xyz[:, :, 2], bond[:, s].unsqueeze(0).expand(bsz, n),
                       bond_angle[:, s].unsqueeze(0).expand(bsz, n), tors)
            write = (slot_ids.unsqueeze(0) == target[:, s].unsqueeze(1)) & (valid[:, s] > 0).unsqueeze(1)  # [N, S]
            atoms = torch.where(write.unsqueeze(0).unsqueeze(-1), new.unsqueeze(2), atoms)
        return atoms

    @torch.jit.export
    def angles_from_atoms(self, atoms: torch.Tensor, restype: torch.Tensor,
                          segment: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :func:`build_atoms`: the angles that best reproduce real atoms.

        Parameters
        ----------
        atoms : [B, N, NUM_SLOTS, 3] real positions (heavy atoms needed: N, CA, C, O, side chain).

        Returns
        -------
        angles : [B, N, NUM_ANGLES, 2] unit (cos, sin); mask : [N, NUM_ANGLES] which are defined.
        """
        n = atoms.shape[1]
        ca = atoms[:, :, 1]
        has_prev, has_next = segment_neighbours(segment)
        x, u, w, dist = peptide_axes(ca, segment)
        xy = self.peptide_template_xy(dist)
        # least-squares rotation of the template unit (C, O of i; N of i+1) about the Cα–Cα axis
        n_next = torch.cat([atoms[:, 1:, 0], atoms[:, -1:, 0]], dim=1)
        real = torch.stack([atoms[:, :, 2], atoms[:, :, 3], n_next], dim=2) - ca.unsqueeze(2)
        py = xy[..., 0:3, 1]
        ry = (real * u.unsqueeze(2)).sum(-1)
        rz = (real * w.unsqueeze(2)).sum(-1)
        theta = torch.atan2((py * rz).sum(-1), (py * ry).sum(-1))
        n_next_res = n_next
        psi = dihedral(atoms[:, :, 0], ca, atoms[:, :, 2], n_next_res)
        c_prev = torch.cat([atoms[:, :1, 2], atoms[:, :-1, 2]], dim=1)
        phi = dihedral(c_prev, atoms[:, :, 0], ca, atoms[:, :, 2])
        psi_c = dihedral(atoms[:, :, 0], ca, atoms[:, :, 2], atoms[:, :, 3]) - math.pi
        ca_idx = self.chi_atoms[restype]  # [N, 4, 4]
        bsz = atoms.shape[0]
        gathered = torch.gather(atoms, 2, ca_idx.view(1, n, 16, 1).expand(bsz, n, 16, 3)).view(bsz, n, 4, 4, 3)
        chi = dihedral(gathered[..., 0, :], gathered[..., 1, :], gathered[..., 2, :], gathered[..., 3, :])
        all_angles = torch.cat([theta.unsqueeze(-1), psi.unsqueeze(-1), phi.unsqueeze(-1), psi_c.unsqueeze(-1), chi], -1)
        out = torch.stack([torch.cos(all_angles), torch.sin(all_angles)], dim=-1)
        f = atoms.dtype
        mask = torch.cat([has_next.to(f).unsqueeze(-1), (~has_prev).to(f).unsqueeze(-1),
                          (~has_next).to(f).unsqueeze(-1), (~has_next).to(f).unsqueeze(-1),
                          self.chi_mask[restype]], dim=-1)
        return out, mask







# Module-level spellings of the builder methods, for Python callers.
def peptide_template_xy(tables: GeometryTables, dist: torch.Tensor) -> torch.Tensor:
    return tables.peptide_template_xy(dist)


def build_atoms(tables: GeometryTables, ca, restype, segment, angles):
    return tables.build_atoms(ca, restype, segment, angles)


def residue_atom_mask(tables: GeometryTables, restype, has_prev, has_next):
    return tables.residue_atom_mask(restype, has_prev, has_next)


def place_sidechains(tables: GeometryTables, atoms, restype, angles):
    return tables.place_sidechains(atoms, restype, angles)


def angles_from_atoms(tables: GeometryTables, atoms, restype, segment):
    return tables.angles_from_atoms(atoms, restype, segment)


def apply_rigid(rotation: torch.Tensor, translation: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply x -> R x + t; rotation [..., 3, 3], translation [..., 3], points [..., P, 3]."""
    return torch.einsum("...ij,...pj->...pi", rotation, points) + translation.unsqueeze(-2)


def invert_apply_rigid(rotation: torch.Tensor, translation: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Express points in the local frame: R^T (x - t)."""
    return torch.einsum("...ji,...pj->...pi", rotation, points - translation.unsqueeze(-2))


def chirality_ok(atoms: torch.Tensor, restype: torch.Tensor, gly_index: int = GLY_INDEX) -> torch.Tensor:
    """[B, N] True where Cα is L (improper N-C-CB about CA positive in the PDB sense); GLY True."""
    cb = atoms[:, :, 4]
    # signed volume of (N-CA, C-CA, CB-CA); L-amino acids give a positive value
    v = torch.cross(atoms[:, :, 0] - atoms[:, :, 1], atoms[:, :, 2] - atoms[:, :, 1], dim=-1)
    vol = (v * (cb - atoms[:, :, 1])).sum(-1)
    gly = (restype == gly_index).unsqueeze(0)
    return (vol > 0) | gly


def script_check() -> Dict[str, bool]:
    """Compile every model-facing function with TorchScript and check that each compiled
    version gives the eager numbers on random inputs (used by the tests)."""
    g = torch.Generator().manual_seed(0)

    def pts(*shape):
        return torch.randn(*shape, generator=g) * 3.0

    a, b, c, d = pts(5, 3), pts(5, 3), pts(5, 3), pts(5, 3)
    cases = [(normalize, (a,)), (dihedral, (a, b, c, d)), (angle, (a, b, c)),
             (nerf, (a, b, c, torch.full([5], 1.5), torch.full([5], 2.0), torch.full([5], 0.3))),
             (frames_from_three_points, (a, b, c)),
             (apply_rigid, (frames_from_three_points(a, b, c), b, pts(5, 4, 3))),
             (invert_apply_rigid, (frames_from_three_points(a, b, c), b, pts(5, 4, 3)))]
    out: Dict[str, bool] = {}
    for fn, args in cases:
        out[fn.__name__] = bool(torch.allclose(torch.jit.script(fn)(*args), fn(*args), atol=1e-5))
    segment = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    out["segment_neighbours"] = all(torch.equal(x, y) for x, y in zip(torch.jit.script(segment_neighbours)(segment),
                                                                      segment_neighbours(segment)))
    ca = torch.cumsum(pts(1, 7, 3), 1)
    out["peptide_axes"] = all(torch.allclose(x, y, atol=1e-5) for x, y in zip(
        torch.jit.script(peptide_axes)(ca, segment), peptide_axes(ca, segment)))
    tables = GeometryTables()
    scripted = torch.jit.script(GeometryTables())
    restype = torch.arange(7) % rc.NUM_RESTYPES
    angles = normalize(torch.randn(1, 7, NUM_ANGLES, 2, generator=g))
    atoms, mask = tables.build_atoms(ca, restype, segment, angles)
    atoms_s, mask_s = scripted.build_atoms(ca, restype, segment, angles)
    out["build_atoms"] = bool(torch.allclose(atoms, atoms_s, atol=1e-4) and torch.equal(mask, mask_s))
    ang, _ = tables.angles_from_atoms(atoms, restype, segment)
    out["angles_from_atoms"] = bool(torch.allclose(ang, scripted.angles_from_atoms(atoms, restype, segment)[0],
                                                   atol=1e-4))
    out["chirality_ok"] = bool(torch.equal(torch.jit.script(chirality_ok)(atoms, restype), chirality_ok(atoms, restype)))
    return out


def fit_angles(tables: GeometryTables, atoms: torch.Tensor, present: torch.Tensor, restype: torch.Tensor,
               segment: torch.Tensor, steps: int = 100, lr: float = 0.02) -> torch.Tensor:
    """Angles whose ideal-geometry rebuild best matches real atoms (least squares).

    Starts from :func:`angles_from_atoms` (which copies dihedrals) and refines all angles by
    gradient descent on the squared distance to the ``present`` heavy atoms; ideal bond
    angles differ from real ones, so copying dihedrals alone leaves lever-arm errors.
    """
    start, _ = angles_from_atoms(tables, atoms, restype, segment)
    param = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    w = present.clone()
    w[:, rc.NUM_HEAVY_SLOTS:] = 0.0
    for _ in range(steps):
        opt.zero_grad()
        built, _ = build_atoms(tables, atoms[:, :, 1], restype, segment, normalize(param))
        loss = (((built - atoms) ** 2).sum(-1) * w).sum()
        loss.backward()
        opt.step()
    return normalize(param.detach())
