"""Resolution exchange: alternate coarse-grained and all-atom segments of one protein simulation.

A Go-model (Cα) simulation of protein G B1 samples quickly; every cycle its current state is
backmapped to all-atom (amber14 + OBC2 implicit solvent, restrained-then-free minimisation),
simulated for a short all-atom segment, and the all-atom Cα are put back into the CG
simulation, which carries on.  Two trajectories are written:

* ``cg.dcd`` + ``cg.pdb``: the CG simulation, all segments (one bead per residue);
* ``aa.dcd`` + ``aa.pdb``: all all-atom segments, one after the other (the topology PDB is
  written with the first frame).

Run::

    python examples/resolution_exchange.py                  # a few minutes on a CPU
    python examples/resolution_exchange.py --quick          # seconds (smoke test)
    python examples/resolution_exchange.py --solvent explicit --platform CUDA
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import openmm.unit as unit
from openmm.app import DCDReporter, PDBFile

from openmm_ldb import cg, exchange
from openmm_ldb.backmapper import Backmapper
from openmm_ldb.writers import TrajectoryWriter


class AllAtomSegmentReporter:
    """Writes frames of successive all-atom Simulations to one open :class:`TrajectoryWriter`."""

    def __init__(self, writer: TrajectoryWriter, reportInterval: int):
        self._writer = writer
        self._reportInterval = int(reportInterval)

    def describeNextReport(self, simulation):
        steps = self._reportInterval - simulation.currentStep % self._reportInterval
        return {"steps": steps, "periodic": None, "include": ["positions"]}

    def report(self, simulation, state):
        self._writer.write(state.getPositions(asNumpy=True), step=simulation.currentStep, time=state.getTime())


def ca_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """Cα RMSD (same units as the input) after optimal superposition (Kabsch)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    u, s, vt = np.linalg.svd(a.T @ b)
    s[-1] *= np.sign(np.linalg.det(u @ vt))
    return float(np.sqrt(max(0.0, ((a**2).sum() + (b**2).sum() - 2 * s.sum()) / len(a))))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="resolution_exchange")
    p.add_argument("--structure", default=str(cg.demo_structure_path()), help="all-atom native structure (Go model)")
    p.add_argument("--model", default=None, help="exported LDB model (default: the shipped one)")
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--cg-steps", type=int, default=20000, help="CG steps per segment (10 fs each)")
    p.add_argument("--aa-steps", type=int, default=2500, help="all-atom steps per segment (2 fs each)")
    p.add_argument("--cg-interval", type=int, default=500)
    p.add_argument("--aa-interval", type=int, default=250)
    p.add_argument("--solvent", choices=exchange.SOLVENTS, default="implicit")
    p.add_argument("--minimize-iterations", type=int, default=500)
    p.add_argument("--free-minimize-iterations", type=int, default=200)
    p.add_argument("--platform", default=None, help="OpenMM platform (default: the fastest)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for OpenMM and PyTorch")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny step counts: a smoke test that takes seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.cycles, args.cg_steps, args.aa_steps = 2, 200, 20
        args.cg_interval, args.aa_interval = 100, 10
        args.minimize_iterations, args.free_minimize_iterations = 50, 20

    os.makedirs(args.out_dir, exist_ok=True)
    platform, properties = args.platform, None
    if args.threads:
        platform = platform or "CPU"
        properties = {"Threads": str(args.threads)} if platform == "CPU" else None
    backmapper = Backmapper(args.model, threads=args.threads)

    go = cg.GoModel.from_structure(args.structure)
    cg_sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=args.seed,
                                platform=platform, platform_properties=properties)
    native = np.asarray(go.native_positions.value_in_unit(unit.angstrom))
    with open(os.path.join(args.out_dir, "cg.pdb"), "w") as f:
        PDBFile.writeFile(go.topology, go.native_positions, f)
    cg_sim.reporters.append(DCDReporter(os.path.join(args.out_dir, "cg.dcd"), args.cg_interval))

    aa_path = os.path.join(args.out_dir, "aa.dcd")
    writer, writer_atoms = None, None
    aa_step = 0  # all-atom steps so far: the all-atom step counter runs on across segments
    rows = []
    t_start = time.time()
    print(f"{'segment':>10} {'time (ps)':>10} {'steps':>7} {'wall (s)':>8} {'E pot (kJ/mol)':>15} "
          f"{'Cα RMSD (Å)':>11}")

    def log(kind, sim, steps, wall):
        state = sim.context.getState(positions=True, energy=True)
        xyz = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        ca = xyz[sim.resolution_map.ca_index] if hasattr(sim, "resolution_map") else xyz
        row = {"segment": kind, "time_ps": state.getTime().value_in_unit(unit.picosecond), "steps": steps,
               "wall_s": wall, "energy": state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
               "ca_rmsd": ca_rmsd(np.asarray(ca), native)}
        rows.append(row)
        print(f"{kind:>10} {row['time_ps']:10.1f} {steps:7d} {wall:8.1f} {row['energy']:15.1f} "
              f"{row['ca_rmsd']:11.2f}")

    for cycle in range(args.cycles):
        t = time.time()
        cg_sim.step(args.cg_steps)
        log("CG", cg_sim, args.cg_steps, time.time() - t)

        t = time.time()
        aa_sim = exchange.to_all_atom(cg_sim, backmapper, solvent=args.solvent, platform=platform,
                                      platform_properties=properties,
                                      minimize_iterations=args.minimize_iterations,
                                      free_minimize_iterations=args.free_minimize_iterations,
                                      seed=args.seed + cycle)
        log("switch", aa_sim, 0, time.time() - t)
        if writer_atoms != aa_sim.topology.getNumAtoms():
            # a new file when the all-atom system changes (explicit water, a disulfide formed)
            if writer is not None:
                writer.close()
                aa_path = os.path.join(args.out_dir, f"aa_cycle{cycle}.dcd")
            writer = TrajectoryWriter(aa_path, aa_sim.topology, dt=aa_sim.integrator.getStepSize(),
                                      interval=args.aa_interval)
            writer_atoms = aa_sim.topology.getNumAtoms()
        aa_sim.currentStep = aa_step
        aa_sim.reporters.append(AllAtomSegmentReporter(writer, args.aa_interval))
        t = time.time()
        aa_sim.step(args.aa_steps)
        aa_step = aa_sim.currentStep
        log("all-atom", aa_sim, args.aa_steps, time.time() - t)

        exchange.to_coarse_grained(aa_sim, cg_sim, seed=args.seed + cycle)
    t = time.time()
    cg_sim.step(args.cg_steps)
    log("CG", cg_sim, args.cg_steps, time.time() - t)
    writer.close()
    for reporter in cg_sim.reporters:
        if hasattr(reporter, "close"):
            reporter.close()
    print(f"wrote {args.out_dir}/cg.dcd (+ cg.pdb) and {aa_path} (+ {os.path.splitext(aa_path)[0]}.pdb); "
          f"total wall time {time.time() - t_start:.1f} s")
    return {"rows": rows, "out_dir": args.out_dir}


if __name__ == "__main__":
    main()
