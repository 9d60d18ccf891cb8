"""Coarse-grained topologies in, all-atom topologies out.

A CG topology has one bead per residue (named ``CA`` unless the user says otherwise).
:func:`read_cg_topology` turns it into the sequence, the bead indices, the chain layout and the
connectivity; :func:`build_aa_topology` builds the matching all-atom ``openmm.app.Topology`` and
the map from model slots to atoms.

Connectivity (which consecutive residues are peptide-bonded) comes from what the user's objects
say, in this order:

1. the bonds of the CG ``System`` (``HarmonicBondForce`` terms and constraints between consecutive
   beads; other bond forces such as ``CustomBondForce`` when most of their terms join consecutive
   beads, so native-contact forces are not mistaken for bonds);
2. the bonds of the CG ``Topology`` (PDB ``CONECT`` records between beads are such bonds);
3. for chains neither says anything about, the residue numbering of the file (chain ids and
   ``TER`` records already separate chains: OpenMM and mdtraj start a new chain after a TER): the
   next number, the same number with the next insertion code, or a number wrapped at the PDB or
   GRO field width is bonded; a number that jumps or repeats is a chain break; a number that
   decreases starts a new molecule;
4. only for chains whose residues are not usefully numbered (a number missing, or most residues
   not numbered one after the other, e.g. all alike), or when the user passes ``chain_break``:
   the distance rule.  Consecutive Cα farther apart than ``chain_break`` (default
   ``residues.CHAIN_BREAK_CG``, 6.5 Å, beyond the reach of a thermally stretched CG bond) start a
   new segment; a number that decreases still starts a new molecule.  The distance rule is
   checked on every frame.

Splits within a chain of the input that no bond states (numbering gaps, distance-rule breaks,
bonds of the Topology or the numbering across more than 10 Å) are reported in one warning line
per kind (see :func:`check_positions`).

Residues in different topology chains are never bonded, and neither are two molecules that share
a chain id.  A residue with no bonded neighbour (a *lone residue*) is built capped, ACE–X–NME,
which amber14 parameterizes as it is.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from openmm.app import Element, Topology

from . import residues as rc


class CGTopologyError(ValueError):
    """A CG topology or CG positions the backmapper cannot handle (the message says what to change)."""


# How each entry point spells its options (error messages name the one in use).
OPTION_NAMES = {
    "python": {"skip_unknown": "skip_unknown=True", "residues": "residues=[...]", "chain_break": "chain_break=...",
               "box_vectors": "box_vectors=...", "system": "system=..."},
    "reporter": {"skip_unknown": "skipUnknown=True", "residues": "residues=[...]", "chain_break": "chainBreak=...",
                 "box_vectors": "box vectors in the State", "system": "the Simulation's System"},
    "cli": {"skip_unknown": "--skip-unknown", "residues": "--residues", "chain_break": "--chain-break",
            "box_vectors": "a trajectory with unit cells", "system": "--system system.xml"},
}


def option_name(entry_point: str, option: str) -> str:
    """How ``option`` (python spelling) is spelled at ``entry_point`` ('python', 'reporter', 'cli')."""
    return OPTION_NAMES.get(entry_point, OPTION_NAMES["python"])[option]


# Consecutive beads closer than this (median, Å) are taken as Cα; farther ones get a warning.
_CA_CA_MAX_TYPICAL = 4.3


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
    residue_names : residue name as the CG topology spells it.
    bonded : [N-1] residue k is bonded to k+1 (by the System or Topology bonds or the numbering).
    by_distance : [N-1] the pair is decided by the distance rule (nothing else speaks for its chain).
    chain_break : Å, the distance rule's threshold.
    connectivity : where the bonds came from: 'system', 'topology', 'numbering' or 'distance' (or a
        mix, '+').
    chain_source : per chain, which of those decides its bonds.
    numbering_gaps : [N-1] pairs split because the residue numbering jumps or repeats there.
    chain_break_given : the user chose ``chain_break`` (the distance rule then replaces the numbering).
    molecule : [N] molecule number (OpenMM's molecules when the System is known).
    links : (k, l) residue pairs bonded across segments of one molecule (disulfides, cross-links).
    box : [3, 3] default periodic box in Å (the System's), or None.
    insertion_codes : PDB insertion code per residue.
    entry_point : 'python', 'reporter' or 'cli': how error messages spell options.
    """

    restype: np.ndarray
    bead_index: np.ndarray
    chain_index: np.ndarray
    chain_ids: list[str]
    residue_ids: list[str]
    n_particles: int
    residue_names: list[str] = field(default_factory=list)
    bonded: np.ndarray | None = None
    by_distance: np.ndarray | None = None
    chain_break: float = rc.CHAIN_BREAK_CG
    connectivity: str = "distance"
    chain_source: list[str] = field(default_factory=list)
    numbering_gaps: np.ndarray | None = None
    chain_break_given: bool = False
    molecule: np.ndarray | None = None
    links: list[tuple[int, int]] = field(default_factory=list)
    box: np.ndarray | None = None
    insertion_codes: list[str] = field(default_factory=list)
    entry_point: str = "python"
    reference_breaks: np.ndarray | None = None  # [N-1] distance-rule breaks of the plan's frame

    @property
    def n_residues(self) -> int:
        return len(self.restype)

    def describe(self, i: int) -> str:
        """'GLY 27 (index 26, chain A)' for residue ``i``."""
        name = self.residue_names[i] if self.residue_names else rc.RESTYPES_3[self.restype[i]]
        return f"{name} {self.residue_ids[i]} (index {i}, chain {self.chain_ids[self.chain_index[i]]})"

    def _pairs(self):
        n = self.n_residues
        same_chain = self.chain_index[1:] == self.chain_index[:-1]
        bonded = self.bonded if self.bonded is not None else np.zeros(max(n - 1, 0), dtype=bool)
        by_distance = self.by_distance if self.by_distance is not None else same_chain.copy()
        return same_chain, bonded & same_chain, by_distance & same_chain

    def distance_breaks(self, ca: np.ndarray) -> np.ndarray:
        """[..., N-1] True where the distance rule breaks the chain (only pairs it decides)."""
        _, _, by_distance = self._pairs()
        ca = np.asarray(ca, dtype=np.float64)
        d = np.linalg.norm(ca[..., 1:, :] - ca[..., :-1, :], axis=-1)
        return by_distance & (d > self.chain_break)

    def segments(self, ca: np.ndarray | None = None) -> np.ndarray:
        """[N] segment ids: a new segment at every chain start, every pair the bonds leave
        unbonded and, where the distance rule decides, every pair of consecutive Cα farther apart
        than ``chain_break`` Å (``ca`` [N, 3] in Å; needed only then).  A segment may be one
        residue long (a lone residue, built capped)."""
        same_chain, bonded, by_distance = self._pairs()
        joined = bonded.copy()
        if by_distance.any():
            if ca is None:
                raise ValueError("the distance rule needs Cα positions")
            joined |= by_distance & ~self.distance_breaks(ca)
        new = np.concatenate([[True], ~(same_chain & joined)])
        return np.cumsum(new) - 1


