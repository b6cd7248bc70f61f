"""What every ``lca`` command shares: the exit-code table, the security note, epilogs, stderr lines."""

from __future__ import annotations

import click

__all__ = ["EXIT_CODES_HELP", "SECURITY_HELP", "STEPS_HELP", "epilog", "err"]

EXIT_CODES_HELP = """\b
Exit codes:
  0 success   1 other error (e.g. report without matplotlib)
  2 bad option value      3 config error
  4 run directory error   5 checkpoint error
  6 store error (not an lca store, another run's or config's, damaged)
  7 non-finite loss       8 over tolerance (--strict)
  9 store busy (another lca compute holds it)
  10 storage refused (disk full, read-only, permission)
  70 internal error (a bug; traceback shown)
  130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (finished rows kept; rerun resumes)"""

SECURITY_HELP = """\b
Security: a run folder is code. lca.toml names factories that are imported
and called, and .py files beside it are importable, so run lca only on run
folders you trust, as you would run their training script. Checkpoints are
read without pickle (safetensors; .pt/.pth with torch.load(weights_only=True));
unpickling arbitrary objects is opt-in only (--unsafe-pickle)."""

STEPS_HELP = (
    "Window A:B: the iterations whose start step s has A <= s < B (either end may be left out: 100: or :500); "
    "a single step A is the one iteration starting there. B must be greater than A; a window holding no "
    "iteration of the store is an error that names the store's steps."
)


def epilog(*examples: str, before_exit_codes: str = "") -> str:
    """Examples, an optional block, then the exit codes: unwrapped blocks (each starts with a backspace line)."""
    extra = f"{before_exit_codes}\n\n" if before_exit_codes else ""
    return "\b\nExamples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + extra + EXIT_CODES_HELP


def err(message: str) -> None:
    """Print one line on stderr."""
    click.echo(message, err=True)
