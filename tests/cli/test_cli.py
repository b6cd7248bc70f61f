"""The CLI contract: help, stdout vs stderr, exit codes, one-line errors, resume."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from runs import make_tiny_run
from safetensors.torch import load_file, save_file

from lca_cli.cli.app import main
from lca_cli.errors import EXIT_CODES
from lca_cli.store.lcastore import LcaStore


@pytest.fixture(scope="module")
def computed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_tiny_run(tmp_path_factory.mktemp("cli"), steps=12)
    with pytest.raises(SystemExit) as info:
        main(["compute", str(run), "--quiet"])
    assert info.value.code == 0
    return run


def assert_one_line_error(code: int, out: str, err: str, expected: str, *needles: str) -> None:
    assert code == EXIT_CODES[expected], (code, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("command", [[], ["compute"], ["summarize"], ["report"], ["verify"]])
def test_help_for_every_command(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, err = run_cli(capsys, *command, "--help")
    assert code == 0 and err == ""
    assert "Usage: lca" in out
    assert "Exit codes" in out
    # an example in every help, and no literal or raw backspace-b left from click's no-rewrap marker
    assert re.search(r"Examples:\n +lca \w+ ", out), out
    assert "\\b" not in out and "\b" not in out


def test_compute_options_documented(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(capsys, "compute", "--help")
    flags = ("--method", "--tolerance", "--rtol", "--max-splits", "--batch-size", "--device", "--out", "--config")
    for flag in (*flags, "--state-dict-key", "--unsafe-pickle"):
        assert flag in out
    for flag in ("--repair", "--progress", "--overwrite"):
        assert flag in out
    for flag in ("--steps", "--shard", "--cooperate", "--follow", "--until", "--idle-timeout", "--prune"):
        assert flag in out
    for flag in ("--granularity", "--params", "--dry-run", "torchrun"):
        assert flag in out


def test_help_states_every_exit_code_and_the_security_note(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(capsys, "compute", "--help")
    flat = " ".join(out.split())
    for code in EXIT_CODES.values():
        assert f" {code} " in f" {flat} ", code
    assert "a run folder is code" in flat and "without pickle" in flat and "--unsafe-pickle" in flat


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and "lca" in out


def test_compute_then_resume_stdout_is_clean(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=6)
    code, out, err = run_cli(capsys, "compute", run, "--quiet")
    assert code == 0 and out == "" and err == ""
    code, out, err = run_cli(capsys, "compute", run, "--json", "--quiet")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["computed"] == 0 and result["skipped"] == 6 and result["pairs"] == 6
    # The run scale the rows were held to (the default --l1-scope run), as the store recorded it.
    recorded = LcaStore.open(run / "lca.zarr").attrs["l1_scale"]
    assert result["settings"]["l1_scope"] == "run" and result["settings"]["l1_scale"] == recorded
    assert recorded["train"] > 0
    l1 = LcaStore.open(run / "lca.zarr").read("train", "l1_change")
    assert l1.shape == (6,) and np.isfinite(l1).all() and (l1 >= 0).all()


def test_compute_reports_progress_on_stderr(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=4)
    code, out, err = run_cli(capsys, "compute", run)
    assert code == 0 and out == ""
    assert "4 pair(s) computed" in err
    lines = err.strip().splitlines()  # stderr is not a terminal here: plain lines, start and end
    # --threads auto says once which count it chose (a note, before the run's survey: it runs at that count).
    assert [line for line in lines if line.startswith("Note: threads: ")] == lines[0:1]
    # A new store with fewer pairs than the run scale's survey says where its scale came from, and what to do.
    assert lines[1].startswith("Note: the run scale of --l1-tol (--l1-scope run) is measured over the 4 pair(s)")
    assert lines[1].endswith("pass --l1-scope pair to hold every pair to its own row")
    lines = lines[2:]
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d "  # each plain line starts with the local time
    assert re.match(stamp + re.escape("lca compute: 4 pair(s) to compute (0 already done)"), lines[0]), lines[0]
    assert re.match(stamp + re.escape("lca compute: 4/4 pairs (100%),"), lines[1]) and lines[1].endswith("finished")
    code, _, err = run_cli(capsys, "compute", run, "--progress", "none")
    assert code == 0 and err.strip().splitlines() == [err.strip()] and "0 pair(s) computed" in err


@pytest.mark.slow
def test_plain_progress_in_a_real_process_with_a_pipe_for_stderr(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    run = make_tiny_run(tmp_path, steps=5)
    done = subprocess.run(
        [sys.executable, "-m", "lca_cli", "compute", str(run), "--threads", "1"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("Note: the run scale of --l1-tol")  # 5 pairs: fewer than the scale's survey takes
    lines = lines[1:]
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d "
    assert re.fullmatch(stamp + r"lca compute: 5 pair\(s\) to compute \(0 already done\) into .*lca\.zarr on cpu; "
                        r"a progress line every 30s", lines[0]), lines[0]  # fmt: skip
    assert re.fullmatch(
        stamp + r"lca compute: 5/5 pairs \(100%\), [0-9.e+]+ pairs/s, [0-9.]+ gradients/pair, 0 flagged, elapsed \d+s, "
        r"finished",
        lines[1],
    ), lines[1]
    assert "5 pair(s) computed, 0 already done, 5 in total" in lines[2]


def test_summarize_json_sums_equal_direct_sums(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    store = LcaStore.open(computed_run / "lca.zarr")
    lca = np.asarray(store.array("train", "lca")[:], dtype=np.float64)
    layout = store.layout
    for by, groups in (
        ("tensor", [(p.name, [p]) for p in layout.params]),
        ("layer", [("fc1", layout.params[:2]), ("fc2", layout.params[2:])]),
    ):
        code, out, _ = run_cli(capsys, "summarize", computed_run / "lca.zarr", "--by", by, "--format", "json")
        assert code == 0
        rows = {r["name"]: r for r in json.loads(out)["rows"]}
        for name, params in groups:
            direct = sum(lca[:, p.offset : p.stop].sum() for p in params)
            # float32 storage vs float64 per-tensor sums: agreement to float32 rounding of each entry.
            assert rows[name]["lca"] == pytest.approx(direct, rel=1e-5, abs=1e-7)
            assert rows[name]["parameters"] == sum(p.numel for p in params)


def test_summarize_header_conserves(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    _code, out, _ = run_cli(capsys, "summarize", computed_run / "lca.zarr", "--format", "json")
    header = json.loads(out)["header"]
    _code, again, _ = run_cli(capsys, "summarize", computed_run / "lca.zarr", "--json")  # compute's spelling
    assert json.loads(again) == json.loads(out)
    code, _, err = run_cli(capsys, "summarize", computed_run / "lca.zarr", "--json", "--format", "csv")
    assert code == EXIT_CODES["usage"] and "--json is --format json" in err  # not silently one of the two
    assert header["iterations"] == 12
    assert header["sum_lca"] == pytest.approx(header["delta_loss"], rel=1e-3)
    assert 0.0 < header["helped_fraction_mean"] < 1.0


def test_summarize_does_not_import_torch(computed_run: Path) -> None:
    # Reading a store is for cron jobs and quick looks: importing torch (~2-3 s here) would triple the cost of
    # `lca summarize` on a small store. Checked in a fresh interpreter, every grouping.
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "from lca_cli.cli.app import main\n"
        "for by in ('layer', 'tensor', 'neuron', 'iteration'):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"        main(['summarize', {str(computed_run / 'lca.zarr')!r}, '--by', by])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_summarize_neuron_and_iteration(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    store = LcaStore.open(computed_run / "lca.zarr")
    lca = np.asarray(store.array("train", "lca")[:], dtype=np.float64)
    code, out, _ = run_cli(capsys, "summarize", computed_run / "lca.zarr", "--by", "neuron", "--format", "json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)["rows"]}
    assert len(rows) == 12 + 3  # fc1 has 12 output units, fc2 has 3
    w = store.layout.params[0]  # fc1.weight (12, 6), then fc1.bias (12,)
    b = store.layout.params[1]
    unit3 = lca[:, w.offset + 3 * 6 : w.offset + 4 * 6].sum() + lca[:, b.offset + 3].sum()
    assert rows["fc1[3]"]["lca"] == pytest.approx(unit3, rel=1e-5, abs=1e-8)
    assert rows["fc1[3]"]["parameters"] == 7
    _code, out, _ = run_cli(
        capsys, "summarize", computed_run / "lca.zarr", "--by", "iteration", "--steps", "2:5", "--format", "csv"
    )
    lines = out.strip().splitlines()
    assert lines[0].startswith("name,step,next_step,delta_loss,lca")
    assert [line.split(",")[1] for line in lines[1:]] == ["2", "3", "4"]


def test_summarize_top_and_sort(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    _code, out, _ = run_cli(
        capsys, "summarize", computed_run / "lca.zarr", "--by", "tensor", "--sort", "hurt", "--top", "2",
        "--format", "json",
    )  # fmt: skip
    rows = json.loads(out)["rows"]
    assert len(rows) == 2 and rows[0]["lca"] >= rows[1]["lca"]


def test_summarize_table_renders(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    code, out, err = run_cli(capsys, "summarize", computed_run / "lca.zarr")
    assert code == 0 and err == ""
    assert "fc1" in out and "fc2" in out and "helped fraction" in out
    assert "of all parameters: helped" in out and "h/0/h %" in out and "50/90% at" in out


@pytest.mark.parametrize("by", ["iteration", "layer", "neuron"])
def test_summarize_tables_fit_80_columns_with_numbers_whole(
    capsys: pytest.CaptureFixture[str], computed_run: Path, by: str
) -> None:
    code, out, _ = run_cli(capsys, "summarize", computed_run / "lca.zarr", "--by", by)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(computed_run / "lca.zarr")  # the store path: as long as it is
    assert max(len(line) for line in lines[1:]) <= 80, "\n".join(line for line in lines if len(line) > 80)
    assert "…" not in out
    if by == "iteration":
        _, js, _ = run_cli(capsys, "summarize", computed_run / "lca.zarr", "--by", by, "--format", "json")
        first = json.loads(js)["rows"][0]
        row = next(line for line in lines if line.split()[:1] == ["0"])
        assert f"{first['delta_loss']:.4g}" in row.split()  # the whole number, not a cut one


def test_summarize_run_dir_suggests_its_store(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    code, out, err = run_cli(capsys, "summarize", computed_run)
    assert_one_line_error(code, out, err, "store", "run directory", f"did you mean {computed_run / 'lca.zarr'}?")


def test_summarize_steps_past_the_end(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    code, out, err = run_cli(capsys, "summarize", computed_run / "lca.zarr", "--steps", "100:200")
    assert_one_line_error(code, out, err, "usage", "--steps 100:200", "start at steps 0..11")


# -- errors: one line, the right exit code, no traceback ---------------------------------------------------


def test_missing_run_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "lca.toml").write_text("")
    code, out, err = run_cli(capsys, "compute", tmp_path / "nope", "--config", tmp_path / "lca.toml")
    # An empty config is the first problem found.
    assert_one_line_error(code, out, err, "config")


def test_missing_run_dir_with_valid_config(
    capsys: pytest.CaptureFixture[str], computed_run: Path, tmp_path: Path
) -> None:
    code, out, err = run_cli(capsys, "compute", tmp_path / "nope", "--config", computed_run / "lca.toml")
    assert_one_line_error(code, out, err, "run_dir", "does not exist")


def test_mistyped_run_dir_without_config_is_a_run_dir_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Not "config file .../lca.toml not found" (exit 3): the run directory itself is what is missing.
    for extra in ([], ["--dry-run"]):
        code, out, err = run_cli(capsys, "compute", tmp_path / "nope", *extra)
        assert_one_line_error(code, out, err, "run_dir", f"run directory {tmp_path / 'nope'} does not exist")


def test_verify_of_a_run_dir_names_the_store_in_it(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    code, out, err = run_cli(capsys, "verify", computed_run)
    assert_one_line_error(code, out, err, "store", f"did you mean {computed_run / 'lca.zarr'}?")


def test_json_gets_an_object_on_failure_too(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A cron script parsing stdout gets one object whatever happened; the error line stays on stderr.
    code, out, err = run_cli(capsys, "compute", tmp_path / "nope", "--json")
    assert code == EXIT_CODES["run_dir"] and err.startswith("Error: run directory")
    assert json.loads(out) == {"error": {"exit_code": code, "message": err.strip().removeprefix("Error: ")}}
    code, out, err = run_cli(capsys, "verify", tmp_path, "--json")
    assert code == EXIT_CODES["store"] and json.loads(out)["error"]["exit_code"] == code


def test_verify_json_of_a_damaged_store_is_one_object_and_exit_6(
    capsys: pytest.CaptureFixture[str], computed_run: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s.zarr"
    shutil.copytree(computed_run / "lca.zarr", store)
    (store / "train" / "lca" / "c" / "0" / "0").unlink()
    code, out, err = run_cli(capsys, "verify", store, "--json")
    assert code == EXIT_CODES["store"] and json.loads(out)["ok"] is False  # the report, no second object
    assert err.startswith("Error: ") and "is damaged" in err


def test_single_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=1)
    (run / "step_00000001.safetensors").unlink()
    code, out, err = run_cli(capsys, "compute", run)
    assert_one_line_error(code, out, err, "run_dir", "1 checkpoint")


def test_truncated_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=3)
    path = run / "step_00000002.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    code, out, err = run_cli(capsys, "compute", run, "--quiet")
    assert_one_line_error(code, out, err, "checkpoint", "step_00000002")


def test_mismatched_tensors_are_listed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=3)
    path = run / "step_00000001.safetensors"
    state = load_file(str(path))
    del state["fc2.bias"]
    state["extra.weight"] = torch.zeros(2)
    state["fc1.weight"] = torch.zeros(3, 3)
    save_file(state, str(path), metadata={"step": "1"})
    code, out, err = run_cli(capsys, "compute", run, "--quiet")
    assert_one_line_error(code, out, err, "checkpoint", "missing: fc2.bias", "unexpected: extra.weight", "fc1.weight")


def test_unknown_config_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=2)
    text = (run / "lca.toml").read_text().replace("[loss]", "[loss]\nreduction = 'sum'")
    (run / "lca.toml").write_text(text)
    code, out, err = run_cli(capsys, "compute", run)
    assert_one_line_error(code, out, err, "config", "reduction", "[loss]")


def test_factory_cannot_be_imported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=2)
    text = (run / "lca.toml").read_text().replace("tinyfactories:model", "no_such_module_xyz:model")
    (run / "lca.toml").write_text(text)
    code, out, err = run_cli(capsys, "compute", run)
    assert_one_line_error(code, out, err, "config", "no_such_module_xyz")


def test_non_finite_loss(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=3)
    path = run / "step_00000002.safetensors"
    state = load_file(str(path))
    state["fc2.bias"] = torch.full_like(state["fc2.bias"], float("nan"))
    save_file(state, str(path), metadata={"step": "2"})
    code, out, err = run_cli(capsys, "compute", run, "--quiet")
    assert_one_line_error(code, out, err, "numerical", "nan")


def test_not_a_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_cli(capsys, "summarize", tmp_path)
    assert_one_line_error(code, out, err, "store", "not an lca store")
    code, out, err = run_cli(capsys, "summarize", tmp_path / "missing.zarr")
    assert_one_line_error(code, out, err, "store", "does not exist")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-splits", "3"], "--max-splits"),
        (["--tolerance", "-1"], "--tolerance"),
        (["--batch-size", "0"], "--batch-size"),
        (["--device", "tpu"], "--device"),
        (["--shard", "2/2"], "--shard"),
        (["--steps", "5:2"], "--steps"),
        (["--until", "5"], "--until"),
        (["--follow", "--shard", "0/2"], "--follow"),
        (["--follow", "--idle-timeout", "0"], "--idle-timeout"),
        (["--params", "nothing.*"], "--params"),
        (["--granularity", "tensor", "--params", "fc1.*"], "--params"),
    ],
)
def test_bad_option_values(
    capsys: pytest.CaptureFixture[str], computed_run: Path, args: list[str], needle: str
) -> None:
    code, out, err = run_cli(capsys, "compute", computed_run, *args)
    assert_one_line_error(code, out, err, "usage", needle)


def test_bad_choice_is_a_usage_error(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    code, out, err = run_cli(capsys, "summarize", computed_run / "lca.zarr", "--by", "planet")
    assert code == EXIT_CODES["usage"] and out == "" and "Traceback" not in err


def test_bad_steps_window(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    code, out, err = run_cli(capsys, "summarize", computed_run / "lca.zarr", "--steps", "5:2")
    assert_one_line_error(code, out, err, "usage", "--steps 5:2", "A <= s < B", "did you mean --steps 2:5?")


def test_report_one_store_and_a_comparison(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    pytest.importorskip("matplotlib")
    out_dir = computed_run.parent / "reports"
    code, out, err = run_cli(
        capsys, "report", computed_run / "lca.zarr", "--out", out_dir / "one.html", "--view", "layers", "-q"
    )
    assert code == 0 and out.strip() == str(out_dir / "one.html") and err == ""
    assert len(list((out_dir / "one_files").glob("*.png"))) == 1
    # The page says what the rows were held to: the default per-run target, with the store's recorded scale.
    scale = LcaStore.open(computed_run / "lca.zarr").attrs["l1_scale"]["train"]
    page = (out_dir / "one.html").read_text(encoding="utf-8")
    assert f"local refinement to l1_tol 0.001 of max(row L1 norm, run scale {scale:.3g})" in page
    code, out, err = run_cli(
        capsys, "report", computed_run / "lca.zarr", computed_run / "lca.zarr", "--out", out_dir / "cmp.html",
        "--label", "a", "--label", "b", "-q",
    )  # fmt: skip
    assert code == 0 and out.strip() == str(out_dir / "cmp.html")
    assert "All 2 layers match by name." in (out_dir / "cmp.html").read_text(encoding="utf-8")
    code, out, err = run_cli(capsys, "report", computed_run / "lca.zarr", "--out", out_dir / "x.html", "--label", "a",
                             "--label", "b")  # fmt: skip
    assert_one_line_error(code, out, err, "usage", "--label")
    code, out, err = run_cli(capsys, "report", *[computed_run / "lca.zarr"] * 3, "--out", out_dir / "x.html")
    assert_one_line_error(code, out, err, "usage", "one store, or two")
    code, out, err = run_cli(capsys, "report", computed_run / "lca.zarr", "--out", out_dir / "x.html", "--view", "pie")
    assert_one_line_error(code, out, err, "usage", "--view pie")


def test_unknown_set(capsys: pytest.CaptureFixture[str], computed_run: Path) -> None:
    code, out, err = run_cli(capsys, "summarize", computed_run / "lca.zarr", "--set", "val")
    assert_one_line_error(code, out, err, "usage", "--set val", "no such evaluation set (sets: train)")


def test_store_from_another_config_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=3)
    assert run_cli(capsys, "compute", run, "--quiet")[0] == 0
    code, out, err = run_cli(capsys, "compute", run, "--quiet", "--max-splits", "4")
    assert_one_line_error(code, out, err, "store", "--overwrite")
    code, out, err = run_cli(capsys, "compute", run, "--quiet", "--max-splits", "4", "--overwrite")
    assert code == 0


def _store_without_setting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], setting: str
) -> tuple[Path, LcaStore, object]:
    """A store of 4 pairs made with ``flags`` whose identity lacks ``setting``, as a version before the setting
    wrote it, with the run's 2 later checkpoints arriving after it: ``(run, store, the removed value)``."""
    run = make_tiny_run(tmp_path, steps=6)
    stash = tmp_path / "later"
    stash.mkdir()
    for step in (5, 6):
        shutil.move(run / f"step_{step:08d}.safetensors", stash)
    assert run_cli(capsys, "compute", run, "--quiet", *flags)[0] == 0
    store = LcaStore.open(run / "lca.zarr", mode="r+")
    identity = store.attrs["identity"]
    removed = identity["compute"].pop(setting)
    store.update_attrs({"identity": identity})
    for f in stash.iterdir():
        shutil.move(f, run / f.name)
    return run, store, removed


