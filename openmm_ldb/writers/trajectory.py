"""
Stream all-atom frames to a trajectory file, one frame at a time.

The binary and text formats are written exclusively by OpenMM's and mdtraj's
own writers (:class:`openmm.app.DCDFile`, :class:`openmm.app.PDBFile`,
:class:`openmm.app.PDBxFile`, :class:`mdtraj.formats.XTCTrajectoryFile` and
:class:`mdtraj.formats.HDF5TrajectoryFile`).  This module only adds frame
validation, append/continue logic, per-frame flushing and the companion
topology PDB file for formats that carry no topology.

Per-format notes
----------------
``.dcd``
    The DCD header stores only a first step, a step interval and a time step;
    per-frame step numbers and times are *not* stored.  The header is written
    when the first frame arrives: its ``firstStep`` is the ``step`` of that
    frame (0 if none), the interval is the ``interval`` constructor argument
    (default 1) and the time step is ``dt`` (if not given, inferred as
    ``time/step`` of the first frame when both are known and ``step > 0``,
    otherwise 1 fs).  A warning is issued once if a later frame's step does
    not match ``firstStep + k*interval``.  Note that mdtraj reports DCD frame
    times as the frame index regardless of the header.  Periodic box vectors
    are written only if the Topology is periodic (OpenMM's rule).
``.xtc``
    Step (int32) and time (float32, ps) are stored exactly per frame;
    coordinates are compressed to 1e-3 nm.  mdtraj cannot open XTC files for
    appending, so in append mode the existing frames are copied (through
    mdtraj, losslessly: they are already quantized) into a new file which
    atomically replaces the old one before new frames are added.
``.pdb``
    Multi-model PDB (MODEL/ENDMDL).  The footer (CONECT records and END) is
    rewritten after every model so the file is complete at all times.  No
    per-frame step or time is stored; the box is the header's CRYST1 (from the
    Topology), and a frame whose box differs gets its own CRYST1 before MODEL
    (as mdtraj and VMD write NPT trajectories).  Disulfides get SSBOND records
    in the header and CONECT records in the footer.
``.cif``/``.pdbx``/``.mmcif``
    Multi-model PDBx/mmCIF; frames are rows of the ``atom_site`` loop with
    increasing ``pdbx_PDB_model_num``.  No per-frame step, time or box.
``.h5``
    mdtraj HDF5 format with the topology stored inside and per-frame time
    (float32, ps).  The step of each frame is stored in an extra int64 array
    ``/step`` (ignored by ``mdtraj.load``).  While the writer is open, another
    process can read the file only with ``HDF5_USE_FILE_LOCKING=FALSE``.
"""

import os

import numpy as np

from .common import (
    _format_of,
    _replace_atomically,
    _to_nm_array,
    _to_ps,
    as_openmm_topology,
    default_topology_path,
    ids_writable,
    pdb_named_topology,
    sample_paths,
    write_pdb_file,
)
from .dcd import DCDFrameFile
from .h5 import HDF5FrameFile
from .pdb import PDBFrameFile
from .pdbx import PDBxFrameFile
from .xtc import XTCFrameFile

FRAME_FILES = {f.format: f for f in (DCDFrameFile, XTCFrameFile, PDBFrameFile, PDBxFrameFile, HDF5FrameFile)}


def open_sample_writers(path, n_samples, topology, **kwargs):
    """Open one :class:`TrajectoryWriter` per sample (see :func:`sample_paths`).

    Each DCD/XTC sample file gets its own companion topology PDB
    (``aa_s0.pdb`` beside ``aa_s0.dcd``) unless ``topology_pdb`` is given
    in ``kwargs``, in which case that single file is shared.

    Parameters
    ----------
    path : str
        The trajectory path requested by the user
    n_samples : int
        The number of samples
    topology : openmm.app.Topology
        The all-atom topology
    **kwargs
        Further keyword arguments passed to :class:`TrajectoryWriter`

    Returns
    -------
    list of TrajectoryWriter
    """
    writers = []
    try:
        for p in sample_paths(path, n_samples):
            writers.append(TrajectoryWriter(p, topology, **kwargs))
    except Exception:
        for w in writers:
            w.close()
        raise
    return writers


