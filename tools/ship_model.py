"""Ship a model as the default only when it beats the shipped one, paired on the same chains.

    python tools/ship_model.py runs/guess/checkpoint.pt --data ../shared/data --max-chains 60 \
        [--settings '{"guess_ddim_steps": 4}'] [--write]

1. exports the candidate (a best-guess training checkpoint, or an exported model file) with the
   given sampler settings to a temporary TorchScript file;
2. evaluates it and the shipped default on the same validation chains (by cluster30; never seen
   in training), same settings otherwise, one thread;
3. prints the paired comparison; with ``--write`` and a lower mean heavy-atom RMSD, re-exports the
   candidate to openmm_ldb/weights/ldb_default.pt with the validation figures, the comparison and
   the accumulated training summary (steps, CPU-hours, data) in its card.

    python tools/ship_model.py --refresh-card

re-exports the shipped weights with this package's function and settings and the validation
figures of ``benchmarks/results/validation/metrics.json`` (``openmm-ldb evaluate --max-chains 60
--out benchmarks/results/validation`` on the same weights): for a change of the function, not of
the weights (the paired comparison of the weights stays in the card).
"""

import argparse
import json
import os
import shutil
import tempfile

import numpy as np
import torch

from openmm_ldb.data import load_tensors
from openmm_ldb.evaluate import evaluate, validation_chains
from openmm_ldb.export import default_model_path, export_model, load_checkpoint, model_from_exported


HIGHER_IS_BETTER = {"chi1_acc", "chi12_acc", "bond_validity", "disulfides_recovered"}


def training_summary(log_path: str, base: dict | None, ck: dict) -> dict:
    rows = [json.loads(line) for line in open(log_path)]
    vals = [r for r in rows if "val_guess_rmsd" in r and r["step"] <= ck["step"]]
    return {"stage_1_2": base, "best_guess_stage": {
        "steps": ck["step"], "cpu_hours": round(ck.get("cpu_seconds", 0.0) / 3600, 3),
        "wall_minutes": round(ck.get("elapsed", 0.0) / 60, 1),
        "data": "train.tsv training clusters (1,758 chains); from step 4,900 also the five NMR ensembles of "
                "shared/data/ensembles/nmr_models (195 models, five more clusters); Cα with 0-0.3 Å Gaussian noise "
                "on half the chains; from step 16,300 the trace-quality input and the squared coordinate loss",
        "validation_during_training": vals[-4:]}, "hardware": "2 CPU cores, PyTorch CPU, 1 thread"}


def heads_summary(log_path: str, before: dict, ck: dict) -> dict:
    """The training record of a run that trained the well heads alone on the shipped network: the
    network's own record stays as it was, the heads' run is added."""
    rows = [json.loads(line) for line in open(log_path)]
    start = next((r for r in rows if r.get("event") == "start"), {})
    last = [r for r in rows if r.get("phase") == "heads" and r["step"] <= ck["step"]][-20:]
    return {**before, "well_heads_stage": {
        "steps": ck["step"], "cpu_hours": round(ck.get("cpu_seconds", 0.0) / 3600, 3),
        "wall_minutes": round(ck.get("elapsed", 0.0) / 60, 1), "init": start.get("init"),
        "trained": "the chi1/chi2 well head and the per-well chi2-chi4 head (Decoder.well_head, well_chi_head) "
                   "alone, every other weight held as shipped (python -m openmm_ldb.training guess ... --heads-only)",
        "data": "the best-guess stage's: train.tsv training clusters and the five NMR ensembles, noised Cα",
        "final_losses": {k: round(sum(r[k] for r in last) / max(len(last), 1), 4) for k in ("wells", "well_chi")}}}


def load_candidate(path: str):
    if path.endswith(".pt") and "checkpoint" not in os.path.basename(path):
        return model_from_exported(path)[0], None
    ck = load_tensors(path)
    return load_checkpoint(path), ck


