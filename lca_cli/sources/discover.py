"""Find a run's checkpoints by looking: flat files, per-step folders, or one sub-folder that holds them.

Order of search in ``RUN_DIR``:

1. flat weights files (:mod:`lca_cli.sources.files`) and per-step folders (:mod:`lca_cli.sources.folders`);
2. when there are none, the sub-folders (up to three levels down, e.g. Lightning's
   ``lightning_logs/version_0/checkpoints/``): exactly one of them holding checkpoints is used.

Ignored: hidden names (a writer's temporary files), optimizer/scheduler/RNG/training-argument files, and a
top-level file without a step beside per-step folders (a Trainer's final ``model.safetensors``). Two
checkpoints of one step are an error, except Lightning's ``last.ckpt`` alias of a numbered checkpoint.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from lca_cli.errors import CheckpointError, RunDirError
from lca_cli.sources.base import WEIGHT_SUFFIXES, CheckpointRef, confine, last_digits, listing
from lca_cli.sources.files import file_step
from lca_cli.sources.folders import INDEX_FILES, is_auxiliary, is_shard, step_folder

__all__ = ["describe_folder", "find_checkpoints"]

_LAST = re.compile(r"^last(-v\d+)?\.ckpt$")
_MAX_DEPTH = 3


def _scan(root: Path, unsafe_pickle: bool) -> tuple[list[CheckpointRef], list[str]]:
    """Checkpoints directly in ``root`` (files and step folders), and what was skipped (for notes)."""
    files: list[Path] = []
    refs: list[CheckpointRef] = []
    skipped: list[str] = []
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if path.suffix == ".zarr":
                continue
            ref = step_folder(path)
            if ref is not None:
                refs.append(ref)
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
    has_folders = bool(refs)  # so far, refs holds the step folders only
    for path in files:
        if has_folders and last_digits(path.stem) is None and not _LAST.match(path.name):
            skipped.append(path.name)  # e.g. a Trainer's final model.safetensors beside checkpoint-N/ folders
            continue
        try:
            refs.append(CheckpointRef(path, file_step(path, unsafe_pickle)))
        except FileNotFoundError:
            continue  # deleted while the run was listed (pruning, rotation): as if it had not been there
    return refs, skipped


def _dedupe(refs: list[CheckpointRef]) -> list[CheckpointRef]:
    by_step: dict[int, CheckpointRef] = {}
    for ref in refs:
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
    refs, skipped = _scan(root, unsafe_pickle)
    if skipped and notes is not None:
        notes.append(f"ignored {listing(skipped, 3)} in {root}: no step in the name, beside per-step folders")
    if refs or not nested:
        return [confine(r, root) for r in _dedupe(refs)]
    found: list[tuple[Path, list[CheckpointRef]]] = []
    for sub in _subfolders(root):
        try:
            sub_refs, _ = _scan(sub, unsafe_pickle)
        except CheckpointError:
            continue  # a broken sub-folder is not ours to judge; it is listed if nothing else is found
        if sub_refs:
            found.append((sub, sub_refs))
    if len(found) > 1:
        names = [str(p.relative_to(root)) for p, _ in found]
        raise RunDirError(f"{root}: several folders hold checkpoints ({listing(names, 4)}); pass one as RUN_DIR")
    if found:
        sub, sub_refs = found[0]
        if notes is not None:
            notes.append(f"checkpoints found in {sub}")
        return [confine(r, root) for r in _dedupe(sub_refs)]
    return []


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
