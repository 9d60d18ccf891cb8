"""``openmm-ldb evaluate``: accuracy of a model on held-out real chains.

Every chain's true Cα trace is backmapped (deterministic mode; with ``samples > 1`` also that
many stochastic samples for the ensemble diversity), the output atoms are put back into the
slot layout through the plan's layout (``plan.layout.residue/slot``) and scored with
:func:`openmm_ldb.metrics.chain_metrics` against the real structure, using the segments the
backmapper used (``plan.segment``).

Chains: the validation split of ``train.tsv`` (``data.list_chains`` rows with
``split == 'val'``, i.e. held-out 30 % sequence clusters), one chain per cluster, 30-500
residues, in a fixed pseudo-random order (CRC32 of the cluster name) so that ``max_chains``
always picks the same, varied subset; or every protein chain of every PDB/mmCIF file in a
folder.  Multi-model files use model 1.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
import zlib
from collections import Counter

import numpy as np

from . import data as data_mod
from . import metrics
from . import residues as rc

MIN_RESIDUES = 30
MAX_RESIDUES = 500
MIN_REFERENCE_BOND_VALIDITY = 0.9   # references with worse geometry (e.g. 4HHB) are skipped
STRUCTURE_SUFFIXES = (".pdb", ".pdb.gz", ".ent", ".ent.gz", ".cif", ".cif.gz", ".mmcif", ".pdbx")
TABLE_KEYS = [("heavy_rmsd", "heavy", "{:.2f}"), ("backbone_rmsd", "bb", "{:.2f}"), ("sidechain_rmsd", "sc", "{:.2f}"),
              ("chi1_acc", "chi1", "{:.2f}"), ("chi12_acc", "chi12", "{:.2f}"), ("bond_validity", "bonds", "{:.3f}"),
              ("ged", "GED", "{:.1f}"), ("clashes_per_1000", "clash", "{:.1f}"),
              ("clashes_per_1000_ref", "clash_ref", "{:.1f}"), ("chirality_L", "L", "{:.2f}"),
              ("cis_trans_agreement", "cis/tr", "{:.3f}"), ("disulfides_recovered", "SS", "{:.2f}"),
              ("ms_per_residue", "ms/res", "{:.2f}")]


# ----------------------------------------------------------------------------------------
# Chains
# ----------------------------------------------------------------------------------------
def clean_chain(chain: data_mod.Chain) -> data_mod.Chain | None:
    """First model only, residues of one-residue segments dropped (they cannot be backmapped:
    a lone residue between two chain breaks), segment ids renumbered."""
    seg = chain.segment
    sizes = np.bincount(seg - seg.min())
    keep = sizes[seg - seg.min()] >= 2
    if keep.sum() < 2:
        return None
    new_seg = seg[keep]
    new_seg = np.cumsum(np.concatenate([[True], new_seg[1:] != new_seg[:-1]])) - 1
    return data_mod.Chain(name=chain.name, restype=chain.restype[keep], segment=new_seg.astype(np.int64),
                          xyz=chain.xyz[:1, keep], present=chain.present[keep], cluster=chain.cluster)


def _reference_ok(chain: data_mod.Chain) -> bool:
    m = metrics.chain_metrics(chain.xyz[0], chain.xyz[0], chain.present, chain.restype, chain.segment)
    return not (m["bond_validity"] < MIN_REFERENCE_BOND_VALIDITY)


def _row_preference(r: dict):
    """Within a cluster prefer single-model X-ray files with complete side chains."""
    relaxed = "rosetta_relaxed" in r["file"]
    tie = zlib.crc32(f"{r['file']}:{r['chain']}".encode())
    return (relaxed, r["nmodels"] != "1", -float(r["frac_sc_complete"] or 0), tie)


def validation_rows(data_path: str | None = None, min_res: int = MIN_RESIDUES,
                    max_res: int = MAX_RESIDUES) -> list[list[dict]]:
    """Validation rows of ``train.tsv``: the preferred row of each held-out cluster, in a fixed
    order (CRC32 of the cluster name), 30-500 residues."""
    rows = [r for r in data_mod.list_chains(data_path) if r["split"] == "val" and min_res <= int(r["nres"]) <= max_res]
    by_cluster: dict[str, list] = {}
    for r in rows:
        by_cluster.setdefault(r["cluster30"], []).append(r)
    ordered = sorted(by_cluster, key=lambda c: (zlib.crc32(c.encode()), c))
    return [sorted(by_cluster[c], key=_row_preference) for c in ordered]


def validation_chains(data_path: str | None = None, max_chains: int | None = None, skipped: Counter | None = None,
                      min_res: int = MIN_RESIDUES, max_res: int = MAX_RESIDUES) -> list[data_mod.Chain]:
    """Deterministic list of validation chains (see module docstring); failures counted in ``skipped``."""
    skipped = skipped if skipped is not None else Counter()
    out = []
    for candidates in validation_rows(data_path, min_res, max_res):
        for r in candidates:  # first usable row of the cluster
            try:
                chain = data_mod.read_chain(r["path"], r["chain"], skipped)
            except Exception as exc:  # noqa: BLE001 -- unreadable file: count, go on
                skipped[f"unreadable:{type(exc).__name__}"] += 1
                continue
            chain = clean_chain(chain) if chain is not None else None
            if chain is None or not (min_res <= len(chain.restype) <= max_res):
                skipped["too_short_or_long_after_cleaning"] += 1
                continue
            if not _reference_ok(chain):
                skipped["implausible_reference_geometry"] += 1
                continue
            chain.cluster = r["cluster30"]
            out.append(chain)
            break
        if max_chains is not None and len(out) >= max_chains:
            break
    return out


def _load_any(path: str):
    import mdtraj

    lower = path.lower()
    if lower.endswith((".cif", ".cif.gz", ".mmcif", ".pdbx")):
        from openmm.app import PDBxFile

        opener = gzip.open if lower.endswith(".gz") else open
        with opener(path, "rt") as f:
            pdbx = PDBxFile(f)
        top = mdtraj.Topology.from_openmm(pdbx.topology)
        xyz = np.array(pdbx.getPositions(asNumpy=True).value_in_unit(pdbx.getPositions().unit))[None]
        return mdtraj.Trajectory(xyz.astype(np.float32), top)
    if lower.endswith(".gz"):
        return mdtraj.load_pdb(path, frame=0)
    if lower.endswith((".pdb", ".ent")):
        return mdtraj.load_pdb(path, frame=0)
    return mdtraj.load(path, frame=0)


def folder_chains(pdb_dir: str, skipped: Counter | None = None, min_res: int = 2) -> list[data_mod.Chain]:
    """Every protein chain (model 1) of every PDB/mmCIF file in ``pdb_dir`` (sorted by name)."""
    skipped = skipped if skipped is not None else Counter()
    out = []
    for fname in sorted(os.listdir(pdb_dir)):
        if not fname.lower().endswith(STRUCTURE_SUFFIXES):
            continue
        path = os.path.join(pdb_dir, fname)
        try:
            traj = _load_any(path)
        except Exception as exc:  # noqa: BLE001 -- unreadable file: count, go on
            skipped[f"unreadable:{type(exc).__name__}"] += 1
            continue
        for ch in traj.topology.chains:
            cid = getattr(ch, "chain_id", None) or str(ch.index)
            chain = data_mod.chain_from_mdtraj(traj, ch.index, name=f"{fname}:{cid}", skipped=skipped)
            chain = clean_chain(chain) if chain is not None else None
            if chain is None or len(chain.restype) < min_res:
                continue
            out.append(chain)
    return out


# ----------------------------------------------------------------------------------------
# Backmapping one chain
# ----------------------------------------------------------------------------------------
def cg_topology(chain: data_mod.Chain, chain_id: str = "A"):
    """One-bead (CA) OpenMM topology of a chain; residue ids 1..N, bonds between consecutive
    residues of the reference's segments (as a CG engine's topology gives them)."""
    from openmm.app import Element, Topology

    top = Topology()
    c = top.addChain(chain_id)
    carbon = Element.getBySymbol("C")
    atoms = []
    for i, rt in enumerate(chain.restype):
        res = top.addResidue(rc.RESTYPES_3[int(rt)], c, id=str(i + 1))
        atoms.append(top.addAtom("CA", carbon, res))
    for i in range(len(atoms) - 1):
        if chain.segment[i] == chain.segment[i + 1]:
            top.addBond(atoms[i], atoms[i + 1])
    return top


def ca_positions_nm(chain: data_mod.Chain) -> np.ndarray:
    return chain.xyz[0, :, 1].astype(np.float64) / 10.0


def to_slots(layout, positions: np.ndarray, n_residues: int) -> tuple[np.ndarray, np.ndarray]:
    """[..., n_atoms, 3] topology-order positions -> ([..., N, NUM_SLOTS, 3] with NaN where the
    topology has no atom, [N, NUM_SLOTS] bool of atoms present)."""
    lead = positions.shape[:-2]
    out = np.full(lead + (n_residues, rc.NUM_SLOTS, 3), np.nan)
    out[..., layout.residue, layout.slot, :] = positions
    present = np.zeros((n_residues, rc.NUM_SLOTS), dtype=bool)
    present[layout.residue, layout.slot] = True
    return out, present


def _segments_agree(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a[1:] != a[:-1], b[1:] != b[:-1]))


def backmap_chain(bm, chain: data_mod.Chain, samples: int = 1, seed: int = 0, minimize: str | None = None,
                  ca_noise: float = 0.0) -> dict:
    """Backmap a chain's true Cα trace; returns slots, plan and timings."""
    top = cg_topology(chain)
    ca = ca_positions_nm(chain)
    if ca_noise > 0:  # CG-like Cα: Gaussian noise (Å), seeded per chain
        ca = ca + np.random.default_rng(seed).normal(0.0, ca_noise, ca.shape) / 10.0
    t0 = time.perf_counter()
    plan = bm.plan(top, ca, hydrogens=minimize is not None)
    t1 = time.perf_counter()
    det = next(bm.stream(plan, [ca], coherent=False)).positions[None] * 10.0   # [1, 1, n_atoms, 3] Å
    t2 = time.perf_counter()
    n = len(chain.restype)
    minimize_ms = 0.0
    if minimize is not None:  # restrained amber14 minimisation (hydrogens added by the model)
        from .refine import Refiner

        refiner = Refiner(plan.topology, solvent=minimize)
        t3 = time.perf_counter()
        det = det.copy()
        det[0, 0] = refiner.minimize(det[0, 0] / 10.0) * 10.0
        minimize_ms = 1000 * (time.perf_counter() - t3)
    pred, pred_present = to_slots(plan.layout, det[0, 0], n)
    pred_present[:, rc.NUM_HEAVY_SLOTS + 1:] = False  # score heavy atoms (and OXT) only
    out = {"plan": plan, "pred": pred, "pred_present": pred_present,
           "plan_ms": 1000 * (t1 - t0), "sample_ms": 1000 * (t2 - t1), "minimize_ms": minimize_ms}
    if samples > 1:
        t3 = time.perf_counter()
        sto = next(bm.stream(plan, [ca], samples, seed=seed)).positions[None] * 10.0  # [1, S, n_atoms, 3] Å
        out["stochastic_ms"] = 1000 * (time.perf_counter() - t3)
        out["samples"], _ = to_slots(plan.layout, sto[0], n)
    return out


