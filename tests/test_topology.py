"""CG topologies in, all-atom topologies out (openmm_ldb.topology), on real protein chains."""

import dataclasses

import mdtraj
import numpy as np
import openmm
import pytest
import torch
from conftest import as_batch, cg_topology, disulfide_pairs
from openmm import app
from openmm.app import Element, ForceField, Topology

from openmm_ldb import geometry as g
from openmm_ldb import residues as rc
from openmm_ldb import topology as tp
from openmm_ldb.cg import demo_structure_path


@pytest.fixture(scope="module")
def forcefield():
    return ForceField("amber14-all.xml")


def _sub_chain(chain, keep):
    """The residues ``keep`` (indices) of a real chain, a new segment where residues are left out
    (``cg_topology`` then skips a residue number there, as a file with missing residues does)."""
    keep = np.asarray(keep)
    new = np.concatenate([[False], (np.diff(keep) > 1) | (np.diff(chain.segment[keep]) != 0)])
    return dataclasses.replace(chain, restype=chain.restype[keep], segment=np.cumsum(new).astype(np.int64),
                               xyz=chain.xyz[:, keep], present=chain.present[keep])


def _ca(chain):
    return chain.xyz[0, :, g.CA_SLOT]


def _layout(chains, hydrogens=True, disulfides=None):
    mapping = tp.read_cg_topology(cg_topology(chains))
    seg = mapping.segments(np.concatenate([_ca(c) for c in chains]))
    return mapping, seg, tp.build_aa_topology(mapping, seg, hydrogens=hydrogens, disulfides=disulfides)


# ----------------------------------------------------------------------------------------------
# Reading CG topologies
# ----------------------------------------------------------------------------------------------
def test_read_openmm_topology(real_chains):
    chain = real_chains[0]
    top = cg_topology([chain])
    m = tp.read_cg_topology(top)
    assert m.n_residues == len(chain.restype) and m.n_particles == top.getNumAtoms()
    assert np.array_equal(m.restype, chain.restype)
    assert np.array_equal(m.bead_index, np.arange(len(chain.restype)))
    assert np.array_equal(m.chain_index, np.zeros(len(chain.restype)))
    assert m.chain_ids == ["A"] and m.residue_ids[:3] == ["1", "2", "3"]
    assert np.array_equal(m.segments(_ca(chain)), chain.segment)


def test_read_mdtraj_topology(real_chains):
    chain = real_chains[0]
    m_omm = tp.read_cg_topology(cg_topology([chain]))
    m_md = tp.read_cg_topology(mdtraj.Topology.from_openmm(cg_topology([chain])))
    assert np.array_equal(m_md.restype, m_omm.restype) and np.array_equal(m_md.bead_index, m_omm.bead_index)
    # a Cα-only topology sliced from a real all-atom structure with mdtraj
    traj = mdtraj.load(str(demo_structure_path()))
    ca_traj = traj.atom_slice(traj.topology.select("name CA"))
    m = tp.read_cg_topology(ca_traj.topology)
    seq = [rc.RESTYPE_INDEX[rc.canonical_residue_name(r.name)] for r in traj.topology.residues]
    assert np.array_equal(m.restype, seq) and m.n_particles == ca_traj.n_atoms == 56
    seg = m.segments(ca_traj.xyz[0] * 10.0)
    assert (seg == 0).all()


def test_custom_bead_name(real_chains):
    """Two beads per residue (BB and SC): the backbone bead is picked by name."""
    chain = real_chains[0]
    top = Topology()
    c = top.addChain("A")
    for rt in chain.restype:
        res = top.addResidue(rc.RESTYPES_3[rt], c)
        top.addAtom("BB", Element.getBySymbol("C"), res)
        top.addAtom("SC", Element.getBySymbol("C"), res)
    m = tp.read_cg_topology(top, bead_name="BB")
    assert np.array_equal(m.bead_index, 2 * np.arange(len(chain.restype)))
    assert m.n_particles == 2 * len(chain.restype)
    with pytest.raises(tp.CGTopologyError, match="no bead named 'CA'"):
        tp.read_cg_topology(top)
    # one-atom residues are accepted whatever the bead is called
    m = tp.read_cg_topology(cg_topology([chain], bead_name="B1"))
    assert m.n_residues == len(chain.restype)


