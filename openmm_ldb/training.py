"""Training both LDB stages on real structures (``openmm-ldb train``).

The VQ-VAE and the latent denoiser train together in one loop (the denoiser on the
stop-gradient, z-scored encoder latents), then the denoiser trains alone on the frozen
encoder for the last part of the run.  Resumable from ``<out>/checkpoint.pt``; logs to
``<out>/train.log``; runs data-parallel under ``torchrun`` (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict

import torch

from .data import load_tensors
from .model import LDBConfig, LDBModel, Sampler


def _cluster_index(chains: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, c in enumerate(chains):
        out.setdefault(c["cluster"], []).append(i)
    return out


def make_batch(chains: list[dict], picks: list[int], crop: int, rng: random.Random, ca_noise: float = 0.0) -> dict:
    """Pad a list of (cropped) chains into one batch of tensors (Å)."""
    items = []
    for i in picks:
        c = chains[i]
        n = len(c["restype"])
        start = rng.randint(0, n - crop) if n > crop else 0
        sl = slice(start, start + crop)
        items.append((c["restype"][sl], c["segment"][sl], c["xyz"][sl], c["present"][sl]))
    length = max(len(it[0]) for it in items)
    bsz = len(items)
    nslot = items[0][2].shape[1]
    restype = torch.zeros(bsz, length, dtype=torch.long)
    segment = torch.zeros(bsz, length, dtype=torch.long)
    atoms = torch.zeros(bsz, length, nslot, 3)
    present = torch.zeros(bsz, length, nslot)
    mask = torch.zeros(bsz, length)
    for b, (rt, seg, xyz, pres) in enumerate(items):
        n = len(rt)
        restype[b, :n] = torch.as_tensor(rt)
        seg = torch.as_tensor(seg) - int(seg[0])
        segment[b, :n] = seg
        # padding residues: each its own segment, far away, masked out
        segment[b, n:] = torch.arange(length - n) + int(seg[-1]) + 1000
        atoms[b, :n] = torch.as_tensor(xyz)
        atoms[b, n:] = 1000.0 + 10.0 * torch.arange(length - n, dtype=torch.float32).view(-1, 1, 1)
        present[b, :n] = torch.as_tensor(pres)
        mask[b, :n] = 1.0
    # truncated crops can start or end mid-chain; terminal atoms are absent there by design
    ca = atoms[:, :, 1].clone()
    if ca_noise > 0:
        ca = ca + ca_noise * torch.randn_like(ca) * mask.unsqueeze(-1)
    return {"ca": ca, "atoms": atoms, "present": present, "restype": restype, "segment": segment, "mask": mask}


def _device(device=None) -> torch.device:
    """The training device: the given one, else CUDA when available, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def load_split(dataset: str) -> tuple[list[dict], list[dict], dict]:
    """Training chains, validation chains (30-400 residues, in a fixed shuffled order) and the
    reader's skip counts of a featurized dataset; the split is by cluster
    (``data.is_validation_cluster``)."""
    data = load_tensors(dataset)
    chains = [c for c in data["chains"] if c["split"] == "train"]
    val = [c for c in data["chains"] if c["split"] == "val" and 30 <= len(c["restype"]) <= 400]
    random.Random(1).shuffle(val)
    return chains, val, data.get("skipped", {})


def _log(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def save_checkpoint(path: str, model: LDBModel, opt, step: int, phase: str, extra: dict | None = None) -> None:
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "phase": phase,
                "config": model.config.to_dict(), **(extra or {})}, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint


