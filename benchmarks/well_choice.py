"""How often the chi1 well choice picks the true well, per residue type, on validation chains.

    python benchmarks/well_choice.py /work/cache/dataset.pt [--model ldb.pt] [--max-chains 55]

For every residue of the model card's ``well_choice_types`` whose chi1 is in the file, on the
validation chains of the featurized dataset (``python -m openmm_ldb.data DATA OUT.pt``; held-out
clusters, never read by ``tools/fit_well_choice.py``): the well (60, 180, -60 degrees) nearest
the network's own chi1, and the well the card's ``well_choice`` scores best, against the true
well.  This is the choice alone, before the clash resolution and the relaxation (the validation
figures of ``openmm-ldb evaluate`` are after them).  Writes
``benchmarks/results/well_choice.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from openmm_ldb import residues as rc
from openmm_ldb.export import model_from_exported
from openmm_ldb.model.sampler import Sampler
from openmm_ldb.training import load_split

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from fit_well_choice import chain_features  # noqa: E402  (the fit's own features)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("--model", default=None)
    p.add_argument("--max-chains", type=int, default=55)
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "well_choice.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    _, val, _ = load_split(args.dataset)
    model, card = model_from_exported(args.model)
    sampler = Sampler(model, card["sampler_settings"]).eval()
    with torch.no_grad():
        out = [chain_features(sampler, model, c) for c in val[: args.max_chains]]
    feats, true, nearest, restype = (torch.cat([o[i] for o in out]) for i in range(4))
    chosen = (feats * sampler.well_choice[restype].unsqueeze(1)).sum(-1).argmax(-1)
    rows = {}
    for name in card["sampler_settings"]["well_choice_types"]:
        m = restype == rc.RESTYPE_INDEX[name]
        if int(m.sum()):
            rows[name] = {"residues": int(m.sum()),
                          "nearest_well": round(float((nearest[m] == true[m]).float().mean()), 3),
                          "well_choice": round(float((chosen[m] == true[m]).float().mean()), 3)}
    result = {"command": "python benchmarks/well_choice.py DATASET.pt " + " ".join((argv or sys.argv[1:])[1:]),
              "chains": min(args.max_chains, len(val)), "residues": int(true.shape[0]),
              "nearest_well": round(float((nearest == true).float().mean()), 4),
              "well_choice": round(float((chosen == true).float().mean()), 4), "per_type": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    json.dump(result, open(args.out, "w"), indent=1)
    for name, r in rows.items():
        print(f"{name} {r['residues']:5d}  nearest {r['nearest_well']:.3f}  choice {r['well_choice']:.3f}")
    print(f"all {result['residues']} residues: nearest {result['nearest_well']:.4f}, choice {result['well_choice']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
