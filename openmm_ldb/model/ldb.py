"""The whole LDB model: training losses of both stages and of the one-pass best guess
(the exported function that samples from it is :mod:`.sampler`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import torch
from torch import nn

from .. import geometry as geo
from .. import residues as rc
from .decoder import Decoder
from .denoiser import Denoiser
from .diffusion import alpha_bar
from .encoder import Encoder, encoder_inputs
from .features import trace_quality
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
    well_weight: float = 0.2
    # "distance": mean atom distance error; "squared": half the mean squared error, what RMSD
    # scores (a side chain the network is unsure of is placed where it is wrong by least on average)
    coord_loss: str = "distance"
    well_chi_weight: float = 0.2

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
        # the deterministic best guess: one pass of a denoiser (at t = 1, from a zero latent) and
        # a decoder of its own, started from the diffusion pair and trained end to end on atoms
        self.guess_denoiser = Denoiser(c.hidden, c.denoiser_layers, c.latent_dim)
        self.guess_decoder = Decoder(c.hidden, c.decoder_layers, c.latent_dim)

    def init_guess(self) -> None:
        """Start the best-guess networks from the trained diffusion denoiser and decoder."""
        self.guess_denoiser.load_state_dict(self.denoiser.state_dict())
        self.guess_decoder.load_state_dict(self.decoder.state_dict())

    def guess_parameters(self):
        return list(self.guess_denoiser.parameters()) + list(self.guess_decoder.parameters())

    def guess_losses(self, batch: Dict[str, torch.Tensor], heads_only: bool = False) -> Dict[str, torch.Tensor]:
        """Losses of the one-pass best guess on a batch: the Cα are regularized as at inference
        (:func:`geometry.regularize_trace`), atoms are built by the same rigid groups.  With
        ``heads_only`` only the well heads' losses, the networks under them held fixed."""
        atoms, present, restype = batch["atoms"], batch["present"], batch["restype"]
        segment, mask = batch["segment"], batch["mask"]
        ca = torch.cat([geo.regularize_trace(batch["ca"][b:b + 1], segment[b]) for b in range(segment.shape[0])])
        quality = trace_quality(batch["ca"], segment, mask)
        node, edge, rel, idx, valid, rot = self._graph_batch(ca, segment, mask)
        true_full = torch.zeros(atoms.shape[0], atoms.shape[1], rc.NUM_SLOTS, 3, dtype=atoms.dtype, device=atoms.device)
        true_full[:, :, : atoms.shape[2]] = atoms
        angles, angle_mask = self._true_angles(true_full, restype, segment)
        angle_mask = angle_mask * self._angle_present(present, restype, segment) * mask.unsqueeze(-1)
        c = self.config
        out: Dict[str, torch.Tensor] = {}
        guess = BestGuess(self.guess_denoiser, self.guess_decoder)
        if heads_only:
            with torch.no_grad():
                hidden = guess.hidden(node, edge, rel, idx, valid, restype, mask, self.latent_mean, self.latent_std,
                                      quality)
            wells, well_chi = self.guess_decoder.well_heads(hidden)
            out["wells"] = well_loss(wells, angles, angle_mask, restype)
            out["well_chi"] = well_chi_loss(well_chi, angles, angle_mask, restype, self.tables)
            out["loss"] = out["wells"] + out["well_chi"]
            return out
        pred, err, wells, well_chi = guess(node, edge, rel, idx, valid, restype, mask, self.latent_mean,
                                           self.latent_std, quality)
        out["angle"] = angle_loss(pred, angles, angle_mask, restype, self.tables)
        out["coord"], out["rmsd"], built = self._coord_loss(pred, ca, true_full, present, restype, segment, mask)
        # the confidence head learns each residue's side-chain RMSD (atoms beyond CB)
        sc = present.clone()
        sc[:, :, :5] = 0.0
        sc = sc * mask.unsqueeze(-1)
        d2 = _swapped_sq_error(built.detach(), true_full[:, :, : present.shape[2]], sc, restype, self.tables)
        cnt = sc.sum(-1)
        has = (cnt > 0).to(err.dtype)
        true_err = torch.sqrt(d2 / cnt.clamp(min=1.0) + 1e-6)
        out["error_head"] = (torch.nn.functional.smooth_l1_loss(err, true_err, reduction="none") * has).sum() / \
            has.sum().clamp(min=1.0)
        out["wells"] = well_loss(wells, angles, angle_mask, restype)
        out["well_chi"] = well_chi_loss(well_chi, angles, angle_mask, restype, self.tables)
        out["clash"] = clash_loss(built, restype, idx, valid, mask, self.tables)
        out["ring"] = proline_ring_loss(built, restype, mask)
        out["loss"] = c.angle_weight * out["angle"] + c.coord_weight * out["coord"] + \
            c.clash_weight * out["clash"] + c.ring_weight * out["ring"] + 0.1 * out["error_head"] + \
            c.well_weight * out["wells"] + c.well_chi_weight * out["well_chi"]
        return out

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
        true_full = torch.zeros(atoms.shape[0], atoms.shape[1], rc.NUM_SLOTS, 3, dtype=atoms.dtype, device=atoms.device)
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
        if self.config.coord_loss == "squared":
            loss = 0.5 * (d2.clamp(max=100.0) * w).sum() / w.sum().clamp(min=1.0)
        else:
            dist = torch.sqrt(d2 + 1e-4).clamp(max=10.0)
            loss = (dist * w).sum() / w.sum().clamp(min=1.0)
        rmsd = torch.sqrt((d2.detach() * w).sum() / w.sum().clamp(min=1.0))
        return loss, rmsd, built


