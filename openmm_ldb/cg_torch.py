"""A Cα prior potential fitted to real structures, run by OpenMM through openmm-torch.

This is the case of users whose CG force field is an ML model: the potential is a TorchScript
module evaluated by ``openmmtorch.TorchForce``.  Its terms (bond, angle, dihedral and a
short-range pair term between residues at least three apart) are tabulated by Boltzmann
inversion of the statistics of the training chains (``python -m openmm_ldb.cg_torch DATA``
refits ``resources/ca_prior.json``).

openmm-torch is optional: ``pip install "openmm-ldb[torchforce]"`` (openmmtorch 1.5 needs
torch 2.9.1, and ``import torch`` must come before ``import openmmtorch``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import List

import numpy as np
import torch

from .data import load_tensors

PRIOR_JSON = Path(__file__).parent / "resources" / "ca_prior.json"
KT_300 = 2.494  # kJ/mol at 300 K


def _table(values: np.ndarray, lo: float, hi: float, bins: int, jacobian, kt: float = KT_300,
           periodic: bool = False, cap: float = 30.0) -> dict:
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[1:] + edges[:-1])
    p = (hist + 0.5) / (hist.sum() + 0.5 * bins)
    p = p / jacobian(centres)
    # smooth with a 3-bin window (wrapping for periodic tables)
    pad = np.concatenate([p[-1:], p, p[:1]]) if periodic else np.concatenate([p[:1], p, p[-1:]])
    p = (pad[:-2] + pad[1:-1] + pad[2:]) / 3.0
    u = -kt * np.log(p)
    u = np.minimum(u - u.min(), cap)
    return {"lo": lo, "hi": hi, "values": [round(float(x), 4) for x in u]}


def fit_prior(dataset_path: str, max_chains: int = 600) -> dict:
    """Boltzmann-inverted Cα statistics of the training split of a featurized dataset."""
    data = load_tensors(dataset_path)
    bonds, angles, dihedrals, pairs = [], [], [], []
    chains = [c for c in data["chains"] if c["split"] == "train"][:max_chains]
    for c in chains:
        ca = c["xyz"][:, 1].astype(np.float64)
        seg = c["segment"]
        n = len(ca)
        same = seg[1:] == seg[:-1]
        d = np.linalg.norm(ca[1:] - ca[:-1], axis=-1)
        bonds.append(d[same])
        for i in range(1, n - 1):
            if seg[i - 1] == seg[i] == seg[i + 1]:
                a, b = ca[i - 1] - ca[i], ca[i + 1] - ca[i]
                angles.append(math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))
            if i + 2 < n and seg[i - 1] == seg[i] == seg[i + 1] == seg[i + 2]:
                b0, b1, b2 = ca[i] - ca[i - 1], ca[i + 1] - ca[i], ca[i + 2] - ca[i + 1]
                n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
                m1 = np.cross(n1, b1 / np.linalg.norm(b1))
                dihedrals.append(math.atan2(m1 @ n2, n1 @ n2))
        sub = ca[:: max(1, n // 150)] if n > 150 else ca
        idx = np.arange(n)[:: max(1, n // 150)] if n > 150 else np.arange(n)
        dm = np.linalg.norm(sub[:, None] - sub[None], axis=-1)
        sep = np.abs(idx[:, None] - idx[None])
        pairs.append(dm[(sep >= 3) & (dm < 12.0)])
    bonds, pairs = np.concatenate(bonds), np.concatenate(pairs)
    bonds = bonds[bonds < 4.2]  # cis and trans peptides; gaps are segments already
    prior = {
        "source": f"{len(chains)} training chains of {os.path.basename(dataset_path)}",
        "bond": _table(bonds, 2.6, 4.2, 64, lambda r: r * r),
        "angle": _table(np.array(angles), 0.0, math.pi, 90, lambda t: np.maximum(np.sin(t), 1e-3)),
        "dihedral": _table(np.array(dihedrals), -math.pi, math.pi, 72, lambda t: np.ones_like(t), periodic=True),
        "pair": _table(pairs, 3.0, 12.0, 90, lambda r: r * r),
    }
    # pair term: relative to the long-range plateau (zero at the cutoff), repulsive below range
    vals = np.array(prior["pair"]["values"])
    prior["pair"]["values"] = [round(float(x), 4) for x in vals - vals[-8:].mean()]
    return prior


def _interp(table: torch.Tensor, lo: float, hi: float, x: torch.Tensor, periodic: bool) -> torch.Tensor:
    n = table.shape[0]
    step = (hi - lo) / n
    f = (x - lo) / step - 0.5
    if periodic:
        f = torch.remainder(f, float(n))
        i0 = torch.floor(f).long()
        w = f - i0.to(f.dtype)
        return table[i0 % n] * (1 - w) + table[(i0 + 1) % n] * w
    f = torch.clamp(f, 0.0, float(n - 1))
    i0 = torch.clamp(torch.floor(f).long(), 0, n - 2)
    w = f - i0.to(f.dtype)
    return table[i0] * (1 - w) + table[i0 + 1] * w


class CaPrior(torch.nn.Module):
    """Energy (kJ/mol) of Cα positions (nm) from the tabulated prior; TorchScript-able."""

    def __init__(self, n_beads: int, chains: List[List[int]], prior: dict, pair_cutoff: float = 12.0):
        super().__init__()
        bonds, angles, dihedrals = [], [], []
        for chain in chains:
            for k in range(len(chain) - 1):
                bonds.append([chain[k], chain[k + 1]])
            for k in range(len(chain) - 2):
                angles.append(chain[k:k + 3])
            for k in range(len(chain) - 3):
                dihedrals.append(chain[k:k + 4])
        index = {b: (c, k) for c, chain in enumerate(chains) for k, b in enumerate(chain)}
        pairs = [[i, j] for i in range(n_beads) for j in range(i + 1, n_beads)
                 if not (index[i][0] == index[j][0] and abs(index[i][1] - index[j][1]) < 3)]
        self.register_buffer("bonds", torch.tensor(bonds, dtype=torch.long).view(-1, 2))
        self.register_buffer("angles", torch.tensor(angles, dtype=torch.long).view(-1, 3))
        self.register_buffer("dihedrals", torch.tensor(dihedrals, dtype=torch.long).view(-1, 4))
        self.register_buffer("pairs", torch.tensor(pairs, dtype=torch.long).view(-1, 2))
        for name in ("bond", "angle", "dihedral", "pair"):
            self.register_buffer(f"{name}_table", torch.tensor(prior[name]["values"], dtype=torch.float64))
        self.bond_range = (float(prior["bond"]["lo"]), float(prior["bond"]["hi"]))
        self.pair_range = (float(prior["pair"]["lo"]), float(prior["pair"]["hi"]))
        self.pair_cutoff = float(pair_cutoff)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        x = positions.to(torch.float64) * 10.0  # nm -> Å
        e = torch.zeros((), dtype=torch.float64, device=x.device)
        if self.bonds.shape[0] > 0:
            r = torch.linalg.norm(x[self.bonds[:, 1]] - x[self.bonds[:, 0]], dim=-1)
            lo, hi = self.bond_range
            # harmonic walls outside the tabulated range keep chains intact
            wall = 500.0 * (torch.relu(lo - r) ** 2 + torch.relu(r - hi) ** 2)
            e = e + (_interp(self.bond_table, lo, hi, r, False) + wall).sum()
        if self.angles.shape[0] > 0:
            a = x[self.angles[:, 0]] - x[self.angles[:, 1]]
            b = x[self.angles[:, 2]] - x[self.angles[:, 1]]
            cos = (a * b).sum(-1) / (torch.linalg.norm(a, dim=-1) * torch.linalg.norm(b, dim=-1))
            theta = torch.acos(torch.clamp(cos, -0.999999, 0.999999))
            e = e + _interp(self.angle_table, 0.0, math.pi, theta, False).sum()
        if self.dihedrals.shape[0] > 0:
            p = x[self.dihedrals]
            b0, b1, b2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 1], p[:, 3] - p[:, 2]
            n1 = torch.cross(b0, b1, dim=-1)
            n2 = torch.cross(b1, b2, dim=-1)
            m1 = torch.cross(n1, b1 / torch.linalg.norm(b1, dim=-1, keepdim=True), dim=-1)
            phi = torch.atan2((m1 * n2).sum(-1), (n1 * n2).sum(-1))
            e = e + _interp(self.dihedral_table, -math.pi, math.pi, phi, True).sum()
        if self.pairs.shape[0] > 0:
            r = torch.linalg.norm(x[self.pairs[:, 1]] - x[self.pairs[:, 0]], dim=-1)
            lo, hi = self.pair_range
            inside = (r < self.pair_cutoff).to(r.dtype)
            core = 50.0 * torch.relu(lo - r) ** 2  # repulsive core below the observed range
            e = e + ((_interp(self.pair_table, lo, hi, r, False) + core) * inside).sum()
        return e.to(positions.dtype)


def load_prior() -> dict:
    with open(PRIOR_JSON) as f:
        return json.load(f)


def prior_module(topology) -> torch.jit.ScriptModule:
    """The scripted prior for a one-bead-per-residue OpenMM topology (chains from the topology)."""
    chains = [[a.index for r in c.residues() for a in r.atoms()] for c in topology.chains()]
    return torch.jit.script(CaPrior(topology.getNumAtoms(), chains, load_prior()))


def torch_prior_system(topology, model_path: str | None = None):
    """An OpenMM System whose only force is the prior, as an ``openmmtorch.TorchForce``."""
    import openmm

    import torch  # noqa: F401  (openmmtorch needs torch imported first)
    try:
        import openmmtorch
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise ImportError("the openmm-torch CG prior needs openmmtorch: pip install 'openmm-ldb[torchforce]' "
                          "(openmmtorch 1.5 with torch 2.9.1)") from exc
    from . import cg

    module = prior_module(topology)
    system = openmm.System()
    for residue in topology.residues():
        system.addParticle(cg.RESIDUE_PARAMETERS[_one_letter(residue.name)][1])
    if model_path is None:
        force = openmmtorch.TorchForce(module)
    else:
        module.save(model_path)
        force = openmmtorch.TorchForce(model_path)
    system.addForce(force)
    system.addForce(openmm.CMMotionRemover())
    return system


def _one_letter(name: str) -> str:
    from . import residues as rc

    return rc.THREE_TO_ONE[rc.canonical_residue_name(name)]


if __name__ == "__main__":
    import sys

    prior = fit_prior(sys.argv[1] if len(sys.argv) > 1 else "cache/dataset.pt")
    PRIOR_JSON.parent.mkdir(exist_ok=True)
    with open(PRIOR_JSON, "w") as f:
        json.dump(prior, f)
    print(f"wrote {PRIOR_JSON} ({prior['source']})")
