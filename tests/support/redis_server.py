"""pytest policy on top of :mod:`resync_hierarchy.testing.redis_server`."""

from __future__ import annotations

import pytest

from resync_hierarchy.testing.redis_server import (
    INSTALL_HINT,
    SKIP_REASON,
    RedisReplyError,
    RedisServer,
    RedisServerError,
    free_port,
    redis_cli_binary,
    redis_required_by_env,
    redis_server_binary,
    redis_server_version,
    require_redis_reason,
    send_command,
)

__all__ = [
    "INSTALL_HINT",
    "SKIP_REASON",
    "RedisReplyError",
    "RedisServer",
    "RedisServerError",
    "free_port",
    "redis_cli_binary",
    "redis_required_by_env",
    "redis_server_binary",
    "redis_server_version",
    "require_redis",
    "require_redis_reason",
    "send_command",
]


def require_redis() -> None:
    """Skip the calling test/fixture if Redis is unavailable; fail instead under CI.

    Policy: missing binaries SKIP locally, but FAIL when ``CI`` is true or
    ``RESYNC_REQUIRE_REDIS=1`` so a CI image without Redis cannot go green silently.
    """
    reason = require_redis_reason()
    if reason is None:
        return
    if redis_required_by_env():
        pytest.fail(
            f"{reason}. They are mandatory here because CI or RESYNC_REQUIRE_REDIS=1 is set.",
            pytrace=False,
        )
    pytest.skip(reason)
