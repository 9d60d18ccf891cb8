"""DCD through OpenMM's :class:`openmm.app.DCDFile` (a continued file keeps its header)."""

import os
import struct
import warnings

from openmm import unit
from openmm.app import DCDFile

from .common import _AKMA_PS, _DEFAULT_DT_PS, FrameFile


class DCDFrameFile(FrameFile):
    """DCD: first step, interval and time step in the header (written with the first frame);
    the box of every frame when the topology is periodic."""

    format = 'dcd'

    def __init__(self, *args, **kwargs):
        self._dcd = None
        super().__init__(*args, **kwargs)

    def _open(self):
        if not self._appending:
            # The header needs the first step, which is known only when the first frame arrives.
            if os.path.exists(self._path):
                os.remove(self._path)
            return
        self._file = open(self._path, 'r+b')  # noqa: SIM115 (open while writing)
        try:
            header = self._file.read(52)
            if len(header) < 52 or header[4:8] != b'CORD':
                raise ValueError('Cannot append to {}: not a valid DCD file'.format(self._path))
            n_set, first_step, interval = struct.unpack('<3i', header[8:20])
            delta = struct.unpack('<f', header[44:48])[0]
            has_box = struct.unpack('<i', header[48:52])[0] != 0
            if has_box != (self._topology.getPeriodicBoxVectors() is not None):
                raise ValueError('Cannot append to {}: the file {} periodic box but the topology {}'.format(self._path, 'has a' if has_box else 'has no',
                                    'is periodic' if not has_box else 'is not periodic'))
            dt = delta*_AKMA_PS
            if self._dt is not None and abs(dt - self._dt) > 1e-6*max(abs(dt), 1e-12):
                warnings.warn('Appending to {}: using the existing header time step {:g} ps instead of dt={:g} ps'.format(self._path, dt, self._dt))
            if self._interval is not None and self._interval != interval:
                warnings.warn('Appending to %s: using the existing header interval %d instead of %d'
                              % (self._path, interval, self._interval))
            self._dcd_first_step = first_step
            self._dcd_interval = max(interval, 1)
            # OpenMM's DCDFile reads the atom count and frame count from the header.
            self._dcd = DCDFile(self._file, self._topology, dt*unit.picoseconds, first_step,
                                self._dcd_interval, append=True)
            self._n_frames = n_set
        except Exception:
            self._file.close()
            self._file = None
            raise

    def _create_dcd(self, first_step, time=None):
        dt = self._dt
        if dt is None:
            if time is not None and first_step > 0 and time > 0:
                dt = time/first_step
            else:
                dt = _DEFAULT_DT_PS
        if not -2**31 <= first_step < 2**31:
            raise ValueError('DCD stores the first step as a 32-bit integer; step %d is out of range'
                             % first_step)
        self._dcd_first_step = int(first_step)
        self._dcd_interval = self._interval if self._interval is not None else 1
        self._file = open(self._path, 'w+b')  # noqa: SIM115 (open while writing)
        self._dcd = DCDFile(self._file, self._topology, dt*unit.picoseconds, self._dcd_first_step,
                            self._dcd_interval)
        self._file.flush()

    def _write(self, pos, step, time, box):
        if self._dcd is None:
            self._create_dcd(step, time)
        expected = self._dcd_first_step + self._n_frames*self._dcd_interval
        if step != expected and not self._step_warned:
            self._step_warned = True
            warnings.warn('DCD %s stores only a first step (%d) and an interval (%d): frame %d has step %d '
                          'but the file will imply step %d. Pass interval= to match your report interval.'
                          % (self._path, self._dcd_first_step, self._dcd_interval, self._n_frames,
                             step, expected))
        box_q = None if box is None else [tuple(v) for v in box]*unit.nanometers
        self._dcd.writeModel(pos*unit.nanometers, periodicBoxVectors=box_q)  # flushes

    def close(self):
        try:
            if self._dcd is None:  # no frame arrived: still leave a valid DCD file with zero frames
                self._create_dcd(0)
        finally:
            super().close()
