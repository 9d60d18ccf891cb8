"""What every writer shares: formats by extension, sample paths, unit conversion, PDB naming
(standard residue names, SSBOND records, chain ids and residue numbers) and the base class of the
per-format writers."""

import io
import os
from math import pi

import numpy as np
from openmm import unit
from openmm.app import PDBFile, Topology
from openmm.app.internal.unitcell import computeLengthsAndAngles

from .. import residues as rc

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
        raise ValueError("Unsupported trajectory extension '{}' for {}; supported: {}".format(ext, path, ', '.join(SUPPORTED_EXTENSIONS)))
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


# Name used in the project brief.
writer_for_samples = sample_paths


def _to_nm_array(value, name):
    if unit.is_quantity(value):
        value = value.value_in_unit(unit.nanometers)
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError('{} could not be converted to a numeric array: {}'.format(name, e))


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
            line += ' {:5.2f}'.format(np.linalg.norm(xyz[a.index] - xyz[b.index]))
        lines.append(line)
    return lines


def _cryst1(box):
    a, b, c, alpha, beta, gamma = computeLengthsAndAngles([tuple(v) for v in np.asarray(box, dtype=np.float64)])
    return 'CRYST1{:9.3f}{:9.3f}{:9.3f}{:7.2f}{:7.2f}{:7.2f} P 1           1 '.format(
        a*10, b*10, c*10, alpha*180/pi, beta*180/pi, gamma*180/pi)


def _pdb_header(topology, positions=None, keep_ids=True):
    buf = io.StringIO()
    PDBFile.writeHeader(topology, buf)
    head = buf.getvalue().splitlines()
    lines = [h for h in head if h.startswith('REMARK')]
    lines += ssbond_records(topology, positions, keep_ids)
    lines += [h for h in head if not h.startswith('REMARK')]
    return '\n'.join(lines) + '\n'


def write_pdb_file(topology, positions, file, keep_ids=None, standard_names=True, bfactors=None, remarks=()):
    """Write one structure as a complete PDB file: PDB residue names (unless
    ``standard_names=False``), ``SSBOND`` and ``CONECT`` records for disulfides, CRYST1 for a
    periodic topology, and the topology's chain ids and residue numbers when they fit.

    ``bfactors``: one value per atom or per residue (e.g. the model's expected side-chain error,
    Å) for the B-factor column; ``remarks``: ``REMARK 99`` lines.
    """
    if standard_names:
        topology = pdb_named_topology(topology)
    if keep_ids is None:
        keep_ids = ids_writable(topology)
    pos = _to_nm_array(positions, 'positions')
    body = io.StringIO()
    PDBFile.writeModel(topology, pos*unit.nanometers, body, keepIds=keep_ids)
    PDBFile.writeFooter(topology, body)
    text = body.getvalue()
    if bfactors is not None:
        text = _with_bfactors(text, topology, np.asarray(bfactors, dtype=np.float64))
    head = _pdb_header(topology, pos, keep_ids)
    if remarks:
        head = ''.join('REMARK  99 %s\n' % line for r in remarks for line in str(r).splitlines()) + head
    file.write(head + text)


def _with_bfactors(text, topology, values):
    """The PDB text with columns 61-66 (B-factor) of atom records set per atom (``values`` of
    length n_atoms) or per residue (length n_residues)."""
    atoms = list(topology.atoms())
    if len(values) == len(atoms):
        per_atom = values
    else:
        per_atom = [values[a.residue.index] for a in atoms]
    out, k = [], 0
    for line in text.splitlines():
        if line.startswith(('ATOM  ', 'HETATM')) and k < len(per_atom):
            value = min(max(float(per_atom[k]), 0.0), 999.99)
            line = line[:60].ljust(60) + '%6.2f' % value + line[66:]
            k += 1
        out.append(line)
    return '\n'.join(out) + '\n'



def _replace_atomically(path, write_func):
    tmp = '%s.tmp%d' % (path, os.getpid())
    try:
        with open(tmp, 'w') as f:
            write_func(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def as_openmm_topology(topology):
    """An ``openmm.app.Topology`` from an OpenMM or mdtraj topology."""
    if isinstance(topology, Topology):
        return topology
    to_openmm = getattr(topology, 'to_openmm', None)
    if to_openmm is None:
        raise TypeError('topology must be an openmm.app.Topology or mdtraj.Topology, got {!r}'.format(type(topology)))
    return to_openmm()


class FrameFile:
    """One output format: a new or continued file, one frame per :meth:`write`.

    Subclasses implement ``_open()`` (set ``_n_frames`` to the frames already in a continued
    file) and ``_write(pos, step, time, box)`` (nm, ps); :class:`TrajectoryWriter` validates
    the frames and picks the subclass from the extension.
    """

    format = None

    def __init__(self, path, topology, appending=False, dt=None, interval=None, keep_ids=True):
        self._path = os.fspath(path)
        self._topology = topology
        self._n_atoms = topology.getNumAtoms()
        self._appending = bool(appending)
        self._dt = dt
        self._interval = interval
        self._keep_ids = bool(keep_ids)
        box = topology.getPeriodicBoxVectors()
        self._header_box = None if box is None else _to_nm_array(box, 'box_vectors')
        self._n_frames = 0
        self._step_warned = False
        self._file = None       # raw file object
        self._handle = None     # mdtraj file object
        self._open()

    @property
    def n_frames(self):
        """Frames in the file, including those already there when continuing it."""
        return self._n_frames

    def write(self, pos, step, time, box):
        self._write(pos, step, time, box)
        self._n_frames += 1

    def flush(self):
        if self._file is not None:
            self._file.flush()
        if self._handle is not None:
            self._handle.flush()

    def close(self):
        try:
            if self._handle is not None:
                self._handle.close()
        finally:
            self._handle = None
            if self._file is not None:
                self._file.close()
                self._file = None