def _as_openmm_topology(topology) -> Topology:
    if isinstance(topology, Topology):
        return topology
    if hasattr(topology, "to_openmm"):  # mdtraj.Topology
        return topology.to_openmm()
    raise TypeError(f"expected an openmm.app.Topology or mdtraj.Topology, got {type(topology).__name__}")


def _two_particle_terms(force):
    """(p1, p2) pairs of a bond-type force (any force with getNumBonds/getBondParameters)."""
    if not (hasattr(force, "getNumBonds") and hasattr(force, "getBondParameters")):
        return []
    pairs = []
    for k in range(force.getNumBonds()):
        params = force.getBondParameters(k)
        if isinstance(params[0], (int, np.integer)):
            pairs.append((int(params[0]), int(params[1])))
        else:  # CustomCompoundBondForce: (particles, parameters)
            particles = list(params[0])
            pairs.extend((int(a), int(b)) for a, b in itertools.pairwise(particles))
    return pairs


def system_bonds(system, residue_of_atom: np.ndarray) -> tuple[set, list[tuple[int, int]]]:
    """Bonds a CG ``System`` says join consecutive residues, and every bonded pair.

    Returns (consecutive residue pairs (r, r+1) in topology residue numbers, all particle pairs
    joined by any bond force or constraint: OpenMM's molecule definition).
    """
    backbone, every = set(), []
    for force in system.getForces():
        pairs = _two_particle_terms(force)
        if not pairs:
            continue
        every.extend(pairs)
        inter = [(residue_of_atom[a], residue_of_atom[b]) for a, b in pairs
                 if residue_of_atom[a] != residue_of_atom[b]]
        consecutive = [(min(r, s), max(r, s)) for r, s in inter if abs(r - s) == 1]
        if not consecutive:
            continue
        # harmonic bonds are bonds; other bond forces count when most of their terms join
        # consecutive residues (a native-contact CustomBondForce has almost none)
        if type(force).__name__ == "HarmonicBondForce" or 2 * len(consecutive) >= len(inter):
            backbone.update(consecutive)
    for k in range(system.getNumConstraints()):
        a, b, _ = system.getConstraintParameters(k)
        every.append((int(a), int(b)))
        r, s = residue_of_atom[a], residue_of_atom[b]
        if abs(r - s) == 1:
            backbone.add((min(r, s), max(r, s)))
    return backbone, every


def _residue_number(rid: str):
    try:
        return int(str(rid).strip())
    except ValueError:
        return None


