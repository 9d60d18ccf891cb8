"""SE(3)-invariant features of a Cα trace: k-nearest-neighbour graph, node and edge features.

Memory is linear in the number of residues: neighbours are found chunk by chunk, so no
N x N tensor is ever held for long chains.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .. import geometry as geo

NUM_NODE_GEOMETRY = 23
NUM_RBF = 16
CIS_THRESHOLD = float(geo.rc.CIS_CA_CA_THRESHOLD)
MAX_REL = 32
NUM_REL = 2 * MAX_REL + 2  # offsets -32..32, plus "other segment"
NUM_EDGE_GEOMETRY = NUM_RBF + 3 + 9


def knn_graph(ca: torch.Tensor, mask: torch.Tensor, k: int, chunk: int = 512) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices [B, N, k] of each residue's k nearest Cα (itself included) and their validity."""
    bsz, n = ca.shape[0], ca.shape[1]
    kk = geo.at_most(k, n)
    out_idx = []
    out_d = []
    big = (1.0 - mask).unsqueeze(1) * 1e6  # [B, 1, N]
    for start, stop in geo.chunk_bounds(n, chunk):
        d = torch.cdist(ca[:, start:stop], ca) + big
        dist, idx = torch.topk(d, kk, dim=-1, largest=False)
        out_idx.append(idx)
        out_d.append(dist)
    idx = torch.cat(out_idx, dim=1)
    dist = torch.cat(out_d, dim=1)
    valid = (dist < 1e5).to(ca.dtype) * mask.unsqueeze(-1)
    if kk < k:  # short chains: pad with self-edges marked invalid
        pad = torch.arange(n, device=ca.device).view(1, n, 1).expand(bsz, n, k - kk)
        idx = torch.cat([idx, pad], dim=-1)
        valid = torch.cat([valid, torch.zeros(bsz, n, k - kk, device=ca.device, dtype=ca.dtype)], dim=-1)
    return idx, valid


def gather_nodes(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, M, C], idx [B, N, K] -> [B, N, K, C].

    Rows copied by ``index_select`` on the flattened batch: the same numbers as ``gather`` with
    an expanded index, about ten times faster on a CPU (the graph network gathers every layer)."""
    bsz, n, k = idx.shape
    m, c = x.shape[1], x.shape[-1]
    offset = (torch.arange(bsz, device=idx.device) * m).view(bsz, 1, 1)
    return x.reshape(bsz * m, c).index_select(0, (idx + offset).reshape(-1)).view(bsz, n, k, c)


def shift(x: torch.Tensor, offset: int) -> torch.Tensor:
    """x[:, i + offset] along dim 1, edge-padded (validity is tracked separately)."""
    n = x.shape[1]
    if offset > 0:
        pad = x[:, -1:].expand(x.shape[0], offset, x.shape[2])
        return torch.cat([x[:, offset:], pad], dim=1)[:, :n]
    pad = x[:, :1].expand(x.shape[0], -offset, x.shape[2])
    return torch.cat([pad, x[:, :offset]], dim=1)[:, :n]


def residue_frames(ca: torch.Tensor, segment: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-residue frame [B, N, 3, 3] from the peptide unit i -> i+1 (i-1 -> i at chain ends),
    plus has_prev / has_next flags and the Cα–Cα distances to the next residue."""
    has_prev, has_next = geo.segment_neighbours(segment)
    x, u, w, dist = geo.peptide_axes(ca, segment)
    rot = torch.stack([x, u, w], dim=-1)
    rot_prev = torch.cat([rot[:, :1], rot[:, :-1]], dim=1)
    rot = torch.where(has_next.view(1, -1, 1, 1), rot, rot_prev)
    return rot, has_prev, has_next, dist


def node_geometry(ca: torch.Tensor, segment: torch.Tensor,
                  cis_threshold: float = CIS_THRESHOLD) -> Tuple[torch.Tensor, torch.Tensor]:
    """Invariant per-residue features [B, N, NUM_NODE_GEOMETRY] and the residue frames."""
    rot, has_prev, has_next, dist = residue_frames(ca, segment)
    f = ca.dtype
    seg = segment.view(1, -1, 1).to(f).expand(ca.shape[0], -1, 1)
    feats = []
    flags = []
    for off in [-2, -1, 1, 2, 3]:
        nb = shift(ca, off)
        ok = (shift(seg, off) == seg).to(f)
        # offsets beyond the chain end are clamped by shift(); mark them invalid
        n = ca.shape[1]
        pos = torch.arange(n, device=ca.device).view(1, n, 1) + off
        ok = ok * ((pos >= 0) & (pos < n)).to(f)
        local = torch.einsum("bnji,bnj->bni", rot, nb - ca) * ok / 10.0
        feats.append(local)
        flags.append(ok)
    d_next = (dist.unsqueeze(-1) - 3.8) * has_next.to(f).view(1, -1, 1)
    dist_prev = torch.cat([dist[:, :1], dist[:, :-1]], dim=1)
    d_prev = (dist_prev.unsqueeze(-1) - 3.8) * has_prev.to(f).view(1, -1, 1)
    cis = ((dist < cis_threshold) & has_next.view(1, -1)).to(f).unsqueeze(-1)
    out = torch.cat(feats + flags + [d_next, d_prev, cis], dim=-1)
    return out, rot


