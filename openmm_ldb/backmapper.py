"""Backmapper: CG (Cα) frames in, all-atom topology and positions out.

The one place where OpenMM units meet the model's Å tensors.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np
import openmm.unit as unit
import torch

from . import residues as rc
from .export import load_model
from .metrics import FrameCheck
from .topology import (
    OPTION_NAMES,
    AllAtomLayout,
    CGMapping,
    _as_openmm_topology,
    build_aa_topology,
    read_cg_topology,
)

NM_TO_ANGSTROM = 10.0
SAMPLING_STEPS = 10  # DDIM steps of the diffusion samples (the best guess is one pass)


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
    if mapping.numbering_gaps is not None and mapping.molecule is not None:
        # the pieces of one chain a numbering gap splits are one molecule (see topology._connect)
        pairs = pairs | (mapping.numbering_gaps & (mapping.molecule[1:] == mapping.molecule[:-1]))
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

    @functools.cached_property
    def frame_check(self) -> FrameCheck:
        """Clash, bond and GED check of this plan's heavy atoms (:class:`openmm_ldb.metrics.FrameCheck`),
        built on first use and kept: every frame of the plan shares its bond graph."""
        return FrameCheck.from_layout(self.layout, self.mapping.restype, self.segment, self.disulfides)


class Backmapper:
    """Backmap Cα coarse-grained structures to all-atom proteins with an LDB model.

    Parameters
    ----------
    model : str, optional
        Path of an exported model (TorchScript ``.pt``); the shipped default
        when omitted.
    device : str or torch.device, optional
        ``'cuda'`` when available, else ``'cpu'``.
    threads : int, optional
        CPU threads for PyTorch.
    steps : int, optional
        Denoising steps of the diffusion samples (default 10); the deterministic best guess is
        always one pass of its own network.
    max_batch_residues : int
        Frames x samples x residues per model call; larger batches are split (bounded memory).
    settings : dict, optional
        Sampler settings to override (``openmm_ldb.model.sampler.DEFAULT_SETTINGS``); e.g.
        ``{"guess_ddim_steps": 4}`` for a slower, more accurate best guess (measured in
        ``docs/benchmarks.rst``).
    """

    def __init__(self, model: str | None = None, device=None, threads: int | None = None, steps: int | None = None,
                 max_batch_residues: int = 16384, settings: dict | None = None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if threads:
            torch.set_num_threads(int(threads))
        self.module, self.card = load_model(model, self.device, settings=settings)
        self.model_path = model
        self.settings = dict(settings or {})
        self.steps = None if steps is None else int(steps)
        self.max_batch_residues = int(max_batch_residues)
        self._lock = threading.Lock()

    def with_settings(self, settings: dict) -> "Backmapper":
        """A backmapper of the same model, device and steps with ``settings`` added to its own
        (a new copy of the function: this one is left as it is)."""
        return Backmapper(self.model_path, self.device, steps=self.steps, max_batch_residues=self.max_batch_residues,
                          settings={**self.settings, **settings})

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
        disulfides : True (CYS pairs with Cα–Cα ≤ 6.8 Å and estimated CB–CB ≤ 6.5 Å in the reference
            frame; see :func:`find_disulfides`), False, or pairs
        box_vectors : Quantity or array (nm), (3, 3), optional
            The reference frame's periodic box (default: the System's default box when periodic).
        system : openmm.System, optional
            The CG System (``simulation.system``): its bonds say which residues are bonded and
            which particles form a molecule.  Without it the Topology's bonds are used; where
            neither gives bonds, the residue numbering (a jump in the numbers is a chain break),
            and only for chains without usable numbers the distance rule (Cα–Cα >
            ``chain_break``).  Splits the input does not state are reported as warnings.
        chain_break : length (Quantity or nm), optional
            Decide chains without System or Topology bonds by the distance rule at this threshold
            instead of by their numbering (default: the numbering; 0.65 nm for unnumbered chains).
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
            pairs = find_disulfides(ca, mapping.restype, segment=segment)
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
               deterministic: bool | None = None, box_vectors=None, seeds=None, keep_ca: bool = False,
               info: dict | None = None, stream_state: dict | None = None, *, frame_checks: bool = True) -> np.ndarray:
        """All-atom positions [frames, samples, n_atoms, 3] in Å for CG ``positions``.

        Parameters
        ----------
        plan : BackmapPlan
        positions : Quantity or array (nm), (n_particles, 3) or (frames, n_particles, 3)
        n_samples : int
            Structures per frame.
        seed : int, optional
            Frame f is sampled with ``seeds[f]`` (default ``seed + f``): the same frame and seed
            give the same atoms whatever the batch.
        deterministic : bool, optional
            The best guess (default: one sample and neither seed nor seeds).
        box_vectors : Quantity or array (nm), (3, 3) or (frames, 3, 3), optional
        seeds : array_like of int, optional
            One seed per frame.
        keep_ca : bool
            Keep every Cα exactly as given (bonds may then stretch on infeasible CG traces).
        info : dict, optional
            Receives per-frame figures, arrays of shape [frames, samples] unless noted:

            * ``ca_shift`` (Å): the largest Cα move of the structure;
            * ``expected_error`` [frames, samples, residues] (Å): each residue's expected
              side-chain error (its confidence);
            * ``clashes_per_1000``: heavy-atom pairs closer than 2.2 Å and more than three bonds
              apart, per 1000 heavy atoms;
            * ``bad_bonds``: bonds off their ideal length by 0.1 Å or more, and
              ``bond_validity``, the fraction of bonds within it;
            * ``ged``: bonds added (atoms within covalent reach) plus bonds broken.

            The last four are those of :func:`openmm_ldb.metrics.chain_metrics` (the structure
            against itself), from the plan's :attr:`BackmapPlan.frame_check`; they cost a
            neighbour search per structure and are computed only when ``info`` is given.
        stream_state : dict, optional
            A dict the caller keeps, empty at the start of a trajectory: makes the best guess
            coherent in time.  The frames are taken as consecutive, and residues whose
            neighbourhood barely moved keep the previous frame's rotamers (the model's ``stream``).
        frame_checks : bool
            False leaves the four check figures out of ``info`` (:meth:`stream` scores what it
            yields instead, after any refinement).

        Returns
        -------
        numpy.ndarray
            [frames, samples, n_atoms, 3], Å, in the order of ``plan.topology``.
        """
        ca = self._ca_frames(plan.mapping, positions, box_vectors)
        if deterministic is None:
            deterministic = n_samples == 1 and seed is None and seeds is None
        if seeds is None:
            if seed is None:
                seed = int(np.random.default_rng().integers(0, 2**31 - 1))
            seeds = int(seed) + np.arange(ca.shape[0])
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
        if len(seeds) != ca.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {ca.shape[0]} frames: give one seed per frame")
        n = plan.mapping.n_residues
        frames_per_call = max(1, self.max_batch_residues // max(1, n * n_samples))
        restype = torch.as_tensor(plan.mapping.restype, device=self.device)
        segment = torch.as_tensor(plan.segment, device=self.device)
        pairs = torch.as_tensor(np.asarray(plan.disulfides, dtype=np.int64).reshape(-1, 2), device=self.device)
        steps = self.steps or SAMPLING_STEPS
        out, shifts, errors, slots = [], [], [], []
        check = info is not None and frame_checks
        coherent = stream_state is not None and deterministic and n_samples == 1
        with self._lock, torch.no_grad():
            for start in range(0, ca.shape[0], frames_per_call):
                chunk = torch.as_tensor(ca[start:start + frames_per_call], dtype=torch.float32, device=self.device)
                frame_seeds = torch.as_tensor(seeds[start:start + frames_per_call], device=self.device)
                if coherent:
                    empty = torch.zeros(n, 1, device=self.device)
                    atoms, _, shift, error, *state = self.module.stream(
                        chunk, restype, segment, pairs, stream_state.get("anchor_idx", empty.long()),
                        stream_state.get("anchor_dist", empty), stream_state.get("chi", torch.zeros(n, 4, 2, device=self.device)),
                        "chi" in stream_state, bool(keep_ca))
                    stream_state.update(zip(("anchor_idx", "anchor_dist", "chi"), state))
                else:
                    atoms, _, shift, error = self.module(chunk, restype, segment, pairs, frame_seeds, steps,
                                                         int(n_samples), bool(deterministic), bool(keep_ca))
                atoms = atoms.cpu().numpy()
                out.append(plan.layout.positions_from_slots(atoms))
                shifts.append(shift.cpu().numpy())
                errors.append(error.cpu().numpy())
                if check:
                    slots.append(atoms)
        result = np.concatenate(out, axis=0)
        if not np.isfinite(result).all():
            raise FloatingPointError("the model produced non-finite coordinates")
        if info is not None:
            info["ca_shift"] = np.concatenate(shifts, axis=0)
            info["expected_error"] = np.concatenate(errors, axis=0)
        if check:  # outside the lock: other threads may use the model meanwhile
            figures = plan.frame_check(np.concatenate(slots, axis=0))
            info.update({k: figures[k] for k in ("clashes_per_1000", "bad_bonds", "bond_validity", "ged")})
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

    # ------------------------------------------------------------------ streaming
    def stream(self, plan: BackmapPlan, frames, n_samples: int = 1, seed: int | None = None, batch_size: int = 8,
               refiner=None, deterministic: bool | None = None, start_index: int = 0, coherent: bool = True,
               check: bool = False, **sample_options):
        """Backmap a stream of CG frames: the one pipeline of the reporters, snapshots and CLI.

        Parameters
        ----------
        plan : BackmapPlan
        frames : iterable
            CG frames, each a :class:`CGFrame` (positions in nm, optional box, step and time), a
            ``(positions, box, step, time)`` tuple or a plain positions array / Quantity.  An item
            ``None`` means "no more frames for now": the frames collected so far are backmapped
            without waiting for a full batch (live sources).
        n_samples : int
            All-atom structures per frame.
        seed : int, optional
            Base seed.  Frame ``k`` of the stream (counting from ``start_index``) is sampled with
            :func:`stream_seed` ``(seed, n_samples, k)``, whatever the batching; with one sample
            and no seed every frame gets the deterministic best guess.
        batch_size : int
            Frames backmapped per model call (the best guess; seeded samples go frame by frame so
            each frame keeps its own seed).
        refiner : Refiner, optional
            Restrained minimisation (:class:`openmm_ldb.refine.Refiner`) applied to every structure.
        deterministic : bool, optional
            Force the best-guess mode on or off (default: one sample and no seed).
        start_index : int
            Index of the first frame in the stream (to resume a stream with the same seeds).
        coherent : bool
            For the best guess: keep each residue's rotamer from one frame to the next while its
            neighbourhood barely moves (``stream_state`` of :meth:`sample`), so the stream does
            not flicker between rotamers; False backmaps every frame on its own.  The atoms do
            not depend on the batching either way.
        check : bool
            Score every yielded structure (after the refiner, if any) with the plan's
            :attr:`BackmapPlan.frame_check`: each frame's ``check`` holds ``clashes_per_1000``,
            ``bad_bonds``, ``bond_validity`` and ``ged`` per sample (as :meth:`sample`'s ``info``).
        **sample_options
            Passed on to :meth:`sample` (e.g. ``keep_ca``).

        Yields
        ------
        AAFrame
            In input order: ``index``, ``step``, ``time`` (ps), ``box`` (nm or None) and
            ``positions``, all-atom positions in nm with shape (n_samples, n_atoms, 3), ready for
            :class:`openmm_ldb.writers.TrajectoryWriter`; ``expected_error`` and ``ca_shift`` (Å,
            per sample, the model's largest Cα move) and, with ``check``, ``check``.
        """
        from .frames import CGFrame

        n_samples = int(n_samples)
        if deterministic is None:
            deterministic = n_samples == 1 and seed is None
        batch_size = max(1, int(batch_size))
        index = int(start_index)
        if coherent and deterministic and n_samples == 1 and "stream_state" not in sample_options:
            sample_options = dict(sample_options, stream_state={})
        batch: list = []
        for item in frames:
            if item is not None:
                batch.append(CGFrame.of(item))
            if batch and (item is None or len(batch) >= batch_size):
                yield from self._stream_batch(plan, batch, index, n_samples, seed, deterministic, refiner,
                                              sample_options, check)
                index += len(batch)
                batch = []
        if batch:
            yield from self._stream_batch(plan, batch, index, n_samples, seed, deterministic, refiner,
                                          sample_options, check)

    def _stream_batch(self, plan, batch, index, n_samples, seed, deterministic, refiner, options, check=False):
        from .frames import AAFrame

        boxes = [f.box for f in batch]
        periodic = any(b is not None for b in boxes)
        if periodic and any(b is None for b in boxes):
            raise ValueError("a stream mixes periodic frames (with a box) and frames without one")
        seeds = None if deterministic else [stream_seed(seed, n_samples, index + k) for k in range(len(batch))]
        if seeds is not None and seeds[0] is None:  # several samples without a seed
            seeds = [stream_seed(0, n_samples, index + k) for k in range(len(batch))]
        import inspect

        parameters = inspect.signature(self.sample).parameters
        if seeds is None or "seeds" in parameters:
            positions = np.stack([f.positions for f in batch])
            box = np.stack(boxes) if periodic else None
            kwargs = dict(options)
            if seeds is not None:
                kwargs["seeds"] = seeds
            if "frame_checks" in parameters:  # the stream scores what it yields, below (or nothing)
                kwargs["frame_checks"] = False
            info: dict = {}
            xyz = self.sample(plan, positions, n_samples, seed=None, deterministic=deterministic, box_vectors=box,
                              info=info, **kwargs)
            per_frame = [xyz[f] for f in range(len(batch))]
            errors = info.get("expected_error")
            shifts = info.get("ca_shift")
        else:  # a sampler without per-frame seeds: one call per frame keeps frame k's seed
            errors = shifts = None
            per_frame = [self.sample(plan, f.positions[None], n_samples, seed=seeds[k], deterministic=False,
                                     box_vectors=None if f.box is None else f.box[None], **options)[0]
                         for k, f in enumerate(batch)]
        for k, (frame, xyz) in enumerate(zip(batch, per_frame)):
            xyz = np.asarray(xyz, dtype=np.float64) / NM_TO_ANGSTROM  # [S, atoms, 3] nm
            if refiner is not None:
                xyz = np.stack([refiner.minimize(x) for x in xyz])
            figures = plan.frame_check.of_positions(xyz * NM_TO_ANGSTROM) if check else None
            yield AAFrame(index + k, frame.step, frame.time, frame.box, xyz,
                          None if errors is None else np.asarray(errors[k]),
                          None if shifts is None else np.asarray(shifts[k]), figures)


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


def trace_cb(ca: np.ndarray, segment: np.ndarray | None = None) -> np.ndarray:
    """[N, 3] CB estimated from the Cα trace alone (``rc.CB_FROM_TRACE``); NaN where a residue
    lacks a bonded neighbour on either side: the same ``segment``, or (without one) a Cα within
    ``CHAIN_BREAK_CA_CA`` (a soft CG bond stretches further; the segments know it is one)."""
    n = len(ca)
    out = np.full((n, 3), np.nan)
    if n < 3:
        return out
    a, b, c = ca[:-2], ca[1:-1], ca[2:]
    if segment is not None:
        seg = np.asarray(segment)
        ok = (seg[:-2] == seg[1:-1]) & (seg[1:-1] == seg[2:])
    else:
        ok = (np.linalg.norm(b - a, axis=-1) < rc.CHAIN_BREAK_CA_CA) & \
            (np.linalg.norm(c - b, axis=-1) < rc.CHAIN_BREAK_CA_CA)
    x = c - a
    x /= np.linalg.norm(x, axis=-1, keepdims=True) + 1e-9
    y = (b - a) - (c - b)
    y -= (y * x).sum(-1, keepdims=True) * x
    y /= np.linalg.norm(y, axis=-1, keepdims=True) + 1e-9
    z = np.cross(x, y)
    off = np.asarray(rc.CB_FROM_TRACE)
    cb = b + off[0] * x + off[1] * y + off[2] * z
    out[1:-1] = np.where(ok[:, None], cb, np.nan)
    return out


def find_disulfides(ca: np.ndarray, restype: np.ndarray, max_ca: float = rc.DISULFIDE_CA_CA_MAX,
                    min_ca: float = 3.8, segment: np.ndarray | None = None,
                    max_cb: float = rc.DISULFIDE_TRACE_CB_MAX) -> list[tuple[int, int]]:
    """CYS pairs close enough (Cα–Cα in [min_ca, max_ca] Å, estimated CB–CB under ``max_cb``) to
    bond, each CYS used once.

    Pairs are taken in order of how near their CB (estimated from the trace) sit to a disulfide's
    3.8 Å, or their Cα to 5.6 Å where a CB cannot be estimated: nearest Cα first would pair a
    cysteine with a closer neighbour that points away.  The CB window drops pairs whose side
    chains point apart (on 1,890 chains of our data it keeps every true pair of the Cα window).
    Against nearest Cα first, on those chains: 2,526 -> 2,632 of 2,741 disulfides found, and
    493 -> 291 pairs declared that the structure does not have."""
    cys = np.flatnonzero(restype == rc.RESTYPE_INDEX["CYS"])
    cb = trace_cb(ca, segment)
    cand = []
    for a in range(len(cys)):
        for b in range(a + 1, len(cys)):
            i, j = int(cys[a]), int(cys[b])
            if j - i < 2:
                continue
            d = float(np.linalg.norm(ca[i] - ca[j]))
            if min_ca <= d <= max_ca:
                if np.isfinite(cb[i]).all() and np.isfinite(cb[j]).all():
                    d_cb = float(np.linalg.norm(cb[i] - cb[j]))
                    if d_cb > max_cb:
                        continue
                    key = abs(d_cb - rc.DISULFIDE_CB_CB)
                else:
                    key = abs(d - 5.6)
                cand.append((key, i, j))
    used, pairs = set(), []
    for _, i, j in sorted(cand):
        if i not in used and j not in used:
            pairs.append((i, j))
            used.update((i, j))
    return pairs
