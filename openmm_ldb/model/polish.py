"""Contacts pushed apart with bonds and angles kept: the backbone-aware clash relaxation of the
exported function (on by default) and the contact polish of docking snapshots (off by default).

The clash relaxation (a clash distance set) parts heavy atoms of different residues closer than
the clash distance and a margin after the side-chain steps, and lets the Cα of the residues in
contact move by at most ``ca_max_shift`` Å: on a compressed CG trace no side-chain turn parts two
backbones.  The contact polish is what follows.

A receptor preparation (Meeko for AutoDock Vina) rejects a structure with two atoms of different
residues, hydrogens included, within bonding distance (sum of covalent radii + 0.3 Å).  The rotamer
choice and the torsion relaxation move side chains only; what is left is mostly backbone against
backbone or CB, where a CG trace packs two strands or loops too tightly.  This step moves the atoms
of the residues involved (and their chain neighbours, so that peptide planes can turn) by
position-based dynamics: each step pushes the pairs that are too close apart, then projects the
atoms back onto their bonds and bond angles (1-2 and 1-3 distances, whole rings and peptide units
kept rigid) by a few Jacobi sweeps.  Its Cα never move.  Off by default (``polish_steps`` 0); a
:class:`~openmm_ldb.snapshots.SnapshotReporter` turns it on.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
from torch import nn

from .. import geometry as geo
from .. import residues as rc

# covalent radii (Å) for the bonding-distance test a receptor preparation applies
_RADII = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66, "S": 1.05}
# terminal atoms the internal-residue templates lack: (slot name, bonded to)
_TERMINAL_BONDS = (("OXT", "C"), ("H2", "N"), ("H3", "N"))
# pairs between residue i (first) and i + 1 (second) whose distances the peptide unit fixes
# (CA, CA: the unit's length, so that two Cα the clash relaxation moves stay a peptide apart)
_PEPTIDE_PAIRS = (("C", "N"), ("CA", "N"), ("O", "N"), ("C", "CA"), ("C", "H"), ("C", "CD"), ("O", "H"),
                  ("O", "CA"), ("CA", "H"), ("O", "CD"), ("CA", "CD"), ("CA", "CA"))


def _ring_atoms(bonds: list) -> set:
    """Atoms on a cycle of the bond graph (an edge is on a cycle when its ends stay connected
    without it)."""
    out = set()
    for a, b in bonds:
        if b in rc.bond_path_lengths([e for e in bonds if e != (a, b)], a):
            out.update((a, b))
    return out


def polish_tables() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(intra [R, P, 2] slot pairs whose distance is kept (-1 padded), peptide [Q, 2] slot pairs
    between consecutive residues, radius [R, S] covalent radius of every slot (0: no atom),
    bonds_to [R, 3, S] bonds from C, N and SG to each slot (99: none))."""
    s = rc.NUM_SLOTS
    pairs: List[List[Tuple[int, int]]] = []
    radius = np.zeros((rc.NUM_RESTYPES, s), dtype=np.float32)
    bonds_to = np.full((rc.NUM_RESTYPES, 3, s), 99, dtype=np.int64)
    for r, name in enumerate(rc.RESTYPES_3):
        slots = {a: i for i, a in enumerate(rc.slot_names(name)) if a}
        bonds = [b for b in rc.residue_bonds(name, hydrogens=True) if b[0] in slots and b[1] in slots]
        bonds += [(a, b) for a, b in _TERMINAL_BONDS if a in slots and b in slots]
        if "H" in slots and ("H", "N") not in bonds and ("N", "H") not in bonds:
            bonds.append(("H", "N"))
        ring = _ring_atoms(bonds)
        keep = set()
        for a in slots:
            for b, d in rc.bond_path_lengths(bonds, a).items():
                # 1-2 and 1-3 everywhere; any pair within a ring system (kept flat and rigid)
                if a < b and (d in (1, 2) or (a in ring and b in ring and d > 0)):
                    keep.add((slots[a], slots[b]))
        pairs.append(sorted(keep))
        for a, i in slots.items():
            radius[r, i] = _RADII[rc.element_of(a)]
        for k, root in enumerate(("C", "N", "SG")):
            if root not in slots:
                continue
            dist = rc.bond_path_lengths(bonds, root)
            for a, d in dist.items():
                bonds_to[r, k, slots[a]] = d
    width = max(len(p) for p in pairs)
    intra = np.full((rc.NUM_RESTYPES, width, 2), -1, dtype=np.int64)
    for r, p in enumerate(pairs):
        intra[r, :len(p)] = p
    names = rc.slot_names("ALA")
    pro = rc.slot_names("PRO")
    peptide = np.array([(names.index(a), (pro if b == "CD" else names).index(b)) for a, b in _PEPTIDE_PAIRS],
                       dtype=np.int64)
    return intra, peptide, radius, bonds_to


