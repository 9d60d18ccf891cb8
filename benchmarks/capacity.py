"""What capacity costs at inference: the best guess's CPU time per residue for larger kNN graphs
(k) and hidden sizes, the shipped model's layer counts, one thread.

    python benchmarks/capacity.py [--residues 300]

Networks with random weights (timing only: accuracy needs training, see the model card for the
trained ones) run the exported function on a real Cα trace (a validation chain, or protein G
repeated); median of 5 calls after 2 warm-ups.  The clash resolution's work depends on how
clean the network's side chains are (random weights clash everywhere), so every size is timed
without it (``network_ms_per_residue``: trace, network, placement) and the whole function is
estimated as the shipped model's whole time plus the difference of network times.  Writes
``benchmarks/results/capacity.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from openmm_ldb import residues as rc
from openmm_ldb.export import model_from_exported
from openmm_ldb.model import LDBConfig, LDBModel
from openmm_ldb.model.sampler import Sampler


def trace(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from openmm_ldb.data import data_dir, list_chains, read_chain

    try:
        rows = [r for r in list_chains(data_dir()) if r["split"] == "val" and int(r["nres"]) >= n]
        chain = read_chain(rows[0]["path"], rows[0]["chain"])
        return torch.as_tensor(chain.xyz[0, :n, 1], dtype=torch.float32), torch.as_tensor(chain.restype[:n])
    except FileNotFoundError:
        from openmm_ldb import cg

        go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
        x = np.asarray(go.native_positions.value_in_unit(go.native_positions.unit)) * 10.0
        reps = (n + len(x) - 1) // len(x)
        ca = np.concatenate([x + 40.0 * k for k in range(reps)])[:n]
        rt = np.tile([rc.RESTYPE_INDEX["ALA"]] * len(x), reps)[:n]
        return torch.as_tensor(ca, dtype=torch.float32), torch.as_tensor(rt)


def time_sampler(sampler: Sampler, ca: torch.Tensor, restype: torch.Tensor) -> float:
    n = ca.shape[0]
    args = (ca[None], restype, torch.zeros(n, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long),
            torch.zeros(1, dtype=torch.long), 4, 1, True, False)
    with torch.no_grad():
        for _ in range(2):
            sampler(*args)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            sampler(*args)
            times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times)) / n


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--residues", type=int, default=300)
    p.add_argument("--out", default="benchmarks/results/capacity.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    ca, restype = trace(a.residues)
    shipped, card = model_from_exported()
    base = card["config"]
    bare = {"repack_sweeps": 0, "relax_steps": 0, "hydrogen_rounds": 0}
    whole = time_sampler(Sampler(shipped).eval(), ca, restype)
    net0 = time_sampler(Sampler(shipped, bare).eval(), ca, restype)
    rows = [{"k": base["k"], "hidden": base["hidden"], "shipped": True, "network_ms_per_residue": round(net0, 3),
             "ms_per_residue": round(whole, 3)}]
    for k, hidden in ((24, 96), (32, 96), (16, 128), (24, 128), (16, 160)):
        torch.manual_seed(0)
        model = LDBModel(LDBConfig(**{**base, "k": k, "hidden": hidden})).eval()
        net = time_sampler(Sampler(model, bare).eval(), ca, restype)
        rows.append({"k": k, "hidden": hidden, "shipped": False, "network_ms_per_residue": round(net, 3),
                     "ms_per_residue": round(whole + net - net0, 3)})
        print(rows[-1], flush=True)
    print(rows[0])
    result = {"residues": int(ca.shape[0]), "threads": 1, "rows": rows,
              "note": "random weights except the shipped row: timing only; ms_per_residue: the whole function "
                      "(trace regularization, network, placement, clash resolution, relaxation, hydrogens), "
                      "estimated for the other sizes as the shipped whole + their network difference"}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