# What the residue numbering says of a pair of consecutive residues (see numbering_steps).
FOLLOWS, GAP, RESTART, UNNUMBERED = 1, 0, -1, -2
_WRAP = (9999, 99999)  # fixed-width PDB and GRO residue fields wrap to 0 after these


def _follows(a: int, code_a: str, b: int, code_b: str) -> bool:
    """Residue (b, code_b) is the one after (a, code_a) in PDB numbering."""
    if b == a:  # an insertion: 52 -> 52A -> 52B
        return len(code_a) <= 1 and len(code_b) == 1 and ord(code_b) == ord(code_a or "@") + 1
    return not code_b and (b == a + 1 or (a in _WRAP and b == 0))


def numbering_steps(residue_ids, insertion_codes=None) -> np.ndarray:
    """[N-1] what the residue numbering says of each pair of consecutive residues.

    ``FOLLOWS``: the next number, the same number with the next insertion code ('52', '52A',
    '52B', '53') or a number wrapped at the field width (9999 -> 0); ``GAP``: the number jumps or
    repeats, or an insertion code is skipped (a chain break); ``RESTART``: the number decreases (a
    new molecule, as when copies share a chain id); ``UNNUMBERED``: a number is not an integer.
    """
    num = [_residue_number(r) for r in residue_ids]
    codes = [(c or "").strip() for c in insertion_codes] if insertion_codes else [""] * len(num)
    out = np.full(max(len(num) - 1, 0), UNNUMBERED, dtype=np.int8)
    for k, (a, b) in enumerate(itertools.pairwise(num)):
        if a is not None and b is not None:
            out[k] = FOLLOWS if _follows(a, codes[k], b, codes[k + 1]) else RESTART if b < a else GAP
    return out


def _usable_numbering(chain: np.ndarray, steps: np.ndarray, pairs: np.ndarray, n_chains: int) -> np.ndarray:
    """[n_chains] the residue numbers of a chain say something: every pair numbered and at least
    half of them one after the other (not all residues numbered alike, nor counted in tens)."""

    def count(mask):
        return np.bincount(chain[pairs & mask], minlength=n_chains)

    follows = count(steps == FOLLOWS)
    return (count(steps == UNNUMBERED) == 0) & (follows > 0) & (2 * follows >= count(np.ones_like(pairs)))


def _box_angstrom(box) -> np.ndarray | None:
    """Box vectors (Quantity, list of Quantity Vec3s, or nm numbers) as a [3, 3] array in Å."""
    if box is None:
        return None
    from openmm import unit

    if unit.is_quantity(box):
        box = box.value_in_unit(unit.nanometer)
    rows = [v.value_in_unit(unit.nanometer) if unit.is_quantity(v) else v for v in box]
    return np.array([[float(x) for x in v] for v in rows], dtype=np.float64) * 10.0