class BestGuess(nn.Module):
    """The one-pass best guess: the denoiser's clean latent from the mean of pure noise (zero)
    at t = 1, decoded to angles [B, N, NUM_ANGLES, 2]."""

    def __init__(self, denoiser: Denoiser, decoder: Decoder):
        super().__init__()
        self.denoiser = denoiser
        self.decoder = decoder

    def forward(self, node, edge, rel, idx, valid, restype, mask, latent_mean: torch.Tensor,
                latent_std: torch.Tensor, quality: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Angles [B, N, NUM_ANGLES, 2], expected side-chain error [B, N] (Å), chi1/chi2 well
        logits [B, N, 2, 3] and chi2..chi4 for each chi1 well [B, N, 3, 3, 2] (``quality``
        [B, N, 2]: :func:`features.trace_quality` of the trace as given)."""
        latent, hidden = self.latent(node, edge, rel, idx, valid, restype, mask, latent_mean, latent_std, quality)
        return self.decoder.angles_and_error(node, edge, rel, idx, valid, restype, mask, latent, hidden)

    def latent(self, node, edge, rel, idx, valid, restype, mask, latent_mean: torch.Tensor, latent_std: torch.Tensor,
               quality: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The denoiser's clean latent (un-z-scored) and its hidden states, from zero at t = 1."""
        shape = [node.shape[0], node.shape[1], latent_mean.shape[0]]
        z = torch.zeros(shape, device=node.device, dtype=node.dtype)
        t = torch.ones(shape[0], device=node.device, dtype=node.dtype)
        latent, hidden = self.denoiser.latent_and_hidden(node, edge, rel, idx, valid, restype, mask, z, t, quality)
        return latent * latent_std + latent_mean, hidden

    @torch.jit.ignore
    def hidden(self, node, edge, rel, idx, valid, restype, mask, latent_mean: torch.Tensor,
               latent_std: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states [B, N, H], which its heads read."""
        latent, h = self.latent(node, edge, rel, idx, valid, restype, mask, latent_mean, latent_std, quality)
        return self.decoder.hidden_states(node, edge, rel, idx, valid, restype, mask, latent, h)


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


def _swapped_sq_error(built: torch.Tensor, true: torch.Tensor, w: torch.Tensor, restype: torch.Tensor,
                      tables: geo.GeometryTables) -> torch.Tensor:
    """Per-residue sum of squared atom errors [B, N] over weights ``w``, symmetric atoms swapped
    where that is closer."""
    s = w.shape[2]
    d2 = (((built[:, :, :s] - true) ** 2).sum(-1) * w).sum(-1)
    perm = tables.symmetric_swap[restype][:, :, :s]
    true_sw = torch.gather(true, 2, perm.unsqueeze(-1).expand(-1, -1, -1, 3))
    w_sw = torch.gather(w, 2, perm)
    d2_sw = (((built[:, :, :s] - true_sw) ** 2).sum(-1) * w_sw).sum(-1)
    return torch.minimum(d2, d2_sw)


def _pad_slots(present: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(present.shape[0], present.shape[1], rc.NUM_SLOTS, dtype=present.dtype, device=present.device)
    out[:, :, : present.shape[2]] = present
    return out


WELLS_DEG = (60.0, 180.0, -60.0)
# chi2 wells are staggered only where both of its atoms are sp3 carbons
WELL_CHI2_TYPES = ("ILE", "LEU", "LYS", "ARG", "MET", "GLU", "GLN")


def well_types() -> torch.Tensor:
    """[NUM_RESTYPES + 1, 2] 1 where chi1 / chi2 of a residue type sits in staggered wells."""
    t = torch.zeros(rc.NUM_RESTYPES + 1, 2)
    t[:rc.NUM_RESTYPES, 0] = torch.as_tensor(rc.chi_mask_array()[:, 0])
    t[rc.RESTYPE_INDEX["PRO"], 0] = 0.0
    for name in WELL_CHI2_TYPES:
        t[rc.RESTYPE_INDEX[name], 1] = 1.0
    return t


def true_wells(true: torch.Tensor) -> torch.Tensor:
    """[B, N, 2] the staggered well (index into ``WELLS_DEG``) nearest chi1 and chi2 of
    ``true`` [B, N, NUM_ANGLES, 2] (unit (cos, sin))."""
    w = torch.tensor(WELLS_DEG, device=true.device, dtype=true.dtype) * (math.pi / 180.0)
    chi = true[:, :, geo.CHI0:geo.CHI0 + 2]                                   # [B, N, 2, 2]
    return (chi[..., 0:1] * torch.cos(w) + chi[..., 1:2] * torch.sin(w)).argmax(-1)


def well_loss(logits: torch.Tensor, true: torch.Tensor, mask: torch.Tensor, restype: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the chi1/chi2 well logits [B, N, 2, 3] against the well nearest the true
    chi (``true`` [B, N, NUM_ANGLES, 2] unit (cos, sin), ``mask`` [B, N, NUM_ANGLES])."""
    target = true_wells(true)
    m = mask[:, :, geo.CHI0:geo.CHI0 + 2] * well_types().to(logits.device)[restype]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), target.reshape(-1), reduction="none")
    return (ce * m.reshape(-1)).sum() / m.sum().clamp(min=1.0)


