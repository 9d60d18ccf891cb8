"""Multi-model PDBx/mmCIF through OpenMM's :class:`openmm.app.PDBxFile`."""

import io
import os

from openmm import unit
from openmm.app import PDBxFile

from .common import FrameFile


class PDBxFrameFile(FrameFile):
    """PDBx/mmCIF: frames are rows of the ``atom_site`` loop with increasing model numbers;
    disulfides as ``struct_conn`` (disulf) rows, the cell from the topology."""

    format = 'cif'

    def _open(self):
        if not self._appending:
            self._file = open(self._path, 'w+b')  # noqa: SIM115 (open while writing)
            buf = io.StringIO()
            PDBxFile.writeHeader(self._topology, buf, keepIds=self._keep_ids)
            self._file.write(buf.getvalue().encode())
            self._file.flush()
            return
        self._file = open(self._path, 'r+b')  # noqa: SIM115 (open while writing)
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
                raise ValueError('Cannot append to {}: no atom_site rows found'.format(self._path))
            if any(t.strip() not in (b'', b'#') for t in trailing):
                raise ValueError('Cannot append to {}: the atom_site loop is not the last item in the file'.format(self._path))
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

    def _write(self, pos, step, time, box):
        buf = io.StringIO()
        PDBxFile.writeModel(self._topology, pos*unit.nanometers, buf, modelIndex=self._n_frames + 1,
                            keepIds=self._keep_ids)
        self._file.seek(0, os.SEEK_END)
        self._file.write(buf.getvalue().encode())
        self._file.flush()