class TrajectoryWriter:
    """TrajectoryWriter writes all-atom frames one at a time to a trajectory file.

    The format is chosen from the file extension: ``.dcd``, ``.xtc``, ``.pdb``
    (multi-model), ``.cif``/``.pdbx``/``.mmcif`` (multi-model) or ``.h5``
    (mdtraj HDF5).  Every frame is flushed to the operating system as soon as
    it is written, so a reader sees all frames written so far and the file is
    valid even if the process dies.  For formats without topology (DCD, XTC)
    a PDB file holding the first frame is written beside the trajectory, so
    that e.g. ``mdtraj.load('aa.dcd', top='aa.pdb')`` works.

    To use it, create a TrajectoryWriter (or use it as a context manager),
    call write() once per frame, then close().
    """

    def __init__(self, path, topology, append=False, topology_pdb=None, dt=None,
                 interval=None, keep_ids=None, standard_names=True):
        """Create a TrajectoryWriter.

        Parameters
        ----------
        path : str
            The file to write to.  The extension selects the format.
        topology : openmm.app.Topology or mdtraj.Topology
            The all-atom topology of the frames
        append : bool=False
            If True, continue an existing file: the frame count (and for
            PDB/PDBx the model numbering, for DCD the step numbering) continue
            from what is already in the file.  If the file does not exist or is
            empty, a new file is created.  If False, an existing file is
            overwritten.
        topology_pdb : str=None
            Where to write the companion topology PDB (the first frame).  By
            default, for DCD and XTC it is ``<stem>.pdb`` beside the trajectory;
            for other formats none is written unless this is given.  In append
            mode an existing topology PDB is kept.
        dt : time=None
            The integration time step (Quantity or float in ps).  DCD stores it
            in its header; for XTC/H5 frames written without ``time`` it sets
            ``time = step*dt``.  See the module notes for DCD inference.
        interval : int=None
            Steps between frames; only used for the DCD header (default 1).
            In append mode the existing DCD header's interval is used.
        keep_ids : bool=None
            Passed to OpenMM's PDB/PDBx writers: keep the residue and chain IDs
            of the Topology instead of renumbering them.  By default they are
            kept whenever they fit the format (see :func:`ids_writable`).
        standard_names : bool=True
            Write PDB residue names (CYS with SSBOND, HIS...) instead of the
            Topology's force-field names (CYX, HIE...): protein residues are then
            ATOM records, as other tools expect.  False writes the names as
            they are (non-standard names become HETATM).
        """
        self._path = os.fspath(path)
        self._format = _format_of(self._path)
        topology = as_openmm_topology(topology)
        self._topology = pdb_named_topology(topology) if standard_names else topology
        self._n_atoms = topology.getNumAtoms()
        self._dt = _to_ps(dt)
        self._interval = None if interval is None else int(interval)
        if self._interval is not None and self._interval < 1:
            raise ValueError('interval must be >= 1, got %d' % self._interval)
        if keep_ids is None:
            keep_ids = ids_writable(self._topology, 'cif' if self._format == 'cif' else 'pdb')
        self._keep_ids = bool(keep_ids)
        self._n_written = 0  # frames written by this writer
        self._closed = False

        if topology_pdb is not None:
            self._topology_pdb = os.fspath(topology_pdb)
        elif self._format in ('dcd', 'xtc'):
            self._topology_pdb = default_topology_path(self._path)
        else:
            self._topology_pdb = None

        exists = os.path.exists(self._path) and os.path.getsize(self._path) > 0
        appending = bool(append) and exists
        self._topology_pdb_written = bool(appending and self._topology_pdb is not None
                                          and os.path.exists(self._topology_pdb))
        self._out = FRAME_FILES[self._format](self._path, self._topology, appending, self._dt, self._interval,
                                              self._keep_ids)

    # ------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------

    @property
    def path(self):
        """The trajectory path."""
        return self._path

    @property
    def format(self):
        """The format name: 'dcd', 'xtc', 'pdb', 'cif' or 'h5'."""
        return self._format

    @property
    def topology_pdb(self):
        """The companion topology PDB path, or None if none is written."""
        return self._topology_pdb

    @property
    def n_frames(self):
        """Number of frames in the file, including frames already present when appending."""
        return self._out.n_frames

    @property
    def closed(self):
        """Whether close() has been called."""
        return self._closed

    def write(self, positions, step=None, time=None, box_vectors=None):
        """Write one frame.

        Parameters
        ----------
        positions : Quantity or numpy.ndarray
            Atom positions, shape (n_atoms, 3), as a Quantity or in nanometers
        step : int=None
            The simulation step of this frame.  Defaults to the frame index.
        time : time=None
            The simulation time of this frame (Quantity or float in ps).
            Defaults to ``step*dt`` if ``dt`` was given, else the frame index.
        box_vectors : Quantity or numpy.ndarray=None
            Periodic box vectors, shape (3, 3), as a Quantity or in nanometers.
            Defaults to the Topology's box vectors (if any).  PDB writes a
            CRYST1 for a frame whose box differs from the header's; PDBx keeps
            the Topology's cell.

        Raises
        ------
        ValueError
            If the positions do not have shape (n_atoms, 3) or contain NaN or
            infinite values.  Nothing is written in that case and the file
            stays valid.
        """
        if self._closed:
            raise ValueError('Cannot write to closed TrajectoryWriter ({})'.format(self._path))
        frame = self._out.n_frames
        pos = _to_nm_array(positions, 'positions')
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise ValueError('positions must have shape (n_atoms, 3) = (%d, 3), got %s'
                             % (self._n_atoms, pos.shape))
        if pos.shape[0] != self._n_atoms:
            raise ValueError('positions have %d atoms but the topology has %d atoms (%s)'
                             % (pos.shape[0], self._n_atoms, self._path))
        step = frame if step is None else int(step)
        if not np.all(np.isfinite(pos)):
            bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
            raise ValueError('Non-finite (NaN or inf) coordinates in frame %d (step %d) at %d atom(s), '
                             'first atom index %d; frame not written to %s'
                             % (frame, step, len(bad), bad[0], self._path))
        time = _to_ps(time)
        if time is None:
            time = step*self._dt if self._dt is not None else float(frame)
        box = None
        if box_vectors is not None:
            box = _to_nm_array(box_vectors, 'box_vectors')
            if box.shape != (3, 3):
                raise ValueError('box_vectors must have shape (3, 3), got {}'.format(box.shape))
            if not np.all(np.isfinite(box)):
                raise ValueError('Non-finite box vectors in frame %d (step %d)' % (frame, step))
        elif self._topology.getPeriodicBoxVectors() is not None:
            box = _to_nm_array(self._topology.getPeriodicBoxVectors(), 'box_vectors')

        if not self._topology_pdb_written and self._topology_pdb is not None:
            self._write_topology_pdb(pos)
        self._out.write(pos, step, time, box)
        self._n_written += 1

    def flush(self):
        """Flush buffered data to the file (write() already does this)."""
        if not self._closed:
            self._out.flush()

    def close(self):
        """Close the file.  Calling it more than once is harmless."""
        if self._closed:
            return
        self._closed = True
        self._out.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.close()
        return False

    def __repr__(self):
        return '<TrajectoryWriter %s (%s), %d frames%s>' % (
            self._path, self._format, self._out.n_frames, ', closed' if self._closed else '')

    # ------------------------------------------------------------------
    # Companion topology
    # ------------------------------------------------------------------

    def _write_topology_pdb(self, pos):
        directory = os.path.dirname(self._topology_pdb)
        if directory:
            os.makedirs(directory, exist_ok=True)
        _replace_atomically(self._topology_pdb, lambda f: write_pdb_file(
            self._topology, pos, f, keep_ids=ids_writable(self._topology), standard_names=False))
        self._topology_pdb_written = True
