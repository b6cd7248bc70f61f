"""Hugging Face: real ``Trainer`` runs of tiny models built from configs (never a hub download).

GPT-2 (tied ``wte``/``lm_head``) trained with the lca callback and the Trainer's own ``checkpoint-N/``
folders, and re-saved sharded with ``save_pretrained``; a BERT classifier on padded inputs with attention
masks, from a Dataset of dict items. Every layout's rows equal, bit for bit, the rows of the same weights as
flat safetensors (the callback's own files), and every run conserves.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lca_cli.computation.config import load_config
from lca_cli.computation.runner import compute
from lca_cli.store.lcastore import LcaStore

pytestmark = [
    pytest.mark.slow,  # the module's fixture imports transformers and trains (about 10 s)
    pytest.mark.skipif(
        importlib.util.find_spec("transformers") is None or importlib.util.find_spec("accelerate") is None,
        reason="needs the hf extra (transformers, accelerate)",
    ),
]

# Imported by the fixture, not at collection: importing transformers costs seconds that a run of other tests
# (e.g. -m "not slow") must not pay.
transformers: Any = None

DATA = """
import torch

def lm_eval(n=12, t=8, vocab=40):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[::3, -2:] = 0  # padded: never scored
    return {"input_ids": ids, "attention_mask": mask}

def cls_eval(n=10, t=6, vocab=30):
    # A map-style Dataset of dict items with python lists and ints, as a tokenised dataset gives them.
    g = torch.Generator().manual_seed(4)
    items = []
    for i in range(n):
        ids = torch.randint(1, vocab, (t,), generator=g).tolist()
        mask = [1] * (t - i % 3) + [0] * (i % 3)
        items.append({"input_ids": [v * m for v, m in zip(ids, mask)], "attention_mask": mask, "labels": i % 3})
    return items