def read_cg_topology(topology, bead_name: str = "CA", residues=None, skip_unknown: bool = False, *,
                     system=None, chain_break=None, entry_point: str = "python") -> CGMapping:
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
    system : openmm.System, optional
        The CG System: its bonds (and constraints) say which consecutive residues are bonded and
        which particles form one molecule; its default box is used when no box is given.
    chain_break : length (Quantity, or float in nm), optional
        Decide the chains whose bonds neither the System nor the Topology gives by the distance
        rule at this threshold instead of by their residue numbering.  Without it the distance
        rule (at ``residues.CHAIN_BREAK_CG``, 0.65 nm) decides only chains without usable numbers.
    entry_point : str
        'python', 'reporter' or 'cli': how error messages spell the options.

    Raises
    ------
    CGTopologyError
        Empty topology, unknown residue name, no bead or two beads in a residue, a System of
        another size; the message names the residue and the option that changes it.
    """
    top = _as_openmm_topology(topology)
    opt = OPTION_NAMES.get(entry_point, OPTION_NAMES["python"])
    selected = None if residues is None else {int(i) for i in residues}
    restype, beads, chain_index, res_ids, res_names, res_index, icodes = [], [], [], [], [], [], []
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
                f"unknown residue {res.name!r} {res.id} (index {res.index}, chain {res.chain.id}): not one of the "
                f"20 amino acids or their force-field/engine names; to leave non-protein particles out pass "
                f"{opt['skip_unknown']} (or choose residues with {opt['residues']})") from None
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
        res_index.append(res.index)
        icodes.append((getattr(res, "insertionCode", "") or "").strip())
    if not restype:
        raise CGTopologyError("the CG topology has no amino-acid residues to backmap (empty topology or selection)")
    chain_index = np.array(chain_index, dtype=np.int64)
    res_index = np.array(res_index, dtype=np.int64)
    mapping = CGMapping(np.array(restype, dtype=np.int64), np.array(beads, dtype=np.int64), chain_index,
                        chain_ids, res_ids, top.getNumAtoms(), res_names, insertion_codes=icodes,
                        entry_point=entry_point)
    if chain_break is not None:
        from openmm import unit

        value = chain_break.value_in_unit(unit.nanometer) if unit.is_quantity(chain_break) else float(chain_break)
        if not value > 0:
            raise CGTopologyError(f"{opt['chain_break']} must be a positive length, got {chain_break}")
        mapping.chain_break = 10.0 * value
        mapping.chain_break_given = True
    _connect(mapping, top, system, res_index)
    return mapping


def _connect(mapping: CGMapping, top: Topology, system, res_index: np.ndarray) -> None:
    """Fill in bonded/by_distance/molecule/links/box of ``mapping`` (see the module notes)."""
    n = mapping.n_residues
    residue_of_atom = np.array([a.residue.index for a in top.atoms()], dtype=np.int64)
    same_chain = mapping.chain_index[1:] == mapping.chain_index[:-1]
    consecutive = same_chain & (res_index[1:] == res_index[:-1] + 1)  # nothing skipped in between
    every: list[tuple[int, int]] = []
    sources = []
    bonded = np.zeros(n - 1, dtype=bool)
    if system is not None:
        if system.getNumParticles() != top.getNumAtoms():
            raise CGTopologyError(f"the System has {system.getNumParticles()} particles but the CG topology has "
                                  f"{top.getNumAtoms()}: pass the System of this topology")
        backbone, every = system_bonds(system, residue_of_atom)
        if backbone:
            bonded |= np.array([(int(a), int(b)) in backbone for a, b in itertools.pairwise(res_index)]) \
                & consecutive
            sources.append("system")
        if system.usesPeriodicBoundaryConditions():
            mapping.box = _box_angstrom(system.getDefaultPeriodicBoxVectors())
    top_pairs = [(a.residue.index, b.residue.index) for a, b in top.bonds()]
    if not sources:
        backbone = {(min(r, s), max(r, s)) for r, s in top_pairs if abs(r - s) == 1}
        if backbone:
            bonded |= np.array([(int(a), int(b)) in backbone for a, b in itertools.pairwise(res_index)]) \
                & consecutive
            sources.append("topology")
    # chains no bond touches: the residue numbering decides, else the distance rule
    source = [""] * len(mapping.chain_ids)
    for c in np.unique(mapping.chain_index[:-1][bonded]):
        source[int(c)] = sources[0]  # only one of System and Topology is read
    _numbering_or_distance(mapping, bonded, source, consecutive)

    # molecules: segments joined by any bonded pair (OpenMM's molecules when the System is known)
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    links = []
    # a gap the numbering jumps over (missing residues) splits the chain, not the molecule: its
    # pieces stay together when a periodic frame is made whole
    num = [_residue_number(r) for r in mapping.residue_ids]
    forward = np.array([a is not None and b is not None and b > a for a, b in itertools.pairwise(num)], dtype=bool)
    gaps = mapping.numbering_gaps if mapping.numbering_gaps is not None else np.zeros(max(n - 1, 0), dtype=bool)
    for k in np.flatnonzero(mapping.bonded | mapping.by_distance | (gaps & forward.reshape(gaps.shape))):
        parent[find(int(k) + 1)] = find(int(k))
    mapped = {int(r): k for k, r in enumerate(res_index)}
    if system is not None:
        # union over particles (a molecule may be joined through particles that are not mapped)
        pp = list(range(top.getNumAtoms()))

        def pfind(x):
            while pp[x] != x:
                pp[x] = pp[pp[x]]
                x = pp[x]
            return x

        for a, b in every:
            ra, rb = pfind(a), pfind(b)
            if ra != rb:
                pp[rb] = ra
        groups: dict[int, int] = {}
        for k, bead in enumerate(mapping.bead_index):
            root = pfind(int(bead))
            if root in groups:
                x, y = find(groups[root]), find(k)
                if x != y:
                    parent[y] = x
            else:
                groups[root] = k
        extra = [(residue_of_atom[a], residue_of_atom[b]) for a, b in every]
    else:
        extra = top_pairs
    seen = set()
    for r, s in extra:
        r, s = int(r), int(s)
        if r not in mapped or s not in mapped or r == s:
            continue
        k, m = sorted((mapped[r], mapped[s]))
        if (m == k + 1 and same_chain[k]) or (k, m) in seen:  # chain neighbours: handled above
            continue
        seen.add((k, m))
        links.append((k, m))
        x, y = find(k), find(m)
        if x != y:
            parent[y] = x
    roots = [find(k) for k in range(n)]
    mapping.molecule = np.unique(roots, return_inverse=True)[1].astype(np.int64)
    mapping.links = links


def _numbering_or_distance(mapping: CGMapping, bonded: np.ndarray, source: list[str],
                           consecutive: np.ndarray) -> None:
    """Fill in bonded, by_distance, numbering_gaps, chain_source and connectivity of ``mapping``;
    ``source`` names the chains the System or Topology bonds ('' where neither does)."""
    chain = mapping.chain_index[:-1]
    same_chain = chain == mapping.chain_index[1:]
    free = same_chain & consecutive & np.array([not source[c] for c in chain], dtype=bool)
    steps = numbering_steps(mapping.residue_ids, mapping.insertion_codes)
    numbered = np.zeros(len(source), dtype=bool)
    if not mapping.chain_break_given:  # a chain_break the user chose puts the distance rule in charge
        numbered = _usable_numbering(chain, steps, free, len(source))
    by_numbering = free & numbered[chain]
    mapping.bonded = bonded | (by_numbering & (steps == FOLLOWS))
    mapping.numbering_gaps = by_numbering & (steps == GAP)
    mapping.by_distance = free & ~numbered[chain] & (steps != RESTART)
    mapping.chain_source = [s or ("numbering" if numbered[c] else "distance") for c, s in enumerate(source)]
    has_pairs = np.bincount(chain[same_chain], minlength=len(source)) > 0
    used = {s for s, p in zip(mapping.chain_source, has_pairs) if p}
    mapping.connectivity = "+".join(x for x in ("system", "topology", "numbering", "distance") if x in used) \
        or "distance"


def _pair_source(mapping: CGMapping) -> np.ndarray:
    """[N-1] what decides each pair: its chain's source ('system', 'topology', 'numbering', 'distance')."""
    source = mapping.chain_source or [mapping.connectivity.split("+")[0]] * len(mapping.chain_ids)
    return np.array(source, dtype=object)[mapping.chain_index[:-1]]


