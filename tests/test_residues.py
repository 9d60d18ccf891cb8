"""The chemistry table (openmm_ldb.residues): vocabulary, slot layout, ideal geometry, bonds."""

import math
from collections import deque

import numpy as np
import pytest

from openmm_ldb import residues as rc

AROMATIC_RING = {
    "PHE": {"CG", "CD1", "CD2", "CE1", "CE2", "CZ"},
    "TYR": {"CG", "CD1", "CD2", "CE1", "CE2", "CZ"},
    "TRP": {"CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"},
    "HIS": {"CG", "ND1", "CD2", "CE1", "NE2"},
}
# Chemically sane bond lengths (Å) by element pair; aromatic C-C separately.
BOND_RANGES = {
    ("C", "C"): (1.45, 1.56),
    ("C", "C", "aromatic"): (1.33, 1.45),  # HIS CG=CD2 ~1.355
    ("C", "N"): (1.30, 1.50),
    ("C", "O"): (1.20, 1.45),
    ("C", "S"): (1.75, 1.85),
    ("C", "H"): (1.05, 1.12),
    ("H", "N"): (0.98, 1.04),
    ("H", "O"): (0.94, 1.00),
    ("H", "S"): (1.30, 1.36),
}
TERMINAL_ONLY = {"OXT", "H2", "H3"}


def _internal_atoms(resname):
    """Atom names of an internal residue (terminal-only slots left out)."""
    return [n for n in rc.slot_names(resname) if n and n not in TERMINAL_ONLY]


def test_twenty_residue_types():
    assert rc.NUM_RESTYPES == 20
    assert len(set(rc.RESTYPES_3)) == 20 and len(set(rc.RESTYPES_1)) == 20
    for table in (rc.SIDECHAIN_ATOMS, rc.CHI_ANGLES_ATOMS, rc.SIDECHAIN_HYDROGENS):
        assert set(table) == set(rc.RESTYPES_3)
    geo = rc.ideal_geometry()
    assert all(r in geo for r in rc.RESTYPES_3)
    assert rc.canonical_residue_name("HIE") == "HIS" and rc.canonical_residue_name("cyx") == "CYS"
    with pytest.raises(KeyError):
        rc.canonical_residue_name("HOH")


@pytest.mark.parametrize("resname", rc.RESTYPES_3)
def test_slot_names_unique_and_layout(resname):
    names = rc.slot_names(resname)
    assert len(names) == rc.NUM_SLOTS
    used = [n for n in names if n]
    assert len(used) == len(set(used)), f"duplicate slot names in {resname}: {used}"
    assert names[:4] == ["N", "CA", "C", "O"]
    heavy = [n for n in names[: rc.NUM_HEAVY_SLOTS] if n]
    assert heavy == rc.BACKBONE_ATOMS + rc.SIDECHAIN_ATOMS[resname]
    assert all(not n.startswith("H") for n in heavy)
    assert names[rc.OXT_SLOT] == "OXT"
    assert names[rc.H_SLOT] == ("" if resname == "PRO" else "H")
    assert all(n.startswith("H") for n in names[rc.H_SLOT:] if n)
    # masks agree with the names
    r = rc.RESTYPE_INDEX[resname]
    mask = rc.atom_mask_array()[r]
    assert {names[s] for s in np.flatnonzero(mask)} == set(_internal_atoms(resname))
    heavy_mask = rc.heavy_mask_array()[r]
    assert {names[s] for s in np.flatnonzero(heavy_mask)} == set(heavy)


@pytest.mark.parametrize("resname", rc.RESTYPES_3)
def test_chi_and_zmatrix_references_exist(resname):
    names = set(_internal_atoms(resname))
    for chi in rc.CHI_ANGLES_ATOMS[resname]:
        assert len(chi) == 4 and set(chi) <= names, (resname, chi)
    r = rc.RESTYPE_INDEX[resname]
    slots = rc.chi_atom_slots()[r]
    for k, chi in enumerate(rc.CHI_ANGLES_ATOMS[resname]):
        assert [rc.slot_names(resname)[s] for s in slots[k]] == chi
    entries = rc.ideal_geometry()[resname]
    built = ["N", "CA", "C"]
    for atom, a, b, c, bond, ang, tors, chi in entries:
        assert atom in names, (resname, atom)
        assert {a, b, c} <= set(built), f"{resname} {atom} refs {a, b, c} not built before it"
        assert -1 <= chi < len(rc.CHI_ANGLES_ATOMS[resname])
        if chi >= 0:  # a chi torsion is defined by exactly these four atoms
            assert rc.CHI_ANGLES_ATOMS[resname][chi] == [a, b, c, atom]
        built.append(atom)
    # every side-chain atom and non-backbone hydrogen is built exactly once
    assert sorted(built[3:]) == sorted(rc.SIDECHAIN_ATOMS[resname] + rc.SIDECHAIN_HYDROGENS[resname])


def _bond_range(resname, a, b):
    els = tuple(sorted((rc.element_of(a), rc.element_of(b))))
    ring = AROMATIC_RING.get(resname, set())
    if els == ("C", "C") and a in ring and b in ring:
        return BOND_RANGES[("C", "C", "aromatic")]
    return BOND_RANGES[els]


