"""Redis errors are translated once, at the L2 boundary, into stable kinds."""

from __future__ import annotations

import pytest
import redis.exceptions as rexc

from resync_hierarchy.l2.redis import translate_redis_error


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (rexc.TimeoutError("slow"), "timeout"),
        (rexc.ConnectionError("refused"), "connection"),
        (rexc.MaxConnectionsError("too many"), "connection"),
        (rexc.NoPermissionError("NOPERM this user has no permissions"), "noperm"),
        (rexc.ResponseError("NOPERM no permissions to access a key"), "noperm"),
        (rexc.ReadOnlyError("READONLY replica"), "readonly"),
        (rexc.BusyLoadingError("LOADING"), "busy"),
        (rexc.ResponseError("OOM command not allowed when used memory > 'maxmemory'"), "oom"),
        (rexc.ResponseError("WRONGTYPE Operation against a key"), "response"),
        (ConnectionResetError("reset by peer"), "connection"),
        (rexc.RedisError("something else"), "other"),
    ],
)
def test_kinds(exc: BaseException, kind: str) -> None:
    translated = translate_redis_error(exc)
    assert translated.kind == kind
    assert type(exc).__name__ in str(translated)
