"""Models in LCA's evaluation form: which buffers move along a segment with the parameters."""

from __future__ import annotations

import reference

from lca_cli.core.model import interpolated_buffer_names


def test_interpolated_buffers_are_the_floating_bn_statistics_in_running_mode_only() -> None:
    model = reference.bn_mlp(seed=3)
    assert interpolated_buffer_names(model, "batch") == []
    assert interpolated_buffer_names(model, "running") == ["1.running_mean", "1.running_var"]