def test_a_setting_changed_from_its_default_names_the_flag_that_keeps_the_store(
    capsys: pytest.CaptureFixture[str], computed_run: Path, tmp_path: Path
) -> None:
    # Only settings the store's scheme implies differ (the defaults, changed by this call): the hint named no flag.
    store = tmp_path / "s.zarr"
    shutil.copytree(computed_run / "lca.zarr", store)
    code, out, err = run_cli(capsys, "compute", computed_run, "--out", store, "--quiet", "--max-splits", "2")
    assert_one_line_error(code, out, err, "store", "max_splits 32 (this call: 2)", "--max-splits 32")
    assert "pass ;" not in err


def test_out_naming_a_file(capsys: pytest.CaptureFixture[str], computed_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    target.write_text("keep me")
    for extra in ([], ["--overwrite"]):
        code, out, err = run_cli(capsys, "compute", computed_run, "--out", target, "--quiet", *extra)
        assert_one_line_error(code, out, err, "store", "is a file", "folder")
    assert target.read_text() == "keep me"


def test_overwrite_never_deletes_what_lca_did_not_create(
    capsys: pytest.CaptureFixture[str], computed_run: Path, tmp_path: Path
) -> None:
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "main.tex").write_text("years of work")
    code, out, err = run_cli(capsys, "compute", computed_run, "--out", thesis, "--quiet")
    assert_one_line_error(code, out, err, "store", "not an lca store", "main.tex", "another --out")
    assert "add --overwrite" not in err and "pass --overwrite" not in err  # no advice to destroy it
    code, out, err = run_cli(capsys, "compute", computed_run, "--out", thesis, "--quiet", "--overwrite")
    assert_one_line_error(code, out, err, "store", "nothing was deleted")
    assert (thesis / "main.tex").read_text() == "years of work"
    # The run folder itself as --out: its checkpoints and lca.toml stay.
    before = sorted(p.name for p in computed_run.iterdir())
    code, out, err = run_cli(capsys, "compute", computed_run, "--out", computed_run, "--quiet", "--overwrite")
    assert_one_line_error(code, out, err, "store", "nothing was deleted")
    assert sorted(p.name for p in computed_run.iterdir()) == before


