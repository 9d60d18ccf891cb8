"""The LDB model: VQ-VAE over per-residue all-atom environments + latent diffusion."""

from .ldb import LDBConfig, LDBModel
from .sampler import Sampler

__all__ = ["LDBConfig", "LDBModel", "Sampler"]