def refresh_card(eval_dir: str) -> None:
    model, card = model_from_exported(default_model_path())
    new = json.load(open(os.path.join(eval_dir, "metrics.json")))
    val = dict(card.get("validation", {}))
    val.update({"n_chains": new["n_chains"], "n_residues": new["n_residues"], "mean": new["mean"],
                "mode": "deterministic best guess with the sampler settings in this card (re-measured after a "
                        "change of the function; the paired comparison is of these weights against the previous "
                        "ones, with the function of that time)"})
    # the function's settings stay those of the card (the well choice's fitted weights among them)
    export_model(model, default_model_path(), {"validation": val, "training": card.get("training")},
                 settings=card.get("sampler_settings"))
    print(f"wrote {default_model_path()}: {json.dumps({k: round(v, 3) for k, v in new['mean'].items()})}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("candidate", nargs="?")
    p.add_argument("--refresh-card", action="store_true")
    p.add_argument("--data", default=None)
    p.add_argument("--max-chains", type=int, default=60)
    p.add_argument("--settings", default="{}")
    p.add_argument("--write", action="store_true")
    p.add_argument("--eval-dir", default=os.path.join("benchmarks", "results", "validation"))
    args = p.parse_args()
    if args.refresh_card:
        refresh_card(args.eval_dir)
        return
    settings = json.loads(args.settings)
    torch.set_num_threads(1)
    chains = validation_chains(args.data, args.max_chains)
    base_card = model_from_exported(default_model_path())[1]
    with tempfile.TemporaryDirectory() as tmp:
        model, ck = load_candidate(args.candidate)
        cand_path = os.path.join(tmp, "candidate.pt")
        export_model(model, cand_path, None, settings=settings)
        old_path = os.path.join(tmp, "shipped.pt")
        shutil.copy(default_model_path(), old_path)
        new = evaluate(cand_path, chains, samples=1, out_dir=args.eval_dir, threads=1)
        old = evaluate(old_path, chains, samples=1, out_dir=None, plots=False, threads=1, verbose=False)
    keys = ["heavy_rmsd", "backbone_rmsd", "sidechain_rmsd", "chi1_acc", "chi12_acc", "clashes_per_1000", "ged",
            "bond_validity", "disulfides_recovered", "ms_per_residue"]
    paired = {}
    for k in keys:
        a = np.array([r[k] for r in new["chains"]], dtype=float)
        b = np.array([r[k] for r in old["chains"]], dtype=float)
        ok = np.isfinite(a) & np.isfinite(b)
        d = a[ok] - b[ok]
        better = d > 0 if k in HIGHER_IS_BETTER else d < 0
        worse = d < 0 if k in HIGHER_IS_BETTER else d > 0
        paired[k] = {"candidate": round(float(a[ok].mean()), 4), "shipped": round(float(b[ok].mean()), 4),
                     "mean_difference": round(float(d.mean()), 4), "chains_better": int(better.sum()),
                     "chains_worse": int(worse.sum())}
    print(json.dumps(paired, indent=1))
    better = paired["heavy_rmsd"]["mean_difference"] < 0
    if args.write and better:
        base = base_card.get("training", {})
        base = base.get("stage_1_2", base)
        log = os.path.join(os.path.dirname(os.path.abspath(args.candidate)), "train.log")
        if ck is None:
            summary = base_card.get("training")
        elif ck.get("heads_only"):
            summary = heads_summary(log, base_card.get("training") or {}, ck)
        else:
            summary = training_summary(log, base, ck)
        card = {"validation": {"split": "train.tsv clusters with crc32(cluster30) % 100 < 10 (by protein)",
                               "n_chains": new["n_chains"], "n_residues": new["n_residues"],
                               "mode": "deterministic best guess with the sampler settings in this card",
                               "mean": new["mean"], "paired_against_previous_default": paired},
                "training": summary}
        export_model(model, default_model_path(), card, settings=settings)
        print(f"wrote {default_model_path()}")
    elif args.write:
        print("not written: the candidate does not beat the shipped model on heavy-atom RMSD")


if __name__ == "__main__":
    main()
