"""Tests for openmm_ldb.writers.TrajectoryWriter (streaming all-atom trajectory output)."""

import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import mdtraj
import numpy as np
import pytest
from openmm import unit
from openmm.app import PDBxFile

from openmm_ldb.writers import (
    TrajectoryWriter,
    default_topology_path,
    open_sample_writers,
    sample_paths,
    writer_for_samples,
)

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STRUCTURE = os.path.join('data', 'structures', 'kortemme_ddg', '107L.pdb.gz')


def _find_structure():
    for shared in (os.path.join(_REPO, 'shared'), os.path.join(os.path.dirname(_REPO), 'shared')):
        path = os.path.join(shared, _STRUCTURE)
        if os.path.exists(path):
            return path, True
    import pdbfixer
    base = os.path.dirname(pdbfixer.__file__)
    for rel in (os.path.join('tests', 'data', 'test.pdb'), os.path.join('templates', 'ALA.pdb')):
        path = os.path.join(base, rel)
        if os.path.exists(path):
            return path, False
    pytest.skip('no small protein structure available')


@pytest.fixture(scope='module')
def system():
    """A small all-atom peptide: (openmm Topology, mdtraj Topology, positions in nm)."""
    path, _ = _find_structure()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        traj = mdtraj.load_pdb(path)
    sel = traj.topology.select('protein and chainid 0 and resid 0 to 9')
    traj = traj.atom_slice(sel)
    return traj.topology.to_openmm(), traj.topology, traj.xyz[0].astype(np.float64)


def _frames(x0, n, seed=0):
    rng = np.random.default_rng(seed)
    return [x0 + 0.05*rng.standard_normal(x0.shape) for _ in range(n)]


def _load(path, top_pdb=None):
    if path.endswith(('.dcd', '.xtc')):
        return mdtraj.load(path, top=top_pdb or default_topology_path(path))
    return mdtraj.load(path)


# Coordinate precision of each format (nm).
_TOL = {'.dcd': 1e-5, '.xtc': 1e-3, '.pdb': 1e-4, '.cif': 1e-5, '.pdbx': 1e-5, '.h5': 1e-5}
_ALL = sorted(_TOL)


def _h5_in_subprocess(path):
    """Read an HDF5 file that is still open for writing (HDF5 file locks need disabling)."""
    code = ('import sys, mdtraj, numpy as np; t = mdtraj.load(sys.argv[1]); '
            'np.save(sys.argv[2], t.xyz); np.save(sys.argv[3], t.time)')
    xyz_out, time_out = path + '.xyz.npy', path + '.time.npy'
    env = dict(os.environ, HDF5_USE_FILE_LOCKING='FALSE')
    subprocess.run([sys.executable, '-c', code, path, xyz_out, time_out], check=True, env=env,
                   capture_output=True, timeout=120)
    return np.load(xyz_out), np.load(time_out)


def _skip_h5(ext):
    if ext == '.h5':
        pytest.importorskip('tables')


def test_sample_paths():
    assert sample_paths('out/aa.dcd', 3) == ['out/aa_s0.dcd', 'out/aa_s1.dcd', 'out/aa_s2.dcd']
    assert sample_paths('aa.pdb', 1) == ['aa.pdb']
    assert writer_for_samples('aa.xtc', 2) == ['aa_s0.xtc', 'aa_s1.xtc']
    with pytest.raises(ValueError):
        sample_paths('aa.dcd', 0)


def test_open_sample_writers(system, tmp_path):
    top, _, x0 = system
    writers = open_sample_writers(str(tmp_path / 'aa.dcd'), 2, top)
    for i, w in enumerate(writers):
        with w:
            w.write(x0 + i)
    for i in range(2):
        t = mdtraj.load(str(tmp_path / ('aa_s%d.dcd' % i)), top=str(tmp_path / ('aa_s%d.pdb' % i)))
        assert np.allclose(t.xyz[0], x0 + i, atol=1e-5)


def test_unsupported_extension(system, tmp_path):
    with pytest.raises(ValueError, match='Unsupported'):
        TrajectoryWriter(str(tmp_path / 'aa.trr'), system[0])


