"""What every ``lca`` command shares: exit-code lists, the security note, epilogs, the help formatter, stderr lines.

Help is written for an 80-column terminal: example lines are at most 76 characters (they are indented by 4 and
never rewrapped), every default reads ``[default: X]``, and :class:`HelpFormatter` never splits a word at its
hyphens (``sub-`` / ``interval``, ``--l1-`` / ``tol``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import click

from lca_cli.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_SIGHUP,
    EXIT_SIGTERM,
    CheckpointError,
    ConfigError,
    LcaError,
    NumericalError,
    RunDirError,
    StorageError,
    StoreBusyError,
    StoreError,
    ToleranceError,
    UsageError,
)

__all__ = [
    "ALL_EXIT_CODES",
    "READ_EXIT_CODES",
    "SECURITY_HELP",
    "STEPS_HELP",
    "HelpContext",
    "HelpGroup",
    "epilog",
    "err",
    "exit_codes_help",
]

#: What each exit code means, in the order the help lists them.
_MEANING: dict[int, str] = {
    0: "success",
    LcaError.exit_code: "other error",
    UsageError.exit_code: "bad option or option value",
    ConfigError.exit_code: "config error",
    RunDirError.exit_code: "run directory error",
    CheckpointError.exit_code: "checkpoint error",
    StoreError.exit_code: "store error (not an lca store, another run's or config's, damaged)",
    NumericalError.exit_code: "non-finite loss",
    ToleranceError.exit_code: "over tolerance (--strict)",
    StoreBusyError.exit_code: "store busy (another lca compute holds it)",
    StorageError.exit_code: "storage refused (disk full, read-only, permission)",
    EXIT_INTERNAL: "internal error (a bug; traceback shown)",
    EXIT_INTERRUPTED: "Ctrl-C",
    EXIT_SIGTERM: "SIGTERM (under `timeout`: 124, or 143 with --preserve-status)",
    EXIT_SIGHUP: "SIGHUP",
}
#: Every code ``lca compute`` can return (and so the ``lca`` group lists).
ALL_EXIT_CODES: tuple[int, ...] = tuple(_MEANING)
#: The codes of the commands that only read a store (``summarize``, ``verify``): no config, run folder,
#: checkpoint, numerics, lock or storage errors, and no signal handling beyond Ctrl-C.
READ_EXIT_CODES: tuple[int, ...] = (0, UsageError.exit_code, StoreError.exit_code, EXIT_INTERNAL, EXIT_INTERRUPTED)


def exit_codes_help(codes: Iterable[int] = ALL_EXIT_CODES, notes: Mapping[int, str] | None = None) -> str:
    """The ``Exit codes:`` block of a command's help (unwrapped), one code a line.

    Args:
        codes: The codes the command can return.
        notes: Meanings that replace the shared ones for this command (``report``'s 1: matplotlib missing).

    Returns:
        The block, starting with click's no-rewrap marker.

    """
    meaning = {**_MEANING, **(notes or {})}
    lines = [f"  {code:>3}  {meaning[code]}" for code in codes]
    if EXIT_SIGTERM in codes:  # compute stops cleanly on these signals
        lines.append("       130, 143, 129: finished rows are kept; rerunning resumes")
    return "\b\nExit codes:\n" + "\n".join(lines)


SECURITY_HELP = """\b
Security: a run folder is code. lca.toml names factories that are imported
and called, and .py files beside it are importable, so run lca only on run
folders you trust, as you would run their training script. Checkpoints are
read without pickle (safetensors; .pt/.pth with weights_only=True);
unpickling arbitrary objects is opt-in only (--unsafe-pickle)."""

STEPS_HELP = (
    "Window A:B: the iterations whose start step s has A <= s < B (either end may be left out: 100: or :500); "
    "a single step A is the one iteration starting there. B must be greater than A; a window holding no "
    "iteration of the store is an error that names the store's steps."
)


def epilog(
    *examples: str,
    before_exit_codes: str = "",
    exit_codes: Sequence[int] = ALL_EXIT_CODES,
    notes: Mapping[int, str] | None = None,
) -> str:
    """Examples, an optional block, then the exit codes: unwrapped blocks (each starts with a backspace line).

    Args:
        examples: Command lines (with an optional ``# comment``), at most 76 characters each so that they fit
            80 columns once indented.
        before_exit_codes: A block shown between the examples and the exit codes.
        exit_codes: The codes the command can return.
        notes: Meanings of some codes for this command.

    Returns:
        The epilog.

    """
    extra = f"{before_exit_codes}\n\n" if before_exit_codes else ""
    codes = exit_codes_help(exit_codes, notes)
    return "\b\nExamples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + extra + codes


#: Stands in for "-" while click wraps help text: a non-breaking hyphen, so that no word is split at a hyphen.
_NB_HYPHEN = "\u2011"


def _keep(text: str) -> str:
    return text.replace("-", _NB_HYPHEN)


class HelpFormatter(click.HelpFormatter):
    """click's help formatter, except that words are never split at their hyphens.

    click wraps with :mod:`textwrap`'s ``break_on_hyphens`` on, which splits ``sub-interval`` and ``--l1-tol``
    across lines; hyphens become non-breaking ones while wrapping and plain ones again in the output.
    """

    def write_usage(self, prog: str, args: str = "", prefix: str | None = None) -> None:
        """Write the usage line, unsplit at hyphens."""
        super().write_usage(_keep(prog), _keep(args), prefix)

    def write_text(self, text: str) -> None:
        """Write a paragraph, unsplit at hyphens."""
        super().write_text(_keep(text))

    def write_dl(self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2) -> None:
        """Write a definition list (options, commands), unsplit at hyphens."""
        super().write_dl([(_keep(a), _keep(b)) for a, b in rows], col_max, col_spacing)

    def getvalue(self) -> str:
        """The help text, with plain hyphens."""
        return super().getvalue().replace(_NB_HYPHEN, "-")


class HelpContext(click.Context):
    """The context of every ``lca`` command: its help uses :class:`HelpFormatter`."""

    formatter_class = HelpFormatter


class HelpGroup(click.Group):
    """The ``lca`` group: its command list shows each command's whole first sentence, wrapped, never cut."""

    context_class = HelpContext

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands with their whole summaries (click cuts them at the width with "...")."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def err(message: str) -> None:
    """Print one line on stderr."""
    click.echo(message, err=True)