# ----------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------
def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else round(float(x), 5)
    return x


def score_chain(chain: data_mod.Chain, pred: np.ndarray, pred_present: np.ndarray, segment: np.ndarray,
                disulfides_pred=None) -> dict:
    """chain_metrics of a slot-layout prediction against the chain's first model."""
    return metrics.chain_metrics(pred, chain.xyz[0], chain.present, chain.restype, segment,
                                 disulfides_pred=disulfides_pred, pred_present=pred_present, details=True)


def evaluate(model_path: str | None, chains: list, samples: int = 1, out_dir: str | None = "ldb_eval",
             threads: int | None = None, device: str | None = None, steps: int | None = None, seed: int = 0,
             skipped: dict | None = None, verbose: bool = True, plots: bool = True,
             minimize: str | None = None, ca_noise: float = 0.0, settings: dict | None = None) -> dict:
    """Backmap and score ``chains`` (list of :class:`data.Chain`); write ``metrics.json`` and plots.

    Returns the dict written to ``<out_dir>/metrics.json``: ``model`` (path, card name and
    config), ``n_chains``, ``n_residues``, ``mean`` (mean over chains of every metric, plus
    ``ms_per_residue``), ``chains`` (per-chain metrics), ``skipped`` and ``settings``.
    Times: ``ms_per_residue`` is the wall time of the best guess through ``Backmapper.stream``
    (after one warm-up call) per residue; ``plan_ms`` the one-off planning.
    """
    from .backmapper import Backmapper

    bm = Backmapper(model_path, device=device, threads=threads, steps=steps, settings=settings)
    if chains:  # warm-up: TorchScript optimises on the first calls
        c0 = chains[0]
        for _ in range(2):
            list(bm.stream(bm.plan(cg_topology(c0), ca_positions_nm(c0), hydrogens=False), [ca_positions_nm(c0)]))
    rows, details = [], []
    for k, chain in enumerate(chains):
        res = backmap_chain(bm, chain, samples, seed + k, minimize=minimize, ca_noise=ca_noise)
        plan = res["plan"]
        m = score_chain(chain, res["pred"], res["pred_present"], plan.segment, plan.disulfides)
        det = m.pop("details")
        n = len(chain.restype)
        m.update(name=chain.name, cluster=chain.cluster, plan_ms=res["plan_ms"], sample_ms=res["sample_ms"],
                 ms_per_residue=res["sample_ms"] / n, minimize_ms=res["minimize_ms"],
                 segments_match_reference=_segments_agree(plan.segment, chain.segment))
        if samples > 1:
            m["div"] = metrics.ensemble_diversity(res["samples"], res["pred_present"][:, : metrics.HEAVY],
                                                  chain.restype)
            per = [metrics.chain_metrics(s, chain.xyz[0], chain.present, chain.restype, plan.segment,
                                         pred_present=res["pred_present"])["heavy_rmsd"] for s in res["samples"]]
            m["sample_heavy_rmsd_mean"] = float(np.mean(per))
            m["sample_heavy_rmsd_best"] = float(np.min(per))
            m["stochastic_ms_per_residue_per_sample"] = res["stochastic_ms"] / n / samples
        rows.append(m)
        details.append((chain, det))
        if verbose:
            print(f"  [{k + 1}/{len(chains)}] {chain.name} {n} res: heavy {m['heavy_rmsd']:.2f} Å, "
                  f"chi1 {m['chi1_acc']:.2f}, GED {m['ged']}, {m['ms_per_residue']:.2f} ms/res", flush=True)
    keys = metrics.SUMMARY_KEYS + ["ms_per_residue"]
    if samples > 1:
        keys += ["div", "sample_heavy_rmsd_mean", "sample_heavy_rmsd_best", "stochastic_ms_per_residue_per_sample"]
    mean = metrics.summarize(rows, keys)
    total_res = int(sum(r["n_residues"] for r in rows))
    mean["ms_per_residue_pooled"] = (sum(r["sample_ms"] for r in rows) / total_res) if total_res else float("nan")
    card = bm.card or {}
    result = {"model": {"path": model_path, "name": card.get("name"), "config": card.get("config"),
                        "training": card.get("training"), "geometry_fingerprint": card.get("geometry_fingerprint")},
              "n_chains": len(rows), "n_residues": total_res, "mean": mean, "chains": rows,
              "skipped": dict(skipped or {}),
              "settings": {"samples": samples, "steps": steps or "default (4 best guess, 10 samples)", "device": str(bm.device), "seed": seed,
                           "minimize": minimize, "ca_noise_angstrom": ca_noise,
                           "sampler_settings": bm.module.settings() if hasattr(bm.module, "settings") else None,
                           "torch_threads": _torch_threads(),
                           "definitions": "see openmm_ldb.metrics module docstring"}}
    result = _jsonable(result)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        if plots and rows:
            result["plots"] = write_plots(rows, details, out_dir)
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(result, f, indent=1)
    if verbose:
        print_table(rows, mean, title=f"{card.get('name', 'model')} ({model_path or 'shipped model'})")
    return result


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def print_table(rows: list[dict], mean: dict, title: str = "") -> None:
    cols = [k for k in TABLE_KEYS if any(k[0] in r for r in rows)]
    head = f"{'chain':28s} {'N':>4s} " + " ".join(f"{h:>{max(6, len(h))}s}" for _, h, _ in cols)
    if title:
        print(title)
    print(head)
    print("-" * len(head))

    def fmt(v, spec, width):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return f"{'-':>{width}s}"
        return f"{spec.format(v):>{width}s}"

    for r in rows:
        print(f"{r['name'][:28]:28s} {r['n_residues']:4d} "
              + " ".join(fmt(r.get(k), s, max(6, len(h))) for k, h, s in cols))
    print("-" * len(head))
    n = sum(r["n_residues"] for r in rows)
    print(f"{'mean (' + str(len(rows)) + ' chains)':28s} {n:4d} "
          + " ".join(fmt(mean.get(k), s, max(6, len(h))) for k, h, s in cols))


