"""The whole LDB model: training losses for both stages, and the scriptable sampler."""

from __future__ import annotations

from dataclasses import asdict, dataclass
import math
from typing import Dict, List, Tuple

import torch
from torch import nn

from .. import geometry as geo
from .. import residues as rc
from .decoder import Decoder
from .denoiser import Denoiser
from .diffusion import alpha_bar, hash_normal
from .encoder import Encoder, encoder_inputs
from .quantizer import VectorQuantizer
from .trunk import Graph


@dataclass
class LDBConfig:
    k: int = 16
    hidden: int = 96
    encoder_layers: int = 2
    decoder_layers: int = 3
    denoiser_layers: int = 4
    latent_dim: int = 4
    num_codes: int = 2048
    commitment: float = 0.25
    coord_weight: float = 0.5
    angle_weight: float = 1.0
    clash_weight: float = 0.5
    ring_weight: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


class LDBModel(nn.Module):
    """VQ-VAE (encoder, codebook, decoder) and latent denoiser, trained jointly: the denoiser
    learns the stop-gradient pre-quantisation latents, z-scored with running statistics."""

    def __init__(self, config: LDBConfig):
        super().__init__()
        self.config = config
        c = config
        self.graph = Graph(c.k)
        self.tables = geo.GeometryTables()
        self.encoder = Encoder(c.hidden, c.encoder_layers, c.latent_dim)
        self.quantizer = VectorQuantizer(c.num_codes, c.latent_dim)
        self.decoder = Decoder(c.hidden, c.decoder_layers, c.latent_dim)
        self.denoiser = Denoiser(c.hidden, c.denoiser_layers, c.latent_dim)
        self.register_buffer("latent_mean", torch.zeros(c.latent_dim))
        self.register_buffer("latent_std", torch.ones(c.latent_dim))

    # ---------------------------------------------------------------- training
    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Training losses of a batch (DistributedDataParallel calls forward)."""
        return self.losses(batch)

    def losses(self, batch: Dict[str, torch.Tensor], train_diffusion: bool = True) -> Dict[str, torch.Tensor]:
        ca = batch["ca"]                  # [B, N, 3] (possibly noised input)
        atoms = batch["atoms"]            # [B, N, 15, 3] true heavy atoms + OXT
        present = batch["present"]        # [B, N, 15]
        restype = batch["restype"]        # [B, N]
        segment = batch["segment"]        # [B, N] (padding residues get their own ids)
        mask = batch["mask"]              # [B, N]
        out: Dict[str, torch.Tensor] = {}
        node, edge, rel, idx, valid, rot = self._graph_batch(ca, segment, mask)
        true_full = torch.zeros(atoms.shape[0], atoms.shape[1], rc.NUM_SLOTS, 3, dtype=atoms.dtype)
        true_full[:, :, : atoms.shape[2]] = atoms
        angles, angle_mask = self._true_angles(true_full, restype, segment)
        angle_mask = angle_mask * self._angle_present(present, restype, segment) * mask.unsqueeze(-1)
        extra = encoder_inputs(true_full, _pad_slots(present), angles, angle_mask, rot)
        z = self.encoder(node, edge, rel, idx, valid, restype, mask, extra)
        zq, codes, commit = self.quantizer(z, mask)
        pred = self.decoder(node, edge, rel, idx, valid, restype, mask, zq)
        out["commit"] = commit
        out["angle"] = angle_loss(pred, angles, angle_mask, restype, self.tables)
        out["coord"], out["rmsd"], built = self._coord_loss(pred, ca, true_full, present, restype, segment, mask)
        out["clash"] = clash_loss(built, restype, idx, valid, mask, self.tables)
        out["ring"] = proline_ring_loss(built, restype, mask)
        loss = self.config.angle_weight * out["angle"] + self.config.coord_weight * out["coord"] + \
            self.config.commitment * commit + self.config.clash_weight * out["clash"] + \
            self.config.ring_weight * out["ring"]
        if train_diffusion:
            with torch.no_grad():
                m = mask.unsqueeze(-1)
                cnt = m.sum().clamp(min=1.0)
                mean = (z * m).sum((0, 1)) / cnt
                std = torch.sqrt((((z - mean) ** 2) * m).sum((0, 1)) / cnt + 1e-6)
                if self.training:
                    self.latent_mean.lerp_(mean, 0.01)
                    self.latent_std.lerp_(std, 0.01)
            z0 = ((z.detach() - self.latent_mean) / self.latent_std)
            t = torch.rand(z0.shape[0], device=z0.device)
            ab = alpha_bar(t).view(-1, 1, 1)
            noise = torch.randn_like(z0)
            zt = torch.sqrt(ab) * z0 + torch.sqrt(1 - ab) * noise
            x0 = self.denoiser(node, edge, rel, idx, valid, restype, mask, zt, t)
            m = mask.unsqueeze(-1)
            out["diffusion"] = (((x0 - z0) ** 2) * m).sum() / (m.sum() * z0.shape[-1]).clamp(min=1.0)
            loss = loss + out["diffusion"]
        out["loss"] = loss
        out["codes"] = codes
        return out

    def _graph_batch(self, ca, segment, mask):
        # the geometry helpers take one segment vector; batches of different chains are
        # handled chain by chain for node features and jointly for the graph
        nodes, rots = [], []
        from .features import edge_geometry, knn_graph, node_geometry
        for b in range(ca.shape[0]):
            nd, rt = node_geometry(ca[b:b + 1], segment[b])
            nodes.append(nd)
            rots.append(rt)
        node = torch.cat(nodes) * mask.unsqueeze(-1)
        rot = torch.cat(rots)
        idx, valid = knn_graph(ca, mask, self.config.k)
        edges, rels = [], []
        for b in range(ca.shape[0]):
            e, r = edge_geometry(ca[b:b + 1], rot[b:b + 1], segment[b], idx[b:b + 1])
            edges.append(e)
            rels.append(r)
        return node, torch.cat(edges), torch.cat(rels), idx, valid, rot

    def _true_angles(self, atoms, restype, segment):
        angs, masks = [], []
        for b in range(atoms.shape[0]):
            a, m = geo.angles_from_atoms(self.tables, atoms[b:b + 1], restype[b], segment[b])
            angs.append(a)
            masks.append(m)
        return torch.cat(angs), torch.stack(masks)

    def _angle_present(self, present, restype, segment):
        """Angles are only targets where every atom defining them is in the file."""
        pres = _pad_slots(present)
        chi_atoms = self.tables.chi_atoms[restype]  # [B, N, 4, 4]
        b, n = restype.shape
        got = torch.gather(pres, 2, chi_atoms.view(b, n, 16)).view(b, n, 4, 4).prod(-1)
        bb = pres[:, :, :4].prod(-1)
        nxt = torch.cat([bb[:, 1:], bb[:, -1:]], dim=1)
        prv = torch.cat([bb[:, :1], bb[:, :-1]], dim=1)
        cterm = bb * pres[:, :, rc.OXT_SLOT].clamp(min=0)  # O is enough for psi_cterm
        return torch.cat([(bb * nxt).unsqueeze(-1), (bb * nxt).unsqueeze(-1), (bb * prv).unsqueeze(-1),
                          bb.unsqueeze(-1), got], dim=-1) * torch.ones_like(cterm).unsqueeze(-1)

    def _coord_loss(self, pred, ca, true_full, present, restype, segment, mask):
        builts = []
        for b in range(ca.shape[0]):
            atoms, _ = geo.build_atoms(self.tables, ca[b:b + 1], restype[b], segment[b], pred[b:b + 1])
            builts.append(atoms)
        built = torch.cat(builts)[:, :, : present.shape[2]]
        true = true_full[:, :, : present.shape[2]]
        w = present * mask.unsqueeze(-1)
        d2 = ((built - true) ** 2).sum(-1)
        perm = self.tables.symmetric_swap[restype][:, :, : present.shape[2]]
        true_sw = torch.gather(true, 2, perm.unsqueeze(-1).expand(-1, -1, -1, 3))
        w_sw = torch.gather(w, 2, perm)
        d2_sw = ((built - true_sw) ** 2).sum(-1)
        res = (d2 * w).sum(-1)
        res_sw = (d2_sw * w_sw).sum(-1)
        use_sw = (res_sw < res).unsqueeze(-1)
        d2 = torch.where(use_sw, d2_sw, d2)
        w = torch.where(use_sw, w_sw, w)
        dist = torch.sqrt(d2 + 1e-4).clamp(max=10.0)
        loss = (dist * w).sum() / w.sum().clamp(min=1.0)
        rmsd = torch.sqrt((d2.detach() * w).sum() / w.sum().clamp(min=1.0))
        return loss, rmsd, built


def clash_loss(built: torch.Tensor, restype: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor,
               mask: torch.Tensor, tables: geo.GeometryTables, cutoff: float = 2.8, k_clash: int = 8) -> torch.Tensor:
    """Hinge on heavy-atom pairs of graph-neighbour residues closer than ``cutoff`` Å.

    Residues i and i±1 are skipped (bonded backbone atoms sit closer than any cutoff); the
    k-nearest-neighbour graph keeps the cost linear in residues.
    """
    b, n, s, _ = built.shape
    idx = idx[..., :k_clash]
    valid = valid[..., :k_clash]
    k = idx.shape[-1]
    am = tables.atom_mask[restype][:, :, :s] * mask.unsqueeze(-1)     # [B, N, S]
    am[:, :, rc.OXT_SLOT:] = 0.0
    flat = built.reshape(b, n, s * 3)
    nb = torch.gather(flat, 1, idx.reshape(b, n * k, 1).expand(b, n * k, s * 3)).view(b, n, k, s, 3)
    nb_mask = torch.gather(am, 1, idx.reshape(b, n * k, 1).expand(b, n * k, s)).view(b, n, k, s)
    pos = torch.arange(n, device=built.device).view(1, n, 1)
    far = ((idx - pos).abs() > 1).to(built.dtype) * valid               # [B, N, K]
    own = built.unsqueeze(2).expand(b, n, k, s, 3).reshape(b * n * k, s, 3)
    d = torch.cdist(own, nb.reshape(b * n * k, s, 3)).view(b, n, k, s, s)
    pair = am.unsqueeze(2).unsqueeze(4) * nb_mask.unsqueeze(3) * far.unsqueeze(-1).unsqueeze(-1)
    viol = torch.relu(cutoff - d) ** 2 * pair
    return viol.sum() / mask.sum().clamp(min=1.0)


def proline_ring_loss(built: torch.Tensor, restype: torch.Tensor, mask: torch.Tensor,
                      bond: float = 1.473) -> torch.Tensor:
    """PRO's CD–N bond closes the ring; the z-matrix does not enforce it, this loss does."""
    pro = (restype == rc.RESTYPE_INDEX["PRO"]).to(built.dtype) * mask
    cd = rc.slot_names("PRO").index("CD")
    d = torch.sqrt(((built[:, :, cd] - built[:, :, 0]) ** 2).sum(-1) + 1e-6)
    return (((d - bond) ** 2) * pro).sum() / pro.sum().clamp(min=1.0)