def test_store_busy_is_exit_9_at_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import os

    from lca_cli.store.claims import Lease, store_lock_path

    run = make_tiny_run(tmp_path, steps=3)
    with Lease.acquire(store_lock_path(run / "lca.zarr"), "held"):
        code, out, err = run_cli(capsys, "compute", run, "--quiet")
        assert_one_line_error(code, out, err, "busy", "in use by lca compute", f"pid {os.getpid()}")
        assert not (run / "lca.zarr").exists()
    assert run_cli(capsys, "compute", run, "--quiet")[0] == 0  # released: computes


def test_failed_overwrite_keeps_the_old_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from faults import tree

    run = make_tiny_run(tmp_path, steps=4)
    assert run_cli(capsys, "compute", run, "--quiet")[0] == 0
    before = tree(run / "lca.zarr", skip_root_attrs=())
    path = run / "step_00000001.safetensors"
    state = load_file(str(path))
    state["fc2.bias"] = torch.full_like(state["fc2.bias"], float("nan"))
    save_file(state, str(path), metadata={"step": "1"})  # the very first pair now fails
    code, out, err = run_cli(capsys, "compute", run, "--quiet", "--overwrite", "--max-splits", "4")
    assert_one_line_error(code, out, err, "numerical")
    assert tree(run / "lca.zarr", skip_root_attrs=()) == before  # the new store never got a row: old one kept
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no sibling, no lock left