def _places(mapping: CGMapping, ks: np.ndarray, detail) -> str:
    """'after LYS 41 (index 40, chain A; <detail>), ...' for pairs ``ks`` (the first eight)."""
    named = [f"after {mapping.describe(int(k))[:-1]}; {detail(int(k))})" for k in ks[:8]]
    return ", ".join(named) + (f" and {len(ks) - 8} more" if len(ks) > 8 else "")


def _chains_of(mapping: CGMapping, ks: np.ndarray) -> str:
    ids = list(dict.fromkeys(mapping.chain_ids[mapping.chain_index[int(k)]] for k in ks))
    return ("chain " if len(ids) == 1 else "chains ") + ", ".join(ids)


def split_notes(mapping: CGMapping, ca: np.ndarray) -> list[str]:
    """One warning line per kind of split the input does not state: where the residue numbering
    jumps, and where the distance rule breaks a chain in the frame ``ca`` [N, 3] (Å)."""
    opt = OPTION_NAMES.get(mapping.entry_point, OPTION_NAMES["python"])
    by_distance = f"{opt['chain_break']} (a Cα–Cα distance in nm, e.g. {rc.CHAIN_BREAK_CG / 10:g})"
    d = np.linalg.norm(ca[1:] - ca[:-1], axis=-1)
    notes = []
    gaps = np.flatnonzero(mapping.numbering_gaps) if mapping.numbering_gaps is not None else []
    if len(gaps):
        codes = mapping.insertion_codes or [""] * mapping.n_residues

        def next_id(k):
            return f"next {mapping.residue_ids[k + 1]}{codes[k + 1]}"

        notes.append(f"{_chains_of(mapping, gaps)} split in {len(gaps)} place(s) where the residue numbering jumps "
                     f"or repeats: {_places(mapping, gaps, next_id)}; to decide these chains by Cα distance "
                     f"instead pass {by_distance}")
    breaks = np.flatnonzero(mapping.distance_breaks(ca))
    if len(breaks):
        why = f"as {opt['chain_break']} asks" if mapping.chain_break_given else \
            "their residues are not numbered one after the other"
        notes.append(f"{_chains_of(mapping, breaks)} split in {len(breaks)} place(s) where consecutive Cα are "
                     f"farther apart than {mapping.chain_break:.2f} Å ({why}): "
                     f"{_places(mapping, breaks, lambda k: f'{d[k]:.1f} Å')}; to change this pass {opt['system']} "
                     f"(its bonds decide) or {by_distance}")
    return notes


