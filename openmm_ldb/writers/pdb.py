"""Multi-model PDB through OpenMM's :class:`openmm.app.PDBFile`, with SSBOND records and a
CRYST1 before every model whose box differs from the header's."""

import io

import numpy as np
from openmm import unit
from openmm.app import PDBFile

from .common import FrameFile, _cryst1, _pdb_header


class PDBFrameFile(FrameFile):
    """PDB: MODEL/ENDMDL per frame; the footer (CONECT, END) is rewritten after every model so
    the file is complete at all times."""

    format = 'pdb'

    def _open(self):
        if not self._appending:
            self._file = open(self._path, 'w+b')  # noqa: SIM115 (open while writing)
            self._file.write(_pdb_header(self._topology, keep_ids=self._keep_ids).encode())
            self._footer_offset = self._file.tell()
            self._write_pdb_footer()
            return
        self._file = open(self._path, 'r+b')  # noqa: SIM115 (open while writing)
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
                raise ValueError('Cannot append to {}: it has no MODEL/ENDMDL records'.format(self._path))
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

    def _write(self, pos, step, time, box):
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
