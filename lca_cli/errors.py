"""The one error hierarchy of ``lca``; every user-facing failure is an :class:`LcaError`.

Each class carries the process exit code the CLI uses for it, so the mapping lives here and
``cli.main`` only has to catch :class:`LcaError`. Messages are one line: what is wrong, the file, key or
tensor at fault, and how to fix it.
"""

from __future__ import annotations


class LcaError(Exception):
    """Base class of every error ``lca`` reports to a user (exit code 1)."""

    exit_code: int = 1


class UsageError(LcaError, ValueError):
    """A command-line option or argument has a bad value (exit code 2)."""

    exit_code = 2


class ConfigError(LcaError, ValueError):
    """The TOML config is missing, malformed, has unknown keys or a factory that cannot be used (exit 3)."""

    exit_code = 3


class RunDirError(LcaError, FileNotFoundError):
    """The run directory is missing or holds fewer than two checkpoints (exit code 4)."""

    exit_code = 4


class CheckpointError(LcaError, ValueError):
    """A checkpoint is corrupt, truncated, or does not match the model's tensors (exit code 5)."""

    exit_code = 5


class CheckpointRefused(CheckpointError):
    """A checkpoint refused for what its files say, not for being incomplete (exit code 5).

    A shard index or a link that leads out of the run, a step beyond 64 bits, a name that is not UTF-8: waiting
    for the writer cannot fix these, so ``--follow`` stops at once instead of waiting for the idle timeout.
    """


class StoreError(LcaError, ValueError):
    """A path is not an lca store, or the store belongs to another model, config or run (exit code 6)."""

    exit_code = 6


class NumericalError(LcaError, ArithmeticError):
    """The loss or its gradient is not finite at some checkpoint (exit code 7)."""

    exit_code = 7


class ToleranceError(LcaError):
    """``--strict`` was given and some pairs stayed over tolerance at the split cap (exit code 8)."""

    exit_code = 8


class StoreBusyError(LcaError):
    """Another ``lca compute`` is working on the same store (exit code 9); nothing was changed."""

    exit_code = 9


class StorageError(LcaError, OSError):
    """The file system refused a write: disk full, read-only, permission denied (exit code 10).

    Finished rows are kept; free space or fix permissions and rerun to resume.
    """

    exit_code = 10


class PeerFailed(LcaError):
    """Another process of the same ``torchrun`` job failed and stopped this one (its exit code, its message).

    The failing process prints its own error; the job's rank 0 prints this one (which names that process),
    the other ranks exit with its code silently.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: Exit code when the user interrupts a command (Ctrl-C); the store stays resumable.
EXIT_INTERRUPTED = 130

#: Exit codes for SIGTERM and SIGHUP (128 + signal number, as shells report them): handled like Ctrl-C.
EXIT_SIGTERM = 143
EXIT_SIGHUP = 129


class Interrupted(KeyboardInterrupt):
    """A second stop signal (Ctrl-C, SIGTERM, SIGHUP) aborts at once; carries that signal's exit code."""

    def __init__(self, exit_code: int = EXIT_INTERRUPTED) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


#: Exit code for an unexpected internal error (a bug: the traceback is printed).
EXIT_INTERNAL = 70

EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "error": LcaError.exit_code,
    "usage": UsageError.exit_code,
    "config": ConfigError.exit_code,
    "run_dir": RunDirError.exit_code,
    "checkpoint": CheckpointError.exit_code,
    "store": StoreError.exit_code,
    "numerical": NumericalError.exit_code,
    "tolerance": ToleranceError.exit_code,
    "busy": StoreBusyError.exit_code,
    "storage": StorageError.exit_code,
    "internal": EXIT_INTERNAL,
    "interrupted": EXIT_INTERRUPTED,
    "sigterm": EXIT_SIGTERM,
    "sighup": EXIT_SIGHUP,
}


def one_line(exc: BaseException) -> str:
    """An exception as one line for a user: its type and up to 300 characters of its message.

    Used where a user's own code (a model, a loss, a data factory) fails inside ``lca``: the error names what
    failed, and this keeps the user's exception to one readable line instead of a traceback.

    Args:
        exc: The exception.

    Returns:
        ``"TypeError: ..."`` with whitespace collapsed; the type alone when the message is empty.

    """
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
