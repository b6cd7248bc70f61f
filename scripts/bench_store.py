#!/usr/bin/env python
"""Store benchmark: write/read throughput of the ``lca`` array per codec and chunk size, and the streaming pass.

Default mode: for each row length P, codec and chunk size it creates a real store with
:meth:`lca_cli.store.lcastore.LcaStore.create` (its ``rows_per_chunk`` and ``lca_compressors``), writes it
block by block with :meth:`LcaStore.write_block` exactly as ``lca compute`` does, then reads it back with
:meth:`LcaStore.iter_lca`, cold (the store's pages dropped from the page cache with ``posix_fadvise``; no
global cache drop) and warm. It prints MB/s of raw float32 LCA values, the writer's CPU time per row, and the
size on disk.

``--summarize``: writes one large store (default 10^9 values = 4 GB, in a temp dir that is deleted
afterwards; free space is checked first) with the store's current defaults, then measures, in a child process
each (for its own peak RSS), a streaming pass over ``iter_lca`` (a per-column sum, as a neuron summary
needs) and a raw read of the same files, cold and warm.

Values are synthetic LCA-like float32: random signs, log-normal magnitudes around 1e-6 (the products of
parameter steps and gradients have full-entropy mantissas) and a fraction of exact zeros (``--zeros``, 0.08:
about the share of MNIST-FC weights fed by constant border pixels). ``--from-store`` tiles real rows instead.

Usage::

    python scripts/bench_store.py                       # codecs x chunk sizes, ~2 minutes
    python scripts/bench_store.py --quick               # seconds
    python scripts/bench_store.py --summarize           # 10^9 values (4 GB in /tmp, deleted)
    python scripts/bench_store.py --row-writes          # 64 MB rows: direct chunk writes vs Zarr's, CPU per row
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lca_cli.core.layout import Layout  # noqa: E402
from lca_cli.store import format as store_mod  # noqa: E402
from lca_cli.store.lcastore import BlockRows, LcaStore  # noqa: E402

MB = 1e6


def codec(name: str) -> Any:
    """A codec list for ``create_array(compressors=...)`` by short name."""
    from zarr.codecs import BloscCodec, ZstdCodec

    table: dict[str, Any] = {
        "none": None,
        "lz4": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4)],
        "lz4-bitshuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=4)],
        "blosc-zstd": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4)],
        "zstd": [ZstdCodec(level=0)],  # zarr's default for new arrays
        "zstd1": [ZstdCodec(level=1)],
    }
    if name not in table:
        raise SystemExit(f"unknown codec {name!r}; known: {', '.join(table)}")
    return table[name]


def lca_like(rows: int, cols: int, zeros: float, seed: int) -> np.ndarray:
    """Synthetic LCA rows: random sign x log-normal magnitude around 1e-6, a fraction of exact zeros."""
    rng = np.random.default_rng(seed)
    mag = np.exp(rng.normal(np.log(1e-6), 2.0, size=(rows, cols))).astype(np.float32)
    out = np.where(rng.random((rows, cols)) < 0.5, -mag, mag)
    if zeros > 0:
        out[:, : int(zeros * cols)] = 0.0  # whole columns, as constant input pixels give
    return out


def rows_source(args: argparse.Namespace, cols: int, rows: int) -> Iterator[np.ndarray]:
    """Blocks of ``rows`` rows, cycling over a small pool (or over a real store's rows)."""
    if args.from_store:
        src = LcaStore.open(args.from_store)
        real = np.concatenate([r for _, r in src.iter_lca(src.sets[0])])
        reps = -(-cols // real.shape[1])
        real = np.tile(real, (1, reps))[:, :cols]
        i = 0
        while True:
            idx = (np.arange(rows) + i) % real.shape[0]
            yield real[idx]
            i += rows
    pool = [lca_like(rows, cols, args.zeros, seed) for seed in range(4)]
    i = 0
    while True:
        yield pool[i % len(pool)]
        i += 1


def drop_cache(path: Path) -> None:
    """Drop one directory tree's pages from the page cache (fsync first); nothing global."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def du(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def make_store(path: Path, cols: int, n_rows: int, compressors: Any, chunk_bytes: int) -> LcaStore:
    """A real lca store with the given codec and chunk size (``LcaStore.create``'s documented arguments)."""
    # The rows per chunk that store_mod.choose_rows_per_chunk picks for a chunk of ``chunk_bytes``.
    rows = int(min(1024, max(1, chunk_bytes // (4 * max(1, min(cols, store_mod.MAX_CHUNK_COLS))))))
    layout = Layout.from_shapes([("w", (cols,))])
    return LcaStore.create(
        path, layout=layout, sets=["train"], steps=list(range(n_rows + 1)), attrs={}, rows_per_chunk=rows,
        lca_compressors=compressors,
    )  # fmt: skip


def layout_for(cols: int) -> Layout:
    """The layout of a zoo model with ``cols`` parameters (ResNet-20, MNIST-FC), else one tensor ``w``."""
    from lca_cli.training.zoo.models import fc_mnist, resnet20

    for build in (resnet20, fc_mnist):
        layout = Layout.from_module(build())
        if layout.size == cols:
            return layout
    return Layout.from_shapes([("w", (cols,))])


def block_rows(start: int, lca: np.ndarray, layout: Layout | None = None) -> BlockRows:
    """A block as the pipeline hands it to the writer (per-tensor sums over ``layout``'s tensors)."""
    k = lca.shape[0]
    bounds = [(p.offset, p.stop) for p in layout.params] if layout else [(0, lca.shape[1])]
    return BlockRows(
        start=start,
        lca=lca,
        loss=np.zeros(k + 1),
        residual=np.zeros(k),
        splits=np.full(k, 2, np.int32),
        flagged=np.zeros(k, bool),
        tensor_lca=np.stack([lca[:, a:b].sum(1, dtype=np.float64) for a, b in bounds], axis=1),
        tensor_helped=np.stack([(lca[:, a:b] < 0).sum(1) for a, b in bounds], axis=1),
        tensor_hurt=np.stack([(lca[:, a:b] > 0).sum(1) for a, b in bounds], axis=1),
        buffer_lca=np.zeros(k),
    )


def write_all(store: LcaStore, args: argparse.Namespace, cols: int, n_rows: int) -> dict[str, float]:
    """Write every row block by block; wall and CPU time of the writes only (not of making the data)."""
    rpc = store.rows_per_chunk
    src = rows_source(args, cols, rpc)
    wall = cpu = lca_wall = 0.0
    for start in range(0, n_rows, rpc):
        block = next(src)[: min(rpc, n_rows - start)]
        t0, c0 = time.perf_counter(), time.process_time()
        store.array("train", "lca")[start : start + block.shape[0]] = block
        lca_wall += time.perf_counter() - t0
        store.write_block("train", block_rows(start, block))  # writes lca again, plus the small arrays
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    # write_block timed with lca written twice: subtract one lca write to get the real block cost
    return {
        "lca_write_s": lca_wall,
        "block_write_s": wall - lca_wall,
        "block_write_cpu_s": cpu * (wall - lca_wall) / wall,
    }


def read_all(store: LcaStore, read_ahead: bool = True, request_bytes: int | None = None) -> tuple[float, float]:
    """One streaming pass (per-column sum); returns (seconds, checksum)."""
    t0 = time.perf_counter()
    acc: np.ndarray | None = None
    for _, rows in store.iter_lca("train", read_ahead=read_ahead, request_bytes=request_bytes):
        s = rows.sum(0, dtype=np.float64)
        acc = s if acc is None else acc + s
    return time.perf_counter() - t0, float(acc.sum()) if acc is not None else 0.0


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Codecs x chunk sizes x row lengths."""
    results = []
    for cols in [int(c) for c in args.params.split(",")]:
        for chunk_mib in [float(c) for c in args.chunk_mib.split(",")]:
            # a whole number of chunks, so that sizes compare
            rpc = store_mod.choose_rows_per_chunk(cols, max(1, int(chunk_mib * 2**20) // (4 * cols)))
            n_rows = rpc * max(1, round(args.mib * 2**20 / (4 * cols) / rpc))
            for name in args.codecs.split(","):
                with tempfile.TemporaryDirectory(prefix="lca-bench-store-", dir=args.dir) as tmp:
                    path = Path(tmp) / "s.zarr"
                    store = make_store(path, cols, n_rows, codec(name), int(chunk_mib * 2**20))
                    w = write_all(store, args, cols, n_rows)
                    raw = n_rows * cols * 4
                    size = du(path / "train" / "lca")
                    drop_cache(path)
                    cold, _ = read_all(LcaStore.open(path))
                    warm, _ = read_all(LcaStore.open(path))
                    r = {
                        "params": cols,
                        "rows": n_rows,
                        "rows_per_chunk": store.rows_per_chunk,
                        "chunk_mib": chunk_mib,
                        "codec": name,
                        "write_MBps": raw / w["lca_write_s"] / MB,
                        "block_write_ms_per_row": 1e3 * w["block_write_s"] / n_rows,
                        "block_write_cpu_ms_per_row": 1e3 * w["block_write_cpu_s"] / n_rows,
                        "read_cold_MBps": raw / cold / MB,
                        "read_warm_MBps": raw / warm / MB,
                        "size_ratio": size / raw,
                    }
                    results.append(r)
                    print(
                        f"P={cols:>7} chunk {chunk_mib:>4g} MiB ({r['rows_per_chunk']:>4} rows) {name:15s} "
                        f"write {r['write_MBps']:7.0f} MB/s  block {r['block_write_ms_per_row']:6.2f} ms/row  "
                        f"read cold {r['read_cold_MBps']:7.0f}  warm {r['read_warm_MBps']:7.0f} MB/s  "
                        f"size {r['size_ratio']:.3f}",
                        file=sys.stderr,
                        flush=True,
                    )
    return results


def grid_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the grid."""
    lines = [
        "| P | chunk MiB (rows) | codec | write MB/s | write_block ms/row (CPU) | read cold MB/s | read warm MB/s "
        "| size/raw |",
        "|" + "---|" * 8,
    ]
    for r in rows:
        lines.append(
            f"| {r['params']} | {r['chunk_mib']:g} ({r['rows_per_chunk']}) | {r['codec']} | {r['write_MBps']:.0f} "
            f"| {r['block_write_ms_per_row']:.2f} ({r['block_write_cpu_ms_per_row']:.2f}) | {r['read_cold_MBps']:.0f} "
            f"| {r['read_warm_MBps']:.0f} | {r['size_ratio']:.3f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# --summarize: one big store, streamed


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_stream(path: Path, mode: str) -> None:
    """One pass in this (child) process; prints seconds, bytes and peak RSS as JSON.

    ``iter_lca@N`` streams with read requests of N MiB instead of :data:`lca_cli.store.format.READ_BYTES`.
    """
    mode, _, read_mib = mode.partition("@")
    request_bytes = int(float(read_mib) * 2**20) if read_mib else None
    if mode.startswith("summarize_"):  # the CLI command, in this process (VmHWM is this process's own)
        import contextlib

        from lca_cli.cli.app import main

        t0 = time.perf_counter()
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.suppress(SystemExit):
            main(["summarize", str(path), "--by", mode.partition("_")[2], "--format", "json"])
        seconds, check, nbytes = time.perf_counter() - t0, 0.0, 0
    elif mode.startswith("iter_lca"):
        seconds, check = read_all(LcaStore.open(path), read_ahead=mode == "iter_lca", request_bytes=request_bytes)
        nbytes = du(path / "train" / "lca")
    else:  # raw: read every chunk file of lca, in row order
        files = sorted(p for p in (path / "train" / "lca").rglob("*") if p.is_file())
        t0 = time.perf_counter()
        nbytes = 0
        for p in files:
            with open(p, "rb", buffering=0) as f:
                while chunk := f.read(8 << 20):
                    nbytes += len(chunk)
        seconds, check = time.perf_counter() - t0, 0.0
    print("BENCH " + json.dumps({"seconds": seconds, "bytes": nbytes, "peak_rss_mib": _peak_rss_mib(), "check": check}))


def run_child(path: Path, mode: str) -> dict[str, Any]:
    """A streaming pass in a fresh process (its own peak RSS)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-stream", mode, str(path)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("BENCH ")][-1]
    return dict(json.loads(line[6:]))


#: Store attributes ``lca summarize`` reports in its header (as ``lca compute`` writes them).
STORE_ATTRS: dict[str, Any] = {"method": "rk4", "tolerance": 1e-7, "rtol": 1e-4, "l1_tol": 0.0, "max_splits": 32}


def summarize_mode(args: argparse.Namespace) -> dict[str, Any]:
    """Write ``--values`` float32 values with the store's defaults, stream them, delete the store."""
    cols = int(args.params.split(",")[-1])
    n_rows = round(args.values / cols)
    raw = n_rows * cols * 4
    base = Path(args.dir or tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    print(f"summarize: {n_rows} x {cols} float32 = {raw / 1e9:.2f} GB raw in {base} ({free / 1e9:.0f} GB free)",
          file=sys.stderr)  # fmt: skip
    if free < 1.5 * raw + (2 << 30):
        raise SystemExit(f"not enough free space in {base}: {free / 1e9:.1f} GB free, need {1.5 * raw / 1e9:.1f} GB")
    tmp = Path(tempfile.mkdtemp(prefix="lca-bench-summarize-", dir=base))
    try:
        path = tmp / "big.zarr"
        layout = layout_for(cols)
        store = LcaStore.create(path, layout=layout, sets=["train"], steps=list(range(n_rows + 1)), attrs=STORE_ATTRS)
        rpc = store.rows_per_chunk
        src = rows_source(args, cols, rpc)
        t0 = time.perf_counter()
        for start in range(0, n_rows, rpc):
            block = next(src)[: min(rpc, n_rows - start)]
            store.write_block("train", block_rows(start, block, layout))
        write_s = time.perf_counter() - t0
        on_disk = du(path / "train" / "lca")
        print(f"  written in {write_s:.1f} s ({raw / write_s / 1e9:.2f} GB/s), {on_disk / 1e9:.2f} GB on disk, "
              f"{rpc} rows per chunk, {len(layout.params)} tensors", file=sys.stderr)  # fmt: skip
        out: dict[str, Any] = {"values": n_rows * cols, "rows": n_rows, "params": cols, "rows_per_chunk": rpc,
                               "raw_bytes": raw, "disk_bytes": on_disk, "write_GBps": raw / write_s / 1e9}  # fmt: skip
        for temp in ("cold", "warm"):
            extra = [f"iter_lca@{m}" for m in args.read_mib.split(",")] if args.read_mib else []
            for mode in ("raw", "iter_lca_noahead", "iter_lca", *extra, "summarize_layer", "summarize_neuron"):
                if temp == "cold":
                    drop_cache(path)
                t0 = time.perf_counter()
                r = run_child(path, mode)
                if mode.startswith("summarize_"):  # as a user runs it: process start-up and imports included
                    r["seconds"] = time.perf_counter() - t0
                gbps = (raw if mode != "raw" else r["bytes"]) / r["seconds"] / 1e9
                out[f"{mode}_{temp}_GBps"], out[f"{mode}_{temp}_seconds"] = gbps, r["seconds"]
                out[f"{mode}_{temp}_peak_rss_mib"] = r["peak_rss_mib"]
                print(f"  {temp:4s} {mode:16s} {r['seconds']:7.2f} s  {gbps:.2f} GB/s of lca, "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)  # fmt: skip
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (``/proc/stat``: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def row_writes_mode(args: argparse.Namespace) -> dict[str, Any]:
    """Durable row writes of a wide ``lca`` array: chunks made by lca and written directly, against Zarr's write.

    Both write the same rows (one row per chunk row, as lca stores a model this wide) into an array of a real
    store and fsync the chunk files; the two alternate round by round. Timed per row: wall time, this process's
    CPU time (user and system, every thread: Zarr's I/O threads included) and the machine's busy CPU time
    (``/proc/stat``: the kernel's writeback threads too).
    """
    import resource

    from lca_cli.store.chunks import write_chunks
    from lca_cli.store.fencing import FencedStore
    from lca_cli.store.placement import fsync_paths

    cols, n = int(args.row_params), args.rows
    base = Path(tempfile.mkdtemp(prefix="lca-rowwrites-", dir=args.dir))
    rows = lca_like(1, cols, args.zeros, 0)
    stores = {
        kind: make_store(base / f"{kind}.zarr", cols, n * args.rounds, None, 4 * min(cols, store_mod.MAX_CHUNK_COLS))
        for kind in ("direct", "zarr")
    }
    out: dict[str, list[dict[str, float]]] = {k: [] for k in stores}
    try:
        for r in range(args.rounds):
            for kind in ("direct", "zarr") if r % 2 == 0 else ("zarr", "direct"):
                store = stores[kind]
                arr = store.array("train", "lca")
                put = FencedStore(store.path).put_file
                t0, busy0, ru0 = time.perf_counter(), _busy_seconds(), resource.getrusage(resource.RUSAGE_SELF)
                for i in range(r * n, (r + 1) * n):
                    if kind == "direct":
                        assert write_chunks(arr, "train/lca", slice(i, i + 1), rows, put, store._stage)
                    else:
                        arr[i : i + 1] = rows
                    fsync_paths(store.chunk_files("train/lca", [i]))
                ru1 = resource.getrusage(resource.RUSAGE_SELF)
                out[kind].append({
                    "wall_s": (time.perf_counter() - t0) / n,
                    "user_s": (ru1.ru_utime - ru0.ru_utime) / n,
                    "system_s": (ru1.ru_stime - ru0.ru_stime) / n,
                    "machine_busy_s": (_busy_seconds() - busy0) / n,
                })  # fmt: skip
        for kind in stores:  # the bytes are the same: both read back as the rows written
            assert np.array_equal(stores[kind].array("train", "lca")[n * args.rounds - 1], rows[0])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {k: {m: float(np.median([v[m] for v in runs])) for m in runs[0]} for k, runs in out.items()}
    print(f"# row writes: {cols:,} float32 columns ({4 * cols / MB:.0f} MB a row), {n} rows x {args.rounds} rounds, "
          f"fsynced; medians of the rounds, seconds per row", file=sys.stderr)  # fmt: skip
    print(f"{'':8} {'wall':>7} {'user':>7} {'system':>7} {'machine':>8}")
    for kind, m in med.items():
        print(f"{kind:8} {m['wall_s']:7.3f} {m['user_s']:7.3f} {m['system_s']:7.3f} {m['machine_busy_s']:8.3f}")
    cpu = {k: m["user_s"] + m["system_s"] for k, m in med.items()}
    print(f"CPU per row, direct / zarr: {cpu['direct'] / cpu['zarr']:.2f}; machine busy: "
          f"{med['direct']['machine_busy_s'] / med['zarr']['machine_busy_s']:.2f}")  # fmt: skip
    return {"row_writes": out, "medians": med}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="84060,273066", help="row lengths P (MNIST-FC, ResNet-20)")
    p.add_argument("--codecs", default="none,lz4,lz4-bitshuffle,zstd,blosc-zstd", help="codecs to compare")
    p.add_argument("--chunk-mib", default="1,4,16", help="lca chunk sizes (full rows), MiB")
    p.add_argument("--mib", type=float, default=256, help="raw float32 MiB written per case")
    p.add_argument("--zeros", type=float, default=0.08, help="fraction of exact-zero columns")
    p.add_argument("--from-store", type=Path, help="tile the lca rows of this store instead of synthetic values")
    p.add_argument("--dir", help="where to write (default: the temp dir)")
    p.add_argument("--quick", action="store_true", help="16 MiB per case, 2 codecs, 2 chunk sizes")
    p.add_argument("--summarize", action="store_true", help="the large streaming pass instead of the grid")
    p.add_argument("--values", type=float, default=1e9, help="values of the --summarize store")
    p.add_argument("--read-mib", default="", help="--summarize: also stream with these read request sizes (MiB)")
    p.add_argument("--row-writes", action="store_true", help="durable writes of wide rows: lca's direct chunks vs Zarr")
    p.add_argument("--row-params", type=float, default=16e6, help="--row-writes: columns of a row (16M: 64 MB)")
    p.add_argument("--rows", type=int, default=5, help="--row-writes: rows per round")
    p.add_argument("--rounds", type=int, default=3, help="--row-writes: rounds, alternating which goes first")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--child-stream", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_stream:
        child_stream(Path(args.child_stream[1]), args.child_stream[0])
        return 0
    if args.quick:
        args.mib, args.codecs, args.chunk_mib = 16, "none,lz4", "1,4"
        args.values = min(args.values, 2e7)
    print(f"# lca bench_store {time.strftime('%Y-%m-%d')}, zarr {__import__('zarr').__version__}, "
          f"defaults: CHUNK_BYTES={store_mod.CHUNK_BYTES}, LCA_COMPRESSORS={store_mod.LCA_COMPRESSORS}",
          file=sys.stderr)  # fmt: skip
    if args.row_writes:
        res = row_writes_mode(args)
    elif args.summarize:
        res = summarize_mode(args)
        print(json.dumps(res, indent=1))
    else:
        rows = grid(args)
        print(grid_table(rows))
        res = {"grid": rows}
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
