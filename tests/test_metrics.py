"""Metrics of backmapped structures (openmm_ldb.metrics) on real chains."""

import math

import numpy as np
import pytest

from openmm_ldb import metrics
from openmm_ldb import residues as rc


def _copy(chain):
    return chain.xyz[0, :, : metrics.HEAVY].astype(np.float64).copy()


def _run(chain, pred, **kw):
    return metrics.chain_metrics(pred, chain.xyz[0], chain.present, chain.restype, chain.segment, **kw)


def _rotate_about(points, origin, axis, degrees):
    axis = axis / np.linalg.norm(axis)
    t = math.radians(degrees)
    v = points - origin
    rot = (v * math.cos(t) + np.cross(axis, v) * math.sin(t)
           + axis * (v @ axis)[..., None] * (1 - math.cos(t)))
    return origin + rot


@pytest.fixture(scope="module")
def chain(real_chains):
    return real_chains[0]


def test_chain_against_itself(real_chains):
    for c in real_chains:
        m = _run(c, _copy(c), details=True)
        assert m["heavy_rmsd"] == 0.0 and m["backbone_rmsd"] == 0.0 and m["sidechain_rmsd"] == 0.0
        assert m["chi1_acc"] == 1.0 and m["chi12_acc"] == 1.0
        assert m["ged"] == 0 and m["ged_added"] == 0 and m["ged_broken"] == 0
        assert m["clashes_per_1000"] == m["clashes_per_1000_ref"]
        assert m["bond_validity"] > 0.98
        assert m["chirality_L"] == 1.0 and m["cis_trans_agreement"] == 1.0
        if m["n_disulfides_ref"]:
            assert m["disulfides_recovered"] == 1.0
        assert m["n_atoms"] == int(c.present[:, : metrics.HEAVY].sum())
        d = m["details"]
        assert np.nanmax(d["residue_heavy_rmsd"]) == 0.0
        phi = d["phi_pred"][np.isfinite(d["phi_pred"])]
        assert len(phi) > 0.8 * len(c.restype) and np.all(np.abs(phi) <= 180.0)


