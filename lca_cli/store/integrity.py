"""Integrity of a store: what is damaged, and getting it ready to recompute exactly that.

Every chunk a done row needs must exist with its exact size (chunks are uncompressed, so the size is known;
:func:`lca_cli.store.chunks.chunk_size`) and end with a CRC-32C checksum of its bytes
(:func:`lca_cli.store.chunks.checksum_ok`, the same check every direct read makes). A missing chunk never
reads as fill values (zeros) without notice:

* :func:`quick_check` (at the start of ``compute``, and of ``summarize`` and ``report``) looks at every chunk
  a done row needs: present, no data read. Reads check the same for each array they read, when they read it
  (:meth:`LcaStore.read`, :meth:`LcaStore.iter_lca` before streaming), and every read verifies checksums;
* :func:`verify` (``lca verify``) also reads every chunk and checks its size and checksum;
* :func:`prepare_repair` (``lca compute --repair``) marks the rows of damaged chunks not done and deletes
  the damaged chunk files, so that computing recomputes exactly those rows (whole row chunks).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lca_cli.errors import StoreError
from lca_cli.store.chunks import Encoding, chunk_problem, chunk_size, col_chunks, list_chunks
from lca_cli.store.format import COORDINATES, SET_COORDINATES
from lca_cli.store.placement import fsync_paths, storage_errors

if TYPE_CHECKING:  # the store calls quick_check when opened with check=True: only its type is needed here
    from lca_cli.store.lcastore import LcaStore

__all__ = ["Damage", "Report", "prepare_repair", "quick_check", "remove_partial_files", "verify"]


@dataclass(frozen=True)
class Damage:
    """One damaged chunk.

    Attributes:
        node: Array path (``"train/lca"``, ``"steps"``).
        chunk: Chunk index along the first axis.
        rows: Rows (pairs) of the store it holds (for ``steps`` and ``fingerprint``: checkpoints).
        problem: ``missing``, ``truncated (n of m bytes)``, ``checksum mismatch`` or ``unreadable (...)``.
        path: The chunk file.

    """

    node: str
    chunk: int
    rows: range
    problem: str
    path: Path

    @property
    def coordinate(self) -> bool:
        """A coordinate array (labels for readers, rebuilt from the layout and steps: no row is lost)."""
        return self.node.rsplit("/", 1)[-1] in (*COORDINATES, *SET_COORDINATES)

    @property
    def set_name(self) -> str | None:
        """The evaluation set, or None for a store-level array."""
        head, sep, _ = self.node.rpartition("/")
        return head if sep else None

    def describe(self) -> str:
        """One phrase: ``train/lca chunk 1 (rows 4..7): checksum mismatch``."""
        if self.coordinate:
            return f"{self.node} chunk {self.chunk} (coordinates): {self.problem}"
        what = "checkpoints" if self.set_name is None else "rows"
        return f"{self.node} chunk {self.chunk} ({what} {_span(self.rows)}): {self.problem}"


def _span(r: range) -> str:
    return f"{r.start}..{r.stop - 1}" if len(r) != 1 else str(r.start)


def _spans(rows: list[int]) -> str:
    out: list[str] = []
    for t in rows:
        if out and out[-1].endswith(f"{t - 1}") and ".." in out[-1]:
            out[-1] = out[-1].rsplit("..", 1)[0] + f"..{t}"
        elif out and out[-1] == str(t - 1):
            out[-1] = f"{t - 1}..{t}"
        else:
            out.append(str(t))
    return ", ".join(out[:6]) + (f" (+{len(out) - 6} more)" if len(out) > 6 else "")


@dataclass
class Report:
    """What :func:`verify` or :func:`quick_check` found.

    Attributes:
        store: Store path.
        format_version: Store format.
        n_pairs: Pairs T.
        done: Rows done, per set.
        damage: Damaged chunks.
        full: Whether checksums were verified (``verify``) or only sizes (``quick_check``).
        checked: Chunk files looked at.
        unmarked: Per set, rows in stored ``lca`` chunks whose ``done`` chunk is missing (``verify`` only). Not
            damage: they count as not done and the next compute recomputes them. A kill between a block's data
            and its done flags leaves this too, so it cannot be told from a deleted ``done`` chunk; either way
            no row is read as zeros.

    """

    store: Path
    format_version: int
    n_pairs: int
    done: dict[str, int] = field(default_factory=dict)
    damage: list[Damage] = field(default_factory=list)
    full: bool = False
    checked: int = 0
    unmarked: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No damage."""
        return not self.damage

    def damaged_rows(self) -> dict[str, list[int]]:
        """Rows of each set in damaged chunks (store-level damage affects every set's rows)."""
        out: dict[str, set[int]] = {s: set() for s in self.done}
        for d in self.damage:
            if d.coordinate:
                continue
            for s in [d.set_name] if d.set_name is not None else list(out):
                out[s].update(d.rows)
        return {s: sorted(r) for s, r in out.items()}

    def summary(self) -> str:
        """One line: what is damaged and what to do."""
        if self.ok:
            return f"{self.store}: OK"
        rows = self.damaged_rows()
        n = len(set().union(*map(set, rows.values()))) if rows else 0
        store_level = [d for d in self.damage if d.set_name is None and not d.coordinate]
        fix = (
            "the store's own arrays are damaged: recompute it with --overwrite"
            if store_level
            else "`lca compute RUN_DIR --out STORE --repair` recomputes them while their checkpoints exist"
        )
        return (
            f"{self.store} is damaged: {len(self.damage)} chunk(s), {n} row(s); first: {self.damage[0].describe()}; "
            f"{fix}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "store": str(self.store),
            "format_version": self.format_version,
            "pairs": self.n_pairs,
            "checksums_verified": self.full,
            "chunks_checked": self.checked,
            "done": self.done,
            "ok": self.ok,
            "damaged_rows": self.damaged_rows(),
            "unmarked_rows": self.unmarked,
            "damage": [
                {
                    "array": d.node,
                    "chunk": d.chunk,
                    "rows": [d.rows.start, d.rows.stop],
                    "problem": d.problem,
                    "file": str(d.path),
                }
                for d in self.damage
            ],
        }

    def lines(self) -> Iterator[str]:
        """A short human-readable report."""
        yield (
            f"{self.store}: store format {self.format_version}, {self.n_pairs} pairs, {self.checked} chunk files "
            + ("checked with their checksums" if self.full else "checked for presence and size")
        )
        rows = self.damaged_rows()
        for s, n in self.done.items():
            bad = rows.get(s, [])
            state = f"{len(bad)} damaged row(s): {_spans(bad)}" if bad else "OK"
            yield f"  {s}: {n} of {self.n_pairs} rows done; {state}"
        for d in self.damage:
            yield f"  damaged: {d.describe()} [{d.path}]"
        for s, unmarked in self.unmarked.items():
            yield (
                f"  {s}: rows {_spans(unmarked)} lie in stored lca chunks but their done chunk is missing (deleted, "
                "or a kill between a block's data and its done flags); they count as not done and the next lca "
                "compute recomputes them"
            )