def well_chi_loss(well_chi: torch.Tensor, true: torch.Tensor, mask: torch.Tensor, restype: torch.Tensor,
                  tables: geo.GeometryTables) -> torch.Tensor:
    """Angle loss of chi2..chi4 [B, N, 3, 3, 2] read in the true chi1's well (the wells where
    chi1 is not a target are not scored)."""
    target = true_wells(true)[..., 0]
    b, n = target.shape
    pred = torch.gather(well_chi, 2, target.view(b, n, 1, 1, 1).expand(b, n, 1, 3, 2)).squeeze(2)  # [B, N, 3, 2]
    m = mask[:, :, geo.CHI0 + 1:] * mask[:, :, geo.CHI0:geo.CHI0 + 1] * (well_types().to(true.device)[restype, :1])
    full = torch.cat([true[:, :, :geo.CHI0 + 1], pred], 2)
    full_mask = torch.cat([torch.zeros_like(mask[:, :, :geo.CHI0 + 1]), m], 2)
    return angle_loss(full, true, full_mask, restype, tables)


def angle_loss(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor, restype: torch.Tensor,
               tables: geo.GeometryTables) -> torch.Tensor:
    """Chord distance between unit (cos, sin) pairs; pi-periodic chis take the closer image."""
    d = ((pred - true) ** 2).sum(-1)
    d_flip = ((pred + true) ** 2).sum(-1)
    pi_per = torch.zeros_like(mask)
    pi_per[..., geo.CHI0:] = tables.chi_pi_periodic[restype]
    d = torch.where(pi_per > 0, torch.minimum(d, d_flip), d)
    return (d * mask).sum() / mask.sum().clamp(min=1.0)
