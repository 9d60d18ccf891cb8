"""``openmm-ldb demo``: a Go-model CG simulation of protein G B1 with the live reporter."""

from __future__ import annotations

import os
import time

import numpy as np



def _leave_a_core() -> dict:
    """The CG run on the fastest platform; on the CPU platform with one core fewer than the
    machine has, so that LDBReporter's worker (nice 19) gets one: OpenMM's CPU threads take every
    core by default and the worker, starved, fell behind (the demo backmapped 5 frames/s where
    it needs 14, on 2 cores)."""
    import openmm

    fastest = max((openmm.Platform.getPlatform(i) for i in range(openmm.Platform.getNumPlatforms())),
                  key=lambda p: p.getSpeed())
    cores = os.cpu_count() or 1
    if fastest.getName() != "CPU" or cores < 2:
        return {}
    return {"platform": fastest, "platform_properties": {"Threads": str(cores - 1)}}

def run_demo(out_dir: str = "ldb_demo", steps: int = 100000, interval: int = 500, model: str | None = None,
             minimize: bool = False, seed: int = 1) -> dict:
    """Run the demo; returns the paths written and a few measured numbers."""
    import mdtraj
    from openmm.app import DCDReporter

    from . import cg
    from .metrics import heavy_atom_rmsd_to_reference
    from .reporter import LDBReporter

    os.makedirs(out_dir, exist_ok=True)
    native = cg.demo_structure_path()
    go = cg.GoModel.from_structure(str(native))
    system = go.create_system()
    sim = cg.make_simulation(go.topology, system, go.native_positions, seed=seed, **_leave_a_core())
    cg_path = os.path.join(out_dir, "cg.dcd")
    aa_path = os.path.join(out_dir, "aa.dcd")
    sim.reporters.append(DCDReporter(cg_path, interval))
    t0 = time.time()
    with LDBReporter(aa_path, interval, model=model, minimize=minimize, hydrogens=True) as reporter:
        sim.reporters.append(reporter)
        sim.step(steps)
    wall = time.time() - t0
    from openmm.app import PDBFile

    cg_top = os.path.join(out_dir, "cg.pdb")
    with open(cg_top, "w") as f:
        PDBFile.writeFile(go.topology, go.native_positions, f)
    aa = mdtraj.load(aa_path, top=os.path.join(out_dir, "aa.pdb"))
    cgt = mdtraj.load(cg_path, top=cg_top)
    ref = mdtraj.load(str(native))
    first_heavy = heavy_atom_rmsd_to_reference(aa[0], ref)
    png = os.path.join(out_dir, "demo.png")
    quality = plot_demo(aa, cgt, ref, png, interval, steps / wall)
    result = {"cg_trajectory": cg_path, "aa_trajectory": aa_path, "aa_topology": os.path.join(out_dir, "aa.pdb"),
              "figure": png, "frames": int(aa.n_frames), "atoms": int(aa.n_atoms), "wall_seconds": round(wall, 1),
              "first_frame_heavy_rmsd_to_native": round(float(first_heavy), 3),
              "cg_steps_per_second": round(steps / wall, 1), **quality}
    print("openmm-ldb demo: protein G B1 (56 residues), Go-model CG simulation with LDBReporter")
    print(f"  CG trajectory      {cg_path} ({cgt.n_frames} frames)")
    print(f"  all-atom trajectory {aa_path} + {result['aa_topology']} ({aa.n_frames} frames, {aa.n_atoms} atoms)")
    print(f"  figure             {png}  (atoms over the CG beads, clashes and bonds per frame, "
          f"Ramachandran and chi1 against the native structure)")
    print(f"  clashes per 1000 heavy atoms (mean over frames) {quality['clashes_per_1000_mean']:.2f}; "
          f"longest bond {quality['longest_bond_max']:.2f} Å")
    print(f"  simulation + backmapping wall time {wall:.1f} s; first frame heavy-atom RMSD to the native "
          f"crystal/NMR structure {first_heavy:.2f} Å")
    return result


def _clashes_and_bonds(traj) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: heavy-atom pairs closer than 2.2 Å more than three bonds apart (per 1000 heavy
    atoms) and the longest bond (Å)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    from .metrics import close_pairs

    top = traj.topology
    heavy = np.array([a.index for a in top.atoms if a.element.symbol != "H"])
    bonds = np.array([[a.index, b.index] for a, b in top.bonds])
    n = top.n_atoms
    graph = csr_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n, n))
    hop = dijkstra(graph, directed=False, unweighted=True, indices=heavy, limit=3.5)[:, heavy]
    near = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.isfinite(hop) & (hop <= 3)))}
    clashes, longest = [], []
    for f in range(traj.n_frames):
        xyz = traj.xyz[f, heavy] * 10.0
        i, j, _ = close_pairs(xyz, 2.2)
        clashes.append(1000.0 * sum((int(a), int(b)) not in near for a, b in zip(i, j)) / len(heavy))
        d = np.linalg.norm(traj.xyz[f, bonds[:, 0]] - traj.xyz[f, bonds[:, 1]], axis=1) * 10.0
        longest.append(float(d.max()))
    return np.array(clashes), np.array(longest)


