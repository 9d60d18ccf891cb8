"""Stage-2 denoiser: noisy latents + Cα trace + sequence + time -> clean latents (x0).

ProteinMPNN-style message passing on the kNN Cα graph, time through adaptive layer norm."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .diffusion import timestep_embedding
from .trunk import GraphTrunk


class Denoiser(nn.Module):
    def __init__(self, hidden: int, layers: int, latent_dim: int, time_dim: int = 64):
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))
        self.trunk = GraphTrunk(hidden, layers, extra_in=latent_dim, cond_dim=time_dim)
        self.out = nn.Linear(hidden, latent_dim)
        # the best guess's denoiser also reads how noisy the given trace is
        # (features.trace_quality); zero at the start, so a model trained without it computes
        # the same function (the diffusion denoiser never reads it)
        self.quality_in = nn.Sequential(nn.Linear(2, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        nn.init.zeros_(self.quality_in[2].weight)
        nn.init.zeros_(self.quality_in[2].bias)

    def forward(self, node, edge, rel, idx, valid, restype, mask, z_t, t) -> torch.Tensor:
        return self.latent_and_hidden(node, edge, rel, idx, valid, restype, mask, z_t, t, None)[0]

    @torch.jit.export
    def latent_and_hidden(self, node, edge, rel, idx, valid, restype, mask, z_t, t,
                          quality: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The clean latent and the per-residue hidden states it was read from (``quality``
        [B, N, 2]: :func:`features.trace_quality` of the given trace)."""
        cond = self.time_mlp(timestep_embedding(t, self.time_dim))  # [B, time_dim]
        h_in = None if quality is None else self.quality_in(quality)
        h = self.trunk(node, edge, rel, idx, valid, restype, mask, z_t, cond, h_in)
        return self.out(h), h