def test_half_created_store_is_recreated_without_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import zarr

    run = make_tiny_run(tmp_path, steps=3)
    half = zarr.open_group(str(run / "lca.zarr"), mode="w", zarr_format=3)  # an older lca killed here
    half.create_array("steps", shape=(4,), dtype="int64")
    code, _, err = run_cli(capsys, "compute", run, "--quiet")
    assert code == 0, err
    assert LcaStore.open(run / "lca.zarr").done().all()


def test_strict_exit_code_when_flagged(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=3)
    # Euler never meets a zero tolerance: every pair is flagged, and --strict turns that into exit 8.
    code, _out, err = run_cli(
        capsys, "compute", run, "--quiet", "--method", "euler", "--tolerance", "0", "--rtol", "0", "--strict"
    )
    assert code == EXIT_CODES["tolerance"]
    warning = next(line for line in err.splitlines() if line.startswith("Warning: "))
    assert "3 pair(s) over tolerance (3 computed now" in warning
    # The warning puts the worst residual on the run's scale and names a setting that would fix it.
    assert "the run's mean |ΔL| per pair" in warning and "--tolerance" in warning
    assert (
        err.strip().splitlines()[-1] == "Error: pairs computed by this call over tolerance (--strict): 3 of set train"
    )


def test_strict_judges_only_this_calls_pairs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=4)
    flags = ["--quiet", "--json", "--method", "euler", "--tolerance", "0", "--rtol", "0", "--l1-tol", "0"]
    code, out, _ = run_cli(capsys, "compute", run, *flags, "--strict")
    assert code == EXIT_CODES["tolerance"]  # Euler misses a zero tolerance on every pair that moves
    first = json.loads(out)
    assert first["flagged"] == first["flagged_new"] == {"train": [0, 1, 2, 3]}
    # Training stops moving: four more checkpoints equal to the last one. Their pairs conserve exactly.
    last = load_file(str(run / "step_00000004.safetensors"))
    for step in range(5, 9):
        save_file(last, str(run / f"step_{step:08d}.safetensors"), metadata={"step": str(step)})
    code, out, err = run_cli(capsys, "compute", run, *flags, "--strict")
    assert code == 0, err  # the new pairs pass; the old flags are reported, not judged again
    second = json.loads(out)
    assert second["computed"] == 4 and second["flagged_new"] == {"train": []}
    assert second["flagged"] == first["flagged"]  # the JSON keeps the cumulative list ...
    acc = second["accuracy"]["train"]
    assert acc["flagged_count"] == 4 and acc["flagged_new_count"] == 0 and not acc["lists_cut"]  # ... whole
    assert "Warning: set train: 4 pair(s) over tolerance (0 computed now" in err


