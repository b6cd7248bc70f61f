"""Hugging Face and PEFT runs with no glue: the README's commands, run as written on tiny models (never a download).

The README's *Hugging Face Transformers* (the Trainer alone, ``--data eval.safetensors``) and *PEFT / LoRA*
sections' code blocks are extracted and run in a scratch folder (only ``max_steps`` is cut, from 300 to 3), and
their ``lca compute`` lines run with no other flag; the stored losses are the model's own loss at each
checkpoint, recomputed here with transformers and peft. Also: an adapter whose base is no local folder is
refused in one line that names adapters and what to pass, the Trainer callback works with a PEFT model and no
factory, and ``--data`` reads a ``datasets`` folder.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lca_cli.cli.app import main
from lca_cli.errors import ConfigError, UsageError
from lca_cli.store.lcastore import LcaStore

pytestmark = [
    pytest.mark.slow,  # each test trains a tiny GPT-2 with the real Trainer (a few seconds)
    # The README's scripts run the libraries as users do: their own warnings (no accelerator for pin_memory,
    # deprecations) are theirs, not lca's.
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"),
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("transformers", "accelerate", "peft")),
        reason="needs the hf extra (transformers, accelerate, peft)",
    ),
]

README = Path(__file__).resolve().parents[2] / "README.md"
STEPS = "max_steps=300"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def blocks(title: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section(title), flags=re.S)


def script(title: str, name: str) -> str:
    """The README block that starts with ``# name``, its training cut to 3 steps."""
    (code,) = [b for b in blocks(title, "python") if b.startswith(f"# {name}")]
    return code.replace(STEPS, "max_steps=3")


def lca_commands(title: str) -> list[list[str]]:
    lines = [ln for b in blocks(title, "bash") for ln in b.splitlines() if ln.startswith("lca compute ")]
    lines = [ln for ln in lines if "--data" in ln]  # the zero-glue commands (the callback's run has lca.toml)
    assert lines, f"no lca compute line in README section {title!r}"
    return [shlex.split(ln)[1:] for ln in lines]


def lca(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the README's data/ (token ids, 0 = padding) and tiny sizes for its models."""
    g = torch.Generator().manual_seed(0)
    (tmp_path / "data").mkdir()
    torch.save(torch.randint(1, 1000, (32, 12), generator=g), tmp_path / "data" / "train_ids.pt")
    ids = torch.randint(1, 1000, (6, 12), generator=g)
    ids[::2, -3:] = 0  # padding, never scored
    torch.save(ids, tmp_path / "data" / "eval_ids.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_script(code: str, name: str) -> None:
    assert "max_steps=3" in code, f"README's {name} no longer trains with {STEPS}"
    exec(compile(code, f"README.md {name}", "exec"), {"__name__": "__main__"})


def make_eval(title: str) -> None:
    """The README's make_eval.py: eval.safetensors from data/eval_ids.pt."""
    exec(compile(script(title, "make_eval.py"), "README.md make_eval.py", "exec"), {"__name__": "__main__"})


def model_losses(make: Any, folders: list[Path], data: dict[str, torch.Tensor]) -> np.ndarray:
    out = []
    for folder in folders:
        model = make(folder).eval()
        with torch.no_grad():
            out.append(float(model(**data).loss))
    return np.array(out)


def checkpoints(run: Path) -> list[Path]:
    return sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))


def test_readme_trainer_folders_need_only_data(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import transformers

    title = "Hugging Face Transformers"
    run_script(script(title, "train_trainer.py"), "train_trainer.py")
    make_eval(title)
    (command,) = lca_commands(title)
    assert command == ["compute", "runs/gpt2-trainer", "--data", "eval.safetensors"]
    assert not (workdir / "runs" / "gpt2-trainer" / "lca.toml").exists()
    assert lca(command) == 0, capsys.readouterr().err
    store = LcaStore.open(workdir / "runs" / "gpt2-trainer" / "lca.zarr")
    assert store.attrs["identity"]["loss"]["name"] == "model_loss"
    folders = checkpoints(workdir / "runs" / "gpt2-trainer")
    assert list(store.steps) == [1, 2, 3] and len(folders) == 3
    data = load_file("eval.safetensors")
    want = model_losses(transformers.GPT2LMHeadModel.from_pretrained, folders, data)
    np.testing.assert_allclose(store.read("train", "loss"), want, rtol=1e-6)
    assert np.all(np.abs(store.read("train", "residual")) < 1e-5)


def test_readme_lora_run_needs_only_data(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import peft
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=1000, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained("models/gpt2-base")
    make_eval("Hugging Face Transformers")
    title = "PEFT / LoRA"
    run_script(script(title, "train_lora.py"), "train_lora.py")
    (command,) = lca_commands(title)
    assert command == ["compute", "runs/lora", "--data", "eval.safetensors"]
    assert lca(command) == 0, capsys.readouterr().err
    store = LcaStore.open(workdir / "runs" / "lora" / "lca.zarr")
    names = [p["name"] for p in store.attrs["params"]]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    frozen = store.attrs["evaluation"]["frozen"]
    assert frozen["lca_covers"] == "trainable" and "base_model.model.transformer.wte.weight" in frozen["frozen"]
    folders = checkpoints(workdir / "runs" / "lora")

    def adapted(folder: Path) -> Any:
        base = transformers.GPT2LMHeadModel.from_pretrained("models/gpt2-base")
        return peft.PeftModel.from_pretrained(base, str(folder))

    want = model_losses(adapted, folders, load_file("eval.safetensors"))
    np.testing.assert_allclose(store.read("train", "loss"), want, rtol=1e-6)


def tiny_lora(base_from_folder: bool) -> Any:
    import peft
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16)
    base = transformers.GPT2LMHeadModel(config)
    if base_from_folder:
        base.save_pretrained("base")
        base = transformers.GPT2LMHeadModel.from_pretrained("base")
    return peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM"))


def train(model: Any, out: str, callbacks: list[Any] | None = None, **args: Any) -> None:
    import transformers

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (16, 8), generator=g)
    settings = {"max_steps": 3, "per_device_train_batch_size": 8, "learning_rate": 1e-2, "report_to": []}
    targs = transformers.TrainingArguments(output_dir=out, disable_tqdm=True, **{**settings, **args})
    trainer = transformers.Trainer(
        model=model, args=targs, train_dataset=[{"input_ids": i, "labels": i} for i in ids], callbacks=callbacks
    )
    trainer.train()


