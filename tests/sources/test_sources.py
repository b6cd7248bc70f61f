"""Checkpoint sources: every layout real training code writes gives, bit for bit, the rows of flat safetensors.

Each layout is written from the same weights as a flat ``step_N.safetensors`` run (:func:`runs.make_tiny_run`);
``lca compute`` on it must find the checkpoints with the right steps and store exactly the same numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from runs import make_tiny_run
from safetensors.torch import load_file, save_file

from lca_cli.computation.config import load_config
from lca_cli.computation.runner import compute
from lca_cli.errors import CheckpointError, RunDirError
from lca_cli.sources import CheckpointRef, ModelSpec, describe_folder, find_checkpoints
from lca_cli.sources.keys import to_model_state
from lca_cli.store.lcastore import LcaStore

STEPS = 4


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, torch.Tensor]], np.ndarray]:
    """A flat safetensors run, its states in step order, and its computed ``lca`` rows."""
    run = make_tiny_run(tmp_path_factory.mktemp("flat"), steps=STEPS)
    states = [load_file(str(run / f"step_{s:08d}.safetensors")) for s in range(STEPS + 1)]
    return run, states, lca_rows(run)


def lca_rows(run: Path, **compute_kwargs: object) -> np.ndarray:
    config = load_config(run / "lca.toml").with_overrides(threads=1)
    result = compute(run, config, run / "lca.zarr", **compute_kwargs)  # type: ignore[arg-type]
    store = LcaStore.open(result.store)
    assert store.done().all()
    residual = store.read("train", "residual")
    loss = store.read("train", "loss")
    assert np.abs(residual).max() <= 1e-9 + 1e-4 * np.abs(np.diff(loss)).max()  # conserves
    return np.asarray(store.array("train", "lca")[:])


def new_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("lca.toml", "tinyfactories.py"):
        shutil.copy2(src / name, dst / name)
    return dst


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def write_layout(layout: str, run: Path, states: list[dict[str, torch.Tensor]]) -> list[int]:
    """Write ``states`` in ``layout`` into ``run``; returns the steps lca must find."""
    steps = list(range(len(states)))
    for s, state in zip(steps, states, strict=True):
        if layout == "pt":
            torch.save(state, run / f"iter{s}.pt")
        elif layout == "tutorial_dict":
            torch.save(
                {"epoch": 0, "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}},
                run / f"ckpt_{s}.pth",
            )
        elif layout == "model_key_bin":
            torch.save({"model": state, "step": s}, run / f"weights-{s}.bin")
        elif layout == "ddp":
            torch.save(prefixed(state, "module."), run / f"step_{s}.pt")
        elif layout == "compile":
            save_file(prefixed(state, "_orig_mod."), str(run / f"s{s}.safetensors"))
        elif layout == "lightning_ckpt":
            # Lightning's layout: the record holds global_step; the name's last digits (v1) are not the step.
            ckpt = {"epoch": 0, "global_step": s, "state_dict": prefixed(state, "model."), "loops": {}}
            torch.save(ckpt, run / f"epoch=0-step={s}-v1.ckpt")
        elif layout == "hf_trainer":
            folder = run / f"checkpoint-{s}"
            folder.mkdir()
            save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": s}))
            torch.save({"lr": 0.1}, folder / "optimizer.pt")
            (folder / "config.json").write_text("{}")
        elif layout == "hf_bin":
            folder = run / f"checkpoint-{s}"
            folder.mkdir()
            torch.save(state, folder / "pytorch_model.bin")
            torch.save({"step": 3}, folder / "training_args.bin")
        elif layout == "sharded":
            folder = run / f"step_{s}"
            folder.mkdir()
            names = sorted(state)
            half = len(names) // 2
            parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
            weight_map = {}
            for file, keys in parts.items():
                save_file({k: state[k] for k in keys}, str(folder / file))
                weight_map.update(dict.fromkeys(keys, file))
            (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        elif layout == "accelerate":
            folder = run / "checkpoints" / f"checkpoint_{s}"
            folder.mkdir(parents=True)
            save_file(state, str(folder / "model.safetensors"))
            torch.save({"state": {}}, folder / "optimizer.bin")
            torch.save({"x": torch.zeros(1)}, folder / "random_states_0.pkl")
        elif layout == "lightning_logs":
            folder = run / "lightning_logs" / "version_0" / "checkpoints"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"global_step": s, "state_dict": prefixed(state, "model.")}, folder / f"epoch=0-step={s}.ckpt")
        else:
            raise AssertionError(layout)
    if layout == "hf_trainer":
        save_file(states[-1], str(run / "model.safetensors"))  # the Trainer's final save_model(): no step
    if layout == "lightning_logs":
        last = run / "lightning_logs" / "version_0" / "checkpoints"
        shutil.copy2(last / f"epoch=0-step={steps[-1]}.ckpt", last / "last.ckpt")  # save_last=True
    return steps


LAYOUTS = [
    "pt",
    "tutorial_dict",
    "model_key_bin",
    "ddp",
    "compile",
    "lightning_ckpt",
    "hf_trainer",
    "hf_bin",
    "sharded",
    "accelerate",
    "lightning_logs",
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_rows_equal_flat_safetensors_bit_for_bit(layout: str, flat, tmp_path: Path) -> None:
    src, states, expected = flat
    run = new_run(src, tmp_path / layout)
    steps = write_layout(layout, run, states)
    notes: list[str] = []
    assert [r.step for r in find_checkpoints(run, notes=notes)] == steps
    said: list[str] = []
    rows = lca_rows(run, note=said.append)
    assert rows.dtype == np.float32 and np.array_equal(rows, expected)
    assert len(said) == len(set(said))  # each note once, not per checkpoint
    if layout in ("ddp", "compile", "lightning_ckpt"):
        assert any("prefix" in n for n in said), said


def test_tutorial_dict_note_names_the_entry(flat, tmp_path: Path) -> None:
    src, states, _ = flat
    run = new_run(src, tmp_path / "run")
    write_layout("tutorial_dict", run, states)
    said: list[str] = []
    lca_rows(run, note=said.append)
    said = [n for n in said if not n.startswith("the run scale")]  # a 4-pair run: fewer than the scale's survey
    assert said == ["using the checkpoints' 'model_state_dict' entry as the model's state_dict"]


# -- keys: nested entries, prefixes, aliases, dtypes --------------------------------------------------------


SPEC = ModelSpec({"fc.weight": (2, 3), "fc.bias": (2,)}, frozenset({"fc.weight", "fc.bias"}))


def state(value: float = 0.0) -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.full((2, 3), value), "fc.bias": torch.full((2,), value)}


def test_a_run_of_ambiguous_dicts_computes_with_state_dict_key(flat, tmp_path: Path) -> None:
    # Both entries fit the model: refused in one line naming both, and --state-dict-key (which --dtype auto's
    # read of the first checkpoint ignored) chooses one; the rows are the flat run's.
    src, states, ref = flat
    run = new_run(src, tmp_path / "run")
    for s, state in enumerate(states):
        torch.save({"model": state, "state_dict": {k: v + 1 for k, v in state.items()}, "step": s}, run / f"c{s}.pt")
    with pytest.raises(CheckpointError, match="entries state_dict, model each hold a state_dict"):
        lca_rows(run)
    config = load_config(run / "lca.toml").with_overrides(threads=1, state_dict_key="model")
    compute(run, config, run / "lca.zarr")
    assert np.array_equal(np.asarray(LcaStore.open(run / "lca.zarr").array("train", "lca")[:]), ref)


def test_two_fitting_entries_need_state_dict_key() -> None:
    obj = {"model": state(1.0), "module": state(2.0), "epoch": 3}
    with pytest.raises(CheckpointError, match="model, module each fit the model; pass --state-dict-key"):
        to_model_state(obj, SPEC, "ck")
    out, _ = to_model_state(obj, SPEC, "ck", state_dict_key="module")
    assert torch.equal(out["fc.bias"], torch.full((2,), 2.0))
    deeper = {"ema": {"shadow": prefixed(state(3.0), "module.")}}
    out, notes = to_model_state(deeper, SPEC, "ck", state_dict_key="ema/shadow")
    assert torch.equal(out["fc.weight"], torch.full((2, 3), 3.0)) and "module." in notes[0]
    with pytest.raises(CheckpointError, match="--state-dict-key 'nope' not found"):
        to_model_state(obj, SPEC, "ck", state_dict_key="nope")


def test_nothing_fitting_lists_the_keys_found() -> None:
    obj = {"weights": state(), "epoch": 1, "optimizer": {"state": {}}}
    with pytest.raises(CheckpointError) as info:
        to_model_state(obj, SPEC, "run/ck.pt")
    msg = str(info.value)
    assert "weights (dict of 2, 2 tensors)" in msg and "epoch (int)" in msg and "--state-dict-key" in msg
    assert "\n" not in msg


def test_a_lightning_module_with_other_submodules_uses_the_model_subtree() -> None:
    obj = {**prefixed(state(1.0), "model."), "loss_fn.weight": torch.ones(3)}
    out, notes = to_model_state(obj, SPEC, "ck")
    assert set(out) == {"fc.weight", "fc.bias"}
    assert "ignored 1 tensor(s) outside it" in notes[0]


def test_two_fitting_subtrees_are_refused_not_guessed() -> None:
    obj = {**prefixed(state(1.0), "student."), **prefixed(state(2.0), "teacher.")}
    with pytest.raises(CheckpointError, match=r"'student\.', 'teacher\.' each fit the model"):
        to_model_state(obj, SPEC, "ck")


def test_integer_tensor_for_a_float_parameter_is_refused_never_cast() -> None:
    bad = state()
    bad["fc.weight"] = torch.ones(2, 3, dtype=torch.int64)
    with pytest.raises(CheckpointError, match=r"wrong dtype \(never cast\): fc.weight is int64"):
        to_model_state(bad, SPEC, "ck")


def test_misfit_still_lists_missing_and_unexpected() -> None:
    with pytest.raises(CheckpointError, match=r"missing: fc\.bias; unexpected: other"):
        to_model_state({"fc.weight": torch.zeros(2, 3), "other": torch.zeros(1)}, SPEC, "ck")


TIED = ModelSpec(
    {"emb.weight": (4, 2), "head.weight": (4, 2), "head.bias": (4,)},
    frozenset({"emb.weight", "head.weight", "head.bias"}),
    {"head.weight": "emb.weight"},
)


@pytest.mark.parametrize("present", [("emb.weight",), ("emb.weight", "head.weight"), ("head.weight",)])
def test_tied_alias_present_or_absent_gives_the_owner_only(present: tuple[str, ...]) -> None:
    w = torch.arange(8.0).reshape(4, 2)
    obj = {name: w.clone() for name in present} | {"head.bias": torch.zeros(4)}
    out, _ = to_model_state(obj, TIED, "ck")
    assert set(out) == {"emb.weight", "head.bias"} and torch.equal(out["emb.weight"], w)


def test_tied_alias_that_differs_is_refused() -> None:
    obj = {"emb.weight": torch.zeros(4, 2), "head.weight": torch.ones(4, 2), "head.bias": torch.zeros(4)}
    with pytest.raises(CheckpointError, match="one tied tensor in the model but differ"):
        to_model_state(obj, TIED, "ck")


# -- discovery: steps, duplicates, what is said when nothing is found ---------------------------------------


def test_nothing_found_lists_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "notes.txt").write_text("x")
    (tmp_path / "logs").mkdir()
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").write_text("{}")
    assert find_checkpoints(tmp_path) == []
    text = describe_folder(tmp_path)
    assert "checkpoint-5/" in text and "logs/" in text and ".json x2" in text


def test_several_subfolders_with_checkpoints_is_an_error_naming_them(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        for s in (0, 1):
            save_file(state(), str(tmp_path / sub / f"step_{s}.safetensors"))
    with pytest.raises(RunDirError, match=r"several folders hold checkpoints .*a, b"):
        find_checkpoints(tmp_path)
    assert [r.step for r in find_checkpoints(tmp_path / "a")] == [0, 1]


def test_flat_save_pretrained_dir_is_refused_with_what_to_do(tmp_path: Path) -> None:
    save_file(state(), str(tmp_path / "model-00001-of-00001.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"fc.weight": "model-00001-of-00001.safetensors"}})
    )
    with pytest.raises(
        CheckpointError, match=r"one sharded save_pretrained checkpoint; .*\(checkpoint-N/ or step_N/\)"
    ):
        find_checkpoints(tmp_path)


def test_shard_index_naming_a_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "step_1"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"gone\.safetensors"):
        find_checkpoints(tmp_path)


def test_same_step_twice_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-3").mkdir()
    save_file(state(), str(tmp_path / "checkpoint-3" / "model.safetensors"))
    save_file(state(), str(tmp_path / "x_3.safetensors"))
    with pytest.raises(CheckpointError, match="both hold step 3"):
        find_checkpoints(tmp_path)


def test_torch_file_step_from_its_record_when_the_name_has_none(tmp_path: Path) -> None:
    torch.save({"global_step": 7, "state_dict": state()}, tmp_path / "latest.pt")
    torch.save({"step": 2, "model": state()}, tmp_path / "first.pth")
    assert [(r.path.name, r.step) for r in find_checkpoints(tmp_path)] == [("first.pth", 2), ("latest.pt", 7)]


def test_ckpt_needing_pickle_names_unsafe_pickle_and_the_flag_reads_it(tmp_path: Path) -> None:
    from argparse import Namespace

    torch.save({"global_step": 1, "state_dict": state(), "hparams": Namespace(a=1)}, tmp_path / "e.ckpt")
    with pytest.raises(CheckpointError, match="--unsafe-pickle"):
        find_checkpoints(tmp_path)
    assert find_checkpoints(tmp_path, unsafe_pickle=True) == [CheckpointRef(tmp_path / "e.ckpt", 1)]


def test_missing_step_zero_and_stripped_prefix_are_said_once(flat, tmp_path: Path) -> None:
    src, states, expected = flat
    run = new_run(src, tmp_path / "run")
    for s, st in enumerate(states[1:], start=1):
        torch.save(prefixed(st, "module."), run / f"step_{s}.pt")
    said: list[str] = []
    rows = lca_rows(run, note=said.append)
    assert np.array_equal(rows, expected[1:])
    assert sum("first checkpoint is step 1" in n for n in said) == 1
    assert sum("'module.'" in n for n in said) == 1


# -- tied parameters end to end -------------------------------------------------------------------------------

TIED_FACTORIES = """
import torch