@pytest.mark.parametrize('ext', _ALL)
def test_round_trip(system, tmp_path, ext):
    _skip_h5(ext)
    top, _, x0 = system
    path = str(tmp_path / ('aa' + ext))
    frames = _frames(x0, 3)
    steps = [100, 150, 200]
    times = [0.2, 0.3, 0.4]
    w = TrajectoryWriter(path, top, dt=0.002*unit.picoseconds, interval=50)
    w.write(frames[0]*unit.nanometers, step=steps[0], time=times[0]*unit.picoseconds)
    for x, s, t in zip(frames[1:], steps[1:], times[1:]):
        w.write(x, step=s, time=t)
    assert w.n_frames == 3

    # Every write is flushed: a reader sees all frames before close.
    if ext == '.h5':
        xyz, time = _h5_in_subprocess(path)
        assert np.allclose(time, times)
    else:
        xyz = _load(path).xyz
    assert xyz.shape == (3, len(x0), 3)
    assert np.allclose(xyz, frames, atol=_TOL[ext])
    w.close()
    w.close()  # idempotent

    traj = _load(path)
    assert traj.n_frames == 3
    assert traj.n_atoms == top.getNumAtoms()
    assert np.allclose(traj.xyz, frames, atol=_TOL[ext])
    if ext in ('.xtc', '.h5'):
        assert np.allclose(traj.time, times)
    if ext == '.xtc':
        with mdtraj.formats.XTCTrajectoryFile(path) as f:
            _, _, step, _ = f.read()
        assert list(step) == steps
    if ext == '.h5':
        import tables
        with tables.open_file(path) as f:
            assert list(f.root.step[:]) == steps
        assert [a.name for a in traj.topology.atoms] == [a.name for a in top.atoms()]
    if ext == '.dcd':
        with open(path, 'rb') as f:
            header = f.read(48)
        n_set, first_step, interval, last_step = struct.unpack('<4i', header[8:24])
        assert (n_set, first_step, interval, last_step) == (3, 100, 50, 200)
        assert struct.unpack('<f', header[44:48])[0]*0.04888821 == pytest.approx(0.002, rel=1e-5)
    if ext in ('.cif', '.pdbx'):
        assert PDBxFile(path).getNumFrames() == 3


@pytest.mark.parametrize('ext', _ALL)
def test_append_continues(system, tmp_path, ext):
    _skip_h5(ext)
    top, _, x0 = system
    path = str(tmp_path / ('aa' + ext))
    frames = _frames(x0, 4, seed=1)
    with TrajectoryWriter(path, top, interval=10) as w:
        w.write(frames[0], step=10, time=0.01)
        w.write(frames[1], step=20, time=0.02)
    with TrajectoryWriter(path, top, append=True) as w:
        assert w.n_frames == 2
        w.write(frames[2], step=30, time=0.03)
        w.write(frames[3], step=40, time=0.04)
        assert w.n_frames == 4
    traj = _load(path)
    assert traj.n_frames == 4
    assert np.allclose(traj.xyz, frames, atol=_TOL[ext])
    if ext == '.pdb':
        with open(path) as f:
            lines = f.read().splitlines()
        assert [l for l in lines if l.startswith('MODEL')] == ['MODEL     %4d' % i for i in range(1, 5)]
        assert lines[-1] == 'END' and sum(l == 'END' for l in lines) == 1
    if ext in ('.cif', '.pdbx'):
        with open(path) as f:
            models = [int(l.split()[-1]) for l in f if l.startswith(('ATOM', 'HETATM'))]
        assert sorted(set(models)) == [1, 2, 3, 4]
    if ext == '.dcd':
        with open(path, 'rb') as f:
            n_set, first_step, interval, last_step = struct.unpack('<4i', f.read(24)[8:24])
        assert (n_set, first_step, interval, last_step) == (4, 10, 10, 40)
    if ext == '.xtc':
        with mdtraj.formats.XTCTrajectoryFile(path) as f:
            _, time, step, _ = f.read()
        assert list(step) == [10, 20, 30, 40]
        assert np.allclose(time, [0.01, 0.02, 0.03, 0.04])
    if ext == '.h5':
        import tables
        with tables.open_file(path) as f:
            assert list(f.root.step[:]) == [10, 20, 30, 40]
        assert np.allclose(traj.time, [0.01, 0.02, 0.03, 0.04])


