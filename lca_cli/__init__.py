"""lca: Loss Change Allocation over saved training checkpoints.

The public Python API (the ``lca`` command is a thin layer on it)::

    import lca_cli

    result = lca_cli.compute("runs/exp1")              # checkpoints -> runs/exp1/lca.zarr
    store = lca_cli.open_store(result.store)
    store.summarize(by="layer").to_dict()              # what `lca summarize --json` prints
    lca_cli.report(store, "exp1.html")                 # needs the report extra (matplotlib)

``import lca_cli`` is cheap and never imports torch: the API loads on first use (PEP 562), and only
:func:`compute` needs torch. The documented subpackages below the API are :mod:`lca_cli.analysis` (reductions
of a store, numbers only), :mod:`lca_cli.store` (the Zarr store), :mod:`lca_cli.training` (the checkpoint
writer and framework callbacks) and :mod:`lca_cli.errors`; everything else is internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lca_cli.errors import (
    CheckpointError,
    ConfigError,
    LcaError,
    NumericalError,
    RunDirError,
    StorageError,
    StoreBusyError,
    StoreError,
    ToleranceError,
    UsageError,
)

if TYPE_CHECKING:
    from lca_cli.analysis.groups import GroupSummary
    from lca_cli.analysis.reduce import Summary
    from lca_cli.api import Group, Store, compute, open_group, open_store, report, verify
    from lca_cli.computation.result import ComputeResult

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 (grouped by task, not sorted: the order a reader looks for them)
    # Computing a store
    "compute",
    "ComputeResult",
    # Reading a store
    "open_store",
    "Store",
    "Summary",
    "open_group",
    "Group",
    "GroupSummary",
    "verify",
    # Reports
    "report",
    # Errors (each carries the exit code the CLI uses for it)
    "LcaError",
    "UsageError",
    "ConfigError",
    "RunDirError",
    "CheckpointError",
    "StoreError",
    "NumericalError",
    "ToleranceError",
    "StoreBusyError",
    "StorageError",
    # Version
    "__version__",
]

#: Lazily loaded names and the module that holds each (loading lca_cli.api pulls in numpy and zarr, not torch).
_LAZY = {
    "compute": "lca_cli.api",
    "ComputeResult": "lca_cli.computation.result",
    "open_store": "lca_cli.api",
    "Store": "lca_cli.api",
    "verify": "lca_cli.api",
    "report": "lca_cli.api",
    "Summary": "lca_cli.analysis.reduce",
    "open_group": "lca_cli.api",
    "Group": "lca_cli.api",
    "GroupSummary": "lca_cli.analysis.groups",
}


def __getattr__(name: str) -> Any:
    """Load an API name on first use (PEP 562), so that ``import lca_cli`` stays cheap."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lca_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
