"""Stage-1 decoder: codes + Cα trace + sequence -> torsion angles (unit cos/sin pairs)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .. import geometry as geo
from .trunk import GraphTrunk


class Decoder(nn.Module):
    def __init__(self, hidden: int, layers: int, latent_dim: int):
        super().__init__()
        self.trunk = GraphTrunk(hidden, layers, extra_in=latent_dim)
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 2 * geo.NUM_ANGLES))
        # expected side-chain error (Å) of each residue: the per-residue confidence
        self.error_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        # which staggered well (60, 180, -60 degrees) chi1 and chi2 sit in: logits [B, N, 2, 3]
        # (a regression of (cos, sin) averages two likely wells into an unlikely angle between them)
        self.well_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 6))
        # chi2, chi3 and chi4 for each chi1 well: a side chain moved to another chi1 well takes
        # that well's own, not the ones the main head chose for its own chi1 [B, N, 3, 3, 2]
        self.well_chi_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 18))
        # the best guess also reads its denoiser's hidden states, not only the 4-number latent
        # (zero at the start: a model trained without it computes the same function)
        self.skip = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)

    def forward(self, node, edge, rel, idx, valid, restype, mask, zq) -> torch.Tensor:
        h = self.trunk(node, edge, rel, idx, valid, restype, mask, zq)
        raw = self.out(h).view(h.shape[0], h.shape[1], geo.NUM_ANGLES, 2)
        return geo.normalize(raw)

    @torch.jit.export
    def angles_and_error(self, node, edge, rel, idx, valid, restype, mask, zq,
                         hidden: Optional[torch.Tensor] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The angles, the expected side-chain error [B, N] (Å, >= 0) of each residue, the
        chi1/chi2 well logits [B, N, 2, 3] and chi2..chi4 for each chi1 well [B, N, 3, 3, 2]
        (unit (cos, sin); ``hidden``: an upstream network's per-residue hidden states, read
        through ``skip``)."""
        h = self.hidden_states(node, edge, rel, idx, valid, restype, mask, zq, hidden)
        raw = self.out(h).view(h.shape[0], h.shape[1], geo.NUM_ANGLES, 2)
        err = torch.nn.functional.softplus(self.error_head(h).squeeze(-1))
        wells, well_chi = self.well_heads(h)
        return geo.normalize(raw), err, wells, well_chi

    @torch.jit.export
    def hidden_states(self, node, edge, rel, idx, valid, restype, mask, zq,
                      hidden: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The trunk's last per-residue hidden states [B, N, H], which every head reads."""
        return self.trunk(node, edge, rel, idx, valid, restype, mask, zq, None,
                          None if hidden is None else self.skip(hidden))

    @torch.jit.export
    def well_heads(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The chi1/chi2 well logits [B, N, 2, 3] and chi2..chi4 for each chi1 well
        [B, N, 3, 3, 2] (unit (cos, sin)) read from hidden states ``h`` [B, N, H]."""
        wells = self.well_head(h).view(h.shape[0], h.shape[1], 2, 3)
        return wells, geo.normalize(self.well_chi_head(h).view(h.shape[0], h.shape[1], 3, 3, 2))
