"""The graph network every stage shares in shape: Cα trace + sequence (+ extra per-residue
inputs) -> per-residue hidden states, by message passing on the kNN graph."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import residues as rc
from .features import NUM_EDGE_GEOMETRY, NUM_NODE_GEOMETRY, NUM_REL, edge_geometry, knn_graph, node_geometry
from .mpnn import MPNNLayer


class Graph(nn.Module):
    """Features of a Cα trace computed once and shared by the networks that read it."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, ca: torch.Tensor, segment: torch.Tensor, mask: torch.Tensor):
        node, rot = node_geometry(ca, segment)
        idx, valid = knn_graph(ca, mask, self.k)
        edge, rel = edge_geometry(ca, rot, segment, idx)
        return node, edge, rel, idx, valid, rot


class GraphTrunk(nn.Module):
    def __init__(self, hidden: int, layers: int, extra_in: int = 0, cond_dim: int = 0, dropout: float = 0.0,
                 update_edges: bool = True):
        super().__init__()
        self.restype_embed = nn.Embedding(rc.NUM_RESTYPES + 1, hidden)
        self.node_in = nn.Linear(NUM_NODE_GEOMETRY + extra_in, hidden)
        self.edge_in = nn.Linear(NUM_EDGE_GEOMETRY, hidden)
        self.rel_embed = nn.Embedding(NUM_REL, hidden)
        self.layers = nn.ModuleList([MPNNLayer(hidden, cond_dim, dropout, update_edges and i < layers - 1)
                                     for i in range(layers)])

    def forward(self, node: torch.Tensor, edge: torch.Tensor, rel: torch.Tensor, idx: torch.Tensor,
                valid: torch.Tensor, restype: torch.Tensor, mask: torch.Tensor, extra: Optional[torch.Tensor] = None,
                cond: Optional[torch.Tensor] = None, h_in: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = node if extra is None else torch.cat([node, extra], dim=-1)
        h = self.node_in(x) + self.restype_embed(restype)
        if h_in is not None:  # hidden states of an upstream network (the best guess's denoiser)
            h = h + h_in
        e = self.edge_in(edge) + self.rel_embed(rel)
        for layer in self.layers:
            h, e = layer(h, e, idx, valid, mask, cond)
        return h
