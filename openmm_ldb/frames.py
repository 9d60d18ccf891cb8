"""The frames of :meth:`Backmapper.stream`: CG frames in, written-ready all-atom frames out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import openmm.unit as unit

__all__ = ["AAFrame", "CGFrame"]


def _nm(value) -> np.ndarray:
    if unit.is_quantity(value):
        value = value.value_in_unit(unit.nanometer)
    return np.asarray(value, dtype=np.float64)


@dataclass
class CGFrame:
    """One CG frame of a stream: positions (nm, [n_particles, 3]), box vectors (nm, [3, 3]) or
    None, and the step and time (ps) it was taken at."""

    positions: np.ndarray
    box: np.ndarray | None = None
    step: int | None = None
    time: float | None = None

    @classmethod
    def of(cls, item) -> CGFrame:
        """A CGFrame from a CGFrame, a ``(positions, box, step, time)`` tuple or positions alone."""
        if isinstance(item, CGFrame):
            return item
        if isinstance(item, tuple):
            positions, box, step, time = (tuple(item) + (None, None, None))[:4]
        else:
            positions, box, step, time = item, None, None, None
        if unit.is_quantity(time):
            time = time.value_in_unit(unit.picosecond)
        return cls(_nm(positions), None if box is None else _nm(box).reshape(3, 3),
                   None if step is None else int(step), None if time is None else float(time))


@dataclass
class AAFrame:
    """One backmapped frame of :meth:`Backmapper.stream`: ``positions`` [n_samples, n_atoms, 3] in
    nm, with the CG frame's ``index`` in the stream, ``step``, ``time`` (ps) and ``box`` (nm)."""

    index: int
    step: int | None
    time: float | None
    box: np.ndarray | None
    positions: np.ndarray
    # [n_samples, n_cg_residues] expected side-chain error (Å) of every backmapped residue
    expected_error: np.ndarray | None = None
    # [n_samples] the model's largest Cα move (Å)
    ca_shift: np.ndarray | None = None
    # with Backmapper.stream(check=True): FrameCheck figures per sample (clashes_per_1000,
    # bad_bonds, bond_validity, ged, ...), each [n_samples], of the positions as yielded
    check: dict | None = None
