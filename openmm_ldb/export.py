"""Export the trained sampler as one self-describing file, and load it back.

TorchScript (default; loadable with ``torch.jit.load`` and from libtorch in C++) or
torch.export (``.pt2``).  The model card (hyper-parameters, residue vocabulary, slot layout,
training-data summary, validation metrics) travels inside the file as ``model_card.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import resources

import torch

from . import residues as rc
from .model import LDBConfig, LDBModel, Sampler

CARD_NAME = "model_card.json"
FORMAT_VERSION = 1


def geometry_fingerprint() -> str:
    """Hash of the chemistry table; a model is only valid with the table it was trained on."""
    blob = json.dumps(rc.ideal_geometry(), sort_keys=True).encode() + json.dumps(rc.RESTYPES_3).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_card(config: LDBConfig, extra: dict | None = None) -> dict:
    card = {
        "format_version": FORMAT_VERSION,
        "name": "openmm-ldb latent diffusion backmapping",
        "config": config.to_dict(),
        "residues": rc.RESTYPES_3,
        "slots": {r: rc.slot_names(r) for r in rc.RESTYPES_3},
        "geometry_fingerprint": geometry_fingerprint(),
        "inputs": {"ca": "[B, N, 3] float32 Å", "restype": "[N] int64 index into residues",
                   "segment": "[N] int64, equal ids = bonded consecutive residues", "steps": "int",
                   "samples": "int", "seed": "int", "deterministic": "bool"},
        "outputs": {"atoms": "[B, S, N, NUM_SLOTS, 3] float32 Å", "atom_mask": "[N, NUM_SLOTS] float32"},
    }
    card.update(extra or {})
    return card


def load_checkpoint(path: str) -> LDBModel:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = LDBModel(LDBConfig(**ck["config"]))
    model.load_state_dict(ck["model"])
    return model.eval()


def export_model(model: LDBModel | str, path: str, card_extra: dict | None = None, fmt: str | None = None) -> str:
    """Write the sampler of ``model`` (or of a training checkpoint path) to ``path``.

    ``fmt`` is ``'torchscript'`` (default, ``.pt``) or ``'pt2'`` (torch.export program).
    """
    if isinstance(model, str):
        model = load_checkpoint(model)
    sampler = Sampler(model).eval()
    card = model_card(model.config, card_extra)
    fmt = fmt or ("pt2" if path.endswith(".pt2") else "torchscript")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(sampler)
        scripted.save(path, _extra_files={CARD_NAME: json.dumps(card, indent=1)})
    elif fmt == "pt2":
        from .export_pt2 import export_pt2

        export_pt2(sampler, path, card)
    else:
        raise ValueError(f"unknown export format {fmt!r} (use 'torchscript' or 'pt2')")
    return path


def default_model_path() -> str:
    return str(resources.files("openmm_ldb").joinpath("weights", "ldb_default.pt"))


def load_model(path: str | None = None, device: str | torch.device = "cpu"):
    """Load an exported model; returns ``(module, card)``.  Checks the model card."""
    path = path or default_model_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    if path.endswith(".pt2"):
        from .export_pt2 import load_pt2

        module, card = load_pt2(path, device)
    else:
        files = {CARD_NAME: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(path, map_location=device, _extra_files=files)
        card = json.loads(files[CARD_NAME]) if files[CARD_NAME] else {}
    if card.get("residues") != rc.RESTYPES_3:
        raise ValueError(f"{path}: the model's residue vocabulary differs from this openmm-ldb's table")
    if card.get("geometry_fingerprint") != geometry_fingerprint():
        raise ValueError(f"{path}: the model was trained with another ideal-geometry table "
                         f"({card.get('geometry_fingerprint')} != {geometry_fingerprint()})")
    return module, card
