#!/usr/bin/env python
"""Train a config's model as its ``[train]`` table says, writing an LCA run directory.

    python scripts/train.py configs/digits_mlp.toml runs/digits
    lca compute runs/digits

A checkpoint per iteration (step 0 = the initial weights) and ``lca.toml`` go to RUN_DIR; see
:mod:`lca_cli.training.train` for the ``[train]`` keys. One result line goes to stderr; errors are one line too.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from lca_cli.errors import LcaError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--iterations", type=int, help="Override [train] iterations.")
@click.option("--seed", type=int, help="Override [train] seed (minibatch order and dropout).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--overwrite", is_flag=True, help="Replace the checkpoints, lca.toml and lca.zarr in RUN_DIR.")
@click.option("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine).")
@click.option("-q", "--quiet", is_flag=True, help="No per-iteration progress on stderr.")
def main(
    config: Path,
    run_dir: Path,
    iterations: int | None,
    seed: int | None,
    device: str,
    overwrite: bool,
    threads: int | None,
    quiet: bool,
) -> None:
    """Train CONFIG's model and write a checkpoint per iteration plus lca.toml into RUN_DIR."""
    import torch

    from lca_cli.training.train import train_run

    if threads is not None:
        if threads < 1:
            click.echo(f"Error: --threads {threads}: must be >= 1", err=True)
            sys.exit(2)
        torch.set_num_threads(threads)
    last: list[float] = []
    every = 0

    def progress(it: int, total: int, loss: float) -> None:
        nonlocal every
        last[:] = [loss]
        every = every or max(1, total // 20)
        if not quiet and (it % every == 0 or it == total):
            click.echo(f"  iteration {it}/{total}  minibatch loss {loss:.4f}", err=True)

    t0 = time.perf_counter()
    try:
        out = train_run(
            config, run_dir, iterations=iterations, seed=seed, device=device, overwrite=overwrite, progress=progress
        )
    except LcaError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    n = len(list(out.glob("*.safetensors")))
    loss = f", last minibatch loss {last[0]:.4f}" if last else ""
    click.echo(
        f"Wrote {n} checkpoints and lca.toml to {out} in {time.perf_counter() - t0:.1f} s{loss}; "
        f"next: lca compute {out}",
        err=True,
    )


if __name__ == "__main__":
    main()
