"""The one chemistry table of openmm-ldb.

Every atom name, residue name, chi-angle definition and ideal internal coordinate used
anywhere in the package comes from here.  Atom names follow OpenMM's amber14 templates
(PDB v3 names; ``H1/H2/H3`` on N-termini, ``OXT`` on C-termini; HIS is built as HIE and
CYS bonded in a disulfide as CYX).

Ideal geometry is *derived*, not typed in: heavy atoms come from PDBFixer's ideal residue
templates (``pdbfixer/templates/*.pdb``) and hydrogens from OpenMM's
``Modeller.addHydrogens`` applied to those templates.  The derived table is cached in
``openmm_ldb/resources/ideal_geometry.json``; regenerate it with
``python -m openmm_ldb.data --geometry`` (the data layer reads the structures).

Per-residue atom slots ("atom27" layout)
----------------------------------------
slot 0-3   N, CA, C, O
slot 4-13  side-chain heavy atoms (in chi-tree order, at most 10: TRP)
slot 14    OXT (C-terminal residues only)
slot 15    H (H1 on N-termini; absent for PRO)
slot 16-17 H2, H3 (N-terminal residues only)
slot 18-   HA / HA2, HA3 and side-chain hydrogens
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------------------
# Residue vocabulary
# ----------------------------------------------------------------------------------------
RESTYPES_1 = "ACDEFGHIKLMNPQRSTVWY"
RESTYPES_3 = [
    "ALA", "CYS", "ASP", "GLU", "PHE", "GLY", "HIS", "ILE", "LYS", "LEU",
    "MET", "ASN", "PRO", "GLN", "ARG", "SER", "THR", "VAL", "TRP", "TYR",
]
NUM_RESTYPES = len(RESTYPES_3)
ONE_TO_THREE = dict(zip(RESTYPES_1, RESTYPES_3))
THREE_TO_ONE = dict(zip(RESTYPES_3, RESTYPES_1))
RESTYPE_INDEX = {name: i for i, name in enumerate(RESTYPES_3)}

# Residue names other engines and force fields write for the 20 amino acids: protonation and
# force-field variants (amber, CHARMM, GROMACS), selenomethionine, and terminal names.  The one
# place such names are spelled out; every reader maps names through canonical_residue_name.
RESIDUE_ALIASES = {
    # amber / CHARMM / GROMACS protonation and bonding variants
    "HIE": "HIS", "HID": "HIS", "HIP": "HIS", "HSD": "HIS", "HSE": "HIS", "HSP": "HIS", "HISD": "HIS",
    "HISE": "HIS", "HISH": "HIS", "HISP": "HIS", "HIS1": "HIS", "HIS2": "HIS", "HSC": "HIS",
    "CYX": "CYS", "CYM": "CYS", "CYS2": "CYS", "CYX2": "CYS", "ASH": "ASP", "ASPP": "ASP", "GLH": "GLU",
    "GLUP": "GLU", "LYN": "LYS", "LSN": "LYS", "LYSN": "LYS", "ARN": "ARG",
    # selenomethionine (a MET in every CG model)
    "MSE": "MET",
}
# Terminal residue names: amber's N/C prefix (NALA, CGLY) and SMOG's T suffix for the last residue
# of a chain (GLYT in OpenSMOG's CI2 model), for every amino acid and its variants above.
for _name in RESTYPES_3 + [a for a in RESIDUE_ALIASES if len(a) == 3]:
    _std = RESIDUE_ALIASES.get(_name, _name)
    for _term in ("N" + _name, "C" + _name, _name + "T"):
        RESIDUE_ALIASES.setdefault(_term, _std)
del _name, _std, _term
# Atom names other packages use for the same atom (CHARMM, old PDB; SE of selenomethionine).
ATOM_ALIASES = {("ILE", "CD"): "CD1", ("*", "OT1"): "O", ("*", "OT2"): "OXT", ("*", "O1"): "O",
                ("*", "O2"): "OXT", ("*", "HN"): "H", ("MET", "SE"): "SD"}


def canonical_residue_name(name: str) -> str:
    """Return the 20-letter-vocabulary name for ``name`` (HIE, HSD -> HIS; GLYT, NGLY -> GLY;
    MSE -> MET; case and surrounding blanks ignored), or raise KeyError."""
    name = name.strip().upper()
    name = RESIDUE_ALIASES.get(name, name)
    if name not in RESTYPE_INDEX:
        raise KeyError(name)
    return name


def canonical_atom_name(resname: str, atom: str) -> str:
    return ATOM_ALIASES.get((resname, atom), ATOM_ALIASES.get(("*", atom), atom))


# ----------------------------------------------------------------------------------------
# Heavy atoms and chi angles
# ----------------------------------------------------------------------------------------
BACKBONE_ATOMS = ["N", "CA", "C", "O"]

# Side-chain heavy atoms in the order they are built (each after its parent).
SIDECHAIN_ATOMS = {
    "ALA": ["CB"],
    "CYS": ["CB", "SG"],
    "ASP": ["CB", "CG", "OD1", "OD2"],
    "GLU": ["CB", "CG", "CD", "OE1", "OE2"],
    "PHE": ["CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ"],
    "GLY": [],
    "HIS": ["CB", "CG", "ND1", "CD2", "CE1", "NE2"],
    "ILE": ["CB", "CG1", "CG2", "CD1"],
    "LYS": ["CB", "CG", "CD", "CE", "NZ"],
    "LEU": ["CB", "CG", "CD1", "CD2"],
    "MET": ["CB", "CG", "SD", "CE"],
    "ASN": ["CB", "CG", "OD1", "ND2"],
    "PRO": ["CB", "CG", "CD"],
    "GLN": ["CB", "CG", "CD", "OE1", "NE2"],
    "ARG": ["CB", "CG", "CD", "NE", "CZ", "NH1", "NH2"],
    "SER": ["CB", "OG"],
    "THR": ["CB", "OG1", "CG2"],
    "VAL": ["CB", "CG1", "CG2"],
    "TRP": ["CB", "CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"],
    "TYR": ["CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "OH"],
}

CHI_ANGLES_ATOMS = {
    "ALA": [],
    "CYS": [["N", "CA", "CB", "SG"]],
    "ASP": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "OD1"]],
    "GLU": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "PHE": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "GLY": [],
    "HIS": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "ND1"]],
    "ILE": [["N", "CA", "CB", "CG1"], ["CA", "CB", "CG1", "CD1"]],
    "LYS": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "CE"],
            ["CG", "CD", "CE", "NZ"]],
    "LEU": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "MET": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "SD"], ["CB", "CG", "SD", "CE"]],
    "ASN": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "OD1"]],
    "PRO": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"]],
    "GLN": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "ARG": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "NE"],
            ["CG", "CD", "NE", "CZ"]],
    "SER": [["N", "CA", "CB", "OG"]],
    "THR": [["N", "CA", "CB", "OG1"]],
    "VAL": [["N", "CA", "CB", "CG1"]],
    "TRP": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "TYR": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
}
MAX_CHI = 4
# Rings of each residue type (a bond through one of them is a threaded ring).
RINGS = {
    "PHE": [["CG", "CD1", "CE1", "CZ", "CE2", "CD2"]],
    "TYR": [["CG", "CD1", "CE1", "CZ", "CE2", "CD2"]],
    "TRP": [["CG", "CD1", "NE1", "CE2", "CD2"], ["CD2", "CE2", "CZ2", "CH2", "CZ3", "CE3"]],
    "HIS": [["CG", "ND1", "CE1", "NE2", "CD2"]],
    "PRO": [["N", "CA", "CB", "CG", "CD"]],
}
# Chi angles whose last atom has a 180-degree-symmetric partner (the chi is pi-periodic).
CHI_PI_PERIODIC = {"ASP": [1], "GLU": [2], "PHE": [1], "TYR": [1]}
# Atom pairs that are chemically equivalent by naming convention (swap when scoring).
SYMMETRIC_ATOMS = {
    "ASP": [("OD1", "OD2")],
    "GLU": [("OE1", "OE2")],
    "PHE": [("CD1", "CD2"), ("CE1", "CE2")],
    "TYR": [("CD1", "CD2"), ("CE1", "CE2")],
    "ARG": [("NH1", "NH2")],
}

# ----------------------------------------------------------------------------------------
# Hydrogens (amber14 names).  HIS is the HIE tautomer, CYS carries HG unless in a disulfide.
# ----------------------------------------------------------------------------------------
SIDECHAIN_HYDROGENS = {
    "ALA": ["HA", "HB1", "HB2", "HB3"],
    "CYS": ["HA", "HB2", "HB3", "HG"],
    "ASP": ["HA", "HB2", "HB3"],
    "GLU": ["HA", "HB2", "HB3", "HG2", "HG3"],
    "PHE": ["HA", "HB2", "HB3", "HD1", "HD2", "HE1", "HE2", "HZ"],
    "GLY": ["HA2", "HA3"],
    "HIS": ["HA", "HB2", "HB3", "HD2", "HE1", "HE2"],
    "ILE": ["HA", "HB", "HG12", "HG13", "HG21", "HG22", "HG23", "HD11", "HD12", "HD13"],
    "LYS": ["HA", "HB2", "HB3", "HG2", "HG3", "HD2", "HD3", "HE2", "HE3", "HZ1", "HZ2", "HZ3"],
    "LEU": ["HA", "HB2", "HB3", "HG", "HD11", "HD12", "HD13", "HD21", "HD22", "HD23"],
    "MET": ["HA", "HB2", "HB3", "HG2", "HG3", "HE1", "HE2", "HE3"],
    "ASN": ["HA", "HB2", "HB3", "HD21", "HD22"],
    "PRO": ["HA", "HB2", "HB3", "HG2", "HG3", "HD2", "HD3"],
    "GLN": ["HA", "HB2", "HB3", "HG2", "HG3", "HE21", "HE22"],
    "ARG": ["HA", "HB2", "HB3", "HG2", "HG3", "HD2", "HD3", "HE", "HH11", "HH12", "HH21", "HH22"],
    "SER": ["HA", "HB2", "HB3", "HG"],
    "THR": ["HA", "HB", "HG1", "HG21", "HG22", "HG23"],
    "VAL": ["HA", "HB", "HG11", "HG12", "HG13", "HG21", "HG22", "HG23"],
    "TRP": ["HA", "HB2", "HB3", "HD1", "HE1", "HE3", "HZ2", "HZ3", "HH2"],
    "TYR": ["HA", "HB2", "HB3", "HD1", "HD2", "HE1", "HE2", "HH"],
}
# Hydrogens whose position depends on a free rotation (methyl, hydroxyl, thiol, amine):
# the model places them at the template's staggered torsion; tests skip them.
ROTATABLE_HYDROGEN_PARENTS = {"CB": ["ALA"], "OG": ["SER"], "OG1": ["THR"], "SG": ["CYS"],
                              "OH": ["TYR"], "NZ": ["LYS"], "CE": ["MET"], "CD1": ["ILE", "LEU"],
                              "CG2": ["ILE", "THR", "VAL"], "CG1": ["VAL"], "CD2": ["LEU"]}

# ----------------------------------------------------------------------------------------
# Slot layout
# ----------------------------------------------------------------------------------------
NUM_HEAVY_SLOTS = 14
OXT_SLOT = 14
H_SLOT = 15            # "H" (or "H1" on an N-terminus)
H2_SLOT, H3_SLOT = 16, 17
FIRST_SC_H_SLOT = 18
NUM_SLOTS = FIRST_SC_H_SLOT + max(len(v) for v in SIDECHAIN_HYDROGENS.values())  # 30


def slot_names(resname: str) -> list[str]:
    """Atom names by slot for an internal residue ('' where a slot is unused).

    Terminal names (OXT, H1/H2/H3) sit in their slots too; topology building decides which
    of them exist for a given residue.
    """
    names = [""] * NUM_SLOTS
    heavy = BACKBONE_ATOMS + SIDECHAIN_ATOMS[resname]
    names[: len(heavy)] = heavy
    names[OXT_SLOT] = "OXT"
    names[H_SLOT] = "" if resname == "PRO" else "H"
    names[H2_SLOT], names[H3_SLOT] = "H2", "H3"
    hs = SIDECHAIN_HYDROGENS[resname]
    names[FIRST_SC_H_SLOT: FIRST_SC_H_SLOT + len(hs)] = hs
    return names


def element_of(atom_name: str) -> str:
    """Element symbol of a protein atom name (first letter suffices for C, N, O, S, H)."""
    return atom_name[0]


# ----------------------------------------------------------------------------------------
# Ideal backbone geometry (Engh & Huber 1991), used for the rigid peptide unit.
# ----------------------------------------------------------------------------------------
BOND_N_CA = 1.458
BOND_CA_C = 1.525
BOND_C_N = 1.329
BOND_C_O = 1.231
BOND_N_H = 1.01
ANGLE_N_CA_C = 111.2
ANGLE_CA_C_N = 116.2
ANGLE_C_N_CA = 121.7
ANGLE_CA_C_O = 120.8
ANGLE_CA_C_N_CIS = 119.0
ANGLE_C_N_CA_CIS = 127.0
ANGLE_C_N_H = 119.2   # H bisects the C-N-CA exterior angle (in-plane)
BOND_C_OXT = 1.25     # carboxylate C-O
BOND_N_H_TERMINAL = 1.01
ANGLE_CA_N_H_TERMINAL = 109.5
# Cα–Cα distance below which a peptide bond is taken as cis (trans ~3.80 Å, cis ~2.90 Å; soft CG
# traces compress trans bonds to 3.2-3.3 Å, which must stay trans).
CIS_CA_CA_THRESHOLD = 3.0
# Cα–Cα distance above which consecutive residues of a real (all-atom) chain are a chain break.
CHAIN_BREAK_CA_CA = 4.5
# The backmapper's distance rule, used only for CG inputs whose residue numbers say nothing.  A CG
# trace is not a real chain: soft-bond CG models give Cα–Cα 3.89 ± 0.45 Å, so thermal motion
# reaches 4.5 Å (a 770-residue chain with 0.3 Å noise per coordinate was cut into 51 chains).
# 6.5 Å is ~6 σ of such a bond; a missing residue (Cα(i)–Cα(i+2) ~5.5–7.3 Å) is caught by the
# residue numbering where there is one.
CHAIN_BREAK_CG = 6.5
# Disulfide geometry and the Cα–Cα window in which we try to form one.
BOND_SG_SG = 2.04
DISULFIDE_CA_CA_MAX = 6.8
# CB of a disulfide pair sit 3.4-4.3 Å apart.  Where only the Cα trace is known, CB is estimated in
# the frame of Cα(i-1), Cα(i), Cα(i+1) (x along Cα(i+1) - Cα(i-1), y the outward bisector, z = x × y):
# mean offset over 12,351 residues of the validation chains (0.2-0.27 Å spread per axis).
DISULFIDE_CB_CB = 3.8
CB_FROM_TRACE = (0.162, 1.160, 0.909)
# largest estimated CB–CB of a pair declared from the trace (true pairs of crystal traces: 99th
# percentile 5.0 Å; a CG trace at 300 K moves the estimate by up to ~1 Å)
DISULFIDE_TRACE_CB_MAX = 6.5
# C(i-1)–CD of a proline at least this (Å; ideal ~2.47): the proline closure's floor
MIN_C_CD_PROLINE = 2.3


def peptide_template(cis: bool = False) -> dict[str, np.ndarray]:
    """Planar ideal peptide unit CA(i), C(i), O(i), N(i+1), H(i+1), CA(i+1) in 2D (Å).

    Returned in a frame with CA(i) at the origin and CA(i+1) on the +x axis, the unit in the
    x–y plane.  Atom positions near CA(i) (C, O) stay attached to CA(i) and those near
    CA(i+1) (N, H) to CA(i+1) when the real CA–CA distance differs from the ideal one.
    """
    def place(a, b, bond, angle_deg, turn):
        # next point from b, at `bond`, making `angle` a-b-next, turning left (+1) or right (-1)
        v = (a - b) / np.linalg.norm(a - b)
        ang = math.radians(angle_deg) * turn
        rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
        return b + bond * (rot @ v)

    ca0 = np.zeros(2)
    c = np.array([BOND_CA_C, 0.0])
    # cis peptides (mostly X-Pro) open CA-C-N and C-N-CA to ~119/127 degrees (Cα–Cα ~2.9 Å)
    n = place(ca0, c, BOND_C_N, ANGLE_CA_C_N_CIS if cis else ANGLE_CA_C_N, +1)
    o = place(ca0, c, BOND_C_O, ANGLE_CA_C_O, -1)
    # trans: CA(i+1) anti to CA(i) across C-N (zig-zag), H anti to O
    ca1 = place(c, n, BOND_N_CA, ANGLE_C_N_CA_CIS if cis else ANGLE_C_N_CA, +1 if cis else -1)
    h = place(c, n, BOND_N_H, ANGLE_C_N_H, -1 if cis else +1)
    pts = {"CA0": ca0, "C": c, "O": o, "N": n, "H": h, "CA1": ca1}
    # rotate so that CA1 lies on +x
    ang = -math.atan2(ca1[1], ca1[0])
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    out = {k: np.array([*(rot @ v), 0.0]) for k, v in pts.items()}
    return out


# ----------------------------------------------------------------------------------------
# Internal-coordinate (z-matrix) table for side chains and hydrogens, derived from templates
# ----------------------------------------------------------------------------------------
_GEOMETRY_JSON = Path(__file__).parent / "resources" / "ideal_geometry.json"


def _protonated_residues(path: str, chain: str):
    """Residues of one real chain with amber14 hydrogens added (OpenMM Modeller).

    Yields ``(resname, {atom name: position Å}, {atom name: set(bonded names)})`` for every
    standard residue; HIS is protonated as HIE.
    """
    import gzip

    from openmm.app import ForceField, Modeller, PDBFile

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        pdb = PDBFile(f)
    modeller = Modeller(pdb.topology, pdb.positions)
    modeller.delete([r for r in modeller.topology.residues()
                     if r.chain.id != chain or r.name not in RESTYPE_INDEX])
    modeller.delete([a for a in modeller.topology.atoms() if a.element is not None
                     and a.element.symbol == "H"])
    variants = ["HIE" if r.name == "HIS" else None for r in modeller.topology.residues()]
    modeller.addHydrogens(ForceField("amber14-all.xml"), variants=variants)
    xyz = np.array(modeller.positions.value_in_unit(modeller.positions.unit)) * 10.0  # nm -> Å
    bonded = {}
    for a, b in modeller.topology.bonds():
        bonded.setdefault(a, set()).add(b)
        bonded.setdefault(b, set()).add(a)
    for res in modeller.topology.residues():
        pos = {a.name: xyz[a.index] for a in res.atoms()}
        bonds = {a.name: {b.name for b in bonded.get(a, ()) if b.residue is res} for a in res.atoms()}
        yield res.name, pos, bonds


def _angle(a, b, c):
    v1, v2 = a - b, c - b
    return math.degrees(math.acos(np.clip(np.dot(v1, v2) / np.linalg.norm(v1) / np.linalg.norm(v2), -1, 1)))


def _dihedral(a, b, c, d):
    b0, b1, b2 = a - b, c - b, d - c
    b1n = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1n) * b1n
    w = b2 - np.dot(b2, b1n) * b1n
    x = np.dot(v, w)
    y = np.dot(np.cross(b1n, v), w)
    return math.degrees(math.atan2(y, x))


def _zmatrix_refs(resname: str, bonds: dict) -> list[tuple]:
    """Reference atoms for each built atom of ``resname``: ``(atom, a, b, c, chi_index)``.

    The parent ``c`` is the most recently built heavy neighbour; the dihedral a-b-c-atom is a
    chi angle where one is defined, else it uses a built sibling on ``c`` (heavy first), else
    the great-grandparent, so that every non-chi torsion is fixed by rigid geometry.
    """
    chis = {tuple(c[:3]): (k, c[3]) for k, c in enumerate(CHI_ANGLES_ATOMS[resname])}
    placed = ["N", "CA", "C"]
    parent = {"CA": "N", "C": "CA"}
    out = []
    for atom in SIDECHAIN_ATOMS[resname] + SIDECHAIN_HYDROGENS[resname]:
        p = max((n for n in bonds[atom] if n in placed and not n.startswith("H")), key=placed.index)
        g = parent[p]
        refs, chi_index = None, -1
        for (a, b, c), (k, last) in chis.items():
            if last == atom and b == g and c == p:
                refs, chi_index = (a, g, p), k
        if refs is None:
            siblings = [s for s in bonds[p] if s in placed and s not in (g, atom)]
            siblings.sort(key=lambda s: (s.startswith("H"), placed.index(s)))
            refs = (siblings[0], g, p) if siblings else (parent[g], g, p)
        out.append((atom, *refs, chi_index))
        placed.append(atom)
        parent[atom] = p
    return out


def _canonical_hydrogen_names(pos: dict, refs: list) -> dict:
    """Rename equivalent hydrogens on one parent (HB2/HB3, methyl H's) in a fixed geometric
    order; ``addHydrogens`` names them in no particular order, which would blur the averages."""
    groups: dict[str, list] = {}
    for atom, a, b, c, _chi in refs:
        if atom.startswith("H"):
            groups.setdefault(c, []).append((atom, a, b))
    out = dict(pos)
    for c, hs in groups.items():
        if len(hs) < 2:
            continue
        a, b = hs[0][1], hs[0][2]
        tors = np.array([_dihedral(pos[a], pos[b], pos[c], pos[h]) for h, _, _ in hs])
        if len(hs) == 3:  # start at the hydrogen closest to anti, then go round
            start = int(np.argmax(np.abs(tors)))
            order = sorted(range(3), key=lambda k: (tors[k] - tors[start]) % 360.0)
        else:
            order = list(np.argsort((tors + 90.0) % 360.0))
        for (name, _, _), k in zip(hs, order):
            out[name] = pos[hs[k][0]]
    return out


def _robust_torsion(values: np.ndarray) -> float:
    """Centre of the most populated torsion mode (methyl/hydroxyl torsions are multimodal)."""
    hist, edges = np.histogram(values, bins=36, range=(-180, 180))
    centre = 0.5 * (edges[hist.argmax()] + edges[hist.argmax() + 1])
    delta = (values - centre + 180.0) % 360.0 - 180.0
    return float((centre + delta[np.abs(delta) < 30.0].mean() + 180.0) % 360.0 - 180.0)


def derive_ideal_geometry(chains: list[tuple[str, str]]) -> dict:
    """Build the z-matrix of every side-chain heavy atom and non-backbone hydrogen.

    Each entry is ``[atom, ref_a, ref_b, ref_c, bond, angle, torsion, chi_index]``: the atom
    sits ``bond`` Å from ``ref_c`` with angle ref_b-ref_c-atom (degrees) and dihedral
    ref_a-ref_b-ref_c-atom equal to ``torsion``, plus chi[chi_index] when ``chi_index >= 0``.
    Values are averages over real X-ray chains (``chains``: (path, chain id) pairs) with
    hydrogens placed by OpenMM's ``Modeller.addHydrogens`` using amber14 parameters.
    """
    refs: dict[str, list] = {}
    bond_table: dict[str, list] = {}
    samples: dict[str, list] = {}
    nterm: list = []
    used = []
    for path, chain in chains:
        try:  # chains with gaps have no amber template for the residue before the gap
            residues = list(_protonated_residues(path, chain))
        except ValueError:
            continue
        used.append(f"{os.path.basename(path)}:{chain}")
        for i, (resname, pos, bonds) in enumerate(residues):
            names = SIDECHAIN_ATOMS[resname] + SIDECHAIN_HYDROGENS[resname] + ["N", "CA", "C"]
            if any(n not in pos for n in names):
                continue  # incomplete (or CYX without HG)
            if resname not in refs:
                refs[resname] = _zmatrix_refs(resname, bonds)
                known = set(names) | {"O", "H"}
                bond_table[resname] = sorted({tuple(sorted((a, b))) for a in bonds for b in bonds[a]
                                              if a in known and b in known})
            pos = _canonical_hydrogen_names(pos, refs[resname])
            row = []
            for atom, a, b, c, chi in refs[resname]:
                row.append((float(np.linalg.norm(pos[atom] - pos[c])), _angle(pos[b], pos[c], pos[atom]),
                            _dihedral(pos[a], pos[b], pos[c], pos[atom])))
            samples.setdefault(resname, []).append(row)
        _, pos0, _ = residues[0]
        # OpenMM's hydrogens.xml names the NH3+ hydrogens H, H2, H3 (amber14 writes H1 for H)
        if all(h in pos0 for h in ("H", "H2", "H3")):
            nterm.append([(float(np.linalg.norm(pos0[h] - pos0["N"])), _angle(pos0["CA"], pos0["N"], pos0[h]),
                           _dihedral(pos0["C"], pos0["CA"], pos0["N"], pos0[h])) for h in ("H", "H2", "H3")])
    table = {"_source": used, "_bonds": bond_table}
    for resname in RESTYPES_3:
        data = np.array(samples[resname])  # [n, atoms, 3]
        entries = []
        for j, (atom, a, b, c, chi) in enumerate(refs[resname]):
            torsion = 0.0 if chi >= 0 else _robust_torsion(data[:, j, 2])
            entries.append([atom, a, b, c, round(float(data[:, j, 0].mean()), 4),
                            round(float(data[:, j, 1].mean()), 3), round(torsion, 3), chi])
        table[resname] = entries
        table.setdefault("_counts", {})[resname] = len(data)
    data = np.array(nterm)
    table["_NTERM"] = [[h, "C", "CA", "N", round(float(data[:, k, 0].mean()), 4),
                        round(float(data[:, k, 1].mean()), 3), round(_robust_torsion(data[:, k, 2]), 3), -1]
                       for k, h in enumerate(("H1", "H2", "H3"))]
    return table


@functools.lru_cache(maxsize=None)
def ideal_geometry() -> dict:
    """The z-matrix table (see :func:`derive_ideal_geometry`), loaded from the cached JSON."""
    with open(_GEOMETRY_JSON) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------
# Dense tensors for the model (numpy; geometry.py turns them into torch)
# ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def zmatrix_arrays() -> dict[str, np.ndarray]:
    """Per-residue-type z-matrix as dense arrays over slots.

    Returns arrays of shape [NUM_RESTYPES, NUM_SLOTS]: ``refs`` [.., 3] (slot indices of
    ref_a, ref_b, ref_c), ``bond``, ``angle`` (radians), ``torsion`` (radians), ``chi``
    (index or -1), ``build`` (1 where the atom is built by the z-matrix) and
    ``order`` [NUM_RESTYPES, NUM_SLOTS] giving the build order of slots (each after its refs).
    """
    geo = ideal_geometry()
    n_steps = NUM_SLOTS - FIRST_SC_H_SLOT + NUM_HEAVY_SLOTS  # enough for the longest list
    refs = np.zeros((NUM_RESTYPES, n_steps, 3), dtype=np.int64)
    target = np.zeros((NUM_RESTYPES, n_steps), dtype=np.int64)
    bond = np.zeros((NUM_RESTYPES, n_steps), dtype=np.float32)
    angle = np.zeros((NUM_RESTYPES, n_steps), dtype=np.float32)
    torsion = np.zeros((NUM_RESTYPES, n_steps), dtype=np.float32)
    chi = np.full((NUM_RESTYPES, n_steps), -1, dtype=np.int64)
    valid = np.zeros((NUM_RESTYPES, n_steps), dtype=np.float32)
    for r, resname in enumerate(RESTYPES_3):
        index = {n: i for i, n in enumerate(slot_names(resname)) if n}
        for s, (atom, a, b, c, bl, an, to, ci) in enumerate(geo[resname]):
            refs[r, s] = [index[a], index[b], index[c]]
            target[r, s] = index[atom]
            bond[r, s], angle[r, s], torsion[r, s] = bl, math.radians(an), math.radians(to)
            chi[r, s] = ci
            valid[r, s] = 1.0
        # unused steps write into the (unused for this residue) OXT slot of nothing: point to
        # slot 0 refs and keep valid=0 so they are masked out
    return {"refs": refs, "target": target, "bond": bond, "angle": angle, "torsion": torsion,
            "chi": chi, "valid": valid}


@functools.lru_cache(maxsize=None)
def atom_mask_array() -> np.ndarray:
    """[NUM_RESTYPES, NUM_SLOTS] 1 where an internal residue of that type has the atom.

    Terminal-only slots (OXT, H2, H3) are 0 here; see :func:`terminal_slot_mask`.
    """
    mask = np.zeros((NUM_RESTYPES, NUM_SLOTS), dtype=np.float32)
    for r, resname in enumerate(RESTYPES_3):
        for s, n in enumerate(slot_names(resname)):
            if n and s not in (OXT_SLOT, H2_SLOT, H3_SLOT):
                mask[r, s] = 1.0
    return mask


@functools.lru_cache(maxsize=None)
def heavy_mask_array() -> np.ndarray:
    """[NUM_RESTYPES, NUM_SLOTS] 1 for heavy-atom slots a residue has (OXT excluded)."""
    mask = atom_mask_array().copy()
    mask[:, NUM_HEAVY_SLOTS:] = 0.0
    return mask


@functools.lru_cache(maxsize=None)
def chi_mask_array() -> np.ndarray:
    """[NUM_RESTYPES, MAX_CHI] 1 where the chi angle exists."""
    mask = np.zeros((NUM_RESTYPES, MAX_CHI), dtype=np.float32)
    for r, resname in enumerate(RESTYPES_3):
        mask[r, : len(CHI_ANGLES_ATOMS[resname])] = 1.0
    return mask


@functools.lru_cache(maxsize=None)
def chi_pi_periodic_array() -> np.ndarray:
    mask = np.zeros((NUM_RESTYPES, MAX_CHI), dtype=np.float32)
    for resname, ks in CHI_PI_PERIODIC.items():
        for k in ks:
            mask[RESTYPE_INDEX[resname], k] = 1.0
    return mask


@functools.lru_cache(maxsize=None)
def chi_atom_slots() -> np.ndarray:
    """[NUM_RESTYPES, MAX_CHI, 4] slot indices of the four atoms defining each chi."""
    out = np.zeros((NUM_RESTYPES, MAX_CHI, 4), dtype=np.int64)
    for r, resname in enumerate(RESTYPES_3):
        index = {n: i for i, n in enumerate(slot_names(resname)) if n}
        for k, atoms in enumerate(CHI_ANGLES_ATOMS[resname]):
            out[r, k] = [index[a] for a in atoms]
    return out


@functools.lru_cache(maxsize=None)
def symmetric_swap_array() -> np.ndarray:
    """[NUM_RESTYPES, NUM_SLOTS] permutation of slots that swaps symmetric atoms."""
    perm = np.tile(np.arange(NUM_SLOTS), (NUM_RESTYPES, 1))
    for resname, pairs in SYMMETRIC_ATOMS.items():
        index = {n: i for i, n in enumerate(slot_names(resname)) if n}
        r = RESTYPE_INDEX[resname]
        for a, b in pairs:
            perm[r, index[a]], perm[r, index[b]] = index[b], index[a]
    return perm


def residue_bonds(resname: str, hydrogens: bool = True) -> list[tuple[str, str]]:
    """Intra-residue bonds (names) of an internal residue, from OpenMM's templates."""
    bonds = [tuple(b) for b in ideal_geometry()["_bonds"][resname]]
    return [b for b in bonds if hydrogens or not (b[0].startswith("H") or b[1].startswith("H"))]


def bond_path_lengths(bonds, root: str) -> dict[str, int]:
    """Bonds from ``root`` to every atom reachable through ``bonds`` (pairs of names)."""
    nbrs: dict = {}
    for a, b in bonds:
        nbrs.setdefault(a, set()).add(b)
        nbrs.setdefault(b, set()).add(a)
    dist = {root: 0}
    frontier = [root]
    while frontier:
        nxt = []
        for x in frontier:
            for y in nbrs.get(x, ()):
                if y not in dist:
                    dist[y] = dist[x] + 1
                    nxt.append(y)
        frontier = nxt
    return dist
