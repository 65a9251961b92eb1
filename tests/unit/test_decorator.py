"""@cached on an L1-only hierarchy (memory://): keys, single flight, TTLs,
negative caching, bypass/refresh/invalidate, refusals. The same behaviour
against a real redis-server is in tests/integration/test_decorator_redis.py."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, NamedTuple

import pytest
from structlog.testing import capture_logs

from resync_hierarchy import (
    CacheError,
    CacheHierarchy,
    ConfigurationError,
    HierarchyConfig,
    InvalidKeyError,
    InvalidTTLError,
    SerializationError,
    UnkeyableArgumentError,
    cached,
)
from resync_hierarchy.testing import FakeClock


@pytest.fixture
async def cache() -> AsyncIterator[CacheHierarchy]:
    async with CacheHierarchy.from_url("memory://", namespace="deco") as hierarchy:
        yield hierarchy


class Color(enum.Enum):
    RED = 1


class Mode(enum.StrEnum):
    FAST = "fast"


@dataclasses.dataclass(frozen=True)
class Options:
    temperature: float
    stop: tuple[str, ...] = ()


class Level(enum.IntEnum):
    HIGH = 3


class Ratio(float):
    pass


class Stamp(dt.datetime):
    pass


class Point(NamedTuple):
    x: int
    y: int


class Tenant:
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id

    def __cache_key__(self) -> str:
        return self.tenant_id


# ---------------------------------------------------------------------- keys


async def test_defaults_and_keywords_give_one_key(cache: CacheHierarchy) -> None:
    @cached(cache, ttl=300)
    async def answer(prompt: str, model: str = "m1", *, temperature: float = 0.0) -> str:
        return prompt

    key = answer.key_for("hi")
    assert key == f"fn:{__name__}.test_defaults_and_keywords_give_one_key.<locals>.answer:v1:" + (
        '["hi","m1",0.0]'
    )
    assert answer.key_for(prompt="hi") == key
    assert answer.key_for("hi", model="m1") == key
    assert answer.key_for("hi", "m1", temperature=0.0) == key
    assert answer.key_for(model="m1", prompt="hi") == key
    assert answer.key_for("hi", "m2") != key
    assert answer.key_for("hi", temperature=0.5) != key


async def test_values_of_different_kinds_never_share_a_key(cache: CacheHierarchy) -> None:
    @cached(cache, name="probe")
    async def probe(value: Any) -> Any:
        return None

    values: list[Any] = [
        1,
        "1",
        True,
        1.0,
        None,
        "null",
        b"1",
        [1],
        {"1": 1},
        Decimal("1"),
        Color.RED,
        dt.date(2024, 1, 1),
        dt.datetime(2024, 1, 1),
        dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        "2024-01-01",
        frozenset({1}),
        0,
        False,
        "",
        [],
        {},
        (1 << 70),
        -0.0,
        0.0,
        float("inf"),
        dt.timedelta(seconds=1),
        uuid.UUID(int=1),
    ]
    keys = [probe.key_for(v) for v in values]
    assert len(set(keys)) == len(values), keys


async def test_supported_values_key_by_value(cache: CacheHierarchy) -> None:
    @cached(cache, name="probe")
    async def probe(value: Any) -> Any:
        return None

    assert probe.key_for((1, "a")) == probe.key_for([1, "a"])
    assert probe.key_for(Point(1, 2)) == probe.key_for((1, 2))
    assert probe.key_for({"b": 1, "a": 2}) == probe.key_for({"a": 2, "b": 1})
    assert probe.key_for({3, 1, 2}) == probe.key_for({2, 3, 1})
    assert probe.key_for(Mode.FAST) == probe.key_for("fast")  # a StrEnum is its str
    assert probe.key_for(Options(0.5, ("\n",))) == probe.key_for(Options(0.5, ("\n",)))
    assert probe.key_for(Options(0.5)) != probe.key_for(Options(0.7))
    assert probe.key_for(Tenant("acme")) == probe.key_for(Tenant("acme"))
    assert probe.key_for(Tenant("acme")) != probe.key_for(Tenant("other"))
    assert probe.key_for(bytearray(b"x")) == probe.key_for(b"x")
    assert probe.key_for(uuid.UUID(int=7)) == probe.key_for(uuid.UUID(int=7))
    assert probe.key_for(dt.time(1, 2)).endswith('[t"01:02:00"]')
    assert probe.key_for(Color.RED).endswith(f'[E"{__name__}.Color.RED"]')
    assert probe.key_for(Level.HIGH) == probe.key_for(3)  # an IntEnum is its int
    assert probe.key_for(Ratio(0.5)) == probe.key_for(0.5)
    assert probe.key_for(OrderedDict(b=1, a=2)) == probe.key_for({"a": 2, "b": 1})
    assert probe.key_for(Stamp(2024, 1, 1)) == probe.key_for(dt.datetime(2024, 1, 1))
    assert probe.key_for(Stamp(2024, 1, 1)) != probe.key_for(dt.date(2024, 1, 1))


async def test_long_arguments_are_hashed_and_keys_fit_max_key_bytes() -> None:
    async with CacheHierarchy.from_url("memory://", max_key_bytes=120) as small:

        @cached(small, ttl=60)
        async def answer(prompt: str) -> str:
            return prompt[:5]

        prompt = "x" * 10_000
        key = answer.key_for(prompt)
        assert len(key.encode()) <= 120
        assert key.endswith("#" + key.rsplit("#", 1)[1])
        assert len(key.rsplit("#", 1)[1]) == 32
        assert answer.key_for(prompt + "y") != key
        huge = "h" * 70_000  # beyond what the memo keeps: hashed on every call
        assert await answer(huge) == "hhhhh" and await answer(huge) == "hhhhh"
        for n in range(70):  # 4.2 M characters: more than the memos may hold
            assert await answer(f"{n:05}" + "z" * 60_000) == f"{n:05}"
        assert await answer(prompt) == "xxxxx"
        assert await answer(prompt) == "xxxxx"
        assert await small.get(key) == "xxxxx"

        @cached(small, name="n" * 200)  # even the head does not fit: everything hashed
        async def long_name(prompt: str) -> str:
            return prompt

        whole = long_name.key_for("a")
        assert whole.startswith("#") and len(whole) == 33
        assert long_name.key_for("b") != whole

    async def f(a: str) -> str:
        return a

    async with CacheHierarchy.from_url("memory://", max_key_bytes=20) as tiny:
        with pytest.raises(ConfigurationError, match="max_key_bytes >= 33"):
            cached(tiny)(f)  # refused when decorating
        late = cached(lambda: tiny)(f)
        with pytest.raises(ConfigurationError, match="max_key_bytes >= 33"):
            late.key_for("a")  # or, with a provider, at the first call


async def test_readable_limit_non_ascii_and_surrogates(cache: CacheHierarchy) -> None:
    @cached(cache, name="f", readable_key_chars=0)
    async def always_hashed(a: str) -> str:
        return a

    assert "#" in always_hashed.key_for("a")

    @cached(cache, name="g")
    async def readable(a: str) -> int:
        return len(a)

    assert readable.key_for("héllo") == 'fn:g:v1:["héllo"]'
    lone = readable.key_for("\ud800")  # not UTF-8 encodable: hashed, still a valid key
    assert "#" in lone
    assert await readable("\ud800") == 1
    assert await cache.get(lone) == 1


async def test_version_prefix_and_name_change_the_key(cache: CacheHierarchy) -> None:
    async def body(a: str) -> str:
        return a

    base = cached(cache, name="f")(body).key_for("a")
    assert cached(cache, name="f", version=2)(body).key_for("a") != base
    assert cached(cache, name="f", prefix="llm")(body).key_for("a").startswith("llm:f:v1:")
    assert cached(cache)(body).key_for("a").startswith(f"fn:{__name__}.")
    assert base == 'fn:f:v1:["a"]'


async def test_keys_are_the_same_in_another_process(cache: CacheHierarchy) -> None:
    source = """
