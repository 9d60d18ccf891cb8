"""Sequence-based Cα models of disordered chains: CALVADOS2 and HPS, and random-coil starts."""

from __future__ import annotations

import math

import numpy as np
import openmm
from openmm import app, unit

from .common import RESIDUE_PARAMETERS, _AVOGADRO_PER_NM3_PER_MOLAR, _CHARGES, _KB, _ONE_4PI_EPS0, _box_vectors, _energy_kj, _kelvin, _length_nm, _residue_codes
from .structures import _vec3_quantity
from .go import _bead_masses


# ---------------------------------------------------------------------------------------------------------
# HPS / CALVADOS2
# ---------------------------------------------------------------------------------------------------------
def _relative_permittivity_water(temperature_k: float) -> float:
    """Relative permittivity of water vs temperature (the empirical fit used by CALVADOS)."""
    t = temperature_k
    return 5321.0 / t + 233.76 - 0.9297 * t + 0.1417e-2 * t * t - 0.8292e-6 * t ** 3


def hps_system(
    topology: app.Topology,
    box_nm,
    model: str = "calvados2",
    *,
    temperature=300.0 * unit.kelvin,
    ionic_strength=0.15 * unit.molar,
    relative_permittivity: float | None = None,
    ph: float = 7.0,
    histidine_charge: float | None = None,
    charged_termini: bool | None = None,
    epsilon=0.8368 * unit.kilojoule_per_mole,
    bond_length=0.38 * unit.nanometer,
    bond_k=8033.0 * unit.kilojoule_per_mole / unit.nanometer ** 2,
    ah_cutoff=None,
    dh_cutoff=4.0 * unit.nanometer,
    bead_mass=None,
) -> openmm.System:
    """Create a CALVADOS2 or HPS C-alpha System for disordered chains in a periodic box.

    Potential: harmonic bonds (``0.5 k (r - b)**2``) between bonded beads; Ashbaugh-Hatch short-range
    interactions with per-residue hydropathy ``lambda`` and size ``sigma`` (arithmetic-mean combination),
    with the Lennard-Jones part shifted to zero at ``ah_cutoff``; Debye-Hueckel electrostatics
    ``q_i q_j exp(-kappa r) / (4 pi eps0 eps_r r)``, shifted to zero at ``dh_cutoff``. Bonded pairs are
    excluded from both.

    Parameters
    ----------
    topology : openmm.app.Topology
        C-alpha topology (e.g. from :func:`ca_topology`).
    box_nm : float, sequence or openmm.unit.Quantity
        Periodic box: a cube edge, three edges or three vectors (nm when plain numbers).
    model : {'calvados2', 'hps'}
        ``'calvados2'``: CALVADOS2 lambdas (Tesei & Lindorff-Larsen 2022). ``'hps'``: the original HPS
        model's Kapcha-Rossky lambdas (Dignon et al. 2018). Both use the same sigmas.
    temperature : openmm.unit.Quantity, optional
        Temperature for the Debye length and the permittivity of water. Default 300 K.
    ionic_strength : openmm.unit.Quantity, optional
        Default 0.15 M.
    relative_permittivity : float, optional
        Default: the temperature-dependent permittivity of water used by CALVADOS (about 77.7 at 300 K) for
        ``'calvados2'``, 80 for ``'hps'``.
    ph : float, optional
        pH for the histidine charge ``1 / (1 + 10**(pH - 6))`` (CALVADOS convention). Default 7.
    histidine_charge : float, optional
        Overrides the pH-derived histidine charge. Default: from ``ph`` for ``'calvados2'``, 0 for ``'hps'``.
    charged_termini : bool, optional
        Add +1 to the first and -1 to the last bead of each chain. Default True for ``'calvados2'``,
        False for ``'hps'``.
    epsilon : openmm.unit.Quantity, optional
        Ashbaugh-Hatch energy scale. Default 0.8368 kJ/mol (0.2 kcal/mol).
    bond_length, bond_k : openmm.unit.Quantity, optional
        Default 0.38 nm and 8033 kJ/mol/nm**2.
    ah_cutoff : openmm.unit.Quantity, optional
        Ashbaugh-Hatch cutoff. Default 2.4 nm for ``'calvados2'`` (its published value) and 2.0 nm for
        ``'hps'``.
    dh_cutoff : openmm.unit.Quantity, optional
        Debye-Hueckel cutoff. Default 4.0 nm.
    bead_mass : openmm.unit.Quantity, optional
        Mass of every bead; default: the average mass of each bead's residue type.

    Returns
    -------
    openmm.System

    Raises
    ------
    ValueError
        For an unknown model or residue name, or a box smaller than twice the largest cutoff.
    """
    model_key = model.lower().replace("-", "").replace("_", "")
    if model_key not in ("calvados2", "hps"):
        raise ValueError(f"unknown model {model!r}; use 'calvados2' or 'hps'")
    calvados = model_key == "calvados2"
    codes = _residue_codes(topology, "hps_system")
    t = _kelvin(temperature)
    if t <= 0:
        raise ValueError("temperature must be positive")
    if relative_permittivity is None:
        relative_permittivity = _relative_permittivity_water(t) if calvados else 80.0
    if histidine_charge is None:
        histidine_charge = 1.0 / (1.0 + 10.0 ** (ph - 6.0)) if calvados else 0.0
    if charged_termini is None:
        charged_termini = calvados
    if ah_cutoff is None:
        ah_cutoff = 2.4 if calvados else 2.0
    rc_ah = _length_nm(ah_cutoff, "ah_cutoff")
    rc_dh = _length_nm(dh_cutoff, "dh_cutoff")
    ionic = ionic_strength.value_in_unit(unit.molar) if unit.is_quantity(ionic_strength) else float(ionic_strength)
    if ionic < 0:
        raise ValueError("ionic_strength must be non-negative")
    eps_ah = _energy_kj(epsilon, "epsilon")
    b0 = _length_nm(bond_length, "bond_length")
    kb = bond_k.value_in_unit(unit.kilojoule_per_mole / unit.nanometer ** 2) if unit.is_quantity(bond_k) else float(bond_k)

    vectors = _box_vectors(box_nm)
    if min(vectors[0][0], vectors[1][1], vectors[2][2]) < 2 * max(rc_ah, rc_dh):
        raise ValueError(
            f"box {box_nm} is smaller than twice the largest cutoff ({max(rc_ah, rc_dh):.2f} nm)"
        )

    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*vectors)
    for m in _bead_masses(codes, bead_mass):
        system.addParticle(m)

    charges = [_CHARGES.get(c, histidine_charge if c == "H" else 0.0) for c in codes]
    if charged_termini:
        for chain in topology.chains():
            idx = [a.index for a in chain.atoms()]
            if idx:
                charges[idx[0]] += 1.0
                charges[idx[-1]] -= 1.0

    bonds = openmm.HarmonicBondForce()
    bonds.setName("HPSBonds")
    bond_pairs = []
    for a, b in topology.bonds():
        bonds.addBond(a.index, b.index, b0, kb)
        bond_pairs.append((a.index, b.index))
    bonds.setUsesPeriodicBoundaryConditions(True)
    system.addForce(bonds)

    lam_col = 2 if calvados else 4
    ah = openmm.CustomNonbondedForce(
        "select(step(r - 2^(1/6)*s), 4*eps_ah*l*((s/r)^12 - (s/r)^6 - shift),"
        " 4*eps_ah*((s/r)^12 - (s/r)^6 - l*shift) + eps_ah*(1 - l));"
        "shift = (s/rc_ah)^12 - (s/rc_ah)^6; s = 0.5*(s1 + s2); l = 0.5*(l1 + l2)"
    )
    ah.setName("AshbaughHatch")
    ah.addGlobalParameter("eps_ah", eps_ah)
    ah.addGlobalParameter("rc_ah", rc_ah)
    ah.addPerParticleParameter("s")
    ah.addPerParticleParameter("l")
    for c in codes:
        ah.addParticle([RESIDUE_PARAMETERS[c][3], RESIDUE_PARAMETERS[c][lam_col]])
    for i, j in bond_pairs:
        ah.addExclusion(i, j)
    ah.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    ah.setCutoffDistance(rc_ah)
    system.addForce(ah)

    charged = [i for i, q in enumerate(charges) if q != 0.0]
    if charged:
        kt = _KB * t
        bjerrum = _ONE_4PI_EPS0 / (relative_permittivity * kt)  # nm
        kappa = math.sqrt(8.0 * math.pi * bjerrum * ionic * _AVOGADRO_PER_NM3_PER_MOLAR)  # 1/nm
        dh = openmm.CustomNonbondedForce(
            "prefactor*q1*q2*(exp(-kappa*r)/r - exp(-kappa*rc_dh)/rc_dh)"
        )
        dh.setName("DebyeHueckel")
        dh.addGlobalParameter("prefactor", _ONE_4PI_EPS0 / relative_permittivity)
        dh.addGlobalParameter("kappa", kappa)
        dh.addGlobalParameter("rc_dh", rc_dh)
        dh.addPerParticleParameter("q")
        for q in charges:
            dh.addParticle([q])
        for i, j in bond_pairs:
            dh.addExclusion(i, j)
        dh.addInteractionGroup(charged, charged)
        dh.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
        dh.setCutoffDistance(rc_dh)
        system.addForce(dh)
    return system


