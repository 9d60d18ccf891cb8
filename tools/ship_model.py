"""Export a training checkpoint as the shipped default model, with measured validation metrics
in its model card.

    python tools/ship_model.py runs/default/checkpoint.pt --data ../shared/data --max-chains 60

1. exports the checkpoint to a temporary TorchScript file;
2. evaluates it on the validation split (by cluster30; chains never seen in training);
3. re-exports it to openmm_ldb/weights/ldb_default.pt with the card carrying those metrics and
   the training summary from <run>/train.log.
"""

import argparse
import json
import os
import tempfile

from openmm_ldb.evaluate import evaluate, validation_chains
from openmm_ldb.export import export_model


def training_summary(log_path: str) -> dict:
    rows = [json.loads(line) for line in open(log_path)]
    starts = [r for r in rows if r.get("event") == "start"]
    steps = [r for r in rows if "step" in r and "loss" in r]
    vals = [r for r in rows if "val_sample_rmsd" in r]
    last = steps[-1] if steps else {}
    return {"train_chains": starts[-1].get("train_chains"), "train_clusters": starts[-1].get("train_clusters"),
            "skipped_when_reading": starts[-1].get("skipped"), "steps": last.get("step"),
            "minutes": last.get("elapsed_min"), "final_train_losses": {k: last.get(k) for k in (
                "angle", "coord", "recon_rmsd", "diffusion", "clash", "perplexity", "codes_used")},
            "validation_during_training": vals[-3:], "hardware": "2 CPU cores, PyTorch CPU"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--data", default=None)
    p.add_argument("--max-chains", type=int, default=60)
    p.add_argument("--out", default=os.path.join("openmm_ldb", "weights", "ldb_default.pt"))
    p.add_argument("--eval-dir", default=os.path.join("benchmarks", "results", "validation"))
    args = p.parse_args()
    run_dir = os.path.dirname(os.path.abspath(args.checkpoint))
    summary = training_summary(os.path.join(run_dir, "train.log"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_model = os.path.join(tmp, "model.pt")
        export_model(args.checkpoint, tmp_model)
        chains = validation_chains(args.data, args.max_chains)
        result = evaluate(tmp_model, chains, samples=1, out_dir=args.eval_dir)
    card = {"validation": {"split": "train.tsv clusters with crc32(cluster30) % 100 < 10 (by protein)",
                           "n_chains": result["n_chains"], "n_residues": result["n_residues"],
                           "mode": "deterministic best guess (4 denoising steps, continuous latent) + side-chain repacking", "mean": result["mean"]},
            "training": summary}
    export_model(args.checkpoint, args.out, card)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")
    print(json.dumps(card["validation"]["mean"], indent=1))


if __name__ == "__main__":
    main()
