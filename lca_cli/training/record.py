"""The training-side writer: one checkpoint per step, atomically, plus the run's ``lca.toml``.

Usage in a training loop::

    from lca_cli.training.record import CheckpointWriter

    with CheckpointWriter("runs/exp1") as ckpt:
        ckpt.write_config(model="my_pkg.models:build", data="my_pkg.data:eval_set", loss="cross_entropy")
        ckpt.save(model, step=0)                 # the initial weights
        for step in range(1, n_steps + 1):
            train_one_step(model)
            ckpt.save(model, step)

``save`` costs the loop one device-to-host copy of the ``state_dict``; serialisation and the disk write
happen in a background thread (``background=False`` writes synchronously). Each file is written to a hidden
temporary file in the same directory and renamed into place, so a reader never sees a partial checkpoint.

``close`` (the end of a ``with`` block that training left normally) leaves the end marker ``lca.end`` in the run
directory, so that ``lca compute --follow`` knows training finished; a ``with`` block left by an exception (training
raised, or the writer refused the config) writes the checkpoints saved so far but no marker, since training did not
finish. ``append=True`` removes an earlier marker (training continues). Each step is saved once: a second save of
a step is refused (a loop that counts steps wrongly would otherwise overwrite its own checkpoints).

Refused when written, not when ``lca compute`` runs: a folder that already holds checkpoints (another run's,
unless ``append=True``), ``__main__`` factories and factories defined in the running training script (importing
it would train again), and ``compute=`` options that ``lca compute`` would refuse. Tied parameters are saved
once, under the name ``named_parameters()`` keeps.
"""

from __future__ import annotations

import importlib.util
import math
import os
import queue
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lca_cli.computation.follow import END_MARKER, write_end_marker
from lca_cli.errors import ConfigError, LcaError, RunDirError, UsageError

__all__ = ["CheckpointWriter", "checkpoint_name", "dump_toml", "write_run_config"]


