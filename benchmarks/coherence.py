"""Temporal coherence of a backmapped stream: how often χ1 changes rotamer between consecutive
frames, backmapped vs the all-atom MD itself.

    python benchmarks/coherence.py [--frames 30]

Takes consecutive frames of the all-atom MD trajectories in ``<data>/ensembles`` (AdK, CHARMM
naming; rhodopsin 1U19), backmaps their Cα frame by frame (the default best guess) and counts,
per residue with a χ1, the consecutive frame pairs whose χ1 moves by more than 60 degrees
(rotamer flips); the same for the MD's own χ1.  Also the per-frame accuracy (heavy-atom RMSD to
the MD frame), per-frame best guess against the coherent stream (``stream_state``; the default
of ``Backmapper.stream`` and ``LDBReporter``).  Then the flip rates on CG trajectories of the
project's own Go models.  Writes ``benchmarks/results/coherence.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import mdtraj
import numpy as np

from openmm_ldb.backmapper import Backmapper


def chi1_flip_rate(traj) -> float:
    _, chi = mdtraj.compute_chi1(traj)
    if traj.n_frames < 2 or chi.size == 0:
        return float("nan")
    d = np.abs((np.degrees(chi[1:] - chi[:-1]) + 180.0) % 360.0 - 180.0)
    return float((d > 60.0).mean())


def _matching_heavy(prot, aa_top) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the heavy atoms both topologies have (by residue index and atom name)."""
    from openmm_ldb import residues as rc

    ref = {}
    for a in prot.topology.atoms:
        try:
            name = rc.canonical_atom_name(rc.canonical_residue_name(a.residue.name), a.name)
        except KeyError:  # caps and other non-amino-acid residues
            continue
        ref[(a.residue.index, name)] = a.index
    pairs = [(a.index, ref[(a.residue.index, a.name)]) for a in aa_top.atoms
             if a.element.symbol != "H" and (a.residue.index, a.name) in ref]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _heavy_rmsd(aa, prot, idx) -> float:
    """Mean over frames of the heavy-atom RMSD (Å, no superposition: Cα are given)."""
    d = (aa.xyz[:, idx[0]] - prot.xyz[:, idx[1]]) * 10.0
    return float(np.sqrt((d ** 2).sum(-1).mean(-1)).mean())


def cg_rows(bm, ens: str, n_frames: int, interval: int = 200) -> dict:
    """The same on the project's own CG models (no all-atom reference: flip rates only), Go models
    of protein G and of AdK (closed), frames every ``interval`` steps after 2,000 steps."""
    from openmm_ldb import cg

    structures = {"protein G Go model (CG, 56 res)": str(cg.demo_structure_path()),
                  "AdK Go model (CG, 214 res)": os.path.join(ens, "mdanalysistests_adk", "adk_closed.pdb.gz")}
    rows = {}
    for name, path in structures.items():
        if not os.path.exists(path):
            continue
        go = cg.GoModel.from_structure(path)
        sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=1)
        sim.step(2000)
        frames = []
        for _ in range(n_frames):
            sim.step(interval)
            frames.append(sim.context.getState(positions=True).getPositions(asNumpy=True)._value)
        plan = bm.plan(go.topology, frames[0], system=sim.system, hydrogens=False)
        aa_top = mdtraj.Topology.from_openmm(plan.topology)
        row = {"frames": n_frames, "residues": plan.mapping.n_residues, "interval_steps": interval}
        for mode, coherent in (("per_frame", False), ("stream", True)):
            t = time.perf_counter()
            xyz = np.stack([f.positions[0] for f in bm.stream(plan, frames, coherent=coherent)])
            ms = 1000 * (time.perf_counter() - t) / n_frames
            row[mode] = {"chi1_flip_rate": round(chi1_flip_rate(mdtraj.Trajectory(xyz, aa_top)), 4),
                         "ms_per_frame": round(ms, 1)}
        rows[name] = row
        print(name, row, flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser()
    data = os.environ.get("OPENMM_LDB_DATA", "../shared/data")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--out", default="benchmarks/results/coherence.json")
    p.add_argument("--settings", default=None, help='JSON of sampler settings, e.g. \'{"stream_gate": 0.5}\'')
    a = p.parse_args()
    ens = os.path.join(data, "ensembles")
    systems = {"AdK (214 res, CHARMM MD)": (os.path.join(ens, "mdanalysistests_adk", "adk_dims.dcd"),
                                              os.path.join(ens, "mdanalysistests_adk", "adk.psf")),
               "rhodopsin 1U19 (MD)": (os.path.join(ens, "nglview_md_1u19", "md_1u19.xtc"),
                                       os.path.join(ens, "nglview_md_1u19", "md_1u19.pdb"))}
    bm = Backmapper(threads=1, settings=json.loads(a.settings) if a.settings else None)
    rows = {}
    for name, (traj_path, top_path) in systems.items():
        if not os.path.exists(traj_path):
            continue
        md = mdtraj.load(traj_path, top=top_path)[: a.frames]
        prot = md.atom_slice(md.topology.select("protein and not element H and not resname ACE NME NH2"))
        ca = prot.atom_slice(prot.topology.select("name CA"))
        plan = bm.plan(ca.topology.to_openmm(), ca.xyz[0], hydrogens=False)
        aa_top = mdtraj.Topology.from_openmm(plan.topology)
        ref_heavy = _matching_heavy(prot, aa_top)
        md_rate = chi1_flip_rate(prot)
        row = {"frames": int(md.n_frames), "residues": int(ca.n_atoms), "md_chi1_flip_rate": round(md_rate, 4)}
        for mode, state in (("per_frame", None), ("stream", {})):
            t = time.perf_counter()
            xyz = np.concatenate([bm.sample(plan, ca.xyz[f:f + 1], 1, deterministic=True, stream_state=state)
                                  for f in range(md.n_frames)])[:, 0] / 10.0
            ms = 1000 * (time.perf_counter() - t) / md.n_frames
            aa = mdtraj.Trajectory(xyz, aa_top)
            rate = chi1_flip_rate(aa)
            rmsd = _heavy_rmsd(aa, prot, ref_heavy)
            row[mode] = {"chi1_flip_rate": round(rate, 4), "ratio_to_md": round(rate / max(md_rate, 1e-9), 2),
                         "heavy_rmsd_to_md": round(rmsd, 3), "ms_per_frame": round(ms, 1)}
        rows[name] = row
        print(name, rows[name], flush=True)
    rows.update(cg_rows(bm, ens, a.frames))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
