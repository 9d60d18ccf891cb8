"""Structure-based (Go) Cα model after Clementi, Nymeyer & Onuchic, J. Mol. Biol. 298, 937 (2000)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import openmm
from openmm import app, unit

from .common import RESIDUE_PARAMETERS, _THREE_TO_ONE, _angle, _box_vectors, _chain_segments, _dihedral, _energy_kj, _length_nm, _positions_nm, _residue_codes
from .structures import _heavy_atom_contacts, _load_structure, _select_residues, _vec3_quantity, ca_from_structure


# ---------------------------------------------------------------------------------------------------------
# Go model
# ---------------------------------------------------------------------------------------------------------
def _bead_masses(codes: list[str], bead_mass) -> list[float]:
    if bead_mass is None:
        return [RESIDUE_PARAMETERS[c][1] for c in codes]
    m = bead_mass.value_in_unit(unit.dalton) if unit.is_quantity(bead_mass) else float(bead_mass)
    if m <= 0:
        raise ValueError("bead_mass must be positive")
    return [m] * len(codes)


class GoModel:
    """Structure-based C-alpha (Go) model of a protein in its native state.

    The potential follows Clementi, Nymeyer & Onuchic (2000), with every term scaled by ``epsilon``:

    * bonds: ``0.5 * k_b * (r - r0)**2`` with ``k_b = bond_k * epsilon / nm**2`` and ``r0`` native;
    * angles: ``0.5 * k_theta * (theta - theta0)**2`` with ``k_theta = angle_k * epsilon / rad**2``;
    * dihedrals: ``K1 * [1 - cos(phi - phi0)] + K3 * [1 - cos(3 (phi - phi0))]`` with
      ``K1 = dihedral_k1 * epsilon``, ``K3 = dihedral_k3 * epsilon``;
    * native contacts: ``eps_c * [5 (r0/r)**12 - 6 (r0/r)**10]`` (12-10 well of depth
      ``eps_c = contact_epsilon * epsilon`` at the native C-alpha distance ``r0``);
    * every other pair more than three beads apart along a chain (or in different chains):
      ``eps_nn * [(sigma_nn/r)**12 - (sigma_nn/rc)**12]`` for ``r < rc``.

    Parameters
    ----------
    topology : openmm.app.Topology
        C-alpha topology (one ``CA`` bead per residue, e.g. from :func:`ca_from_structure`). Bonds define
        the chain connectivity: angles and dihedrals are built along runs of consecutive bonded beads.
    native_positions : openmm.unit.Quantity
        Native C-alpha positions, one per bead (plain arrays are taken as nm).
    contacts : sequence of (int, int), optional
        Native contacts as bead-index pairs. Default: from ``all_atom_structure`` if given, else C-alpha
        pairs closer than ``ca_contact_cutoff``.
    all_atom_structure : path, mdtraj.Trajectory or openmm PDBFile/PDBxFile, optional
        The all-atom native structure the C-alpha topology was made from; native contacts are then residue
        pairs with heavy atoms closer than ``heavy_atom_cutoff``. Its standard residues (restricted to
        ``chains``) must match the topology bead for bead.
    chains : optional
        Chains of ``all_atom_structure`` to use (as in :func:`ca_from_structure`).
    epsilon : openmm.unit.Quantity, optional
        Energy scale. Default 1 kcal/mol, which keeps small proteins folded at 300 K.
    heavy_atom_cutoff, ca_contact_cutoff : openmm.unit.Quantity, optional
        Contact definitions (defaults 0.45 nm between heavy atoms, 0.8 nm between C-alpha atoms).
    min_sequence_separation : int, optional
        Contacts within a chain need ``|i - j| >= min_sequence_separation`` (default 4). Pairs in different
        chains always qualify.
    bond_k, angle_k, dihedral_k1, dihedral_k3, contact_epsilon, repulsion_epsilon : float, optional
        Force constants in units of ``epsilon`` (per nm**2 for bonds, per rad**2 for angles). Defaults
        20000, 40, 1, 0.5, 1, 1 (Clementi et al. 2000).
    repulsion_sigma, repulsion_cutoff : openmm.unit.Quantity, optional
        Non-native excluded-volume radius (default 0.4 nm) and cutoff (default 1.2 nm).
    bead_mass : openmm.unit.Quantity, optional
        Mass of every bead; default: the average mass of each bead's residue type.
    use_pbc : bool, optional
        Use periodic boundary conditions (default False).
    box : optional
        Periodic box (a length, three lengths or three vectors; nm if plain numbers) when ``use_pbc``;
        default the topology's box, else a cube 5 nm larger than the native structure's extent.

    Attributes
    ----------
    topology, native_positions
        As given (positions as a Quantity of ``Vec3`` in nm).
    contacts : numpy.ndarray
        ``(n_contacts, 2)`` bead indices, ``i < j``.
    """

    def __init__(
        self,
        topology: app.Topology,
        native_positions,
        contacts: Iterable[tuple[int, int]] | None = None,
        *,
        all_atom_structure=None,
        chains=None,
        epsilon=1.0 * unit.kilocalorie_per_mole,
        heavy_atom_cutoff=0.45 * unit.nanometer,
        ca_contact_cutoff=0.8 * unit.nanometer,
        min_sequence_separation: int = 4,
        bond_k: float = 20000.0,
        angle_k: float = 40.0,
        dihedral_k1: float = 1.0,
        dihedral_k3: float = 0.5,
        contact_epsilon: float = 1.0,
        repulsion_epsilon: float = 1.0,
        repulsion_sigma=0.4 * unit.nanometer,
        repulsion_cutoff=1.2 * unit.nanometer,
        bead_mass=None,
        use_pbc: bool = False,
        box=None,
    ):
        self.topology = topology
        self._codes = _residue_codes(topology, "GoModel")
        xyz = _positions_nm(native_positions, topology.getNumAtoms())
        self._xyz = xyz
        self.native_positions = _vec3_quantity(xyz)
        if min_sequence_separation < 1:
            raise ValueError("min_sequence_separation must be at least 1")
        self.min_sequence_separation = int(min_sequence_separation)
        self.epsilon = _energy_kj(epsilon, "epsilon")
        if self.epsilon <= 0:
            raise ValueError("epsilon must be positive")
        self.bond_k, self.angle_k = float(bond_k), float(angle_k)
        self.dihedral_k1, self.dihedral_k3 = float(dihedral_k1), float(dihedral_k3)
        self.contact_epsilon, self.repulsion_epsilon = float(contact_epsilon), float(repulsion_epsilon)
        self.repulsion_sigma = _length_nm(repulsion_sigma, "repulsion_sigma")
        self.repulsion_cutoff = _length_nm(repulsion_cutoff, "repulsion_cutoff")
        self.bead_mass = bead_mass
        self.use_pbc = bool(use_pbc)
        self.box = box

        # chain membership and position within the chain, for sequence separations
        self._chain_of = np.empty(len(self._codes), dtype=int)
        self._pos_in_chain = np.empty(len(self._codes), dtype=int)
        for c, chain in enumerate(topology.chains()):
            for k, atom in enumerate(chain.atoms()):
                self._chain_of[atom.index] = c
                self._pos_in_chain[atom.index] = k

        if contacts is not None:
            pairs = set()
            n = len(self._codes)
            for i, j in contacts:
                i, j = int(i), int(j)
                if not (0 <= i < n and 0 <= j < n) or i == j:
                    raise ValueError(f"invalid contact ({i}, {j}) for {n} beads")
                pairs.add((min(i, j), max(i, j)))
        elif all_atom_structure is not None:
            traj = _load_structure(all_atom_structure)
            selection = _select_residues(traj, chains)
            names = [std for _, items in selection for _, std, _ in items]
            if len(names) != len(self._codes):
                raise ValueError(
                    f"all_atom_structure has {len(names)} standard residues but the topology has "
                    f"{len(self._codes)} beads"
                )
            for k, (name, code) in enumerate(zip(names, self._codes)):
                if _THREE_TO_ONE[name] != code:
                    raise ValueError(
                        f"residue {k} is {name} in all_atom_structure but {RESIDUE_PARAMETERS[code][0]} in "
                        "the topology"
                    )
            pairs = _heavy_atom_contacts(traj, selection, _length_nm(heavy_atom_cutoff, "heavy_atom_cutoff"))
        else:
            cut = _length_nm(ca_contact_cutoff, "ca_contact_cutoff")
            d = np.linalg.norm(xyz[:, None, :] - xyz[None, :, :], axis=-1)
            ii, jj = np.nonzero(np.triu(d < cut, k=1))
            pairs = set(zip(ii.tolist(), jj.tolist()))
        pairs = {p for p in pairs if self._separated(*p)}
        self.contacts = np.array(sorted(pairs), dtype=int).reshape(-1, 2)

    def _separated(self, i: int, j: int) -> bool:
        if self._chain_of[i] != self._chain_of[j]:
            return True
        return abs(int(self._pos_in_chain[i]) - int(self._pos_in_chain[j])) >= self.min_sequence_separation

    @classmethod
    def from_structure(cls, structure, chains=None, frame: int = 0, **kwargs) -> GoModel:
        """Build a Go model from an all-atom structure (heavy-atom contact map).

        Parameters
        ----------
        structure : path, mdtraj.Trajectory or openmm PDBFile/PDBxFile
            The native all-atom structure (see :func:`ca_from_structure`).
        chains : optional
            Chains to keep.
        frame : int, optional
            Model/frame of a multi-model file. Default 0.
        **kwargs
            Further :class:`GoModel` parameters.

        Returns
        -------
        GoModel
        """
        traj = _load_structure(structure, frame)
        topology, positions = ca_from_structure(traj, chains=chains)
        return cls(topology, positions, all_atom_structure=traj, chains=chains, **kwargs)

    def create_system(self) -> openmm.System:
        """Create the OpenMM System.

        Returns
        -------
        openmm.System
        """
        xyz, eps, n = self._xyz, self.epsilon, len(self._codes)
        system = openmm.System()
        for m in _bead_masses(self._codes, self.bead_mass):
            system.addParticle(m)
        if self.use_pbc:
            box = self.box if self.box is not None else self.topology.getPeriodicBoxVectors()
            if box is None:
                extent = xyz.max(axis=0) - xyz.min(axis=0)
                box = float(extent.max()) + 5.0
            vectors = _box_vectors(box)
            if min(vectors[0][0], vectors[1][1], vectors[2][2]) < 2 * self.repulsion_cutoff:
                raise ValueError("the periodic box must be at least twice the repulsion cutoff")
            system.setDefaultPeriodicBoxVectors(*vectors)

        bonds = openmm.HarmonicBondForce()
        bond_pairs = []
        for a, b in self.topology.bonds():
            i, j = a.index, b.index
            bonds.addBond(i, j, float(np.linalg.norm(xyz[i] - xyz[j])), self.bond_k * eps)
            bond_pairs.append((i, j))
        angles = openmm.HarmonicAngleForce()
        torsions = openmm.PeriodicTorsionForce()
        excluded = set()
        for seg in _chain_segments(self.topology):
            for k in range(len(seg)):
                for d in range(1, 4):
                    if k + d < len(seg):
                        excluded.add((seg[k], seg[k + d]))
                if k + 2 < len(seg):
                    i, j, m = seg[k:k + 3]
                    angles.addAngle(i, j, m, _angle(xyz[i], xyz[j], xyz[m]), self.angle_k * eps)
                if k + 3 < len(seg):
                    i, j, m, q = seg[k:k + 4]
                    phi0 = _dihedral(xyz[i], xyz[j], xyz[m], xyz[q])
                    # k (1 + cos(n phi - delta)) with delta = n phi0 + pi gives k [1 - cos(n (phi - phi0))]
                    if self.dihedral_k1:
                        torsions.addTorsion(i, j, m, q, 1, phi0 + math.pi, self.dihedral_k1 * eps)
                    if self.dihedral_k3:
                        torsions.addTorsion(i, j, m, q, 3, 3 * phi0 + math.pi, self.dihedral_k3 * eps)
        for i, j in bond_pairs:
            excluded.add((min(i, j), max(i, j)))

        contacts = openmm.CustomBondForce("eps_c*(5*(r0/r)^12 - 6*(r0/r)^10)")
        contacts.addGlobalParameter("eps_c", self.contact_epsilon * eps)
        contacts.addPerBondParameter("r0")
        for i, j in self.contacts:
            contacts.addBond(int(i), int(j), [float(np.linalg.norm(xyz[i] - xyz[j]))])
            excluded.add((int(i), int(j)))

        rc = self.repulsion_cutoff
        repulsion = openmm.CustomNonbondedForce("eps_nn*((sigma_nn/r)^12 - (sigma_nn/rc_nn)^12)")
        repulsion.addGlobalParameter("eps_nn", self.repulsion_epsilon * eps)
        repulsion.addGlobalParameter("sigma_nn", self.repulsion_sigma)
        repulsion.addGlobalParameter("rc_nn", rc)
        for _ in range(n):
            repulsion.addParticle([])
        for i, j in sorted(excluded):
            repulsion.addExclusion(int(i), int(j))
        repulsion.setCutoffDistance(rc)
        repulsion.setNonbondedMethod(
            openmm.CustomNonbondedForce.CutoffPeriodic if self.use_pbc else openmm.CustomNonbondedForce.CutoffNonPeriodic
        )

        for force, name in (
            (bonds, "GoBonds"), (angles, "GoAngles"), (torsions, "GoDihedrals"), (contacts, "GoNativeContacts"),
        ):
            force.setUsesPeriodicBoundaryConditions(self.use_pbc)
            force.setName(name)
            system.addForce(force)
        repulsion.setName("GoRepulsion")
        system.addForce(repulsion)
        system.addForce(openmm.CMMotionRemover())
        return system


def go_model_system(topology: app.Topology, native_positions, **kwargs) -> openmm.System:
    """Create a structure-based C-alpha Go-model System (see :class:`GoModel` for the potential).

    Parameters
    ----------
    topology : openmm.app.Topology
        C-alpha topology (one ``CA`` bead per residue).
    native_positions : openmm.unit.Quantity
        Native C-alpha positions, one per bead.
    **kwargs
        Further :class:`GoModel` parameters (``contacts``, ``all_atom_structure``, ``epsilon``,
        ``use_pbc``, ``box``, ...).

    Returns
    -------
    openmm.System

    Raises
    ------
    ValueError
        For an unknown residue name (naming the residue and its index) or a number of positions that does
        not match the topology.
    """
    return GoModel(topology, native_positions, **kwargs).create_system()
