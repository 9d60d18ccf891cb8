"""The exported function: Cα frames + sequence + chain layout + disulfides + one seed per frame
-> every atom.  Everything that decides an atom position lives here, so the Python Backmapper,
the TorchScript file and the C++ consumer get the same atoms:

1. the Cα trace is regularized (moved as little as needed so ideal peptide units fit it and
   Cα(i)–Cα(i+2) stays in a protein's range; a native trace is returned unchanged), unless the
   caller keeps Cα exactly;
2. the torsions: one pass of the best-guess network (deterministic; it also gives each
   residue's expected side-chain error, the confidence), or a few DDIM steps of the diffusion
   denoiser from per-frame seeded noise (samples);
3. peptide planes turned where they would squeeze an N–CA–C angle or two carbonyl O
   (:meth:`Sampler.open_tau`), then atoms by rigid groups (:meth:`GeometryTables.build_atoms`);
4. proline rings closed analytically (chi1 grid, chi2 solved), disulfides closed by a chi1 x chi1
   grid for each declared pair;
5. clash resolution: the worst-clashing side chains choose among small turns and rotamer jumps
   of their own angles (iterated conditional modes, soft repulsion, a penalty for leaving the
   network's choice), then a torsion-space relaxation; what still clashes is relaxed with the
   backbone and Cα free to move a little (``polish.ContactPolish``, at most
   ``backbone_relax_max_ca`` Å; not with ``keep_ca``); then rotatable hydrogens turn away from
   neighbouring atoms.

:meth:`Sampler.stream` is the same function for consecutive frames of one trajectory, keeping
rotamers from frame to frame (a coherent stream).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .. import geometry as geo
from .. import residues as rc
from .diffusion import alpha_bar, hash_normal
from .features import gather_nodes, trace_quality
from .ldb import WELLS_DEG, BestGuess, LDBModel, well_types
from .polish import ContactPolish

# Settings that change the atoms; they travel in the model card (``Sampler.settings()``).
DEFAULT_SETTINGS = {
    "regularize_iterations": 40,
    "min_ca_i2": 4.4,
    # Cα(i)–Cα(i+2) at most this (Å): 17 of 44,905 in 200 training chains are longer (fully
    # extended is ~7.3 Å); CG models without angle terms stretch coils straighter
    "max_ca_i2": 7.45,
    "repack_sweeps": 1,
    "repack_cutoff": 3.0,
    "repack_penalty": 0.4,
    # added to the penalty of the candidates that turn chi1 by 60 degrees or more (into another
    # well): the chi1 well choice scored every well already, so the repack leaves the chosen one
    # only for a side chain that clashes badly there
    "repack_well_penalty": 0.0,
    "repack_neighbours": 12,
    "repack_fraction": 0.125,
    "proline_chi1_grid": 31,
    "disulfide_grid": 72,
    # turns (degrees) of the peptide plane before a proline tried when the trace's own cannot
    # close the ring; a turn costs proline_plane_cost Å per radian of closure gap
    "proline_plane_offsets": [0, 10, -10, 20, -20, 30, -30],
    "proline_plane_cost": 0.05,
    # among closures as good as the best (score within 0.02, ring gap within 0.01 Å of its), the
    # one whose CG and CD keep furthest (3 Å) from other residues' backbone atoms: a pucker pressed
    # onto a neighbour is never turned later (prolines are held by the rotamer choice and the
    # relaxation); 0 = off
    "proline_contact_weight": 1.0,
    # weight (Å) that keeps a proline's chi1 near the one it comes with (the decoder's, or the
    # previous frame's in a coherent stream, where the pucker would otherwise flip between two
    # closures of nearly equal length)
    "proline_hold": 0.01,
    "proline_stream_hold": 0.2,
    "hydrogen_rounds": 1,
    # chi1 (not proline's) further than this from the nearest staggered well (degrees) is moved
    # to that well before atoms are placed (-1: never)
    "snap_chi1_beyond": 30.0,
    # the same for chi2 of ILE, LEU, LYS, ARG, MET, GLU, GLN (measured: chi1+2 accuracy +0.02, but
    # clashes 2.3 -> 2.7 per 1000 atoms: off)
    "snap_chi2": False,
    # the best guess takes the well its network rates most likely instead of the nearest (a model
    # file trained with the well head turns it on in its card)
    "snap_by_head": False,
    "hydrogen_neighbours": 6,
    # the best guess's chi1 well chosen by a score of each staggered well (60, 180, -60 degrees):
    # the well head's log-probability plus the side chain's soft repulsion (cutoffs 3.0 and 3.6 Å)
    # with its neighbours' side chains, their backbones and its own backbone (7 weights:
    # repulsion 3.0 Å: side chains, backbones, own; 3.6 Å: the same; head), and with
    # WELL_FEATURES weights also the contact counts of Sampler.contact_features; one list for all
    # residue types or {"*": [...], "LEU": [...], ...} with a row per type.
    # ``tools/fit_well_choice.py`` fits them on training chains; [] = off (the nearest well of
    # the regression is kept).  See docs/models.rst
    "well_choice": [],
    # the residue types the well choice applies to (the shipped model's card: every type with a
    # chi1 but PRO).  These defaults are those a model with the seven shared weights was fitted
    # for: on 70 training chains they made CYS, PHE, LEU, ASN, GLN, TRP and TYR better and the
    # others worse or no better (with the contact counts and the per-well chi2..chi4 every type
    # gains)
    "well_choice_types": ["CYS", "PHE", "LEU", "ASN", "GLN", "TRP", "TYR"],
    # neighbours (by side-chain centre) whose side chains and backbones the seven-weight well
    # choice scores against
    "well_choice_neighbours": 8,
    # neighbours (by side-chain centre) whose atoms the well choice with contact counts scores
    # against (repulsion and counts)
    "well_choice_env_neighbours": 12,
    # the further chis (chi2..chi4) of a side chain in each chi1 well of the well choice: 0, those
    # the network chose for its own chi1; 1, the per-well head's for that well (``well_chi``)
    # where the well is another than its own chi1's; 2, the per-well head's in every well
    "well_choice_chi": 0,
    # after the rotamer choice: gradient steps in torsion space (chi1-chi4, bonds stay ideal) for
    # the side chains that still clash, against the same soft repulsion with a tether to where
    # they started; each step turns a chi by at most relax_max_step degrees, in all by at most
    # relax_max_turn (0 steps: off)
    "relax_steps": 6,
    "relax_rate": 0.09,
    "relax_max_step": 8.0,
    "relax_max_turn": 30.0,
    "relax_tether": 0.5,
    "relax_min_energy": 0.02,
    "relax_margin": 2.0,
    "relax_neighbours": 12,
    # contact polish (``polish.py``): steps pushing atoms of different residues, hydrogens
    # included, out of bonding distance (+ polish_margin Å) with bonds and angles kept; 0 = off
    # (SnapshotReporter turns it on for docking snapshots)
    "polish_steps": 0,
    "polish_margin": 0.4,
    "polish_sweeps": 4,
    "polish_neighbours": 20,
    # peptide planes turned (about their Cα–Cα axis, by the smallest of tau_offsets degrees, even and
    # odd planes in turn, tau_rounds times) where the planes the network chose squeeze a residue's
    # N–CA–C angle below tau_min degrees or open it beyond tau_max: on a distorted CG trace the
    # predicted planes can bring N and C of one residue within bonding distance, or C onto CB
    # (-1: off); the same turns part the carbonyl O of consecutive planes closer than carbonyl_min Å
    # (measured on training chains, crystal Cα: 105-118° cost 0.02 Å of backbone RMSD, 100-125° none;
    # on CG frames of training proteins 100-125° gave as few clashes and broken angles as 105-118°)
    "tau_min": 100.0,
    "tau_max": 125.0,
    "carbonyl_min": 2.8,
    "tau_offsets": [10, -10, 20, -20, 30, -30, 45, -45, 60, -60, 90, -90],
    "tau_rounds": 2,
    # backbone-aware clash relaxation (``polish.py``, the same steps as the contact polish): heavy
    # atoms of different residues still closer than backbone_relax_distance + backbone_relax_margin
    # after the side-chain steps are pushed apart with bonds, angles, rings and peptide planes
    # kept; the atoms of the residues in contact and of their chain neighbours move, Cα of the
    # residues in contact by at most backbone_relax_max_ca Å (none with keep_ca).  On a compressed
    # CG trace no side-chain turn parts two backbones.  0 steps: off
    "backbone_relax_steps": 6,
    "backbone_relax_distance": 2.2,
    "backbone_relax_margin": 0.4,
    "backbone_relax_max_ca": 0.5,
    "backbone_relax_ca_weight": 0.5,
    "backbone_relax_neighbours": 12,
    "backbone_relax_sweeps": 2,
    "backbone_relax_end_steps": 4,
    # a residue keeps the previous frame's rotamer in a stream where its neighbourhood moved less (Å)
    "stream_gate": 2.0,
    # largest side-chain turn (degrees) the clash resolution may make to a kept rotamer in a stream
    "stream_max_turn": 30.0,
    # clash energy a kept rotamer must exceed before it gives way to the frame's own best guess
    "stream_switch_penalty": 3.0,
    # 0: the best guess is one pass of its own network; k > 0: k DDIM steps of the diffusion
    # denoiser from zero noise, the continuous latent decoded (v0.1's best guess)
    "guess_ddim_steps": 0,
    "hydrogen_cutoff": 2.2,
    # (chi1, chi2) rotations tried for every side chain, degrees; the first is the decoder's own.
    # Small turns first: measured on validation chains they remove as many clashes as 120-degree
    # rotamer jumps without costing accuracy (13 turns: 1.5 clashes / 1000 atoms, RMSD unchanged)
    "repack_offsets": [[0, 0], [30, 0], [-30, 0], [0, 30], [0, -30], [60, 0], [-60, 0], [0, 60], [0, -60],
                       [120, 0], [-120, 0], [0, 120], [0, -120]],
}


def _turn_about(p: torch.Tensor, origin: torch.Tensor, axis: torch.Tensor, cs: torch.Tensor,
                sn: torch.Tensor) -> torch.Tensor:
    """Points ``p`` [B, P, 3] turned about the unit ``axis`` [B, P, 1, 3] through ``origin``
    [B, P, 3] by each angle of (``cs``, ``sn``) [1, 1, D, 1] (Rodrigues): [B, P, D, 3]."""
    v = (p - origin).unsqueeze(2)
    v = v.expand(v.shape[0], v.shape[1], cs.shape[2], 3)
    k = axis.expand_as(v)
    return origin.unsqueeze(2) + v * cs + torch.cross(k, v, dim=-1) * sn + k * (k * v).sum(-1, keepdim=True) * (1.0 - cs)


def _plane_atom(x: torch.Tensor, xa: torch.Tensor, u: torch.Tensor, w: torch.Tensor, xy: torch.Tensor,
                th: torch.Tensor, k: int) -> torch.Tensor:
    """Atom ``k`` (0: C(p), 1: O(p), 2: N(p + 1)) of every peptide plane p [M, N, D, 3] for the plane turns
    ``th`` [M, N, D] (the plane axes of ``geo.peptide_axes`` and its in-plane coordinates ``xy``)."""
    m, n = x.shape[0], x.shape[1]
    perp = torch.cos(th).unsqueeze(-1) * u.unsqueeze(2) + torch.sin(th).unsqueeze(-1) * w.unsqueeze(2)
    return x.unsqueeze(2) + xy[:, :, k, 0].view(m, n, 1, 1) * xa.unsqueeze(2) + xy[:, :, k, 1].view(m, n, 1, 1) * perp


def _cos_angle(centre: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos of the angle a-centre-b."""
    return (geo.normalize(a - centre) * geo.normalize(b - centre)).sum(-1)


def _stable_argmin(score: torch.Tensor, dim: int) -> torch.Tensor:
    """argmin of ``score`` rounded to 0.01: float noise of the last bits (another batch size,
    another device) rarely changes a choice; ties go to the first candidate."""
    return torch.round(score * 100.0).argmin(dim)