def _rows_of(store: LcaStore, node: str, chunk: int) -> range:
    n_rows = store.n_pairs + (1 if node in ("steps", "fingerprint") else 0)
    size = int(store.node(node).chunks[0])
    first, stop = chunk * size, min((chunk + 1) * size, n_rows)
    if node.endswith("/loss"):  # loss[i] is the start of row i; loss[T] belongs to row T - 1
        first, stop = min(first, store.n_pairs - 1), min(stop, store.n_pairs)
    return range(first, max(first + 1, stop))


def _unmarked_rows(store: LcaStore, set_name: str) -> list[int]:
    """Rows of ``done`` chunks that are missing while ``lca`` chunks of those rows are stored (see Report)."""
    done_node, lca_node = f"{set_name}/done", f"{set_name}/lca"
    have_done = {c[0] for c in list_chunks(store.path, done_node, sizes=False)}
    have_lca = {c[0] for c in list_chunks(store.path, lca_node, sizes=False)}
    done_rows, lca_rows = int(store.node(done_node).chunks[0]), int(store.node(lca_node).chunks[0])
    out: list[int] = []
    for i in range(store.row_chunks(done_node)):
        if i in have_done:
            continue
        rows = range(i * done_rows, min((i + 1) * done_rows, store.n_pairs))
        out += [t for t in rows if t // lca_rows in have_lca]
    return out


def _needed_chunks(store: LcaStore, node: str, done: np.ndarray) -> list[int]:
    size = int(store.node(node).chunks[0])
    return sorted({int(r) // size for r in np.flatnonzero(done)})


def _read_done(store: LcaStore, set_name: str, report: Report) -> np.ndarray:
    """A set's done mask read chunk by chunk; an unreadable chunk is damage and its rows count as not done."""
    node = f"{set_name}/done"
    arr = store.array(set_name, "done")
    size = int(arr.chunks[0])
    done = np.zeros(store.n_pairs, bool)
    for i in range(store.row_chunks(node)):
        a, b = i * size, min((i + 1) * size, store.n_pairs)
        try:
            done[a:b] = np.asarray(arr[a:b])
        except Exception as exc:
            problem = f"unreadable ({str(exc).splitlines()[0][:60] if str(exc) else type(exc).__name__})"
            report.damage.append(Damage(node, i, range(a, b), problem, store.chunk_files(node, [i])[0]))
    return done


#: One chunk file to look at: (node, row chunk, path, expected size, size found (None: missing; -1: not
#: stat'ed), verify its checksum).
_Job = tuple[str, int, str, int | None, int | None, bool]


def _plan(store: LcaStore, report: Report, full: bool) -> list[_Job]:
    """The chunk files to look at: every one with ``full``, else every one a done row needs."""
    jobs: list[_Job] = []
    nodes = store.nodes()

    def plan(node: str, need: set[int]) -> None:
        arr = store.node(node)
        checksum = Encoding.of(arr).checksum
        # Checksummed chunks are verified on every read, truncation included: the cheap check only needs
        # to know they exist.
        sizes = full or not checksum
        listing = list_chunks(store.path, node, sizes)
        size = chunk_size(arr) if sizes else None
        chunks = set(range(store.row_chunks(node))) if full else need
        for i in sorted(chunks):
            for j in range(col_chunks(arr)):
                found = listing.get((i,) if arr.ndim == 1 else (i, j))
                if found is None and i not in need:
                    continue
                path = found[0] if found else str(store.chunk_files(node, [i])[j])
                jobs.append((node, i, path, size, found[1] if found else None, full and checksum))

    # Store-level arrays and coordinates: every chunk.
    for node in nodes:
        if node in ("steps", "fingerprint") or node.rsplit("/", 1)[-1] in (*COORDINATES, *SET_COORDINATES):
            plan(node, set(range(store.row_chunks(node))))
    for s in store.sets:
        done = _read_done(store, s, report) if full else store.read(s, "done").astype(bool)
        report.done[s] = int(done.sum())
        if full:
            unmarked = _unmarked_rows(store, s)
            if unmarked:
                report.unmarked[s] = unmarked
        for node in nodes:
            if not node.startswith(f"{s}/") or node == f"{s}/done" or node.rsplit("/", 1)[-1] in SET_COORDINATES:
                continue
            plan(node, set(_needed_chunks(store, node, done)))
    return jobs


def _scan(store: LcaStore, full: bool) -> Report:
    report = Report(store.path, store.format_version, store.n_pairs, full=full)
    jobs = _plan(store, report, full)
    report.checked = len(jobs)

    def run(job: _Job) -> Damage | None:
        node, i, path, size, actual, checksum = job
        if actual is None and not checksum:
            problem: str | None = "missing"
        elif actual is not None and actual < 0 and not checksum:
            problem = None  # presence was all that was asked
        else:
            problem = chunk_problem(path, size, checksum, actual)
        return None if problem is None else Damage(node, i, _rows_of(store, node, i), problem, Path(path))

    if full:
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="lca-verify") as pool:
            report.damage.extend(d for d in pool.map(run, jobs) if d is not None)
    else:
        report.damage.extend(d for d in map(run, jobs) if d is not None)
    report.damage.sort(key=lambda d: (d.node, d.chunk))
    return report


def quick_check(store: LcaStore) -> Report:
    """Check, without reading data, that every chunk a done row needs exists (reads verify the rest).

    Args:
        store: An open store.

    Returns:
        The report (no damage).

    Raises:
        StoreError: One line naming the damage and the fix, if any.

    """
    report = _scan(store, full=False)
    if not report.ok:
        raise StoreError(report.summary())
    return report


def verify(store: LcaStore) -> Report:
    """Read every chunk of the store and check its size and checksum (``lca verify``).

    Args:
        store: An open store (open it with ``check=False``: damage is reported, not raised).

    Returns:
        The report.

    """
    return _scan(store, full=True)


def prepare_repair(store: LcaStore, report: Report) -> dict[str, list[int]]:
    """Mark the rows of damaged chunks not done and delete the damaged chunk files.

    ``done`` chunks go first (so an interruption leaves those rows not done, which a rerun recomputes), then
    the damaged data chunks (so that rewriting a chunk never has to read a damaged one back).

    Args:
        store: The store, open for writing, under its lock.
        report: From :func:`verify`.

    Returns:
        The rows to recompute, per set.

    Raises:
        StoreError: If a store-level array (``steps``, ``fingerprint``) is damaged.

    """
    store_level = [d for d in report.damage if d.set_name is None and not d.coordinate]
    if store_level:
        raise StoreError(f"{report.summary()} ({store_level[0].describe()})")
    rows = report.damaged_rows()
    if any(d.coordinate for d in report.damage):
        store.rewrite_coordinates()
    with storage_errors(f"repairing {store.path}"):
        done_files: list[Path] = []
        for s, bad in rows.items():
            size = int(store.node(f"{s}/done").chunks[0])
            done_files += store.chunk_files(f"{s}/done", sorted({t // size for t in bad}))
        for path in done_files:
            path.unlink(missing_ok=True)
        fsync_paths(done_files)
        damaged = [d.path for d in report.damage if not d.coordinate]
        for path in damaged:
            path.unlink(missing_ok=True)
        fsync_paths(damaged)
    return {s: r for s, r in rows.items() if r}


def remove_partial_files(root: Path) -> int:
    """Delete ``*.partial`` files (chunk writes killed before their rename) inside a store; call under its lock.

    Returns:
        How many were deleted.

    """
    count = 0
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            if f.endswith(".partial"):
                (Path(dirpath) / f).unlink(missing_ok=True)
                count += 1
    return count