@pytest.mark.parametrize('ext', ['.dcd', '.xtc', '.pdb', '.cif', '.h5'])
def test_append_to_missing_file_creates_it(system, tmp_path, ext):
    _skip_h5(ext)
    top, _, x0 = system
    path = str(tmp_path / ('new' + ext))
    with TrajectoryWriter(path, top, append=True) as w:
        assert w.n_frames == 0
        w.write(x0)
    assert _load(path).n_frames == 1


@pytest.mark.parametrize('ext', ['.dcd', '.xtc', '.pdb', '.cif', '.h5'])
def test_append_atom_count_mismatch(system, tmp_path, ext):
    _skip_h5(ext)
    top, mdtop, x0 = system
    path = str(tmp_path / ('aa' + ext))
    with TrajectoryWriter(path, top) as w:
        w.write(x0)
    smaller = mdtop.subset(range(mdtop.n_atoms - 1)).to_openmm()
    with pytest.raises(ValueError, match='atoms'):
        TrajectoryWriter(path, smaller, append=True)
    assert _load(path).n_frames == 1


@pytest.mark.parametrize('ext', _ALL)
def test_atom_count_mismatch(system, tmp_path, ext):
    _skip_h5(ext)
    top, _, x0 = system
    n = len(x0)
    with TrajectoryWriter(str(tmp_path / ('aa' + ext)), top) as w:
        with pytest.raises(ValueError, match=r'%d atoms.*%d atoms' % (n - 1, n)):
            w.write(x0[:-1])
        with pytest.raises(ValueError, match='shape'):
            w.write(x0[:, :2])
        assert w.n_frames == 0


@pytest.mark.parametrize('ext', _ALL)
def test_nan_leaves_file_valid(system, tmp_path, ext):
    _skip_h5(ext)
    top, _, x0 = system
    path = str(tmp_path / ('aa' + ext))
    frames = _frames(x0, 2, seed=2)
    bad = frames[1].copy()
    bad[5, 1] = np.nan
    w = TrajectoryWriter(path, top)
    w.write(frames[0], step=0)
    w.write(frames[1], step=1)
    with pytest.raises(ValueError, match=r'frame 2 \(step 7\)'):
        w.write(bad, step=7)
    bad[5, 1] = np.inf
    with pytest.raises(ValueError, match='frame 2'):
        w.write(bad * unit.nanometers, step=7)
    assert w.n_frames == 2
    if ext != '.h5':
        assert _load(path).n_frames == 2
    w.close()
    traj = _load(path)
    assert traj.n_frames == 2
    assert np.allclose(traj.xyz, frames, atol=_TOL[ext])


@pytest.mark.parametrize('ext', ['.dcd', '.xtc'])
def test_topology_pdb_beside(system, tmp_path, ext):
    top, _, x0 = system
    path = str(tmp_path / ('aa' + ext))
    frames = _frames(x0, 2, seed=3)
    with TrajectoryWriter(path, top) as w:
        assert w.topology_pdb == str(tmp_path / 'aa.pdb')
        w.write(frames[0])
        w.write(frames[1])
    ref = mdtraj.load(str(tmp_path / 'aa.pdb'))
    assert ref.n_frames == 1 and ref.n_atoms == len(x0)
    assert np.allclose(ref.xyz[0], frames[0], atol=1e-4)
    assert mdtraj.load(path, top=str(tmp_path / 'aa.pdb')).n_frames == 2

    custom = str(tmp_path / 'sub' / 'top.pdb')
    path2 = str(tmp_path / ('bb' + ext))
    with TrajectoryWriter(path2, top, topology_pdb=custom) as w:
        w.write(frames[0])
    assert os.path.exists(custom) and not os.path.exists(str(tmp_path / 'bb.pdb'))
    assert mdtraj.load(path2, top=custom).n_frames == 1


@pytest.mark.parametrize('ext', ['.pdb', '.cif', '.h5'])
def test_no_topology_pdb_for_self_describing_formats(system, tmp_path, ext):
    _skip_h5(ext)
    top, _, x0 = system
    with TrajectoryWriter(str(tmp_path / ('aa' + ext)), top) as w:
        assert w.topology_pdb is None
        w.write(x0)
    assert sorted(os.listdir(tmp_path)) == ['aa' + ext]


