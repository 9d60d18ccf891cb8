"""Continuous Gaussian diffusion over per-residue latents: cosine schedule, x0-prediction,
DDIM sampling in few steps, and a counter-based RNG so that a seed gives the same noise in
Python, TorchScript and libtorch (C++)."""

from __future__ import annotations

import math

from typing import List

import torch


def alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021), t in [0, 1]."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return torch.clamp(f / f0, 1e-5, 0.99999)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    # integer finaliser (lowbias32-style); products stay below 2**63 so int64 is exact
    mask = 0xFFFFFFFF
    x = x & mask
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & mask
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & mask
    x = x ^ (x >> 16)
    return x


def hash_normal(shape: List[int], seed: int, stream: int, device: torch.device) -> torch.Tensor:
    """Standard normal noise that depends only on (seed, stream, element index)."""
    n = 1
    for s in shape:
        n *= s
    base = torch.arange(n, dtype=torch.int64, device=device)
    key = _hash32(torch.tensor([seed * 1000003 + stream * 7919 + 12345], dtype=torch.int64, device=device))
    u1 = (_hash32(base * 2 + key).to(torch.float64) + 0.5) / 4294967296.0
    u2 = (_hash32(base * 2 + 1 + key * 3).to(torch.float64) + 0.5) / 4294967296.0
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.to(torch.float32).view(shape)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] -> [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.unsqueeze(-1) * 1000.0 * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
