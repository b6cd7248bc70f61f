"""lca: Loss Change Allocation over saved training checkpoints.

The package is a pure core (functions over tensors and arrays) under a thin click CLI:
``record`` writes checkpoints during training, ``pipeline`` turns consecutive checkpoint pairs into a Zarr
store of per-parameter loss-change allocations, and ``reduce`` / ``report`` read that store back.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
