"""How well the per-residue confidence (expected side-chain error, Å) ranks the real errors.

    python benchmarks/confidence.py --max-chains 40

Backmaps validation chains (held-out clusters) with the default best guess, takes
``info["expected_error"]`` per residue and the real side-chain RMSD per residue (heavy atoms beyond
CB, symmetric atoms swapped), and reports Spearman's rho over all residues with side chains (and
the mean of per-chain rhos).  Writes ``benchmarks/results/confidence.json``.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
from scipy.stats import spearmanr

from openmm_ldb import evaluate as ev
from openmm_ldb import metrics
from openmm_ldb.backmapper import Backmapper


def residue_sidechain_rmsd(pred, true, present, restype) -> np.ndarray:
    h = metrics.HEAVY
    pred_sw, _ = metrics._swap_symmetric(pred[:, :h], true[:, :h], present[:, :h], restype)
    w = present[:, :h].astype(float).copy()
    w[:, :5] = 0.0
    d2 = np.where(w > 0, ((pred_sw - np.nan_to_num(true[:, :h])) ** 2).sum(-1), 0.0)
    n = w.sum(-1)
    out = np.full(len(restype), np.nan)
    ok = n > 0
    out[ok] = np.sqrt(d2[ok].sum(-1) / n[ok])
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--max-chains", type=int, default=40)
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="benchmarks/results/confidence.json")
    a = p.parse_args()
    bm = Backmapper(a.model, threads=1)
    conf, err, per_chain = [], [], []
    for chain in ev.validation_chains(max_chains=a.max_chains):
        top, ca = ev.cg_topology(chain), ev.ca_positions_nm(chain)
        plan = bm.plan(top, ca, hydrogens=False)
        info = {}
        out = bm.sample(plan, ca, 1, deterministic=True, info=info)
        pred, pres = ev.to_slots(plan.layout, out[0, 0], len(chain.restype))
        present = (chain.present > 0) & pres
        e = residue_sidechain_rmsd(pred, chain.xyz[0], present, chain.restype)
        c = info["expected_error"][0, 0]
        ok = np.isfinite(e)
        conf.append(c[ok])
        err.append(e[ok])
        if ok.sum() > 10:
            per_chain.append(spearmanr(c[ok], e[ok]).correlation)
    c, e = np.concatenate(conf), np.concatenate(err)
    out = {"residues": int(len(c)), "chains": len(per_chain), "spearman_rho": round(float(spearmanr(c, e).correlation), 3),
           "spearman_rho_mean_per_chain": round(float(np.nanmean(per_chain)), 3),
           "mean_expected_error": round(float(c.mean()), 3), "mean_real_error": round(float(e.mean()), 3)}
    print(json.dumps(out))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