def checkpoint_name(step: int, digits: int = 8) -> str:
    """File name of a step's checkpoint, e.g. ``step_00000042.safetensors``.

    Args:
        step: Training step (>= 0).
        digits: Zero padding, so that names also sort by step.

    Returns:
        The file name.

    """
    return f"step_{step:0{digits}d}.safetensors"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def dump_toml(doc: Mapping[str, Mapping[str, Any]]) -> str:
    """Write a two-level document (tables of plain values; nested maps become inline tables) as TOML.

    Args:
        doc: ``{table: {key: value}}``; a table name may be dotted (``"data.val"``).

    Returns:
        TOML text that :mod:`tomllib` reads back to the same values.

    """
    lines: list[str] = []
    for table, body in doc.items():
        lines.append(f"[{table}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items())
        lines.append("")
    return "\n".join(lines)


def write_run_config(
    run_dir: str | Path,
    *,
    model: str,
    data: str | Mapping[str, str | Mapping[str, Any]],
    loss: str = "cross_entropy",
    model_kwargs: Mapping[str, Any] | None = None,
    data_kwargs: Mapping[str, Any] | None = None,
    compute: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``RUN_DIR/lca.toml`` describing how to rebuild the model, the evaluation set(s) and the loss.

    Args:
        run_dir: The run directory (created if needed).
        model: Model factory, ``"pkg.module:function"``.
        data: One data factory (the set ``train``), or ``{set name: factory}`` / ``{set name:
            {"factory": ..., "kwargs": {...}}}`` for several sets.
        loss: A built-in loss name (``cross_entropy``, ``mse``, ``nll``, ``bce_with_logits``) or a
            ``"pkg.module:function"`` factory.
        model_kwargs: Keyword arguments for the model factory.
        data_kwargs: Keyword arguments for a single data factory.
        compute: Defaults for ``lca compute`` flags (``[compute]``).

    Returns:
        The path written.

    Raises:
        ConfigError: If a factory is in ``__main__`` or in the running script, or a value is invalid (the same
            checks ``lca compute`` makes, made now, while the training script can still be fixed).

    """
    doc: dict[str, dict[str, Any]] = {"model": {"factory": model, "kwargs": dict(model_kwargs or {})}}
    if isinstance(data, str):
        doc["data"] = {"factory": data, "kwargs": dict(data_kwargs or {})}
    else:
        for name, spec in data.items():
            if isinstance(spec, str):
                doc[f"data.{name}"] = {"factory": spec, "kwargs": {}}
            else:
                doc[f"data.{name}"] = {"factory": spec["factory"], "kwargs": dict(spec.get("kwargs", {}))}
    doc["loss"] = {"factory": loss} if ":" in loss else {"name": loss}
    if compute:
        doc["compute"] = dict(compute)
    root = Path(run_dir)
    _validate_config(doc, root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "lca.toml"
    _atomic_write_bytes(path, dump_toml(doc).encode())
    return path


def _validate_config(doc: dict[str, dict[str, Any]], root: Path) -> None:
    """The checks ``lca compute`` makes on a config, and the two it cannot make, made when it is written."""
    import tomllib

    from lca_cli.computation.config import parse_config

    try:
        text = dump_toml(doc)
    except TypeError as exc:
        raise ConfigError(
            f"lca.toml for {root}: {exc} (kwargs must be numbers, strings, booleans, lists, dicts)"
        ) from None
    config = parse_config(tomllib.loads(text), f"lca.toml for {root}", root)
    try:
        config.compute.validate()
    except UsageError as exc:
        raise ConfigError(f"lca.toml for {root}: compute={{...}}: {str(exc).lstrip('-')}") from None
    factories = [config.model.factory, *(spec.factory for spec in config.data.values())]
    if config.loss_factory:
        factories.append(config.loss_factory)
    for factory in factories:
        _check_not_main(factory, root)


def _check_not_main(factory: str, root: Path) -> None:
    module = factory.partition(":")[0]
    if module == "__main__":
        raise ConfigError(
            f"factory {factory!r}: lca compute runs in another process, where __main__ is not your script; "
            "move the function into a module (a .py file beside lca.toml works) and name it module:function"
        )
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if not main_file:
        return
    # Where would `lca compute` import it from? The config's folder first, then the current directory and the
    # path. find_spec does not run the module (only a dotted name's parent packages).
    added = [d for d in (str(root.resolve()), str(Path.cwd())) if d not in sys.path]
    sys.path[:0] = added
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    finally:
        for d in added:
            sys.path.remove(d)
    origin = getattr(spec, "origin", None)
    if origin and Path(origin).resolve() == Path(main_file).resolve():
        raise ConfigError(
            f"factory {factory!r} is defined in the running script {main_file}: lca compute would import it and "
            "run the script (the training) again; move the function into its own module"
        )


def _refuse_other_run(run_dir: Path) -> None:
    from lca_cli.sources import find_checkpoints

    try:
        refs = find_checkpoints(run_dir, nested=False)
    except LcaError:  # unreadable or ambiguous checkpoints: still someone's checkpoints
        refs = None
    if refs == []:
        return
    held = f"{len(refs)} checkpoint(s), steps {refs[0].step}..{refs[-1].step}" if refs else "checkpoints"
    raise RunDirError(
        f"{run_dir} already holds {held}: write this run to a new folder, or pass append=True to add to that run"
    )


def _state_without_aliases(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each tied parameter once, under the name ``named_parameters()`` keeps."""
    seen: set[int] = set()
    aliases: set[str] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases.add(name)
        seen.add(id(p))
    return {k: v for k, v in model.state_dict().items() if k not in aliases}


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointWriter:
    """Saves a checkpoint per training step into a run directory.

    Args:
        run_dir: The run directory (created if needed).
        background: Serialise and write in a background thread (the loop pays only the host copy).
        max_pending: Checkpoints that may wait for the writer before ``save`` blocks (bounds memory).
        digits: Zero padding of the step in file names.
        append: Add to checkpoints already in ``run_dir`` (resuming that run) instead of refusing them; an end
            marker left by the earlier writer is removed (training continues).

    Raises:
        RunDirError: If ``run_dir`` already holds checkpoints and ``append`` is not set: another run's
            checkpoints would silently become part of this one.

    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        background: bool = True,
        max_pending: int = 2,
        digits: int = 8,
        append: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        if not append and self.run_dir.is_dir():
            _refuse_other_run(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Training (re)starts: a follower must not take an earlier writer's end marker for this one's.
        (self.run_dir / END_MARKER).unlink(missing_ok=True)
        self.digits = digits
        self._last_step: int | None = None
        self._saved: set[int] = set()  # the steps this writer saved (a second save of one is refused)
        self._failed = False
        self._closed = False
        self._error: BaseException | None = None
        self._queue: queue.Queue[tuple[int, dict[str, torch.Tensor]] | None] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=max_pending)
            self._thread = threading.Thread(target=self._loop, name="lca-checkpoint-writer", daemon=True)
            self._thread.start()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # training raised (or the writer refused something): keep what was saved, but no end marker
            self.abort()

    def write_config(self, **kwargs: Any) -> Path:
        """Write the run's ``lca.toml``; see :func:`write_run_config` for the arguments."""
        return write_run_config(self.run_dir, **kwargs)

    def save(self, model: torch.nn.Module | Mapping[str, torch.Tensor], step: int) -> Path:
        """Save the model's ``state_dict`` as the checkpoint of ``step``.

        Args:
            model: A module (its ``state_dict()`` is saved) or a ``name -> tensor`` map.
            step: Training step; stored in the file's metadata and its name.

        Returns:
            The checkpoint's final path (it may still be in flight when writing in the background;
            :meth:`flush` or :meth:`close` waits for it).

        Raises:
            LcaError: If an earlier background write failed.
            UsageError: If this writer already saved ``step``.

        """
        if self._error is not None:
            raise LcaError(f"checkpoint writer failed earlier: {self._error}") from self._error
        if step in self._saved:
            raise UsageError(
                f"step {step} was already saved to {self.run_dir}; each step is saved once (does the loop count steps?)"
            )
        self._saved.add(step)
        state = _state_without_aliases(model) if isinstance(model, torch.nn.Module) else model
        # The one device-to-host copy; a copy also for CPU tensors, because training mutates them in place.
        host = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
        path = self.run_dir / checkpoint_name(step, self.digits)
        self._last_step = step if self._last_step is None else max(self._last_step, step)
        if self._queue is None:
            try:
                self._write(step, host)
            except OSError as exc:
                self._failed = True
                raise LcaError(f"cannot write checkpoint {path}: {exc}") from exc
        else:
            self._queue.put((step, host))
        return path

    def _write(self, step: int, host: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        final = self.run_dir / checkpoint_name(step, self.digits)
        tmp = final.with_name(f".{final.name}.partial")
        try:
            save_file(host, str(tmp), metadata={"step": str(step)})
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)  # never leave a half-written file behind, even a hidden one
            raise

    def _loop(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._write(*item)
            except BaseException as exc:  # reported on the next save/flush/close
                self._error = exc
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every checkpoint saved so far is on disk.

        Raises:
            LcaError: If a background write failed.

        """
        if self._queue is not None:
            self._queue.join()
        if self._error is not None:
            raise LcaError(f"checkpoint writer failed: {self._error}") from self._error

    def _stop(self) -> None:
        """Write what is queued and stop the background thread."""
        if self._queue is not None and self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def abort(self) -> None:
        """Write the checkpoints saved so far and stop, without the end marker: training did not finish.

        What the end of a ``with`` block does when an exception leaves it, and what a framework callback calls
        when training raised. A background write error is not raised here (the training error is the one to
        report); a later :meth:`close` does nothing.
        """
        self._stop()
        self._closed = True

    def close(self) -> None:
        """Flush, stop the background thread, and leave the end marker ``lca.end`` (training finished).

        The marker is written after the last checkpoint is in place, so a follower that sees it finds every
        checkpoint; it is not written when a checkpoint failed to be written, nor after a ``with`` block that an
        exception left.
        """
        self._stop()
        if self._error is not None:
            raise LcaError(f"checkpoint writer failed: {self._error}") from self._error
        if not self._closed and not self._failed:
            self._closed = True
            try:
                write_end_marker(self.run_dir, self._last_step)
            except OSError as exc:
                raise LcaError(f"cannot write the end marker in {self.run_dir}: {exc}") from exc