"""


def trainer_args(out: Path, steps: int) -> Any:
    return transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        save_steps=1,
        save_only_model=True,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        logging_steps=1000,
        disable_tqdm=True,
        seed=0,
    )


def rows(run: Path, config: Path | None = None, **overrides: object) -> tuple[LcaStore, np.ndarray]:
    cfg = load_config(config or run / "lca.toml").with_overrides(threads=1, **overrides)
    name = "-".join(f"{k}-{v}" for k, v in sorted(overrides.items()))
    result = compute(run, cfg, run / (f"lca-{name}.zarr" if name else "lca.zarr"))
    store = LcaStore.open(result.store)
    assert store.done().all() and result.flagged["train"] == []  # conserves: |residual| <= atol + rtol |ΔL|
    return store, np.asarray(store.array("train", "lca")[:])


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    global transformers
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded
    transformers = importlib.import_module("transformers")
    from lca_cli.training.integrations.hf import LcaTrainerCallback

    root = tmp_path_factory.mktemp("hf")
    (root / "hfevaldata.py").write_text(DATA)
    sys.path.insert(0, str(root))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gpt = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0,
                                eos_token_id=0)
    )  # fmt: skip
    ids = torch.randint(0, 40, (24, 8))
    train = [{"input_ids": ids[i], "labels": ids[i]} for i in range(24)]
    callback = LcaTrainerCallback(root / "gpt2", data="hfevaldata:lm_eval", loss="causal_lm")
    transformers.Trainer(model=gpt, args=trainer_args(root / "gpt2_trainer", 3), train_dataset=train,
                         callbacks=[callback]).train()  # fmt: skip
    bert = transformers.BertForSequenceClassification(
        transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=16, num_labels=3)
    )  # fmt: skip
    x = torch.randint(1, 30, (16, 6))
    train = [{"input_ids": x[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": i % 3} for i in range(16)]
    callback = LcaTrainerCallback(root / "bert", data="hfevaldata:cls_eval", loss="cross_entropy")
    transformers.Trainer(model=bert, args=trainer_args(root / "bert_trainer", 2), train_dataset=train,
                         callbacks=[callback]).train()  # fmt: skip
    yield root
    sys.path.remove(str(root))


def test_callback_writes_step_zero_every_step_and_a_tied_gpt2_conserves(hf_runs: Path) -> None:
    run = hf_runs / "gpt2"
    names = sorted(p.name for p in run.glob("*.safetensors"))
    assert names == [f"step_{s:08d}.safetensors" for s in range(4)]
    assert json.loads((run / "lca.end").read_text())["last_step"] == 3  # training ended: --follow stops
    assert "lm_head.weight" not in load_file(str(run / names[0]))  # the tied alias is saved once
    store, lca = rows(run)
    assert store.steps.tolist() == [0, 1, 2, 3]
    assert store.attrs["tied"] == {"lm_head.weight": "transformer.wte.weight"}
    assert not np.isnan(lca).any() and np.abs(lca).sum() > 0
    # GPT-2's Conv1D weights are stored (in, out): their neurons are columns, grouped with the bias of each.
    transposed = {p.name for p in store.layout.params if p.axis == 1}
    projections = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    assert transposed == {f"transformer.h.0.{n}" for n in projections}  # the test's GPT-2 has one block
    groups = dict(store.layout.neurons())
    assert groups["transformer.h.0.attn.c_attn"][0][1] == 3 * groups["transformer.h.0.attn.c_proj"][0][1]


def test_trainer_checkpoint_folders_equal_flat_rows_bit_for_bit(hf_runs: Path) -> None:
    # The Trainer's folders start at step 1: the same pairs but one, so each pair is held to its own row (the
    # default run scale is measured over the pairs of each run, which differ here).
    _, flat = rows(hf_runs / "gpt2", l1_scope="pair")
    store, lca = rows(hf_runs / "gpt2_trainer", config=hf_runs / "gpt2" / "lca.toml", l1_scope="pair")
    assert store.steps.tolist() == [1, 2, 3]  # checkpoint-N/, steps from trainer_state.json
    assert np.array_equal(lca, flat[1:])


def test_sharded_save_pretrained_equal_flat_rows_bit_for_bit(hf_runs: Path, tmp_path: Path) -> None:
    _, flat = rows(hf_runs / "gpt2")
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16, bos_token_id=0,
                                eos_token_id=0)
    )  # fmt: skip
    for s in range(4):
        state = load_file(str(hf_runs / "gpt2" / f"step_{s:08d}.safetensors"))
        model.load_state_dict(state, strict=False)  # lm_head.weight is the tie
        model.save_pretrained(tmp_path / f"step_{s}", max_shard_size="4KB")
    assert len(list((tmp_path / "step_0").glob("model-*-of-*.safetensors"))) > 1
    _, lca = rows(tmp_path, config=hf_runs / "gpt2" / "lca.toml")
    assert np.array_equal(lca, flat)


def test_bert_with_attention_masks_from_a_dataset_of_dicts(hf_runs: Path) -> None:
    store, lca = rows(hf_runs / "bert")
    assert store.steps.tolist() == [0, 1, 2] and np.abs(lca).sum() > 0
    _, trainer = rows(hf_runs / "bert_trainer", config=hf_runs / "bert" / "lca.toml", l1_scope="pair")
    assert np.array_equal(trainer, rows(hf_runs / "bert", l1_scope="pair")[1][1:])  # pairs 1.. of both
    # The model's own loss (labels passed to the model) is the same mean on one chunk, rounded to float32 (the
    # built-in loss reduces in float64): within one float32 step of it.
    config = hf_runs / "bert" / "lca.toml"
    (hf_runs / "bert_model_loss").mkdir()
    text = config.read_text().replace('name = "cross_entropy"', 'name = "model_loss"')
    (hf_runs / "bert_model_loss" / "lca.toml").write_text(text)
    for p in (hf_runs / "bert").glob("*.safetensors"):
        (hf_runs / "bert_model_loss" / p.name).write_bytes(p.read_bytes())
    other, _ = rows(hf_runs / "bert_model_loss")
    np.testing.assert_allclose(other.read("train", "loss"), store.read("train", "loss"), rtol=2.0**-23)
