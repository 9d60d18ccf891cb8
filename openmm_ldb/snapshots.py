"""All-atom snapshots of a CG simulation, one complete PDB file per frame (e.g. for docking).

:class:`SnapshotReporter` backmaps every Nth frame of a Cα coarse-grained simulation and
writes it as its own PDB file, named by step (``frame_000001000.pdb``), with hydrogens,
``SSBOND`` and ``CONECT`` records for disulfides, and optionally a short restrained amber14
minimisation.  It works synchronously (snapshots are rare; nothing to wait for at the end).

The helpers :func:`write_pdb`, :func:`pocket_residues` and :func:`subset` write such files
and cut regions (e.g. a binding pocket) out of them.
"""

from __future__ import annotations

import os

import numpy as np
import openmm.unit as unit
from openmm.app import Topology

from .frames import CGFrame
from .reporting import BackmapReporterBase, frame_from_state

__all__ = ["SnapshotReporter", "find_residue", "pocket_residues", "snapshot_path", "ssbond_records", "subset",
           "write_pdb"]

# force-field residue names and their PDB names (PDB files say CYS and mark disulfides by SSBOND)
PDB_RESIDUE_NAMES = {"CYX": "CYS", "CYM": "CYS", "HIE": "HIS", "HID": "HIS", "HIP": "HIS", "ASH": "ASP",
                     "GLH": "GLU", "LYN": "LYS"}


def snapshot_path(directory: str, prefix: str, step: int, sample: int | None = None, digits: int = 9) -> str:
    """``<directory>/<prefix>_<step, zero-padded>[_s<sample>].pdb``."""
    name = f"{prefix}_{int(step):0{digits}d}"
    if sample is not None:
        name += f"_s{int(sample)}"
    return os.path.join(directory, name + ".pdb")


# ---------------------------------------------------------------------------------------------- topology
def subset(topology: Topology, positions, residues=None, rename: dict | None = None):
    """A copy of ``topology`` (chains, residues, atoms, bonds, box) restricted to some residues.

    Parameters
    ----------
    topology : openmm.app.Topology
    positions : Quantity or array (nm), shape (n_atoms, 3)
    residues : iterable of int, optional
        Indices of the residues to keep (all when omitted).  Bonds between kept atoms are kept;
        empty chains are left out.
    rename : dict, optional
        Residue names to replace, e.g. :data:`PDB_RESIDUE_NAMES`.

    Returns
    -------
    topology : openmm.app.Topology
    positions : Quantity (nm)
    """
    keep = None if residues is None else {int(i) for i in residues}
    rename = rename or {}
    xyz = positions.value_in_unit(unit.nanometer) if unit.is_quantity(positions) else positions
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    out = Topology()
    out.setPeriodicBoxVectors(topology.getPeriodicBoxVectors())
    atom_map, new_xyz = {}, []
    for chain in topology.chains():
        new_chain = None
        for res in chain.residues():
            if keep is not None and res.index not in keep:
                continue
            if new_chain is None:
                new_chain = out.addChain(chain.id)
            new_res = out.addResidue(rename.get(res.name, res.name), new_chain, id=res.id,
                                     insertionCode=getattr(res, "insertionCode", ""))
            for atom in res.atoms():
                atom_map[atom] = out.addAtom(atom.name, atom.element, new_res, id=atom.id)
                new_xyz.append(xyz[atom.index])
    for bond in topology.bonds():
        a, b = bond[0], bond[1]
        if a in atom_map and b in atom_map:
            out.addBond(atom_map[a], atom_map[b], type=bond.type, order=bond.order)
    return out, unit.Quantity(np.array(new_xyz).reshape(-1, 3), unit.nanometer)


def find_residue(topology: Topology, residue_id, chain: str | None = None) -> int:
    """Index of the residue with PDB id ``residue_id`` (in chain ``chain``, else the first chain
    that has it)."""
    for res in topology.residues():
        if str(res.id).strip() == str(residue_id).strip() and (chain is None or res.chain.id == chain):
            return res.index
    where = f" in chain {chain}" if chain is not None else ""
    raise ValueError(f"no residue with id {residue_id!r}{where}")


