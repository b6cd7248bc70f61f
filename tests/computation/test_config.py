"""Config parsing, strict validation, overrides and factory import."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path

import pytest

from lca_cli.computation.config import ComputeOptions, FactorySpec, import_factory, load_config, parse_config
from lca_cli.errors import ConfigError, UsageError

MINIMAL = {"model": {"factory": "pkg.mod:build"}, "data": {"factory": "pkg.data:load"}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lca.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_config_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.model == FactorySpec("pkg.mod:build", {})
    assert dict(cfg.data) == {"train": FactorySpec("pkg.data:load", {})}
    assert cfg.loss_name == "cross_entropy" and cfg.loss_factory is None
    assert cfg.compute == ComputeOptions()
    assert cfg.base_dir is None
    assert cfg.compute.method == "rk4" and cfg.compute.max_splits == 32 and cfg.compute.dtype == "auto"


def test_load_config_full(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [model]
        factory = "my_pkg.models:build"
        kwargs = { hidden = 100, widths = [3, 4], name = "x" }

        [data.train]
        factory = "my_pkg.data:eval_set"
        kwargs = { split = "train" }

        [data.val]
        factory = "my_pkg.data:eval_set"
        kwargs = { split = "val" }

        [loss]
        name = "mse"

        [compute]
        method = "euler"
        tolerance = 1e-5
        max_splits = 8
        batch_size = 64
        dtype = "float64"

        [train]
        lr = 0.1
        """,
    )
    cfg = load_config(path)
    assert cfg.base_dir == tmp_path.resolve()
    assert cfg.model.kwargs == {"hidden": 100, "widths": [3, 4], "name": "x"}
    assert list(cfg.data) == ["train", "val"]
    assert cfg.data["val"].kwargs == {"split": "val"}
    assert cfg.loss_name == "mse"
    assert cfg.compute.method == "euler" and cfg.compute.tolerance == 1e-5 and cfg.compute.max_splits == 8
    assert cfg.compute.batch_size == 64 and cfg.compute.dtype == "float64"
    assert cfg.train == {"lr": 0.1}
    ident = cfg.identity()
    assert ident["data"]["val"] == {"factory": "my_pkg.data:eval_set", "kwargs": {"split": "val"}}
    assert ident["loss"] == {"name": "mse", "factory": None}
    assert ident["compute"]["method"] == "euler"


def test_single_data_table_is_the_train_set() -> None:
    cfg = parse_config({**MINIMAL, "data": {"factory": "a:b", "kwargs": {"n": 3}}})
    assert list(cfg.data) == ["train"] and cfg.data["train"].kwargs == {"n": 3}


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({**MINIMAL, "modle": {}}, "modle"),
        ({**MINIMAL, "model": {"factory": "a:b", "kwarg": {}}}, "kwarg"),
        ({**MINIMAL, "data": {"factory": "a:b", "batch": 3}}, "batch"),
        ({**MINIMAL, "data": {"train": {"factory": "a:b", "sise": 1}}}, "sise"),
        ({**MINIMAL, "loss": {"name": "mse", "reduction": "sum"}}, "reduction"),
        ({**MINIMAL, "compute": {"max_split": 4}}, "max_split"),
    ],
)
def test_unknown_keys_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key\(s\) {key}\b"):
        parse_config(raw, source="cfg.toml")