def test_multiple_chains(real_chains):
    a, b = real_chains[0], real_chains[1 % len(real_chains)]
    # put chain B's first Cα 3.8 Å from chain A's last one: still a new segment (new chain)
    b = dataclasses.replace(b, xyz=b.xyz - b.xyz[:1, :1, g.CA_SLOT:g.CA_SLOT + 1]
                            + _ca(a)[-1] + np.array([3.8, 0.0, 0.0], dtype=np.float32))
    m = tp.read_cg_topology(cg_topology([a, b]))
    na, nb = len(a.restype), len(b.restype)
    assert m.chain_ids == ["A", "B"]
    assert np.array_equal(m.chain_index, np.r_[np.zeros(na), np.ones(nb)])
    assert np.array_equal(m.bead_index, np.arange(na + nb))
    seg = m.segments(np.concatenate([_ca(a), _ca(b)]))
    assert np.array_equal(seg, np.r_[np.zeros(na), np.ones(nb)])


def test_chain_break_from_numbering_else_distance(real_chains):
    """A gap in the residue numbering splits a chain (not the distance); a chain whose residues are
    not numbered one after the other falls back to the distance rule at CHAIN_BREAK_CG."""
    chain = real_chains[0]
    n = len(chain.restype)
    cut = n // 2
    sub = _sub_chain(chain, np.r_[0:cut, cut + 5:n])  # five residues missing: a real gap
    expected = np.r_[np.zeros(cut), np.ones(n - 5 - cut)]
    m = tp.read_cg_topology(cg_topology([sub]))
    assert m.connectivity == "numbering" and np.flatnonzero(m.numbering_gaps).tolist() == [cut - 1]
    assert np.array_equal(m.segments(), expected)  # no positions needed
    top = cg_topology([sub])
    for res in top.residues():  # every residue numbered alike: the numbers say nothing
        res.id = "1"
    m = tp.read_cg_topology(top)
    assert m.connectivity == "distance" and m.chain_break == rc.CHAIN_BREAK_CG
    assert np.linalg.norm(_ca(sub)[cut] - _ca(sub)[cut - 1]) > rc.CHAIN_BREAK_CG
    assert np.array_equal(m.segments(_ca(sub)), expected)
    # consecutive real Cα are all closer than the break distance of real chains
    assert (np.linalg.norm(np.diff(_ca(chain), axis=0), axis=-1) < rc.CHAIN_BREAK_CA_CA).all()


def test_numbering_steps():
    """Next number, next insertion code and a number wrapped at the PDB/GRO field width follow;
    a jump, a repeat or a skipped insertion code is a gap; a smaller number a restart."""
    F, G, R, U = tp.FOLLOWS, tp.GAP, tp.RESTART, tp.UNNUMBERED
    ids = ["1", "2", "5", "5", "5", "6", "9999", "0", "3", "1", "x", "2", "2", "99999", "0"]
    codes = ["", "", "", "A", "B", "", "", "", "", "", "", "", "B", "", ""]
    assert tp.numbering_steps(ids, codes).tolist() == [F, G, F, F, F, G, F, G, R, U, U, G, G, F]
    assert tp.numbering_steps(["7", "7", "8"]).tolist() == [G, F]  # a repeat (mdtraj drops insertion codes)


def _ca_pdb_lines(rows) -> str:
    """PDB text of Cα atoms (resname, chain, number, insertion code) 3.8 Å apart; 'TER' rows end a chain."""
    lines, x = [], 0.0
    for serial, row in enumerate(rows, start=1):
        if row == "TER":
            lines.append(f"TER   {serial:5d}")
            continue
        name, chain, number, code = row
        x += 3.8
        lines.append(f"ATOM  {serial:5d}  CA  {name} {chain}{number:4d}{code:1s}   {x:8.3f}{0.0:8.3f}{0.0:8.3f}"
                     "  1.00  0.00           C")
    return "\n".join(lines) + "\n"