def check_positions(mapping: CGMapping, ca: np.ndarray, box_given: bool) -> list[str]:
    """Check CG positions against what a Cα chain looks like; raise when they cannot be right.

    ``ca`` [N, 3] Å of the reference frame (made whole when a box is known).  Returns warnings
    (strings) for what looks odd but can be backmapped, and for every split the input does not
    state (:func:`split_notes`).  Bonds of the Topology or the numbering across more than 10 Å
    are taken as chain breaks (``mapping.bonded`` is changed).
    """
    opt = OPTION_NAMES.get(mapping.entry_point, OPTION_NAMES["python"])
    _, bonded, by_distance = mapping._pairs()
    d = np.linalg.norm(ca[1:] - ca[:-1], axis=-1)
    pairs = bonded | by_distance
    if not pairs.any():
        return split_notes(mapping, ca)
    source = _pair_source(mapping)
    numbered = bonded & (source == "numbering")
    notes = []
    med = float(np.median(d[pairs]))
    if med > 20.0:
        raise CGTopologyError(
            f"positions look like Å, not nm: consecutive beads are a median {med:.0f} Å apart when read as nm "
            "(Cα–Cα is 3.8 Å); pass positions in nm (an OpenMM Quantity carries its unit)")
    if med < 1.5:
        notes.append(f"positions look too small: consecutive beads are a median {med:.2f} Å apart (Cα–Cα is "
                     "3.8 Å); positions are read in nm (an OpenMM Quantity carries its unit)")
    far = bonded & (d > 10.0)
    # neither the distance rule nor the numbering expects many pairs beyond the rule's threshold
    # (numbered pairs across more than 10 Å are breaks, as when numbers run on across molecules)
    loose = by_distance | (numbered & ~far)
    broken = loose & (d > mapping.chain_break)
    if broken.sum() > max(1, 0.25 * loose.sum()):
        raise CGTopologyError(
            f"{int(broken.sum())} of {int(loose.sum())} consecutive beads are farther apart than "
            f"{mapping.chain_break:.2f} Å (median {med:.2f} Å): beads not at Cα? The model expects Cα positions; "
            f"if your model's bonds are longer, pass {opt['chain_break']} or {opt['system']} so bonds are read "
            "from it")
    if far.any():
        k = int(np.flatnonzero(far)[0])
        hint = ("periodic system without box vectors? pass " + opt["box_vectors"]) if not box_given else \
            "is the box right, or are the bonds not between these beads?"
        by_system = np.flatnonzero(far & (source == "system"))
        if by_system.size:
            k = int(by_system[0])
            raise CGTopologyError(f"the System bonds residues {mapping.describe(k)} and {mapping.describe(k + 1)} "
                                  f"{d[k]:.1f} Å apart; {hint}")
        # Topology bonds and numbers are often written for a whole sequence: a gap this long is a break
        mapping.bonded = mapping.bonded & ~far
        says = "the residue numbering joins" if source[k] == "numbering" else "the Topology bonds"
        notes.append(f"{says} residues {mapping.describe(k)} and {mapping.describe(k + 1)} {d[k]:.1f} Å apart: "
                     f"taken as a chain break ({int(far.sum())} such pair(s)); {hint}")
    stretched = np.flatnonzero(numbered & ~far & (d > mapping.chain_break))
    if stretched.size:
        notes.append(f"the residue numbering joins {stretched.size} pair(s) of residues whose Cα are farther apart "
                     f"than {mapping.chain_break:.2f} Å: {_places(mapping, stretched, lambda k: f'{d[k]:.1f} Å')}; "
                     f"built bonded (if residues are missing there, pass {opt['chain_break']} to decide by Cα "
                     "distance)")
    huge = by_distance & (d > 15.0)
    if huge.any() and not box_given:
        k = int(np.flatnonzero(huge)[0])
        notes.append(f"residues {mapping.describe(k)} and {mapping.describe(k + 1)} are {d[k]:.0f} Å apart "
                     f"and taken as a chain break: periodic system without box vectors? pass {opt['box_vectors']}")
    if med > _CA_CA_MAX_TYPICAL:
        notes.append(f"consecutive beads are a median {med:.2f} Å apart (Cα–Cα is 3.8 Å): beads not at Cα? "
                     "The model expects Cα positions")
    return notes + split_notes(mapping, ca)


# ---------------------------------------------------------------------------------------------- all-atom
# Caps of a lone residue (ACE before it, NME after it): amber14 names and elements.
_ACE_ATOMS = [("CH3", "C"), ("C", "C"), ("O", "O"), ("HH31", "H"), ("HH32", "H"), ("HH33", "H")]
_NME_ATOMS = [("N", "N"), ("H", "H"), ("CH3", "C"), ("HH31", "H"), ("HH32", "H"), ("HH33", "H")]
_CAP_PHI = -65.0      # degrees, the φ given to a lone residue (its CG bead says nothing about it)
_BOND_C_CH3 = 1.52
_BOND_C_H = 1.09


