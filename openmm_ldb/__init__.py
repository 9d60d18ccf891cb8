"""openmm-ldb: latent diffusion backmapping for OpenMM coarse-grained simulations."""

__version__ = "0.1.0"
