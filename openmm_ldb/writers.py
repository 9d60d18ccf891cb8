"""
writers.py: Stream all-atom frames to a trajectory file, one frame at a time.

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

import io
import os
import warnings
from math import pi

import numpy as np
from openmm import unit
from openmm.app import DCDFile, PDBFile, PDBxFile, Topology
from openmm.app.internal.unitcell import computeLengthsAndAngles

from . import residues as rc

__all__ = [
    'SUPPORTED_EXTENSIONS',
    'TrajectoryWriter',
    'default_topology_path',
    'open_sample_writers',
    'pdb_named_topology',
    'sample_paths',
    'ssbond_records',
    'write_pdb_file',
    'writer_for_samples',
]

_FORMATS = {
    '.dcd': 'dcd',
    '.xtc': 'xtc',
    '.pdb': 'pdb',
    '.cif': 'cif',
    '.pdbx': 'cif',
    '.mmcif': 'cif',
    '.h5': 'h5',
}
SUPPORTED_EXTENSIONS = tuple(_FORMATS)

# Conversion factor between picoseconds and the AKMA time unit used in DCD headers
# (the same constant OpenMM's DCDFile uses).
_AKMA_PS = 0.04888821
_DEFAULT_DT_PS = 0.001


def _format_of(path):
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in _FORMATS:
        raise ValueError("Unsupported trajectory extension '%s' for %s; supported: %s"
                         % (ext, path, ', '.join(SUPPORTED_EXTENSIONS)))
    return _FORMATS[ext]


def default_topology_path(path):
    """Return the default companion topology PDB path for a trajectory path.

    Parameters
    ----------
    path : str
        Trajectory path, e.g. ``'run/aa.dcd'``

    Returns
    -------
    str
        ``'run/aa.pdb'``
    """
    return os.path.splitext(os.fspath(path))[0] + '.pdb'


def sample_paths(path, n_samples):
    """Return per-sample trajectory paths for ``n_samples`` separate files.

    ``'aa.dcd'`` becomes ``['aa_s0.dcd', 'aa_s1.dcd', ...]``.  With
    ``n_samples == 1`` the path is returned unchanged (``['aa.dcd']``).

    Parameters
    ----------
    path : str
        The trajectory path requested by the user
    n_samples : int
        The number of samples (separate files)

    Returns
    -------
    list of str
        One path per sample
    """
    n_samples = int(n_samples)
    if n_samples < 1:
        raise ValueError('n_samples must be >= 1, got %d' % n_samples)
    path = os.fspath(path)
    if n_samples == 1:
        return [path]
    stem, ext = os.path.splitext(path)
    return ['%s_s%d%s' % (stem, i, ext) for i in range(n_samples)]


# Name used in the project brief.
writer_for_samples = sample_paths


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


def _to_nm_array(value, name):
    if unit.is_quantity(value):
        value = value.value_in_unit(unit.nanometers)
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError('%s could not be converted to a numeric array: %s' % (name, e))


def _to_ps(value):
    if value is None:
        return None
    if unit.is_quantity(value):
        value = value.value_in_unit(unit.picoseconds)
    return float(value)


def pdb_named_topology(topology):
    """A copy of ``topology`` with PDB residue names: force-field variants (CYX, HIE, ASH...) and
    other engines' names (GLYT, MSE...) become the standard amino-acid name, so every writer
    emits protein residues as ``ATOM`` records and disulfides as ``SSBOND`` (PDB) or ``disulf``
    (PDBx) from the SG–SG bond.  Other residues (ACE, NME caps...) keep their names."""
    top = Topology()
    atoms = {}
    for chain in topology.chains():
        c = top.addChain(chain.id)
        for res in chain.residues():
            try:
                name = rc.canonical_residue_name(res.name)
            except KeyError:
                name = res.name
            r = top.addResidue(name, c, id=res.id, insertionCode=getattr(res, 'insertionCode', ''))
            for atom in res.atoms():
                atoms[atom] = top.addAtom(atom.name, atom.element, r, id=atom.id)
    for bond in topology.bonds():
        top.addBond(atoms[bond[0]], atoms[bond[1]], type=bond.type, order=bond.order)
    top.setPeriodicBoxVectors(topology.getPeriodicBoxVectors())
    return top


def ids_writable(topology, fmt='pdb'):
    """Whether the chain ids and residue numbers of ``topology`` fit the format (PDB: one-letter
    chain ids, residue numbers of at most 4 characters; PDBx: every chain its own id)."""
    if fmt == 'cif':
        ids = [c.id for c in topology.chains()]
        return len(set(ids)) == len(ids) and all(ids)
    for chain in topology.chains():
        if len(chain.id) != 1:
            return False
        for res in chain.residues():
            rid = str(res.id).strip()
            if not rid.lstrip('-').isdigit() or len(rid) > 4:
                return False
    return True


def _pdb_ids(topology, keep_ids):
    """(chain id, residue number) as OpenMM's PDBFile writes them."""
    ids = {}
    for c, chain in enumerate(topology.chains()):
        chain_id = chain.id if keep_ids else chr(ord('A') + c % 26)
        for r, res in enumerate(chain.residues()):
            ids[res] = ((chain_id or ' ')[:1], str(res.id) if keep_ids else str((r + 1) % 10000))
    return ids


