"""Help that reads well at 80 columns: every command's help rendered as a person's terminal shows it."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from lca_cli.cli.app import cli
from lca_cli.errors import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_SIGHUP, EXIT_SIGTERM

COMMANDS = [[], ["compute"], ["summarize"], ["report"], ["verify"]]
EVERY_CODE = {*EXIT_CODES.values(), 0, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_SIGTERM, EXIT_SIGHUP}
#: What each command can return: the read commands never see a config, run folder, checkpoint, lock or signal.
CODES = {
    "": EVERY_CODE,
    "compute": EVERY_CODE,
    "summarize": {0, 2, 6, EXIT_INTERNAL, EXIT_INTERRUPTED},
    "verify": {0, 2, 6, EXIT_INTERNAL, EXIT_INTERRUPTED},
    "report": {0, 1, 2, 6, EXIT_INTERNAL, EXIT_INTERRUPTED},  # 1: matplotlib missing
}


def help_at_80(command: list[str]) -> str:
    result = CliRunner().invoke(cli, [*command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def section(text: str, title: str) -> str:
    match = re.search(rf"^ *{title}:\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
    assert match, (title, text)
    return match.group(1)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0] if c else "lca")
def test_help_fits_80_columns_without_split_words(command: list[str]) -> None:
    text = help_at_80(command)
    assert [line for line in text.splitlines() if len(line) > 80] == []
    # no word split at a hyphen ("sub-" / "interval", "--l1-" / "tol")
    assert [line for line in text.splitlines() if re.search(r"\w-$", line.rstrip())] == []
    # every example on one line: an indented command, nothing wrapped onto a line of its own
    for line in section(text, "Examples").splitlines():
        assert re.match(r" {4}(lca|torchrun) ", line), line


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0] if c else "lca")
def test_one_default_style(command: list[str]) -> None:
    text = help_at_80(command)
    flat = " ".join(section(text, "Options").split())
    # every bracket after an option's help is "[default: X]" (or click's "[required]"); choice lists have "|",
    # a config table is named as in the TOML ("the config's [data]")
    brackets = re.findall(r"\[([^\[\]]*)\]", flat)
    odd = [b for b in brackets if "|" not in b and not b.startswith("default: ") and not re.fullmatch(r"[a-z]+", b)]
    assert odd == [], odd
    assert "[default " not in flat and "(default" not in flat


def test_group_lists_whole_command_summaries() -> None:
    text = help_at_80([])
    commands = " ".join(section(text, "Commands").split())
    assert "…" not in commands and "..." not in commands
    for name in ("compute", "summarize", "report", "verify"):
        first = cli.commands[name].help.split("\n\n")[0]  # type: ignore[union-attr]
        assert " ".join(first.split()) in commands, name


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0] if c else "lca")
def test_exit_codes_listed_are_those_of_the_command(command: list[str]) -> None:
    listed = {int(m) for m in re.findall(r"^ +(\d+)  ", section(help_at_80(command), "Exit codes"), re.M)}
    assert listed == CODES[command[0] if command else ""]


def test_report_help_lists_every_view_the_report_draws() -> None:
    # The option's help names the views by hand (importing the report to list them would slow every command).
    from lca_cli.reporting import VIEWS

    text = " ".join(help_at_80(["report"]).split())
    listed = re.search(r"Draw only this view \(repeat for several\): (.*?) \[default", text)
    assert listed is not None, text
    assert [v.strip() for v in listed.group(1).split(",")] == list(VIEWS)