@pytest.mark.parametrize("resname", rc.RESTYPES_3)
def test_ideal_geometry_chemically_sane(resname):
    bonds = {tuple(sorted(b)) for b in rc.residue_bonds(resname)}
    for atom, a, b, c, bond, ang, tors, chi in rc.ideal_geometry()[resname]:
        assert tuple(sorted((atom, c))) in bonds, f"{resname}: {atom} placed from non-bonded {c}"
        lo, hi = _bond_range(resname, atom, c)
        assert lo <= bond <= hi, f"{resname} {c}-{atom} bond {bond} Å outside [{lo}, {hi}]"
        assert 95.0 <= ang <= 135.0, f"{resname} {b}-{c}-{atom} angle {ang}"
        assert -180.0 <= tors <= 180.0
    for h, a, b, c, bond, ang, tors, chi in rc.ideal_geometry()["_NTERM"]:
        assert c == "N" and 0.98 <= bond <= 1.04 and 105.0 <= ang <= 115.0


def test_backbone_constants_sane():
    assert 1.44 <= rc.BOND_N_CA <= 1.47 and 1.51 <= rc.BOND_CA_C <= 1.54
    assert 1.31 <= rc.BOND_C_N <= 1.35 and 1.22 <= rc.BOND_C_O <= 1.24 and 0.98 <= rc.BOND_N_H <= 1.04
    assert 2.0 <= rc.BOND_SG_SG <= 2.1


def _dist(p, a, b):
    return float(np.linalg.norm(p[a] - p[b]))


def _angle_deg(p, a, b, c):
    v1, v2 = p[a] - p[b], p[c] - p[b]
    return math.degrees(math.acos(np.dot(v1, v2) / np.linalg.norm(v1) / np.linalg.norm(v2)))


@pytest.mark.parametrize("cis", [False, True])
def test_peptide_template(cis):
    p = rc.peptide_template(cis=cis)
    ca_ca = _dist(p, "CA0", "CA1")
    if cis:
        assert 2.7 <= ca_ca <= 3.0, ca_ca
    else:
        assert 3.75 <= ca_ca <= 3.85, ca_ca
    # CA0 at origin, CA1 on +x, everything in the x-y plane
    assert np.allclose(p["CA0"], 0.0) and abs(p["CA1"][1]) < 1e-9 and p["CA1"][0] > 0
    assert all(abs(v[2]) < 1e-12 for v in p.values())
    # ideal bonds and angles
    assert _dist(p, "CA0", "C") == pytest.approx(rc.BOND_CA_C, abs=1e-6)
    assert _dist(p, "C", "N") == pytest.approx(rc.BOND_C_N, abs=1e-6)
    assert _dist(p, "C", "O") == pytest.approx(rc.BOND_C_O, abs=1e-6)
    assert _dist(p, "N", "CA1") == pytest.approx(rc.BOND_N_CA, abs=1e-6)
    assert _dist(p, "N", "H") == pytest.approx(rc.BOND_N_H, abs=1e-6)
    assert _angle_deg(p, "CA0", "C", "N") == pytest.approx(rc.ANGLE_CA_C_N_CIS if cis else rc.ANGLE_CA_C_N, abs=1e-4)
    assert _angle_deg(p, "C", "N", "CA1") == pytest.approx(rc.ANGLE_C_N_CA_CIS if cis else rc.ANGLE_C_N_CA, abs=1e-4)
    # O and H point to opposite sides of the C-N bond in trans, the same side in cis;
    # CA1 is across the C-N bond from CA0 in trans
    cn = p["N"] - p["C"]

    def side(q, origin):
        return np.sign(np.cross(cn[:2], (q - origin)[:2]))

    assert side(p["O"], p["C"]) != side(p["H"], p["C"]) if not cis else side(p["O"], p["C"]) == side(p["H"], p["C"])
    assert (side(p["CA0"], p["C"]) == side(p["CA1"], p["C"])) == cis


@pytest.mark.parametrize("resname", rc.RESTYPES_3)
@pytest.mark.parametrize("hydrogens", [True, False])
def test_residue_bonds_connected(resname, hydrogens):
    atoms = [n for n in _internal_atoms(resname) if hydrogens or not n.startswith("H")]
    bonds = rc.residue_bonds(resname, hydrogens)
    graph = {a: set() for a in atoms}
    for a, b in bonds:
        assert a in graph and b in graph, f"{resname}: bond {a}-{b} to an unknown atom"
        graph[a].add(b)
        graph[b].add(a)
    seen, todo = {"CA"}, deque(["CA"])
    while todo:
        for nb in graph[todo.popleft()] - seen:
            seen.add(nb)
            todo.append(nb)
    assert seen == set(atoms), f"{resname}: atoms not connected to CA: {set(atoms) - seen}"
    # hydrogens have exactly one bond
    for a in atoms:
        if a.startswith("H"):
            assert len(graph[a]) == 1, (resname, a, graph[a])
    n_ring = 1 if resname in ("PHE", "TYR", "HIS", "PRO") else 2 if resname == "TRP" else 0
    assert len(bonds) == len(atoms) - 1 + n_ring  # a tree plus its ring closures
