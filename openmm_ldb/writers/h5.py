"""mdtraj HDF5 (topology inside, per-frame time and box, steps in an extra ``/step`` array)."""

import os

import numpy as np

from .common import FrameFile


class HDF5FrameFile(FrameFile):
    """mdtraj HDF5: needs PyTables (``pip install tables``)."""

    format = 'h5'

    def _open(self):
        try:
            import tables
        except ImportError:
            raise ImportError("Writing {} (.h5) requires PyTables: pip install tables".format(self._path)) from None
        import mdtraj
        from mdtraj.formats import HDF5TrajectoryFile
        if not self._appending and os.path.exists(self._path):
            os.remove(self._path)
        # Mode 'a' creates a new file or continues an existing one, and (unlike 'w') gives
        # access to the underlying PyTables root, used for the extra '/step' array.
        self._handle = HDF5TrajectoryFile(self._path, 'a')
        try:
            root = self._handle.root
            if 'coordinates' in root:
                coords = root.coordinates
                if coords.shape[1] != self._n_atoms:
                    raise ValueError('Cannot append to %s: the file has %d atoms but the topology has %d atoms'
                                     % (self._path, coords.shape[1], self._n_atoms))
                self._n_frames = coords.shape[0]
            if 'topology' not in root:
                self._handle.topology = mdtraj.Topology.from_openmm(self._topology)
            if 'step' in root:
                self._step_node = root.step
            else:
                import tables
                self._step_node = root._v_file.create_earray(
                    root, 'step', atom=tables.Int64Atom(), shape=(0,),
                    title='Simulation step of each frame (openmm-ldb)')
                if self._n_frames:
                    # Frames written by another program: use their indices.
                    self._step_node.append(np.arange(self._n_frames, dtype=np.int64))
            self._handle.flush()
        except Exception:
            self._handle.close()
            self._handle = None
            raise

    def _write(self, pos, step, time, box):
        lengths = angles = None
        if box is not None:
            from mdtraj.utils import box_vectors_to_lengths_and_angles
            a, b, c, alpha, beta, gamma = box_vectors_to_lengths_and_angles(box[0], box[1], box[2])
            lengths = np.array([[a, b, c]], dtype=np.float32)
            angles = np.array([[alpha, beta, gamma]], dtype=np.float32)
        self._handle.write(pos[np.newaxis].astype(np.float32), time=np.array([time], dtype=np.float32),
                           cell_lengths=lengths, cell_angles=angles)
        self._step_node.append(np.array([step], dtype=np.int64))
        self._handle.flush()