class ContactPolish(nn.Module):
    """Atoms of different residues (more than three bonds apart) pushed apart, bonds and angles
    kept; see the module docstring.

    Two uses share this step.  The contact polish (``clash_distance`` 0): every atom, hydrogens
    included, out of bonding distance (covalent radii + 0.3 Å + ``margin``), Cα fixed.  The
    backbone-aware clash relaxation (``clash_distance`` > 0): heavy atoms only, out of
    ``clash_distance + margin``, and the Cα of the residues in contact may move too, at most
    ``ca_max_shift`` Å (``ca_weight`` is their inverse mass against 1 for other atoms): on a
    compressed CG trace no side-chain turn can part two backbones.  Each of ``steps`` steps pushes
    the close pairs apart and projects onto the kept distances (``sweeps`` Jacobi sweeps); then
    ``end_steps`` more steps only project; each ends with the Cα clamped to their bound (a last
    projection with the clamped Cα held, measured on soft-bond Go frames, gave no more valid bonds
    and brought contacts back).
    """

    def __init__(self, steps: int, margin: float, neighbours: int, sweeps: int = 4, clash_distance: float = 0.0,
                 ca_max_shift: float = 0.0, ca_weight: float = 1.0, end_steps: int = 8):
        super().__init__()
        intra, peptide, radius, bonds_to = polish_tables()
        self.register_buffer("bonds_to", torch.as_tensor(bonds_to))
        self.register_buffer("intra", torch.as_tensor(intra))
        self.register_buffer("peptide", torch.as_tensor(peptide))
        self.register_buffer("radius", torch.as_tensor(radius))
        self.register_buffer("heavy", torch.as_tensor(np.array([[rc.element_of(a) != "H" if a else False
                                                                  for a in rc.slot_names(r)] for r in rc.RESTYPES_3])))
        self.steps = int(steps)
        self.margin = float(margin)
        self.neighbours = int(neighbours)
        self.sweeps = int(sweeps)
        self.clash_distance = float(clash_distance)
        self.ca_max_shift = float(ca_max_shift)
        self.ca_weight = float(ca_weight)
        self.end_steps = int(end_steps)
        # slots the screen looks at: heavy atoms and OXT (the first slots) for the clash relaxation
        self.screened = rc.NUM_HEAVY_SLOTS + 1 if self.clash_distance > 0.0 else rc.NUM_SLOTS
        self.ca = rc.slot_names("ALA").index("CA")
        self.sg = rc.slot_names("CYS").index("SG")
        self.cb = rc.slot_names("CYS").index("CB")
        self.pro = rc.RESTYPE_INDEX["PRO"]
        self.pro_cd = rc.slot_names("PRO").index("CD")

    def forward(self, atoms: torch.Tensor, restype: torch.Tensor, segment: torch.Tensor, atom_mask: torch.Tensor,
                disulfides: torch.Tensor, keep_ca: bool = False) -> torch.Tensor:
        m, n, s = atoms.shape[0], atoms.shape[1], atoms.shape[2]
        if self.steps <= 0 or n < 3:
            return atoms
        dev = atoms.device
        kk = geo.at_most(self.neighbours, n - 1)
        # neighbours by the centre of each residue's atoms (side chains reach past Cα distance)
        centre = (atoms * atom_mask.view(1, n, s, 1)).sum(2) / atom_mask.sum(-1).clamp(min=1.0).view(1, n, 1)
        nb = geo.nearest_points(centre, centre, kk + 1)                         # [M, N, K+1]
        pos = torch.arange(n, device=dev)
        exists = atom_mask > 0
        # the screen: atoms of each residue against those of its neighbours (heavy atoms and OXT
        # only, the first slots, for the clash relaxation), squared distances
        hs = self.screened
        exists_p = exists[:, :hs] & self.heavy[restype][:, :hs] if self.clash_distance > 0.0 else exists[:, :hs]
        sub = atoms[:, :, :hs]
        other = sub[torch.arange(m, device=dev).view(m, 1, 1), nb]              # [M, N, K+1, H, 3]
        v = sub.reshape(m, n, 1, hs, 1, 3) - other.reshape(m, n, kk + 1, 1, hs, 3)
        d2 = (v * v).sum(-1)                                                     # [M, N, K+1, H, H]
        if self.clash_distance > 0.0:
            reach = torch.full([1, 1, 1, 1, 1], self.clash_distance + self.margin + 1.0, device=dev,
                               dtype=atoms.dtype)
        else:
            # the receptor preparation's test (covalent radii + 0.3 Å) and a margin for a clean result
            rad = (self.radius[restype] * atom_mask)[:, :hs]                    # [N, H]
            reach = rad.view(1, n, 1, hs, 1) + rad[nb].view(m, n, kk + 1, 1, hs) + 1.3 + self.margin
        # pairs watched while atoms move: those within 1 Å of the limit too (a push elsewhere can
        # bring them together)
        watch = exists_p.view(1, n, 1, hs, 1) & exists_p[nb].view(m, n, kk + 1, 1, hs) & \
            (nb != pos.view(1, n, 1)).view(m, n, kk + 1, 1, 1) & (d2 < reach * reach)
        hit = torch.nonzero(watch)                                               # [P, 5] m, i, k, a, b
        pm, pi, pa, pb = hit[:, 0], hit[:, 1], hit[:, 3], hit[:, 4]
        pj = nb[pm, pi, hit[:, 2]]
        far = self._bond_path(pi, pj, pa, pb, restype, segment, disulfides) > 3
        pm, pi, pj, pa, pb = pm[far], pi[far], pj[far], pa[far], pb[far]
        if self.clash_distance > 0.0:
            p_lim = torch.full(pm.shape, self.clash_distance + self.margin, device=dev, dtype=atoms.dtype)
        else:
            p_lim = self.radius[restype[pi], pa] + self.radius[restype[pj], pb] + 0.3 + self.margin
        vp = atoms[pm, pi, pa] - atoms[pm, pj, pb]
        close = (vp * vp).sum(-1) < p_lim * p_lim
        has_prev, has_next = geo.segment_neighbours(segment)
        if not geo.exporting() and not bool(close.any()):
            return atoms
        # residues in contact and their chain neighbours move (a peptide plane needs both ends)
        moving = torch.zeros(m, n, dtype=torch.bool, device=dev)
        moving[pm[close], pi[close]] = True
        moving[pm[close], pj[close]] = True
        # (shifted copies, not ``grow[:, 1:] |= ...``: TorchScript drops an in-place update of a slice)
        none = torch.zeros_like(moving[:, :1])
        grow = moving | (torch.cat([none, moving[:, :-1]], 1) & has_prev.view(1, -1)) | \
            (torch.cat([moving[:, 1:], none], 1) & has_next.view(1, -1))
        free = (grow.view(m, n, 1) & exists.view(1, n, s)).clone()
        inv = free.to(atoms.dtype)                                               # inverse mass: 0 = fixed
        if self.ca_max_shift > 0.0 and not keep_ca:
            inv[:, :, self.ca] = moving.to(atoms.dtype) * self.ca_weight
        else:
            inv[:, :, self.ca] = 0.0
        rr = self._kept_distances(restype, disulfides, exists, has_next)
        keep_r = ((inv[:, rr[:, 0], rr[:, 1]] > 0) | (inv[:, rr[:, 2], rr[:, 3]] > 0)).any(0)
        rr = rr[keep_r]
        x0 = atoms[:, rr[:, 0], rr[:, 1]] - atoms[:, rr[:, 2], rr[:, 3]]
        d_keep = torch.sqrt((x0 * x0).sum(-1) + 1e-12).reshape(-1)               # [M * R]
        x = atoms.contiguous().clone()
        flat = x.reshape(m * n * s, 3)
        ca0 = x[:, :, self.ca].clone()
        idx_a = (torch.arange(m, device=dev).view(m, 1) * n + rr[:, 0].view(1, -1)) * s + rr[:, 1].view(1, -1)
        idx_b = (torch.arange(m, device=dev).view(m, 1) * n + rr[:, 2].view(1, -1)) * s + rr[:, 3].view(1, -1)
        idx_a, idx_b = idx_a.reshape(-1), idx_b.reshape(-1)
        pidx_a = (pm * n + pi) * s + pa
        pidx_b = (pm * n + pj) * s + pb
        inv_f = inv.reshape(-1)
        pw_a, pw_b = inv_f[pidx_a], inv_f[pidx_b]
        pw_sum = (pw_a + pw_b).clamp(min=1e-6)
        # Jacobi: an atom's corrections are averaged over the distances it takes part in
        count = torch.zeros(m * n * s, device=dev, dtype=atoms.dtype)
        count = count.index_add(0, idx_a, torch.ones_like(idx_a, dtype=atoms.dtype))
        count = count.index_add(0, idx_b, torch.ones_like(idx_b, dtype=atoms.dtype))
        share = (1.0 / count.clamp(min=1.0)).unsqueeze(-1)
        w_a, w_b = inv_f[idx_a], inv_f[idx_b]
        w_sum = (w_a + w_b).clamp(min=1e-6)
        for step in range(self.steps + self.end_steps):
            if step < self.steps:
                # push: each close pair moved apart to its limit, split by the inverse masses
                vp = flat[pidx_a] - flat[pidx_b]
                dp = torch.sqrt((vp * vp).sum(-1) + 1e-12)
                corr = (torch.relu(p_lim - dp) / dp).unsqueeze(-1) * vp * 0.5
                delta = torch.zeros_like(flat)
                delta = delta.index_add(0, pidx_a, corr * (pw_a / pw_sum).unsqueeze(-1))
                delta = delta.index_add(0, pidx_b, -corr * (pw_b / pw_sum).unsqueeze(-1))
                flat = flat + delta
            # then the kept distances again (the last end_steps steps only these, so bonds and
            # angles are exact; a pair that cannot part without bending them comes back: 1 of 20
            # snapshots of four proteins in benchmarks/meeko_check.py)
            for _ in range(self.sweeps):
                # project: Jacobi sweep over the kept distances, under-relaxed
                vr = flat[idx_a] - flat[idx_b]
                dr = torch.sqrt((vr * vr).sum(-1) + 1e-12)
                corr = ((dr - d_keep) / dr).unsqueeze(-1) * vr
                delta = torch.zeros_like(flat)
                delta = delta.index_add(0, idx_a, -corr * (w_a / w_sum).reshape(-1, 1))
                delta = delta.index_add(0, idx_b, corr * (w_b / w_sum).reshape(-1, 1))
                flat = flat + delta * share
            if self.ca_max_shift > 0.0:
                # a Cα moves at most ca_max_shift from where the steps found it (Cα stay free in
                # the last steps too: held there, Cα the clamp stopped left more bonds stretched)
                xv = flat.view(m, n, s, 3)
                dca = xv[:, :, self.ca] - ca0
                norm = torch.sqrt((dca * dca).sum(-1, keepdim=True) + 1e-12)
                ca_new = ca0 + dca * (self.ca_max_shift / norm).clamp(max=1.0)
                xv = torch.cat([xv[:, :, :self.ca], ca_new.unsqueeze(2), xv[:, :, self.ca + 1:]], 2)
                flat = xv.reshape(m * n * s, 3)
        return flat.view(m, n, s, 3) * atom_mask.view(1, n, s, 1)

    def _bond_path(self, i: torch.Tensor, j: torch.Tensor, a: torch.Tensor, b: torch.Tensor, restype: torch.Tensor,
                   segment: torch.Tensor, disulfides: torch.Tensor) -> torch.Tensor:
        """Bonds between atom slot ``a`` of residue ``i`` and slot ``b`` of residue ``j`` (pairs,
        i != j; 99: not bonded within reach): pairs three bonds or fewer apart never count, across
        the peptide bond (residues i and i + 1 of one segment) and across a disulfide."""
        bt = self.bonds_to                                                       # [R, 3, S]
        ti, tj = restype[i], restype[j]
        same_seg = segment[i] == segment[j]
        path = torch.full(i.shape, 99, dtype=torch.long, device=i.device)
        path = torch.where((j == i + 1) & same_seg, bt[ti, 0, a] + 1 + bt[tj, 1, b], path)
        path = torch.where((j == i - 1) & same_seg, bt[ti, 1, a] + 1 + bt[tj, 0, b], path)
        partner = torch.full([restype.shape[0]], -1, dtype=torch.long, device=i.device)
        partner[disulfides[:, 0]] = disulfides[:, 1]
        partner[disulfides[:, 1]] = disulfides[:, 0]
        return torch.where(partner[i] == j, bt[ti, 2, a] + 1 + bt[tj, 2, b], path)

    def _kept_distances(self, restype: torch.Tensor, disulfides: torch.Tensor, exists: torch.Tensor,
                        has_next: torch.Tensor) -> torch.Tensor:
        """[R, 4] (residue, slot, residue, slot) whose distances the steps keep: 1-2, 1-3 and
        rings inside residues, the peptide units, the disulfides."""
        n = restype.shape[0]
        pos = torch.arange(n, device=restype.device)
        r_idx: List[torch.Tensor] = []
        intra = self.intra[restype]                                              # [N, P, 2]
        # only atoms the residue has (an internal residue's OXT and H2/H3 slots hold no atom)
        has = (intra[..., 0] >= 0) & exists.gather(1, intra[..., 0].clamp(min=0)) & \
            exists.gather(1, intra[..., 1].clamp(min=0))
        ri = pos.view(n, 1).expand_as(has)[has]
        r_idx.append(torch.stack([ri, intra[..., 0][has], ri, intra[..., 1][has]], -1))
        pep = self.peptide
        q = pep.shape[0]
        # every residue but the last, masked (no branch on the data: torch.export keeps it)
        a_i = pos[:-1].view(-1, 1).expand(n - 1, q).reshape(-1)
        sa = pep[:, 0].view(1, q).expand(n - 1, q).reshape(-1)
        sb = pep[:, 1].view(1, q).expand(n - 1, q).reshape(-1)
        # the pairs with CD belong to a proline's peptide unit only (other residues have
        # side-chain atoms in that slot)
        ok = has_next[a_i] & exists[a_i, sa] & exists[a_i + 1, sb] & \
            ((sb != self.pro_cd) | (restype[a_i + 1] == self.pro))
        r_idx.append(torch.stack([a_i[ok], sa[ok], a_i[ok] + 1, sb[ok]], -1))
        x, y = disulfides[:, 0], disulfides[:, 1]
        sg = torch.full_like(x, self.sg)
        cb = torch.full_like(x, self.cb)
        r_idx.append(torch.stack([torch.cat([x, x, y]), torch.cat([sg, sg, sg]), torch.cat([y, y, x]),
                                  torch.cat([sg, cb, cb])], -1))
        return torch.cat(r_idx, 0)