@torch.no_grad()
def validate(model: LDBModel, chains: list[dict], max_chains: int = 24, steps: int = 10) -> dict:
    """Heavy-atom RMSD (no superposition) on validation chains: with the encoder's own codes
    (reconstruction) and sampled from the diffusion prior (deterministic mode)."""
    model.eval()
    sampler = Sampler(model).eval()
    recon, sampled, counts = 0.0, 0.0, 0.0
    device = next(model.parameters()).device
    for c in chains[:max_chains]:
        batch = _to(make_batch([c], [0], crop=10_000, rng=random.Random(0)), device)
        out = model.losses(batch, train_diffusion=False)
        w = float(batch["present"].sum())
        recon += float(out["rmsd"]) ** 2 * w
        atoms, mask, _, _ = sampler(batch["ca"], batch["restype"][0], batch["segment"][0],
                                 torch.zeros(0, 2, dtype=torch.long, device=device),
                                 torch.zeros(1, dtype=torch.long, device=device), steps, 1, True, True)
        pred = atoms[:, 0, :, : batch["atoms"].shape[2]]
        d2 = ((pred - batch["atoms"]) ** 2).sum(-1)
        pres = batch["present"] * mask[:, : batch["atoms"].shape[2]]
        perm = model.tables.symmetric_swap[batch["restype"]][:, :, : batch["atoms"].shape[2]]
        sw = torch.gather(batch["atoms"], 2, perm.unsqueeze(-1).expand(-1, -1, -1, 3))
        d2sw = ((pred - sw) ** 2).sum(-1)
        better = ((d2sw * pres).sum(-1) < (d2 * pres).sum(-1)).unsqueeze(-1)
        d2 = torch.where(better, d2sw, d2)
        sampled += float((d2 * pres).sum())
        counts += float(pres.sum())
    model.train()
    return {"val_recon_rmsd": math.sqrt(recon / max(counts, 1)), "val_sample_rmsd": math.sqrt(sampled / max(counts, 1))}


