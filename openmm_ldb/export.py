"""Export the trained sampler as one self-describing file, and load it back.

TorchScript (``.pt``: loadable with ``torch.jit.load`` and from libtorch in C++; the Python
Backmapper runs the same function from this package's source with the file's weights and
settings), or torch.export (``.pt2``: the best guess of one frame per call, traced from the same
code, for ``torch.export.load`` and AOTInductor).  The model card (hyper-parameters, residue
vocabulary, slot layout, training-data summary, validation metrics, sampler settings) travels
inside the file as ``model_card.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import resources

import torch

from . import residues as rc
from .data import load_tensors
from .model import LDBConfig, LDBModel, Sampler
from .model.sampler import BestGuessProgram

CARD_NAME = "model_card.json"
FORMAT_VERSION = 2
PT2_MAX_RESIDUES = 100_000


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
    ck = load_tensors(path)
    model = LDBModel(LDBConfig(**ck["config"]))
    missing, unexpected = model.load_state_dict(ck["model"], strict=False)
    # a checkpoint from before the per-well chi head has none (it is read only when the
    # sampler's well_choice_chi asks for it)
    if unexpected or any("well_chi_head" not in k for k in missing):
        raise ValueError(f"{path}: not a checkpoint of this model (lacks {missing[:3]}, has {unexpected[:3]})")
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
    """Write the sampler of ``model`` (a model, a training checkpoint path, an exported file or
    ``'default'``, the shipped model) to ``path``.

    ``fmt`` is ``'torchscript'`` (``.pt``) or ``'pt2'`` (``.pt2``; the default for that
    suffix).  ``settings`` override the sampler's defaults (``model.sampler.DEFAULT_SETTINGS``),
    or those in the card of an exported file, and travel in the card; so do an exported file's
    training and validation records, under ``card_extra``.
    """
    card_from: dict = {}
    if isinstance(model, str):
        source = default_model_path() if model == "default" else model
        if _is_exported(source):
            model, card_from = model_from_exported(source)
            settings = {**card_from.get("sampler_settings", {}), **(settings or {})}
            card_extra = {**{k: card_from[k] for k in ("training", "validation") if k in card_from},
                          **(card_extra or {})}
        else:
            model = load_checkpoint(source)
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
        _export_pt2(sampler, path, card)
    else:
        raise ValueError(f"unknown export format {fmt!r} (use 'torchscript' or 'pt2')")
    return path


def _pt2_example(n_min: int) -> tuple:
    """Inputs to trace with: the shipped GB1 Cα trace (repeated as further chains 40 Å apart
    until it has ``n_min`` residues) with two of its residue pairs made bonded cysteines (two,
    not zero or one: torch.export would take a size of 0 or 1 for a constant)."""
    ca = []
    with resources.files("openmm_ldb").joinpath("resources", "gb1.pdb").open() as f:
        for line in f:
            if line.startswith(("ATOM", "HETATM")) and line[12:16].strip() == "CA":
                ca.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
    one = torch.tensor(ca, dtype=torch.float32)
    copies = -(-n_min // one.shape[0])
    trace = torch.cat([one + torch.tensor([40.0 * c, 0.0, 0.0]) for c in range(copies)])
    n = trace.shape[0]
    segment = torch.arange(copies).repeat_interleave(one.shape[0])
    restype = torch.full([n], rc.RESTYPE_INDEX["ALA"], dtype=torch.long)
    restype[::7] = rc.RESTYPE_INDEX["PRO"]
    pairs = torch.tensor([[2, 9], [20, 31]], dtype=torch.long)
    restype[pairs.reshape(-1)] = rc.RESTYPE_INDEX["CYS"]
    return trace.unsqueeze(0), restype, segment, pairs, torch.zeros(1, dtype=torch.long)


def _export_pt2(sampler: Sampler, path: str, card: dict) -> None:
    from torch.export import Dim

    if sampler.polish.steps > 0:
        raise ValueError("the .pt2 best guess is exported without the contact polish: export it with "
                         "settings={'polish_steps': 0}, or use TorchScript (.pt)")
    program = BestGuessProgram(sampler).eval()
    n_min = program.min_residues()
    residues = Dim("residues", min=n_min, max=PT2_MAX_RESIDUES)
    pairs = Dim("pairs", min=0, max=PT2_MAX_RESIDUES // 2)
    with torch.no_grad():
        ep = torch.export.export(program, _pt2_example(n_min), strict=False,
                                 dynamic_shapes={"ca": {1: residues}, "restype": {0: residues},
                                                 "segment": {0: residues}, "disulfides": {0: pairs}, "seeds": None})
    card = {**card, "pt2": {"program": "best guess (deterministic, one sample), Cα regularized (keep_ca false)",
                            "frames_per_call": 1, "min_residues": n_min, "max_residues": PT2_MAX_RESIDUES,
                            "torch": torch.__version__}}
    torch.export.save(ep, path, extra_files={CARD_NAME: json.dumps(card, indent=1)})


class Pt2Backmapper(torch.nn.Module):
    """A ``.pt2`` file's program behind the call signature of the TorchScript file's forward:
    frames one call each; only the best guess (``deterministic``, one sample, ``keep_ca`` False)."""

    def __init__(self, program, card: dict):
        super().__init__()
        self.program = program
        self.card = card
        self.min_residues = int(card["pt2"]["min_residues"])

    def forward(self, ca, restype, segment, disulfides, seeds, steps: int = 10, samples: int = 1,
                deterministic: bool = True, keep_ca: bool = False):
        if not deterministic or samples != 1 or keep_ca:
            raise ValueError("a .pt2 model holds the best guess only (deterministic, one sample, Cα "
                             "regularized); use the TorchScript (.pt) model for ensembles or keep_ca")
        if ca.shape[1] < self.min_residues:
            raise ValueError(f"this .pt2 model takes at least {self.min_residues} residues, not {ca.shape[1]}; "
                             "use the TorchScript (.pt) model for smaller systems")
        outs = [self.program(ca[b:b + 1], restype, segment, disulfides, seeds[b:b + 1]) for b in range(ca.shape[0])]
        return (torch.cat([o[0] for o in outs]), outs[0][1], torch.cat([o[2] for o in outs]),
                torch.cat([o[3] for o in outs]))

    def stream(self, ca, restype, segment, disulfides, anchor_idx, anchor_dist, prior_chi, has_prior: bool,
               keep_ca: bool = False):
        """The first frame of a stream is the per-frame best guess, which the program computes;
        a stream's later frames need the state the program does not return (one frame, as
        ``openmm-ldb backmap one.pdb --model x.pt2``, works)."""
        if has_prior or ca.shape[0] != 1:
            raise ValueError("coherent streams of several frames need the TorchScript (.pt) model; a .pt2 model "
                             "maps each frame on its own (--per-frame, coherent=False)")
        atoms, mask, shift, error = self.forward(ca, restype, segment, disulfides,
                                                 torch.zeros(1, dtype=torch.long, device=ca.device), keep_ca=keep_ca)
        n = ca.shape[1]
        # no state for a next frame: a later call with it (has_prior) is refused above
        return (atoms, mask, shift, error, torch.zeros(n, 1, dtype=torch.long, device=ca.device),
                torch.zeros(n, 1, device=ca.device), torch.zeros(n, 4, 2, device=ca.device))


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
    override the card's sampler settings (Python module only).  A ``.pt2`` file's program comes
    back behind the same call signature (:class:`Pt2Backmapper`: the best guess only, one frame
    per program call).
    """
    path = path or default_model_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    if path.endswith(".pt2"):
        files = {CARD_NAME: ""}
        program = torch.export.load(path, extra_files=files)
        card = json.loads(files[CARD_NAME]) if files[CARD_NAME] else {}
        if "pt2" not in card:
            raise ValueError(f"{path}: not a .pt2 model of this openmm-ldb version (openmm-ldb 0.1 wrote another "
                             "program); export it again: openmm-ldb export default -o model.pt2")
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
    if path.endswith(".pt2"):
        if settings:
            raise ValueError(f"{path}: a .pt2 program's settings are fixed when it is exported; export it again "
                             "with the settings, or load the TorchScript (.pt) model")
        module = Pt2Backmapper(program.module(), card)
    elif python:
        model, _ = model_from_exported(path, module=module, card=card)
        module = Sampler(model, {**card.get("sampler_settings", {}), **(settings or {})}).eval().to(device)
    return module, card
