"""Find, order and read the checkpoints of a run directory (a re-export of :mod:`lca_cli.sources`).

Kept so that ``from lca_cli.checkpoints import find_checkpoints, read_checkpoint, check_state_dict,
CheckpointRef`` goes on working; the formats live in :mod:`lca_cli.sources`, one module per family.
"""

from __future__ import annotations

from lca_cli.sources import CheckpointRef, check_state_dict, find_checkpoints, read_checkpoint

__all__ = ["CheckpointRef", "check_state_dict", "find_checkpoints", "read_checkpoint"]
