"""Message-passing layers on the k-nearest-neighbour Cα graph (ProteinMPNN style)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .features import gather_nodes


class AdaptiveLayerNorm(nn.Module):
    """LayerNorm whose scale and shift come from a conditioning vector (DiT's adaLN)."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=cond_dim == 0)
        self.cond_dim = cond_dim
        self.to_scale_shift = nn.Linear(max(cond_dim, 1), 2 * dim)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
        y = self.norm(x)
        if cond is None or self.cond_dim == 0:
            return y
        scale, shift = self.to_scale_shift(cond).chunk(2, dim=-1)
        while scale.dim() < y.dim():
            scale = scale.unsqueeze(-2)
            shift = shift.unsqueeze(-2)
        return y * (1.0 + scale) + shift


class MPNNLayer(nn.Module):
    """Node update from neighbour messages, then an edge update, each with a residual."""

    def __init__(self, hidden: int, cond_dim: int = 0, dropout: float = 0.0, update_edges: bool = True):
        super().__init__()
        self.message = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.ffn = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.norm1 = AdaptiveLayerNorm(hidden, cond_dim)
        self.norm2 = AdaptiveLayerNorm(hidden, cond_dim)
        self.update_edges = update_edges
        self.edge_mlp = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.norm_e = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, e: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor,
                node_mask: torch.Tensor, cond: Optional[torch.Tensor] = None):
        k = idx.shape[-1]
        h_j = gather_nodes(h, idx)
        h_i = h.unsqueeze(2).expand(-1, -1, k, -1)
        m = self.message(torch.cat([h_i, e, h_j], dim=-1)) * valid.unsqueeze(-1)
        agg = m.sum(2) / valid.sum(-1, keepdim=True).clamp(min=1.0)
        h = self.norm1(h + self.dropout(agg), cond)
        h = self.norm2(h + self.dropout(self.ffn(h)), cond)
        h = h * node_mask.unsqueeze(-1)
        if self.update_edges:
            h_j = gather_nodes(h, idx)
            h_i = h.unsqueeze(2).expand(-1, -1, k, -1)
            e = self.norm_e(e + self.dropout(self.edge_mlp(torch.cat([h_i, e, h_j], dim=-1))))
        return h, e
