"""XTC through mdtraj (per-frame step and time stored exactly)."""

import os

import numpy as np

from .common import FrameFile


class XTCFrameFile(FrameFile):
    """XTC: compressed coordinates (1e-3 nm), step (int32), time (ps) and box of every frame."""

    format = 'xtc'

    def _open(self):
        from mdtraj.formats import XTCTrajectoryFile
        if not self._appending:
            self._handle = XTCTrajectoryFile(self._path, 'w', force_overwrite=True)
            return
        # mdtraj cannot append to XTC: copy the existing frames into a new file (lossless, the
        # coordinates are already quantized), then atomically put it in place of the old one.
        # The open handle follows the renamed file.
        stem, ext = os.path.splitext(self._path)
        tmp = '%s.appending%d%s' % (stem, os.getpid(), ext)
        out = XTCTrajectoryFile(tmp, 'w', force_overwrite=True)
        try:
            n = 0
            with XTCTrajectoryFile(self._path, 'r') as src:
                while True:
                    xyz, time, step, box = src.read(n_frames=1000)
                    if len(xyz) == 0:
                        break
                    if xyz.shape[1] != self._n_atoms:
                        raise ValueError('Cannot append to %s: the file has %d atoms but the topology has %d atoms'
                                         % (self._path, xyz.shape[1], self._n_atoms))
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

    def _write(self, pos, step, time, box):
        if not -2**31 <= step < 2**31:
            raise ValueError('XTC stores steps as 32-bit integers; step %d is out of range' % step)
        self._handle.write(pos[np.newaxis].astype(np.float32),
                           time=np.array([time], dtype=np.float32),
                           step=np.array([step], dtype=np.int32),
                           box=None if box is None else box[np.newaxis].astype(np.float32))
        self._handle.flush()
