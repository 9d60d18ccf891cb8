"""Stage-1 encoder: a residue's true all-atom environment -> a small continuous latent.

Invariant by construction: it reads torsion angles and atom coordinates expressed in the
residue's own Cα-trace frame, and the Cα graph features."""

from __future__ import annotations

import torch
from torch import nn

from .. import geometry as geo
from .trunk import GraphTrunk

ENCODER_SLOTS = [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]  # N, C, O and side-chain heavy atoms
ENCODER_EXTRA = 3 * geo.NUM_ANGLES + 3 * len(ENCODER_SLOTS)


def encoder_inputs(atoms: torch.Tensor, present: torch.Tensor, angles: torch.Tensor, angle_mask: torch.Tensor,
                   rot: torch.Tensor) -> torch.Tensor:
    """Per-residue invariant description of the true structure [B, N, ENCODER_EXTRA]."""
    ca = atoms[:, :, 1:2]
    sel = atoms[:, :, ENCODER_SLOTS] - ca
    local = torch.einsum("bnji,bnsj->bnsi", rot, sel) / 10.0 * present[:, :, ENCODER_SLOTS].unsqueeze(-1)
    ang = angles * angle_mask.unsqueeze(-1)
    return torch.cat([ang.flatten(-2), angle_mask, local.flatten(-2)], dim=-1)


class Encoder(nn.Module):
    def __init__(self, hidden: int, layers: int, latent_dim: int):
        super().__init__()
        self.trunk = GraphTrunk(hidden, layers, extra_in=ENCODER_EXTRA)
        self.out = nn.Linear(hidden, latent_dim)

    def forward(self, node, edge, rel, idx, valid, restype, mask, extra) -> torch.Tensor:
        return self.out(self.trunk(node, edge, rel, idx, valid, restype, mask, extra))