def pocket_residues(topology: Topology, positions, residue: int, radius=10.0 * unit.angstrom,
                    heavy_only: bool = True) -> list[int]:
    """Residues with any atom within ``radius`` of any atom of residue ``residue``.

    Parameters
    ----------
    topology : openmm.app.Topology
    positions : Quantity or array (nm)
    residue : int
        Index (topology order) of the residue at the centre of the pocket; it is included.
    radius : Quantity or float (Å)
    heavy_only : bool
        Measure between heavy atoms only.

    Returns
    -------
    list of int
        Residue indices, in topology order.
    """
    cutoff = radius.value_in_unit(unit.nanometer) if unit.is_quantity(radius) else float(radius) / 10.0
    xyz = positions.value_in_unit(unit.nanometer) if unit.is_quantity(positions) else positions
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    atoms = [a for a in topology.atoms() if not heavy_only or a.element is None or a.element.symbol != "H"]
    centre = np.array([a.index for a in atoms if a.residue.index == int(residue)])
    if len(centre) == 0:
        raise ValueError(f"residue {residue} has no atoms to measure from")
    idx = np.array([a.index for a in atoms])
    res_of = np.array([a.residue.index for a in atoms])
    d = np.linalg.norm(xyz[idx][:, None, :] - xyz[centre][None, :, :], axis=-1).min(axis=1)
    return sorted(set(res_of[d <= cutoff].tolist()) | {int(residue)})


# ---------------------------------------------------------------------------------------------- writing
from .writers.common import ssbond_records  # noqa: E402,F401 - one SSBOND writer, re-exported here


def write_pdb(topology: Topology, positions, file, standard_names: bool = True, remarks=(),
              keep_ids: bool | None = None, bfactors=None, max_ss: float | None = None) -> None:
    """Write one structure as a complete PDB file with ``SSBOND`` and ``CONECT`` records.

    Parameters
    ----------
    topology : openmm.app.Topology
    positions : Quantity or array (nm)
    file : str or file object
    standard_names : bool
        Write force-field residue names as PDB names (``CYX`` -> ``CYS``, ``HIE`` -> ``HIS``...):
        the disulfide is then given by ``SSBOND`` and ``CONECT`` records, which is what PDB
        readers (OpenMM's ``PDBFile``, docking preparation tools) expect.  With False, ``CYX``
        residues are written as OpenMM writes non-standard residues (``HETATM`` + ``CONECT``).
    remarks : iterable of str
        Text for ``REMARK 99`` lines.
    keep_ids : bool, optional
        Keep the topology's residue numbers and chain ids (default: when they fit PDB columns).
    bfactors : array, optional
        Per atom or per residue values for the B-factor column (the expected side-chain error).
    max_ss : float, optional
        A disulfide of the topology whose SG–SG is longer than this (Å) in these positions is
        not declared in this file (no SSBOND, no CONECT; a REMARK says so).  Off by default: the
        residue stays CYX without its bond, which amber14 then refuses; the SSBOND record
        carries the SG–SG length of the frame either way.
    """
    from .writers.common import write_pdb_file

    xyz = positions.value_in_unit(unit.nanometer) if unit.is_quantity(positions) else positions
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    remarks = list(remarks)
    if max_ss is not None:
        open_bonds = [(a, b) for a, b in topology.bonds() if a.name == "SG" and b.name == "SG"
                      and np.linalg.norm(xyz[a.index] - xyz[b.index]) * 10.0 > max_ss]
        if open_bonds:
            topology = _without_bonds(topology, open_bonds)
            remarks += [f"disulfide CYS{a.residue.id}-CYS{b.residue.id} not closed in "
                        f"this frame (SG-SG {np.linalg.norm(xyz[a.index] - xyz[b.index]) * 10.0:.2f} A): "
                        f"not declared" for a, b in open_bonds]
    if isinstance(file, (str, os.PathLike)):
        tmp = os.fspath(file) + ".tmp"
        with open(tmp, "w") as f:
            write_pdb_file(topology, xyz, f, keep_ids, standard_names, bfactors, remarks)
        os.replace(tmp, file)  # a reader never sees half a file
    else:
        write_pdb_file(topology, xyz, file, keep_ids, standard_names, bfactors, remarks)


