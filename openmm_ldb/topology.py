"""Coarse-grained topologies in, all-atom topologies out.

A CG topology has one bead per residue (named ``CA`` unless the user says otherwise) and
standard residue names.  :func:`read_cg_topology` turns it into the sequence, the bead
indices and the chain layout; :func:`build_aa_topology` builds the matching all-atom
``openmm.app.Topology`` and the map from model slots to atoms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from openmm.app import Element, Topology

from . import residues as rc


class CGTopologyError(ValueError):
    """A CG topology the backmapper cannot handle (the message names the residue)."""


@dataclass
class CGMapping:
    """How a CG topology maps onto the model's input.

    Attributes
    ----------
    restype : [N] residue type index of each backmapped residue.
    bead_index : [N] particle index of each residue's bead in the CG system.
    chain_index : [N] chain number (0-based, in topology order) of each residue.
    chain_ids : chain id string per chain number.
    residue_ids : PDB residue id (str) per residue.
    n_particles : number of particles in the CG topology.
    """

    restype: np.ndarray
    bead_index: np.ndarray
    chain_index: np.ndarray
    chain_ids: list[str]
    residue_ids: list[str]
    n_particles: int
    residue_names: list[str] = field(default_factory=list)

    @property
    def n_residues(self) -> int:
        return len(self.restype)

    def segments(self, ca: np.ndarray) -> np.ndarray:
        """[N] segment ids: a new segment at every chain start and every chain break
        (consecutive Cα farther apart than ``CHAIN_BREAK_CA_CA`` Å).  ``ca`` in Å, [N, 3]."""
        ca = np.asarray(ca, dtype=np.float64)
        new_chain = np.concatenate([[True], self.chain_index[1:] != self.chain_index[:-1]])
        gap = np.concatenate([[False], np.linalg.norm(ca[1:] - ca[:-1], axis=-1) > rc.CHAIN_BREAK_CA_CA])
        seg = np.cumsum(new_chain | gap) - 1
        sizes = np.bincount(seg)
        if (sizes < 2).any():  # amber14 has no template for a residue that is both termini
            i = int(np.flatnonzero(sizes[seg] < 2)[0])
            raise CGTopologyError(
                f"residue {self.residue_names[i]} {self.residue_ids[i]} (index {i}, chain "
                f"{self.chain_ids[self.chain_index[i]]}) is a one-residue segment (chain break on both sides); "
                "backmapping needs at least two bonded residues (leave it out with residues=...)")
        return seg


def _as_openmm_topology(topology) -> Topology:
    if isinstance(topology, Topology):
        return topology
    if hasattr(topology, "to_openmm"):  # mdtraj.Topology
        return topology.to_openmm()
    raise TypeError(f"expected an openmm.app.Topology or mdtraj.Topology, got {type(topology).__name__}")


def read_cg_topology(topology, bead_name: str = "CA", residues=None, skip_unknown: bool = False) -> CGMapping:
    """Read a one-bead-per-residue CG topology.

    Parameters
    ----------
    topology : openmm.app.Topology or mdtraj.Topology
    bead_name : str
        Name of the bead atom that sits at Cα.  A residue with a single atom is accepted
        whatever its atom is named.
    residues : iterable of int, optional
        Indices (in topology order) of the residues to backmap; others are left out.
    skip_unknown : bool
        Leave out residues whose names are not amino acids (ions, ligands, nucleic acids)
        instead of raising.

    Raises
    ------
    CGTopologyError
        Empty topology, unknown residue name, no bead or two beads in a residue; the
        message names the residue and its index.
    """
    top = _as_openmm_topology(topology)
    selected = None if residues is None else set(int(i) for i in residues)
    restype, beads, chain_index, res_ids, res_names = [], [], [], [], []
    chain_ids: list[str] = []
    chain_number: dict[int, int] = {}
    for res in top.residues():
        if selected is not None and res.index not in selected:
            continue
        try:
            name = rc.canonical_residue_name(res.name)
        except KeyError:
            if skip_unknown:
                continue
            raise CGTopologyError(
                f"unknown residue {res.name!r} {res.id} (index {res.index}, chain {res.chain.id}); "
                f"the model knows the 20 standard amino acids {', '.join(rc.RESTYPES_3)} "
                "(pass residues=... or skip_unknown=True to leave it out)") from None
        atoms = list(res.atoms())
        named = [a for a in atoms if a.name == bead_name]
        if len(named) > 1 or (not named and len(atoms) > 1):
            what = "two beads named" if len(named) > 1 else "no bead named"
            raise CGTopologyError(
                f"residue {res.name} {res.id} (index {res.index}, chain {res.chain.id}) has {what} {bead_name!r} "
                f"(atoms: {', '.join(a.name for a in atoms)}); expected one bead per residue")
        if not named and not atoms:
            raise CGTopologyError(f"residue {res.name} {res.id} (index {res.index}) has no atoms")
        bead = named[0] if named else atoms[0]
        if res.chain.index not in chain_number:
            chain_number[res.chain.index] = len(chain_ids)
            chain_ids.append(res.chain.id)
        restype.append(rc.RESTYPE_INDEX[name])
        beads.append(bead.index)
        chain_index.append(chain_number[res.chain.index])
        res_ids.append(res.id)
        res_names.append(res.name)
    if not restype:
        raise CGTopologyError("the CG topology has no amino-acid residues to backmap (empty topology or selection)")
    return CGMapping(np.array(restype, dtype=np.int64), np.array(beads, dtype=np.int64),
                     np.array(chain_index, dtype=np.int64), chain_ids, res_ids, top.getNumAtoms(), res_names)


@dataclass
class AllAtomLayout:
    """An all-atom topology and where each of its atoms comes from in the model output."""

    topology: Topology
    residue: np.ndarray   # [n_atoms] model residue index of each atom
    slot: np.ndarray      # [n_atoms] slot (see residues.slot_names) of each atom
    disulfides: list[tuple[int, int]]

    def positions_from_slots(self, atoms: np.ndarray) -> np.ndarray:
        """[..., N, NUM_SLOTS, 3] model output -> [..., n_atoms, 3] in topology order."""
        return atoms[..., self.residue, self.slot, :]


def build_aa_topology(mapping: CGMapping, segment: np.ndarray, hydrogens: bool = True,
                      disulfides: list[tuple[int, int]] | None = None) -> AllAtomLayout:
    """The all-atom ``openmm.app.Topology`` for a CG mapping.

    Parameters
    ----------
    mapping : CGMapping
    segment : [N] segment ids (see :meth:`CGMapping.segments`); the first residue of a segment
        gets an NH3+ terminus (H1, H2, H3), the last a carboxylate (OXT).
    hydrogens : bool
        Include hydrogens (amber14 names; HIS as HIE).
    disulfides : list of (i, j) residue index pairs bonded through SG; those CYS become CYX.
    """
    disulfides = [tuple(sorted(p)) for p in (disulfides or [])]
    in_disulfide = {i for p in disulfides for i in p}
    top = Topology()
    atom_res, atom_slot = [], []
    atoms_by_res: list[dict[str, object]] = []
    chains = {}
    n = mapping.n_residues
    for i in range(n):
        c = int(mapping.chain_index[i])
        name = rc.RESTYPES_3[mapping.restype[i]]
        nterm = i == 0 or segment[i] != segment[i - 1]
        # every segment is its own OpenMM chain (same chain id): a gap ends a chain, as a TER
        # record does in a PDB file, and force-field and hydrogen templates see real termini
        if c not in chains or nterm:
            chains[c] = top.addChain(mapping.chain_ids[c])
        cterm = i == n - 1 or segment[i] != segment[i + 1]
        resname = "CYX" if i in in_disulfide else name
        res = top.addResidue(resname, chains[c], id=mapping.residue_ids[i])
        made = {}
        for s, aname in enumerate(rc.slot_names(name)):
            if not aname:
                continue
            if s == rc.OXT_SLOT and not cterm:
                continue
            if s in (rc.H2_SLOT, rc.H3_SLOT) and not nterm:
                continue
            if s >= rc.H_SLOT and not hydrogens:
                continue
            if aname == "HG" and name == "CYS" and i in in_disulfide:
                continue
            if s == rc.H_SLOT and nterm:
                aname = "H1"
            made[aname] = top.addAtom(aname, Element.getBySymbol(rc.element_of(aname)), res)
            atom_res.append(i)
            atom_slot.append(s)
        for a, b in rc.residue_bonds(name, hydrogens):
            if a in made and b in made:
                top.addBond(made[a], made[b])
        if "OXT" in made:
            top.addBond(made["C"], made["OXT"])
        for h in ("H1", "H2", "H3"):
            if h in made:
                top.addBond(made["N"], made[h])
        atoms_by_res.append(made)
        if not nterm:
            top.addBond(atoms_by_res[i - 1]["C"], made["N"])
    for i, j in disulfides:
        top.addBond(atoms_by_res[i]["SG"], atoms_by_res[j]["SG"])
    return AllAtomLayout(top, np.array(atom_res, dtype=np.int64), np.array(atom_slot, dtype=np.int64), disulfides)
