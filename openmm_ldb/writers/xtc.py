"""XTC through OpenMM's XTC library (``openmm.app.XTCFile``'s own frame writer), with the step and
time of every frame stored exactly; a continued file gets its frames appended in place.

``XTCFile.writeModel`` derives each frame's step from a first step and an interval; the writer
promises the caller's own step and time per frame, so it calls the frame writer underneath
``XTCFile`` (``xtc_write_frame``, which appends one frame to the file) directly.
"""

import os

import numpy as np

from .common import FrameFile

try:  # OpenMM >= 8.2
    from openmm.app.internal.xtc_utils import (
        get_xtc_natoms,
        get_xtc_nframes,
        xtc_write_frame,
    )
except ImportError:  # pragma: no cover - older OpenMM: mdtraj's XTC writer below
    xtc_write_frame = None


class XTCFrameFile(FrameFile):
    """XTC: compressed coordinates (1e-3 nm), step (int32), time (ps) and box of every frame."""

    format = 'xtc'

    def _open(self):
        if xtc_write_frame is None:
            return self._open_mdtraj()
        if not self._appending:
            if os.path.exists(self._path):
                os.remove(self._path)
            return
        natoms = get_xtc_natoms(self._path.encode('utf-8'))
        if natoms != self._n_atoms:
            raise ValueError(f'Cannot append to {self._path}: the file has {natoms} atoms but the topology has '
                             f'{self._n_atoms} atoms')
        self._n_frames = get_xtc_nframes(self._path.encode('utf-8'))

    def _write(self, pos, step, time, box):
        if not -2**31 <= step < 2**31:
            raise ValueError(f'XTC stores steps as 32-bit integers; step {step} is out of range')
        if xtc_write_frame is None:
            return self._write_mdtraj(pos, step, time, box)
        box = np.zeros((3, 3), dtype=np.float32) if box is None else np.asarray(box, dtype=np.float32)
        # opens the file, appends one frame and closes it: every frame is on disk when write() returns
        xtc_write_frame(self._path.encode('utf-8'), np.ascontiguousarray(pos, dtype=np.float32), box,
                        np.float32(time), np.int32(step))

    # mdtraj fallback (OpenMM < 8.2): a continued file is copied into a new one first
    def _open_mdtraj(self):
        from mdtraj.formats import XTCTrajectoryFile
        if not self._appending:
            self._handle = XTCTrajectoryFile(self._path, 'w', force_overwrite=True)
            return
        stem, ext = os.path.splitext(self._path)
        tmp = f'{stem}.appending{os.getpid()}{ext}'
        out = XTCTrajectoryFile(tmp, 'w', force_overwrite=True)
        try:
            n = 0
            with XTCTrajectoryFile(self._path, 'r') as src:
                while True:
                    xyz, time, step, box = src.read(n_frames=1000)
                    if len(xyz) == 0:
                        break
                    if xyz.shape[1] != self._n_atoms:
                        raise ValueError(f'Cannot append to {self._path}: the file has {xyz.shape[1]} atoms but the '
                                         f'topology has {self._n_atoms} atoms')
                    out.write(xyz, time=time, step=step, box=box)
                    n += len(xyz)
            out.flush()
            os.replace(tmp, self._path)
        except Exception:
            out.close()
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self._handle = out
        self._n_frames = n

    def _write_mdtraj(self, pos, step, time, box):
        self._handle.write(pos[np.newaxis].astype(np.float32), time=np.array([time], dtype=np.float32),
                           step=np.array([step], dtype=np.int32),
                           box=None if box is None else box[np.newaxis].astype(np.float32))
        self._handle.flush()
