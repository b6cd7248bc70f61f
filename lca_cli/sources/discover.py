"""Find a run's checkpoints by looking: flat files, per-step folders, or one sub-folder that holds them.

Order of search in ``RUN_DIR``:

1. flat weights files (:mod:`lca_cli.sources.files`) and per-step folders (:mod:`lca_cli.sources.folders`);
2. when there are none, the sub-folders (up to three levels down, e.g. Lightning's
   ``lightning_logs/version_0/checkpoints/``): exactly one of them holding checkpoints is used.

Ignored: hidden names (a writer's temporary files), optimizer/scheduler/RNG/training-argument files (by their
usual names, and, whatever their names, torch files whose content is training state rather than weights:
:func:`~lca_cli.sources.files.not_weights`; with a note), and a top-level file without a step beside per-step
folders (a Trainer's final ``model.safetensors``). Two checkpoints of one step are an error, except Lightning's
``last.ckpt`` alias of a numbered checkpoint.

The newest checkpoint may still be being written (a cron job that fires while training saves): when it is
shorter than its own header says (:func:`~lca_cli.sources.files.is_complete`), it is treated as not yet written,
with a note, and the pairs before it are computed. An incomplete checkpoint before the newest stays an error.

Lightning's layout: the folder that holds ``lightning_logs/`` (the ``Trainer``'s ``default_root_dir``) is a run
directory; its checkpoints are those of the one ``lightning_logs/version_N/`` that holds any, preferred over
other sub-folders with checkpoints (e.g. the ``LcaCallback``'s own run beside it), with a note.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lca_cli.errors import CheckpointError, RunDirError
from lca_cli.sources.base import WEIGHT_SUFFIXES, CheckpointRef, confine, last_digits, listing
from lca_cli.sources.files import file_step, is_complete, not_weights
from lca_cli.sources.folders import INDEX_FILES, is_auxiliary, is_shard, step_folder

__all__ = ["describe_folder", "find_checkpoints"]

_LAST = re.compile(r"^last(-v\d+)?\.ckpt$")
_MAX_DEPTH = 3


@dataclass
class _Found:
    """What one folder holds: checkpoints, and what was set aside (for notes)."""

    refs: list[CheckpointRef] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # step-less files beside per-step folders
    stray: list[str] = field(default_factory=list)  # training state, not weights: "name (why)"
    unreadable: list[tuple[Path, CheckpointError]] = field(default_factory=list)  # incomplete, step unknown


def _scan(root: Path, unsafe_pickle: bool) -> _Found:
    """Checkpoints directly in ``root`` (files and step folders), and what was set aside."""
    files: list[Path] = []
    found = _Found()
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if path.suffix == ".zarr":
                continue
            ref = step_folder(path)
            if ref is not None:
                found.refs.append(ref)
        elif path.is_file() and path.suffix in WEIGHT_SUFFIXES and not is_auxiliary(path.name):
            files.append(path)
    if any((root / name).is_file() for name in INDEX_FILES):
        raise CheckpointError(
            f"{root} holds one sharded save_pretrained checkpoint; LCA needs one per step: "
            "save each step into its own folder (checkpoint-N/ or step_N/)"
        )
    shards = [p.name for p in files if is_shard(p.name)]
    if shards:
        raise CheckpointError(
            f"{root}: shard files without an index ({listing(shards, 3)}); keep *.index.json beside them"
        )
    has_folders = bool(found.refs)  # so far, refs holds the step folders only
    for path in files:
        if has_folders and last_digits(path.stem) is None and not _LAST.match(path.name):
            found.skipped.append(path.name)  # e.g. a Trainer's final model.safetensors beside checkpoint-N/ folders
            continue
        try:
            found.refs.append(CheckpointRef(path, file_step(path, unsafe_pickle)))
        except FileNotFoundError:
            continue  # deleted while the run was listed (pruning, rotation): as if it had not been there
        except CheckpointError as exc:  # no step, or unreadable: training state, a file being written, or damage
            why = not_weights(path, unsafe_pickle)
            if why is not None:
                found.stray.append(f"{path.name} ({why})")
            elif not _complete(path):
                found.unreadable.append((path, exc))
            else:
                raise
    return found


def _complete(path: Path) -> bool:
    try:
        return is_complete(path)
    except FileNotFoundError:
        return True  # gone: the reader says so when it matters
    except OSError:
        return True  # unreadable for another reason: the reader's error says which


def _unfinished(found: _Found, refs: list[CheckpointRef], notes: list[str] | None) -> list[CheckpointRef]:
    """Drop a newest checkpoint that is still being written (with a note); an incomplete earlier one is an error."""
    newest_step = refs[-1].step if refs else None
    newest_time = max((_mtime(p) for r in refs for p in r.weight_files), default=0.0)
    for path, exc in found.unreadable:  # its step is unknown: newest by the digits of its name, else by its time
        digits = last_digits(path.stem)
        newest = (digits > newest_step) if digits is not None and newest_step is not None else True
        if digits is None and newest_step is not None:
            newest = _mtime(path) >= newest_time
        if not newest:
            raise exc
        if notes is not None:
            notes.append(f"{path} is incomplete (still being written?): treated as not yet written")
    if refs and not all(_complete(p) for p in refs[-1].weight_files):
        if notes is not None:
            notes.append(
                f"the newest checkpoint, step {refs[-1].step} ({refs[-1].path}), is incomplete (still being "
                "written?): treated as not yet written"
            )
        refs = refs[:-1]
    return refs


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _dedupe(found: _Found, unsafe_pickle: bool) -> list[CheckpointRef]:
    by_step: dict[int, CheckpointRef] = {}
    for ref in found.refs:
        other = by_step.get(ref.step)
        if other is None:
            by_step[ref.step] = ref
            continue
        # Lightning's save_last writes last.ckpt (or a link to) the newest numbered checkpoint: the same step.
        if _LAST.match(ref.path.name) or ref.path.is_symlink():
            continue
        if _LAST.match(other.path.name) or other.path.is_symlink():
            by_step[ref.step] = ref
            continue
        # An optimizer file of the same step (opt_10.pt beside model_10.pt) is not a second checkpoint.
        why = {r: not_weights(r.path, unsafe_pickle) if not r.files else None for r in (ref, other)}
        if why[ref] is not None or why[other] is not None:
            found.stray.extend(f"{r.path.name} ({why[r]})" for r in (ref, other) if why[r] is not None)
            kept = [r for r in (other, ref) if why[r] is None]
            if kept:
                by_step[ref.step] = kept[0]
            else:
                del by_step[ref.step]
            continue
        raise CheckpointError(f"{ref.path} and {other.path} both hold step {ref.step}; keep one checkpoint per step")
    return [by_step[s] for s in sorted(by_step)]


def find_checkpoints(
    run_dir: str | Path, *, unsafe_pickle: bool = False, notes: list[str] | None = None, nested: bool = True
) -> list[CheckpointRef]:
    """List a run's checkpoints ordered by step.

    Args:
        run_dir: The run directory.
        unsafe_pickle: Allow torch files that need pickle (only to read a ``.ckpt`` file's step record).
        notes: When given, receives one-line notes about what was skipped or where checkpoints were found.
        nested: Look in sub-folders when ``run_dir`` itself holds none.

    Returns:
        Checkpoints sorted by step (may hold fewer than two; callers decide what that means).

    Raises:
        RunDirError: If ``run_dir`` is not a directory, or several sub-folders hold checkpoints.
        CheckpointError: If a step cannot be determined or two checkpoints claim the same step.

    """
    root = Path(run_dir)
    if not root.is_dir():
        raise RunDirError(f"run directory {root} does not exist (or is not a directory)")
    here = _scan(root, unsafe_pickle)
    if here.skipped and notes is not None:
        notes.append(f"ignored {listing(here.skipped, 3)} in {root}: no step in the name, beside per-step folders")
    if here.refs or here.unreadable or not nested:
        return _listed(root, root, here, unsafe_pickle, notes)
    found: list[tuple[Path, _Found]] = []
    for sub in _subfolders(root):
        try:
            sub_found = _scan(sub, unsafe_pickle)
        except CheckpointError:
            continue  # a broken sub-folder is not ours to judge; it is listed if nothing else is found
        if sub_found.refs:
            found.append((sub, sub_found))
    if len(found) > 1:
        found = _lightning_logs(root, found, notes)
    if len(found) > 1:
        names = [str(p.relative_to(root)) for p, _ in found]
        raise RunDirError(f"{root}: several folders hold checkpoints ({listing(names, 4)}); pass one as RUN_DIR")
    if found:
        sub, sub_found = found[0]
        if notes is not None:
            notes.append(f"checkpoints found in {sub}")
        return _listed(root, sub, sub_found, unsafe_pickle, notes)
    return []


def _listed(
    root: Path, folder: Path, found: _Found, unsafe_pickle: bool, notes: list[str] | None
) -> list[CheckpointRef]:
    """The checkpoints of ``folder`` in step order, set-aside files noted, confined to ``root``."""
    refs = _unfinished(found, _dedupe(found, unsafe_pickle), notes)
    if found.stray and notes is not None:
        notes.append(f"ignored {listing(found.stray, 3)} in {folder}: training state, not model weights")
    return [confine(r, root) for r in refs]


def _lightning_logs(root: Path, found: list[tuple[Path, _Found]], notes: list[str] | None) -> list[tuple[Path, _Found]]:
    """Lightning's own folders when ``root`` is a ``Trainer``'s root folder (it holds ``lightning_logs/``).

    Lightning writes ``lightning_logs/version_N/checkpoints/``; other folders with checkpoints beside it (the
    ``LcaCallback``'s run, say) are left out, with a note. Several versions with checkpoints stay ambiguous.
    """
    logs = root / "lightning_logs"
    ours = [(p, f) for p, f in found if p.is_relative_to(logs)]
    if not ours or len(ours) == len(found):
        return found
    if notes is not None:
        others = [str(p.relative_to(root)) for p, _ in found if not p.is_relative_to(logs)]
        notes.append(f"{root} holds lightning_logs/: using Lightning's checkpoints, not those in {listing(others, 3)}")
    return ours


def _subfolders(root: Path) -> list[Path]:
    out: list[Path] = []
    level = [root]
    for _ in range(_MAX_DEPTH):
        nxt: list[Path] = []
        for folder in level:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            nxt.extend(c for c in children if c.suffix != ".zarr")
        out.extend(nxt)
        level = nxt
    return out


def describe_folder(root: Path) -> str:
    """What a folder holds, in one line, for the error when no checkpoint is found there.

    Args:
        root: The folder.

    Returns:
        E.g. ``"found 2 folder(s) (checkpoint-1, logs) and files .json x2, .txt x1"``.

    """
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError:
        return "cannot list it"
    dirs = [p.name + "/" for p in entries if p.is_dir()]
    exts = Counter(p.suffix or "(no extension)" for p in entries if p.is_file())
    parts = []
    if dirs:
        parts.append(f"{len(dirs)} folder(s) ({listing(dirs, 4)})")
    if exts:
        parts.append("files " + ", ".join(f"{e} x{n}" for e, n in exts.most_common(6)))
    return "found " + (" and ".join(parts) if parts else "nothing")