def train(dataset: str, out: str, minutes: float = 60.0, joint_fraction: float = 0.7, batch_chains: int = 8,
          crop: int = 128, lr: float = 1e-3, config: LDBConfig | None = None, seed: int = 0,
          log_every: int = 20, ckpt_every: int = 200, val_every: int = 500, ca_noise: float = 0.03,
          threads: int | None = None, max_steps: int | None = None, device=None) -> str:
    """Train the LDB model for a wall-clock budget; returns the checkpoint path.

    ``dataset`` is the cache written by :func:`openmm_ldb.data.featurize_dataset`.
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    device = _device(device)
    if distributed:
        backend = "nccl" if device.type == "cuda" else "gloo"  # the backend follows the tensors' device
        torch.distributed.init_process_group(backend)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        rank = torch.distributed.get_rank()
    if threads:
        torch.set_num_threads(threads)
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "train.log")
    ckpt_path = os.path.join(out, "checkpoint.pt")
    chains, val, skipped = load_split(dataset)
    clusters = _cluster_index(chains)
    cluster_names = sorted(clusters)
    config = config or LDBConfig()
    torch.manual_seed(seed + rank)
    rng = random.Random(seed + 1000 * rank)
    model = LDBModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    step, phase = 0, "joint"
    elapsed_before = 0.0
    if os.path.exists(ckpt_path):
        ck = load_tensors(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, phase, elapsed_before = ck["step"], ck["phase"], ck.get("elapsed", 0.0)
        config = LDBConfig(**{**asdict(config), **ck["config"]})
    model.to(device)
    if os.path.exists(ckpt_path):
        opt.load_state_dict(ck["optimizer"])  # again, now that the parameters live on the device
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if distributed else model
    budget = minutes * 60.0
    t0 = time.time() - elapsed_before
    if rank == 0:
        world = torch.distributed.get_world_size() if distributed else 1
        _log(log_path, {"event": "start", "step": step, "phase": phase, "world_size": world,
                        "train_chains": len(chains),
                        "train_clusters": len(clusters), "val_chains": len(val), "config": asdict(config),
                        "skipped": skipped})
    last = time.time()
    while True:
        elapsed = time.time() - t0
        if elapsed > budget or (max_steps is not None and step >= max_steps):
            break
        if phase == "joint" and elapsed > joint_fraction * budget:
            phase = "denoiser"
            for mod in (model.encoder, model.decoder, model.quantizer):
                mod.requires_grad_(False)
            opt = torch.optim.AdamW(model.denoiser.parameters(), lr=lr * 0.5, weight_decay=1e-4)
        frac = elapsed / budget
        scale = min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr * scale * (0.5 if phase == "denoiser" else 1.0)
        picks = [rng.choice(clusters[rng.choice(cluster_names)]) for _ in range(batch_chains)]
        batch = _to(make_batch(chains, picks, crop, rng, ca_noise), device)
        if phase == "denoiser":
            model.encoder.eval()
            model.quantizer.eval()
        outd = net(batch) if distributed else model.losses(batch)
        loss = outd["loss"] if phase == "joint" else outd["diffusion"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if rank == 0 and step % log_every == 0:
            used, ppl = model.quantizer.usage(outd["codes"], batch["mask"])
            now = time.time()
            _log(log_path, {"step": step, "phase": phase, "elapsed_min": round((now - t0) / 60, 2),
                            "loss": round(float(outd["loss"].detach()), 4), "angle": round(float(outd["angle"].detach()), 4),
                            "coord": round(float(outd["coord"].detach()), 4), "recon_rmsd": round(float(outd["rmsd"].detach()), 3),
                            "diffusion": round(float(outd["diffusion"].detach()), 4), "commit": round(float(outd["commit"].detach()), 4),
                            "clash": round(float(outd["clash"].detach()), 4), "ring": round(float(outd["ring"].detach()), 4),
                            "codes_used": round(used, 3), "perplexity": round(ppl, 1),
                            "sec_per_step": round((now - last) / log_every, 3)})
            last = now
        if rank == 0 and step % ckpt_every == 0:
            save_checkpoint(ckpt_path, model, opt, step, phase, {"elapsed": time.time() - t0})
        if rank == 0 and step % val_every == 0:
            _log(log_path, {"step": step, **validate(model, val)})
    if rank == 0:
        save_checkpoint(ckpt_path, model, opt, step, phase, {"elapsed": time.time() - t0})
        _log(log_path, {"event": "end", "step": step, **validate(model, val, max_chains=60)})
    if distributed:
        torch.distributed.destroy_process_group()
    return ckpt_path


def noisy_ca(batch: dict, rng: random.Random, gen: torch.Generator, max_noise: float = 0.35) -> torch.Tensor:
    """Cα as CG simulations give them: per chain no noise (half of the chains) or Gaussian
    noise of 0.05–``max_noise`` Å, which also stretches and compresses Cα–Cα as soft CG bonds do."""
    ca = batch["atoms"][:, :, 1].clone()
    for b in range(ca.shape[0]):
        if rng.random() < 0.5:
            continue
        sigma = rng.uniform(0.05, max_noise)
        ca[b] += sigma * torch.randn(ca[b].shape, generator=gen) * batch["mask"][b].unsqueeze(-1)
    return ca


def train_guess(dataset: str, out: str, minutes: float = 60.0, init: str | None = None, batch_chains: int = 8,
                crop: int = 128, lr: float = 1e-4, seed: int = 0, log_every: int = 20, ckpt_every: int = 100,
                val_every: int = 250, threads: int | None = None, max_steps: int | None = None,
                max_noise: float = 0.3, chains: list | None = None, val: list | None = None,
                progress: bool = False, device=None, ensembles=(), config: dict | None = None,
                heads_only: bool = False) -> str:
    # (``dataset`` is ignored when ``chains`` are given)
    """Train the one-pass best guess end to end on atoms; resumable, accumulates across sessions.

    Starts from ``init`` (an exported model; the shipped default when None) or resumes from
    ``<out>/checkpoint.pt``: model, optimizer, step, RNG states and data order continue exactly.
    The log (``<out>/train.log``, JSON lines) records total steps, wall minutes and CPU-hours.
    ``heads_only`` trains the well heads alone on the fixed network under them (what the function
    computes without them does not change); a run keeps to what it started with.
    """
    from .export import model_from_exported

    if threads:
        torch.set_num_threads(threads)
    os.makedirs(out, exist_ok=True)
    log_path = os.path.join(out, "train.log")
    ckpt_path = os.path.join(out, "checkpoint.pt")
    if chains is None:
        chains, val, _ = load_split(dataset)
    if ensembles:
        chains = chains + ensemble_chains(ensembles)
    clusters = _cluster_index(chains)
    cluster_names = sorted(clusters)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    step, cpu_before, wall_before = 0, 0.0, 0.0
    if os.path.exists(ckpt_path):
        ck = load_tensors(ckpt_path)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = LDBModel(LDBConfig(**ck["config"]))
        missing, _ = model.load_state_dict(ck["model"], strict=False)
        if any("error_head" not in k and ".skip." not in k and "well_head" not in k and "quality_in" not in k
               and "well_chi_head" not in k for k in missing):
            raise ValueError(f"{ckpt_path}: checkpoint lacks {missing[:3]}")
        if bool(ck.get("heads_only", False)) != heads_only:
            raise ValueError(f"{ckpt_path} was trained with heads_only={not heads_only}: resume it the same way "
                             "or start a new output folder")
        opt = torch.optim.AdamW(_trained(model, heads_only), lr=lr, weight_decay=1e-4)
        if missing:  # a checkpoint from before the confidence head or the skip: the optimizer starts afresh
            ck["optimizer"] = opt.state_dict()
        opt.load_state_dict(ck["optimizer"])
        step, cpu_before, wall_before = ck["step"], ck.get("cpu_seconds", 0.0), ck.get("elapsed", 0.0)
        rng.setstate(ck["rng_python"])
        gen.set_state(ck["rng_torch"])
        init_from = ck.get("init")
    else:
        model, _card = model_from_exported(init)
        opt = torch.optim.AdamW(_trained(model, heads_only), lr=lr, weight_decay=1e-4)
        init_from = init or "shipped default"
    for key, value in (config or {}).items():  # loss settings changed for this run on (kept in the checkpoint)
        if not hasattr(model.config, key):
            raise ValueError(f"unknown LDBConfig field {key!r}")
        setattr(model.config, key, type(getattr(model.config, key))(value))
    model.graph.k = model.config.k  # the message passing reads any number of neighbours (a mean)
    device = _device(device)
    model.to(device)
    if os.path.exists(ckpt_path):
        opt.load_state_dict(ck["optimizer"])  # again, now that the parameters live on the device
    for p in model.parameters():
        p.requires_grad_(False)
    for p in _trained(model, heads_only):
        p.requires_grad_(True)
    model.train()
    t0, c0 = time.time(), time.process_time()
    _log(log_path, {"event": "start", "step": step, "init": init_from, "config": model.config.to_dict(), "train_chains": len(chains),
                    "train_clusters": len(clusters), "val_chains": len(val or []), "threads": torch.get_num_threads()})

    def save():
        save_checkpoint(ckpt_path, model, opt, step, "guess",
                        {"elapsed": wall_before + time.time() - t0,
                         "cpu_seconds": cpu_before + time.process_time() - c0,
                         "rng_python": rng.getstate(), "rng_torch": gen.get_state(), "init": init_from,
                         "heads_only": heads_only})

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_steps, initial=step, desc="fine-tune", unit="step")
    last = time.time()
    while True:
        if time.time() - t0 > minutes * 60.0 or (max_steps is not None and step >= max_steps):
            break
        scale = min(1.0, (step + 1) / 100) * max(0.1, 0.5 ** (step / 6000))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        picks = [rng.choice(clusters[rng.choice(cluster_names)]) for _ in range(batch_chains)]
        batch = make_batch(chains, picks, crop, rng)
        batch["ca"] = noisy_ca(batch, rng, gen, max_noise)
        outd = model.guess_losses(_to(batch, device), heads_only=heads_only)
        opt.zero_grad()
        outd["loss"].backward()
        torch.nn.utils.clip_grad_norm_(_trained(model, heads_only), 1.0)
        opt.step()
        step += 1
        if bar is not None:
            bar.update(1)
        if step % log_every == 0:
            now = time.time()
            _log(log_path, {"step": step, "phase": "heads" if heads_only else "guess", "lr": round(lr * scale, 6),
                            **{k: round(float(v.detach()), 4) for k, v in outd.items()},
                            "sec_per_step": round((now - last) / log_every, 3),
                            "wall_min_total": round((wall_before + now - t0) / 60, 2),
                            "cpu_hours_total": round((cpu_before + time.process_time() - c0) / 3600, 5)})
            last = now
        if step % ckpt_every == 0:
            save()
        if val and step % val_every == 0:
            _log(log_path, {"step": step, **validate_guess(model, val)})
    save()
    if bar is not None:
        bar.close()
    _log(log_path, {"event": "end", "step": step,
                    "cpu_hours_total": round((cpu_before + time.process_time() - c0) / 3600, 5)})
    return ckpt_path


def _trained(model: LDBModel, heads_only: bool) -> list:
    """The parameters a best-guess run trains."""
    if heads_only:
        dec = model.guess_decoder
        return list(dec.well_head.parameters()) + list(dec.well_chi_head.parameters())
    return model.guess_parameters()


@torch.no_grad()
def validate_guess(model: LDBModel, chains: list[dict], max_chains: int = 16) -> dict:
    """Heavy-atom RMSD of the one-pass best guess (no clash resolution) on validation chains,
    from true Cα and from Cα with 0.3 Å noise."""
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for name, noise in (("val_guess_rmsd", 0.0), ("val_guess_rmsd_noise03", 0.3)):
        sq, cnt = 0.0, 0.0
        gen = torch.Generator().manual_seed(0)
        for c in chains[:max_chains]:
            batch = make_batch([c], [0], crop=10_000, rng=random.Random(0))
            if noise:
                batch["ca"] = batch["ca"] + noise * torch.randn(batch["ca"].shape, generator=gen)
            o = model.guess_losses(_to(batch, device))
            w = float(batch["present"].sum())
            sq += float(o["rmsd"]) ** 2 * w
            cnt += w
        out[name] = round(math.sqrt(sq / max(cnt, 1.0)), 4)
    model.train()
    return out


def chains_from_files(trajectories=(), structures=(), heavy: int | None = None) -> list[dict]:
    """Training items (one per frame and protein chain) from MD trajectories ``[(traj, top)]`` and
    structure files, each tagged with its source file as ``cluster`` and its frame index."""
    import mdtraj

    from . import residues as rc
    from .data import chain_from_mdtraj

    heavy = heavy or rc.NUM_HEAVY_SLOTS + 1
    items = []
    sources = [(t, top) for t, top in trajectories] + [(s, None) for s in structures]
    for path, top in sources:
        traj = mdtraj.load(path, top=top) if top else mdtraj.load(path)
        for ci in range(traj.topology.n_chains):
            chain = chain_from_mdtraj(traj, ci, name=f"{os.path.basename(path)}:{ci}")
            if chain is None:
                continue
            for f in range(chain.xyz.shape[0]):
                items.append({"name": f"{chain.name}:{f}", "cluster": f"{path}:{ci}", "frame": f,
                              "restype": chain.restype, "segment": chain.segment,
                              "xyz": chain.xyz[f, :, :heavy], "present": chain.present[:, :heavy]})
    if not items:
        raise ValueError("no protein chains in the given trajectories/structures")
    return items


def ensemble_chains(folders) -> list[dict]:
    """Training items from folders of conformational ensembles, one protein per folder (NMR
    model files, or trajectories beside their topology): each folder is one cluster, so a batch
    draws it as often as one training cluster of the main data and its frames at random.  Their
    Cα carry the geometry real dynamics gives (the CG-like noise is added on top as usual)."""
    import glob

    items = []
    for folder in folders:
        files = sorted(glob.glob(os.path.join(folder, "*.pdb.gz")) + glob.glob(os.path.join(folder, "*.pdb")))
        trajs = sorted(glob.glob(os.path.join(folder, "*.xtc")) + glob.glob(os.path.join(folder, "*.dcd")))
        tops = [f for f in files + sorted(glob.glob(os.path.join(folder, "*.psf")))]
        found = chains_from_files([(t, tops[0]) for t in trajs] if trajs and tops else (),
                                  () if trajs else files)
        for c in found:
            c["cluster"] = "ensemble:" + os.path.basename(os.path.normpath(folder))
        items += found
    return items


def split_by_protein(items: list[dict], val_fraction: float = 0.2) -> tuple[list[dict], list[dict], str]:
    """Hold out whole proteins (sources) for validation; with a single protein, hold out the last
    ``val_fraction`` of its frames (a block of time, never interleaved frames)."""
    sources = sorted({c["cluster"] for c in items})
    if len(sources) >= 2:
        n_val = max(1, int(round(val_fraction * len(sources))))
        val_sources = set(sources[-n_val:])
        return ([c for c in items if c["cluster"] not in val_sources], [c for c in items if c["cluster"] in val_sources],
                f"by protein: {len(sources) - n_val} train, {n_val} held out")
    frames = sorted(c["frame"] for c in items)
    cut = frames[int(len(frames) * (1.0 - val_fraction))]
    return ([c for c in items if c["frame"] < cut], [c for c in items if c["frame"] >= cut],
            f"one protein: frames < {cut} train, frames >= {cut} held out (a time block)")


def finetune(out: str, init: str | None = None, trajectories=(), structures=(), minutes: float = 5.0,
             max_steps: int | None = None, threads: int | None = None, lr: float = 2e-4, crop: int = 128,
             batch_chains: int = 4, val_fraction: float = 0.2, max_val: int = 16) -> dict:
    """Fine-tune a model (``init``: an exported file, the shipped default when None) on a user's own
    structures and MD trajectories, reporting held-out accuracy before and after; writes
    ``<out>/model.pt``, loadable by :class:`Backmapper` and :class:`LDBReporter` like the default."""
    from .export import export_model, model_from_exported

    items = chains_from_files(trajectories, structures)
    train_items, val_items, how = split_by_protein(items, val_fraction)
    if not train_items or not val_items:
        raise ValueError("too little data to hold some out for validation: give more frames or structures")
    stride = max(1, len(val_items) // max_val)
    val = val_items[::stride][:max_val]
    model, card = model_from_exported(init)
    before = validate_guess(model, val)
    ckpt = train_guess("", out, minutes=minutes, init=init, batch_chains=batch_chains, crop=crop, lr=lr,
                       threads=threads, max_steps=max_steps, chains=train_items, val=None, progress=True,
                       log_every=10, ckpt_every=50)
    ck = load_tensors(ckpt)
    model = LDBModel(LDBConfig(**ck["config"]))
    model.load_state_dict(ck["model"])
    model.eval()
    after = validate_guess(model, val)
    summary = {"fine_tuned_from": init or "shipped default", "steps": ck["step"],
               "cpu_hours": round(ck.get("cpu_seconds", 0.0) / 3600, 4), "split": how,
               "train_items": len(train_items), "val_items": len(val),
               "data": [str(t) for t, _ in trajectories] + [str(x) for x in structures],
               "validation_before": before, "validation_after": after,
               "base_training": card.get("training")}
    # the init model's sampler settings go with it (the well choice's weights among them)
    path = export_model(model, os.path.join(out, "model.pt"), {"training": summary,
                                                                 "validation": card.get("validation")},
                        settings=card.get("sampler_settings"))
    summary["model"] = path
    _log(os.path.join(out, "train.log"), {"event": "finetune", **summary})
    return summary


def main(argv=None) -> None:
    """``python -m openmm_ldb.training DATASET OUT`` (also under ``torchrun --nproc_per_node N``)."""
    import argparse

    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "guess":
        q = argparse.ArgumentParser(description="train the one-pass best guess (resumable)")
        q.add_argument("dataset")
        q.add_argument("out")
        q.add_argument("--minutes", type=float, default=60.0)
        q.add_argument("--max-steps", type=int, default=None)
        q.add_argument("--threads", type=int, default=1)
        q.add_argument("--init", default=None)
        q.add_argument("--lr", type=float, default=1e-4)
        q.add_argument("--ensembles", nargs="*", default=(),
                       help="folders of conformational ensembles (one protein each: model files or a trajectory "
                            "with its topology) added to the training proteins")
        q.add_argument("--coord-loss", choices=["distance", "squared"], default=None,
                       help="change the coordinate loss from this run on")
        q.add_argument("--k", type=int, default=None, help="change the number of graph neighbours from this run on")
        q.add_argument("--heads-only", action="store_true",
                       help="train the well heads alone, the network under them held fixed")
        a = q.parse_args(argv[1:])
        config = {"coord_loss": a.coord_loss, "k": a.k}
        train_guess(a.dataset, a.out, minutes=a.minutes, init=a.init, threads=a.threads, max_steps=a.max_steps, lr=a.lr,
                    ensembles=a.ensembles, config={key: v for key, v in config.items() if v is not None},
                    heads_only=a.heads_only)
        return
    p = argparse.ArgumentParser(description="train LDB on a featurized dataset (see openmm_ldb.data)")
    p.add_argument("dataset")
    p.add_argument("out")
    p.add_argument("--minutes", type=float, default=100.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None, help="smaller networks for tests")
    args = p.parse_args(argv)
    config = LDBConfig()
    if args.hidden:
        config = LDBConfig(hidden=args.hidden, encoder_layers=1, decoder_layers=1, denoiser_layers=1, num_codes=64)
    train(args.dataset, args.out, minutes=args.minutes, batch_chains=args.batch, crop=args.crop, config=config,
          threads=args.threads, max_steps=args.max_steps, log_every=1, ckpt_every=10**9, val_every=10**9)


if __name__ == "__main__":
    main()

