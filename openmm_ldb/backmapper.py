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
from .topology import (
    OPTION_NAMES,
    AllAtomLayout,
    CGMapping,
    _as_openmm_topology,
    build_aa_topology,
    read_cg_topology,
)

NM_TO_ANGSTROM = 10.0
DETERMINISTIC_STEPS = 4
SAMPLING_STEPS = 10


def to_angstrom(positions) -> np.ndarray:
    """OpenMM Quantity (any length unit) or plain array in nm -> float64 array in Å."""
    if unit.is_quantity(positions):
        value = positions.value_in_unit(unit.nanometer)
        return np.asarray(value, dtype=np.float64) * NM_TO_ANGSTROM
    return np.asarray(positions, dtype=np.float64) * NM_TO_ANGSTROM


def _min_image(d: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Nearest periodic image of difference vectors ``d`` [F, M, 3] in boxes [F, 3, 3] (OpenMM's
    reduced form, triclinic allowed: reduce along c, then b, then a)."""
    d = d.copy()
    for k in (2, 1, 0):
        v = box[:, None, k, :]  # [F, 1, 3]
        d -= v * np.round(d[..., k:k + 1] / v[..., k:k + 1])
    return d


def make_whole(ca: np.ndarray, chain_index: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """Unwrap runs of equal ``chain_index`` across periodic boundaries (bead i placed at the
    nearest image of bead i-1; the first bead of each run stays where it is).

    ``ca`` [F, N, 3] Å; ``box`` [F, 3, 3] (or [3, 3]) box vectors in Å (rows a, b, c; OpenMM's
    reduced form: triclinic allowed) or None.
    """
    if box is None or ca.shape[1] < 2:
        return ca
    box = np.broadcast_to(np.asarray(box, dtype=np.float64), (ca.shape[0], 3, 3))
    chain_index = np.asarray(chain_index)
    same = chain_index[1:] == chain_index[:-1]
    step = _min_image(ca[:, 1:] - ca[:, :-1], box) * same[None, :, None]
    total = np.concatenate([np.zeros_like(ca[:, :1]), np.cumsum(step, axis=1)], axis=1)
    start = np.maximum.accumulate(np.where(np.concatenate([[True], ~same]), np.arange(ca.shape[1]), 0))
    return ca[:, start] + total - total[:, start]


def image_molecules(ca: np.ndarray, molecule: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Shift every (whole) molecule by whole box vectors so that its centre lies in the box, as
    OpenMM does for ``getState(enforcePeriodicBox=True)`` (and so ``DCDReporter``): the frames
    then overlay the CG trajectory OpenMM writes.  ``ca`` [F, N, 3], ``box`` [F, 3, 3], Å."""
    box = np.broadcast_to(np.asarray(box, dtype=np.float64), (ca.shape[0], 3, 3))
    order = np.argsort(molecule, kind="stable")
    first = np.flatnonzero(np.concatenate([[True], np.diff(molecule[order]) != 0]))
    counts = np.diff(np.concatenate([first, [len(order)]]))
    center = np.add.reduceat(ca[:, order], first, axis=1) / counts[None, :, None]  # [F, M, 3]
    diff = np.zeros_like(center)
    for k in (2, 1, 0):
        v = box[:, None, k, :]
        diff += v * np.floor((center[..., k:k + 1] - diff[..., k:k + 1]) / v[..., k:k + 1])
    mol_of = np.empty(len(molecule), dtype=np.int64)
    mol_of[order] = np.repeat(np.arange(len(first)), counts)
    return ca - diff[:, mol_of]


def whole_molecules(ca: np.ndarray, mapping: CGMapping, box: np.ndarray) -> np.ndarray:
    """Molecules of ``mapping`` whole (segments unwrapped, segments joined by cross-links placed
    next to each other) and imaged into the box by their centres.  Å, [F, N, 3]."""
    pairs = mapping.bonded | mapping.by_distance if mapping.bonded is not None else \
        mapping.chain_index[1:] == mapping.chain_index[:-1]
    run = np.cumsum(np.concatenate([[True], ~pairs]))
    ca = make_whole(ca, run, box)
    if mapping.links:
        box = np.broadcast_to(np.asarray(box, dtype=np.float64), (ca.shape[0], 3, 3))
        group = {int(r): {int(r)} for r in np.unique(run)}
        owner = {int(r): int(r) for r in np.unique(run)}
        for k, m in mapping.links:
            gk, gm = owner[int(run[k])], owner[int(run[m])]
            if gk == gm:
                continue
            d = _min_image((ca[:, m] - ca[:, k])[:, None], box)[:, 0]
            shift = ca[:, k] + d - ca[:, m]  # [F, 3]
            moved = np.isin(run, list(group[gm]))
            ca[:, moved] += shift[:, None]
            group[gk] |= group.pop(gm)
            for r in group[gk]:
                owner[r] = gk
    molecule = mapping.molecule if mapping.molecule is not None else run
    return image_molecules(ca, molecule, box)


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
             box_vectors=None, *, system=None, chain_break=None, entry_point: str = "python") -> BackmapPlan:
        """Fix the residue mapping, chain segments and disulfides of a CG topology.

        Parameters
        ----------
        cg_topology : openmm.app.Topology or mdtraj.Topology
        reference_positions : Quantity or array (nm), (n_particles, 3)
        bead_name, residues, skip_unknown : see :func:`openmm_ldb.topology.read_cg_topology`
        hydrogens : bool
        disulfides : True (CYS pairs with Cα–Cα ≤ 6.8 Å in the reference frame), False, or pairs
        box_vectors : Quantity or array (nm), (3, 3), optional
            The reference frame's periodic box (default: the System's default box when periodic).
        system : openmm.System, optional
            The CG System (``simulation.system``): its bonds say which residues are bonded and
            which particles form a molecule.  Without it the Topology's bonds are used, and only
            where neither gives bonds the distance rule (Cα–Cα > ``chain_break``).
        chain_break : length (Quantity or nm), optional
            Threshold of the distance rule (default 0.45 nm).
        entry_point : str
            'python', 'reporter' or 'cli': how error messages spell the options.

        Connectivity, molecules and disulfides stay fixed for every frame backmapped with the
        plan; where the distance rule decides, every later frame is checked and a warning says
        when the breaks change.  The all-atom topology keeps the CG chain ids and residue numbers
        (one OpenMM chain per segment) and the box.
        """
        import warnings

        from .topology import check_positions

        mapping = read_cg_topology(cg_topology, bead_name, residues, skip_unknown, system=system,
                                   chain_break=chain_break, entry_point=entry_point)
        box_given = box_vectors is not None or mapping.box is not None
        ca_raw = self._ca_frames(mapping, reference_positions, None, check=False)[0]
        if box_given:
            ca = self._ca_frames(mapping, reference_positions, box_vectors, check=False)[0]
        else:
            ca = ca_raw
        for note in check_positions(mapping, ca, box_given):
            warnings.warn(note, stacklevel=2)
        segment = mapping.segments(ca)
        mapping.reference_breaks = mapping.distance_breaks(ca)
        if disulfides is True:
            pairs = find_disulfides(ca, mapping.restype)
        elif disulfides:
            pairs = [tuple(sorted(p)) for p in disulfides]
        else:
            pairs = []
        box = None
        if box_vectors is not None:
            box = to_angstrom(box_vectors).reshape(-1, 3, 3)[0]
        layout = build_aa_topology(mapping, segment, hydrogens=hydrogens, disulfides=pairs, box=box)
        return BackmapPlan(mapping, segment, pairs, layout, hydrogens)

    def _ca_frames(self, mapping: CGMapping, positions, box_vectors=None, check: bool = True) -> np.ndarray:
        """Cα [F, N, 3] in Å of CG ``positions``; with a box (``box_vectors``, else the System's
        default box) molecules are made whole and imaged like OpenMM's ``enforcePeriodicBox``."""
        import warnings

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
        box = None
        if box_vectors is not None:
            box = to_angstrom(box_vectors)
        elif check and mapping.box is not None:
            box = mapping.box
        if box is not None:
            if box.ndim == 2:
                box = np.broadcast_to(box, (ca.shape[0], 3, 3))
            ca = whole_molecules(ca, mapping, box)
        ref = getattr(mapping, "reference_breaks", None)
        if check and ref is not None and mapping.by_distance is not None and mapping.by_distance.any() \
                and not getattr(mapping, "_breaks_warned", False):
            changed = (mapping.distance_breaks(ca) != ref).any(-1)
            if changed.any():
                f = int(np.flatnonzero(changed)[0])
                k = int(np.flatnonzero(mapping.distance_breaks(ca[f]) != ref)[0])
                opt = OPTION_NAMES.get(mapping.entry_point, OPTION_NAMES["python"])
                mapping._breaks_warned = True
                warnings.warn(
                    f"chain breaks from Cα distances changed (frame {f} of this batch, between {mapping.describe(k)} "
                    f"and {mapping.describe(k + 1)}); the all-atom topology keeps those of the plan's frame. Pass "
                    f"{opt['system']} (bonds) or {opt['chain_break']} to fix the chains", stacklevel=3)
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
                bead_name: str = "CA", residues=None, deterministic: bool | None = None, box_vectors=None, *,
                skip_unknown: bool = False, system=None, chain_break=None, disulfides: bool | list = True):
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
        box_vectors : Quantity or array (nm), (3, 3) or (frames, 3, 3), optional
        skip_unknown, system, chain_break, disulfides, residues, bead_name, hydrogens :
            as in :meth:`plan`.

        Returns
        -------
        topology : openmm.app.Topology
        positions : Quantity (nm): (n_atoms, 3) for one frame and one sample, else
            (frames, samples, n_atoms, 3)

        Plans are cached by the topology's content (not its ``id``) and the options; the cache
        keeps the 8 most recent.
        """
        from collections import OrderedDict

        xyz = to_angstrom(positions)
        box0 = None if box_vectors is None else to_angstrom(box_vectors).reshape(-1, 3, 3)[0] / NM_TO_ANGSTROM
        key = (_topology_key(cg_topology), _system_key(system), bead_name,
               None if residues is None else tuple(int(r) for r in residues), hydrogens, bool(skip_unknown),
               None if chain_break is None else str(chain_break), str(disulfides), box0 is None)
        cache = self.__dict__.setdefault("_plan_cache", OrderedDict())
        plan = cache.get(key)
        if plan is None or plan.mapping.n_particles != xyz.shape[-2]:
            plan = self.plan(cg_topology, xyz[0] / NM_TO_ANGSTROM if xyz.ndim == 3 else xyz / NM_TO_ANGSTROM,
                             bead_name, residues, skip_unknown=skip_unknown, hydrogens=hydrogens,
                             disulfides=disulfides, box_vectors=box0, system=system, chain_break=chain_break)
            cache[key] = plan
            while len(cache) > 8:
                cache.popitem(last=False)
        cache.move_to_end(key)
        out = self.sample(plan, xyz / NM_TO_ANGSTROM, n_samples, seed, deterministic, box_vectors) / NM_TO_ANGSTROM
        if xyz.ndim == 2 and n_samples == 1:
            out = out[0, 0]
        return plan.topology, unit.Quantity(out, unit.nanometer)


def _topology_key(topology) -> tuple:
    """What a plan depends on in a CG topology (its content, not its ``id``, which Python reuses)."""
    top = _as_openmm_topology(topology)
    residues = tuple((r.chain.index, r.chain.id, r.name, r.id, tuple(a.name for a in r.atoms()))
                     for r in top.residues())
    bonds = tuple((a.index, b.index) for a, b in top.bonds())
    return residues, hash(bonds)


def _system_key(system) -> tuple | None:
    """A fingerprint of a CG System's bonds (``None`` without one)."""
    if system is None:
        return None
    from .topology import system_bonds

    n = system.getNumParticles()
    _, every = system_bonds(system, np.zeros(n, dtype=np.int64))
    box = tuple(tuple(float(x) for x in v) for v in system.getDefaultPeriodicBoxVectors()._value) \
        if system.usesPeriodicBoundaryConditions() else None
    return n, hash(tuple(every)), system.getNumConstraints(), box


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