@dataclass
class AllAtomLayout:
    """An all-atom topology and where each of its atoms comes from in the model output.

    Atoms of the caps of lone residues (and the amide H of the capped residue) are not model
    slots: :meth:`positions_from_slots` places them from the residue's backbone.
    """

    topology: Topology
    residue: np.ndarray   # [n_atoms] model residue index of each atom
    slot: np.ndarray      # [n_atoms] slot (see residues.slot_names) of each atom
    disulfides: list[tuple[int, int]]
    lone: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [L] capped residues
    cap_atoms: dict = field(default_factory=dict)  # placed atom name -> [L] topology atom index (-1: none)

    def positions_from_slots(self, atoms: np.ndarray) -> np.ndarray:
        """[..., N, NUM_SLOTS, 3] model output -> [..., n_atoms, 3] in topology order."""
        out = atoms[..., self.residue, self.slot, :]
        if len(self.lone):
            placed = cap_positions(atoms[..., self.lone, :, :])
            for name, index in self.cap_atoms.items():
                ok = index >= 0
                out[..., index[ok], :] = placed[name][..., ok, :].astype(out.dtype)
        return out


def cap_positions(backbone: np.ndarray) -> dict[str, np.ndarray]:
    """Positions (Å) of ACE and NME caps and the amide H of lone residues.

    ``backbone`` [..., L, NUM_SLOTS, 3] model output of the lone residues (N, CA, C, O used).
    ACE's C is placed at φ = -65°, NME's N opposite O (ψ from the model's O), trans peptides,
    ideal bond lengths and angles.
    """
    import torch

    from . import geometry as g

    x = torch.as_tensor(np.asarray(backbone[..., :4, :], dtype=np.float64))
    n, ca, c, o = x[..., 0, :], x[..., 1, :], x[..., 2, :], x[..., 3, :]

    def place(a, b, cc, bond, ang, tors):
        shape = a.shape[:-1]
        tors = tors if torch.is_tensor(tors) else torch.full(shape, np.radians(tors), dtype=torch.float64)
        return g.nerf(a, b, cc, torch.full(shape, float(bond), dtype=torch.float64),
                      torch.full(shape, np.radians(ang), dtype=torch.float64), tors)

    out = {}
    cp = place(c, ca, n, rc.BOND_C_N, rc.ANGLE_C_N_CA, _CAP_PHI)
    out["ACE:C"] = cp
    out["ACE:O"] = place(ca, n, cp, rc.BOND_C_O, 360.0 - rc.ANGLE_CA_C_O - rc.ANGLE_CA_C_N, 0.0)
    ch3 = place(ca, n, cp, _BOND_C_CH3, rc.ANGLE_CA_C_N, 180.0)
    out["ACE:CH3"] = ch3
    for k, tors in enumerate((180.0, 60.0, -60.0)):
        out[f"ACE:HH3{k + 1}"] = place(n, cp, ch3, _BOND_C_H, 109.5, tors)
    out["H"] = place(cp, ca, n, rc.BOND_N_H, 360.0 - rc.ANGLE_C_N_H - rc.ANGLE_C_N_CA, 180.0)
    psi = g.dihedral(n, ca, c, o) + np.pi
    nn = place(n, ca, c, rc.BOND_C_N, rc.ANGLE_CA_C_N, psi)
    out["NME:N"] = nn
    out["NME:H"] = place(ca, c, nn, rc.BOND_N_H, rc.ANGLE_C_N_H, 0.0)
    me = place(ca, c, nn, rc.BOND_N_CA, rc.ANGLE_C_N_CA, 180.0)
    out["NME:CH3"] = me
    for k, tors in enumerate((180.0, 60.0, -60.0)):
        out[f"NME:HH3{k + 1}"] = place(c, nn, me, _BOND_C_H, 109.5, tors)
    return {k: v.numpy() for k, v in out.items()}


def _cap_ids(mapping: CGMapping, i: int, used: set) -> tuple[tuple[str, str], tuple[str, str]]:
    """(id, insertion code) of the ACE before and the NME after residue ``i``: the neighbouring
    residue numbers when the chain id does not use them, else ``i``'s number with a code."""
    cid = mapping.chain_ids[mapping.chain_index[i]]
    rid, icode = mapping.residue_ids[i], (mapping.insertion_codes[i] if mapping.insertion_codes else "")
    num = _residue_number(rid)
    out = []
    for delta, code in ((-1, "A"), (1, "B")):
        if num is not None and not icode and (cid, str(num + delta), "") not in used:
            out.append((str(num + delta), ""))
        else:
            out.append((rid, code))
    return out[0], out[1]