def _without_bonds(topology: Topology, drop) -> Topology:
    """A copy of ``topology`` without the bonds ``drop`` (pairs of atoms)."""
    gone = {frozenset((a.index, b.index)) for a, b in drop}
    out, _ = subset(topology, np.zeros((topology.getNumAtoms(), 3)))
    atoms = list(out.atoms())
    kept = [(atoms[a.index], atoms[b.index], bond.type, bond.order) for bond in topology.bonds()
            for a, b in [(bond[0], bond[1])] if frozenset((a.index, b.index)) not in gone]
    result = Topology()
    result.setPeriodicBoxVectors(out.getPeriodicBoxVectors())
    amap = {}
    for chain in out.chains():
        c = result.addChain(chain.id)
        for res in chain.residues():
            r = result.addResidue(res.name, c, id=res.id, insertionCode=getattr(res, "insertionCode", ""))
            for atom in res.atoms():
                amap[atom] = result.addAtom(atom.name, atom.element, r, id=atom.id)
    for a, b, t, o in kept:
        result.addBond(amap[a], amap[b], type=t, order=o)
    return result


# sampler settings of a snapshot's polish (measured with benchmarks/meeko_check.py: Meeko accepted
# 6 of 6 default snapshots with it, 1 of 6 without).  The second rotamer sweep took the wider run of
# five proteins from 18 to 20 of 20 (aromatic rings that a 30-degree relaxation and the polish could
# not turn off a neighbour's backbone); turning the peptide plane before a proline by up to 60
# degrees closes rings that a CG trace's phi leaves open only with CD on the previous C (1AMQ).
# 60 polish steps, not 30, since the well choice reads contacts: it can put a THR's HB where 30
# steps left it 1.2 Å from a backbone O of a Go run of protein G (tests/test_snapshots.py)
SNAPSHOT_POLISH = {"polish_steps": 60, "repack_sweeps": 2,
                   "proline_plane_offsets": [0, 10, -10, 20, -20, 30, -30, 45, -45, 60, -60]}


