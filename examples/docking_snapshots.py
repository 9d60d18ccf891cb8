"""All-atom snapshots of a CG simulation for ensemble docking, plus a pocket region of each.

A Go-model (Cα) simulation of protein G B1 runs with a :class:`SnapshotReporter`, which
backmaps every Nth frame and writes it as a complete PDB file (hydrogens, SSBOND/CONECT for
disulfides), named by step: ``<out>/frames/frame_000002000.pdb``.  Afterwards the residues
within ``--radius`` Å (heavy atoms) of ``--pocket-residue`` are cut out of every snapshot into
``<out>/pockets/pocket_000002000.pdb``, with the pocket centre and a docking box size in REMARK
lines (centre: the pocket residue's heavy-atom centroid; size: the pocket's heavy-atom extent,
as e.g. AutoDock Vina's ``center_x``... ``size_x``... take them).

Run::

    python examples/docking_snapshots.py --pocket-residue 30 --radius 10
    python examples/docking_snapshots.py --quick                     # seconds (smoke test)
    python examples/docking_snapshots.py --samples 3 --minimize      # an ensemble per snapshot
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import openmm.unit as unit
from openmm.app import PDBFile

from openmm_ldb import cg
from openmm_ldb.backmapper import Backmapper
from openmm_ldb.snapshots import (
    SnapshotReporter,
    find_residue,
    pocket_residues,
    subset,
    write_pdb,
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="docking_snapshots")
    p.add_argument("--structure", default=str(cg.demo_structure_path()), help="all-atom native structure (Go model)")
    p.add_argument("--model", default=None, help="exported LDB model (default: the shipped one)")
    p.add_argument("--steps", type=int, default=50000, help="CG steps (10 fs each)")
    p.add_argument("--interval", type=int, default=5000, help="steps between snapshots")
    p.add_argument("--samples", type=int, default=1, help="all-atom structures per snapshot")
    p.add_argument("--minimize", action="store_true", help="restrained amber14 minimisation of each structure")
    p.add_argument("--pocket-residue", default="30", help="residue id (PDB numbering) at the pocket centre")
    p.add_argument("--pocket-chain", default=None, help="chain of the pocket residue (default: first match)")
    p.add_argument("--radius", type=float, default=10.0, help="pocket radius in Å (heavy atom to heavy atom)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for OpenMM and PyTorch")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny step counts: a smoke test that takes seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.interval = 300, 100

    frames_dir = os.path.join(args.out_dir, "frames")
    pockets_dir = os.path.join(args.out_dir, "pockets")
    os.makedirs(pockets_dir, exist_ok=True)
    platform, properties = (("CPU", {"Threads": str(args.threads)}) if args.threads else (None, None))
    backmapper = Backmapper(args.model, threads=args.threads)

    go = cg.GoModel.from_structure(args.structure)
    sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=args.seed,
                             platform=platform, platform_properties=properties)
    reporter = SnapshotReporter(frames_dir, args.interval, backmapper=backmapper, nSamples=args.samples,
                                seed=None if args.samples == 1 else args.seed, minimize=args.minimize,
                                refinePlatform=platform)
    sim.reporters.append(reporter)
    t = time.time()
    sim.step(args.steps)
    print(f"CG simulation: {args.steps} steps, {len(reporter.files)} snapshot files in {frames_dir} "
          f"({time.time() - t:.1f} s)")

    print(f"{'snapshot':>26} {'pocket residues':>15} {'atoms':>6} {'centre (Å)':>24} {'box (Å)':>20}")
    pockets = []
    for path in reporter.files:
        pdb = PDBFile(path)
        centre_res = find_residue(pdb.topology, args.pocket_residue, args.pocket_chain)
        residues = pocket_residues(pdb.topology, pdb.positions, centre_res, args.radius * unit.angstrom)
        top, pos = subset(pdb.topology, pdb.positions, residues)
        xyz = np.asarray(pos.value_in_unit(unit.angstrom))
        heavy = np.array([a.element.symbol != "H" for a in top.atoms()])
        centre_atoms = [a.index for a in pdb.topology.atoms()
                        if a.residue.index == centre_res and a.element.symbol != "H"]
        centre = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.angstrom))[centre_atoms].mean(0)
        size = xyz[heavy].max(0) - xyz[heavy].min(0)
        name = os.path.basename(path).replace("frame_", "pocket_", 1)
        out = os.path.join(pockets_dir, name)
        ids = " ".join(str(r.id) for r in top.residues())
        write_pdb(top, pos, out, remarks=[
            f"pocket: residues within {args.radius:g} A of residue {args.pocket_residue} in {os.path.basename(path)}",
            f"pocket residues: {ids}",
            f"docking box centre (A): {centre[0]:.3f} {centre[1]:.3f} {centre[2]:.3f}",
            f"docking box size (A): {size[0]:.1f} {size[1]:.1f} {size[2]:.1f}"])
        pockets.append({"snapshot": path, "pocket": out, "residues": len(residues), "centre": centre.tolist(),
                        "size": size.tolist()})
        print(f"{os.path.basename(path):>26} {len(residues):15d} {top.getNumAtoms():6d} "
              f"{' '.join(f'{v:7.2f}' for v in centre):>24} {' '.join(f'{v:6.1f}' for v in size):>20}")
    print(f"pocket files in {pockets_dir}")
    return {"snapshots": reporter.files, "pockets": pockets}


if __name__ == "__main__":
    main()
