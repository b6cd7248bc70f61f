"""The option spec: the CLI's options, the config's [compute] keys and the help's defaults all come from it."""

from __future__ import annotations

import dataclasses

import click
import pytest

from lca_cli.cli.compute import compute as compute_command
from lca_cli.computation.config import ComputeOptions, parse_config
from lca_cli.computation.options import COMPUTE_KEYS, OPTIONS, RUN_KEYS, default_of, help_of, speak_arguments
from lca_cli.errors import ConfigError

_MINIMAL = {"model": {"factory": "m:f"}, "data": {"factory": "d:f"}}


def test_the_config_keys_are_the_compute_options_fields_with_the_spec_defaults() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(ComputeOptions)}
    assert set(fields) == set(COMPUTE_KEYS)
    assert fields == {k: default_of(k) for k in COMPUTE_KEYS}
    assert not set(COMPUTE_KEYS) & set(RUN_KEYS)


def test_every_option_is_a_click_option_with_the_spec_choices() -> None:
    params = {p.name: p for p in compute_command.params}
    for option in OPTIONS:
        param = params[option.name]
        assert option.cli_flag in param.opts, option.name
        assert param.help == option.help_text
        if option.choices:
            assert isinstance(param.type, click.Choice) and tuple(param.type.choices) == option.choices


def test_help_shows_the_spec_defaults() -> None:
    assert "[default: 32]" in help_of("max_splits") and "[default: 1024]" in help_of("batch_size")
    assert "[default: 1e-3;" in help_of("l1_tol") and "1e-9 in float64, 1e-7 in float32" in help_of("tolerance")
    assert "[default: 1800]" in help_of("idle_timeout") and "0.8 x the mean L1 norm of 8 pairs" in help_of("l1_scope")
    assert all("{" not in o.help_text for o in OPTIONS)


def test_config_keys_and_types_are_checked_against_the_spec() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) overwrite in \[compute\]"):
        parse_config({**_MINIMAL, "compute": {"overwrite": True}})  # an option of one call, not a setting
    with pytest.raises(ConfigError, match=r"max_splits = '8' must be a int"):
        parse_config({**_MINIMAL, "compute": {"max_splits": "8"}})
    config = parse_config({**_MINIMAL, "compute": {"threads": "auto", "params": ["a.*"], "tolerance": 1}})
    assert config.compute.params == ("a.*",) and config.compute.tolerance == 1


def test_messages_name_arguments_for_the_library() -> None:
    assert speak_arguments("--max-splits 3: pass --l1-scope pair") == "max_splits 3: pass l1_scope pair"
    assert speak_arguments("pass --no-allow-tf32 or --out x", {"--out": "out"}) == "pass allow_tf32=False or out x"
    assert speak_arguments("--view planet") == "--view planet"  # not an option of compute: kept