# ---------------------------------------------------------------------------------------------- reporter
class SnapshotReporter(BackmapReporterBase):
    """SnapshotReporter backmaps every Nth frame of a Cα coarse-grained simulation and writes
    each as its own complete all-atom PDB file, named by step.

    Files are ``<directory>/<prefix>_<step>.pdb`` with the step zero-padded to nine digits
    (``frame_000001000.pdb``), or ``<prefix>_<step>_s<k>.pdb`` for sample ``k`` when
    ``nSamples > 1``.  Each file has hydrogens, ``SSBOND`` and ``CONECT`` records for
    disulfides, and the CG residue numbers and chain ids.  Backmapping runs synchronously in
    ``report()`` (through :meth:`Backmapper.stream`, like :class:`LDBReporter`'s worker): every
    file is complete when ``Simulation.step()`` returns.  Snapshots are meant to be rare; for a
    trajectory use :class:`~openmm_ldb.reporter.LDBReporter`, which never holds the simulation up.

    To use it, create a SnapshotReporter, then add it to the Simulation's list of reporters::

        simulation.reporters.append(SnapshotReporter('snapshots', 10000))
    """

    def __init__(self, directory, reportInterval, backmapper=None, model=None, device=None, prefix="frame",
                 nSamples=1, seed=None, hydrogens=True, minimize=False, solvent="vacuum", minimizeIterations=200,
                 refinePlatform=None, beadName="CA", residues=None, skipUnknown=False, standardNames=True,
                 digits=9, steps=None, maxDisulfide=2.2, polish=True, chainBreak=None):
        """Create a SnapshotReporter.

        Parameters
        ----------
        directory : string
            The folder to write the PDB files to (created if needed).
        reportInterval : int
            The interval (in time steps) at which to write snapshots.
        backmapper : Backmapper=None
            The backmapper to use; one is created from ``model`` and ``device`` otherwise.
        model : string=None
            Path of an exported model; the shipped default when None.
        device : string=None
            ``'cuda'`` or ``'cpu'``; CUDA when available by default.
        prefix : string='frame'
            Start of every file name.
        nSamples : int=1
            All-atom structures drawn per snapshot, one file each (``_s0``, ``_s1``...).
        seed : int=None
            Seed of the sampler.  With one sample and no seed the deterministic mode writes the
            single best structure.
        hydrogens : bool=True
            Write hydrogens (always on with ``minimize``).
        minimize : bool=False
            Run a short Cα-restrained amber14 minimisation of each structure.
        solvent : string='vacuum'
            'vacuum' or 'obc' (fast native implicit solvent) for the minimisation.
        minimizeIterations : int=200
            Minimiser iterations per structure.
        refinePlatform : string=None
            OpenMM platform for the minimisation.
        beadName : string='CA'
            Name of the Cα bead of each residue.
        residues : list of int=None
            Indices of the CG residues to backmap (others, e.g. ions or ligands, are left out).
        skipUnknown : bool=False
            Leave out residues that are not amino acids instead of raising an error.
        standardNames : bool=True
            Write PDB residue names (``CYS`` with ``SSBOND``), not force-field names (``CYX``).
        digits : int=9
            Digits of the zero-padded step in the file names.
        steps : int=None
            DDIM steps of the sampler for samples (default 10); the best guess is one network pass
            and ignores it.
        maxDisulfide : float=2.2
            A disulfide whose SG–SG is longer than this (Å) in a snapshot is not declared in that
            file (no ``SSBOND``/``CONECT``; a ``REMARK`` names it): where the CG trace has pulled
            the two cysteines apart, a docking program would otherwise read a bond the atoms do
            not make.  None declares every disulfide of the plan.
        polish : bool=True
            Push atoms of different residues, hydrogens included, out of bonding distance with
            bonds and angles kept (the function's contact polish, ``polish_steps``, after a
            second sweep of the rotamer choice): a docking program's receptor preparation
            (Meeko) rejects a file with such pairs.  It costs about 0.5 ms per residue per
            snapshot; the backmapper given (or created) is copied with the polish on, unless
            its settings already turn it on.
        chainBreak : length=None
            As in :class:`~openmm_ldb.reporter.LDBReporter`.
        """
        super().__init__(reportInterval, backmapper, model, device, nSamples, seed, hydrogens, minimize, solvent,
                         minimizeIterations, refinePlatform, beadName, residues, skipUnknown, steps, chainBreak)
        bm = self._getBackmapper()
        if polish and int(bm.module.settings().get("polish_steps", 0)) <= 0:
            # settings the user gave the backmapper stay as they are
            self._backmapper = bm.with_settings({k: v for k, v in SNAPSHOT_POLISH.items() if k not in bm.settings})
        self._maxDisulfide = None if maxDisulfide is None else float(maxDisulfide)
        self._directory = os.fspath(directory)
        self._prefix = prefix
        self._standardNames = bool(standardNames)
        self._digits = int(digits)
        self._refiner = None
        self._frameIndex = 0
        self._files = []
        os.makedirs(self._directory, exist_ok=True)

    @property
    def files(self):
        """Paths of the files written so far, in order."""
        return list(self._files)

    def report(self, simulation, state):
        """Backmap the current frame and write its PDB file(s).

        Parameters
        ----------
        simulation : Simulation
            The Simulation to generate a report for
        state : State
            The current state of the simulation
        """
        positions, box = frame_from_state(simulation, state)
        if self._planInput is None:
            self._planInput = (simulation.topology, positions, box, simulation.system)
            self._refiner = self._makeRefiner(self.plan.topology)
        frame = CGFrame(positions, box, int(simulation.currentStep), state.getTime().value_in_unit(unit.picosecond))
        for aa in self._backmapper.stream(self.plan, [frame], self._nSamples, self._seed, refiner=self._refiner,
                                          start_index=self._frameIndex):
            for s in range(self._nSamples):
                remarks = [f"openmm-ldb snapshot: step {aa.step}, time {aa.time:.3f} ps"
                           + (f", sample {s} of {self._nSamples}" if self._nSamples > 1 else "")]
                if self._refiner is not None:
                    remarks.append(f"restrained amber14 minimisation ({self._solvent}), "
                                   f"energy {self._refiner.energy(aa.positions[s]):.1f} kJ/mol (with Cα restraints)")
                path = snapshot_path(self._directory, self._prefix, aa.step, s if self._nSamples > 1 else None,
                                     self._digits)
                bfactors = None
                if aa.expected_error is not None:  # per atom: its residue's expected side-chain error
                    bfactors = aa.expected_error[s][self.plan.layout.residue]
                    remarks.append("B-factor column: expected side-chain error of the residue (Å), "
                                   "the model's per-residue confidence")
                write_pdb(self.plan.topology, aa.positions[s], path, standard_names=self._standardNames,
                          remarks=remarks, bfactors=bfactors, max_ss=self._maxDisulfide)
                self._files.append(path)
        self._frameIndex += 1

    def close(self):
        """Nothing to flush (every file is complete when written); for symmetry with other reporters."""

    def __enter__(self):
        return self

    def __exit__(self, excType, excValue, traceback):
        self.close()
        return False