def test_chi1_rotation(chain):
    heavy = rc.heavy_mask_array()[chain.restype, :14] > 0
    complete = ((chain.present[:, :14] > 0) | ~heavy).all(-1)
    ok = [i for i in range(len(chain.restype))
          if len(rc.SIDECHAIN_ATOMS[rc.RESTYPES_3[chain.restype[i]]]) >= 2 and complete[i]]
    i = ok[len(ok) // 2]
    pred = _copy(chain)
    n_sc = len(rc.SIDECHAIN_ATOMS[rc.RESTYPES_3[chain.restype[i]]])
    beyond = slice(5, 4 + n_sc)  # atoms after CB move with chi1
    pred[i, beyond] = _rotate_about(pred[i, beyond], pred[i, 1], pred[i, 4] - pred[i, 1], 120.0)
    m = _run(chain, pred, details=True)
    base = _run(chain, _copy(chain))
    assert m["chi1_acc"] == pytest.approx(1.0 - 1.0 / base["n_chi1"])
    assert m["heavy_rmsd"] > 0 and m["sidechain_rmsd"] > 0
    assert m["backbone_rmsd"] == 0.0
    delta = (m["details"]["chi_pred"][i, 0] - m["details"]["chi_true"][i, 0]) % 360
    assert min(delta, 360 - delta) == pytest.approx(120.0, abs=1e-3)
    assert m["bond_validity"] == base["bond_validity"]  # rigid rotation keeps every bond


def test_broken_bond_raises_ged(chain):
    pred = _copy(chain)
    i = next(i for i in range(len(chain.restype))
             if chain.present[i, 4] and chain.restype[i] != rc.RESTYPE_INDEX["GLY"])
    ca, cb = pred[i, 1], pred[i, 4]
    # pull CB 1.2 Å further out along CA-CB: CA-CB ~2.7 Å > 1.92 Å covalent cutoff
    pred[i, 4] = cb + 1.2 * (cb - ca) / np.linalg.norm(cb - ca)
    m = _run(chain, pred)
    base = _run(chain, _copy(chain))
    assert m["ged_broken"] >= 1
    assert m["ged"] > base["ged"]
    assert m["bond_validity"] < base["bond_validity"]


def test_added_bond_and_overlap_add_clash(chain):
    n = len(chain.restype)
    pred = _copy(chain)
    # move residue j's whole side chain (rigidly with CB) so that its CB sits 1.7 Å from the CA
    # of a residue far away in sequence: one new clash (and an added C-C bond)
    i, j = 2, n - 3
    assert chain.present[j, 4]
    shift = pred[i, 1] + np.array([1.7, 0.0, 0.0]) - pred[j, 4]
    m_before = _run(chain, pred)
    pred[j, 4:14] += shift
    m = _run(chain, pred)
    assert m["clashes"] >= m_before["clashes"] + 1
    assert m["clashes_per_1000"] > m["clashes_per_1000_ref"]
    assert m["ged_added"] >= 1  # CB-CA 1.7 Å < 1.92 Å and not bonded in the reference


def test_symmetric_swap(real_chains):
    for c in real_chains:
        pred = _copy(c)
        idx = rc.slot_names("ASP")
        od1, od2 = idx.index("OD1"), idx.index("OD2")
        asp = np.flatnonzero((c.restype == rc.RESTYPE_INDEX["ASP"]) & (c.present[:, od1] > 0) & (c.present[:, od2] > 0))
        if len(asp) == 0:
            continue
        pred[asp, od1], pred[asp, od2] = pred[asp, od2].copy(), pred[asp, od1].copy()
        m = _run(c, pred)
        assert m["heavy_rmsd"] == pytest.approx(0.0, abs=1e-6)
        assert m["sidechain_rmsd"] == pytest.approx(0.0, abs=1e-6)
        assert m["n_swapped"] == len(asp)
        assert m["chi12_acc"] == 1.0  # ASP chi2 is pi-periodic
        return
    pytest.skip("no ASP with both carboxylate oxygens in the real chains")


def test_heavy_atom_rmsd_to_reference():
    import mdtraj

    from openmm_ldb.cg import demo_structure_path

    ref = mdtraj.load(str(demo_structure_path()))
    pred = ref[:]
    top = pred.topology
    heavy = [a.index for a in top.atoms if a.element.symbol != "H"]
    asp = [r for r in top.residues if r.name == "ASP"]
    for r in asp:  # swap OD1/OD2 coordinates: no error
        a = next(x.index for x in r.atoms if x.name == "OD1")
        b = next(x.index for x in r.atoms if x.name == "OD2")
        pred.xyz[0, [a, b]] = pred.xyz[0, [b, a]]
    assert metrics.heavy_atom_rmsd_to_reference(pred, ref) == pytest.approx(0.0, abs=1e-6)
    k = next(a.index for a in top.atoms if a.name == "CB")
    pred.xyz[0, k, 0] += 0.1  # 1 Å
    assert metrics.heavy_atom_rmsd_to_reference(pred, ref) == pytest.approx(math.sqrt(1.0 / len(heavy)), rel=1e-4)
    with pytest.raises(ValueError):
        metrics.heavy_atom_rmsd_to_reference(pred.atom_slice(heavy[:-20]), ref)


def test_close_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 20, size=(600, 3))
    x[5] = np.nan
    i, j, d = metrics.close_pairs(x, 2.2)
    got = set(zip(i.tolist(), j.tolist()))
    ok = np.isfinite(x).all(-1)
    dm = np.linalg.norm(x[:, None] - x[None], axis=-1)
    want = {(a, b) for a in range(600) for b in range(a + 1, 600) if ok[a] and ok[b] and dm[a, b] < 2.2}
    assert got == want
    assert np.allclose(d, dm[i, j])


def test_ensemble_diversity(chain):
    base = _copy(chain)
    mask = chain.present[:, : metrics.HEAVY] > 0
    shifted = base + np.array([0.0, 0.0, 1.5])
    samples = np.stack([base, shifted, base])
    # pairs: (0,1) 1.5, (0,2) 0, (1,2) 1.5
    assert metrics.ensemble_diversity(samples, mask) == pytest.approx(1.0)
    assert metrics.ensemble_diversity(samples[:1], mask) == 0.0
    swapped = base.copy()
    asp = np.flatnonzero(chain.restype == rc.RESTYPE_INDEX["ASP"])
    swapped[asp, 6], swapped[asp, 7] = base[asp, 7], base[asp, 6]
    assert metrics.ensemble_diversity(np.stack([base, swapped]), mask, chain.restype) == pytest.approx(0.0, abs=1e-9)


def test_chi_rotamer_bins():
    assert metrics.chi_rotamer_bin([60.0, 180.0, -60.0, -179.0, 119.0, np.nan]).tolist() == [0, 1, 2, 1, 0, -1]


# ----------------------------------------------------------------------------------------
# openmm_ldb.evaluate and the PULCHRA benchmark's PDB parser
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    import torch

    from openmm_ldb.export import export_model
    from openmm_ldb.model import LDBConfig, LDBModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LDBModel(LDBConfig(hidden=16, encoder_layers=1, decoder_layers=1, denoiser_layers=1, num_codes=64))
    path = str(tmp_path_factory.mktemp("model") / "tiny.pt")
    export_model(model, path, {"note": "untrained test model"})
    return path


