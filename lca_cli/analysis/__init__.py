"""Reductions and views of a store: numbers only, streamed over chunks; never imports torch.

Modules (a documented subpackage: the names in each module's ``__all__`` are what reports and scripts use):

- :mod:`~lca_cli.analysis.reduce`: ``lca summarize``: a store by layer, tensor, neuron or iteration over a window
  of steps (:class:`~lca_cli.analysis.reduce.Summary`, with ``to_dict``, ``to_pandas`` and ``to_xarray``).
- :mod:`~lca_cli.analysis.selection`: which iterations count (one set, a window of start steps, done rows).
- :mod:`~lca_cli.analysis.series`: per-iteration series and per-layer counts from the small arrays.
- :mod:`~lca_cli.analysis.passes`: the streaming passes over ``lca`` (per-parameter totals, heat maps).
- :mod:`~lca_cli.analysis.parameters`: choosing and naming single parameters; concentration of learning.
- :mod:`~lca_cli.analysis.sync`: peaks of per-layer learning and their synchronisation test.
- :mod:`~lca_cli.analysis.floor`: ``--min-abs``: helped / hurt counts above a noise floor, the entries below float
  resolution, and Σneg / Σpos per iteration and tensor (one streaming pass).
- :mod:`~lca_cli.analysis.longform`: ``--series``: the layer x iteration table in long format.
- :mod:`~lca_cli.analysis.groups`: seed groups: mean / sd / n per statistic over stores, two groups' differences.
"""
