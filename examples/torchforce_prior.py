"""A CG simulation driven by an ML potential (openmm-torch TorchForce) with LDBReporter attached.

    pip install "openmm-ldb[torchforce]"      # openmmtorch 1.5 + torch 2.9.1
    python examples/torchforce_prior.py --steps 5000 --out torchforce_demo

The potential is openmm_ldb.cg_torch's Cα prior (bond, angle, dihedral, pair terms fitted to
real structures by Boltzmann inversion), evaluated by PyTorch inside OpenMM; the reporter's
LDB model runs in the same process (and on the same GPU when there is one).
"""

import argparse
import os

import torch  # noqa: F401  (import torch before openmmtorch)
import openmm.unit as unit
from openmm.app import DCDReporter

from openmm_ldb import cg
from openmm_ldb.cg_torch import torch_prior_system
from openmm_ldb.reporter import LDBReporter


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--interval", type=int, default=250)
    p.add_argument("--out", default="torchforce_demo")
    p.add_argument("--model", default=None)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))  # protein G Cα trace and sequence
    system = torch_prior_system(go.topology)
    sim = cg.make_simulation(go.topology, system, go.native_positions, timestep=5 * unit.femtosecond, seed=1)
    sim.reporters.append(DCDReporter(os.path.join(args.out, "cg.dcd"), args.interval))
    with LDBReporter(os.path.join(args.out, "aa.dcd"), args.interval, model=args.model) as rep:
        sim.reporters.append(rep)
        sim.step(args.steps)
    print(f"wrote {rep.framesWritten} all-atom frames to {args.out}/aa.dcd (topology {args.out}/aa.pdb)")


if __name__ == "__main__":
    main()
