"""The ``lca`` command line: parse, call one library function, render. Nothing else.

Data goes to stdout; progress, warnings and errors go to stderr. Every :class:`~lca_cli.errors.LcaError`
becomes one ``Error: ...`` line and its exit code, in :func:`main` only.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import NoReturn

import click

from lca_cli import __version__
from lca_cli.cli.common import HelpContext, HelpGroup, epilog, err
from lca_cli.cli.compute import compute
from lca_cli.cli.read import report, summarize, verify
from lca_cli.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    Interrupted,
    LcaError,
    PeerFailed,
    ToleranceError,
)

__all__ = ["cli", "main"]


@click.group(
    cls=HelpGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=epilog(
        "lca compute runs/exp1                          # -> runs/exp1/lca.zarr",
        "lca summarize runs/exp1/lca.zarr --by layer    # who helped, who hurt",
        "lca report runs/exp1/lca.zarr --out exp1.html  # figures, one page",
    ),
)
@click.version_option(__version__, prog_name="lca")
def cli() -> None:
    """Loss Change Allocation: which parameters did the learning, from saved checkpoints.

    Each iteration's loss change L(θ_t+1) - L(θ_t) on a fixed evaluation set is split exactly among the
    parameters (negative LCA = helped, positive = hurt), by integrating the gradient along the straight
    segment between consecutive checkpoints.
    """


cli.add_command(compute)
cli.add_command(summarize)
cli.add_command(report)
cli.add_command(verify)
for _command in cli.commands.values():  # their help, too, never splits a word at a hyphen
    _command.context_class = HelpContext


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lca`` console script: maps errors to one line and an exit code.

    With ``--json`` (``compute``, ``verify``) a failure also prints ``{"error": {"exit_code", "message"}}`` on
    stdout, so that a script parsing it gets an object whatever happened (``--strict``'s exit 8 comes after the
    result object and adds none).
    """
    args = sys.argv[1:] if argv is None else argv
    as_json = "--json" in args

    def fail(code: int, message: str, show: bool = True) -> NoReturn:
        if show:
            err(message)
        if as_json:
            click.echo(json.dumps({"error": {"exit_code": code, "message": message.removeprefix("Error: ")}}))
        sys.exit(code)

    try:
        # Outside standalone mode click returns, not raises, the code of a click Exit (verify --json's exit 6).
        code = cli.main(args=argv, prog_name="lca", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        fail(exc.exit_code, exc.format_message(), show=False)
    except click.exceptions.Abort as exc:
        # click turns a KeyboardInterrupt (a second Ctrl-C, SIGTERM or SIGHUP) into Abort; keep its exit code.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, KeyboardInterrupt):
            code = cause.exit_code if isinstance(cause, Interrupted) else EXIT_INTERRUPTED
            fail(code, "Interrupted; finished rows are saved and a rerun resumes.")
        fail(EXIT_INTERRUPTED, "Aborted.")
    except KeyboardInterrupt as exc:
        code = exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED
        fail(code, "Interrupted; finished rows are saved and a rerun resumes.")
    except LcaError as exc:
        from lca_cli.computation.distributed import env_rank

        rank = env_rank()
        if rank or isinstance(exc, ToleranceError):  # rank 0 prints the job's objects; --strict's result is out
            if not (rank and isinstance(exc, PeerFailed)):  # another rank's failure: rank 0 reports it, once
                err(f"Error: rank {rank}: {exc}" if rank else f"Error: {exc}")
            sys.exit(exc.exit_code)
        fail(exc.exit_code, f"Error: {exc}")
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:
        traceback.print_exc()
        err("Error: internal error in lca (a bug); please report it with the traceback above.")
        fail(EXIT_INTERNAL, f"internal error in lca (a bug): {type(exc).__name__}: {exc}", show=False)
    sys.exit(0)