def test_file_chains_ter_conect_and_insertion_codes(tmp_path):
    """What a Cα PDB says decides, in OpenMM's reader and mdtraj's (the CLI's): TER starts a new
    chain even with the same chain id, CONECT records between beads are bonds, 52 -> 52A -> 53
    follow each other and 4 -> 52 is a gap (mdtraj drops insertion codes: 52 -> 52 is one too)."""
    rows = [("GLY", "A", 1, ""), ("ALA", "A", 2, ""), "TER", ("GLY", "A", 3, ""), ("ALA", "A", 4, ""),
            ("SER", "A", 52, ""), ("SER", "A", 52, "A"), ("LYS", "A", 53, ""), ("ALA", "B", 7, ""),
            ("ALA", "B", 9, ""), ("GLU", "A", 60, "")]
    path = tmp_path / "ca.pdb"
    path.write_text(_ca_pdb_lines(rows) + "CONECT    9   10\nCONECT   10    9\nEND\n")  # B 7 - B 9 bonded
    m = tp.read_cg_topology(app.PDBFile(str(path)).topology)
    assert m.chain_ids == ["A", "A", "B", "A"] and m.connectivity == "topology+numbering"
    assert m.chain_source[:3] == ["numbering", "numbering", "topology"]
    assert m.segments().tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 3, 4]
    assert np.flatnonzero(m.numbering_gaps).tolist() == [3]
    m = tp.read_cg_topology(mdtraj.load_topology(str(path)).to_openmm())
    assert m.segments().tolist() == [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]
    assert np.flatnonzero(m.numbering_gaps).tolist() == [3, 4]


# ----------------------------------------------------------------------------------------------
# Errors name the residue and its index
# ----------------------------------------------------------------------------------------------
def test_error_unknown_residue(real_chains):
    top = cg_topology([real_chains[0]])
    res = list(top.residues())[3]
    res.name = "XYZ"
    with pytest.raises(tp.CGTopologyError) as err:
        tp.read_cg_topology(top)
    assert isinstance(err.value, ValueError)
    assert "XYZ" in str(err.value) and "index 3" in str(err.value)
    m = tp.read_cg_topology(top, skip_unknown=True)
    assert m.n_residues == len(real_chains[0].restype) - 1 and 3 not in m.bead_index
    m = tp.read_cg_topology(top, residues=[0, 1, 2])
    assert m.n_residues == 3


def test_error_two_beads(real_chains):
    top = Topology()
    c = top.addChain("A")
    for i, rt in enumerate(real_chains[0].restype[:10]):
        res = top.addResidue(rc.RESTYPES_3[rt], c)
        for _ in range(2 if i == 5 else 1):
            top.addAtom("CA", Element.getBySymbol("C"), res)
    with pytest.raises(tp.CGTopologyError, match="two beads") as err:
        tp.read_cg_topology(top)
    assert rc.RESTYPES_3[real_chains[0].restype[5]] in str(err.value) and "index 5" in str(err.value)


def test_error_no_bead_named_ca(real_chains):
    top = Topology()
    c = top.addChain("A")
    for i, rt in enumerate(real_chains[0].restype[:10]):
        res = top.addResidue(rc.RESTYPES_3[rt], c)
        for name in (("X1", "X2") if i == 7 else ("CA",)):
            top.addAtom(name, Element.getBySymbol("C"), res)
    with pytest.raises(tp.CGTopologyError, match="no bead named 'CA'") as err:
        tp.read_cg_topology(top)
    assert rc.RESTYPES_3[real_chains[0].restype[7]] in str(err.value) and "index 7" in str(err.value)


def test_error_empty_topology():
    with pytest.raises(tp.CGTopologyError):
        tp.read_cg_topology(Topology())
    top = Topology()
    top.addChain("A")
    with pytest.raises(ValueError):
        tp.read_cg_topology(top)


