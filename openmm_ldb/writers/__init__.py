"""Streaming all-atom trajectory output: :class:`TrajectoryWriter` picks one small per-format
class (on OpenMM's ``DCDFile``/``PDBFile``/``PDBxFile`` and mdtraj's XTC and HDF5 files) from the
extension; :mod:`.common` holds the PDB naming every format shares (PDB residue names, SSBOND,
chain ids and residue numbers of the CG topology)."""

from .common import (
    SUPPORTED_EXTENSIONS,
    FrameFile,
    _format_of,  # noqa: F401 - used by reporter.py
    default_topology_path,
    ids_writable,
    pdb_named_topology,
    sample_paths,
    ssbond_records,
    write_pdb_file,
    writer_for_samples,
)
from .trajectory import FRAME_FILES, TrajectoryWriter, open_sample_writers

__all__ = [
    'FRAME_FILES',
    'SUPPORTED_EXTENSIONS',
    'FrameFile',
    'TrajectoryWriter',
    'default_topology_path',
    'ids_writable',
    'open_sample_writers',
    'pdb_named_topology',
    'sample_paths',
    'ssbond_records',
    'write_pdb_file',
    'writer_for_samples',
]