import dataclasses, datetime as dt, decimal, enum, json, uuid
from resync_hierarchy import CacheHierarchy, cached

class Tier(enum.Enum):
    GOLD = "g"

@dataclasses.dataclass
class Opts:
    temperature: float
    tags: frozenset

def compute():
    cache = CacheHierarchy.from_url("memory://")

    @cached(cache, name="stable.answer")
    async def answer(prompt, model="m1", opts=None, **extra):
        return None

    calls = [
        (("hello",), {}),
        (("hello",), {"model": "m2"}),
        (("p" * 5000,), {}),
        (({"b": [1, 2.5, None], "a": {"x", "y", "z"}},), {}),
        ((b"\\x00\\xff", "m1", Opts(0.2, frozenset({"s", "t", "u"}))), {}),
        ((dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc), Tier.GOLD), {}),
        ((uuid.UUID(int=5), decimal.Decimal("1.50")), {"seed": 7, "top_p": 0.9}),
        ((frozenset(range(50)),), {}),
    ]
    return [answer.key_for(*a, **k) for a, k in calls]
"""
    namespace: dict[str, Any] = {"__name__": "__main__"}  # as in the child's `python -c`
    exec(compile(source, "<keys>", "exec"), namespace)  # noqa: S102 - our own source
    here = namespace["compute"]()
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    child = subprocess.run(
        [sys.executable, "-c", source + "\nprint(json.dumps(compute()))"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert json.loads(child.stdout) == here
    assert len(set(here)) == len(here)
    assert os.environ.get("PYTHONHASHSEED") != "4242"


# ---------------------------------------------------------------------- refusals


async def test_unkeyable_arguments_are_refused_with_a_clear_error(cache: CacheHierarchy) -> None:
    runs = 0

    @cached(cache)
    async def summarise(text: Any, options: Any = None) -> str:
        nonlocal runs
        runs += 1
        return "s"

    with pytest.raises(UnkeyableArgumentError) as info:
        await summarise(lambda: 1)
    message = str(info.value)
    assert "argument 'text'" in message and "summarise()" in message
    assert "key=" in message and "ignore=" in message
    assert isinstance(info.value, CacheError) and isinstance(info.value, TypeError)
    with tempfile.TemporaryFile() as handle, pytest.raises(UnkeyableArgumentError, match="file"):
        await summarise("t", handle)
    with pytest.raises(UnkeyableArgumentError, match=r"argument 'options'\['k'\]\[1\]"):
        await summarise("t", {"k": [1, object()]})
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(UnkeyableArgumentError, match="nested more than"):
        await summarise(loop)
    with pytest.raises(UnkeyableArgumentError, match="identity"):
        summarise.key_for(object())
    # A wrong call fails as the undecorated function would, before anything runs.
    with pytest.raises(TypeError, match=r"summarise\(\) missing 1 required"):
        await summarise()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        await summarise("a", nope=1)  # type: ignore[call-arg]
    with pytest.raises(UnkeyableArgumentError, match="do not match"):
        summarise.key_for("a", "b", "c")  # type: ignore[call-arg]
    assert runs == 0
    assert cache.size() == 0


async def test_decoration_mistakes_raise_configuration_errors(cache: CacheHierarchy) -> None:
    def sync(a: str) -> str:
        return a

    async def f(a: str) -> str:
        return a

    with pytest.raises(ConfigurationError, match="async functions"):
        cached(cache)(sync)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="cache first"):
        cached(f)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="CacheHierarchy"):
        cached("redis://x")(f)  # type: ignore[arg-type]
    with pytest.raises(InvalidTTLError):
        cached(cache, ttl=0)(f)
    with pytest.raises(InvalidTTLError):
        cached(cache, negative_ttl=-1)(f)
    with pytest.raises(InvalidTTLError, match="positive number"):
        cached(cache, ttl="60")(f)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not parameters"):
        cached(cache, ignore=("self",))(f)
    with pytest.raises(ConfigurationError, match="not a parameter"):
        cached(cache, key="x:{b}")(f)
    with pytest.raises(ConfigurationError, match="invalid"):
        cached(cache, key="x:{a")(f)
    with pytest.raises(ConfigurationError, match="format string or a callable"):
        cached(cache, key=3)(f)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="readable_key_chars"):
        cached(cache, readable_key_chars=-1)(f)
    with pytest.raises(ConfigurationError, match="version"):
        cached(cache, version="")(f)


# ---------------------------------------------------------------------- behaviour


async def test_single_flight_200_callers_run_once(cache: CacheHierarchy) -> None:
    runs = 0
    gate = asyncio.Event()

    @cached(cache, ttl=300)
    async def answer(prompt: str, model: str = "m1") -> str:
        nonlocal runs
        runs += 1
        await gate.wait()
        return f"{model}:{prompt}"

    callers = [asyncio.create_task(answer("q")) for _ in range(100)]
    callers += [asyncio.create_task(answer(prompt="q", model="m1")) for _ in range(100)]
    await asyncio.sleep(0.01)
    gate.set()
    assert set(await asyncio.gather(*callers)) == {"m1:q"}
    assert runs == 1
    assert await answer("q") == "m1:q"
    assert runs == 1
    assert answer.stats()["runs"] == 1
    assert await cache.get(answer.key_for("q")) == "m1:q"


async def test_ttl_and_negative_caching_with_a_fake_clock() -> None:
    clock = FakeClock()
    config = HierarchyConfig(url="memory://", namespace="ttl", default_ttl=1000.0)
    cache = CacheHierarchy(config, clock=clock)
    runs: dict[str, int] = {}

    @cached(cache, ttl=300, negative_ttl=5)
    async def lookup(name: str) -> str | None:
        runs[name] = runs.get(name, 0) + 1
        return None if name == "ghost" else name.upper()

    @cached(cache, ttl=300)
    async def no_negative(name: str) -> str | None:
        runs["nn"] = runs.get("nn", 0) + 1
        return None

    @cached(cache, cache_none=True)  # None stored with ttl (here default_ttl)
    async def with_none(name: str) -> None:
        runs["wn"] = runs.get("wn", 0) + 1

    @cached(cache, ttl=lambda result: 10 if result == "short" else 100)
    async def chosen(value: str) -> str:
        runs[value] = runs.get(value, 0) + 1
        return value

    async with cache:
        assert await lookup("ada") == "ADA"
        assert await lookup("ghost") is None
        assert await lookup("ada") == "ADA" and await lookup("ghost") is None
        assert runs == {"ada": 1, "ghost": 1}
        clock.advance(6)  # past negative_ttl, within ttl
        assert await lookup("ghost") is None and await lookup("ada") == "ADA"
        assert runs == {"ada": 1, "ghost": 2}
        clock.advance(300)
        assert await lookup("ada") == "ADA"
        assert runs["ada"] == 2

        assert await no_negative("x") is None and await no_negative("x") is None
        assert runs["nn"] == 2  # None is not stored by default
        assert await with_none("x") is None and await with_none("x") is None
        assert runs["wn"] == 1
        clock.advance(999)
        assert await with_none("x") is None
        assert runs["wn"] == 1
        clock.advance(2)
        assert await with_none("x") is None
        assert runs["wn"] == 2

        assert await chosen("short") == "short" and await chosen("long") == "long"
        clock.advance(11)
        assert await chosen("short") == "short" and await chosen("long") == "long"
        assert (runs["short"], runs["long"]) == (2, 1)


async def test_exceptions_are_never_cached(cache: CacheHierarchy) -> None:
    runs = 0

    @cached(cache, ttl=60)
    async def flaky(x: int) -> int:
        nonlocal runs
        runs += 1
        if runs == 1:
            await asyncio.sleep(0.01)
            raise RuntimeError("model overloaded")
        return x * 2

    results = await asyncio.gather(*(flaky(2) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert runs == 1
    assert await flaky(2) == 4
    assert await flaky(2) == 4
    assert runs == 2


async def test_bypass_refresh_invalidate(cache: CacheHierarchy) -> None:
    counter = 0

    @cached(cache, ttl=60)
    async def tick(name: str) -> int:
        nonlocal counter
        counter += 1
        return counter

    assert await tick("a") == 1
    assert await tick("a") == 1
    assert await tick.bypass("a") == 2  # ran, but nothing read or written
    assert await tick("a") == 1
    assert await tick.refresh("a") == 3
    assert await tick("a") == 3
    assert await tick.invalidate("a") is True
    assert await tick.invalidate("a") is False
    assert await tick("a") == 4
    assert tick.__wrapped__.__name__ == "tick"
    assert tick.__name__ == "tick"


async def test_unstorable_results(cache: CacheHierarchy) -> None:
    @cached(cache)
    async def gives_a_set(x: int) -> set[int]:
        return {x}

    with pytest.raises(SerializationError, match=r"gives_a_set\(\) cannot be cached"):
        await gives_a_set(1)

    async with CacheHierarchy.from_url("memory://", max_value_bytes=1000) as small:
        runs = 0

        @cached(small, ttl=60)
        async def essay(topic: str) -> str:
            nonlocal runs
            runs += 1
            return topic * 2000

        with capture_logs() as logs:
            assert await essay("ab") == "ab" * 2000  # returned, not stored
            assert await essay("ab") == "ab" * 2000
        assert runs == 2
        assert essay.stats()["not_stored"] == 2
        warnings = [e for e in logs if e["event"] == "cached_result_not_stored"]
        assert len(warnings) == 1  # rate-limited
        assert "essay" in warnings[0]["function"]


async def test_key_format_string_and_callable(cache: CacheHierarchy) -> None:
    @cached(cache, key="user:{user_id}:{lang}")
    async def profile(user_id: int, lang: str = "en", request: Any = None) -> dict[str, Any]:
        return {"id": user_id, "lang": lang}

    assert profile.key_for(7) == "user:7:en"
    assert await profile(7, request=object()) == {"id": 7, "lang": "en"}
    assert await cache.get("user:7:en") == {"id": 7, "lang": "en"}

    @cached(cache, key="by:{who}")
    async def by(who: Any) -> str:
        return "x"

    with pytest.raises(UnkeyableArgumentError, match="format string"):
        by.key_for(object())
    with pytest.raises(InvalidKeyError, match="max_key_bytes"):
        by.key_for("w" * 2000)

    @cached(cache, key=lambda prompt, **_: "p:" + prompt.lower())
    async def shout(prompt: str, loud: bool = True) -> str:
        return prompt.upper()

    assert shout.key_for("Hi") == "p:hi"
    assert await shout("Hi") == "HI"
    assert await shout("hI") == "HI"

    @cached(cache, key=lambda x: "")
    async def empty(x: int) -> int:
        return x

    with pytest.raises(InvalidKeyError, match="non-empty str"):
        await empty(1)


async def test_methods_self_ignored_or_keyed(cache: CacheHierarchy) -> None:
    class Client:
        def __init__(self, model: str) -> None:
            self.model = model
            self.runs = 0

        @cached(cache, ignore=("self",))
        async def shared(self, prompt: str) -> str:
            self.runs += 1
            return prompt

        @cached(cache)
        async def per_instance(self, prompt: str) -> str:
            return f"{self.model}:{prompt}"

    class KeyedClient(Client):
        def __cache_key__(self) -> str:
            return self.model

    a, b = Client("m1"), Client("m2")
    assert await a.shared("p") == "p" and await b.shared("p") == "p"
    assert a.runs + b.runs == 1
    assert await Client.shared.invalidate(a, "p") is True
    with pytest.raises(UnkeyableArgumentError, match="argument 'self'"):
        await a.per_instance("p")
    k1, k2 = KeyedClient("m1"), KeyedClient("m2")
    assert await k1.per_instance("p") == "m1:p"
    assert await k2.per_instance("p") == "m2:p"
    assert Client.per_instance.key_for(k1, "p") != Client.per_instance.key_for(k2, "p")


async def test_cache_from_a_provider_and_its_mistakes() -> None:
    holder: dict[str, CacheHierarchy] = {}

    @cached(lambda: holder["cache"], ttl=60)
    async def double(x: int) -> int:
        return x * 2

    holder["cache"] = CacheHierarchy.from_url("memory://", namespace="late")
    async with holder["cache"]:
        assert await double(4) == 8
        assert await holder["cache"].get(double.key_for(4)) == 8
    holder["cache"] = CacheHierarchy.from_url("memory://", namespace="late", max_key_bytes=64)
    assert await double(4) == 8  # a second cache with another max_key_bytes is adopted

    @cached(lambda: "nope", ttl=60)  # type: ignore[arg-type, return-value]
    async def broken(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match="provider"):
        await broken(1)


async def test_argument_memo_is_kind_safe(cache: CacheHierarchy) -> None:
    @cached(cache, name="memo")
    async def echo(value: Any, other: Any = "d") -> Any:
        return [value, other]

    assert await echo("1") == ["1", "d"]  # remembered: all-str arguments
    assert await echo(1) == [1, "d"]
    assert await echo(True) == [True, "d"]
    assert await echo(Mode.FAST) == ["fast", "d"]  # a StrEnum keys as its str
    assert await echo("fast") == ["fast", "d"]
    assert await echo(value="1", other="d") == ["1", "d"]
    assert await echo(["x"]) == [["x"], "d"]  # unhashable: built every time
    assert echo.stats()["runs"] == 5
    # Remembered with their types: 1, True, 1.0 and None stay apart, in any order.
    for value in (True, 1, 1.0, None, 0, False, 0.0, -0.0, True, 1, 1.0, None, 0, False, -0.0):
        result = (await echo(value, 7))[0]
        assert (type(result), repr(result)) == (type(value), repr(value))
    assert echo.stats()["runs"] == 5 + 8
    assert echo.key_for(-0.0, 7) != echo.key_for(0.0, 7)


async def test_every_parameter_kind(cache: CacheHierarchy) -> None:
    """Positional-only, keyword-only, *args and **kwargs (the generic wrapper)."""
    seen: list[Any] = []

    @cached(cache, name="kinds")
    async def kinds(a: str, /, b: int = 2, *, c: str = "c") -> str:
        seen.append((a, b, c))
        return f"{a}{b}{c}"

    assert await kinds("x") == "x2c"
    assert await kinds("x", 2, c="c") == "x2c"
    assert await kinds("x", b=2) == "x2c"
    assert await kinds("x", c="d") == "x2d"
    assert seen == [("x", 2, "c"), ("x", 2, "d")]
    assert kinds.key_for("x") == 'fn:kinds:v1:["x",2,"c"]'
    with pytest.raises(TypeError):
        await kinds(a="x")  # type: ignore[call-arg]

    @cached(cache, name="var")
    async def variadic(first: str, *rest: int, **options: Any) -> list[Any]:
        seen.append(("var", first, rest, options))
        return [first, list(rest), options]

    assert await variadic("f", 1, 2, z=1, a=2) == ["f", [1, 2], {"z": 1, "a": 2}]
    assert await variadic("f", 1, 2, a=2, z=1) == ["f", [1, 2], {"z": 1, "a": 2}]
    assert await variadic("f") == ["f", [], {}]
    assert await variadic("f") == ["f", [], {}]
    assert await variadic(first="f") == ["f", [], {}]
    assert len([s for s in seen if s[0] == "var"]) == 2
    assert variadic.key_for("f", 1, k="v") == 'fn:var:v1:["f",[1],{"k":"v"}]'
    with pytest.raises(UnkeyableArgumentError, match="do not match"):
        await variadic()  # type: ignore[call-arg]
    with pytest.raises(UnkeyableArgumentError, match="multiple values"):
        kinds.key_for("x", 2, b=3)  # type: ignore[misc]

    holder = {"cache": cache}

    @cached(lambda: holder["cache"], name="lazyvar")
    async def lazy_variadic(*parts: str) -> str:
        return "".join(parts)

    assert await lazy_variadic("a", "b") == "ab"
    assert await cache.get(lazy_variadic.key_for("a", "b")) == "ab"
    assert await lazy_variadic("a", "b") == "ab"


async def test_memos_stay_bounded_and_ttl_callables_are_checked(cache: CacheHierarchy) -> None:
    @cached(cache, name="many")
    async def many(a: str, n: int = 0) -> int:
        return len(a) + n

    for i in range(4200):
        assert await many(str(i)) == len(str(i))
        assert await many("x", i) == 1 + i
    assert await many("7") == 1 and many.stats()["runs"] == 8400
    assert many.key_for(n=1, a="b") == many.key_for("b", 1)
    with pytest.raises(UnkeyableArgumentError, match="multiple values"):
        many.key_for("x", a="y")  # type: ignore[misc]
    with pytest.raises(UnkeyableArgumentError, match="missing"):
        many.key_for()  # type: ignore[call-arg]
    with pytest.raises(UnkeyableArgumentError, match="unexpected"):
        many.key_for("x", m=1)  # type: ignore[call-arg]

    @cached(cache, ttl=lambda result: -1)
    async def bad_ttl(a: str) -> str:
        return a

    with pytest.raises(InvalidTTLError, match="ttl callable"):
        await bad_ttl("a")
