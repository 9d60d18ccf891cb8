"""Mean ms/residue of the exported function alone (best guess, no plan, no I/O), best of five
repeats, on the first 16 of 30 validation chains, for one or more settings overrides.

    python benchmarks/function_time.py '{}' '{"proline_contact_weight": 0}'
    python benchmarks/function_time.py --model other.pt '{}' @settings.json

A setting given as ``@file`` is read from that JSON file.
"""
import json
import sys
import time

import numpy as np
import torch

from openmm_ldb import evaluate as ev
from openmm_ldb.export import load_model


def main() -> int:
    torch.set_num_threads(1)
    chains = ev.validation_chains(max_chains=30)[:16]
    args = sys.argv[1:]
    model = None
    if args[:1] == ["--model"]:
        model, args = args[1], args[2:]
    cfgs = [json.load(open(a[1:])) if a.startswith("@") else json.loads(a) for a in args] or [{}]
    data = []
    for ch in chains:
        ca = torch.as_tensor(np.asarray(ch.xyz[0])[:, 1], dtype=torch.float32)[None]
        data.append((ca, torch.as_tensor(np.asarray(ch.restype)), torch.zeros(len(ch.restype), dtype=torch.long)))
    mods = [load_model(model, settings=c)[0] for c in cfgs]
    pairs, seed = torch.zeros(0, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    best = [[1e9] * len(data) for _ in mods]
    with torch.inference_mode():
        for _ in range(5):
            for i, mod in enumerate(mods):
                for j, (ca, rt, seg) in enumerate(data):
                    t = time.perf_counter()
                    mod(ca, rt, seg, pairs, seed, 1, 1, True, False)
                    best[i][j] = min(best[i][j], (time.perf_counter() - t) / len(rt) * 1000)
    for a, b in zip(args or ["{}"], best):
        print(round(float(np.mean(b)), 4), "mean ms/residue", a if len(a) < 200 else a[:200] + "...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
