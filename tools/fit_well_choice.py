"""Fit the weights of the sampler's chi1 well choice (``well_choice``) on training chains.

The features are the sampler's own (:meth:`Sampler.well_features`), computed as the best guess
computes them: the regularized trace, the network's angles snapped to the nearest wells, atoms
placed.  The weights maximize the likelihood of the true well (a conditional logit over the three
wells) on one chain from each of ``--clusters`` training clusters; validation chains are never
read.  With ``--contacts`` the features include the contact counts
(:meth:`Sampler.contact_counts`) and each residue type gets weights of its own (types with fewer
than ``--min-residues`` take the shared ones, ``"*"``).  Prints the weights and the well accuracy
of the nearest well, the head and the fitted choice on those chains.

    python tools/fit_well_choice.py /work/cache/dataset.pt [--model ldb.pt] [--clusters 160] [--types ...] \
        [--settings '{"well_choice_chi": 1}']
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from openmm_ldb import geometry as geo
from openmm_ldb import residues as rc
from openmm_ldb.export import model_from_exported
from openmm_ldb.model.sampler import WELL_FEATURES, Sampler
from openmm_ldb.training import _cluster_index, load_split, make_batch


def chain_features(sampler: Sampler, model, chain: dict):
    """Features [R, 3, 7], true wells [R] and nearest wells [R] of a chain's residues of the
    sampler's ``well_choice_types`` whose chi1 is in the file."""
    b = make_batch([chain], [0], 100_000, random.Random(0))
    seg, rt = b["segment"][0], b["restype"][0]
    n = rt.shape[0]
    x, *_, angles, _, wells, well_chi = sampler.trace_and_guess(b["ca"], rt, seg, False,
                                                                torch.zeros(0, 2, dtype=torch.long))
    angles = sampler.snap_chi(angles, rt)
    atoms, _ = sampler.tables.build_atoms(x, rt, seg, angles)
    sel = torch.nonzero(sampler.well_choice_types[rt] > 0).squeeze(1)
    feats = sampler.well_features(atoms, rt, angles, wells, sel, well_chi)[0][0]
    true = torch.zeros(1, n, rc.NUM_SLOTS, 3)
    true[:, :, : b["atoms"].shape[2]] = b["atoms"]
    ta, tm = model._true_angles(true, b["restype"], b["segment"])
    tm = tm * model._angle_present(b["present"], b["restype"], b["segment"])
    keep = tm[0, sel, geo.CHI0] > 0
    true_well = (ta[0, sel, geo.CHI0] @ sampler.chi1_wells.T).argmax(-1)
    nearest = (angles[0, sel, geo.CHI0] @ sampler.chi1_wells.T).argmax(-1)
    return feats[keep], true_well[keep], nearest[keep], rt[sel][keep]


def fit(feats: torch.Tensor, target: torch.Tensor, l2: float = 1e-3) -> torch.Tensor:
    """Conditional-logit weights (on features scaled to unit spread, returned unscaled)."""
    scale = feats.reshape(-1, feats.shape[-1]).std(0) + 1e-6
    x = feats / scale
    w = torch.zeros(feats.shape[-1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w, target) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (w / scale).detach()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="featurized dataset (python -m openmm_ldb.data DATA OUT.pt)")
    p.add_argument("--model", default=None, help="model file (default: the shipped one)")
    p.add_argument("--clusters", type=int, default=120)
    p.add_argument("--contacts", action="store_true", help="contact counts and weights per residue type")
    p.add_argument("--min-residues", type=int, default=300)
    p.add_argument("--l2", type=float, default=1e-2, help="ridge on the per-type weights (scaled features)")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--types", nargs="*", default=None, help="residue types (default: the sampler's well_choice_types)")
    p.add_argument("--settings", default="{}", help="sampler settings (JSON) over the model card's, e.g. "
                   "'{\"well_choice_chi\": 1}'")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    chains, _, _ = load_split(args.dataset)
    model, card = model_from_exported(args.model)
    settings = {**(card.get("sampler_settings") or {}), **json.loads(args.settings)}
    if args.types:
        settings["well_choice_types"] = args.types
    # the weights only select which features are computed here (7, or with the contact counts)
    settings["well_choice"] = [0.0] * (WELL_FEATURES if args.contacts else 7)
    sampler = Sampler(model, settings).eval()
    clusters = _cluster_index(chains)
    names = sorted(clusters)
    random.Random(args.seed).shuffle(names)
    out = []
    with torch.no_grad():
        for name in names[: args.clusters]:
            out.append(chain_features(sampler, model, chains[clusters[name][0]]))
    feats, target, nearest, restype = (torch.cat([o[i] for o in out]) for i in range(4))
    w = fit(feats, target)
    score = (feats * w).sum(-1)
    weights = [round(float(v), 4) for v in w]
    if args.contacts:
        weights = {"*": weights}
        for name in settings["well_choice_types"]:
            sel = restype == rc.RESTYPE_INDEX[name]
            if int(sel.sum()) >= args.min_residues:
                wt = fit(feats[sel], target[sel], args.l2)
                score[sel] = (feats[sel] * wt).sum(-1)
                weights[name] = [round(float(v), 5) for v in wt]
    acc = float((score.argmax(-1) == target).float().mean())
    print(json.dumps({"residues": int(target.shape[0]), "clusters": args.clusters,
                      "nearest_well_accuracy": round(float((nearest == target).float().mean()), 4),
                      "head_accuracy": round(float((feats[..., 6].argmax(-1) == target).float().mean()), 4),
                      "fitted_accuracy": round(acc, 4), "well_choice": weights}))


if __name__ == "__main__":
    main()