def gather_residues(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, A, 3], idx [B, T, K] -> [B, T, K, A, 3]."""
    b, a = x.shape[0], x.shape[2]
    t, k = idx.shape[1], idx.shape[2]
    return gather_nodes(x.reshape(b, x.shape[1], a * 3), idx).view(b, t, k, a, 3)


def rows_of(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [B, N, ...] at residues ``rows`` [B, T] -> [B, T, ...]."""
    shape = list(rows.shape) + [1] * (x.dim() - 2)
    return torch.gather(x, 1, rows.view(shape).expand([rows.shape[0], rows.shape[1]] + list(x.shape[2:])))


def _rotor_table():
    """[R, 2, 5] slots (axis atom, parent, up to three hydrogens; -1 absent) of each residue
    type's rotatable hydrogen groups, and [R, 2] their turning step (60 degrees for three
    hydrogens, 120 for one; 0 where there is no group)."""
    rotors = np.full((rc.NUM_RESTYPES, 2, 5), -1, dtype=np.int64)
    steps = np.zeros((rc.NUM_RESTYPES, 2), dtype=np.float32)
    for r, name in enumerate(rc.RESTYPES_3):
        slots = {a: i for i, a in enumerate(rc.slot_names(name)) if a}
        bonds = rc.residue_bonds(name, hydrogens=True)
        g = 0
        for parent, names in rc.ROTATABLE_HYDROGEN_PARENTS.items():
            if name not in names or parent not in slots:
                continue
            nbrs = [b if a == parent else a for a, b in bonds if parent in (a, b)]
            hs = [x for x in nbrs if x.startswith("H") and x in slots]
            heavy = [x for x in nbrs if not x.startswith("H") and x in slots]
            if not hs or len(heavy) != 1:
                continue
            rotors[r, g, 0], rotors[r, g, 1] = slots[heavy[0]], slots[parent]
            for j, h in enumerate(hs[:3]):
                rotors[r, g, 2 + j] = slots[h]
            steps[r, g] = math.radians(60.0 if len(hs) == 3 else 120.0)
            g += 1
    return rotors, steps


# distance bins of the well choice's contact counts: ENV_BINS bins of ENV_BIN_WIDTH Å below
# ENV_BIN_END Å (arithmetic, not a search: a bucketize cost 3 % of the whole function)
ENV_BINS = 7
ENV_BIN_WIDTH = 0.5
ENV_BIN_END = 5.5
WELL_FEATURES = 7 + 4 * ENV_BINS


def _atom_classes():
    """[NUM_RESTYPES + 1, NUM_HEAVY_SLOTS] 0 no atom, 1 apolar (C, S), 2 polar (N, O)."""
    out = np.zeros((rc.NUM_RESTYPES + 1, rc.NUM_HEAVY_SLOTS), dtype=np.int64)
    heavy = rc.heavy_mask_array()
    for i, name in enumerate(rc.RESTYPES_3):
        for j, atom in enumerate(rc.slot_names(name)[:rc.NUM_HEAVY_SLOTS]):
            if atom and heavy[i, j] > 0:
                out[i, j] = 2 if rc.element_of(atom) in ("N", "O") else 1
    return out


def _well_choice_table(weights) -> torch.Tensor:
    """The well choice's weights as a table [NUM_RESTYPES + 1, F] (F: 0 = off, 7 or
    ``WELL_FEATURES``): one list for every residue type, or ``{"*": [...], "LEU": [...], ...}``."""
    if isinstance(weights, dict):
        shared = [float(v) for v in weights["*"]]
        rows = [[float(v) for v in weights.get(name, shared)] for name in rc.RESTYPES_3] + [shared]
    else:
        rows = [[float(v) for v in weights]] * (rc.NUM_RESTYPES + 1)
    table = torch.tensor(rows, dtype=torch.float32).reshape(rc.NUM_RESTYPES + 1, -1)
    if table.shape[1] not in (0, 7, WELL_FEATURES):
        raise ValueError(f"well_choice takes 7 or {WELL_FEATURES} weights (or none), not {table.shape[1]}")
    return table


def _own_backbone_pairs():
    """[R, H, H] 1 for (side-chain atom beyond CB, own backbone N/C/O) pairs more than three bonds
    apart: the pairs the clash metric counts inside one residue."""
    h = rc.NUM_HEAVY_SLOTS
    out = np.zeros((rc.NUM_RESTYPES, h, h), dtype=np.float32)
    for r, name in enumerate(rc.RESTYPES_3):
        slots = {a: i for i, a in enumerate(rc.slot_names(name)[:h]) if a}
        bonds = [(a, b) for a, b in rc.residue_bonds(name, hydrogens=False) if a in slots and b in slots]
        for bb in ("N", "C", "O"):
            dist = rc.bond_path_lengths(bonds, bb)
            for a, i in slots.items():
                if i >= 5 and dist.get(a, 99) > 3:
                    out[r, i, slots[bb]] = 1.0
    return out[:, 5:, :5].copy()


