"""The Zarr store: its format, chunk I/O, integrity and repair, placement, fingerprints, the lock and claims.

Other layers import what they use from here (``from lca_cli.store import LcaStore, verify``); the modules
own one thing each:

* :mod:`.format`: the format version, the arrays' names, dtypes, fill values and chunking, the attributes;
* :mod:`.chunks`: chunk files, their CRC-32C checksums (one check, used by reads and by integrity), direct
  reads, streaming and batched writes;
* :mod:`.coordinates`: the coordinate arrays and descriptive attributes xarray reads;
* :mod:`.lcastore`: :class:`LcaStore`, which creates, opens, reads, grows and writes a store;
* :mod:`.integrity`: what is damaged (``lca verify``) and the repair that recomputes exactly that;
* :mod:`.placement`: what is at a path, durable writes, atomic creation and replacement;
* :mod:`.identity`: checkpoint fingerprints and matching a store's checkpoints to a run's files;
* :mod:`.claims`: the store lock and the claims of cooperating processes.

``docs/store-format.md`` is the reference for reading a store without lca.
"""

from lca_cli.store.claims import LEASE_SECONDS, Holder, Keeper, Lease, read_claim, store_lock_path
from lca_cli.store.format import (
    FINGERPRINT_BYTES,
    FORMAT_VERSION,
    HELPED_RULE,
    READABLE_VERSIONS,
    choose_rows_per_chunk,
    column_counts,
)
from lca_cli.store.identity import Alignment, align, check_fingerprints, fingerprint, fingerprints
from lca_cli.store.integrity import Damage, Report, prepare_repair, quick_check, remove_partial_files, verify
from lca_cli.store.lcastore import BlockRows, LcaStore
from lca_cli.store.placement import (
    PathState,
    exchange,
    fsync_paths,
    fsync_tree,
    inspect_path,
    new_token,
    remove_stale_sibling,
    remove_store,
    sibling,
    stale_siblings,
    storage_error,
    storage_errors,
)

__all__ = [  # noqa: RUF022 (grouped by what the names are for, not sorted)
    # the store
    "BlockRows",
    "LcaStore",
    # its format
    "FINGERPRINT_BYTES",
    "FORMAT_VERSION",
    "HELPED_RULE",
    "READABLE_VERSIONS",
    "choose_rows_per_chunk",
    "column_counts",
    # integrity and repair
    "Damage",
    "Report",
    "prepare_repair",
    "quick_check",
    "remove_partial_files",
    "verify",
    # the tie to the run's checkpoints
    "Alignment",
    "align",
    "check_fingerprints",
    "fingerprint",
    "fingerprints",
    # the lock and claims
    "LEASE_SECONDS",
    "Holder",
    "Keeper",
    "Lease",
    "read_claim",
    "store_lock_path",
    # where a store lives on disk
    "PathState",
    "exchange",
    "fsync_paths",
    "fsync_tree",
    "inspect_path",
    "new_token",
    "remove_stale_sibling",
    "remove_store",
    "sibling",
    "stale_siblings",
    "storage_error",
    "storage_errors",
]
