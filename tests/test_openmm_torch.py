"""openmm-torch: a TorchForce-driven CG simulation with LDBReporter in the same process.

Run in the second CI environment (openmmtorch 1.5 + torch 2.9.1): ``pytest -m openmm_torch``.
"""

import numpy as np
import pytest
import torch  # noqa: F401  (must come before openmmtorch)

openmmtorch = pytest.importorskip("openmmtorch")

import mdtraj  # noqa: E402
import openmm  # noqa: E402
import openmm.unit as unit  # noqa: E402

from openmm_ldb import cg  # noqa: E402
from openmm_ldb.cg_torch import prior_module, torch_prior_system  # noqa: E402
from openmm_ldb.model import LDBConfig, LDBModel  # noqa: E402
from openmm_ldb.export import export_model  # noqa: E402
from openmm_ldb.reporter import LDBReporter  # noqa: E402

pytestmark = pytest.mark.openmm_torch


def _protein_g():
    go = cg.GoModel.from_structure(str(cg.demo_structure_path()))
    return go.topology, go.native_positions


def test_prior_energy_matches_torchforce():
    top, pos = _protein_g()
    system = torch_prior_system(top)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(pos)
    e_omm = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    x = torch.tensor(np.asarray(pos.value_in_unit(unit.nanometer)), dtype=torch.float32)
    e_torch = float(prior_module(top)(x))
    assert np.isfinite(e_omm) and abs(e_omm - e_torch) < 1e-2 * max(1.0, abs(e_torch))


def test_torchforce_simulation_with_reporter(tmp_path):
    top, pos = _protein_g()
    system = torch_prior_system(top)
    torch.manual_seed(0)
    model = str(tmp_path / "tiny.pt")
    export_model(LDBModel(LDBConfig(hidden=16, encoder_layers=1, decoder_layers=1, denoiser_layers=1,
                                    num_codes=64)), model)
    sim = cg.make_simulation(top, system, pos, seed=2, timestep=5 * unit.femtosecond)
    with LDBReporter(str(tmp_path / "aa.dcd"), 20, model=model) as rep:
        sim.reporters.append(rep)
        sim.step(200)
    traj = mdtraj.load(str(tmp_path / "aa.dcd"), top=str(tmp_path / "aa.pdb"))
    assert traj.n_frames == 10
    ca = traj.atom_slice(traj.topology.select("name CA")).xyz
    bonds = np.linalg.norm(np.diff(ca, axis=1), axis=-1)
    assert np.isfinite(ca).all() and bonds.max() < 0.45  # the ML prior keeps the chain intact
    e = sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert np.isfinite(e)