def test_append_new_checkpoints(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    full = make_tiny_run(tmp_path, steps=8, name="full")
    part = tmp_path / "part"
    part.mkdir()
    for f in full.iterdir():
        if f.suffix != ".safetensors" or int(f.stem.split("_")[1]) <= 4:
            shutil.copy(f, part / f.name)
    assert run_cli(capsys, "compute", part, "--quiet")[0] == 0
    for f in full.glob("*.safetensors"):
        shutil.copy(f, part / f.name)
    _code, out, _ = run_cli(capsys, "compute", part, "--quiet", "--json")
    assert json.loads(out)["computed"] == 4
    assert run_cli(capsys, "compute", full, "--quiet")[0] == 0
    a = LcaStore.open(part / "lca.zarr")
    b = LcaStore.open(full / "lca.zarr")
    np.testing.assert_array_equal(a.array("train", "lca")[:], b.array("train", "lca")[:])
    np.testing.assert_array_equal(a.steps, b.steps)


def test_torch_checkpoint_needing_pickle_is_refused_then_read_with_unsafe_pickle(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from argparse import Namespace

    run = make_tiny_run(tmp_path, steps=2)
    for path in sorted(run.glob("step_*.safetensors")):
        # A checkpoint dict with a pickled object beside the weights (Lightning hparams, argparse args...).
        torch.save({"state_dict": load_file(str(path)), "args": Namespace(lr=0.1)}, path.with_suffix(".pt"))
        path.unlink()
    code, out, err = run_cli(capsys, "compute", run, "--quiet")
    assert_one_line_error(code, out, err, "checkpoint", "--unsafe-pickle", "argparse.Namespace")
    assert "weights_only=False" not in err
    code, out, err = run_cli(capsys, "compute", run, "--quiet", "--unsafe-pickle", "--threads", "1")
    assert code == 0, err


def test_integer_tensor_for_a_float_parameter_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=2)
    path = run / "step_00000001.safetensors"
    state = load_file(str(path))
    state["fc1.weight"] = (state["fc1.weight"] * 10).to(torch.int64)  # would be truncated if cast silently
    save_file(state, str(path), metadata={"step": "1"})
    code, out, err = run_cli(capsys, "compute", run, "--quiet")
    assert_one_line_error(code, out, err, "checkpoint", "fc1.weight is int64", "never cast")


def test_trainer_folders_without_a_model_file_are_listed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=1)
    for path in run.glob("step_*.safetensors"):
        path.unlink()
    (run / "checkpoint-1").mkdir()
    (run / "checkpoint-1" / "trainer_state.json").write_text("{}")
    code, out, err = run_cli(capsys, "compute", run)
    assert_one_line_error(code, out, err, "run_dir", "0 checkpoint(s)", "checkpoint-1/", ".py x1", "checkpoint-N/")
