"""Gathering: the page's data read from a store in one step, complete and immutable; sets, notes, input images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from stores import make_store

from lca_cli.analysis.reduce import open_store
from lca_cli.errors import StoreError, UsageError
from lca_cli.reporting.gather import (
    InputImage,
    SetData,
    SetSummary,
    gather_report,
    gather_sets,
    input_image,
    resolve_sets,
)
from lca_cli.store import LcaStore

IMAGE_SHAPES = [("fc1.weight", (5, 784)), ("fc1.bias", (5,)), ("fc2.weight", (10, 5)), ("fc2.bias", (10,))]


def test_the_report_data_is_complete_and_frozen(tmp_path: Path) -> None:
    make_store(tmp_path / "s.zarr", sets=("train", "val"), n_pairs=20, rows_per_chunk=6)
    store = open_store(tmp_path / "s.zarr")
    summaries, notes = gather_sets(store, None, None)
    assert [s.name for s in summaries] == ["train", "val"] and notes == {}
    messages: list[str] = []
    report = gather_report(store, summaries, notes, heatmap_layers=2, seed=0, progress=messages.append)
    assert report.main is report.sets[0] and [d.name for d in report.sets] == ["train", "val"]
    for s, d in zip(summaries, report.sets, strict=True):
        # Every field is set when the object is made; the summary's fields are the summary's own objects.
        assert all(getattr(d, f.name) is not None for f in dataclasses.fields(SetData))
        assert all(getattr(d, f.name) is getattr(s, f.name) for f in dataclasses.fields(SetSummary))
        assert d.traj.shape == (20, len(report.kinds)) and len(d.maps) == 2 and len(d.spans) == len(d.layer_names)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.sets[0].traj = np.zeros(1)  # type: ignore[misc]
    assert len(report.labels) == len(report.kinds) == len(report.columns) > 0
    assert report.groups == sorted(report.groups) and report.image is None
    # Pass 1 of every set, then pass 2 of every set, then the synchronisation baselines.
    keys = ("set train: pass 1/2", "set val: pass 1/2", "set train: pass 2/2", "set val: pass 2/2", "synchronisation")
    first = [next(i for i, m in enumerate(messages) if m.startswith(key)) for key in keys]
    assert messages[0] == "set train: 20 iterations (steps 0..40)" and first == sorted(first)


def test_resolve_sets(tmp_path: Path) -> None:
    make_store(tmp_path / "s.zarr", sets=("val", "train"), n_pairs=8)
    store = open_store(tmp_path / "s.zarr")
    assert resolve_sets(store, None) == (["train", "val"], False)  # train first when present
    assert resolve_sets(store, "val") == (["val"], True)
    assert resolve_sets(store, ["val", "train", "val"]) == (["val", "train"], True)
    with pytest.raises(UsageError, match="no such evaluation set"):
        resolve_sets(store, ["test"])


def test_a_held_out_set_not_computed_yet_is_a_note_unless_named(tmp_path: Path) -> None:
    make_store(tmp_path / "s.zarr", sets=("train", "val"), n_pairs=10)
    LcaStore.open(tmp_path / "s.zarr", "r+").array("val", "done")[:] = False
    store = open_store(tmp_path / "s.zarr")
    summaries, notes = gather_sets(store, None, None)
    assert [s.name for s in summaries] == ["train"]
    assert list(notes) == ["val"] and "no finished iteration of set 'val'" in notes["val"]
    with pytest.raises(StoreError, match="no finished iteration of set 'val'"):
        gather_sets(store, ["train", "val"], None)


def test_input_image(tmp_path: Path) -> None:
    make_store(tmp_path / "img.zarr", shapes=IMAGE_SHAPES, n_pairs=8)
    make_store(tmp_path / "mlp.zarr", n_pairs=8)
    assert input_image(open_store(tmp_path / "img.zarr")) == InputImage("fc1.weight", (1, 28, 28), (0, 3920))
    assert input_image(open_store(tmp_path / "mlp.zarr")) is None  # 4 inputs: not an image
