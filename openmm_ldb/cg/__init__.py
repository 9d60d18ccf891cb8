"""Built-in one-bead-per-residue (C-alpha) coarse-grained models.

These models exist so that the backmapping code has something realistic to backmap in demos and tests.
Everything is built from plain OpenMM objects; lengths are in nm and energies in kJ/mol.

Contents
--------
ca_topology
    Build a C-alpha topology (one ``CA`` bead per residue) from one-letter sequences.
ca_from_structure
    Reduce an all-atom PDB/mmCIF structure to its C-alpha topology and positions.
GoModel, go_model_system
    Structure-based (Go) C-alpha model after Clementi, Nymeyer & Onuchic, J. Mol. Biol. 298, 937 (2000).
hps_system
    Sequence-based models of disordered chains: CALVADOS2 (Tesei & Lindorff-Larsen, Open Res. Europe 2, 94
    (2022)) or HPS (Dignon et al., PLoS Comput. Biol. 14, e1005941 (2018)).
random_coil_positions
    Non-overlapping random-walk starting positions for disordered chains.
make_simulation
    A ``Simulation`` with a ``LangevinMiddleIntegrator`` set up for these models.
demo_structure_path
    Path of the shipped demo structure (protein G B1 domain, PDB 1GB1 model 1, heavy atoms).
"""

from __future__ import annotations

from .common import RESIDUE_PARAMETERS, _AVOGADRO_PER_NM3_PER_MOLAR, _CHARGES, _KB, _KCAL, _ONE_4PI_EPS0, _THREE_TO_ONE, _angle, _box_vectors, _chain_segments, _dihedral, _energy_kj, _kelvin, _length_nm, _positions_nm, _residue_codes, _standard_name, demo_structure_path  # noqa: F401
from .structures import _cg_from_selection, _default_chain_ids, _heavy_atom_contacts, _load_structure, _select_residues, _vec3_quantity, ca_from_structure, ca_topology  # noqa: F401
from .go import GoModel, _bead_masses, go_model_system  # noqa: F401
from .hps import _relative_permittivity_water, hps_system, random_coil_positions  # noqa: F401
from .simulation import make_simulation  # noqa: F401

__all__ = [
    "RESIDUE_PARAMETERS",
    "GoModel",
    "ca_from_structure",
    "ca_topology",
    "demo_structure_path",
    "go_model_system",
    "hps_system",
    "make_simulation",
    "random_coil_positions",
]