class Sampler(nn.Module):
    """Cα trace + sequence -> all-atom structures; the exported entry point.

    ``forward(ca [B, N, 3] Å, restype [N], segment [N], disulfides [P, 2], seeds [B], steps,
    samples, deterministic, keep_ca)`` returns ``(atoms [B, S, N, NUM_SLOTS, 3] Å,
    atom_mask [N, NUM_SLOTS], ca_shift [B, S] Å, expected_error [B, S, N] Å)``: the last is each
    residue's expected side-chain error (the best-guess network's confidence head).  Frame b's atoms depend only on its Cα and
    ``seeds[b]`` (and not at all on the seed in deterministic mode), whatever the batch.
    """

    def __init__(self, model: LDBModel, settings: dict | None = None):
        super().__init__()
        s = dict(DEFAULT_SETTINGS)
        s.update(settings or {})
        self.graph = model.graph
        self.tables = model.tables
        self.quantizer = model.quantizer
        self.decoder = model.decoder
        self.denoiser = model.denoiser
        self.best_guess = BestGuess(model.guess_denoiser, model.guess_decoder)
        self.register_buffer("latent_mean", model.latent_mean.clone())
        self.register_buffer("latent_std", model.latent_std.clone())
        self.latent_dim = int(model.config.latent_dim)
        self.cis_threshold = float(rc.CIS_CA_CA_THRESHOLD)
        self.regularize_iterations = int(s["regularize_iterations"])
        self.min_ca_i2 = float(s["min_ca_i2"])
        self.max_ca_i2 = float(s["max_ca_i2"])
        self.repack_sweeps = int(s["repack_sweeps"])
        self.repack_cutoff = float(s["repack_cutoff"])
        self.repack_neighbours = int(s["repack_neighbours"])
        fraction = float(s["repack_fraction"])
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"repack_fraction must be in (0, 1], not {fraction}")
        # in millionths: ceil(n * fraction) in integers, which torch.export can keep symbolic in n
        self.repack_millionths = int(round(fraction * 1_000_000))
        self._settings = s
        self.register_buffer("repack_offsets", torch.tensor(s["repack_offsets"], dtype=torch.float32) *
                             (math.pi / 180.0))
        # each offset's penalty: none for the decoder's own angles, repack_penalty for a turn, and
        # repack_well_penalty more for a turn of chi1 into another well
        offset_penalty = torch.full([self.repack_offsets.shape[0]], float(s["repack_penalty"]))
        offset_penalty[0] = 0.0
        offset_penalty += float(s["repack_well_penalty"]) * (self.repack_offsets[:, 0].abs() > math.radians(59.0)).float()
        self.register_buffer("repack_offset_penalty", offset_penalty)
        heavy = torch.as_tensor(rc.heavy_mask_array())
        sc = heavy.clone()
        sc[:, :5] = 0.0                                   # N, CA, C, O, CB never move with chi
        bb = heavy.clone()
        bb[:, 5:] = 0.0
        self.register_buffer("sc_heavy", sc[:, :rc.NUM_HEAVY_SLOTS].contiguous())
        self.register_buffer("bb_heavy", bb[:, :rc.NUM_HEAVY_SLOTS].contiguous())
        self.num_heavy = int(rc.NUM_HEAVY_SLOTS)
        centre = heavy.clone()[:, :rc.NUM_HEAVY_SLOTS]
        centre[:, [0, 2, 3]] = 0.0                        # CA + side chain (GLY: CA alone)
        self.register_buffer("centre_weight", centre.contiguous())
        self.register_buffer("own_backbone_pairs", torch.as_tensor(_own_backbone_pairs()))
        self.pro = int(rc.RESTYPE_INDEX["PRO"])
        self.cys = int(rc.RESTYPE_INDEX["CYS"])
        pro_names = rc.slot_names("PRO")
        self.pro_cg = pro_names.index("CG")
        self.pro_cd = pro_names.index("CD")
        self.pro_cb = pro_names.index("CB")
        self.register_buffer("pro_plane_offsets", torch.tensor([float(v) for v in s["proline_plane_offsets"]]) *
                             (math.pi / 180.0))
        self.pro_plane_cost = float(s["proline_plane_cost"])
        self.pro_contact_weight = float(s["proline_contact_weight"])
        self.pro_hold = float(s["proline_hold"])
        self.pro_stream_hold = float(s["proline_stream_hold"])
        self.bond_n_cd = 1.473
        self.min_c_cd = float(rc.MIN_C_CD_PROLINE)
        self.register_buffer("pro_chi1_grid", torch.linspace(-45.0, 45.0, int(s["proline_chi1_grid"])) *
                             (math.pi / 180.0))
        self.register_buffer("ss_grid", torch.arange(int(s["disulfide_grid"])) *
                             (2.0 * math.pi / int(s["disulfide_grid"])) - math.pi)
        rotors, steps = _rotor_table()
        self.register_buffer("rotors", torch.as_tensor(rotors))              # [R, 2, 5] Q, P, H, H, H
        self.register_buffer("rotor_step", torch.as_tensor(steps))           # [R, 2] radians, 0 = none
        self.hydrogen_rounds = int(s["hydrogen_rounds"])
        self.relax_steps = int(s["relax_steps"])
        self.relax_rate = float(s["relax_rate"])
        self.relax_max_step = math.radians(float(s["relax_max_step"]))
        self.relax_max_turn = math.radians(float(s["relax_max_turn"]))
        self.relax_tether = float(s["relax_tether"])
        self.relax_min_energy = float(s["relax_min_energy"])
        self.relax_margin = float(s["relax_margin"])
        self.relax_neighbours = int(s["relax_neighbours"])
        self.polish = ContactPolish(int(s["polish_steps"]), float(s["polish_margin"]), int(s["polish_neighbours"]),
                                    int(s["polish_sweeps"]))
        self.cos_tau_min = math.cos(math.radians(float(s["tau_min"]))) if float(s["tau_min"]) > 0 else 2.0
        self.tau_rounds = int(s["tau_rounds"])
        self.cos_tau_max = math.cos(math.radians(float(s["tau_max"]))) if float(s["tau_max"]) > 0 else -2.0
        self.carbonyl_min = float(s["carbonyl_min"])
        self.register_buffer("tau_offsets", torch.tensor([0.0] + [float(v) for v in s["tau_offsets"]]) *
                             (math.pi / 180.0))
        self.backbone_relax = ContactPolish(int(s["backbone_relax_steps"]), float(s["backbone_relax_margin"]),
                                            int(s["backbone_relax_neighbours"]), int(s["backbone_relax_sweeps"]),
                                            clash_distance=float(s["backbone_relax_distance"]),
                                            ca_max_shift=float(s["backbone_relax_max_ca"]),
                                            ca_weight=float(s["backbone_relax_ca_weight"]),
                                            end_steps=int(s["backbone_relax_end_steps"]))
        self.register_buffer("chi_exists", torch.as_tensor(rc.chi_mask_array()))          # [R, 4]
        self.register_buffer("heavy_group", self.tables.sc_group[:, :rc.NUM_HEAVY_SLOTS].clone())
        snap = float(s["snap_chi1_beyond"])
        self.snap_by_head = bool(s["snap_by_head"])
        self.snap_cos = math.cos(math.radians(snap)) if snap >= 0.0 else 2.0
        wells = torch.tensor(WELLS_DEG) * (math.pi / 180.0)
        self.register_buffer("chi1_wells", torch.stack([torch.cos(wells), torch.sin(wells)], -1))
        snap_types = well_types()
        if not bool(s["snap_chi2"]):
            snap_types[:, 1] = 0.0
        self.register_buffer("snap_types", snap_types)
        self.register_buffer("well_choice", _well_choice_table(s["well_choice"]))
        self.register_buffer("atom_class", torch.as_tensor(_atom_classes()))
        self.well_choice_env_neighbours = int(s["well_choice_env_neighbours"])
        self.env_bins, self.env_bin_width, self.env_bin_end = ENV_BINS, ENV_BIN_WIDTH, ENV_BIN_END
        choice_types = torch.zeros(rc.NUM_RESTYPES + 1)
        for name in s["well_choice_types"]:
            choice_types[rc.RESTYPE_INDEX[name]] = 1.0
        self.register_buffer("well_choice_types", choice_types * well_types()[:, 0])
        self.well_choice_neighbours = int(s["well_choice_neighbours"])
        self.well_choice_chi = int(s["well_choice_chi"])
        self.stream_gate = float(s["stream_gate"])
        self.stream_max_turn = math.radians(float(s["stream_max_turn"]))
        self.stream_switch_penalty = float(s["stream_switch_penalty"])

        self.guess_ddim_steps = int(s["guess_ddim_steps"])
        self.hydrogen_cutoff = float(s["hydrogen_cutoff"])
        self.hydrogen_neighbours = int(s["hydrogen_neighbours"])
        self.sg_slot = rc.slot_names("CYS").index("SG")
        self.ca_slot = rc.slot_names("ALA").index("CA")
        self.bond_sg_sg = float(rc.BOND_SG_SG)
        self.angle_cb_sg_sg = math.radians(104.0)

    @torch.jit.ignore
    def settings(self) -> dict:
        """Every setting that changes the atoms (written into the model card)."""
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self._settings.items()}

    def forward(self, ca: torch.Tensor, restype: torch.Tensor, segment: torch.Tensor, disulfides: torch.Tensor,
                seeds: torch.Tensor, steps: int = 10, samples: int = 1, deterministic: bool = True,
                keep_ca: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        bsz, n = ca.shape[0], ca.shape[1]
        m = bsz * samples
        given = ca.unsqueeze(1).expand(bsz, samples, n, 3).reshape(m, n, 3)
        x, shift, node, edge, rel, idx, valid, rt, mask, angles, expected_error, wells, well_chi = \
            self.trace_and_guess(given, restype, segment, keep_ca, disulfides)
        guess_wells: Optional[torch.Tensor] = wells
        if not deterministic:
            angles = self.diffusion_angles(node, edge, rel, idx, valid, rt, mask, seeds, steps, samples, False)
            guess_wells = None
        elif self.guess_ddim_steps > 0:
            angles = self.diffusion_angles(node, edge, rel, idx, valid, rt, mask, seeds, self.guess_ddim_steps,
                                           samples, True)
            guess_wells = None
        atoms, atom_mask, angles = self.finish(x, restype, segment, disulfides, angles, wells=guess_wells,
                                               well_chi=well_chi, keep_ca=keep_ca)
        shift = self.ca_shift(atoms, given, shift)
        return (atoms.view(bsz, samples, n, atoms.shape[-2], 3), atom_mask, shift.view(bsz, samples),
                expected_error.view(bsz, samples, n))

    def trace_and_guess(self, given: torch.Tensor, restype: torch.Tensor, segment: torch.Tensor, keep_ca: bool,
                        disulfides: torch.Tensor):
        """The regularized trace (unless ``keep_ca``), its largest Cα move, its graph, and the
        best-guess angles with each residue's expected side-chain error (the confidence)."""
        m, n = given.shape[0], given.shape[1]
        x = given
        if not keep_ca:
            x = geo.regularize_trace(given, segment, self.cis_threshold, self.min_ca_i2, self.regularize_iterations,
                                     disulfides, max_ca_i2=self.max_ca_i2)
        shift = torch.sqrt(((x - given) ** 2).sum(-1)).amax(-1) if n > 0 else torch.zeros(m, device=given.device)
        mask = torch.ones(m, n, device=given.device, dtype=given.dtype)
        quality = trace_quality(given, segment, mask)
        node, edge, rel, idx, valid, rot = self.graph(x, segment, mask)
        rt = restype.unsqueeze(0).expand(m, n)
        if node.device.type == "cpu" and not geo.exporting():
            # one network call per frame: a matrix product's rounding depends on how many rows it
            # has, and the discrete choices downstream would carry that into the atoms, so a
            # frame's atoms would depend on its batch (on a GPU the batch is kept whole: launching
            # one network per frame costs up to 15x the throughput)
            outs: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
            for b in range(m):
                outs.append(self.best_guess(node[b:b + 1], edge[b:b + 1], rel[b:b + 1], idx[b:b + 1],
                                            valid[b:b + 1], rt[b:b + 1], mask[b:b + 1], self.latent_mean,
                                            self.latent_std, quality[b:b + 1]))
            angles = torch.cat([o[0] for o in outs], 0)
            expected_error = torch.cat([o[1] for o in outs], 0)
            wells = torch.cat([o[2] for o in outs], 0)
            well_chi = torch.cat([o[3] for o in outs], 0)
        else:
            angles, expected_error, wells, well_chi = self.best_guess(node, edge, rel, idx, valid, rt, mask,
                                                                      self.latent_mean, self.latent_std, quality)
        if self.snap_by_head:
            angles = self.snap_chi(angles, restype, wells)
        return x, shift, node, edge, rel, idx, valid, rt, mask, angles, expected_error, wells, well_chi

    def finish(self, x: torch.Tensor, restype: torch.Tensor, segment: torch.Tensor, disulfides: torch.Tensor,
               angles: torch.Tensor, turn_limit: Optional[torch.Tensor] = None,
               hold: Optional[torch.Tensor] = None, fresh: Optional[torch.Tensor] = None,
               wells: Optional[torch.Tensor] = None, well_chi: Optional[torch.Tensor] = None,
               keep_ca: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Angles -> atoms: placement, closed rings and disulfides, clash resolution (side chains
        turned by at most ``turn_limit`` [N] radians, unlimited when None; proline puckers kept
        with weight ``hold`` [N] Å, ``proline_hold`` when None), hydrogens.  ``fresh`` (a
        stream's own best guess for the frame) is one more candidate of the clash resolution for
        the side chains held by ``turn_limit``, at a cost of ``stream_switch_penalty``: a kept
        rotamer that clashes in the new frame gives way.  ``wells`` (the best guess's well logits
        [M, N, 2, 3]) turn on the chi1 well choice (``well_choice``) for the side chains
        ``turn_limit`` leaves free, with ``well_chi`` (chi2..chi4 in each chi1 well [M, N, 3, 3, 2])
        as ``well_choice_chi`` says.  ``keep_ca``: the backbone relaxation leaves Cα where they are.
        Returns (atoms [M, N, S, 3], atom_mask [N, S], the final angles)."""
        n = x.shape[1]
        limit = turn_limit if turn_limit is not None else torch.full([n], 4.0, device=x.device, dtype=x.dtype)
        # a rotamer a stream keeps is not snapped again: it was placed once already, and a snap
        # would turn it by up to 60 degrees whatever its turn limit
        angles = torch.where((limit > 3.9).view(1, n, 1, 1), self.snap_chi(angles, restype), angles)
        given = angles
        if self.tau_rounds > 0 and n > 2:
            angles = self.open_tau(x, segment, angles)
        atoms, atom_mask = self.tables.build_atoms(x, restype, segment, angles)
        if wells is not None and self.well_choice.shape[1] > 0 and n > 1:
            angles, atoms = self.choose_wells(atoms, restype, angles, wells, limit > 3.9, well_chi)
        if hold is None:
            hold = torch.full([n], self.pro_hold, device=x.device, dtype=x.dtype)
        angles, turned, plane_turned = self.close_prolines(atoms, restype, segment, angles, hold,
                                                            self.pro_plane_offsets, True)
        if turned:
            atoms, atom_mask = self.tables.build_atoms(x, restype, segment, angles)
            # a proline followed by a proline whose plane turned has its CB moved with its C: its
            # ring is closed again on the new backbone, every other ring held where it is
            is_pro = (restype == self.pro).view(1, n)
            moved = is_pro & torch.cat([plane_turned[:, 1:], torch.zeros_like(plane_turned[:, :1])], 1)
            hold2 = torch.where(moved, hold.view(1, n).expand_as(moved), torch.full_like(moved, 1e3, dtype=x.dtype))
            angles = self.close_prolines(atoms, restype, segment, angles, hold2, self.pro_plane_offsets[:1], False)[0]
        angles = self.close_disulfides(atoms, disulfides, angles)
        fixed = self.fixed_residues(restype, disulfides, n)
        if self.repack_sweeps > 0:
            alt = self.snap_chi(fresh, restype) if fresh is not None else None
            angles = self.resolve_clashes(atoms, restype, angles, fixed, limit, alt)
        if self.relax_steps > 0 and n > 1:
            # a kept rotamer that gave way to the frame's own guess is relaxed from there, not held
            # within its limit of the rotamer it left
            left = ((angles[..., 4, :] * given[..., 4, :]).sum(-1) < torch.cos(limit + 0.01).view(1, n)) & \
                (limit < 3.9).view(1, n)                                          # [M, N]
            given = torch.where(left.unsqueeze(-1).unsqueeze(-1), angles, given)
            free_now = left.any(0)
            angles = self.relax_side_chains(atoms, restype, angles, fixed,
                                            torch.where(free_now, torch.full_like(limit, 4.0), limit), given)
        atoms = self.tables.place_sidechains(atoms, restype, angles, -1, 0, -1) * atom_mask.unsqueeze(0).unsqueeze(-1)
        if self.backbone_relax.steps > 0:
            atoms = self.backbone_relax(atoms, restype, segment, atom_mask, disulfides, keep_ca)
        if self.hydrogen_rounds > 0 and n > 1:
            atoms = self.turn_hydrogens(atoms, restype, atom_mask) * atom_mask.unsqueeze(0).unsqueeze(-1)
        if self.polish.steps > 0:
            atoms = self.polish(atoms, restype, segment, atom_mask, disulfides)
        return atoms, atom_mask, angles

    @torch.jit.export
    def stream(self, ca: torch.Tensor, restype: torch.Tensor, segment: torch.Tensor, disulfides: torch.Tensor,
               anchor_idx: torch.Tensor, anchor_dist: torch.Tensor, prior_chi: torch.Tensor, has_prior: bool,
               keep_ca: bool = False
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                          torch.Tensor]:
        """The best guess for consecutive frames ``ca`` [B, N, 3] of one trajectory, coherent in time.

        A residue keeps its rotamer (``prior_chi`` [N, 4, 2], the previous frame's side-chain
        torsions) while its neighbourhood stays close to the one the rotamer was chosen in:
        ``anchor_idx`` [N, K] are its graph neighbours then and ``anchor_dist`` [N, K] its Cα
        distances to them.  The clash resolution may turn a kept rotamer by at most
        ``stream_max_turn``.  Where the mean change of those distances reaches ``stream_gate`` Å
        the residue takes the frame's own best guess and a new anchor, free to change rotamer.
        Measuring from the anchor, not from the previous frame, lets slow drift through a
        real conformational change release a rotamer instead of freezing the first frame's
        choice.  Without a prior (``has_prior`` False; the state arguments are then ignored) the
        first frame is the per-frame best guess.  Returns ``(atoms [B, 1, N, S, 3], atom_mask,
        ca_shift [B, 1], expected_error [B, 1, N], anchor_idx, anchor_dist, last_chi [N, 4, 2])``;
        the last three are the state of the next call.
        """
        bsz, n = ca.shape[0], ca.shape[1]
        x, shift, node, edge, rel, idx, valid, rt, mask, angles, expected_error, wells, well_chi = \
            self.trace_and_guess(ca, restype, segment, keep_ca, disulfides)
        a_idx, a_dist, prev_chi, have = anchor_idx, anchor_dist, prior_chi, has_prior
        outs: List[torch.Tensor] = []
        atom_mask = torch.zeros(n, self.tables.num_slots, device=ca.device, dtype=ca.dtype)
        unlimited = torch.full([n], 4.0, device=ca.device, dtype=ca.dtype)
        for b in range(bsz):
            ang = angles[b:b + 1]
            nb = idx[b, :, 1:9]                                                # [N, K] this frame's neighbours
            d_frame = torch.sqrt(((x[b].unsqueeze(1) - x[b][nb]) ** 2).sum(-1) + 1e-12)
            limit = unlimited
            hold = torch.full([n], self.pro_hold, device=ca.device, dtype=ca.dtype)
            settled = torch.zeros(n, dtype=torch.bool, device=ca.device)
            if have:
                d_now = torch.sqrt(((x[b].unsqueeze(1) - x[b][a_idx]) ** 2).sum(-1) + 1e-12)
                settled = (d_now - a_dist).abs().mean(-1) < self.stream_gate          # [N]
                ang = torch.cat([ang[:, :, :4], torch.where(settled.view(1, n, 1, 1), prev_chi.unsqueeze(0),
                                                            ang[:, :, 4:])], dim=2)
                limit = torch.where(settled, torch.full_like(unlimited, self.stream_max_turn), unlimited)
                hold = torch.where(settled, torch.full_like(hold, self.pro_stream_hold), hold)
                a_idx = torch.where(settled.unsqueeze(-1), a_idx, nb)
                a_dist = torch.where(settled.unsqueeze(-1), a_dist, d_frame)
            else:
                a_idx, a_dist = nb, d_frame
            fresh = angles[b:b + 1] if have else None
            atoms_b, atom_mask, final = self.finish(x[b:b + 1], restype, segment, disulfides, ang, limit, hold, fresh,
                                                    wells[b:b + 1], well_chi[b:b + 1], keep_ca)
            outs.append(atoms_b)
            # the state keeps each residue's rotamer as it was when anchored, not this frame's:
            # the clash resolution and the relaxation may turn a kept side chain a little in every
            # frame, and carried from frame to frame those turns add up to drift (AdK MD: 0.13 Å
            # worse than per-frame after 50 frames); one that gave way (its chi1 now more than
            # stream_max_turn from the anchor's) is anchored anew
            gave_way = (final[0, :, 4] * prev_chi[:, 0]).sum(-1) < math.cos(self.stream_max_turn + 0.1)
            keep_anchor = settled & ~gave_way
            prev_chi = torch.where(keep_anchor.view(n, 1, 1), prev_chi, final[0, :, 4:])
            have = True
        atoms = torch.cat(outs, 0)
        shift = self.ca_shift(atoms, ca, shift)
        return (atoms.unsqueeze(1), atom_mask, shift.view(bsz, 1), expected_error.view(bsz, 1, n), a_idx, a_dist,
                prev_chi)

    def open_tau(self, x: torch.Tensor, segment: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Peptide planes (``angles[..., 0, :]``, the turn of plane i -> i+1 about its Cα–Cα axis)
        turned where they squeeze N–CA–C below ``tau_min`` (or open it beyond ``tau_max``) or bring
        the carbonyl O of two consecutive planes within ``carbonyl_min``: each plane in turn (even
        planes, then odd ones, which share no residue) takes the smallest of ``tau_offsets`` that
        brings both residues it touches within the limits and parts its O from its neighbours',
        those planes held.  Cα, bonds and planes stay ideal."""
        n = x.shape[1]
        xa, u, w, dist = geo.peptide_axes(x, segment)
        xy = self.tables.peptide_template_xy(dist)                              # [M, N, 5, 2]
        has_prev, has_next = geo.segment_neighbours(segment)
        # a plane exists between residues p and p + 1 when both are in one segment; tau of a
        # residue counts when both its planes exist (terminal N or C come from phi/psi)
        inner = has_prev & has_next
        inner_next = torch.cat([inner[1:], torch.zeros(1, dtype=torch.bool, device=x.device)])
        theta = torch.atan2(angles[..., 0, 1], angles[..., 0, 0])              # [M, N]
        offs = self.tau_offsets.view(1, 1, -1)                                  # [1, 1, D]
        parity = torch.arange(n, device=x.device) % 2
        nxt = torch.cat([x[:, 1:], x[:, -1:]], 1)
        for r in range(2 * self.tau_rounds):
            cur = theta.unsqueeze(-1)
            c_now = _plane_atom(x, xa, u, w, xy, cur, 0)[:, :, 0]              # C(p)     [M, N, 3]
            n_now = _plane_atom(x, xa, u, w, xy, cur, 2)[:, :, 0]              # N(p + 1)
            o_now = _plane_atom(x, xa, u, w, xy, cur, 1)[:, :, 0]              # O(p)
            o_prev = torch.cat([o_now[:, :1], o_now[:, :-1]], 1).unsqueeze(2)
            o_next = torch.cat([o_now[:, 1:], o_now[:, -1:]], 1).unsqueeze(2)
            n_prev = torch.cat([n_now[:, :1], n_now[:, :-1]], 1)                # N(p) from plane p - 1
            c_next = torch.cat([c_now[:, 1:], c_now[:, -1:]], 1)                # C(p + 1) from plane p + 1
            cand = theta.unsqueeze(-1) + offs                                   # [M, N, D]
            c_c = _plane_atom(x, xa, u, w, xy, cand, 0)                        # [M, N, D, 3]
            n_c = _plane_atom(x, xa, u, w, xy, cand, 2)
            cos_p = _cos_angle(x.unsqueeze(2), n_prev.unsqueeze(2), c_c)
            cos_q = _cos_angle(nxt.unsqueeze(2), n_c, c_next.unsqueeze(2))
            over_p = (torch.relu(cos_p - self.cos_tau_min) + torch.relu(self.cos_tau_max - cos_p)) * \
                inner.view(1, n, 1).to(x.dtype)
            over_q = (torch.relu(cos_q - self.cos_tau_min) + torch.relu(self.cos_tau_max - cos_q)) * \
                inner_next.view(1, n, 1).to(x.dtype)
            o_c = _plane_atom(x, xa, u, w, xy, cand, 1)
            near_p = torch.relu(self.carbonyl_min - torch.sqrt(((o_c - o_prev) ** 2).sum(-1) + 1e-12)) * \
                has_prev.view(1, n, 1).to(x.dtype)
            near_q = torch.relu(self.carbonyl_min - torch.sqrt(((o_c - o_next) ** 2).sum(-1) + 1e-12)) * \
                inner_next.view(1, n, 1).to(x.dtype)
            score = over_p + over_q + near_p + near_q
            # ties (every offset that meets the limits) go to the first: tau_offsets run smallest first
            best = _stable_argmin(score, 2)                                     # [M, N]
            turn = (parity == r % 2) & has_next                                # this round's planes
            squeezed = score[..., 0] > 0.0
            theta = torch.where(turn.view(1, n) & squeezed, torch.gather(cand, 2, best.unsqueeze(-1)).squeeze(-1),
                                theta)
        plane = torch.stack([torch.cos(theta), torch.sin(theta)], -1).unsqueeze(2)
        return torch.cat([plane, angles[:, :, 1:]], 2)

    def ca_shift(self, atoms: torch.Tensor, given: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """The largest Cα move [M] of each frame's ``atoms`` [M, N, S, 3] from the ``given`` trace
        (the trace regularization's ``shift`` and the backbone relaxation's together)."""
        if atoms.shape[1] == 0:
            return shift
        d = atoms[:, :, self.ca_slot] - given
        return torch.sqrt((d * d).sum(-1)).amax(-1)

    # ------------------------------------------------------------------ latents
    def diffusion_angles(self, node, edge, rel, idx, valid, rt, mask, seeds: torch.Tensor, steps: int,
                         samples: int, mean: bool) -> torch.Tensor:
        """DDIM over the latents from noise seeded per frame (``seeds[b]``, stream = sample index),
        snapped to the nearest code and decoded; with ``mean``, from zero noise, the continuous
        latent decoded (a deterministic best guess).  On the CPU one network pass per frame (its
        samples together), so a frame's result does not depend on the rest of its batch."""
        m, n = node.shape[0], node.shape[1]
        if mean:
            z = torch.zeros(m, n, self.latent_dim, device=node.device, dtype=node.dtype)
        else:
            noise: List[torch.Tensor] = []
            for b in range(m // samples):
                for s in range(samples):
                    noise.append(hash_normal([n, self.latent_dim], int(seeds[b]), s, node.device))
            z = torch.stack(noise, 0).to(node.dtype)
        if node.device.type != "cpu":  # see trace_and_guess: a GPU keeps the batch whole
            return self.ddim(node, edge, rel, idx, valid, rt, mask, z, steps, mean)
        out: List[torch.Tensor] = []
        for b in range(m // samples):
            r0, r1 = b * samples, (b + 1) * samples
            out.append(self.ddim(node[r0:r1], edge[r0:r1], rel[r0:r1], idx[r0:r1], valid[r0:r1], rt[r0:r1],
                                 mask[r0:r1], z[r0:r1], steps, mean))
        return torch.cat(out, 0)

    def ddim(self, node, edge, rel, idx, valid, rt, mask, z: torch.Tensor, steps: int, mean: bool) -> torch.Tensor:
        """``steps`` DDIM steps of the denoiser from ``z``, then the decoder."""
        m = node.shape[0]
        steps = max(int(steps), 1)
        for k in range(steps):
            t_now = 1.0 - k / steps
            t_next = 1.0 - (k + 1) / steps
            tt = torch.full([m], t_now, device=node.device, dtype=node.dtype)
            ab_now = alpha_bar(tt).view(-1, 1, 1)
            ab_next = alpha_bar(torch.full([m], t_next, device=node.device, dtype=node.dtype)).view(-1, 1, 1)
            x0 = self.denoiser(node, edge, rel, idx, valid, rt, mask, z, tt)
            if k == steps - 1:
                z = x0
            else:
                eps = (z - torch.sqrt(ab_now) * x0) / torch.sqrt(1.0 - ab_now)
                z = torch.sqrt(ab_next) * x0 + torch.sqrt(1.0 - ab_next) * eps
        latent = z * self.latent_std + self.latent_mean
        if not mean:
            latent = self.quantizer.lookup(self.quantizer.nearest(latent))
        return self.decoder(node, edge, rel, idx, valid, rt, mask, latent)

    # ------------------------------------------------------------------ rings and bonds
    def snap_chi(self, angles: torch.Tensor, restype: torch.Tensor, wells: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
        """Chi1 of every side chain but proline's (and chi2 of the sp3-sp3 ones: ILE, LEU, LYS,
        ARG, MET, GLU, GLN) moved to the nearest staggered well (60, 180 or -60 degrees) where
        it is further than ``snap_chi1_beyond`` from it.  A regression of (cos, sin) puts a fifth
        of the decoder's chi1 between two wells, where real side chains are rare; the nearest
        well is right more often (validation: chi1 within 40 degrees 0.67 -> 0.70).  With
        ``wells`` (the best guess's well logits [B, N, 2, 3]) the most likely well is taken
        instead of the nearest."""
        if self.snap_cos > 1.0:
            return angles
        out = angles.clone()
        centres = self.chi1_wells                                              # [3, 2] cos, sin
        logits = wells if wells is not None else torch.zeros(1, 1, 2, 3, device=angles.device)
        for k in range(2):
            c, s = angles[..., 4 + k, 0], angles[..., 4 + k, 1]
            score = c.unsqueeze(-1) * centres[:, 0] + s.unsqueeze(-1) * centres[:, 1]  # cos of the distance
            choice = _stable_argmin(-score, -1) if wells is None else _stable_argmin(-logits[..., k, :], -1)
            snapped = centres[choice]                                          # [B, N, 2]
            far = (angles[..., 4 + k, :] * snapped).sum(-1) < self.snap_cos    # cos of the distance to it
            use = (self.snap_types[restype, k] > 0).view(1, -1, 1) & far.unsqueeze(-1)
            out[..., 4 + k, :] = torch.where(use, snapped, angles[..., 4 + k, :])
        return out

    def close_prolines(self, atoms: torch.Tensor, restype: torch.Tensor, segment: torch.Tensor,
                       angles: torch.Tensor, hold: torch.Tensor, offsets: torch.Tensor, after_pro: bool
                       ) -> Tuple[torch.Tensor, bool, torch.Tensor]:
        """Chi1/chi2 of every proline such that CD–N is a bond: chi1 on a grid, chi2 solved for
        the CD nearest N, and the peptide plane before the proline turned by one of
        ``proline_plane_offsets`` where the plane the trace gives cannot close the ring (a Cα
        trace from CG dynamics often has a phi no proline can take).  The closest closure wins;
        a turned plane costs ``proline_plane_cost`` Å per radian and a chi1 away from the
        decoder's ``hold`` [N] or [B, N] Å (0.01; a coherent stream raises it for the rotamers it
        keeps, so that the pucker does not flip between two closures of nearly equal length).
        ``offsets`` are the plane turns tried (radians, 0 first); with ``after_pro`` the plane
        after a proline may turn too (its own ring must then be closed again).  Returns the
        angles, whether a plane was turned (the backbone must then be built again) and [B, N]
        which prolines' preceding planes turned."""
        is_pro = restype == self.pro
        none = torch.zeros(atoms.shape[0], atoms.shape[1], dtype=torch.bool, device=atoms.device)
        if not geo.exporting() and not bool(is_pro.any()):
            return angles, False, none
        t = self.tables
        pidx = torch.nonzero(is_pro).squeeze(1)                            # [P]
        has_prev = geo.segment_neighbours(segment)[0]
        prev = (pidx - 1).clamp(min=0)
        # the plane before the proline turns only inside a chain and not after another proline
        # (whose own ring that plane carries)
        can_turn = has_prev[pidx]                                           # [P]
        if not after_pro:
            can_turn = can_turn & (restype[prev] != self.pro)
        bsz, npro = atoms.shape[0], pidx.shape[0]
        d = offsets                                                        # [D] radians, 0 first
        nd = d.shape[0]
        n_at, ca, c_at = atoms[:, pidx, 0], atoms[:, pidx, 1], atoms[:, pidx, 2]   # [B, P, 3]
        ca_prev, c_prev = atoms[:, prev, 1], atoms[:, prev, 2]
        axis = geo.normalize(ca - ca_prev).unsqueeze(2)                    # [B, P, 1, 3]
        cs_d, sn_d = torch.cos(d).view(1, 1, nd, 1), torch.sin(d).view(1, 1, nd, 1)

        # the plane turned about the Cα(i-1)–Cα(i) axis: its own degree of freedom
        n_d = _turn_about(n_at, ca_prev, axis, cs_d, sn_d)                 # [B, P, D, 3]
        c_prev_d = _turn_about(c_prev, ca_prev, axis, cs_d, sn_d)
        ca_d = ca.unsqueeze(2).expand_as(n_d)
        loc_cb = t.sc_local[self.pro, self.pro_cb]
        cb = ca_d + torch.einsum("bpdij,j->bpdi", geo.nerf_frame(c_at.unsqueeze(2).expand_as(n_d), n_d, ca_d), loc_cb)
        loc_cg = t.sc_local[self.pro, self.pro_cg]
        loc_cd = t.sc_local[self.pro, self.pro_cd]
        f1 = geo.nerf_frame(n_d, ca_d, cb)                                 # [B, P, D, 3, 3]
        g = self.pro_chi1_grid
        ng = g.shape[0]
        cs, sn = torch.cos(g).view(1, 1, 1, ng, 1), torch.sin(g).view(1, 1, 1, ng, 1)
        e1, mm, nn_ = f1[..., 0].unsqueeze(3), f1[..., 1].unsqueeze(3), f1[..., 2].unsqueeze(3)
        cg = cb.unsqueeze(3) + e1 * loc_cg[0] + (cs * mm + sn * nn_) * loc_cg[1] + (cs * nn_ - sn * mm) * loc_cg[2]
        f2 = geo.nerf_frame(ca_d.unsqueeze(3).expand_as(cg), cb.unsqueeze(3).expand_as(cg), cg)  # [B, P, D, G, 3, 3]
        p = n_d.unsqueeze(3) - cg
        psi = torch.atan2((p * f2[..., 2]).sum(-1), (p * f2[..., 1]).sum(-1))   # direction of N about the axis
        chi2 = psi - torch.atan2(loc_cd[2], loc_cd[1])
        r = torch.sqrt(loc_cd[1] ** 2 + loc_cd[2] ** 2)
        cd = cg + f2[..., 0] * loc_cd[0] + r * (torch.cos(psi).unsqueeze(-1) * f2[..., 1] +
                                                torch.sin(psi).unsqueeze(-1) * f2[..., 2])
        gap = (torch.sqrt(((cd - n_d.unsqueeze(3)) ** 2).sum(-1)) - self.bond_n_cd).abs()   # [B, P, D, G]
        ring_gap = gap
        # CD is 1-3 to the previous residue's C (2.5 Å in real prolines): among closures keep it
        # off that C
        d_prev = torch.sqrt(((cd - c_prev_d.unsqueeze(3)) ** 2).sum(-1) + 1e-12)
        gap = gap + torch.relu(self.min_c_cd - d_prev) ** 2 * has_prev[pidx].to(gap.dtype).view(1, npro, 1, 1)
        own = torch.atan2(angles[:, pidx, 4, 1], angles[:, pidx, 4, 0]).view(bsz, npro, 1, 1)
        plane_cost = torch.where(can_turn.view(npro, 1) | (d.view(1, nd) == 0.0),
                                 self.pro_plane_cost * d.abs().view(1, nd),
                                 torch.full([npro, nd], 1e9, device=atoms.device, dtype=atoms.dtype))
        hold_b = hold.expand(bsz, atoms.shape[1])
        score = gap + hold_b[:, pidx].view(bsz, npro, 1, 1) * (1.0 - torch.cos(g.view(1, 1, 1, ng) - own)) + \
            plane_cost.view(1, npro, nd, 1)
        if self.pro_contact_weight > 0.0:
            # CG and CD against the backbone (N, CA, C, O) of the ten residues nearest by Cα,
            # the proline and its chain neighbours left out
            # (differences, not cdist: defined for any number of prolines under torch.export)
            dca = ca.unsqueeze(2) - atoms[:, :, 1].unsqueeze(1)                    # [B, P, N, 3]
            kn = geo.at_most(10, atoms.shape[1])
            nb = torch.topk((dca * dca).sum(-1), kn, dim=-1, largest=False)[1]    # [B, P, K]
            near_seq = (nb - pidx.view(1, npro, 1)).abs() <= 1
            bb_nb = gather_residues(atoms[:, :, :4], nb).reshape(bsz, npro, 1, 1, 1, kn * 4, 3)
            dv = torch.stack([cg, cd], 4).unsqueeze(5) - bb_nb                   # [B, P, D, G, 2, 40, 3]
            dc = torch.sqrt((dv * dv).sum(-1) + 1e-12)
            keep = (~near_seq).to(gap.dtype).repeat_interleave(4, 2).view(bsz, npro, 1, 1, 1, kn * 4)
            contact = (torch.relu(3.0 - dc) ** 2 * keep).sum((4, 5))                  # [B, P, D, G]
            first = _stable_argmin(score.reshape(bsz, npro, nd * ng), -1)
            best_score = torch.gather(score.reshape(bsz, npro, nd * ng), 2, first.unsqueeze(-1)).view(bsz, npro, 1, 1)
            best_gap = torch.gather(ring_gap.reshape(bsz, npro, nd * ng), 2, first.unsqueeze(-1)).view(bsz, npro, 1, 1)
            as_good = (score <= best_score + 0.02) & (ring_gap <= best_gap + 0.005)
            score = torch.where(as_good, score + self.pro_contact_weight * contact, score + 1e3)
        best = _stable_argmin(score.reshape(bsz, npro, nd * ng), -1)       # [B, P]
        bd = torch.div(best, ng, rounding_mode="floor")
        chi1 = g[best % ng]
        chi2b = torch.gather(chi2.reshape(bsz, npro, nd * ng), 2, best.unsqueeze(-1)).squeeze(-1)
        new = angles.clone()
        new[:, pidx, 4, 0] = torch.cos(chi1)
        new[:, pidx, 4, 1] = torch.sin(chi1)
        new[:, pidx, 5, 0] = torch.cos(chi2b)
        new[:, pidx, 5, 1] = torch.sin(chi2b)
        turned = geo.exporting() or bool((bd > 0).any())
        plane_turned = none.index_copy(1, pidx, bd > 0)
        if turned:
            # the plane angle of peptide i-1 -> i is the previous residue's angle 0
            delta = d[bd]                                                  # [B, P]
            c0, s0 = angles[:, prev, 0, 0], angles[:, prev, 0, 1]
            cdl, sdl = torch.cos(delta), torch.sin(delta)
            new[:, prev, 0, 0] = c0 * cdl - s0 * sdl
            new[:, prev, 0, 1] = s0 * cdl + c0 * sdl
        return new, turned, plane_turned

    def close_disulfides(self, atoms: torch.Tensor, pairs: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Chi1 of both cysteines of each declared pair ([P, 2] residue indices) on a grid so that
        SG–SG is a bond (2.04 Å) with CB–SG–SG near 104 degrees."""
        if not geo.exporting() and pairs.shape[0] == 0:
            return angles
        t = self.tables
        loc = t.sc_local[self.cys, self.sg_slot]
        g = self.ss_grid
        cs, sn = torch.cos(g).view(1, 1, -1, 1), torch.sin(g).view(1, 1, -1, 1)
        sgs: List[torch.Tensor] = []
        cbs: List[torch.Tensor] = []
        for side in range(2):
            i = pairs[:, side]
            n_at, ca, cb = atoms[:, i, 0], atoms[:, i, 1], atoms[:, i, 4]     # [B, P, 3]
            f = geo.nerf_frame(n_at, ca, cb)
            e1, mm, nn_ = f[..., 0].unsqueeze(2), f[..., 1].unsqueeze(2), f[..., 2].unsqueeze(2)
            sgs.append(cb.unsqueeze(2) + e1 * loc[0] + (cs * mm + sn * nn_) * loc[1] + (cs * nn_ - sn * mm) * loc[2])
            cbs.append(cb)
        sg_i, sg_j = sgs[0].unsqueeze(3), sgs[1].unsqueeze(2)                # [B, P, G, 1, 3], [B, P, 1, G, 3]
        v = sg_j - sg_i
        d = torch.sqrt((v * v).sum(-1) + 1e-12)
        bi = cbs[0].unsqueeze(2).unsqueeze(3) - sg_i
        bj = cbs[1].unsqueeze(2).unsqueeze(3) - sg_j
        cos_i = (bi * v).sum(-1) / (torch.sqrt((bi * bi).sum(-1)) * d)
        cos_j = -(bj * v).sum(-1) / (torch.sqrt((bj * bj).sum(-1)) * d)
        ideal = math.cos(self.angle_cb_sg_sg)
        # the bond first: angles only choose among closures of (nearly) equal length
        score = 4.0 * (d - self.bond_sg_sg) ** 2 + 0.1 * ((cos_i - ideal) ** 2 + (cos_j - ideal) ** 2)
        gsz = g.shape[0]
        flat = _stable_argmin(score.reshape(score.shape[0], score.shape[1], gsz * gsz), -1)   # [B, P]
        chi_i = g[torch.div(flat, gsz, rounding_mode="floor")]
        chi_j = g[flat % gsz]
        # whole rows copied in (index_copy): an indexed assignment of [B, P] values would make
        # torch.export guard on the number of pairs
        new = angles
        for side, chi in ((0, chi_i), (1, chi_j)):
            rows = new[:, pairs[:, side]].clone()                                  # [B, P, A, 2]
            rows[:, :, 4, 0] = torch.cos(chi)
            rows[:, :, 4, 1] = torch.sin(chi)
            new = new.index_copy(1, pairs[:, side], rows)
        return new

    def fixed_residues(self, restype: torch.Tensor, pairs: torch.Tensor, n: int) -> torch.Tensor:
        """[N] True for side chains the clash resolution must not turn (closed rings and bonds)."""
        fixed = restype == self.pro
        if geo.exporting() or pairs.shape[0] > 0:
            fixed = fixed.clone()
            fixed[pairs.reshape(-1)] = True
        return fixed

    def side_chain_centres(self, heavy: torch.Tensor, restype: torch.Tensor) -> torch.Tensor:
        """[M, N, 3] centre of each residue's CA and side-chain heavy atoms (GLY: its CA), by which
        the steps after placement find a side chain's neighbours (``heavy`` [M, N, H, 3])."""
        w = self.centre_weight[restype]
        n = heavy.shape[1]
        return (heavy * w.view(1, n, -1, 1)).sum(2) / w.sum(-1).view(1, n, 1)

    # ------------------------------------------------------------------ chi1 wells
    def well_features(self, atoms: torch.Tensor, restype: torch.Tensor, angles: torch.Tensor,
                      wells: torch.Tensor, sel: torch.Tensor, well_chi: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the chi1 well choice scores [M, T, 3, F] for the residues ``sel`` [T], their
        side chains (atoms beyond CB) in each well [3, M, T, 9, 3] and their angles there
        [3, M, T, A, 2]: for each staggered chi1 well (60, 180, -60 degrees; the further chis as
        in ``angles``, or from ``well_chi`` as ``well_choice_chi`` says), the soft repulsion of its
        side chain at cutoffs 3.0 and 3.6 Å with its neighbours' side chains as ``atoms``
        [M, N, S, 3] has them (placed from ``angles``), their backbones (N, CA, C, O, CB) and its
        own backbone, and the well head's log-probability (F = 7); with ``WELL_FEATURES``
        weights, the contact counts of :meth:`contact_features` too."""
        m = atoms.shape[0]
        t = sel.shape[0]
        h = self.num_heavy
        heavy = atoms[:, :, :h]
        rt = restype[sel]
        centre = self.side_chain_centres(heavy, restype)
        own = heavy[:, sel].contiguous()                                      # [M, T, H, 3]
        # the three wells in one placement: wells x frames as the batch
        a = angles[:, sel].unsqueeze(0).repeat(3, 1, 1, 1, 1)                # [3, M, T, A, 2]
        a[:, :, :, 4, :] = self.chi1_wells.view(3, 1, 1, 2).expand(3, m, t, 2)
        if well_chi is not None and self.well_choice_chi > 0:
            theirs = well_chi[:, sel].permute(2, 0, 1, 3, 4)                  # [3, M, T, 3, 2]
            use = torch.ones(3, m, t, 1, 1, dtype=torch.bool, device=atoms.device)
            if self.well_choice_chi == 1:  # the network's own chi1 well keeps its own further chis
                own_well = _stable_argmin(-(angles[:, sel, 4].unsqueeze(2) * self.chi1_wells).sum(-1), -1)
                use = (torch.arange(3, device=atoms.device).view(3, 1, 1) != own_well.unsqueeze(0)).view(3, m, t, 1, 1)
            a[:, :, :, 5:8, :] = torch.where(use, theirs, a[:, :, :, 5:8, :])
        cand = self.tables.place_sidechains(own.unsqueeze(0).expand(3, m, t, h, 3).reshape(3 * m, t, h, 3), rt,
                                            a.reshape(3 * m, t, a.shape[3], 2), h, 0, -1)
        cand = cand.view(3, m, t, h, 3)[:, :, :, 5:]                          # [3, M, T, 9, 3]
        head = torch.log_softmax(wells[:, sel, 0, :], -1).permute(2, 0, 1)   # [3, M, T]
        if self.well_choice.shape[1] > 7:
            out = self.contact_features(cand, heavy, centre, restype, sel, head)
        else:
            out = self.repulsion_features(cand, heavy, centre, restype, sel, head)
        return out.permute(1, 2, 0, 3), cand, a                               # [M, T, 3, F], [3, M, T, 9, 3]

    def repulsion_features(self, cand: torch.Tensor, heavy: torch.Tensor, centre: torch.Tensor,
                           restype: torch.Tensor, sel: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """[3, M, T, 7] the seven features of :meth:`well_features` (neighbours' side chains:
        the ``well_choice_neighbours`` nearest by side-chain centre; backbones: that many + 1
        nearest by CA)."""
        m, n, h = heavy.shape[0], heavy.shape[1], self.num_heavy
        t = sel.shape[0]
        kk = geo.at_most(self.well_choice_neighbours, max(n - 1, 1))
        bb = heavy[:, :, :5]
        rt = restype[sel]
        own = heavy[:, sel]
        # neighbours of every residue, then the rows of ``sel`` (a query of data-dependent size
        # would leave torch.export a cdist it cannot trace)
        nb = geo.nearest_points(centre, centre, kk + 1)[:, sel, 1:]               # [M, T, K], self dropped
        bb_idx = geo.nearest_points(centre, heavy[:, :, 1], kk + 1)[:, sel]       # [M, T, K+1]
        bb_keep = (bb_idx != sel.view(1, t, 1)).to(heavy.dtype)
        w_sc = self.sc_heavy[rt][:, 5:].unsqueeze(0).expand(m, t, h - 5)          # [M, T, 9]
        nb_sc = gather_residues(heavy[:, :, 5:], nb).reshape(m, t, kk * (h - 5), 3)
        w_nb = self.sc_heavy[restype[nb]][..., 5:].reshape(m, t, kk * (h - 5))
        nb_bb = gather_residues(bb, bb_idx).reshape(m, t, (kk + 1) * 5, 3)
        w_bb = (self.bb_heavy[restype[bb_idx]][..., :5] * bb_keep.unsqueeze(-1)).reshape(m, t, (kk + 1) * 5)
        w_own = self.own_backbone_pairs[rt].unsqueeze(0).expand(m, t, h - 5, 5)
        # distances by differences, not cdist: exact, and traceable for any number of residues
        d_sc = torch.sqrt(((cand.unsqueeze(4) - nb_sc.view(1, m, t, 1, -1, 3)) ** 2).sum(-1) + 1e-12)
        d_bb = torch.sqrt(((cand.unsqueeze(4) - nb_bb.view(1, m, t, 1, -1, 3)) ** 2).sum(-1) + 1e-12)
        d_own = torch.sqrt(((cand.unsqueeze(4) - own[:, :, :5].view(1, m, t, 1, 5, 3)) ** 2).sum(-1) + 1e-12)
        w_sc_pair = w_sc.view(1, m, t, h - 5, 1)
        feats: List[torch.Tensor] = []
        for cutoff in (3.0, 3.6):
            feats.append((torch.relu(cutoff - d_sc) ** 2 * w_sc_pair * w_nb.view(1, m, t, 1, -1)).sum((3, 4)))
            feats.append((torch.relu(cutoff - d_bb) ** 2 * w_sc_pair * w_bb.view(1, m, t, 1, -1)).sum((3, 4)))
            feats.append((torch.relu(cutoff - d_own) ** 2 * w_own.unsqueeze(0)).sum((3, 4)))
        feats.append(head)
        return torch.stack(feats, -1)

    def contact_features(self, cand: torch.Tensor, heavy: torch.Tensor, centre: torch.Tensor,
                         restype: torch.Tensor, sel: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """[3, M, T, WELL_FEATURES] the seven features of :meth:`well_features` (every neighbour
        one of the ``well_choice_env_neighbours`` nearest by side-chain centre), then the
        contact counts: atom pairs between the side chain in each well (``cand``
        [3, M, T, 9, 3]) and its surroundings (every heavy atom of those neighbours, and its own
        N, CA, C, O) in each distance bin (``ENV_BINS`` bins of ``ENV_BIN_WIDTH`` Å below
        ``ENV_BIN_END`` Å, the first open below), apolar (C, S) or polar (N, O) on
        either side: what a rotamer library's packing, burial and hydrogen-bond terms read.
        Only the side-chain atoms a residue has are measured (the table pads them to 9)."""
        m, n, h = heavy.shape[0], heavy.shape[1], self.num_heavy
        t = sel.shape[0]
        ke = geo.at_most(self.well_choice_env_neighbours, max(n - 1, 1))
        nb = geo.nearest_points(centre, centre, ke + 1)[:, sel, 1:]               # [M, T, Ke]
        rt = restype[sel]
        own_class = self.atom_class[rt][:, 5:h]                               # [T, 9]
        atom = torch.nonzero(own_class > 0)                                   # [A, 2] (residue, slot)
        res, slot = atom[:, 0], atom[:, 1]
        x = cand[:, :, res, slot]                                             # [3, M, A, 3]
        # surroundings: the neighbours' heavy atoms, then the own backbone (N, CA, C, O, CB)
        env = torch.cat([gather_residues(heavy, nb).reshape(m, t, ke * h, 3), heavy[:, sel, :5]], 2)[:, res]
        env_class = torch.cat([self.atom_class[restype[nb]].reshape(m, t, ke * h),
                               self.atom_class[rt][:, :5].unsqueeze(0).expand(m, t, 5)], 2)[:, res]   # [M, A, P]
        p, na = env.shape[2], res.shape[0]
        d = torch.sqrt(((x.unsqueeze(3) - env.unsqueeze(0)) ** 2).sum(-1) + 1e-12)                   # [3, M, A, P]
        col = torch.arange(p, device=d.device)
        is_own = col >= ke * h
        is_bb = (col % h) < 5
        there = (env_class > 0).to(d.dtype)                                   # [M, A, P]
        w_own = torch.cat([torch.zeros(na, ke * h, device=d.device, dtype=d.dtype),
                           self.own_backbone_pairs[rt[res], slot]], 1)         # [A, P]
        # each pair's weight in the three repulsions [M, A, P, 3]: the neighbours' side chains,
        # their backbones, the own backbone; both cutoffs and all wells in one product
        w = torch.stack([there * (~is_bb & ~is_own).to(d.dtype), there * (is_bb & ~is_own).to(d.dtype),
                         w_own.unsqueeze(0).expand(m, na, p)], -1)
        rep = torch.stack([torch.relu(3.0 - d), torch.relu(3.6 - d)], 0) ** 2                         # [2, 3, M, A, P]
        per_atom = torch.matmul(rep.reshape(6, m, na, 1, p), w.unsqueeze(0)).reshape(6, m, na, 3)
        per_res = torch.zeros(6, m, t, 3, device=d.device, dtype=d.dtype).index_add_(2, res, per_atom)
        repulsion = per_res.view(2, 3, m, t, 3).permute(1, 2, 3, 0, 4).reshape(3, m, t, 6)
        # contact counts; a pair's class is 0-3 (apolar/polar on either side), 4 where nothing is
        # counted (no atom in that slot; the own CB, which never moves); bin nbins is "too far"
        nbins = self.env_bins
        bucket = torch.clamp(torch.floor((d - self.env_bin_end) / self.env_bin_width) + nbins, 0.0,
                             float(nbins)).to(torch.long)
        a_class = own_class[res, slot]                                        # [A]
        pair = torch.where((env_class > 0) & (col < ke * h + 4).view(1, 1, p),
                           (a_class.view(1, na, 1) - 1) * 2 + env_class - 1, torch.full_like(env_class, 4))
        index = ((res.view(1, na, 1) * 5 + pair) * (nbins + 1)).unsqueeze(0) + bucket                  # [3, M, A, P]
        counts = torch.zeros(3, m, t * 5 * (nbins + 1), device=d.device, dtype=d.dtype)
        counts.scatter_add_(2, index.reshape(3, m, -1), torch.ones_like(d).reshape(3, m, -1))
        counts = counts.view(3, m, t, 5, nbins + 1)[:, :, :, :4, :nbins].reshape(3, m, t, 4 * nbins)
        return torch.cat([repulsion, head.unsqueeze(-1), counts], -1)

    def choose_wells(self, atoms: torch.Tensor, restype: torch.Tensor, angles: torch.Tensor, wells: torch.Tensor,
                     free: torch.Tensor, well_chi: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Chi1 of the side chains of ``well_choice_types`` that ``free`` [N] leaves free set to
        the well that ``well_choice`` scores best (:meth:`well_features`); returns the angles and
        ``atoms`` with those side chains' heavy atoms moved into their wells (the rotamer choice
        finds neighbours by side-chain centres)."""
        sel = torch.nonzero((self.well_choice_types[restype] > 0) & free).squeeze(1)   # [T]
        if not geo.exporting() and sel.shape[0] == 0:
            return angles, atoms
        feats, cand, cand_angles = self.well_features(atoms, restype, angles, wells, sel, well_chi)
        weights = self.well_choice[restype[sel]]                              # [T, F]
        best = _stable_argmin(-(feats * weights.unsqueeze(1)).sum(-1), -1)   # [M, T]
        m, t = best.shape[0], best.shape[1]
        na = cand_angles.shape[3]
        chosen = torch.gather(cand_angles, 0, best.view(1, m, t, 1, 1).expand(1, m, t, na, 2))[0]   # [M, T, A, 2]
        h = self.num_heavy
        placed = torch.gather(cand, 0, best.view(1, m, t, 1, 1).expand(1, m, t, h - 5, 3))[0]   # [M, T, 9, 3]
        own = atoms[:, sel].clone()
        own[:, :, 5:h] = placed
        return angles.index_copy(1, sel, chosen), atoms.index_copy(1, sel, own)

    # ------------------------------------------------------------------ clash resolution
    def resolve_clashes(self, atoms: torch.Tensor, restype: torch.Tensor, angles: torch.Tensor, fixed: torch.Tensor,
                        turn_limit: torch.Tensor, fresh: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Iterated conditional modes over side-chain rotamers, on the residues that clash.

        Candidates are the decoder's own angles turned by ``repack_offsets`` about chi1/chi2.  Each
        sweep scores every residue's current side chain (heavy atoms beyond CB) against its
        neighbours' side chains, the backbones (N, CA, C, O, CB) near it and its own backbone;
        the worst-scoring eighth of the residues then take their least-clashing candidate, in three
        rounds (a small penalty keeps the decoder's choice where it is clean).  ``fresh`` [M, N, A, 2]
        is one more candidate, offered to the residues whose ``turn_limit`` holds them.
        """
        m, n = atoms.shape[0], atoms.shape[1]
        h = self.num_heavy
        ncand = self.repack_offsets.shape[0]
        kk = geo.at_most(self.repack_neighbours, max(n - 1, 1))
        pos = torch.arange(n, device=atoms.device).view(1, n, 1)
        heavy = atoms[:, :, :h]
        cand_angles = self.candidate_angles(angles, restype)                  # [C, M, N, A, 2]
        if fresh is not None:
            cand_angles = torch.cat([cand_angles, fresh.unsqueeze(0)], 0)
            ncand += 1
        na = angles.shape[-2]
        # the current side chains of all residues; candidates are placed only for the residues
        # that get to move (an eighth), not for all
        cur = self.tables.place_sidechains(heavy.contiguous(), restype, angles, h, 0, -1)[:, :, 5:]   # [M, N, 9, 3]
        bb = heavy[:, :, :5]                                                  # N, CA, C, O, CB
        # neighbours by side-chain centre (clashing side chains can sit on distant Cα)
        centre = self.side_chain_centres(heavy, restype)
        nb = geo.nearest_points(centre, centre, kk + 1)[..., 1:]                  # [M, N, K], self dropped
        bb_idx = geo.nearest_points(centre, atoms[:, :, 1], kk + 1)               # [M, N, K+1]
        bb_keep = (bb_idx != pos).to(atoms.dtype)
        # [C, N]: turns larger than a residue's turn_limit are not offered (a coherent stream
        # keeps its rotamers)
        noff = self.repack_offsets.shape[0]
        pen = torch.where(self.repack_offsets.abs().amax(-1).view(noff, 1) > turn_limit.view(1, n) + 1e-6,
                          torch.full([noff, n], 1e9, device=atoms.device, dtype=atoms.dtype),
                          self.repack_offset_penalty.to(atoms.dtype).view(noff, 1))
        if fresh is not None:
            held = turn_limit < 3.9
            pen = torch.cat([pen, torch.where(held, torch.full_like(turn_limit, self.stream_switch_penalty),
                                              torch.full_like(turn_limit, 1e9)).view(1, n)], 0)
        movable = (~fixed).to(atoms.dtype)
        # ceil(n * fraction), but at least six (or all): the exported program needs two residues in
        # each of the three rounds, and a small protein's few clashes are all worth a look
        n_active = geo.run_time_size(min(max((n * self.repack_millionths + 999_999) // 1_000_000, 6), n), 6, n)
        choice = torch.zeros(m, n, dtype=torch.long, device=atoms.device)
        rows = torch.arange(m, device=atoms.device).view(m, 1)
        everyone = pos.view(1, n).expand(m, n)
        for cycle in range(self.repack_sweeps):
            # the current side chains' clash energy [M, N]; the worst eighth get to move, in three
            # rounds (so that two clashing neighbours, adjacent in this order, rarely move together);
            # energies are ranked rounded to 0.01, then by position
            e_cur = self.side_chain_energy(cur.unsqueeze(0), everyone, restype, nb, cur, bb_idx, bb_keep, bb)[0]
            e_cur = e_cur * movable.view(1, n)
            # two residues that clash with each other score the same: rank by energy rounded to
            # 1e-4, then by position, so that CPU, CUDA and C++ pick the same ones
            key = torch.floor(e_cur * 100.0).to(torch.int64) * n + (n - 1 - pos.view(1, n))
            worst_all = torch.topk(key, n_active, dim=-1)[1]                  # [M, T]
            ta = worst_all.shape[1]
            # candidates of those residues, frames and residues flattened into one row of M*T
            ang_w = torch.gather(cand_angles, 2, worst_all.view(1, m, ta, 1, 1).expand(ncand, m, ta, na, 2))
            base_w = rows_of(heavy.reshape(m, n, h * 3), worst_all).reshape(1, m * ta, h, 3)
            cand_w = self.tables.place_sidechains(base_w.expand(ncand, m * ta, h, 3).contiguous(),
                                                  restype[worst_all.reshape(-1)], ang_w.reshape(ncand, m * ta, na, 2),
                                                  h, 0, -1).view(ncand, m, ta, h, 3)[:, :, :, 5:]
            for r in range(3):
                worst = worst_all[:, r::3]
                t = worst.shape[1]
                if t == 0:
                    continue
                cand_t = cand_w[:, :, r::3]                                   # [C, M, t, 9, 3]
                e = self.side_chain_energy(cand_t, worst, restype, rows_of(nb, worst), cur, rows_of(bb_idx, worst),
                                           rows_of(bb_keep, worst), bb) + pen[:, worst]
                active = e_cur.gather(1, worst) > 0
                best = _stable_argmin(e, 0)
                new_choice = torch.where(active, best, choice.gather(1, worst))
                choice = choice.index_put((rows.expand(m, t), worst), new_choice)
                picked = torch.gather(cand_t, 0, best.view(1, m, t, 1, 1).expand(1, m, t, h - 5, 3))[0]
                kept = rows_of(cur, worst)
                cur = cur.index_put((rows.expand(m, t), worst), torch.where(active.view(m, t, 1, 1), picked, kept))
        sel = choice.view(1, m, n, 1, 1).expand(1, m, n, angles.shape[-2], 2)
        return torch.gather(cand_angles, 0, sel)[0]

    def side_chain_energy(self, sc: torch.Tensor, own: torch.Tensor, restype: torch.Tensor, nb: torch.Tensor,
                          cur: torch.Tensor, bb_idx: torch.Tensor, bb_keep: torch.Tensor,
                          bb: torch.Tensor) -> torch.Tensor:
        """Soft repulsion [C, M, T] of side chains ``sc`` [C, M, T, 9, 3] of residues ``own``
        [M, T] with the current side chains ``cur`` of their neighbours ``nb`` [M, T, K], the
        backbones (N, CA, C, O, CB) ``bb_idx`` [M, T, K+1] (``bb_keep`` masks their own) and their
        own backbone (pairs more than three bonds apart)."""
        w_sc = self.sc_heavy[restype[own]][..., 5:]                           # [M, T, 9]
        e = self.pair_energy(sc, w_sc, gather_residues(cur, nb), self.sc_heavy[restype[nb]][..., 5:])
        w_bb = self.bb_heavy[restype[bb_idx]][..., :5] * bb_keep.unsqueeze(-1)
        e = e + self.pair_energy(sc, w_sc, gather_residues(bb, bb_idx), w_bb)
        m, t = own.shape[0], own.shape[1]
        own_bb = torch.gather(bb, 1, own.view(m, t, 1, 1).expand(m, t, 5, 3))  # [M, T, 5, 3]
        d = torch.sqrt(((sc.unsqueeze(4) - own_bb.unsqueeze(0).unsqueeze(3)) ** 2).sum(-1) + 1e-12)
        pairs = self.own_backbone_pairs[restype[own]]                          # [M, T, 9, 5]
        return e + (torch.relu(self.repack_cutoff - d) ** 2 * pairs.unsqueeze(0)).sum((3, 4))

    def relax_side_chains(self, atoms: torch.Tensor, restype: torch.Tensor, angles: torch.Tensor,
                          fixed: torch.Tensor, turn_limit: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """Gradient steps in torsion space for the side chains that still clash after the rotamer
        choice: chi1-chi4 turned down the gradient of the clash resolution's soft repulsion
        (against the neighbours' heavy atoms and the own backbone) plus a tether to the start.

        The gradient is analytic: turning chi_k about its bond axis u (through c) moves every
        atom beyond it by u x (x - c), so dE/dchi_k = u . sum (x - c) x dE/dx.  Bonds and angles
        stay ideal.  One screen picks the residues whose repulsion exceeds ``relax_min_energy``
        in their own frame (a frame's atoms do not depend on its batch) and the atom pairs that
        can come within the cutoff; the steps then touch only those pairs.  A chi turns at most
        ``relax_max_turn``; one a stream keeps (``turn_limit`` [N] below 4 rad) stays within
        its limit of the ``given`` angles, whatever the rotamer choice turned already."""
        m, n = atoms.shape[0], atoms.shape[1]
        h = self.num_heavy
        heavy = self.tables.place_sidechains(atoms[:, :, :h].contiguous(), restype, angles, h, 0, -1)
        kk = geo.at_most(self.relax_neighbours, n - 1)
        centre = self.side_chain_centres(heavy, restype)
        nb = geo.nearest_points(centre, centre, kk + 1)[..., 1:]                  # [M, N, K]
        movable = (~fixed) & (self.chi_exists[restype].sum(-1) > 0)
        cand = torch.nonzero(movable).squeeze(1)                              # [C]
        c = cand.shape[0]
        if not geo.exporting() and c == 0:
            return angles
        # the screen: every side-chain atom beyond CB (only the atoms a residue has: the table
        # pads them to 9) against its neighbours' heavy atoms and its own backbone (pairs more than
        # three bonds apart)
        nb_c = nb[:, cand]
        atom = torch.nonzero(self.sc_heavy[restype[cand]][:, 5:] > 0)         # [A, 2] (candidate, slot - 5)
        ar, asl = atom[:, 0], atom[:, 1]
        other = torch.cat([gather_residues(heavy, nb_c).reshape(m, c, kk * h, 3), heavy[:, cand, :5]], 2)[:, ar]
        w_o = (self.sc_heavy + self.bb_heavy)[restype[nb_c]].reshape(m, c, kk * h)[:, ar]
        w = torch.cat([w_o, self.own_backbone_pairs[restype[cand[ar]], asl].unsqueeze(0).expand(m, ar.shape[0], 5)],
                      2)                                                      # [M, A, O]
        origin = heavy[:, cand[ar], 5].unsqueeze(2)                           # the residue's first atom beyond CB
        # differences, not cdist: exact, and defined for any number of candidates (torch.export)
        v0 = (heavy[:, cand[ar], 5 + asl].unsqueeze(2) - origin) - (other - origin)
        d0 = torch.sqrt((v0 * v0).sum(-1))                                    # [M, A, O]
        over0 = torch.relu(self.repack_cutoff - d0) * w
        act_frame = torch.zeros(m, c, device=atoms.device, dtype=atoms.dtype).index_add_(
            1, ar, (over0 * over0).sum(-1)) > self.relax_min_energy          # [M, C]
        keep = act_frame.any(0)
        if not geo.exporting() and not bool(keep.any()):
            return angles
        act = cand[keep]                                                      # [A]
        a = act.shape[0]
        at_of = torch.cumsum(keep.to(torch.long), 0) - 1                      # candidate -> row in act
        # pairs that can come within the cutoff while the chis turn (tips move up to ~3 Å)
        near = (d0 < self.repack_cutoff + self.relax_margin) & (w > 0) & act_frame[:, ar].unsqueeze(-1)
        pr = torch.nonzero(near)                                               # [P, 3] frame, atom, other
        pm, pat, pb = pr[:, 0], pr[:, 1], pr[:, 2]
        pc = ar[pat]                                                           # its candidate
        pa, ps = at_of[pc], asl[pat] + 5
        in_nb = pb < kk * h
        kq = torch.div(pb, h, rounding_mode="floor").clamp(max=kk - 1)
        p_res = torch.where(in_nb, nb_c[pm, pc, kq], cand[pc])
        p_slot = torch.where(in_nb, pb % h, pb - kk * h)
        pw = w[pm, pat, pb]
        on = act_frame[:, keep].to(atoms.dtype)                               # [M, A]
        rt = restype[act]
        chi_on = self.chi_exists[rt].unsqueeze(0) * on.unsqueeze(-1)         # [M, A, 4]
        base = atoms[:, act, :h].contiguous()
        fixed_pos = heavy[:, act]
        ang = angles[:, act]
        chi0 = torch.atan2(ang[..., 4:8, 1], ang[..., 4:8, 0])                 # [M, A, 4]
        off = torch.zeros_like(chi0)
        lim = turn_limit[act].view(1, a, 1)
        held = lim < 3.9
        chi_given = torch.atan2(given[:, act, 4:8, 1], given[:, act, 4:8, 0])
        done = torch.where(held, torch.atan2(torch.sin(chi0 - chi_given), torch.cos(chi0 - chi_given)),
                           torch.zeros_like(chi0))
        cap = torch.where(held, lim.clamp(max=self.relax_max_turn), torch.full_like(lim, self.relax_max_turn))
        lo, hi = -cap - done, cap - done
        # chi_k turns the atoms of groups k..MAX_CHI about the axis b -> c of its frame (a, b, c)
        beyond = (self.heavy_group[rt].unsqueeze(1) >= torch.arange(1, 5, device=atoms.device).view(1, 4, 1))
        beyond = beyond.to(atoms.dtype).view(1, a, 4, h, 1)
        axes = self.tables.group_frame_atoms[rt][:, 1:5, 1:].contiguous()     # [A, 4, 2] slots b, c
        cur = heavy
        rows = torch.arange(m, device=atoms.device).view(m, 1).expand(m, a)
        cols = act.view(1, a).expand(m, a)
        for _ in range(self.relax_steps):
            chi = chi0 + off
            ang = torch.cat([ang[..., :4, :], torch.stack([torch.cos(chi), torch.sin(chi)], -1)], 2)
            pos = self.tables.place_sidechains(base, rt, ang, h, 1, 4)         # [M, A, H, 3] chi groups
            # a residue still in its own frame keeps its exact atoms (no rounding through atan2)
            pos = torch.where(on.view(m, a, 1, 1) > 0, pos, fixed_pos)
            cur = cur.index_put((rows, cols), pos)
            v = pos[pm, pa, ps] - cur[pm, p_res, p_slot]                        # [P, 3]
            d = torch.sqrt((v * v).sum(-1) + 1e-12)
            over = torch.relu(self.repack_cutoff - d) * pw
            grad = torch.zeros_like(pos).index_put((pm, pa, ps), (-2.0 * over / d).unsqueeze(-1) * v,
                                                   accumulate=True)             # dE/dx [M, A, H, 3]
            ends = torch.gather(pos, 2, axes.view(1, a, 8, 1).expand(m, a, 8, 3)).view(m, a, 4, 2, 3)
            u = geo.normalize(ends[:, :, :, 1] - ends[:, :, :, 0])             # [M, A, 4, 3] chi axes
            arm = torch.cross(pos.unsqueeze(2) - ends[:, :, :, 1].unsqueeze(3),
                              (grad.unsqueeze(2) * beyond).expand(m, a, 4, h, 3), dim=-1).sum(3)
            g = (u * arm).sum(-1) + 2.0 * self.relax_tether * off
            step = (self.relax_rate * g).clamp(-self.relax_max_step, self.relax_max_step) * chi_on
            off = torch.minimum(torch.maximum(off - step, lo), hi)
        chi = chi0 + off
        ang = torch.cat([ang[..., :4, :], torch.stack([torch.cos(chi), torch.sin(chi)], -1)], 2)
        out = angles.clone()
        out[:, act] = torch.where(on.view(m, a, 1, 1) > 0, ang, angles[:, act])
        return out

    def turn_hydrogens(self, atoms: torch.Tensor, restype: torch.Tensor, atom_mask: torch.Tensor) -> torch.Tensor:
        """Methyl, amine, hydroxyl and thiol hydrogens turned (by 0 or +-60 degrees, +-120 for a
        single H) about their parent bond, away from the atoms of neighbouring residues: a
        docking program's receptor preparation rejects hydrogens within bonding distance of
        another residue's atoms."""
        m, n, s = atoms.shape[0], atoms.shape[1], atoms.shape[2]
        rot = self.rotors[restype]                                            # [N, 2, 5]
        step = self.rotor_step[restype]                                       # [N, 2]
        kk = geo.at_most(self.hydrogen_neighbours, n - 1)
        centre = self.side_chain_centres(atoms[:, :, :self.num_heavy], restype)
        nb = geo.nearest_points(centre, centre, kk + 1)[..., 1:]                 # [M, N, K]
        nb_mask = atom_mask[nb]                                                # [M, N, K, S]
        h_ok = (rot[:, :, 2:] >= 0).to(atoms.dtype)                            # [N, 2, 3]
        idx = rot.clamp(min=0).view(1, n, 10, 1).expand(m, n, 10, 3)
        for _ in range(self.hydrogen_rounds):
            sel = torch.gather(atoms, 2, idx).view(m, n, 2, 5, 3)
            q, p, h = sel[:, :, :, 0], sel[:, :, :, 1], sel[:, :, :, 2:]       # [M, N, 2, 3], .., [M, N, 2, 3, 3]
            axis = geo.normalize(p - q).unsqueeze(3)                           # [M, N, 2, 1, 3]
            v = h - p.unsqueeze(3)
            others = gather_residues(atoms, nb).reshape(m * n, kk * s, 3)     # neighbours' atoms
            w_others = nb_mask.reshape(m * n, 1, kk * s)
            cands: List[torch.Tensor] = []
            for c in range(3):
                sign = 0.0 if c == 0 else (1.0 if c == 1 else -1.0)
                ang = (step * sign).view(1, n, 2, 1, 1)
                cs, sn = torch.cos(ang), torch.sin(ang)
                # Rodrigues: v cos + (k x v) sin + k (k.v)(1 - cos)
                turned = v * cs + torch.cross(axis.expand_as(v), v, dim=-1) * sn + \
                    axis * (axis * v).sum(-1, keepdim=True) * (1.0 - cs)
                cands.append(p.unsqueeze(3) + turned)                          # [M, N, 2, 3, 3]
            hc = torch.stack(cands, 2)                                         # [M, N, 3, 2, 3, 3]
            origin = p[:, :, :1].reshape(m * n, 1, 3)                          # near the origin (precision)
            d = torch.cdist(hc.reshape(m * n, 18, 3) - origin, others - origin)  # [M*N, 18, K*S]
            e = (torch.relu(self.hydrogen_cutoff - d) ** 2 * w_others).sum(-1).view(m, n, 3, 2, 3)
            e = (e * h_ok.view(1, n, 1, 2, 3)).sum(-1)                         # [M, N, 3 turns, 2 rotors]
            e = e + torch.tensor([0.0, 0.01, 0.01], device=atoms.device, dtype=atoms.dtype).view(1, 1, 3, 1)
            best = _stable_argmin(e, 2)                                        # [M, N, 2]
            cand_stack = hc.permute(2, 0, 1, 3, 4, 5)                          # [3, M, N, 2, 3, 3]
            new_h = torch.gather(cand_stack, 0, best.view(1, m, n, 2, 1, 1).expand(1, m, n, 2, 3, 3))[0]
            write = (rot[:, :, 2:] >= 0) & (step > 0).unsqueeze(-1)            # [N, 2, 3]
            slots = rot[:, :, 2:].clamp(min=0)
            for g in range(2):
                for j in range(3):
                    hit = (torch.arange(s, device=atoms.device).view(1, s) == slots[:, g, j].view(n, 1)) & \
                        write[:, g, j].view(n, 1)                               # [N, S]
                    atoms = torch.where(hit.view(1, n, s, 1), new_h[:, :, g, j].unsqueeze(2), atoms)
        return atoms

    def candidate_angles(self, angles: torch.Tensor, restype: torch.Tensor) -> torch.Tensor:
        """[C, M, N, A, 2]: the angles with chi1/chi2 turned by each of ``repack_offsets``."""
        out: List[torch.Tensor] = []
        for c in range(self.repack_offsets.shape[0]):
            rot = angles.clone()
            for j in range(2):
                cs, sn = torch.cos(self.repack_offsets[c, j]), torch.sin(self.repack_offsets[c, j])
                a0 = angles[..., 4 + j, 0]
                a1 = angles[..., 4 + j, 1]
                rot[..., 4 + j, 0] = a0 * cs - a1 * sn
                rot[..., 4 + j, 1] = a1 * cs + a0 * sn
            out.append(rot)
        return torch.stack(out, 0)

    def pair_energy(self, cand: torch.Tensor, own_w: torch.Tensor, other: torch.Tensor,
                    other_w: torch.Tensor) -> torch.Tensor:
        """Soft repulsion [C, M, T] between side chains ``cand`` [C, M, T, A, 3] (weights ``own_w``
        [M, T, A]) and neighbour atoms ``other`` [M, T, K, B, 3] (weights ``other_w`` [M, T, K, B])."""
        c, m, t, a = cand.shape[0], cand.shape[1], cand.shape[2], cand.shape[3]
        kb = other.shape[2] * other.shape[3]
        # one distance matrix per (candidate, residue): A own atoms x K*B neighbour atoms.  Both
        # sides are moved next to the origin first: cdist's matrix-product form loses precision
        # with large coordinates, and its rounding would then depend on the batch size
        origin = other[:, :, :1, :1].reshape(1, m * t, 1, 3)
        d = torch.cdist(cand.reshape(c, m * t, a, 3) - origin,
                        (other.reshape(1, m * t, kb, 3) - origin).expand(c, m * t, kb, 3))
        w = own_w.reshape(1, m * t, a, 1) * other_w.reshape(1, m * t, 1, kb)
        return (torch.relu(self.repack_cutoff - d) ** 2 * w).sum((2, 3)).view(c, m, t)


class BestGuessProgram(nn.Module):
    """The best guess of one frame: the :class:`Sampler`'s ``forward`` with one deterministic
    sample, as ``torch.export`` traces it for the ``.pt2`` file (the same code as the
    TorchScript file and the Python sampler; :func:`geometry.exporting` takes the data-dependent
    shortcuts out while it traces).  Inputs ``ca`` [1, N, 3] Å, ``restype`` [N], ``segment``
    [N], ``disulfides`` [P, 2], ``seeds`` [1] (unused); outputs as the sampler's."""

    def __init__(self, sampler: Sampler, keep_ca: bool = False):
        super().__init__()
        self.sampler = sampler
        self.keep_ca = keep_ca

    def forward(self, ca: torch.Tensor, restype: torch.Tensor, segment: torch.Tensor, disulfides: torch.Tensor,
                seeds: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.sampler(ca, restype, segment, disulfides, seeds, 1, 1, True, self.keep_ca)

    def min_residues(self) -> int:
        """The fewest residues the exported program takes: every neighbour count of the settings
        fits in the chain and cdist takes its matrix-product form (more than 25 points)."""
        s = self.sampler
        return max(26, s.graph.k, s.repack_neighbours + 1, s.relax_neighbours + 1, s.hydrogen_neighbours + 1,
                   s.well_choice_env_neighbours + 1)
