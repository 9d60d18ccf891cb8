"""Wall time of ``exchange.to_all_atom`` (defaults, shipped model) on a ~130-residue protein.

    python benchmarks/exchange_time.py [--structure PATH] [--repeats 3]

Builds a Go model of the structure's first chain, runs 2,000 CG steps, then times the switch to
all-atom (backmapping, amber14 + OBC2 System, restrained and free minimisation) in this process;
also reports broken bonds and threaded rings of the result.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import openmm.unit as unit

from openmm_ldb import cg, exchange, metrics
from openmm_ldb.backmapper import Backmapper


def main() -> int:
    p = argparse.ArgumentParser()
    data = os.environ.get("OPENMM_LDB_DATA", "../shared/data")
    p.add_argument("--structure", default=os.path.join(data, "structures", "kortemme_ddg", "1EL1.pdb.gz"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/exchange_time.json")
    a = p.parse_args()
    go = cg.GoModel.from_structure(a.structure, chains=[0])
    sim = cg.make_simulation(go.topology, go.create_system(), go.native_positions, seed=1)
    sim.step(2000)
    bm = Backmapper()
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        aa = exchange.to_all_atom(sim, backmapper=bm)
        times.append(time.perf_counter() - t)
    st = aa.context.getState(getPositions=True, getEnergy=True)
    xyz = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    bonds = np.array([[x.index, y.index] for x, y in aa.topology.bonds()])
    longest = float(np.linalg.norm(xyz[bonds[:, 0]] - xyz[bonds[:, 1]], axis=1).max())
    out = {"structure": os.path.basename(a.structure), "residues": aa.topology.getNumResidues(),
           "seconds": [round(t, 2) for t in times], "median_s": round(float(np.median(times)), 2),
           "energy_kj_mol": round(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole), 1),
           "longest_bond_nm": round(longest, 4), "threaded_rings": metrics.threaded_rings(aa.topology, xyz),
           "platform": aa.context.getPlatform().getName()}
    print(json.dumps(out))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
