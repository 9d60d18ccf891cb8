"""Vector quantisation with an EMA codebook and restart of dead codes (VQ-VAE-2 style)."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5, dead_threshold: float = 0.05):
        super().__init__()
        self.num_codes = num_codes
        self.dim = dim
        self.decay = decay
        self.eps = eps
        self.dead_threshold = dead_threshold
        self.register_buffer("codebook", torch.randn(num_codes, dim))
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", self.codebook.clone())

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each latent [..., dim] (chunked: no big distance matrix)."""
        flat = z.reshape(-1, self.dim)
        out = []
        for start in range(0, flat.shape[0], 4096):
            d = torch.cdist(flat[start:start + 4096], self.codebook)
            out.append(d.argmin(-1))
        if len(out) == 0:
            return torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)
        return torch.cat(out).view(z.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook[codes]

    @torch.jit.unused
    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise ``z`` [B, N, dim]; returns (straight-through z_q, codes, commitment loss)."""
        codes = self.nearest(z.detach())
        zq = self.lookup(codes)
        m = mask.unsqueeze(-1)
        commit = (((z - zq.detach()) ** 2) * m).sum() / (m.sum() * self.dim).clamp(min=1.0)
        if self.training:
            self._ema_update(z.detach(), codes, mask)
        zq = z + (zq - z).detach()
        return zq, codes, commit

    @torch.jit.unused
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> None:
        with torch.no_grad():
            sel = mask.reshape(-1) > 0
            flat = z.reshape(-1, self.dim)[sel]
            idx = codes.reshape(-1)[sel]
            onehot_count = torch.bincount(idx, minlength=self.num_codes).to(flat.dtype)
            sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(onehot_count)
                torch.distributed.all_reduce(sums)
            self.ema_count.mul_(self.decay).add_(onehot_count, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            count = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n
            self.codebook.copy_(self.ema_sum / count.unsqueeze(-1))
            # restart codes nobody uses at random current latents
            dead = self.ema_count < self.dead_threshold
            n_dead = int(dead.sum())
            if n_dead > 0 and flat.shape[0] > 0:
                pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    new = flat[pick].contiguous()
                    torch.distributed.broadcast(new, 0)
                else:
                    new = flat[pick]
                self.codebook[dead] = new
                self.ema_sum[dead] = new
                self.ema_count[dead] = 1.0

    @torch.jit.unused
    def usage(self, codes: torch.Tensor, mask: torch.Tensor) -> Tuple[float, float]:
        """(fraction of codes used, perplexity) over the masked codes."""
        idx = codes.reshape(-1)[mask.reshape(-1) > 0]
        counts = torch.bincount(idx, minlength=self.num_codes).float()
        p = counts / counts.sum().clamp(min=1.0)
        perplexity = torch.exp(-(p * torch.log(p + 1e-10)).sum())
        return float((counts > 0).float().mean()), float(perplexity)