def test_one_residue_segment_is_capped(real_chains, forcefield):
    """A residue alone between two gaps (3 % of real chains) is its own segment, built as
    ACE-X-NME so amber14 parameterizes it (it was refused before)."""
    chain = real_chains[0]
    n = len(chain.restype)
    sub = _sub_chain(chain, np.r_[0:20, 25, 30:n])  # residue 25 alone between two gaps
    m = tp.read_cg_topology(cg_topology([sub]))
    seg = m.segments(_ca(sub))
    assert np.bincount(seg).tolist() == [20, 1, n - 30]
    layout = tp.build_aa_topology(m, seg, hydrogens=True)
    names = [r.name for r in layout.topology.residues()]
    assert names[19:24] == [rc.RESTYPES_3[sub.restype[19]], "ACE", rc.RESTYPES_3[sub.restype[20]], "NME",
                            rc.RESTYPES_3[sub.restype[21]]]
    assert layout.topology.getNumChains() == 3
    system = forcefield.createSystem(layout.topology)
    assert system.getNumParticles() == layout.topology.getNumAtoms()


# ----------------------------------------------------------------------------------------------
# All-atom topologies
# ----------------------------------------------------------------------------------------------
def test_aa_topology_creates_amber_system(real_chains, forcefield):
    """Every real chain (disulfides passed explicitly as CYX) gets an amber14 System."""
    n_disulfide = 0
    for chain in real_chains:
        ss = disulfide_pairs(chain)
        n_disulfide += len(ss)
        _mapping, seg, layout = _layout([chain], disulfides=ss)
        system = forcefield.createSystem(layout.topology)
        assert system.getNumParticles() == layout.topology.getNumAtoms() == len(layout.slot)
        names = [r.name for r in layout.topology.residues()]
        assert names.count("CYX") == 2 * len(ss)
        sg_bonds = [(a, b) for a, b in layout.topology.bonds() if a.name == "SG" and b.name == "SG"]
        assert len(sg_bonds) == len(ss)
        assert sum(1 for a in layout.topology.atoms() if a.name == "OXT") == seg.max() + 1
    if not n_disulfide:
        pytest.skip("no disulfide among the real chains (demo structure only)")


