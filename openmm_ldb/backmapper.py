"""Backmapper: CG (Cα) frames in, all-atom topology and positions out.

The one place where OpenMM units meet the model's Å tensors.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import openmm.unit as unit
import torch

from . import residues as rc
from .export import load_model
from .topology import AllAtomLayout, CGMapping, build_aa_topology, read_cg_topology

NM_TO_ANGSTROM = 10.0
DETERMINISTIC_STEPS = 4
SAMPLING_STEPS = 10


def to_angstrom(positions) -> np.ndarray:
    """OpenMM Quantity (any length unit) or plain array in nm -> float64 array in Å."""
    if unit.is_quantity(positions):
        value = positions.value_in_unit(unit.nanometer)
        return np.asarray(value, dtype=np.float64) * NM_TO_ANGSTROM
    return np.asarray(positions, dtype=np.float64) * NM_TO_ANGSTROM


def make_whole(ca: np.ndarray, chain_index: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """Unwrap each chain across periodic boundaries (bead i placed nearest image of i-1).

    ``ca`` [F, N, 3] Å; ``box`` [F, 3, 3] box vectors in Å (rows a, b, c; OpenMM's reduced
    form: triclinic allowed) or None.
    """
    if box is None:
        return ca
    out = ca.copy()
    same = chain_index[1:] == chain_index[:-1]
    for f in range(ca.shape[0]):
        a, b, c = box[f]
        for i in np.flatnonzero(same) + 1:
            d = out[f, i] - out[f, i - 1]
            d -= c * np.round(d[2] / c[2])
            d -= b * np.round(d[1] / b[1])
            d -= a * np.round(d[0] / a[0])
            out[f, i] = out[f, i - 1] + d
    return out


@dataclass
class BackmapPlan:
    """Everything fixed for one CG topology: sequence, segments, disulfides, output topology."""

    mapping: CGMapping
    segment: np.ndarray
    disulfides: list[tuple[int, int]]
    layout: AllAtomLayout
    hydrogens: bool

    @property
    def topology(self):
        return self.layout.topology


class Backmapper:
    """Backmap Cα coarse-grained structures to all-atom proteins with an LDB model.

    Parameters
    ----------
    model : str, optional
        Path of an exported model (``.pt`` TorchScript or ``.pt2``); the shipped default
        when omitted.
    device : str or torch.device, optional
        ``'cuda'`` when available, else ``'cpu'``.
    threads : int, optional
        CPU threads for PyTorch.
    steps : int, optional
        Denoising steps of the sampler; by default 4 for the deterministic best guess and 10
        for samples (measured: more steps do not make the best guess more accurate).
    max_batch_residues : int
        Frames x samples x residues per model call; larger batches are split (bounded memory).
    """

    def __init__(self, model: str | None = None, device=None, threads: int | None = None, steps: int | None = None,
                 max_batch_residues: int = 16384):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if threads:
            torch.set_num_threads(int(threads))
        self.module, self.card = load_model(model, self.device)
        self.steps = None if steps is None else int(steps)
        if "pt2" in self.card:  # torch.export programs are traced for one step count
            self.steps = int(self.card["pt2"]["steps"])
        self.max_batch_residues = int(max_batch_residues)
        self._plans: dict = {}
        self._lock = threading.Lock()
        cys = rc.ideal_geometry()["CYS"]
        sg = next(e for e in cys if e[0] == "SG")
        self._sg_bond, self._sg_angle = float(sg[4]), math.radians(sg[5])

    # ------------------------------------------------------------------ planning
    def plan(self, cg_topology, reference_positions, bead_name: str = "CA", residues=None,
             skip_unknown: bool = False, hydrogens: bool = True, disulfides: bool | list = True,
             box_vectors=None) -> BackmapPlan:
        """Fix the residue mapping, chain segments and disulfides of a CG topology.

        Chain breaks (Cα–Cα > 4.5 Å) and disulfides (CYS pairs with Cα–Cα ≤ 6.8 Å) are read
        off ``reference_positions``; they stay fixed for every frame backmapped with the plan.
        """
        mapping = read_cg_topology(cg_topology, bead_name, residues, skip_unknown)
        ca = self._ca_frames(mapping, reference_positions, box_vectors)[0]
        segment = mapping.segments(ca)
        if disulfides is True:
            pairs = find_disulfides(ca, mapping.restype)
        elif disulfides:
            pairs = [tuple(sorted(p)) for p in disulfides]
        else:
            pairs = []
        layout = build_aa_topology(mapping, segment, hydrogens=hydrogens, disulfides=pairs)
        return BackmapPlan(mapping, segment, pairs, layout, hydrogens)

    def _ca_frames(self, mapping: CGMapping, positions, box_vectors=None) -> np.ndarray:
        xyz = to_angstrom(positions)
        if xyz.ndim == 2:
            xyz = xyz[None]
        if xyz.ndim != 3 or xyz.shape[-1] != 3:
            raise ValueError(f"positions must have shape (n_particles, 3) or (frames, n_particles, 3), got {xyz.shape}")
        if xyz.shape[1] != mapping.n_particles:
            raise ValueError(f"particle count mismatch: positions have {xyz.shape[1]} particles but the CG "
                             f"topology has {mapping.n_particles}")
        ca = xyz[:, mapping.bead_index]
        bad = ~np.isfinite(ca)
        if bad.any():
            f, i = np.argwhere(bad.any(-1))[0]
            raise ValueError(f"NaN or infinite coordinates in frame {f}, residue {mapping.residue_names[i]} "
                             f"{mapping.residue_ids[i]} (particle {mapping.bead_index[i]})")
        if box_vectors is not None:
            box = to_angstrom(box_vectors)
            if box.ndim == 2:
                box = np.broadcast_to(box, (ca.shape[0], 3, 3))
            ca = make_whole(ca, mapping.chain_index, box)
        return ca

    # ------------------------------------------------------------------ sampling
    def sample(self, plan: BackmapPlan, positions, n_samples: int = 1, seed: int | None = None,
               deterministic: bool | None = None, box_vectors=None) -> np.ndarray:
        """All-atom positions [frames, samples, n_atoms, 3] in Å for CG ``positions``."""
        ca = self._ca_frames(plan.mapping, positions, box_vectors)
        if deterministic is None:
            deterministic = n_samples == 1 and seed is None
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**31 - 1))
        n = plan.mapping.n_residues
        frames_per_call = max(1, self.max_batch_residues // max(1, n * n_samples))
        restype = torch.as_tensor(plan.mapping.restype, device=self.device)
        segment = torch.as_tensor(plan.segment, device=self.device)
        out = []
        with self._lock, torch.no_grad():
            for start in range(0, ca.shape[0], frames_per_call):
                chunk = torch.as_tensor(ca[start:start + frames_per_call], dtype=torch.float32, device=self.device)
                # the seed advances with the frame index so every frame gets its own noise
                steps = self.steps or (DETERMINISTIC_STEPS if deterministic else SAMPLING_STEPS)
                atoms, _ = self.module(chunk, restype, segment, steps, int(n_samples), int(seed) + start,
                                       bool(deterministic))
                atoms = atoms.cpu().numpy()
                if plan.disulfides:
                    close_disulfides(atoms, plan.disulfides, self._sg_bond, self._sg_angle)
                out.append(plan.layout.positions_from_slots(atoms))
        result = np.concatenate(out, axis=0)
        if not np.isfinite(result).all():
            raise FloatingPointError("the model produced non-finite coordinates")
        return result

    def backmap(self, cg_topology, positions, n_samples: int = 1, seed: int | None = None, hydrogens: bool = True,
                bead_name: str = "CA", residues=None, deterministic: bool | None = None, box_vectors=None):
        """Backmap one CG frame or a batch of frames.

        Parameters
        ----------
        cg_topology : openmm.app.Topology or mdtraj.Topology
        positions : Quantity or array (nm), shape (n_particles, 3) or (frames, n_particles, 3)
        n_samples : int
            All-atom structures drawn per frame (an ensemble).
        seed : int, optional
            Seed of the sampler; with ``n_samples=1`` and no seed the deterministic mode
            gives one best structure.

        Returns
        -------
        topology : openmm.app.Topology
        positions : Quantity (nm): (n_atoms, 3) for one frame and one sample, else
            (frames, samples, n_atoms, 3)
        """
        xyz = to_angstrom(positions)
        key = (id(cg_topology), bead_name, None if residues is None else tuple(residues), hydrogens)
        plan = self._plans.get(key)
        if plan is None or plan.mapping.n_particles != xyz.shape[-2]:
            plan = self.plan(cg_topology, xyz[0] / NM_TO_ANGSTROM if xyz.ndim == 3 else xyz / NM_TO_ANGSTROM,
                             bead_name, residues, hydrogens=hydrogens, box_vectors=box_vectors)
            self._plans[key] = plan
        out = self.sample(plan, xyz / NM_TO_ANGSTROM, n_samples, seed, deterministic, box_vectors) / NM_TO_ANGSTROM
        if xyz.ndim == 2 and n_samples == 1:
            out = out[0, 0]
        return plan.topology, unit.Quantity(out, unit.nanometer)


def stream_seed(seed: int | None, n_samples: int, frame_index: int) -> int | None:
    """Sampler seed for the ``frame_index``-th frame of a stream of frames (reporters).

    None (the deterministic best guess) for one sample without a seed; otherwise a seed that
    differs from frame to frame so every frame gets its own noise.
    """
    if seed is None and n_samples == 1:
        return None
    return (0 if seed is None else int(seed)) + 7919 * int(frame_index)


def find_disulfides(ca: np.ndarray, restype: np.ndarray, max_ca: float = rc.DISULFIDE_CA_CA_MAX,
                    min_ca: float = 3.8) -> list[tuple[int, int]]:
    """CYS pairs close enough (Cα–Cα in [min_ca, max_ca] Å) to bond, each CYS used once."""
    cys = np.flatnonzero(restype == rc.RESTYPE_INDEX["CYS"])
    cand = []
    for a in range(len(cys)):
        for b in range(a + 1, len(cys)):
            i, j = int(cys[a]), int(cys[b])
            if j - i < 2:
                continue
            d = float(np.linalg.norm(ca[i] - ca[j]))
            if min_ca <= d <= max_ca:
                cand.append((d, i, j))
    used, pairs = set(), []
    for d, i, j in sorted(cand):
        if i not in used and j not in used:
            pairs.append((i, j))
            used.update((i, j))
    return pairs


def _nerf_np(a, b, c, bond, angle, torsion):
    bc = c - b
    bc /= np.linalg.norm(bc, axis=-1, keepdims=True)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    m = np.cross(n, bc)
    return (c + bond * (-np.cos(angle) * bc + np.sin(angle) * np.cos(torsion)[..., None] * m
                        + np.sin(angle) * np.sin(torsion)[..., None] * n))


def close_disulfides(atoms: np.ndarray, pairs, sg_bond: float, sg_angle: float) -> None:
    """Rotate chi1 of both cysteines of each pair so SG–SG is a bond (2.04 Å, CB–SG–SG ~104°).

    ``atoms`` [F, S, N, NUM_SLOTS, 3] Å, modified in place.  A 5-degree grid over both chi1
    angles scores the S–S distance and the two CB–SG–SG angles.
    """
    grid = np.radians(np.arange(-180, 180, 5.0))
    ideal_angle = math.radians(104.0)
    sg_slot = rc.slot_names("CYS").index("SG")
    for i, j in pairs:
        n_i, ca_i, cb_i = atoms[..., i, 0, :], atoms[..., i, 1, :], atoms[..., i, 4, :]
        n_j, ca_j, cb_j = atoms[..., j, 0, :], atoms[..., j, 1, :], atoms[..., j, 4, :]
        sg_i = _nerf_np(n_i[..., None, :], ca_i[..., None, :], cb_i[..., None, :], sg_bond, sg_angle, grid)  # [F,S,G,3]
        sg_j = _nerf_np(n_j[..., None, :], ca_j[..., None, :], cb_j[..., None, :], sg_bond, sg_angle, grid)
        d = np.linalg.norm(sg_i[..., :, None, :] - sg_j[..., None, :, :], axis=-1)  # [F,S,G,G]
        v_ii = cb_i[..., None, None, :] - sg_i[..., :, None, :]
        v_ij = sg_j[..., None, :, :] - sg_i[..., :, None, :]
        v_jj = cb_j[..., None, None, :] - sg_j[..., None, :, :]
        cos_i = (v_ii * v_ij).sum(-1) / (np.linalg.norm(v_ii, axis=-1) * np.maximum(d, 1e-6))
        cos_j = (v_jj * -v_ij).sum(-1) / (np.linalg.norm(v_jj, axis=-1) * np.maximum(d, 1e-6))
        ang_i = np.arccos(np.clip(cos_i, -1, 1))
        ang_j = np.arccos(np.clip(cos_j, -1, 1))
        score = (d - rc.BOND_SG_SG) ** 2 + 0.5 * ((ang_i - ideal_angle) ** 2 + (ang_j - ideal_angle) ** 2)
        flat = score.reshape(*score.shape[:-2], -1).argmin(-1)
        gi, gj = np.unravel_index(flat, (len(grid), len(grid)))
        atoms[..., i, sg_slot, :] = np.take_along_axis(sg_i, gi[..., None, None], axis=-2)[..., 0, :]
        atoms[..., j, sg_slot, :] = np.take_along_axis(sg_j, gj[..., None, None], axis=-2)[..., 0, :]
