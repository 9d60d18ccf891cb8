"""Message-passing layers on the k-nearest-neighbour Cα graph (ProteinMPNN style)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

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
        m = _edge_mlp(self.message[0].weight, self.message[0].bias, self.message[2].weight, self.message[2].bias,
                      h, e, idx) * valid.unsqueeze(-1)
        agg = m.sum(2) / valid.sum(-1, keepdim=True).clamp(min=1.0)
        h = self.norm1(h + self.dropout(agg), cond)
        h = self.norm2(h + self.dropout(self.ffn(h)), cond)
        h = h * node_mask.unsqueeze(-1)
        if self.update_edges:
            upd = _edge_mlp(self.edge_mlp[0].weight, self.edge_mlp[0].bias, self.edge_mlp[2].weight,
                            self.edge_mlp[2].bias, h, e, idx)
            e = self.norm_e(e + self.dropout(upd))
        return h, e


def _edge_mlp(w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, h: torch.Tensor,
              e: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``Linear(w2) o GELU o Linear(w1)`` of ``cat([h_i, e_ij, h_j])`` without building the
    concatenation: the first layer is split into its node-i, edge and node-j blocks and the node
    blocks are applied once per node instead of once per edge (same numbers, a third of the work).
    The sums are taken in place: the per-edge tensors are the network's largest, and allocating
    them anew costs more than the additions."""
    hid = h.shape[-1]
    own = F.linear(h, w1[:, :hid])
    other = F.linear(h, w1[:, 2 * hid:])
    x = F.linear(e, w1[:, hid:2 * hid], b1)
    x += own.unsqueeze(2)
    x += gather_nodes(other, idx)
    return F.linear(F.gelu(x), w2, b2)
