"""Migration from a legacy cache configuration to a new one."""

from __future__ import annotations

from resync_hierarchy.migration.flags import MigrationFlags
from resync_hierarchy.migration.fleet import FlagRecord, record_key
from resync_hierarchy.migration.manager import MigrationManager
from resync_hierarchy.migration.rollout import reads_new, rollout_bucket

__all__ = [
    "FlagRecord",
    "MigrationFlags",
    "MigrationManager",
    "reads_new",
    "record_key",
    "rollout_bucket",
]
