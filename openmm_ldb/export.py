"""Export the trained sampler as one self-describing file, and load it back.

TorchScript (loadable with ``torch.jit.load`` and from libtorch in C++; the Python Backmapper
runs the same function from this package's source with the file's weights and settings).  The model card (hyper-parameters, residue vocabulary, slot layout,
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
FORMAT_VERSION = 2


def geometry_fingerprint() -> str:
    """Hash of the chemistry table; a model is only valid with the table it was trained on."""
    blob = json.dumps(rc.ideal_geometry(), sort_keys=True).encode() + json.dumps(rc.RESTYPES_3).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_card(config: LDBConfig, extra: dict | None = None, settings: dict | None = None) -> dict:
    card = {
        "format_version": FORMAT_VERSION,
        "name": "openmm-ldb latent diffusion backmapping",
        "config": config.to_dict(),
        "residues": rc.RESTYPES_3,
        "slots": {r: rc.slot_names(r) for r in rc.RESTYPES_3},
        "geometry_fingerprint": geometry_fingerprint(),
        "inputs": {"ca": "[B, N, 3] float32 Å", "restype": "[N] int64 index into residues",
                   "segment": "[N] int64, equal ids = bonded consecutive residues",
                   "disulfides": "[P, 2] int64 residue indices of bonded CYS pairs",
                   "seeds": "[B] int64, one per frame (unused by the deterministic best guess)",
                   "steps": "int (diffusion samples)", "samples": "int", "deterministic": "bool",
                   "keep_ca": "bool (true: Cα exactly as given, bonds may stretch)"},
        "outputs": {"atoms": "[B, S, N, NUM_SLOTS, 3] float32 Å", "atom_mask": "[N, NUM_SLOTS] float32",
                    "ca_shift": "[B, S] float32 Å, largest Cα move of each frame",
                    "expected_error": "[B, S, N] float32 Å, each residue's expected side-chain error"},
        "sampler_settings": dict(settings or {}),
    }
    card.update(extra or {})
    return card


def load_checkpoint(path: str) -> LDBModel:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = LDBModel(LDBConfig(**ck["config"]))
    model.load_state_dict(ck["model"])
    return model.eval()


def model_from_exported(path: str | None = None, module=None, card: dict | None = None) -> tuple[LDBModel, dict]:
    """The trainable :class:`LDBModel` inside an exported TorchScript model (the shipped default
    when ``path`` is None), with its card: what fine-tuning starts from, no checkpoint needed.

    The exported file holds everything inference reads (decoders, denoisers, codebook, latent
    statistics); the stage-1 encoder is not in it and starts untrained.  Files exported before
    the best-guess networks existed start those from the diffusion denoiser and decoder.
    """
    path = path or default_model_path()
    if module is None:
        files = {CARD_NAME: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(path, map_location="cpu", _extra_files=files)
        card = json.loads(files[CARD_NAME]) if files[CARD_NAME] else {}
    with torch.random.fork_rng():  # the parts the file lacks (the encoder) start the same every time
        torch.manual_seed(0)
        model = LDBModel(LDBConfig(**card["config"]))
    own = model.state_dict()
    names = {"best_guess.denoiser.": "guess_denoiser.", "best_guess.decoder.": "guess_decoder."}
    theirs = {}
    for k, v in module.state_dict().items():
        for a, b in names.items():
            k = b + k[len(a):] if k.startswith(a) else k
        if k in own and own[k].shape == v.shape and not k.startswith("tables."):
            theirs[k] = v.cpu()
    model.load_state_dict(theirs, strict=False)
    if not any(k.startswith("guess_") for k in theirs):
        model.init_guess()
    return model.eval(), card


def export_model(model: LDBModel | str, path: str, card_extra: dict | None = None, fmt: str | None = None,
                 settings: dict | None = None) -> str:
    """Write the sampler of ``model`` (or of a training checkpoint path) to ``path``.

    ``fmt`` is ``'torchscript'`` (``.pt``); ``settings`` override the sampler's defaults
    (``model.sampler.DEFAULT_SETTINGS``) and travel in the card.  The torch.export (``.pt2``) format of version 1 is
    not available for this version's function (see docs/cpp.md).
    """
    if isinstance(model, str):
        model = load_checkpoint(model) if not _is_exported(model) else model_from_exported(model)[0]
    sampler = Sampler(model, settings).eval()
    card = model_card(model.config, card_extra, sampler.settings())
    fmt = fmt or ("pt2" if path.endswith(".pt2") else "torchscript")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(sampler)
        scripted.save(path, _extra_files={CARD_NAME: json.dumps(card, indent=1)})
    elif fmt == "pt2":
        raise ValueError("the .pt2 (torch.export) format is not available for this version's sampler "
                         "(its clash resolution and disulfide closure branch on the data); export "
                         "TorchScript (.pt), which Python and C++ share")
    else:
        raise ValueError(f"unknown export format {fmt!r} (use 'torchscript')")
    return path


def _is_exported(path: str) -> bool:
    """A TorchScript export (a zip with ``model_card.json``) rather than a training checkpoint."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("extra/" + CARD_NAME) for n in z.namelist())


def default_model_path() -> str:
    return str(resources.files("openmm_ldb").joinpath("weights", "ldb_default.pt"))


def load_model(path: str | None = None, device: str | torch.device = "cpu", python: bool = True,
               settings: dict | None = None):
    """Load an exported model; returns ``(module, card)``.  Checks the model card.

    With ``python`` (the default) a TorchScript file's weights and sampler settings are loaded
    into this package's :class:`Sampler` (the same function, no compile-on-first-call delay);
    ``python=False`` returns the scripted module itself, as libtorch sees it.  ``settings``
    override the card's sampler settings (Python module only).
    """
    path = path or default_model_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    if path.endswith(".pt2"):
        raise ValueError(f"{path}: .pt2 models (openmm-ldb 0.1) are not supported by this version; "
                         "re-export the model as TorchScript (.pt)")
    else:
        files = {CARD_NAME: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(path, map_location=device, _extra_files=files)
        card = json.loads(files[CARD_NAME]) if files[CARD_NAME] else {}
    if card.get("residues") != rc.RESTYPES_3:
        raise ValueError(f"{path}: the model's residue vocabulary differs from this openmm-ldb's table")
    if card.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: exported by an older openmm-ldb (forward without disulfides/seeds); "
                         f"re-export it with this version: openmm-ldb export {path} -o new.pt")
    from .model.sampler import DEFAULT_SETTINGS

    unknown = set(card.get("sampler_settings", {})) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"{path}: unknown sampler settings {sorted(unknown)} (a newer openmm-ldb made it)")
    if card.get("geometry_fingerprint") != geometry_fingerprint():
        raise ValueError(f"{path}: the model was trained with another ideal-geometry table "
                         f"({card.get('geometry_fingerprint')} != {geometry_fingerprint()})")
    if python:
        model, _ = model_from_exported(path, module=module, card=card)
        module = Sampler(model, {**card.get("sampler_settings", {}), **(settings or {})}).eval().to(device)
    return module, card
