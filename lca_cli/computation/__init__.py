"""The computation: plan a run, compute its pairs into a store, follow it, share it among processes.

Modules, each owning one thing: ``options`` (the option spec), ``config`` (the run config), ``plan`` (everything
resolved once, :func:`~lca_cli.computation.plan.build_plan`), ``engine`` (the pair engine), ``scale`` (the run
scale of ``l1_tol``), ``writer`` (rows to the store), ``opening`` (owning a store), ``runner`` (one call: the
store owned or joined, torchrun), ``work`` (the loop over claimed chunks, follow and prune), ``result``,
``dryrun``, ``distributed``, ``follow``, ``tuning``, and ``entry`` (:func:`compute_run`, the library entry point).

Importing this package imports neither torch nor click; ``compute_run`` and ``plan_run`` load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compute_run", "plan_run"]


def __getattr__(name: str) -> Any:
    # torch loads only when a computation is asked for: the CLI's read commands import this package's options.
    if name in __all__:
        from lca_cli.computation import entry

        return getattr(entry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