def ssbond_records(topology, positions=None, keep_ids=True):
    """PDB ``SSBOND`` lines for the SG–SG bonds of ``topology`` (with lengths when positions,
    Quantity or nm, are given)."""
    xyz = None
    if positions is not None:
        xyz = _to_nm_array(positions, 'positions').reshape(-1, 3) * 10.0
    ids = _pdb_ids(topology, keep_ids)
    lines = []
    for bond in topology.bonds():
        a, b = bond[0], bond[1]
        if a.name != 'SG' or b.name != 'SG' or a.residue is b.residue:
            continue
        if a.residue.index > b.residue.index:
            a, b = b, a
        (c1, r1), (c2, r2) = ids[a.residue], ids[b.residue]
        ic1 = (getattr(a.residue, 'insertionCode', '') or ' ')[:1] if keep_ids else ' '
        ic2 = (getattr(b.residue, 'insertionCode', '') or ' ')[:1] if keep_ids else ' '
        line = 'SSBOND %3d CYS %s %4s%s   CYS %s %4s%s' % (len(lines) + 1, c1, r1, ic1, c2, r2, ic2)
        line = line.ljust(59) + '  1555   1555'
        if xyz is not None:
            line += ' %5.2f' % np.linalg.norm(xyz[a.index] - xyz[b.index])
        lines.append(line)
    return lines


def _cryst1(box):
    a, b, c, alpha, beta, gamma = computeLengthsAndAngles([tuple(v) for v in np.asarray(box, dtype=np.float64)])
    return 'CRYST1%9.3f%9.3f%9.3f%7.2f%7.2f%7.2f P 1           1 ' % (
        a*10, b*10, c*10, alpha*180/pi, beta*180/pi, gamma*180/pi)


def _pdb_header(topology, positions=None, keep_ids=True):
    buf = io.StringIO()
    PDBFile.writeHeader(topology, buf)
    head = buf.getvalue().splitlines()
    lines = [h for h in head if h.startswith('REMARK')]
    lines += ssbond_records(topology, positions, keep_ids)
    lines += [h for h in head if not h.startswith('REMARK')]
    return '\n'.join(lines) + '\n'


def write_pdb_file(topology, positions, file, keep_ids=None, standard_names=True):
    """Write one structure as a complete PDB file: PDB residue names (unless
    ``standard_names=False``), ``SSBOND`` and ``CONECT`` records for disulfides, CRYST1 for a
    periodic topology, and the topology's chain ids and residue numbers when they fit."""
    if standard_names:
        topology = pdb_named_topology(topology)
    if keep_ids is None:
        keep_ids = ids_writable(topology)
    pos = _to_nm_array(positions, 'positions')
    body = io.StringIO()
    PDBFile.writeModel(topology, pos*unit.nanometers, body, keepIds=keep_ids)
    PDBFile.writeFooter(topology, body)
    file.write(_pdb_header(topology, pos, keep_ids) + body.getvalue())