def test_evaluate_end_to_end(untrained_model, chain, tmp_path):
    import json

    from openmm_ldb import evaluate as ev

    small = ev.clean_chain(chain)
    result = ev.evaluate(untrained_model, [small], samples=2, out_dir=str(tmp_path), threads=1, device="cpu",
                         steps=2, verbose=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["n_chains"] == 1 and saved["n_residues"] == len(small.restype)
    assert saved["model"]["name"]
    row = saved["chains"][0]
    # Cα is the input; only the clash relaxation moves a few, each by at most backbone_relax_max_ca
    # (an untrained model clashes more than the shipped one: a loose bound, the RMSD over all Cα)
    assert row["ca_rmsd"] < 0.1
    assert row["heavy_rmsd"] > 0 and row["ms_per_residue"] > 0
    assert row["segments_match_reference"] is True
    assert row["div"] >= 0 and "sample_heavy_rmsd_best" in row
    assert row["chirality_L"] == 1.0
    for name in ("rmsd_hist.png", "chi1_confusion.png", "ramachandran.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert result["mean"]["heavy_rmsd"] == row["heavy_rmsd"]


def test_to_slots_round_trip(chain):
    from openmm_ldb import evaluate as ev
    from openmm_ldb.topology import build_aa_topology, read_cg_topology

    mapping = read_cg_topology(ev.cg_topology(chain))
    layout = build_aa_topology(mapping, chain.segment, hydrogens=False)
    flat = layout.positions_from_slots(chain.xyz[0])
    slots, present = ev.to_slots(layout, flat, len(chain.restype))
    assert np.allclose(slots[present], chain.xyz[0][present])
    assert present[:, 1].all() and not present[:, rc.H_SLOT:].any()


def test_pulchra_parser_round_trip(chain):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pulchra_compare.py"
    spec = importlib.util.spec_from_file_location("pulchra_compare", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    lines, k = [], 0
    for i, rt in enumerate(chain.restype):
        name = rc.RESTYPES_3[rt]
        for s, a in enumerate(rc.slot_names(name)[: metrics.HEAVY]):
            if a and chain.present[i, s]:
                k += 1
                x = chain.xyz[0, i, s]
                lines.append(f"ATOM  {k:5d} {a:<4s} {name} A{i + 1:4d}    {x[0]:8.3f}{x[1]:8.3f}{x[2]:8.3f}")
    xyz, present = mod.pdb_to_slots("\n".join(lines), chain.restype)
    assert (present[:, : metrics.HEAVY] == (chain.present[:, : metrics.HEAVY] > 0)).all()
    assert np.allclose(xyz[present], chain.xyz[0][present], atol=1e-3)
    assert "CA" in mod.ca_pdb_text(chain).splitlines()[0]


# ----------------------------------------------------------------------------------------
# FrameCheck: chain_metrics' clashes, bond validity and GED per frame (issue 22)
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped_gb1():
    """The shipped model's plan and two frames x two samples of GB1 (a real Cα trace, Å)."""
    from openmm import unit

    from openmm_ldb import cg
    from openmm_ldb.backmapper import Backmapper

    bm = Backmapper(device="cpu", threads=1)
    top, pos = cg.ca_from_structure(cg.demo_structure_path())
    pos = np.array(pos.value_in_unit(unit.nanometer))
    frames = pos[None] + np.random.default_rng(5).normal(0.0, 0.02, (2, *pos.shape))  # 0.2 Å CG-like noise
    plan = bm.plan(top, frames[0])
    info: dict = {}
    xyz = bm.sample(plan, frames, n_samples=2, seed=11, info=info)
    return bm, plan, frames, xyz, info


def _self_metrics(plan, positions):
    """chain_metrics of topology-order positions (Å) against themselves, heavy atoms as present."""
    from openmm_ldb import evaluate as ev

    slots, present = ev.to_slots(plan.layout, positions, plan.mapping.n_residues)
    present[:, metrics.HEAVY:] = False
    m = metrics.chain_metrics(slots, slots, present, plan.mapping.restype, plan.segment,
                              disulfides_true=plan.disulfides, pred_present=present)
    return m, slots, present


def _brute_clash_partners(x, k, cutoff=metrics.CLASH_DISTANCE):
    """Indices of the atoms of ``x`` [A, 3] closer than ``cutoff`` to atom k (N×N is fine for a test)."""
    d = np.linalg.norm(x - x[k], axis=-1)
    d[k] = np.inf
    return np.flatnonzero(d < cutoff)


def test_frame_check_equals_chain_metrics_and_sees_a_clash(shipped_gb1):
    _, plan, _, xyz, _ = shipped_gb1
    check = plan.frame_check
    assert plan.frame_check is check  # built once per plan
    keys = ("clashes", "clashes_per_1000", "bond_validity", "ged", "ged_added", "ged_broken")
    for x in xyz.reshape(-1, *xyz.shape[2:]):
        m, slots, present = _self_metrics(plan, x)
        got = check.of_positions(x)
        from_slots = metrics.FrameCheck(plan.mapping.restype, plan.segment, present, plan.disulfides)(slots)
        assert {k: got[k].item() for k in keys} == {k: m[k] for k in keys}
        assert {k: from_slots[k].item() for k in keys} == {k: m[k] for k in keys}
        assert check.n_atoms == m["n_atoms"] and check.n_bonds == m["n_bonds"]
        assert got["bad_bonds"] == round((1.0 - m["bond_validity"]) * m["n_bonds"])
    # every frame and sample at once: leading axes kept
    batch = check.of_positions(xyz)
    assert batch["clashes_per_1000"].shape == xyz.shape[:2] and batch["ged"].shape == xyz.shape[:2]

    # it can fail: put the last side-chain atom of a residue 1.5 Å from the CA of a residue far away in
    # sequence, where nothing else is within 2.2 Å: exactly one more clash (and one added bond)
    x = xyz[0, 0].copy()
    m0, _, _ = _self_metrics(plan, x)
    heavy = np.flatnonzero(plan.layout.slot < metrics.HEAVY)
    names = [a.name for a in plan.topology.atoms()]
    res = plan.layout.residue
    ca_j = next(a for a in heavy if names[a] == "CA" and res[a] == 40)
    mover = max(a for a in heavy if res[a] == 5 and plan.layout.slot[a] < rc.OXT_SLOT)  # its last side-chain atom
    assert abs(int(res[mover]) - 40) > 3 and names[mover] not in ("N", "CA", "C", "O")
    others = np.setdiff1d(heavy, [mover])
    # before: only its own residue's atoms within 2.2 Å of the mover (bonded, excluded)
    assert set(res[heavy[_brute_clash_partners(x[heavy], int(np.searchsorted(heavy, mover)))]]) <= {5}
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(500, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    spots = x[ca_j] + 1.5 * dirs
    clearance = np.array([np.sort(np.linalg.norm(x[others] - p, axis=1))[1] for p in spots])  # past the CA itself
    best = int(np.argmax(clearance))
    assert clearance[best] > metrics.CLASH_DISTANCE + 0.05  # room for exactly one contact
    x[mover] = spots[best]
    assert len(_brute_clash_partners(x[heavy], int(np.searchsorted(heavy, mover)))) == 1
    m1, _, _ = _self_metrics(plan, x)
    got = check.of_positions(x)
    assert got["clashes"] == m1["clashes"] == m0["clashes"] + 1
    assert got["clashes_per_1000"] == pytest.approx(m0["clashes_per_1000"] + 1000.0 / check.n_atoms)
    assert got["ged_added"] == m1["ged_added"] == m0["ged_added"] + 1  # C/N/O/S–C at 1.5 Å: covalent reach
    assert got["bad_bonds"] > 0 and got["bond_validity"] == m1["bond_validity"] < m0["bond_validity"]
    assert got["ged_broken"] == m1["ged_broken"] > m0["ged_broken"]  # its own bond is stretched
    bad = x.copy()
    bad[mover] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        check.of_positions(bad)


def test_sample_info_has_frame_checks(shipped_gb1):
    bm, plan, frames, xyz, info = shipped_gb1
    shape = xyz.shape[:2]  # (2 frames, 2 samples)
    for key in ("clashes_per_1000", "bad_bonds", "bond_validity", "ged", "ca_shift"):
        assert info[key].shape == shape, key
    assert info["expected_error"].shape == (*shape, plan.mapping.n_residues)
    expected = plan.frame_check.of_positions(xyz)
    for key in ("clashes_per_1000", "bad_bonds", "bond_validity", "ged"):
        np.testing.assert_array_equal(info[key], expected[key])
    assert info["bad_bonds"].dtype.kind == "i" and ((info["bond_validity"] > 0) & (info["bond_validity"] <= 1)).all()
    # frame_checks=False: only what the model returns
    lean: dict = {}
    bm.sample(plan, frames[:1], seed=11, info=lean, frame_checks=False)
    assert set(lean) == {"ca_shift", "expected_error"}
    # the stream scores what it yields, per frame and sample
    out = list(bm.stream(plan, frames, n_samples=2, seed=11, check=True))
    assert [f.check["clashes_per_1000"].shape for f in out] == [(2,), (2,)]
    assert all(f.ca_shift.shape == (2,) for f in out)
    assert list(bm.stream(plan, frames[:1], check=False))[0].check is None