def plot_demo(aa, cgt, ref, png: str, interval: int, steps_per_second: float) -> dict:
    """The demo figure: what the backmapped atoms look like and how good they are.

    (a) the last all-atom frame drawn over the CG beads (projected on its principal plane);
    (b) clashes per 1000 heavy atoms and the longest bond, per frame; (c) Ramachandran plot of
    every backmapped frame against the native structure; (d) chi1 of every frame against the
    native.  Returns the per-frame quality summary.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mdtraj

    clashes, longest = _clashes_and_bonds(aa)
    fig, ax = plt.subplots(2, 2, figsize=(11, 9))
    # (a) atoms over beads
    last = aa[-1]
    xyz = last.xyz[0] * 10.0
    centre = xyz.mean(0)
    _, _, vt = np.linalg.svd(xyz - centre, full_matrices=False)
    p = (xyz - centre) @ vt[:2].T
    beads = (cgt.xyz[min(aa.n_frames, cgt.n_frames) - 1] * 10.0 - centre) @ vt[:2].T
    colours = {"C": "0.35", "N": "tab:blue", "O": "tab:red", "S": "gold", "H": "0.8"}
    a0 = ax[0, 0]
    a0.scatter(beads[:, 0], beads[:, 1], s=260, color="tab:orange", alpha=0.25, lw=0, label="CG beads (Cα)")
    for a, b in last.topology.bonds:
        e = a.element.symbol if a.element.symbol != "H" else b.element.symbol
        h = "H" in (a.element.symbol, b.element.symbol)
        a0.plot(p[[a.index, b.index], 0], p[[a.index, b.index], 1], color=colours.get(e, "k"),
                lw=0.4 if h else 1.0, alpha=0.5 if h else 1.0)
    a0.set_aspect("equal")
    a0.set_title(f"(a) last frame: {last.n_atoms} atoms over {cgt.n_atoms} CG beads")
    a0.set_xlabel("Å")
    a0.legend(loc="lower left", fontsize=8)
    # (b) quality per frame
    t_ns = np.arange(aa.n_frames) * interval * 0.01 / 1000.0
    a1 = ax[0, 1]
    a1.plot(t_ns, clashes, color="tab:red", label="clashes / 1000 heavy atoms (< 2.2 Å)")
    a1.set_xlabel("CG time (ns)")
    a1.set_ylabel("clashes per 1000 heavy atoms", color="tab:red")
    a1b = a1.twinx()
    a1b.plot(t_ns, longest, color="tab:blue", label="longest bond")
    a1b.axhline(2.04, color="tab:blue", ls=":", lw=0.8)
    a1b.set_ylabel("longest bond (Å; S–S is 2.04)", color="tab:blue")
    a1.set_title(f"(b) per frame; CG run with the reporter: {steps_per_second:,.0f} steps/s")
    # (c) Ramachandran
    a2 = ax[1, 0]
    _, phi = mdtraj.compute_phi(aa)
    _, psi = mdtraj.compute_psi(aa)
    _, phi0 = mdtraj.compute_phi(ref)
    _, psi0 = mdtraj.compute_psi(ref)
    a2.scatter(np.degrees(phi).ravel(), np.degrees(psi).ravel(), s=2, alpha=0.15, label="backmapped frames")
    a2.scatter(np.degrees(phi0[0]), np.degrees(psi0[0]), s=25, color="k", marker="x", label="native")
    a2.set_xlim(-180, 180)
    a2.set_ylim(-180, 180)
    a2.set_xlabel("φ (deg)")
    a2.set_ylabel("ψ (deg)")
    a2.set_title("(c) Ramachandran")
    a2.legend(loc="lower right", fontsize=8)
    # (d) chi1
    a3 = ax[1, 1]
    _, chi = mdtraj.compute_chi1(aa)
    _, chi0 = mdtraj.compute_chi1(ref)
    bins = np.linspace(-180, 180, 37)
    a3.hist(np.degrees(chi).ravel(), bins=bins, density=True, alpha=0.6, label="backmapped frames")
    a3.hist(np.degrees(chi0[0]), bins=bins, density=True, histtype="step", color="k", lw=1.5, label="native")
    a3.set_xlabel("χ1 (deg)")
    a3.set_ylabel("density")
    a3.set_title("(d) side-chain χ1")
    a3.legend(fontsize=8)
    fig.suptitle("openmm-ldb demo: protein G B1, Go-model CG run, all-atom frames streamed by LDBReporter")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return {"clashes_per_1000_mean": round(float(clashes.mean()), 3),
            "longest_bond_max": round(float(longest.max()), 3)}