def _replace_atomically(path, write_func):
    tmp = '%s.tmp%d' % (path, os.getpid())
    try:
        with open(tmp, 'w') as f:
            write_func(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
        if not isinstance(topology, Topology):
            to_openmm = getattr(topology, 'to_openmm', None)
            if to_openmm is None:
                raise TypeError('topology must be an openmm.app.Topology or mdtraj.Topology, got %r'
                                % type(topology))
            topology = to_openmm()
        self._topology = pdb_named_topology(topology) if standard_names else topology
        self._n_atoms = topology.getNumAtoms()
        self._dt = _to_ps(dt)
        self._interval = None if interval is None else int(interval)
        if self._interval is not None and self._interval < 1:
            raise ValueError('interval must be >= 1, got %d' % self._interval)
        if keep_ids is None:
            keep_ids = ids_writable(self._topology, 'cif' if self._format == 'cif' else 'pdb')
        self._keep_ids = bool(keep_ids)
        self._header_box = self._topology.getPeriodicBoxVectors()
        if self._header_box is not None:
            self._header_box = _to_nm_array(self._header_box, 'box_vectors')
        self._n_frames = 0
        self._n_written = 0  # frames written by this writer
        self._closed = False
        self._step_warned = False

        if topology_pdb is not None:
            self._topology_pdb = os.fspath(topology_pdb)
        elif self._format in ('dcd', 'xtc'):
            self._topology_pdb = default_topology_path(self._path)
        else:
            self._topology_pdb = None

        exists = os.path.exists(self._path) and os.path.getsize(self._path) > 0
        self._appending = bool(append) and exists
        if self._appending and self._topology_pdb is not None and os.path.exists(self._topology_pdb):
            self._topology_pdb_written = True
        else:
            self._topology_pdb_written = False

        # Format-specific state
        self._file = None       # raw file object (DCD, PDB, PDBx)
        self._dcd = None        # openmm.app.DCDFile
        self._handle = None     # mdtraj file object (XTC, HDF5)
        self._footer_offset = None
        self._step_node = None

        opener = getattr(self, '_open_' + self._format)
        opener()

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
        return self._n_frames

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
            Defaults to the Topology's box vectors (if any).  Ignored by PDB
            and PDBx, whose box comes from the Topology.

        Raises
        ------
        ValueError
            If the positions do not have shape (n_atoms, 3) or contain NaN or
            infinite values.  Nothing is written in that case and the file
            stays valid.
        """
        if self._closed:
            raise ValueError('Cannot write to closed TrajectoryWriter (%s)' % self._path)
        frame = self._n_frames
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
                raise ValueError('box_vectors must have shape (3, 3), got %s' % (box.shape,))
            if not np.all(np.isfinite(box)):
                raise ValueError('Non-finite box vectors in frame %d (step %d)' % (frame, step))
        elif self._topology.getPeriodicBoxVectors() is not None:
            box = _to_nm_array(self._topology.getPeriodicBoxVectors(), 'box_vectors')

        if not self._topology_pdb_written and self._topology_pdb is not None:
            self._write_topology_pdb(pos)
        getattr(self, '_write_' + self._format)(pos, step, time, box)
        self._n_frames += 1
        self._n_written += 1

    def flush(self):
        """Flush buffered data to the file (write() already does this)."""
        if self._closed:
            return
        if self._file is not None:
            self._file.flush()
        if self._handle is not None:
            self._handle.flush()

    def close(self):
        """Close the file.  Calling it more than once is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._format == 'dcd' and self._dcd is None:
                # No frame arrived: still leave a valid DCD file with zero frames.
                self._create_dcd(0)
            if self._handle is not None:
                self._handle.close()
        finally:
            self._handle = None
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.close()
        return False

    def __repr__(self):
        return '<TrajectoryWriter %s (%s), %d frames%s>' % (
            self._path, self._format, self._n_frames, ', closed' if self._closed else '')

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

    # ------------------------------------------------------------------
    # DCD
    # ------------------------------------------------------------------

    def _open_dcd(self):
        if not self._appending:
            # The header needs the first step, which is known only when the first frame arrives.
            if os.path.exists(self._path):
                os.remove(self._path)
            return
        import struct
        self._file = open(self._path, 'r+b')
        try:
            header = self._file.read(52)
            if len(header) < 52 or header[4:8] != b'CORD':
                raise ValueError('Cannot append to %s: not a valid DCD file' % self._path)
            n_set, first_step, interval = struct.unpack('<3i', header[8:20])
            delta = struct.unpack('<f', header[44:48])[0]
            has_box = struct.unpack('<i', header[48:52])[0] != 0
            if has_box != (self._topology.getPeriodicBoxVectors() is not None):
                raise ValueError('Cannot append to %s: the file %s periodic box but the topology %s'
                                 % (self._path, 'has a' if has_box else 'has no',
                                    'is periodic' if not has_box else 'is not periodic'))
            dt = delta*_AKMA_PS
            if self._dt is not None and abs(dt - self._dt) > 1e-6*max(abs(dt), 1e-12):
                warnings.warn('Appending to %s: using the existing header time step %g ps instead of dt=%g ps'
                              % (self._path, dt, self._dt))
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
        self._file = open(self._path, 'w+b')
        self._dcd = DCDFile(self._file, self._topology, dt*unit.picoseconds, self._dcd_first_step,
                            self._dcd_interval)
        self._file.flush()

    def _write_dcd(self, pos, step, time, box):
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

    # ------------------------------------------------------------------
    # XTC
    # ------------------------------------------------------------------

    def _open_xtc(self):
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

    def _write_xtc(self, pos, step, time, box):
        if not -2**31 <= step < 2**31:
            raise ValueError('XTC stores steps as 32-bit integers; step %d is out of range' % step)
        self._handle.write(pos[np.newaxis].astype(np.float32),
                           time=np.array([time], dtype=np.float32),
                           step=np.array([step], dtype=np.int32),
                           box=None if box is None else box[np.newaxis].astype(np.float32))
        self._handle.flush()

    # ------------------------------------------------------------------
    # HDF5
    # ------------------------------------------------------------------

    def _open_h5(self):
        try:
            import tables  # noqa: F401
        except ImportError:
            raise ImportError("Writing %s (.h5) requires PyTables: pip install tables" % self._path) from None
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

    def _write_h5(self, pos, step, time, box):
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

    # ------------------------------------------------------------------
    # PDB (multi-model)
    # ------------------------------------------------------------------

    def _open_pdb(self):
        if not self._appending:
            self._file = open(self._path, 'w+b')
            self._file.write(_pdb_header(self._topology, keep_ids=self._keep_ids).encode())
            self._footer_offset = self._file.tell()
            self._write_pdb_footer()
            return
        self._file = open(self._path, 'r+b')
        try:
            n_models = 0
            complete_models = 0
            end_of_last_model = None
            atoms_in_first = 0
            offset = 0
            for line in self._file:
                offset += len(line)
                if line.startswith(b'MODEL '):
                    n_models += 1
                elif line.startswith(b'ENDMDL'):
                    end_of_last_model = offset
                    complete_models = n_models
                elif n_models == 1 and line.startswith((b'ATOM  ', b'HETATM')):
                    atoms_in_first += 1
            if end_of_last_model is None:
                raise ValueError('Cannot append to %s: it has no MODEL/ENDMDL records' % self._path)
            if atoms_in_first != self._n_atoms:
                raise ValueError('Cannot append to %s: the file has %d atoms but the topology has %d atoms'
                                 % (self._path, atoms_in_first, self._n_atoms))
            # The footer (and any partial model after the last complete one) is replaced.
            self._n_frames = complete_models
            self._footer_offset = end_of_last_model
            self._write_pdb_footer()
        except Exception:
            self._file.close()
            self._file = None
            raise

    def _write_pdb_footer(self):
        buf = io.StringIO()
        PDBFile.writeFooter(self._topology, buf)
        self._file.seek(self._footer_offset)
        self._file.truncate()
        self._file.write(buf.getvalue().encode())
        self._file.flush()

    def _write_pdb(self, pos, step, time, box):
        buf = io.StringIO()
        if box is not None and (self._header_box is None or np.abs(box - self._header_box).max() > 5e-5):
            buf.write(_cryst1(box) + '\n')  # this frame's box differs from the header's
        PDBFile.writeModel(self._topology, pos*unit.nanometers, buf, modelIndex=self._n_frames + 1,
                           keepIds=self._keep_ids)
        self._file.seek(self._footer_offset)
        self._file.truncate()
        self._file.write(buf.getvalue().encode())
        self._footer_offset = self._file.tell()
        self._write_pdb_footer()

    # ------------------------------------------------------------------
    # PDBx/mmCIF (multi-model)
    # ------------------------------------------------------------------

    def _open_cif(self):
        if not self._appending:
            self._file = open(self._path, 'w+b')
            buf = io.StringIO()
            PDBxFile.writeHeader(self._topology, buf, keepIds=self._keep_ids)
            self._file.write(buf.getvalue().encode())
            self._file.flush()
            return
        self._file = open(self._path, 'r+b')
        try:
            last_model = None
            atoms_in_first = 0
            first_model = None
            end_of_rows = None
            trailing = []
            offset = 0
            for line in self._file:
                offset += len(line)
                if line.startswith((b'ATOM', b'HETATM')):
                    model = int(line.split()[-1])
                    if first_model is None:
                        first_model = model
                    if model == first_model:
                        atoms_in_first += 1
                    last_model = model
                    end_of_rows = offset
                    trailing = []
                elif end_of_rows is not None:
                    trailing.append(line)
            if last_model is None:
                raise ValueError('Cannot append to %s: no atom_site rows found' % self._path)
            if any(t.strip() not in (b'', b'#') for t in trailing):
                raise ValueError('Cannot append to %s: the atom_site loop is not the last item in the file'
                                 % self._path)
            if atoms_in_first != self._n_atoms:
                raise ValueError('Cannot append to %s: the file has %d atoms but the topology has %d atoms'
                                 % (self._path, atoms_in_first, self._n_atoms))
            self._file.seek(end_of_rows)
            self._file.truncate()
            self._file.flush()
            self._n_frames = last_model
        except Exception:
            self._file.close()
            self._file = None
            raise

    def _write_cif(self, pos, step, time, box):
        buf = io.StringIO()
        PDBxFile.writeModel(self._topology, pos*unit.nanometers, buf, modelIndex=self._n_frames + 1,
                            keepIds=self._keep_ids)
        self._file.seek(0, os.SEEK_END)
        self._file.write(buf.getvalue().encode())
        self._file.flush()
