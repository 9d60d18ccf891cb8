"""openmm-ldb: latent diffusion backmapping for OpenMM coarse-grained simulations."""

__version__ = "0.1.0"

__all__ = ["Backmapper", "LDBReporter", "Refiner", "SnapshotReporter", "TrajectoryWriter", "cg", "exchange"]


def __getattr__(name):
    # lazy imports keep `import openmm_ldb` light (torch loads on first use)
    if name == "Backmapper":
        from .backmapper import Backmapper
        return Backmapper
    if name == "LDBReporter":
        from .reporter import LDBReporter
        return LDBReporter
    if name == "Refiner":
        from .refine import Refiner
        return Refiner
    if name == "TrajectoryWriter":
        from .writers import TrajectoryWriter
        return TrajectoryWriter
    if name == "SnapshotReporter":
        from .snapshots import SnapshotReporter
        return SnapshotReporter
    if name in ("cg", "exchange"):
        import importlib
        return importlib.import_module("." + name, __name__)
    raise AttributeError(name)
