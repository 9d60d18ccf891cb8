"""Is the .pt2 file the same function as the TorchScript file and the Python sampler?

Exports the shipped model with ``openmm-ldb export -o <tmp>/ldb.pt2``, then backmaps validation
chains (by cluster, 41+ residues) with their native Cα and with 0.3 Å of Gaussian noise, each
with the disulfide pairs of its cysteines (Cα within 6.5 Å), through the three: reports the
largest atom difference between them, export and load times, and the median time of a call of
each (one thread).

    python benchmarks/pt2_check.py --max-chains 12
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from openmm_ldb.cli import main as cli
from openmm_ldb.evaluate import validation_chains
from openmm_ldb.export import default_model_path, load_model


def _pairs(ca: torch.Tensor, restype: torch.Tensor) -> torch.Tensor:
    cys = (restype == 1).nonzero().view(-1)
    if len(cys) < 2:
        return torch.zeros(0, 2, dtype=torch.long)
    d = torch.cdist(ca[0, cys], ca[0, cys])
    i, j = torch.nonzero((d < 6.5) & (d > 0), as_tuple=True)
    keep = i < j
    return torch.stack([cys[i[keep]], cys[j[keep]]], 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-chains", type=int, default=12)
    p.add_argument("--out", default="benchmarks/results/pt2_check.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    path = os.path.join(tempfile.mkdtemp(), "ldb.pt2")
    t = time.perf_counter()
    cli(["export", "-o", path])
    export_s = time.perf_counter() - t
    t = time.perf_counter()
    pt2, card = load_model(path)
    load_s = time.perf_counter() - t
    ts, _ = load_model(default_model_path(), python=False)
    py, _ = load_model(default_model_path())
    n_min = card["pt2"]["min_residues"]
    chains = [c for c in validation_chains(max_chains=3 * a.max_chains) if len(c.restype) >= n_min][:a.max_chains]
    rows = []
    gen = torch.Generator().manual_seed(0)
    seed = torch.zeros(1, dtype=torch.long)
    for ch in chains:
        ca = torch.as_tensor(np.asarray(ch.xyz[0])[:, 1], dtype=torch.float32)[None]
        restype = torch.as_tensor(np.asarray(ch.restype))
        segment = torch.as_tensor(np.asarray(ch.segment))
        pairs = _pairs(ca, restype)
        for kind, x in (("native", ca), ("noise 0.3", ca + 0.3 * torch.randn(ca.shape, generator=gen))):
            times = {"pt2": [], "torchscript": [], "python": []}
            with torch.inference_mode():
                for _ in range(3):
                    for name, fn in (("pt2", lambda: pt2(x, restype, segment, pairs, seed)),
                                     ("torchscript", lambda: ts(x, restype, segment, pairs, seed, 1, 1, True, False)),
                                     ("python", lambda: py(x, restype, segment, pairs, seed, 1, 1, True, False))):
                        t = time.perf_counter()
                        out = fn()
                        times[name].append(time.perf_counter() - t)
                        if name == "pt2":
                            a_pt2 = out[0]
                        elif name == "torchscript":
                            a_ts = out[0]
                        else:
                            a_py = out[0]
            rows.append({"chain": ch.name, "residues": len(restype), "input": kind, "disulfides": int(pairs.shape[0]),
                         "pt2_vs_torchscript_A": float((a_pt2 - a_ts).abs().max()),
                         "pt2_vs_python_A": float((a_pt2 - a_py).abs().max()),
                         **{f"{k}_ms": round(1000 * float(np.median(v)), 1) for k, v in times.items()}})
            print(rows[-1], flush=True)
    out = {"export_s": round(export_s, 1), "load_s": round(load_s, 1), "min_residues": n_min, "n": len(rows),
           "max_pt2_vs_torchscript_A": max(r["pt2_vs_torchscript_A"] for r in rows),
           "max_pt2_vs_python_A": max(r["pt2_vs_python_A"] for r in rows),
           "pt2_over_torchscript_time": round(float(np.median([r["pt2_ms"] / r["torchscript_ms"] for r in rows])), 2),
           "rows": rows}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print({k: v for k, v in out.items() if k != "rows"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