def test_unknown_key_message_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[model]\nfactory = "a:b"\n[data]\nfactory = "c:d"\n[compute]\nmethd = "rk4"\n')
    with pytest.raises(ConfigError, match=r"lca.toml: unknown key\(s\) methd in \[compute\]"):
        load_config(path)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"data": {"factory": "a:b"}}, "missing \\[model\\]"),
        ({"model": {"factory": "a:b"}}, "missing \\[data\\]"),
        ({**MINIMAL, "model": {"factory": "no_colon"}}, "factory must be a string like"),
        ({**MINIMAL, "model": "pkg:build"}, "must be a table"),
        ({**MINIMAL, "model": {"factory": "a:b", "kwargs": [1]}}, "kwargs must be a table"),
        ({**MINIMAL, "data": {}}, "\\[data\\] is empty"),
        ({**MINIMAL, "data": {"bad-name": {"factory": "a:b"}}}, "must be an identifier"),
        ({**MINIMAL, "loss": {"name": "hinge"}}, "'hinge' is not one of"),
        ({**MINIMAL, "loss": {}}, "exactly one of"),
        ({**MINIMAL, "loss": {"name": "mse", "factory": "a:b"}}, "exactly one of"),
        ({**MINIMAL, "loss": {"factory": "nocolon"}}, "factory must be a string"),
        ({**MINIMAL, "compute": 3}, "\\[compute\\] must be a table"),
        ({**MINIMAL, "train": 3}, "\\[train\\] must be a table"),
    ],
)
def test_malformed_configs(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_custom_loss_factory() -> None:
    cfg = parse_config({**MINIMAL, "loss": {"factory": "pkg.losses:fn"}})
    assert cfg.loss_name is None and cfg.loss_factory == "pkg.losses:fn"


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nfactory = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_with_overrides_none_keeps_value() -> None:
    cfg = parse_config({**MINIMAL, "compute": {"batch_size": 64, "tolerance": 1e-3}})
    new = cfg.with_overrides(batch_size=None, tolerance=1e-6, method="euler")
    assert new.compute.batch_size == 64 and new.compute.tolerance == 1e-6 and new.compute.method == "euler"
    assert cfg.compute.tolerance == 1e-3  # frozen: the original is untouched
    assert new.model == cfg.model and new.data == cfg.data
    with pytest.raises(TypeError):
        cfg.with_overrides(not_a_field=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.compute.method = "euler"  # type: ignore[misc]


def test_result_settings_define_identity() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.identity() == cfg.with_overrides(device="cpu", compile=True, rows_per_chunk=7).identity()
    assert cfg.identity() != cfg.with_overrides(max_splits=4).identity()
    assert cfg.identity() != cfg.with_overrides(batch_size=3).identity()


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("method", "rk5", "--method"),
        ("tolerance", -1.0, "--tolerance"),
        ("tolerance", float("nan"), "--tolerance"),
        ("rtol", -1e-3, "--rtol"),
        ("l1_tol", -1e-3, "--l1-tol"),
        ("threads", -1, "--threads"),
        ("max_splits", 6, "--max-splits"),
        ("max_splits", 1, "--max-splits"),
        ("batch_size", 0, "--batch-size"),
        ("dtype", "float16", "--dtype"),
        ("bn_mode", "frozen", "--bn-mode"),
        ("device", "gpu", "--device"),
        ("device", "cuda:x", "--device"),
        ("rows_per_chunk", -1, "--rows-per-chunk"),
    ],
)
def test_validate_errors(field: str, value: object, flag: str) -> None:
    opts = dataclasses.replace(ComputeOptions(), **{field: value})
    with pytest.raises(UsageError, match=flag):
        opts.validate()


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_validate_accepts(device: str) -> None:
    opts = ComputeOptions(device=device, max_splits=2, method="euler", dtype="float64", bn_mode="running")
    assert opts.validate() is opts


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_splits", "8"),
        ("max_splits", 8.0),
        ("batch_size", 2.5),
        ("batch_size", True),
        ("tolerance", "1e-3"),
        ("device", 1),
        ("allow_tf32", "no"),
        ("method", ["rk4"]),
    ],
)
def test_compute_value_of_wrong_type_is_a_config_error(key: str, value: object) -> None:
    # A wrong TOML type must be a one-line ConfigError, not a TypeError from validate() or later.
    with pytest.raises(ConfigError, match=rf"\[compute\] {key} = .* must be a"):
        parse_config({**MINIMAL, "compute": {key: value}}, source="cfg.toml")


def test_compute_int_for_float_is_accepted() -> None:
    cfg = parse_config({**MINIMAL, "compute": {"tolerance": 0, "rtol": 1, "allow_tf32": True}})
    assert cfg.compute.tolerance == 0 and cfg.compute.rtol == 1 and cfg.compute.allow_tf32 is True
    cfg.compute.validate()


# -- import_factory ------------------------------------------------------------------------------------


def test_import_factory_from_base_dir(tmp_path: Path) -> None:
    pkg = tmp_path / "cfgdir"
    pkg.mkdir()
    (pkg / "lca_test_factories_mod.py").write_text("def build(k=1):\n    return ('built', k)\nclass Ns:\n    f = len\n")
    before = list(sys.path)
    try:
        fn = import_factory("lca_test_factories_mod:build", pkg)
        assert fn(k=3) == ("built", 3)
        assert import_factory("lca_test_factories_mod:Ns.f", pkg) is len  # dotted attribute
        assert sys.path == before  # the search path is restored
    finally:
        sys.modules.pop("lca_test_factories_mod", None)


def test_import_factory_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lca_test_cwd_mod.py").write_text("def f():\n    return 5\n")
    monkeypatch.chdir(tmp_path)
    try:
        assert import_factory("lca_test_cwd_mod:f")() == 5
    finally:
        sys.modules.pop("lca_test_cwd_mod", None)