def test_dcd_step_mismatch_warns(system, tmp_path):
    top, _, x0 = system
    with TrajectoryWriter(str(tmp_path / 'aa.dcd'), top) as w:
        w.write(x0, step=5)
        with pytest.warns(UserWarning, match='interval'):
            w.write(x0, step=15)


def test_empty_dcd_is_valid(system, tmp_path):
    top, _, x0 = system
    path = str(tmp_path / 'aa.dcd')
    TrajectoryWriter(path, top).close()
    with TrajectoryWriter(path, top, append=True) as w:
        assert w.n_frames == 0
        w.write(x0)
    assert mdtraj.load(path, top=str(tmp_path / 'aa.pdb')).n_frames == 1


@pytest.mark.parametrize('ext', ['.dcd', '.xtc', '.h5'])
def test_periodic_box(system, tmp_path, ext):
    _skip_h5(ext)
    from openmm import Vec3
    _, mdtop, x0 = system
    top = mdtop.to_openmm()
    top.setPeriodicBoxVectors([Vec3(4, 0, 0), Vec3(0, 4, 0), Vec3(0, 0, 4)]*unit.nanometers)
    path = str(tmp_path / ('aa' + ext))
    with TrajectoryWriter(path, top) as w:
        w.write(x0)                                             # box from the topology
        w.write(x0, box_vectors=np.diag([5.0, 5.0, 5.0]))       # explicit box, nm
    traj = _load(path)
    assert np.allclose(traj.unitcell_lengths, [[4, 4, 4], [5, 5, 5]], atol=1e-3)


def test_mdtraj_topology_accepted(system, tmp_path):
    _, mdtop, x0 = system
    with TrajectoryWriter(str(tmp_path / 'aa.pdb'), mdtop) as w:
        w.write(x0)
    assert mdtraj.load(str(tmp_path / 'aa.pdb')).n_atoms == mdtop.n_atoms