def build_aa_topology(mapping: CGMapping, segment: np.ndarray, hydrogens: bool = True,
                      disulfides: list[tuple[int, int]] | None = None, box=None) -> AllAtomLayout:
    """The all-atom ``openmm.app.Topology`` for a CG mapping.

    Parameters
    ----------
    mapping : CGMapping
    segment : [N] segment ids (see :meth:`CGMapping.segments`); every segment is its own OpenMM
        chain with the CG chain id; the first residue of a segment gets an NH3+ terminus (H1, H2,
        H3), the last a carboxylate (OXT).  A one-residue segment is capped instead: ACE–X–NME
        (amber14 has no template for a free amino acid).
    hydrogens : bool
        Include hydrogens (amber14 names; HIS as HIE).
    disulfides : list of (i, j) residue index pairs bonded through SG; those CYS become CYX.
    box : [3, 3] Å or Quantity, optional
        Periodic box vectors of the topology (default: the CG System's box, if any).
    """
    disulfides = [tuple(sorted(p)) for p in (disulfides or [])]
    in_disulfide = {i for p in disulfides for i in p}
    top = Topology()
    atom_res, atom_slot = [], []
    atoms_by_res: list[dict[str, object]] = []
    n = mapping.n_residues
    seg_size = np.bincount(segment)
    lone = [i for i in range(n) if seg_size[segment[i]] == 1]
    cap_atoms: dict[str, list[int]] = {}
    icodes = mapping.insertion_codes or [""] * n
    used = {(mapping.chain_ids[mapping.chain_index[i]], mapping.residue_ids[i], icodes[i]) for i in range(n)}
    chain = None

    def add_atom(name, element, res, i, slot):
        atom = top.addAtom(name, Element.getBySymbol(element), res)
        atom_res.append(i)
        atom_slot.append(slot)
        return atom

    def add_cap(resname, atoms, chain, i, rid, icode):
        """An ACE or NME cap of residue i (its atoms map to the residue's CA slot)."""
        cap = top.addResidue(resname, chain, id=rid, insertionCode=icode)
        made = {}
        for aname, el in atoms:
            if el == "H" and not hydrogens:
                continue
            made[aname] = add_atom(aname, el, cap, i, 1)
            cap_atoms.setdefault(resname + ":" + aname, []).append(made[aname].index)
        for h in ("H", "HH31", "HH32", "HH33"):
            if h in made:
                top.addBond(made["CH3" if h != "H" else "N"], made[h])
        return made

    for i in range(n):
        c = int(mapping.chain_index[i])
        name = rc.RESTYPES_3[mapping.restype[i]]
        nterm = i == 0 or segment[i] != segment[i - 1]
        cterm = i == n - 1 or segment[i] != segment[i + 1]
        capped = nterm and cterm
        # every segment is its own OpenMM chain (same chain id): a gap ends a chain, as a TER
        # record does in a PDB file, and force-field and hydrogen templates see real termini
        if nterm:
            chain = top.addChain(mapping.chain_ids[c])
        if capped:
            (aid, aic), (nid, nic) = _cap_ids(mapping, i, used)
            ace_atoms = add_cap("ACE", _ACE_ATOMS, chain, i, aid, aic)
            top.addBond(ace_atoms["CH3"], ace_atoms["C"])
            top.addBond(ace_atoms["C"], ace_atoms["O"])
        resname = "CYX" if i in in_disulfide else name
        res = top.addResidue(resname, chain, id=mapping.residue_ids[i], insertionCode=icodes[i])
        made = {}
        for s, aname in enumerate(rc.slot_names(name)):
            if not aname:
                continue
            if s == rc.OXT_SLOT and (not cterm or capped):
                continue
            if s in (rc.H2_SLOT, rc.H3_SLOT) and (not nterm or capped):
                continue
            if s >= rc.H_SLOT and not hydrogens:
                continue
            if aname == "HG" and name == "CYS" and i in in_disulfide:
                continue
            if s == rc.H_SLOT and nterm and not capped:
                aname = "H1"
            made[aname] = add_atom(aname, rc.element_of(aname), res, i, s)
            if s == rc.H_SLOT and capped:
                cap_atoms.setdefault("H", []).append(made[aname].index)
        if capped and hydrogens and "H" not in made:  # PRO: no amide H
            cap_atoms.setdefault("H", []).append(-1)
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
        if capped:
            top.addBond(ace_atoms["C"], made["N"])
            nme_atoms = add_cap("NME", _NME_ATOMS, chain, i, nid, nic)
            top.addBond(made["C"], nme_atoms["N"])
            top.addBond(nme_atoms["N"], nme_atoms["CH3"])
    for i, j in disulfides:
        top.addBond(atoms_by_res[i]["SG"], atoms_by_res[j]["SG"])
    box = mapping.box if box is None else box
    if box is not None:
        import openmm
        from openmm import unit

        b = _box_angstrom(box) if unit.is_quantity(box) else np.asarray(box, dtype=np.float64)
        top.setPeriodicBoxVectors([openmm.Vec3(*(v / 10.0)) for v in b] * unit.nanometer)
    return AllAtomLayout(top, np.array(atom_res, dtype=np.int64), np.array(atom_slot, dtype=np.int64), disulfides,
                         np.array(lone, dtype=np.int64),
                         {k: np.array(v, dtype=np.int64) for k, v in cap_atoms.items()})