class TinyLM(torch.nn.Module):
    def __init__(self, vocab=11, dim=4):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, vocab)
        self.head.weight = self.emb.weight  # GPT-2 style tie: one tensor, two names

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.emb(ids))))

def model():
    torch.manual_seed(0)
    return TinyLM()

def data(n=64):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 11, (n,), generator=g)
    return ids, (ids * 3 + 1) % 11
"""


def tied_run(root: Path, save: str) -> Path:
    from lca_cli.training.record import CheckpointWriter, write_run_config

    run = root / save
    (run / "ck").mkdir(parents=True)
    (run / "tiedfactories.py").write_text(TIED_FACTORIES)
    ns: dict[str, object] = {}
    exec(compile(TIED_FACTORIES, "tiedfactories", "exec"), ns)
    net = ns["model"]()  # type: ignore[operator]
    x, y = ns["data"]()  # type: ignore[operator]
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    writer = CheckpointWriter(run / "ck", background=False) if save == "writer" else None
    for step in range(4):
        if step:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        if writer is not None:
            writer.save(net, step)
        elif save == "torch_save":  # both names, one storage
            torch.save(net.state_dict(), run / "ck" / f"step_{step}.pt")
        else:  # save_model style: the alias omitted
            sd = {k: v.contiguous() for k, v in net.state_dict().items() if k != "head.weight"}
            save_file(sd, str(run / "ck" / f"step_{step}.safetensors"))
    write_run_config(run / "ck", model="tiedfactories:model", data="tiedfactories:data", loss="cross_entropy")
    shutil.move(str(run / "tiedfactories.py"), str(run / "ck" / "tiedfactories.py"))
    return run / "ck"


def test_tied_weights_every_save_style_gives_the_same_conserving_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = {}
    for save in ("writer", "torch_save", "omitted"):
        run = tied_run(tmp_path, save)
        if save == "writer":  # the writer saves a shared tensor once, under the name named_parameters() keeps
            assert "head.weight" not in load_file(str(run / "step_00000000.safetensors"))
        rows[save] = lca_rows(run)
        store = LcaStore.open(run / "lca.zarr")
        assert store.attrs["tied"] == {"head.weight": "emb.weight"}
        assert [p.name for p in store.layout.params] == ["emb.weight", "mix.weight", "mix.bias", "head.bias"]
    assert np.array_equal(rows["writer"], rows["torch_save"]) and np.array_equal(rows["writer"], rows["omitted"])
    # Summaries say that the shared tensor's allocation is listed under its owner.
    from lca_cli.cli.app import main

    for fmt in ("json", "table"):
        with pytest.raises(SystemExit):
            main(["summarize", str(run / "lca.zarr"), "--by", "tensor", "--format", fmt])
        out = capsys.readouterr().out
        if fmt == "json":
            assert json.loads(out)["header"]["tied"] == {"head.weight": "emb.weight"}
        else:
            text = " ".join(out.split())  # rich wraps long lines to the terminal's width
            assert "tied parameters" in text and "head.weight = emb.weight" in text