def test_files_valid_after_crash(system, tmp_path):
    """A process that dies without close() leaves readable files with every written frame."""
    _, mdtop, x0 = system
    exts = ['.dcd', '.xtc', '.pdb', '.cif']
    try:
        import tables  # noqa: F401
        exts.append('.h5')
    except ImportError:
        pass
    ref = str(tmp_path / 'ref.pdb')
    with TrajectoryWriter(ref, mdtop) as w:
        w.write(x0)
    code = '''
import os, sys, mdtraj, numpy as np
from openmm_ldb.writers import TrajectoryWriter
ref = mdtraj.load(sys.argv[1])
top = ref.topology.to_openmm()
writers = [TrajectoryWriter(p, top) for p in sys.argv[2:]]
for i in range(3):
    for w in writers:
        w.write(ref.xyz[0] + 0.1*i, step=i)
os._exit(3)
'''
    # Distinct stems: the DCD/XTC companion 'crash_dcd.pdb' must not clobber a PDB trajectory.
    paths = [str(tmp_path / ('crash_%s%s' % (e[1:], e))) for e in exts]
    proc = subprocess.run([sys.executable, '-c', code, ref] + paths, check=False, capture_output=True,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr.decode()
    for p, e in zip(paths, exts):
        traj = _load(p)
        assert traj.n_frames == 3, p
        assert np.allclose(traj.xyz[2], x0 + 0.2, atol=_TOL[e])


# ----------------------------------------------------------------------------------------------
# Standard records (issue 11): ATOM for protein residues, SSBOND + CONECT for disulfides, force-field
# names only on request, the CG chain ids and residue numbers, a unit cell in every frame
# ----------------------------------------------------------------------------------------------
def _disulfide_topology(box=None):
    """A real backmapper topology: two chains (ids B, B) with CG residue numbers 10.., one
    disulfide (CYX), built the way Backmapper.plan builds it."""
    from openmm.app import Element, Topology

    from openmm_ldb import topology as tp

    cg = Topology()
    for seq, start in (("GCAGKE", 10), ("WCHKA", 40)):
        chain = cg.addChain("B")
        for i, name in enumerate(seq):
            from openmm_ldb.residues import ONE_TO_THREE
            res = cg.addResidue(ONE_TO_THREE[name], chain, id=str(start + i))
            cg.addAtom("CA", Element.getBySymbol("C"), res)
    mapping = tp.read_cg_topology(cg)
    seg = mapping.segments(np.cumsum(np.full((11, 3), 2.2), axis=0))
    layout = tp.build_aa_topology(mapping, seg, hydrogens=False, disulfides=[(1, 7)], box=box)
    rng = np.random.default_rng(0)
    return layout.topology, rng.normal(0, 1.0, (layout.topology.getNumAtoms(), 3))


def test_pdb_standard_records(tmp_path):
    top, pos = _disulfide_topology()
    assert [r.name for r in top.residues()].count('CYX') == 2  # force-field names in memory
    path = str(tmp_path / 'aa.pdb')
    with TrajectoryWriter(path, top) as w:
        w.write(pos)
        w.write(pos + 0.1)
    text = Path(path).read_text()
    assert 'HETATM' not in text and 'CYX' not in text
    ssbond = [ln for ln in text.splitlines() if ln.startswith('SSBOND')]
    assert len(ssbond) == 1 and ssbond[0][11:14] == 'CYS' and ssbond[0][15:21] == 'B   11'
    assert ssbond[0][25:28] == 'CYS' and ssbond[0][29:35] == 'B   41'
    assert any(ln.startswith('CONECT') for ln in text.splitlines())
    from openmm.app import PDBFile
    pdb = PDBFile(path)
    chains = list(pdb.topology.chains())
    assert [c.id for c in chains] == ['B', 'B']
    assert [r.id for r in chains[1].residues()] == [str(i) for i in range(40, 45)]
    sg = [(a.residue.id, b.residue.id) for a, b in pdb.topology.bonds() if a.name == b.name == 'SG']
    assert sg == [('11', '41')]
    # force-field names where the user asks for them
    path2 = str(tmp_path / 'ff.pdb')
    with TrajectoryWriter(path2, top, standard_names=False) as w:
        w.write(pos)
    assert 'HETATM' in Path(path2).read_text() and 'CYX' in Path(path2).read_text()


def test_companion_pdb_and_cif_standard_names(tmp_path):
    top, pos = _disulfide_topology()
    with TrajectoryWriter(str(tmp_path / 'aa.dcd'), top) as w:
        w.write(pos)
    text = Path(tmp_path / 'aa.pdb').read_text()
    assert 'SSBOND' in text and 'CYX' not in text and 'HETATM' not in text
    with TrajectoryWriter(str(tmp_path / 'aa.cif'), top) as w:
        w.write(pos)
    cif = Path(tmp_path / 'aa.cif').read_text()
    assert 'disulf' in cif and 'CYX' not in cif
    assert PDBxFile(str(tmp_path / 'aa.cif')).topology.getNumAtoms() == top.getNumAtoms()


def test_unit_cell_in_every_frame(tmp_path):
    box = np.diag([5.0, 5.0, 5.0])
    top, pos = _disulfide_topology(box=box * 10.0)
    boxes = [box, box * 1.01, box * 0.99]
    for ext in ('.pdb', '.dcd', '.xtc', '.cif'):
        path = str(tmp_path / ext[1:] / ('aa' + ext))
        os.makedirs(os.path.dirname(path))
        with TrajectoryWriter(path, top) as w:
            for b in boxes:
                w.write(pos, box_vectors=b)
        traj = _load(path)
        assert traj.unitcell_vectors is not None, ext
        if ext not in ('.cif', '.pdb'):  # PDBx has one cell per file; mdtraj reads one CRYST1
            assert np.allclose(traj.unitcell_vectors, boxes, atol=2e-3), ext
    # PDB: the header's CRYST1, and one before each MODEL whose box differs (as VMD/mdtraj write)
    lines = Path(tmp_path / 'pdb' / 'aa.pdb').read_text().splitlines()
    cryst = [float(ln[6:15]) for ln in lines if ln.startswith('CRYST1')]
    assert cryst == [50.0, 50.5, 49.5]
    assert lines[lines.index(next(ln for ln in lines if ln.startswith('MODEL        2'))) - 1].startswith('CRYST1')
