"""Master discovery trusts the highest configuration epoch, not the first
sentinel to answer (no server needed: the sentinels are stand-ins)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.exceptions as rexc

from resync_hierarchy._url import parse_url
from resync_hierarchy.l2.redis import SentinelL2, _NewestMasterSentinel


class FakeSentinel:
    def __init__(self, answer: dict[str, Any] | BaseException | None, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.asked = 0

    async def sentinel_master(self, service_name: str) -> dict[str, Any]:
        self.asked += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.answer, BaseException):
            raise self.answer
        assert self.answer is not None
        return self.answer


def state(port: int, epoch: int, *, down: bool = False) -> dict[str, Any]:
    return {
        "ip": "127.0.0.1",
        "port": port,
        "config-epoch": epoch,
        "is_master": True,
        "is_sdown": down,
        "is_odown": False,
        "num-other-sentinels": 2,
    }


def discovery(*nodes: FakeSentinel) -> _NewestMasterSentinel:
    sentinel = _NewestMasterSentinel([])  # type: ignore[no-untyped-call]
    sentinel.sentinels = list(nodes)
    return sentinel


async def test_a_lagging_sentinel_does_not_name_the_old_master() -> None:
    lagging = FakeSentinel(state(7000, epoch=1))  # answers first, has not heard yet
    informed = FakeSentinel(state(7001, epoch=2), delay=0.005)
    also_informed = FakeSentinel(state(7001, epoch=2), delay=0.005)
    assert await discovery(lagging, informed, also_informed).discover_master("m") == (
        "127.0.0.1",
        7001,
    )


async def test_a_hung_sentinel_does_not_delay_discovery() -> None:
    hung = FakeSentinel(state(7000, epoch=1), delay=30)
    node = discovery(hung, FakeSentinel(state(7001, 3)), FakeSentinel(state(7001, 3)))
    async with asyncio.timeout(1):
        assert await node.discover_master("m") == ("127.0.0.1", 7001)


async def test_no_master_up_names_what_the_sentinels_said() -> None:
    refusing = FakeSentinel(rexc.ResponseError("No such master with that name"))
    down = FakeSentinel(state(7000, 1, down=True))
    unreachable = FakeSentinel(rexc.ConnectionError("refused"))
    with pytest.raises(rexc.ConnectionError, match=r"2 of 3 sentinels answered.*No such master"):
        await discovery(refusing, down, unreachable).discover_master("m")


async def test_switches_come_from_messages_and_only_newer_epochs_from_polls() -> None:
    backend = SentinelL2.from_sentinel_url(
        parse_url("redis+sentinel://127.0.0.1:1/m"), "x", timeout=0.2, max_connections=4
    )
    try:
        node = FakeSentinel(state(7000, 1))
        await backend._poll(node)
        assert (backend.master_address, backend.switches) == (("127.0.0.1", 7000), 0)
        await backend._on_switch_message(b"m 127.0.0.1 7000 127.0.0.1 7001")
        await backend._on_switch_message(b"other 127.0.0.1 7000 127.0.0.1 7009")  # not ours
        assert (backend.master_address, backend.switches) == (("127.0.0.1", 7001), 1)
        await backend._poll(node)  # a lagging sentinel, same epoch: ignored
        assert backend.master_address == ("127.0.0.1", 7001)
        node.answer = state(7002, 2)
        await backend._poll(node)
        assert (backend.master_address, backend.switches) == (("127.0.0.1", 7002), 2)
    finally:
        await backend.aclose()