def test_aa_topology_multi_chain_and_break(real_chains, forcefield):
    a, b = real_chains[0], real_chains[1 % len(real_chains)]
    n = len(b.restype)
    b = _sub_chain(b, np.r_[0:n // 2, n // 2 + 4:n])  # chain B has a gap: two segments
    _mapping, seg, layout = _layout([a, b], disulfides=None)
    assert seg.max() + 1 == 3
    system = forcefield.createSystem(layout.topology)
    assert system.getNumParticles() == layout.topology.getNumAtoms()
    # one OpenMM chain per segment, keeping the CG chain ids (A for the first chain, B for both
    # halves of the second)
    ids = [c.id for c in layout.topology.chains()]
    assert len(ids) == seg.max() + 1 and ids[-2:] == ["B", "B"] and set(ids) == {"A", "B"}
    # every segment starts with NH3+ and ends with a carboxylate
    atoms = {(at.residue.index, at.name) for at in layout.topology.atoms()}
    for s in range(3):
        first, last = np.flatnonzero(seg == s)[[0, -1]]
        assert (int(first), "H2") in atoms and (int(first), "H3") in atoms and (int(last), "OXT") in atoms
    # no peptide bond across the break or between the chains
    cross = [(x, y) for x, y in layout.topology.bonds() if seg[x.residue.index] != seg[y.residue.index]]
    assert not cross


def test_aa_topology_heavy_atoms_only(real_chains):
    chain = real_chains[0]
    n = len(chain.restype)
    sub = _sub_chain(chain, np.r_[0:n // 2, n // 2 + 4:n])
    _mapping, seg, layout = _layout([sub], hydrogens=False)
    n_heavy = sum(4 + len(rc.SIDECHAIN_ATOMS[rc.RESTYPES_3[t]]) for t in sub.restype)
    assert layout.topology.getNumAtoms() == n_heavy + (seg.max() + 1)
    assert not any(at.element.symbol == "H" for at in layout.topology.atoms())
    oxt = [at.residue.index for at in layout.topology.atoms() if at.name == "OXT"]
    assert oxt == [int(np.flatnonzero(seg == s)[-1]) for s in range(seg.max() + 1)]


def test_positions_from_slots_in_topology_order(real_chains, forcefield):
    chain = next((c for c in real_chains if disulfide_pairs(c)), real_chains[0])
    ss = disulfide_pairs(chain)
    _mapping, seg, layout = _layout([chain], disulfides=ss)
    tables = g.GeometryTables()
    xyz, rt, _segment, _ = as_batch(chain)
    angles, _ = g.angles_from_atoms(tables, xyz, rt, torch.as_tensor(seg))
    built, mask = g.build_atoms(tables, xyz[:, :, g.CA_SLOT], rt, torch.as_tensor(seg), angles)
    slots = built[0].numpy()
    pos = layout.positions_from_slots(slots)
    assert pos.shape == (layout.topology.getNumAtoms(), 3)
    for k, atom in enumerate(layout.topology.atoms()):
        i, s = layout.residue[k], layout.slot[k]
        assert atom.residue.index == i
        expected = "H1" if (s == rc.H_SLOT and (i == 0 or seg[i] != seg[i - 1])) else rc.slot_names(
            rc.RESTYPES_3[chain.restype[i]])[s]
        assert atom.name == expected
        assert mask[i, s] > 0, f"atom {atom.name} of residue {i} sits in a masked slot"
        assert np.array_equal(pos[k], slots[i, s])
    # batched model output keeps its leading dimensions
    assert layout.positions_from_slots(built.numpy()).shape == (1, layout.topology.getNumAtoms(), 3)
    # rebuilt positions in topology order: every bond has a bond length, the energy is finite
    # (SG-SG is only roughly right: plain angles_from_atoms copies chi angles onto ideal geometry)
    for x, y in layout.topology.bonds():
        d = np.linalg.norm(pos[x.index] - pos[y.index])
        hi = 3.0 if x.name == y.name == "SG" else 2.2
        assert 0.9 < d < hi, f"{x.residue.name}{x.residue.index} {x.name}-{y.name} {d:.2f} Å"
    system = forcefield.createSystem(layout.topology)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(pos * 0.1)
    energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    assert np.isfinite(energy)


def test_disulfide_partner_chosen_by_where_its_cb_points():
    """Of two cysteines within the Cα window of a third, the one whose CB faces it is paired (the
    CB estimated from the trace), not the one with the nearer Cα whose side chain points away;
    and a pair whose CBs point apart is not declared at all (real CBs of the demo protein)."""
    from openmm.app import PDBFile

    from openmm_ldb.backmapper import find_disulfides, trace_cb

    pdb = PDBFile(str(demo_structure_path()))
    xyz = pdb.getPositions(asNumpy=True).value_in_unit(openmm.unit.angstrom)
    ca = np.array([[xyz[a.index] for a in r.atoms() if a.name == "CA"][0] for r in pdb.topology.residues()])
    cb = np.array([([xyz[a.index] for a in r.atoms() if a.name == "CB"] or [np.full(3, 99.0)])[0]
                   for r in pdb.topology.residues()])
    n = len(ca)
    d_ca = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
    d_cb = np.linalg.norm(cb[:, None] - cb[None], axis=-1)
    sep = np.abs(np.arange(n)[:, None] - np.arange(n)[None]) >= 3
    est = trace_cb(ca)
    d_est = np.linalg.norm(est[:, None] - est[None], axis=-1)
    window = sep & (d_ca >= 3.8) & (d_ca <= 6.8) & np.isfinite(d_est)
    facing = window & (d_cb > 3.4) & (d_cb < 4.6) & (d_est < 4.6)
    apart = window & (d_cb > 6.5) & (d_est > rc.DISULFIDE_TRACE_CB_MAX)
    triple = next((i, j, k) for i in range(n) for j in range(n) for k in range(n)
                  if facing[i, j] and apart[i, k] and d_ca[i, k] < d_ca[i, j] and j != k and not facing[j, k]
                  and not apart[j, k] and abs(j - k) >= 2 and 0 < min(i, j, k) and max(i, j, k) < n - 1)
    i, j, k = triple
    restype = np.full(n, rc.RESTYPE_INDEX["ALA"])
    restype[[i, j, k]] = rc.RESTYPE_INDEX["CYS"]
    assert find_disulfides(ca, restype) == [tuple(sorted((i, j)))]
    restype[j] = rc.RESTYPE_INDEX["ALA"]
    assert find_disulfides(ca, restype) == []