def write_plots(rows: list[dict], details: list, out_dir: str) -> list[str]:
    """RMSD histogram, chi1 rotamer confusion (g+, t, g−) and Ramachandran plot of the outputs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    # 1) RMSD histograms
    res_rmsd = np.concatenate([d["residue_heavy_rmsd"] for _, d in details])
    res_rmsd = res_rmsd[np.isfinite(res_rmsd)]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].hist(res_rmsd, bins=np.linspace(0, max(4.0, float(np.percentile(res_rmsd, 99))), 40), color="C0")
    ax[0].set_xlabel("per-residue heavy-atom RMSD (Å)")
    ax[0].set_ylabel("residues")
    ax[0].set_title(f"{len(res_rmsd)} residues, median {np.median(res_rmsd):.2f} Å")
    chain_rmsd = np.array([r["heavy_rmsd"] for r in rows], dtype=float)
    ax[1].hist(chain_rmsd[np.isfinite(chain_rmsd)], bins=20, color="C1")
    ax[1].set_xlabel("per-chain heavy-atom RMSD (Å)")
    ax[1].set_ylabel("chains")
    ax[1].set_title(f"{len(rows)} chains, mean {np.nanmean(chain_rmsd):.2f} Å")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "rmsd_hist.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    # 2) chi1 rotamer confusion
    conf = np.zeros((3, 3), dtype=np.int64)
    for _, d in details:
        ok = d["chi_ok"][:, 0]
        t = metrics.chi_rotamer_bin(d["chi_true"][ok, 0])
        p = metrics.chi_rotamer_bin(d["chi_pred"][ok, 0])
        np.add.at(conf, (t, p), 1)
    frac = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    labels = ["g+ (+60)", "t (180)", "g− (−60)"]
    fig, ax = plt.subplots(figsize=(4.6, 4))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for a in range(3):
        for b in range(3):
            ax.text(b, a, f"{frac[a, b]:.2f}\n({conf[a, b]})", ha="center", va="center",
                    color="white" if frac[a, b] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(3), labels)
    ax.set_yticks(range(3), labels)
    ax.set_xlabel("predicted χ1")
    ax.set_ylabel("reference χ1")
    ax.set_title(f"χ1 rotamer agreement {np.trace(conf) / max(conf.sum(), 1):.2f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "chi1_confusion.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    # 3) Ramachandran of outputs (and of the references, for comparison)
    fig, ax = plt.subplots(1, 2, figsize=(9, 4.3), sharey=True)
    for a, (key, title) in enumerate([("pred", "backmapped"), ("true", "reference")]):
        phi = np.concatenate([d[f"phi_{key}"] for _, d in details])
        psi = np.concatenate([d[f"psi_{key}"] for _, d in details])
        ok = np.isfinite(phi) & np.isfinite(psi)
        ax[a].scatter(phi[ok], psi[ok], s=3, alpha=0.4, color="C0" if a == 0 else "C2")
        ax[a].set_xlim(-180, 180)
        ax[a].set_ylim(-180, 180)
        ax[a].set_xticks(range(-180, 181, 90))
        ax[a].set_yticks(range(-180, 181, 90))
        ax[a].set_xlabel("φ (°)")
        ax[a].set_title(f"{title} ({int(ok.sum())} residues)")
        ax[a].grid(alpha=0.3)
    ax[0].set_ylabel("ψ (°)")
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "ramachandran.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def main(args) -> int:
    """Entry point of ``openmm-ldb evaluate`` (args: model, data, pdb_dir, max_chains, samples, out)."""
    skipped: Counter = Counter()
    t0 = time.time()
    if getattr(args, "pdb_dir", None):
        chains = folder_chains(args.pdb_dir, skipped)
        if args.max_chains:
            chains = chains[: args.max_chains]
        source = f"folder {args.pdb_dir}"
    else:
        chains = validation_chains(getattr(args, "data", None), getattr(args, "max_chains", None), skipped)
        source = "validation split (one chain per held-out cluster30)"
    if not chains:
        print("openmm-ldb evaluate: no usable chains", flush=True)
        return 1
    print(f"openmm-ldb evaluate: {len(chains)} chains, {sum(len(c.restype) for c in chains)} residues from {source} "
          f"(read in {time.time() - t0:.1f} s)", flush=True)
    result = evaluate(getattr(args, "model", None), chains, samples=max(1, int(getattr(args, "samples", 1) or 1)),
                      out_dir=getattr(args, "out", "ldb_eval"), threads=getattr(args, "threads", None),
                      skipped=dict(skipped), minimize=getattr(args, "minimize", None),
                      ca_noise=float(getattr(args, "ca_noise", 0.0) or 0.0),
                      settings=json.loads(args.settings) if getattr(args, "settings", None) else None)
    print(f"wrote {os.path.join(args.out, 'metrics.json')}" + (f" and {len(result.get('plots', []))} plots"
                                                                 if result.get("plots") else ""))
    return 0