def test_import_factory_failures(tmp_path: Path) -> None:
    (tmp_path / "lca_test_broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(ConfigError, match="cannot import module 'lca_test_nope_mod'"):
        import_factory("lca_test_nope_mod:f", tmp_path)
    with pytest.raises(ConfigError, match="boom at import"):
        import_factory("lca_test_broken_mod:f", tmp_path)
    with pytest.raises(ConfigError, match="has no attribute 'nothing'"):
        import_factory("reference:nothing")
    with pytest.raises(ConfigError, match="is not callable"):
        import_factory("reference:NOT_CALLABLE")
    sys.modules.pop("lca_test_broken_mod", None)


def test_import_factory_reference_module() -> None:
    import reference

    assert import_factory("reference:tanh_mlp") is reference.tanh_mlp


def test_resolved_picks_dtype_from_the_checkpoints_and_tolerances_by_scheme() -> None:
    auto = ComputeOptions()
    assert (auto.dtype, auto.refine, auto.tolerance, auto.rtol, auto.l1_tol) == ("auto", "local", None, None, None)
    for device in ("cpu", "cuda"):  # the dtype follows the checkpoints on every device
        assert auto.resolved(device, "float32").dtype == "float32"
        assert auto.resolved(device, "float64").dtype == "float64"
    local = auto.resolved("cpu", "float32")
    assert (local.tolerance, local.rtol, local.l1_tol) == (None, None, 1e-3)
    # The doubling scheme keeps the former defaults, so an old store resumes with --refine doubling --dtype float64.
    doubling = dataclasses.replace(auto, refine="doubling")
    d64, d32 = doubling.resolved("cpu", "float64"), doubling.resolved("cpu", "float32")
    assert (d64.tolerance, d64.rtol, d64.l1_tol) == (1e-9, 1e-4, 0.0)
    assert (d32.tolerance, d32.rtol, d32.l1_tol) == (1e-7, 1e-4, 0.0)
    explicit = dataclasses.replace(auto, dtype="float64", tolerance=1e-5, l1_tol=0.0).resolved("cpu", "float32")
    assert (explicit.dtype, explicit.tolerance, explicit.rtol, explicit.l1_tol) == ("float64", 1e-5, None, 0.0)
    # The run scale applies where rows are refined against l1_tol: rk4 with local refinement and l1_tol > 0.
    assert auto.l1_scope == "run" and local.l1_scope == "run"
    assert (d64.l1_scope, d32.l1_scope, explicit.l1_scope) == ("pair", "pair", "pair")
    assert dataclasses.replace(auto, method="euler").resolved("cpu").l1_scope == "pair"
    assert dataclasses.replace(auto, l1_scope="pair").resolved("cpu").l1_scope == "pair"
    assert dataclasses.replace(auto, max_splits=2).resolved("cpu").l1_scope == "pair"  # plain Simpson: no survey
    assert "l1_scope" in local.result_settings()
    with pytest.raises(UsageError, match="--l1-scope: 'step' is not one of run, pair"):
        dataclasses.replace(auto, l1_scope="step").validate()


def test_factory_importing_inside_its_body_works_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lca_cli.computation.config import call_factory

    cfgdir = tmp_path / "run"
    cfgdir.mkdir()
    (cfgdir / "lca_test_lazy_mod.py").write_text(
        "def build():\n    import lca_test_lazy_helper\n    return lca_test_lazy_helper.X\n"
    )
    (cfgdir / "lca_test_lazy_helper.py").write_text("X = 42\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = list(sys.path)
    try:
        assert call_factory(FactorySpec("lca_test_lazy_mod:build"), cfgdir, "[model]") == 42
        assert sys.path == before
    finally:
        sys.modules.pop("lca_test_lazy_mod", None)
        sys.modules.pop("lca_test_lazy_helper", None)


def test_import_error_names_the_folders_searched(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        import_factory("lca_test_absent_mod:f", tmp_path)
    msg = str(info.value)
    assert f"searched {tmp_path}, {Path.cwd()}" in msg and "PYTHONPATH" in msg


def test_main_factories_and_exits_are_config_errors(tmp_path: Path) -> None:
    from lca_cli.computation.config import call_factory

    with pytest.raises(ConfigError, match="__main__ is whatever script runs"):
        import_factory("__main__:build")
    (tmp_path / "lca_test_exit_mod.py").write_text("import sys\ndef f():\n    sys.exit(0)\n")
    (tmp_path / "lca_test_exit_at_import.py").write_text("import sys\nsys.exit(2)\n")
    try:
        with pytest.raises(ConfigError, match=r"\[data.train\] factory 'lca_test_exit_mod:f' called sys.exit\(0\)"):
            call_factory(FactorySpec("lca_test_exit_mod:f"), tmp_path, "[data.train]")
        with pytest.raises(ConfigError, match=r"called sys.exit\(2\)"):
            import_factory("lca_test_exit_at_import:f", tmp_path)
    finally:
        sys.modules.pop("lca_test_exit_mod", None)
        sys.modules.pop("lca_test_exit_at_import", None)


def test_state_dict_key_is_in_the_identity_only_when_set() -> None:
    assert "state_dict_key" not in ComputeOptions().result_settings()
    assert ComputeOptions(state_dict_key="ema").result_settings()["state_dict_key"] == "ema"
    cfg = parse_config({"model": {"factory": "a:b"}, "data": {"factory": "c:d"}, "compute": {"state_dict_key": "m"}})
    assert cfg.compute.state_dict_key == "m"
