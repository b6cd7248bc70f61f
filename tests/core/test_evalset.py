"""Evaluation sets: the forms a data factory may return, chunking, and one-line refusals."""

from __future__ import annotations

import pytest
import reference
import torch

from lca_cli.core.batch import batch_len
from lca_cli.core.evalset import as_batch, make_chunks
from lca_cli.core.losses import model_outputs
from lca_cli.errors import ConfigError

CPU = torch.device("cpu")
DATA = reference.blobs(n=50)


def test_make_chunks_forms_and_errors() -> None:
    ds = reference.image_dataset(n=10)
    es = make_chunks("val", ds, 4, CPU, torch.float64)
    assert es.n_samples == 10 and es.chunk_sizes == [4, 4, 2]
    assert es.chunks[0][0].dtype == torch.float64 and es.chunks[0][1].dtype == torch.int64
    x, _y = reference.images(n=10)
    assert torch.equal(torch.cat([c[0] for c in es.chunks]), x.double())
    with pytest.raises(ConfigError, match="3 inputs but 2 targets"):
        make_chunks("train", (torch.zeros(3, 2), torch.zeros(2)), 2, CPU, torch.float32)
    with pytest.raises(ConfigError, match="is empty"):
        make_chunks("train", (torch.zeros(0, 2), torch.zeros(0)), 2, CPU, torch.float32)
    with pytest.raises(ConfigError, match="is empty"):
        make_chunks("train", [], 2, CPU, torch.float32)
    with pytest.raises(ConfigError, match="returned int"):
        make_chunks("train", 5, 2, CPU, torch.float32)


def test_numpy_pair_is_n_samples_not_two() -> None:
    x, y = DATA
    inputs, targets = as_batch((x.numpy(), y.numpy()), "set")
    assert batch_len(inputs) == 50 and torch.equal(inputs, x) and torch.equal(targets, y)  # type: ignore[arg-type]


def test_model_outputs_and_forms() -> None:
    t = torch.zeros(2, 3)
    assert model_outputs(t) is t and model_outputs({"loss": 1, "logits": t}) is t and model_outputs((t, 1)) is t
    inputs, targets = as_batch({"input_ids": [[1, 2], [3, 4]]}, "s")
    assert targets is None and inputs["input_ids"].shape == (2, 2)
    with pytest.raises(ConfigError, match="3-element"):
        as_batch((t, t, t), "s")
    with pytest.raises(ConfigError, match="different shapes"):
        as_batch([{"input_ids": [1, 2]}, {"input_ids": [1, 2, 3]}], "s")
    with pytest.raises(ConfigError, match="returned None"):
        as_batch(None, "s")