def trace_quality(ca: torch.Tensor, segment: torch.Tensor, mask: torch.Tensor, window: int = 9,
                  cis_threshold: float = CIS_THRESHOLD) -> torch.Tensor:
    """How far the given trace is from a crystal's [B, N, 2]: the RMS deviation of Cα(i)–Cα(i+1)
    from 3.8 Å over the whole frame and over ``window`` residues around each one (cis and
    broken peptides left out, deviations capped at 0.5 Å), times 4.

    Crystal traces give 0.01–0.03 Å, Cα with 0.3 Å noise (or a soft-bond CG model) about 0.25:
    the network can trust fine Cα geometry where it is real and not where it is noise, which
    no residue sees from its own few bonds.  Read from the trace as given, before it is
    regularized."""
    seg = segment if segment.dim() == 2 else segment.unsqueeze(0)
    d = torch.sqrt(((ca[:, 1:] - ca[:, :-1]) ** 2).sum(-1) + 1e-12)                 # [B, N-1]
    ok = ((seg[:, 1:] == seg[:, :-1]) & (d > cis_threshold)).to(ca.dtype) * mask[:, 1:] * mask[:, :-1]
    dev2 = torch.clamp((d - 3.8).abs(), max=0.5) ** 2 * ok
    total = torch.sqrt(dev2.sum(-1) / ok.sum(-1).clamp(min=1.0))                   # [B]
    # each residue takes the bonds on both its sides, then a window of residues
    dev_res = torch.nn.functional.pad(dev2, [1, 0]) + torch.nn.functional.pad(dev2, [0, 1])   # [B, N]
    ok_res = torch.nn.functional.pad(ok, [1, 0]) + torch.nn.functional.pad(ok, [0, 1])
    half = window // 2
    dev_win = torch.nn.functional.avg_pool1d(dev_res.unsqueeze(1), window, 1, half, count_include_pad=False)
    ok_win = torch.nn.functional.avg_pool1d(ok_res.unsqueeze(1), window, 1, half, count_include_pad=False)
    local = torch.sqrt(dev_win[:, 0] / ok_win[:, 0].clamp(min=1e-6)) * (ok_win[:, 0] > 0).to(ca.dtype)
    out = torch.stack([total.unsqueeze(1).expand_as(local), local], -1) * 4.0
    return out * mask.unsqueeze(-1)


def rbf(d: torch.Tensor, d_min: float = 2.0, d_max: float = 22.0, count: int = NUM_RBF) -> torch.Tensor:
    mu = torch.linspace(d_min, d_max, count, device=d.device, dtype=d.dtype)
    sigma = (d_max - d_min) / count
    return torch.exp(-(((d.unsqueeze(-1) - mu) / sigma) ** 2))


def edge_geometry(ca: torch.Tensor, rot: torch.Tensor, segment: torch.Tensor, idx: torch.Tensor,
                  max_rel: int = MAX_REL) -> Tuple[torch.Tensor, torch.Tensor]:
    """Invariant edge features [B, N, K, NUM_EDGE_GEOMETRY] and relative-position classes [B, N, K]."""
    bsz, n, k = idx.shape
    ca_j = gather_nodes(ca, idx)
    delta = ca_j - ca.unsqueeze(2)
    d = torch.sqrt((delta * delta).sum(-1) + 1e-6)
    direction = torch.einsum("bnji,bnkj->bnki", rot, delta) / d.unsqueeze(-1)
    rot_j = gather_nodes(rot.reshape(bsz, n, 9), idx).view(bsz, n, k, 3, 3)
    rel_rot = torch.einsum("bnji,bnkjl->bnkil", rot, rot_j).reshape(bsz, n, k, 9)
    feats = torch.cat([rbf(d), direction, rel_rot], dim=-1)
    pos = torch.arange(n, device=ca.device).view(1, n, 1)
    off = torch.clamp(idx - pos, -max_rel, max_rel) + max_rel
    seg_i = segment.view(1, n, 1).expand(bsz, n, k)
    seg_j = torch.gather(segment.view(1, n).expand(bsz, n), 1, idx.reshape(bsz, n * k)).view(bsz, n, k)
    rel = torch.where(seg_i == seg_j, off, torch.full_like(off, 2 * max_rel + 1))
    return feats, rel
