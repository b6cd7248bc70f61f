"""Finding, ordering, reading and checking checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lca_cli.errors import CheckpointError, LcaError, RunDirError
from lca_cli.sources import CheckpointRef, check_state_dict, find_checkpoints, load_raw, read_checkpoint


def tensors(value: float = 0.0) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "b": torch.full((2,), value)}


def save(path: Path, value: float = 0.0, step: int | None = None) -> Path:
    save_file(tensors(value), str(path), metadata=None if step is None else {"step": str(step)})
    return path


def test_metadata_step_wins_over_file_name(tmp_path: Path) -> None:
    save(tmp_path / "a_9.safetensors", 0.0, step=1)
    save(tmp_path / "b_1.safetensors", 1.0, step=5)
    save(tmp_path / "c_3.safetensors", 2.0)  # no metadata: digits of the name
    refs = find_checkpoints(tmp_path)
    assert [(r.path.name, r.step) for r in refs] == [
        ("a_9.safetensors", 1),
        ("c_3.safetensors", 3),
        ("b_1.safetensors", 5),
    ]


def test_file_name_digits_are_numeric_and_last_run(tmp_path: Path) -> None:
    for name in ("ckpt10.safetensors", "ckpt9.safetensors", "run2_step_100.safetensors"):
        save(tmp_path / name)
    refs = find_checkpoints(tmp_path)
    assert [(r.path.name, r.step) for r in refs] == [
        ("ckpt9.safetensors", 9),
        ("ckpt10.safetensors", 10),
        ("run2_step_100.safetensors", 100),
    ]


def test_hidden_partial_and_other_files_are_ignored(tmp_path: Path) -> None:
    save(tmp_path / "step_00000001.safetensors", step=1)
    save(tmp_path / "step_00000002.safetensors", step=2)
    save(tmp_path / ".step_00000003.safetensors", step=3)  # hidden
    (tmp_path / ".step_00000004.safetensors.partial").write_bytes(b"half a file")  # a writer's temp file
    (tmp_path / "step_00000005.safetensors.partial").write_bytes(b"junk")
    (tmp_path / "lca.toml").write_text("[model]\n")
    (tmp_path / "notes_7.txt").write_text("hello")
    (tmp_path / "lca.zarr").mkdir()
    (tmp_path / "dir_8.safetensors").mkdir()  # a directory with a checkpoint-like name
    assert [r.step for r in find_checkpoints(tmp_path)] == [1, 2]


def test_empty_dir_gives_no_checkpoints(tmp_path: Path) -> None:
    assert find_checkpoints(tmp_path) == []


def test_duplicate_step_is_an_error(tmp_path: Path) -> None:
    save(tmp_path / "x_1.safetensors", step=4)
    save(tmp_path / "y_4.safetensors")
    with pytest.raises(CheckpointError, match="both hold step 4"):
        find_checkpoints(tmp_path)


def test_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        find_checkpoints(tmp_path / "nope")
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(RunDirError):
        find_checkpoints(file)
    # Builtin bases let callers catch them generically.
    assert issubclass(RunDirError, FileNotFoundError) and issubclass(RunDirError, LcaError)


def test_no_step_anywhere(tmp_path: Path) -> None:
    save(tmp_path / "final.safetensors")
    with pytest.raises(CheckpointError, match="no 'step' metadata and no digits"):
        find_checkpoints(tmp_path)


def test_non_integer_step_metadata(tmp_path: Path) -> None:
    save_file(tensors(), str(tmp_path / "s_1.safetensors"), metadata={"step": "one"})
    with pytest.raises(CheckpointError, match="not an integer"):
        find_checkpoints(tmp_path)


def test_corrupt_header_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = save(tmp_path / "step_1.safetensors", step=1)
    path.write_bytes(path.read_bytes()[:5])
    save(tmp_path / "step_2.safetensors", step=2)  # before the newest: an error (the newest is still being written)
    with pytest.raises(CheckpointError, match=r"step_1\.safetensors"):
        find_checkpoints(tmp_path)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_truncated_data_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = save(tmp_path / "step_1.safetensors", step=1)
    path.write_bytes(path.read_bytes()[:-4])  # header intact, data short
    with pytest.raises(CheckpointError, match=r"step_1\.safetensors"):
        read_checkpoint(CheckpointRef(path, 1))


def test_garbage_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "step_2.safetensors"
    path.write_bytes(b"\x00" * 3)
    save(tmp_path / "step_3.safetensors", step=3)
    with pytest.raises(CheckpointError):
        find_checkpoints(tmp_path)
    # Whole but damaged (a header that is no JSON, of the length it declares): an error even as the newest.
    path.write_bytes((4).to_bytes(8, "little") + b"{{{{")
    (tmp_path / "step_3.safetensors").unlink()
    with pytest.raises(CheckpointError):
        find_checkpoints(tmp_path)


def test_read_checkpoint_round_trip(tmp_path: Path) -> None:
    path = save(tmp_path / "step_3.safetensors", 1.5, step=3)
    (ref,) = find_checkpoints(tmp_path)
    assert ref == CheckpointRef(path, 3)
    state = read_checkpoint(ref)
    assert set(state) == {"w", "b"}
    assert torch.equal(state["w"], torch.full((2, 3), 1.5)) and state["w"].device.type == "cpu"
    assert read_checkpoint(path).keys() == state.keys()


def test_read_vanished_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "step_9.safetensors")


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "step_1.npz"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        read_checkpoint(path)


def test_torch_save_files(tmp_path: Path) -> None:
    torch.save(tensors(1.0), tmp_path / "step_1.pt")
    torch.save({"state_dict": tensors(2.0), "epoch": 3}, tmp_path / "step_2.pth")
    refs = find_checkpoints(tmp_path)
    assert [(r.path.name, r.step) for r in refs] == [("step_1.pt", 1), ("step_2.pth", 2)]
    assert torch.equal(read_checkpoint(refs[0])["w"], torch.full((2, 3), 1.0))
    assert torch.equal(read_checkpoint(refs[1])["b"], torch.full((2,), 2.0))


class Pickled:
    """Not loadable with weights_only=True."""

    def __init__(self) -> None:
        self.x = 1


def test_torch_file_needing_pickle_is_one_line_naming_unsafe_pickle(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1), "obj": Pickled()}, tmp_path / "step_1.pt")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path / "step_1.pt")
    msg = str(info.value)
    assert "\n" not in msg and "--unsafe-pickle" in msg and "Pickled" in msg
    assert "weights_only=False" not in msg  # torch's own advice would run the file's code by default
    # The opt-in loads it.
    assert load_raw(tmp_path / "step_1.pt", unsafe_pickle=True)["obj"].x == 1


def test_torch_non_tensor_values(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1), "lr": 0.1}, tmp_path / "step_1.pt")
    with pytest.raises(CheckpointError, match="flat name -> tensor"):
        read_checkpoint(tmp_path / "step_1.pt")
    torch.save([torch.zeros(1)], tmp_path / "step_2.pt")
    with pytest.raises(CheckpointError, match="flat name -> tensor"):
        read_checkpoint(tmp_path / "step_2.pt")


def test_torch_truncated(tmp_path: Path) -> None:
    path = tmp_path / "step_1.pt"
    torch.save(tensors(), path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_check_state_dict_accepts_a_match() -> None:
    check_state_dict(tensors(), {"w": (2, 3), "b": (2,)}, "ck")


def test_check_state_dict_lists_every_problem() -> None:
    state = {"w": torch.zeros(3, 2), "extra.weight": torch.zeros(1), "b": torch.zeros(2)}
    expected = {"w": (2, 3), "b": (2,), "missing.bias": (4,), "running_mean": (2,)}
    with pytest.raises(CheckpointError) as info:
        check_state_dict(state, expected, "run/step_1.safetensors")
    msg = str(info.value)
    assert "run/step_1.safetensors" in msg
    assert "missing: missing.bias, running_mean" in msg
    assert "unexpected: extra.weight" in msg
    assert "mis-shaped: w (3, 2) != model (2, 3)" in msg
    assert "\n" not in msg


def test_check_state_dict_truncates_long_lists() -> None:
    expected = {f"t{i}": (1,) for i in range(10)}
    with pytest.raises(CheckpointError, match=r"t0, t1, t2, t3, t4, t5 \(\+4 more\)"):
        check_state_dict({}, expected, "ck")


def test_a_dict_nesting_two_state_dicts_needs_a_key(tmp_path: Path) -> None:
    # `lca compute` reads the first checkpoint for --dtype auto with this function: the ambiguous file said
    # "expected a flat ... state_dict, found a dict", and --state-dict-key did not reach it.
    a, b = {"w": torch.zeros(2, dtype=torch.float64)}, {"w": torch.ones(2)}
    path = tmp_path / "step_1.pt"
    torch.save({"model": a, "state_dict": b, "step": 1}, path)
    with pytest.raises(
        CheckpointError, match="entries state_dict, model each hold a state_dict; pass --state-dict-key"
    ):
        read_checkpoint(path)
    assert torch.equal(read_checkpoint(path, state_dict_key="model")["w"], a["w"])
    with pytest.raises(CheckpointError, match="--state-dict-key 'ema' not found"):
        read_checkpoint(path, state_dict_key="ema")