def eval_file(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import save_file

    ids = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(2))
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    save_file(data, path)
    return data


def test_adapter_without_local_base_is_refused_naming_adapters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    train(tiny_lora(base_from_folder=False), "run", save_steps=1)  # built in memory: no base folder named
    eval_file("eval.safetensors")
    code = lca(["compute", "run", "--data", "eval.safetensors"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("Error:")]
    assert code == ConfigError.exit_code and len(err) == 1
    assert "PEFT adapter" in err[0] and "adapter_config.json" in err[0]
    assert "[model] factory" in err[0] and "--config" in err[0] and "save_pretrained" in err[0]


def test_hf_run_without_data_says_to_pass_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    train(tiny_lora(base_from_folder=True), "run", save_steps=1)
    assert lca(["compute", "run"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert "PEFT adapter" in err and "--data eval.safetensors" in err


def test_callback_with_a_peft_model_needs_no_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lca_cli.training.integrations.hf import LcaTrainerCallback

    monkeypatch.chdir(tmp_path)
    data = eval_file(str(tmp_path / "eval.safetensors"))
    (tmp_path / "evaldata.py").write_text(
        "from safetensors.torch import load_file\n\ndef eval_set():\n"
        f"    return load_file({str(tmp_path / 'eval.safetensors')!r})\n"
    )
    model = tiny_lora(base_from_folder=False)
    model.eval()
    with torch.no_grad():
        start = float(model(**data).loss)
    train(model, "trainer", [LcaTrainerCallback("run", data="evaldata:eval_set")], save_strategy="no")
    model.eval()
    with torch.no_grad():
        end = float(model(**data).loss)
    assert (tmp_path / "run" / "base_model" / "config.json").is_file()
    assert lca(["compute", "run"]) == 0, capsys.readouterr().err
    store = LcaStore.open(tmp_path / "run" / "lca.zarr")
    assert list(store.steps) == [0, 1, 2, 3]
    loss = store.read("train", "loss")
    np.testing.assert_allclose([loss[0], loss[-1]], [start, end], rtol=1e-6)
    assert store.attrs["evaluation"]["frozen"]["lca_covers"] == "trainable"


def test_data_reads_a_datasets_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    from lca_cli.computation.datafiles import data_spec, load_data

    data = eval_file(str(tmp_path / "eval.safetensors"))
    columns = {k: v.tolist() for k, v in data.items()}
    datasets.Dataset.from_dict({**columns, "text": ["a"] * 4}).save_to_disk(str(tmp_path / "eval"))
    spec = data_spec(tmp_path / "eval")
    loaded = load_data(**spec.kwargs)
    assert sorted(loaded) == sorted(data)  # the text column is no model input
    for k, v in data.items():
        assert torch.equal(loaded[k], v)
    with pytest.raises(UsageError, match="no such file"):
        data_spec(tmp_path / "missing.safetensors")


def test_follow_with_data_waits_for_the_first_checkpoint_folder(tmp_path: Path) -> None:
    """``--follow --data`` started before a Trainer wrote anything: it waits for the first ``checkpoint-N/``.

    It used to wait for an ``lca.toml`` that a zero-glue run never writes, and failed at the idle timeout. The
    "trainer" here rotates as ``save_total_limit=2`` does: every pair is stored all the same.
    """
    import shutil
    import subprocess
    import sys
    import time

    import transformers

    run = tmp_path / "run"
    run.mkdir()
    eval_file(str(tmp_path / "eval.safetensors"))
    cmd = [sys.executable, "-m", "lca_cli", "compute", str(run), "--data", str(tmp_path / "eval.safetensors"),
           "--follow", "--until", "4", "--idle-timeout", "90"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # lca is waiting: no lca.toml and no checkpoint folder yet
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16)
        model = transformers.GPT2LMHeadModel(config)
        for step in range(5):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            model.save_pretrained(tmp_path / "partial")
            (tmp_path / "partial").rename(run / f"checkpoint-{step}")  # a folder appears whole, as Trainer's
            if step >= 2:
                shutil.rmtree(run / f"checkpoint-{step - 2}")  # rotation: the newest two are kept
            time.sleep(1.0)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    store = LcaStore.open(run / "lca.zarr")
    assert list(store.steps) == [0, 1, 2, 3, 4] and bool(np.asarray(store.array("train", "done")[:]).all())
    assert store.attrs["identity"]["loss"]["name"] == "model_loss" and not store.attrs.get("missing_pairs")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-3", "checkpoint-4", "lca.zarr"]  # staging gone
