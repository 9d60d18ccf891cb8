"""torch.export (``.pt2``) format of the sampler.

``export_pt2(sampler, path, card)`` writes one PT2 archive (``torch.export.pt2_archive``, the
format of ``torch.export.save``) holding

* ``models/model.json`` ...: the :class:`~torch.export.ExportedProgram` of the sampler,
* optionally ``data/aotinductor/model/...``: the same program compiled ahead of time with
  AOTInductor for the CPU (``aoti=True``; needs a C++ compiler at export time),
* ``model_card.json`` (extra file): the model card, plus ``card["pt2"]`` describing the export.

``load_pt2(path, device)`` returns ``(module, card)`` where ``module`` is called exactly like
the TorchScript sampler, ``module(ca, restype, segment, steps, samples, seed, deterministic)``,
and returns the same ``(atoms [B, S, N, NUM_SLOTS, 3] Å, atom_mask [N, NUM_SLOTS])``; the same
seed gives the same numbers as the TorchScript file.

How the Python-int arguments are exported
-----------------------------------------
The exported graph takes tensors only (which AOTInductor needs too):

``forward(ca [B, N, 3], restype [N], segment [N], sample_slots [S], rng [2] int64)``

* ``samples`` is the length of ``sample_slots`` (a dynamic dimension, like B and N);
* ``rng = [seed, deterministic]``: the seed enters the counter-based noise as a tensor, and
  ``deterministic`` selects zero noise with ``torch.where`` (bit-identical to the TorchScript
  branch, which starts from zeros);
* ``steps`` is unrolled into the graph: it is baked in (``card["pt2"]["steps"]``, default 10)
  and the loaded module raises ``ValueError`` for another value.

To make the sampler traceable with dynamic shapes, four helpers are swapped for export-friendly
versions while tracing (same numbers): the kNN search (no chunk loop over N; chains shorter than
k neighbours padded inside the graph), the codebook search (no chunk loop), the side-chain
z-matrix walk (no data-dependent early exit) and the noise generator (tensor seed).  For
N <= 512 residues and B*S*N <= 4096 these are the very same operations as TorchScript's; beyond,
the unchunked distance matrices may differ in the last bits.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import types
import warnings

import torch
from torch import nn

CARD_NAME = "model_card.json"
MODEL_NAME = "model"
DEFAULT_STEPS = 10
MIN_RESIDUES = 5  # shorter chains: the exported graph assumes slices like ca[2:] are not of size 1
MAX_RESIDUES = 1 << 20


# ------------------------------------------------------------------ export-friendly helpers
def _cdist_mm(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x1, x2, compute_mode="use_mm_for_euclid_dist")


def _cdist_direct(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x1, x2, compute_mode="donot_use_mm_for_euclid_dist")


def _cdist(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """torch.cdist (p=2) taking the same branch as eager mode for every size: the matmul form
    when either side has more than 25 points, the direct one otherwise (torch.cond on sizes)."""
    p, r = x1.shape[-2], x2.shape[-2]
    if isinstance(p, int) and isinstance(r, int):
        return torch.cdist(x1, x2)
    big = (p > 25) | (r > 25) if not isinstance(r, int) else (p > 25 if r <= 25 else True)
    if isinstance(big, bool):
        return _cdist_mm(x1, x2) if big else _cdist_direct(x1, x2)
    return torch.cond(big, _cdist_mm, _cdist_direct, (x1, x2))


def _knn_graph_export(ca: torch.Tensor, mask: torch.Tensor, k: int, chunk: int = 512):
    """features.knn_graph without the chunk loop and without the shape branch (N < k)."""
    bsz, n = ca.shape[0], ca.shape[1]
    big = (1.0 - mask).unsqueeze(1) * 1e6
    d = _cdist(ca, ca) + big
    # k columns "beyond the chain" so that topk(k) exists for any N; they come last (1e7) and
    # become invalid self edges, exactly as the padding of the TorchScript version
    pad = torch.full((bsz, n, k), 1e7, dtype=d.dtype, device=d.device)
    dist, idx = torch.topk(torch.cat([d, pad], dim=-1), k, dim=-1, largest=False)
    self_idx = torch.arange(n, device=ca.device).view(1, n, 1).expand(bsz, n, k)
    beyond = idx >= n
    idx = torch.where(beyond, self_idx, idx)
    valid = (dist < 1e5).to(ca.dtype) * mask.unsqueeze(-1) * (~beyond).to(ca.dtype)
    return idx, valid


def _nearest_export(self, z: torch.Tensor) -> torch.Tensor:
    """VectorQuantizer.nearest without the chunk loop."""
    flat = z.reshape(-1, self.dim)
    return _cdist(flat, self.codebook).argmin(-1).view(z.shape[:-1])


def _place_sidechains_export(self, atoms: torch.Tensor, restype: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """GeometryTables.place_sidechains without the early exit (steps nobody needs write nothing)."""
    bsz, n = atoms.shape[0], atoms.shape[1]
    chi = torch.atan2(angles[..., 4:, 1], angles[..., 4:, 0])
    refs = self.z_refs[restype]
    target = self.z_target[restype]
    bond = self.z_bond[restype]
    bond_angle = self.z_angle[restype]
    torsion0 = self.z_torsion[restype]
    chi_index = self.z_chi[restype]
    valid = self.z_valid[restype]
    slot_ids = torch.arange(self.num_slots, device=atoms.device)
    from . import geometry as geo

    for s in range(self._export_zsteps):  # the steps some residue type uses
        idx = refs[:, s, :].unsqueeze(0).unsqueeze(-1).expand(bsz, n, 3, 3)
        ref_xyz = torch.gather(atoms, 2, idx)
        ci = chi_index[:, s]
        chi_val = torch.gather(chi, 2, ci.clamp(min=0).view(1, n, 1).expand(bsz, n, 1)).squeeze(-1)
        tors = torsion0[:, s].unsqueeze(0) + chi_val * (ci >= 0).to(chi.dtype).unsqueeze(0)
        new = geo.nerf(ref_xyz[:, :, 0], ref_xyz[:, :, 1], ref_xyz[:, :, 2], bond[:, s].unsqueeze(0).expand(bsz, n),
                       bond_angle[:, s].unsqueeze(0).expand(bsz, n), tors)
        write = (slot_ids.unsqueeze(0) == target[:, s].unsqueeze(1)) & (valid[:, s] > 0).unsqueeze(1)
        atoms = torch.where(write.unsqueeze(0).unsqueeze(-1), new.unsqueeze(2), atoms)
    return atoms


def _hash_normal_export(shape, rng: torch.Tensor, stream: int, device) -> torch.Tensor:
    """diffusion.hash_normal with the seed as a tensor; rng = [seed, deterministic] (int64):
    zeros where deterministic."""
    from .model.diffusion import _hash32

    n = 1
    for s in shape:
        n = n * s
    base = torch.arange(n, dtype=torch.int64, device=rng.device)
    key = _hash32(rng[0:1] * 1000003 + stream * 7919 + 12345)
    u1 = (_hash32(base * 2 + key).to(torch.float64) + 0.5) / 4294967296.0
    u2 = (_hash32(base * 2 + 1 + key * 3).to(torch.float64) + 0.5) / 4294967296.0
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    z = torch.where(rng[1:2] != 0, torch.zeros_like(z), z)
    return z.to(torch.float32).view(shape)


@contextlib.contextmanager
def _export_friendly(sampler: nn.Module):
    """Swap the helpers above in while tracing ``sampler`` (restored afterwards)."""
    from .model import ldb, trunk

    saved = (trunk.knn_graph, ldb.hash_normal)
    trunk.knn_graph = _knn_graph_export
    ldb.hash_normal = _hash_normal_export
    sampler.quantizer.nearest = types.MethodType(_nearest_export, sampler.quantizer)
    sampler.tables.place_sidechains = types.MethodType(_place_sidechains_export, sampler.tables)
    sampler.choose_latent = types.MethodType(_choose_latent_export, sampler)
    used = torch.nonzero((sampler.tables.z_valid > 0).any(0)).flatten()
    sampler.tables._export_zsteps = int(used.max()) + 1 if used.numel() else 0
    try:
        yield
    finally:
        trunk.knn_graph, ldb.hash_normal = saved
        del sampler.quantizer.nearest
        del sampler.tables.place_sidechains
        del sampler.choose_latent
        del sampler.tables._export_zsteps


def _choose_latent_export(self, latent: torch.Tensor, deterministic, rng: torch.Tensor) -> torch.Tensor:
    """Sampler.choose_latent with the mode read from rng[1] (a tensor), both branches traced."""
    if not self.snap_to_codes:
        return latent
    snapped = self.quantizer.lookup(self.quantizer.nearest(latent))
    return torch.where(rng[1] > 0, latent, snapped)


class TensorSampler(nn.Module):
    """The sampler with tensor-only inputs (see the module docstring)."""

    def __init__(self, sampler: nn.Module, steps: int = DEFAULT_STEPS):
        super().__init__()
        self.sampler = sampler
        self.steps = int(steps)

    def forward(self, ca: torch.Tensor, restype: torch.Tensor, segment: torch.Tensor, sample_slots: torch.Tensor,
                rng: torch.Tensor):
        # rng goes where the seed goes: only the (swapped) noise generator reads it
        return self.sampler(ca, restype, segment, self.steps, sample_slots.shape[0], rng, False)


def _example_inputs(b: int = 2, n: int = 24, s: int = 3):
    g = torch.Generator().manual_seed(0)
    ca = torch.cumsum(torch.randn(b, n, 3, generator=g) * 2.2, dim=1)
    restype = torch.arange(n, dtype=torch.int64) % 20
    segment = torch.zeros(n, dtype=torch.int64)
    return ca, restype, segment, torch.zeros(s), torch.tensor([1, 0], dtype=torch.int64)


def export_program(sampler: nn.Module, steps: int = DEFAULT_STEPS) -> torch.export.ExportedProgram:
    """``torch.export`` the sampler with dynamic B (frames), N (residues) and S (samples)."""
    from torch.export import Dim

    wrapper = TensorSampler(sampler, steps).eval()
    batch, res, smp = Dim("frames", min=1, max=1 << 16), Dim("residues", min=MIN_RESIDUES, max=MAX_RESIDUES), \
        Dim("samples", min=1, max=1 << 16)
    dynamic = {"ca": {0: batch, 1: res}, "restype": {0: res}, "segment": {0: res}, "sample_slots": {0: smp},
               "rng": None}
    with _export_friendly(sampler), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(wrapper, _example_inputs(), dynamic_shapes=dynamic, strict=False)


def export_pt2(sampler: nn.Module, path: str, card: dict, steps: int = DEFAULT_STEPS, aoti: bool | None = None) -> str:
    """Write the ``.pt2`` archive (exported program, AOTInductor CPU build if ``aoti``, card).

    ``aoti`` defaults to ``$OPENMM_LDB_PT2_AOTI`` (``1`` to compile), else False: compiling
    takes a few minutes of CPU time and needs a C++ compiler.
    """
    from torch.export.pt2_archive._package import package_pt2

    if aoti is None:
        aoti = os.environ.get("OPENMM_LDB_PT2_AOTI", "0") not in ("", "0", "false", "no")
    sampler = sampler.eval()
    t0 = time.perf_counter()
    ep = export_program(sampler, steps)
    info = {"steps": int(steps), "inputs": "ca [B,N,3] f32 Å, restype [N] i64, segment [N] i64, "
            "sample_slots [S] (length = samples), rng [2] i64 = (seed, deterministic)",
            "torch": torch.__version__, "export_seconds": round(time.perf_counter() - t0, 2), "aoti": False}
    aoti_files = None
    tmp = None
    if aoti:
        t1 = time.perf_counter()
        tmp = tempfile.mkdtemp(prefix="ldb_aoti_")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aoti_files = torch._inductor.aot_compile(
                ep.module(), ep.example_inputs[0],
                options={"aot_inductor.package": True, "aot_inductor.output_path": os.path.join(tmp, "model.so")})
        info.update(aoti=True, aoti_device="cpu", aoti_seconds=round(time.perf_counter() - t1, 2))
    card = dict(card)
    card["pt2"] = info
    try:
        package_pt2(path, exported_programs={MODEL_NAME: ep},
                    aoti_files={MODEL_NAME: aoti_files} if aoti_files else None,
                    extra_files={CARD_NAME: json.dumps(card, indent=1)})
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


class Pt2Sampler:
    """Callable with the TorchScript sampler's signature around an exported program (or its
    AOTInductor build)."""

    def __init__(self, program, steps: int, device: torch.device, kind: str):
        self.program = program
        self.steps = int(steps)
        self.device = torch.device(device)
        self.kind = kind  # 'exported_program' or 'aoti'

    def __call__(self, ca: torch.Tensor, restype: torch.Tensor, segment: torch.Tensor, steps: int = DEFAULT_STEPS,
                 samples: int = 1, seed: int = 0, deterministic: bool = False):
        if max(int(steps), 1) != self.steps:
            raise ValueError(f"this .pt2 model was exported with steps={self.steps}; got steps={steps} "
                             "(export again with export_pt2(..., steps=...) or use the TorchScript file)")
        if int(samples) < 1:
            raise ValueError("samples must be >= 1")
        if ca.dim() != 3 or ca.shape[1] < MIN_RESIDUES:
            raise ValueError(f"this .pt2 model needs ca of shape [B, N, 3] with N >= {MIN_RESIDUES} residues "
                             f"(got {tuple(ca.shape)}); use the TorchScript file for shorter chains")
        dev = self.device
        rng = torch.tensor([int(seed), int(bool(deterministic))], dtype=torch.int64, device=dev)
        slots = torch.zeros(int(samples), device=dev)
        with torch.no_grad():
            return self.program(ca.to(dev, torch.float32), restype.to(dev, torch.int64),
                                segment.to(dev, torch.int64), slots, rng)

    # parity with torch.jit modules
    def eval(self):
        return self

    def forward(self, *args, **kwargs):
        return self(*args, **kwargs)


def load_pt2(path: str, device="cpu", prefer_aoti: bool = True):
    """Load a ``.pt2`` written by :func:`export_pt2`; returns ``(module, card)``.

    The AOTInductor build is used when present and ``device`` is the CPU (unless
    ``prefer_aoti=False``); otherwise the exported program, moved to ``device``.
    """
    from torch.export.pt2_archive._package import load_pt2 as _load

    device = torch.device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        contents = _load(path)
    raw = contents.extra_files.get(CARD_NAME, "")
    card = json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw else {}
    steps = int(card.get("pt2", {}).get("steps", DEFAULT_STEPS))
    if prefer_aoti and device.type == "cpu" and MODEL_NAME in contents.aoti_runners:
        return Pt2Sampler(contents.aoti_runners[MODEL_NAME], steps, device, "aoti"), card
    if MODEL_NAME not in contents.exported_programs:
        raise ValueError(f"{path}: no exported program {MODEL_NAME!r} in the archive")
    ep = contents.exported_programs[MODEL_NAME]
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, device)
    return Pt2Sampler(ep.module(), steps, device, "exported_program"), card