def _pad_slots(present: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(present.shape[0], present.shape[1], rc.NUM_SLOTS, dtype=present.dtype, device=present.device)
    out[:, :, : present.shape[2]] = present
    return out


def angle_loss(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor, restype: torch.Tensor,
               tables: geo.GeometryTables) -> torch.Tensor:
    """Chord distance between unit (cos, sin) pairs; pi-periodic chis take the closer image."""
    d = ((pred - true) ** 2).sum(-1)
    d_flip = ((pred + true) ** 2).sum(-1)
    pi_per = torch.zeros_like(mask)
    pi_per[..., geo.CHI0:] = tables.chi_pi_periodic[restype]
    d = torch.where(pi_per > 0, torch.minimum(d, d_flip), d)
    return (d * mask).sum() / mask.sum().clamp(min=1.0)


class Sampler(nn.Module):
    """Cα trace + sequence -> all-atom ensembles; the exported (TorchScript) entry point.

    ``forward(ca [B, N, 3] Å, restype [N], segment [N], steps, samples, seed, deterministic)``
    returns ``(atoms [B, S, N, NUM_SLOTS, 3] Å, atom_mask [N, NUM_SLOTS])``.
    """

    def __init__(self, model: LDBModel):
        super().__init__()
        self.graph = model.graph
        self.tables = model.tables
        self.quantizer = model.quantizer
        self.decoder = model.decoder
        self.denoiser = model.denoiser
        self.register_buffer("latent_mean", model.latent_mean.clone())
        self.register_buffer("latent_std", model.latent_std.clone())
        self.latent_dim = int(model.config.latent_dim)
        self.bond_sg_sg = float(rc.BOND_SG_SG)
        self.disulfide_ca_max = float(rc.DISULFIDE_CA_CA_MAX)
        self.cys = int(rc.RESTYPE_INDEX["CYS"])
        self.repack_sweeps = 3
        # samples decode the nearest codebook entry (discrete states, as the VQ-VAE was trained);
        # the deterministic best guess decodes the continuous denoised latent, which measured
        # closer to the reference (it stays near the posterior mean)
        self.snap_to_codes = True
        self.repack_cutoff = 3.0
        self.repack_penalty = 1.5
        # (chi1, chi2, chi3) rotations tried for clashing side chains, degrees
        self.register_buffer("repack_offsets", torch.tensor(
            [[0.0, 0.0, 0.0], [120.0, 0.0, 0.0], [-120.0, 0.0, 0.0], [0.0, 120.0, 0.0], [0.0, -120.0, 0.0],
             [0.0, 0.0, 120.0], [0.0, 0.0, -120.0]]) * (math.pi / 180.0))
        self.repack_neighbours = 16
        self.register_buffer("heavy_mask", torch.as_tensor(rc.heavy_mask_array()))

    def forward(self, ca: torch.Tensor, restype: torch.Tensor, segment: torch.Tensor, steps: int = 10,
                samples: int = 1, seed: int = 0, deterministic: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        bsz, n = ca.shape[0], ca.shape[1]
        x = ca.unsqueeze(1).expand(bsz, samples, n, 3).reshape(bsz * samples, n, 3)
        mask = torch.ones(bsz * samples, n, device=ca.device, dtype=ca.dtype)
        rt = restype.unsqueeze(0).expand(bsz * samples, n)
        node, edge, rel, idx, valid, rot = self.graph(x, segment, mask)
        shape = [bsz * samples, n, self.latent_dim]
        if deterministic:
            z = torch.zeros(shape, device=ca.device, dtype=ca.dtype)
        else:
            z = hash_normal(shape, seed, 0, ca.device).to(ca.dtype)
        steps = max(int(steps), 1)
        for s in range(steps):
            t_now = 1.0 - s / steps
            t_next = 1.0 - (s + 1) / steps
            tt = torch.full([bsz * samples], t_now, device=ca.device, dtype=ca.dtype)
            ab_now = alpha_bar(tt).view(-1, 1, 1)
            ab_next = alpha_bar(torch.full([bsz * samples], t_next, device=ca.device, dtype=ca.dtype)).view(-1, 1, 1)
            x0 = self.denoiser(node, edge, rel, idx, valid, rt, mask, z, tt)
            if s == steps - 1:
                z = x0
            else:
                eps = (z - torch.sqrt(ab_now) * x0) / torch.sqrt(1.0 - ab_now)
                z = torch.sqrt(ab_next) * x0 + torch.sqrt(1.0 - ab_next) * eps
        latent = z * self.latent_std + self.latent_mean
        zq = self.choose_latent(latent, deterministic, seed)
        angles = self.decoder(node, edge, rel, idx, valid, rt, mask, zq)
        atoms, atom_mask = self.tables.build_atoms(x, restype, segment, angles)
        if self.repack_sweeps > 0:
            atoms = self.repack(atoms, angles, restype, idx, atom_mask)
        return atoms.view(bsz, samples, n, atoms.shape[-2], 3), atom_mask

    def choose_latent(self, latent: torch.Tensor, deterministic: bool, seed: int) -> torch.Tensor:
        """The latent the decoder reads: nearest code for samples, the continuous one for the best
        guess (``seed`` is unused here; the torch.export version reads the mode from it)."""
        if self.snap_to_codes and not deterministic:
            return self.quantizer.lookup(self.quantizer.nearest(latent))
        return latent

    def residue_clash(self, cand: torch.Tensor, atoms: torch.Tensor, restype: torch.Tensor,
                      idx: torch.Tensor) -> torch.Tensor:
        """[B, N] clash score of each residue's side chain (candidate positions ``cand``) against
        the heavy atoms of its graph neighbours (current ``atoms``), residues i±1 excluded."""
        b, n = cand.shape[0], cand.shape[1]
        k = min(self.repack_neighbours, idx.shape[-1])
        nb_idx = idx[..., :k]
        heavy = self.heavy_mask[restype]                     # [N, 30]
        sc = heavy.clone()
        sc[:, :5] = 0.0                                       # side chain beyond CB
        s = 14
        flat = atoms[:, :, :s].reshape(b, n, s * 3)
        nb = torch.gather(flat, 1, nb_idx.reshape(b, n * k, 1).expand(b, n * k, s * 3)).view(b * n * k, s, 3)
        own = cand[:, :, :s].unsqueeze(2).expand(b, n, k, s, 3).reshape(b * n * k, s, 3)
        d = torch.cdist(own, nb).view(b, n, k, s, s)
        nb_heavy = heavy[:, :s][nb_idx.reshape(-1)].view(b, n, k, s)
        pos = torch.arange(n, device=cand.device).view(1, n, 1)
        far = ((nb_idx - pos).abs() > 1).to(cand.dtype)
        w = sc[:, :s].view(1, n, 1, s, 1) * nb_heavy.unsqueeze(3) * far.unsqueeze(-1).unsqueeze(-1)
        return (torch.relu(self.repack_cutoff - d) ** 2 * w).sum((2, 3, 4))

    def repack(self, atoms: torch.Tensor, angles: torch.Tensor, restype: torch.Tensor, idx: torch.Tensor,
               atom_mask: torch.Tensor) -> torch.Tensor:
        """Greedy side-chain repacking: residues whose side chains overlap a neighbour try chi1/chi2
        rotations of +-120 degrees and keep the least-clashing one (a small penalty favours the
        model's own choice).  Sweeps update every third residue at a time, so two clashing
        neighbours rarely move together."""
        b, n = atoms.shape[0], atoms.shape[1]
        ncand = self.repack_offsets.shape[0]
        cur_angles = angles
        pos = torch.arange(n, device=atoms.device)
        for sweep in range(self.repack_sweeps):
            scores: List[torch.Tensor] = []
            cands: List[torch.Tensor] = []
            cand_angles: List[torch.Tensor] = []
            for c in range(ncand):
                off = self.repack_offsets[c]
                rot = cur_angles.clone()
                for j in range(off.shape[0]):
                    cs, sn = torch.cos(off[j]), torch.sin(off[j])
                    a0 = cur_angles[..., 4 + j, 0]
                    a1 = cur_angles[..., 4 + j, 1]
                    rot[..., 4 + j, 0] = a0 * cs - a1 * sn
                    rot[..., 4 + j, 1] = a1 * cs + a0 * sn
                cand = self.tables.place_sidechains(atoms, restype, rot)
                pen = 0.0 if c == 0 else self.repack_penalty
                scores.append(self.residue_clash(cand, atoms, restype, idx) + pen)
                cands.append(cand)
                cand_angles.append(rot)
            score = torch.stack(scores, 0)                            # [C, B, N]
            best = score.argmin(0)                                    # [B, N]
            turn = (pos % 3 == sweep % 3).view(1, n)
            best = torch.where(turn, best, torch.zeros_like(best))
            stacked = torch.stack(cands, 0)                           # [C, B, N, 30, 3]
            sel = best.view(1, b, n, 1, 1).expand(1, b, n, stacked.shape[-2], 3)
            atoms = torch.gather(stacked, 0, sel)[0]
            ang = torch.stack(cand_angles, 0)
            sel_a = best.view(1, b, n, 1, 1).expand(1, b, n, ang.shape[-2], 2)
            cur_angles = torch.gather(ang, 0, sel_a)[0]
        return atoms * atom_mask.unsqueeze(0).unsqueeze(-1)