def random_coil_positions(
    topology: app.Topology,
    box_nm,
    bond_length=0.38 * unit.nanometer,
    min_distance=0.5 * unit.nanometer,
    seed: int | None = None,
) -> unit.Quantity:
    """Non-overlapping random-walk positions for the chains of a C-alpha topology.

    Each chain is grown bead by bead with fixed bond length, rejecting steps that come closer than
    ``min_distance`` to any bead placed so far (other than the previous one); chains start at random points
    in the box. Intended as starting positions for :func:`hps_system` simulations.

    Parameters
    ----------
    topology : openmm.app.Topology
        C-alpha topology.
    box_nm : float, sequence or openmm.unit.Quantity
        Box (as in :func:`hps_system`); positions are placed inside it.
    bond_length, min_distance : openmm.unit.Quantity, optional
        Defaults 0.38 nm and 0.5 nm.
    seed : int, optional
        Random seed.

    Returns
    -------
    openmm.unit.Quantity
        Positions (list of ``Vec3``) in nm.
    """
    rng = np.random.default_rng(seed)
    vectors = _box_vectors(box_nm)
    edges = np.array([vectors[0][0], vectors[1][1], vectors[2][2]])
    b = _length_nm(bond_length, "bond_length")
    dmin = _length_nm(min_distance, "min_distance")
    placed = np.zeros((0, 3))
    out = np.zeros((topology.getNumAtoms(), 3))
    for chain in topology.chains():
        idx = [a.index for a in chain.atoms()]
        for attempt in range(200):
            start = rng.uniform(0.2, 0.8) * edges if attempt == 0 else rng.uniform(0.1, 0.9, 3) * edges
            coords = [start]
            if len(placed):
                # the first bead too keeps off the chains already placed (their images included)
                gap = placed - start
                gap -= edges * np.round(gap / edges)
                if np.min(np.linalg.norm(gap, axis=1)) < dmin:
                    continue
            ok = True
            for _ in idx[1:]:
                for _try in range(500):
                    step = rng.normal(size=3)
                    candidate = coords[-1] + b * step / np.linalg.norm(step)
                    others = np.vstack([placed] + [np.array(coords[:-1]).reshape(-1, 3)])
                    # minimum image: a bead near another's periodic image overlaps it as well (two
                    # chains threaded through each other that way blow up the first steps)
                    gap = others - candidate
                    gap -= edges * np.round(gap / edges)
                    if len(others) == 0 or np.min(np.linalg.norm(gap, axis=1)) >= dmin:
                        coords.append(candidate)
                        break
                else:
                    ok = False
                    break
            if ok:
                break
        else:
            raise RuntimeError("could not place a non-overlapping random coil; use a larger box")
        coords = np.array(coords)
        out[idx] = coords
        placed = np.vstack([placed, coords])
    return _vec3_quantity(out)
