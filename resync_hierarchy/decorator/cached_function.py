"""``@cached``: cache the results of an async function in a CacheHierarchy
or a MigrationManager.

Call path::

    await answer(prompt, model="m1")
      ├─ key: memo of recent argument tuples (kind-safe) ──► key   (no encoding, no hashing)
      │        └─ else: bind to the signature, apply defaults, encode each
      │           argument canonically (keys.py); short: readable, long: blake2b
      ├─ cache.get(key) ─ hit ──────────────────────────────────► value
      └─ miss: cache.get_or_set(key, run)   single flight per key and process
                 └─ run: await the function once, store its result
                    (None only with negative caching) ─────────────► value

Key: ``<prefix>:<module.qualname>:v<version>:<arguments>`` where
``<arguments>`` is the canonical text of the bound arguments
(``["hello","m1"]``) when it is short, else ``#`` and the 128-bit blake2b
digest of that text. Keys never exceed the cache's ``max_key_bytes``.

The decorated object is a plain ``async def`` closure with attributes, not
an instance with ``__call__``: the hit path is then one coroutine around
``cache.get``, and the decorator also works on methods (``self`` binds as for
any function).
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hashlib
import inspect
import math
import string
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from decimal import Decimal
from typing import (
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    Self,
    TypeVar,
    cast,
    overload,
)

from resync_hierarchy._types import MISSING
from resync_hierarchy.decorator.keys import SCALAR_ENCODERS, ArgumentEncoder
from resync_hierarchy.errors import (
    ConfigurationError,
    InvalidKeyError,
    InvalidTTLError,
    SerializationError,
    UnkeyableArgumentError,
    ValueTooLargeError,
)
from resync_hierarchy.hierarchy import CacheHierarchy
from resync_hierarchy.migration import MigrationManager
from resync_hierarchy.observe.logging import get_logger

__all__ = ["CacheLike", "CachedFunction", "cached"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
R2 = TypeVar("R2")
Q = ParamSpec("Q")

CacheLike = CacheHierarchy | MigrationManager
TTL = float | None | Callable[[Any], float | None]

_log = get_logger("resync_hierarchy.cached")

_MEMO_MAX = 4096  # argument tuples remembered per function
_MEMO_MAX_CHARS = 65_536  # str characters of one remembered call at most
_MEMO_BUDGET_CHARS = 4_000_000  # str characters held by one function's memos
_DIGEST_BYTES = 16
_HASHED_CHARS = 1 + 2 * _DIGEST_BYTES  # "#" + hex digest
_WARN_EVERY = 60.0  # seconds between two "result not stored" warnings of one function
_MEMO_TYPES = frozenset({str, int, bool, type(None)})
_FORMATTABLE = frozenset({str, int, float, bool, type(None)})
_FORMATTABLE_BASES = (str, int, float, uuid.UUID, Decimal, dt.date, dt.time, enum.Enum)


class CachedFunction(Protocol, Generic[P, R_co]):
    """What ``@cached`` returns: call it like the function. Also:

    * ``await f.bypass(*args, **kwargs)``: call the function, no cache read or write;
    * ``await f.refresh(*args, **kwargs)``: call it and overwrite the cached result;
    * ``await f.invalidate(*args, **kwargs) -> bool``: delete the cached result;
    * ``f.key_for(*args, **kwargs) -> str``: the cache key of those arguments;
    * ``f.stats() -> dict``: ``misses``, ``runs``, ``not_stored``;
    * ``f.__wrapped__``: the undecorated function.

    On a method, these attributes are the function's: pass the instance
    first (``Client.answer.invalidate(client, prompt)``).
    """

    __wrapped__: Callable[..., Awaitable[Any]]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...

    def bypass(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...

    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, bool]: ...

    def key_for(self, *args: P.args, **kwargs: P.kwargs) -> str: ...

    def stats(self) -> dict[str, int]: ...

    # A method: through the class it is this object; through an instance, a
    # callable without its first parameter (for mypy; at run time the
    # decorated object is a function, which binds like any other).
    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[Any, Q], R2],
        instance: object,
        owner: type[Any] | None = None,
    ) -> Callable[Q, Coroutine[Any, Any, R2]]: ...

    def __get__(self, instance: object | None, owner: type[Any] | None = None) -> Any: ...


class _Produced(BaseException):
    """Carries a result out of get_or_set after the decorator stored it
    itself (or decided not to). A BaseException, so that get_or_set does not
    take it for a failure of the function and serve a stale value instead."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


def _check_ttl(ttl: object, name: str) -> None:
    if ttl is None:
        return
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
        raise InvalidTTLError(f"{name} must be a positive number of seconds or None, got {ttl!r}")
    if ttl <= 0:
        raise InvalidTTLError(f"{name} must be > 0 seconds, got {ttl}")


def _max_key_bytes(cache: CacheLike) -> int:
    if isinstance(cache, MigrationManager):
        return min(cache.legacy.config.max_key_bytes, cache.new.config.max_key_bytes)
    return cache.config.max_key_bytes


def _is_cache(cache: object) -> bool:
    return isinstance(cache, (CacheHierarchy, MigrationManager))


class _Binder:
    """Binds call arguments to the signature, defaults applied, as
    ``inspect.Signature.bind`` would, but quickly for the common signatures
    (no ``*args``, no ``**kwargs``, no positional-only parameters); anything
    else, and every mistake, goes through ``Signature.bind``."""

    __slots__ = ("_defaults", "_known", "_names", "_positional", "_signature", "_simple")

    def __init__(self, signature: inspect.Signature) -> None:
        self._signature = signature
        parameters = list(signature.parameters.values())
        self._names = [p.name for p in parameters]
        self._known = frozenset(self._names)
        self._simple = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in parameters)
        self._positional = sum(1 for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD)
        self._defaults = {p.name: p.default for p in parameters if p.default is not p.empty}

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._simple and len(args) <= self._positional:
            names = self._names
            arguments = dict(zip(names, args, strict=False))
            for name, value in kwargs.items():
                if name in arguments or name not in self._known:
                    return self._slow(args, kwargs)
                arguments[name] = value
            if len(arguments) < len(names):
                defaults = self._defaults
                for name in names:
                    if name not in arguments:
                        if name not in defaults:
                            return self._slow(args, kwargs)
                        arguments[name] = defaults[name]
            return arguments
        return self._slow(args, kwargs)

    def _slow(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self._signature.bind(*args, **kwargs)  # raises TypeError on a mistake
        bound.apply_defaults()
        return dict(bound.arguments)


class _Cached(Generic[P, R]):
    """The state and the slow paths behind one decorated function."""

    def __init__(
        self,
        function: Callable[P, Awaitable[R]],
        cache: CacheLike | Callable[[], CacheLike],
        *,
        ttl: TTL,
        key: str | Callable[..., str] | None,
        version: str | int,
        prefix: str,
        name: str | None,
        ignore: Iterable[str],
        cache_none: bool,
        negative_ttl: float | None,
        readable_key_chars: int,
    ) -> None:
        if not inspect.iscoroutinefunction(function):
            raise ConfigurationError(
                f"@cached decorates async functions; {function!r} is not one. Make it "
                "`async def`, or cache a sync computation with cache.get_or_set()"
            )
        if not callable(ttl):
            _check_ttl(ttl, "ttl")
        _check_ttl(negative_ttl, "negative_ttl")
        if isinstance(readable_key_chars, bool) or not isinstance(readable_key_chars, int):
            raise ConfigurationError(
                f"readable_key_chars must be an int >= 0, got {readable_key_chars!r}"
            )
        if readable_key_chars < 0:
            raise ConfigurationError(f"readable_key_chars must be >= 0, got {readable_key_chars}")
        for label, part in (("prefix", prefix), ("version", version)):
            if isinstance(part, bool) or not isinstance(part, (str, int)) or not str(part):
                raise ConfigurationError(f"{label} must be a non-empty str, got {part!r}")
        self.function = function
        self.qualified = name or f"{function.__module__}.{function.__qualname__}"
        signature = inspect.signature(function)
        self.signature = signature
        self.binder = _Binder(signature)
        ignored = frozenset((ignore,) if isinstance(ignore, str) else ignore)
        unknown = ignored - set(signature.parameters)
        if unknown:
            raise ConfigurationError(
                f"ignore= names {sorted(unknown)}, which are not parameters of "
                f"{self.qualified}{signature}"
            )
        self.encoders = [
            (p, ArgumentEncoder(self.qualified, p).encode)
            for p in signature.parameters
            if p not in ignored
        ]
        self.head = f"{prefix}:{self.qualified}:v{version}:"
        self.head_bytes = len(self.head.encode("utf-8", "surrogatepass"))
        self.key_template: str | None = None
        self.template_fields: frozenset[str] = frozenset()
        self.key_function: Callable[..., str] | None = None
        if isinstance(key, str):
            self.key_template = key
            self._check_template(key)
        elif key is not None:
            if not callable(key):
                raise ConfigurationError(
                    f"key= must be a format string or a callable, got {type(key).__name__}"
                )
            self.key_function = key
        self.readable_chars = readable_key_chars
        self.fixed: CacheLike | None = None
        self.provider: Callable[[], CacheLike] | None = None
        if isinstance(cache, (CacheHierarchy, MigrationManager)):
            self.fixed = cache
        elif callable(cache):
            self.provider = cache
        else:
            raise ConfigurationError(
                "@cached needs a CacheHierarchy, a MigrationManager, or a callable returning "
                f"one, got {type(cache).__name__}; write @cached(cache, ttl=...)"
            )
        self.ttl = ttl
        self.cache_none = cache_none or negative_ttl is not None
        self.negative_ttl = negative_ttl
        # Keys of recent calls (see _remember, _remember_values), bounded by
        # _MEMO_MAX entries and _MEMO_BUDGET_CHARS; emptied when a cache with
        # another max_key_bytes is adopted.
        self.memo: dict[tuple[Any, ...], str] = {}
        self.memo_kw: dict[tuple[Any, ...], str] = {}
        self.memo_values: dict[tuple[Any, ...], str] = {}  # the exact-signature wrapper's
        self.memo_typed: dict[tuple[Any, ...], str] = {}
        self.memo_chars = 0
        self.memo_entries = 0  # in all memos together, at most _MEMO_MAX
        self.adopted: CacheLike | None = None
        self.max_key_bytes = 0
        self.last_warning = -_WARN_EVERY
        self.misses = 0
        self.runs = 0
        self.not_stored = 0
        if self.fixed is not None:
            self.adopt(self.fixed)

    # ------------------------------------------------------------------ cache

    def current(self) -> CacheLike:
        cache = self.fixed
        if cache is None:
            assert self.provider is not None  # noqa: S101 - one of the two is set
            cache = self.provider()
            if not _is_cache(cache):
                raise ConfigurationError(
                    f"the cache provider of @cached {self.qualified} returned "
                    f"{type(cache).__name__}; it must return a CacheHierarchy or a "
                    "MigrationManager"
                )
        if cache is not self.adopted:
            self.adopt(cache)
        return cache

    def adopt(self, cache: CacheLike) -> None:
        limit = _max_key_bytes(cache)
        if limit < _HASHED_CHARS:
            raise ConfigurationError(
                f"@cached needs max_key_bytes >= {_HASHED_CHARS} to hold a hashed key; the "
                f"cache allows {limit}"
            )
        if limit != self.max_key_bytes:
            self.forget()
        self.max_key_bytes = limit
        self.adopted = cache

    # ------------------------------------------------------------------ miss path

    async def fill(
        self, cache: CacheLike, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        self.misses += 1
        run = functools.partial(self._run, cache, key, args, kwargs)
        try:
            return await cache.get_or_set(key, run)  # type: ignore[no-any-return]
        except _Produced as produced:
            return produced.value  # type: ignore[no-any-return]

    async def _run(
        self, cache: CacheLike, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """The factory given to get_or_set: runs once per key however many
        callers wait. It stores the result itself (its TTL may depend on the
        result, None is stored only with negative caching, a result too large
        is returned anyway) and hands it to every waiter through _Produced."""
        result = await self.function(*args, **kwargs)
        self.runs += 1
        await self.store(cache, key, result)
        raise _Produced(result)

    async def store(self, cache: CacheLike, key: str, result: Any) -> None:
        if result is None:
            if not self.cache_none:
                return
            ttl = self.negative_ttl if self.negative_ttl is not None else self._ttl_of(result)
        else:
            ttl = self._ttl_of(result)
        try:
            await cache.set(key, result, ttl)
        except ValueTooLargeError as exc:
            self._not_stored(exc)
        except SerializationError as exc:
            raise SerializationError(
                f"the result of @cached {self.qualified}() cannot be cached: {exc}. Return "
                "values msgpack can carry (convert objects to dicts), or call the function "
                "through .bypass()"
            ) from exc

    def _ttl_of(self, result: Any) -> float | None:
        ttl = self.ttl
        if callable(ttl):
            chosen = ttl(result)
            _check_ttl(chosen, f"the ttl callable's result for {self.qualified}()")
            return chosen
        return ttl

    def _not_stored(self, exc: ValueTooLargeError) -> None:
        """A result over max_value_bytes: returned to the caller, not cached,
        so that a large answer never breaks the function. Logged at most once
        a minute per function."""
        self.not_stored += 1
        now = time.monotonic()
        if now - self.last_warning >= _WARN_EVERY:
            self.last_warning = now
            _log.warning(
                "cached_result_not_stored",
                function=self.qualified,
                error=str(exc),
                not_stored=self.not_stored,
            )

    # ------------------------------------------------------------------ keys

    def build_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            arguments = self.binder.bind(args, kwargs)
        except TypeError as exc:
            raise UnkeyableArgumentError(
                f"the arguments do not match {self.qualified}{self.signature}: {exc}"
            ) from None
        if self.key_function is not None:
            return self._checked(self.key_function(*args, **kwargs), "the key= callable")
        if self.key_template is not None:
            return self._format(self.key_template, arguments)
        text = "[" + ",".join([encode(arguments[name]) for name, encode in self.encoders]) + "]"
        key = self._finish(text)
        self._remember(args, kwargs, key)
        return key

    def key_from_values(self, values: tuple[Any, ...]) -> str:
        """The key from the keyed parameters' values, already bound with
        defaults applied (the exact-signature wrapper's slow path)."""
        kinds = tuple(map(type, values))
        try:
            remembered = self.memo_typed.get((values, kinds))
        except TypeError:  # an unhashable argument
            remembered = None
        if remembered is not None:
            return remembered
        parts = []
        for (_, encode), value in zip(self.encoders, values, strict=True):
            scalar = SCALAR_ENCODERS.get(type(value))  # skips a frame for str, int, ...
            parts.append(scalar(value) if scalar is not None else encode(value))
        key = self._finish("[" + ",".join(parts) + "]")
        self._remember_values(values, kinds, key)
        return key

    def _remember_values(self, values: tuple[Any, ...], kinds: tuple[type, ...], key: str) -> None:
        """Two memos. All exact ``str``: keyed by the values alone (a str
        equals only a str, so the tuple never answers for ``1`` or ``True``).
        Exact ``str``, ``int``, ``bool`` and None: keyed by values and types,
        since ``1 == True == 1.0``; for these types equal values of one type
        always encode alike (not so for floats: ``0.0 == -0.0``)."""
        total = 0
        all_str = True
        for value, kind in zip(values, kinds, strict=True):
            if kind is str:
                total += len(value)
            elif kind in _MEMO_TYPES:
                all_str = False
            else:
                return
        if self._make_room(total):
            if all_str:
                self.memo_values[values] = key
            else:
                self.memo_typed[(values, kinds)] = key

    def _finish(self, text: str) -> str:
        """The full key: readable when short enough, else hashed; never over
        max_key_bytes."""
        head = self.head
        limit = self.max_key_bytes
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: never readable
            data = text.encode("utf-8", "surrogatepass")
        else:
            if len(text) <= self.readable_chars and self.head_bytes + len(data) <= limit:
                return head + text
        if self.head_bytes + _HASHED_CHARS <= limit:
            return f"{head}#{blake2b_hex(data)}"
        # A long prefix, name or version, or a small max_key_bytes: hash it all.
        return "#" + blake2b_hex((head + "#").encode("utf-8", "surrogatepass") + data)

    def _remember(self, args: tuple[Any, ...], kwargs: dict[str, Any], key: str) -> None:
        """Remember the key of a call whose arguments are all exact ``str``:
        a str equals only a str (or a str subclass, which keys the same), so a
        remembered tuple never answers for ``1``, ``True`` or ``1.0``."""
        total = 0
        for value in (*args, *kwargs.values()):
            if type(value) is not str:
                return
            total += len(value)
        if self._make_room(total):
            memo = self.memo_kw if kwargs else self.memo
            memo[(args, tuple(kwargs.items())) if kwargs else args] = key

    def _make_room(self, chars: int) -> bool:
        """Whether a call of ``chars`` str characters may be remembered; the
        memos are emptied when one is full or they hold the character budget
        (long prompts are remembered too: a hit then skips their hashing)."""
        if chars > _MEMO_MAX_CHARS:
            return False
        self.memo_entries += 1
        self.memo_chars += chars
        if self.memo_chars > _MEMO_BUDGET_CHARS or self.memo_entries > _MEMO_MAX:
            self.forget()
            self.memo_entries = 1
            self.memo_chars = chars
        return True

    def forget(self) -> None:
        """Empty every memo (one is full, or a new max_key_bytes)."""
        for memo in (self.memo, self.memo_kw, self.memo_values, self.memo_typed):
            memo.clear()
        self.memo_entries = 0
        self.memo_chars = 0

    def _check_template(self, template: str) -> None:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise ConfigurationError(f"key= format string {template!r} is invalid: {exc}") from exc
        for field in fields:
            if field not in self.signature.parameters:
                raise ConfigurationError(
                    f"key= format string {template!r} names {{{field}}}, which is not a "
                    f"parameter of {self.qualified}{self.signature}; use plain parameter "
                    "names, or pass a callable as key="
                )
        self.template_fields = frozenset(fields)

    def _format(self, template: str, arguments: dict[str, Any]) -> str:
        for name in self.template_fields:
            value = arguments[name]
            # Plain values only: str() of an object may show its address.
            if type(value) not in _FORMATTABLE and not isinstance(value, _FORMATTABLE_BASES):
                raise UnkeyableArgumentError(
                    f"argument {name!r} of {self.qualified}() is a {type(value).__name__}, "
                    "which a key= format string cannot hold stably; pass a callable as key= "
                    "instead, or a str, int, float, bool, None, UUID, Decimal, date or Enum"
                )
        return self._checked(template.format_map(arguments), "the key= format string")

    def _checked(self, key: object, source: str) -> str:
        if not isinstance(key, str) or not key:
            raise InvalidKeyError(
                f"{source} of @cached {self.qualified} must give a non-empty str, got {key!r:.80}"
            )
        size = len(key.encode("utf-8", "surrogatepass"))
        if size > self.max_key_bytes:
            raise InvalidKeyError(
                f"{source} of @cached {self.qualified} gave a key of {size} bytes, over "
                f"max_key_bytes={self.max_key_bytes}; hash long inputs (hashlib.blake2b) "
                "or drop key= to let the decorator build the key"
            )
        return key


def blake2b_hex(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=_DIGEST_BYTES).hexdigest()


_EXACT_TEMPLATE = """
def make(__rh_memo, __rh_typed, __rh_type, __rh_build, __rh_get, __rh_local, __rh_fill,
         __rh_cache, __rh_current, __rh_missing, {defaults}):
    async def {name}({parameters}):
        {resolve}
        __rh_values = ({keyed})
        try:
            __rh_key = __rh_memo(__rh_values) or __rh_typed((__rh_values, ({kinds})))
        except TypeError:  # an unhashable argument
            __rh_key = None
        if __rh_key is None:  # not remembered (no KeyError: raising one costs more)
            __rh_key = __rh_build(__rh_values)
        {local_hit}
        __rh_value = await __rh_get(__rh_key, __rh_missing)
        if __rh_value is not __rh_missing:
            return __rh_value
        return await __rh_fill(__rh_cache, __rh_key, ({positional}), {{{keywords}}})
    return {name}
"""


def _exact_wrapper(state: _Cached[Any, Any]) -> Callable[..., Coroutine[Any, Any, Any]] | None:
    """A wrapper with the function's own signature, generated as source (as
    dataclasses does): Python binds the arguments and applies the defaults,
    and the memo is keyed by the keyed parameters' values, so ``f("a")``,
    ``f(prompt="a")`` and ``f("a", model="m1")`` share one memo entry and the
    hit path builds no args tuple or kwargs dict. None for signatures it does
    not cover (``*args``, ``**kwargs``, a ``key=``): the generic closure then
    serves."""
    if state.key_function is not None or state.key_template is not None:
        return None
    parameters = list(state.signature.parameters.values())
    if any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name.startswith("__rh_")
        for p in parameters
    ):
        return None
    rendered: list[str] = []
    defaults: dict[str, Any] = {}
    seen_keyword_only = False
    for index, p in enumerate(parameters):
        if p.kind is p.KEYWORD_ONLY and not seen_keyword_only:
            rendered.append("*")
            seen_keyword_only = True
        text = p.name
        if p.default is not p.empty:
            defaults[f"__rh_default_{index}"] = p.default
            text += f"=__rh_default_{index}"
        rendered.append(text)
        if p.kind is p.POSITIONAL_ONLY and (
            index + 1 == len(parameters) or parameters[index + 1].kind is not p.POSITIONAL_ONLY
        ):
            rendered.append("/")
    keyed = "".join(f"{name}, " for name, _ in state.encoders)
    fixed = state.fixed
    # A fixed CacheHierarchy answers an L1 hit without a coroutine of its own.
    local = fixed.get_local if isinstance(fixed, CacheHierarchy) else None
    source = _EXACT_TEMPLATE.format(
        name="__rh_cached",
        defaults="".join(f"{name}, " for name in defaults),
        parameters=", ".join(rendered),
        resolve=(
            "__rh_cache = __rh_current(); __rh_get = __rh_cache.get"
            if state.fixed is None
            else "pass"
        ),
        keyed=keyed,
        local_hit=(
            "__rh_value = __rh_local(__rh_key, __rh_missing)\n"
            "        if __rh_value is not __rh_missing:\n"
            "            return __rh_value"
            if local is not None
            else "pass"
        ),
        kinds="".join(f"__rh_type({name}), " for name, _ in state.encoders),
        positional="".join(f"{p.name}, " for p in parameters if p.kind is not p.KEYWORD_ONLY),
        keywords=", ".join(f"{p.name!r}: {p.name}" for p in parameters if p.kind is p.KEYWORD_ONLY),
    )
    scope: dict[str, Any] = {}
    exec(compile(source, f"<@cached {state.qualified}>", "exec"), scope)  # noqa: S102
    made: Callable[..., Coroutine[Any, Any, Any]] = scope["make"](
        state.memo_values.get,
        state.memo_typed.get,
        type,
        state.key_from_values,
        fixed.get if fixed is not None else None,
        local,
        state.fill,
        fixed,
        state.current,
        MISSING,
        *defaults.values(),
    )
    return made


def _wrap(state: _Cached[P, R]) -> CachedFunction[P, R]:
    """The decorated function: the exact-signature wrapper where it applies,
    else a closure over ``*args, **kwargs``; closures read their state from
    cells instead of attributes, which the hit path notices."""
    memo = state.memo
    memo_kw = state.memo_kw
    build_key = state.build_key
    fill = state.fill
    fixed = state.fixed
    current = state.current

    if fixed is not None:
        get = fixed.get

        async def call_fixed(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                key = memo_kw[(args, tuple(kwargs.items()))] if kwargs else memo[args]
            except (KeyError, TypeError):  # not remembered, or an unhashable argument
                key = build_key(args, kwargs)
            value = await get(key, MISSING)
            if value is not MISSING:
                return value  # type: ignore[no-any-return]
            return await fill(fixed, key, args, kwargs)

        call: Callable[P, Coroutine[Any, Any, R]] = call_fixed
    else:

        async def call_provided(*args: P.args, **kwargs: P.kwargs) -> R:
            cache = current()
            try:
                key = memo_kw[(args, tuple(kwargs.items()))] if kwargs else memo[args]
            except (KeyError, TypeError):
                key = build_key(args, kwargs)
            value = await cache.get(key, MISSING)
            if value is not MISSING:
                return value  # type: ignore[no-any-return]
            return await fill(cache, key, args, kwargs)

        call = call_provided

    exact = _exact_wrapper(state)
    if exact is not None:
        call = exact

    async def bypass(*args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function without reading or writing the cache."""
        return await state.function(*args, **kwargs)

    async def refresh(*args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function and store its result over what is cached (same
        storage rules as a miss: None only with negative caching)."""
        cache = current()
        key = build_key(args, kwargs)
        result = await state.function(*args, **kwargs)
        state.runs += 1
        await state.store(cache, key, result)
        return result

    async def invalidate(*args: P.args, **kwargs: P.kwargs) -> bool:
        """Delete the cached result of these arguments; True if there was one."""
        cache = current()
        return await cache.delete(build_key(args, kwargs))

    def key_for(*args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key of a call with these arguments (for warm-up jobs,
        ``cache.get`` or inspection)."""
        current()
        return build_key(args, kwargs)

    def stats() -> dict[str, int]:
        """``misses``: calls not answered by ``cache.get``; ``runs``: times
        the function ran; ``not_stored``: results too large to store."""
        return {"misses": state.misses, "runs": state.runs, "not_stored": state.not_stored}

    functools.update_wrapper(call, state.function)
    attributes: dict[str, Any] = {
        "bypass": bypass,
        "refresh": refresh,
        "invalidate": invalidate,
        "key_for": key_for,
        "stats": stats,
    }
    for attribute, value in attributes.items():
        setattr(call, attribute, value)
    return cast(CachedFunction[P, R], call)


def cached(
    cache: CacheLike | Callable[[], CacheLike],
    *,
    ttl: TTL = None,
    key: str | Callable[..., str] | None = None,
    version: str | int = 1,
    prefix: str = "fn",
    name: str | None = None,
    ignore: Iterable[str] = (),
    cache_none: bool = False,
    negative_ttl: float | None = None,
    readable_key_chars: int = 64,
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
    """Cache the results of an async function in ``cache``.

    ``cache``: a CacheHierarchy, a MigrationManager, or a callable returning
    one (resolved at each call, for caches built at application start).

    ``ttl``: seconds (None: the cache's ``default_ttl``), or a callable that
    gets the result and returns the seconds.

    The key is ``<prefix>:<module.qualname>:v<version>:<arguments>``, the
    same in every process and run: arguments are bound to the signature with
    defaults applied (``f("a")``, ``f(prompt="a")`` and ``f("a", model="m1")``
    are one key) and encoded by value and kind (``1``, ``"1"`` and ``True``
    differ). Argument text longer than ``readable_key_chars`` is replaced by
    its blake2b digest (0: always). ``name=`` pins ``module.qualname``
    across refactors; bump ``version`` when the code changes what it returns.
    ``ignore=("self", "request")`` leaves arguments out of the key. ``key=``:
    a format string over the parameters (``"user:{user_id}"``) or a callable
    taking the function's arguments; its result is the whole key.

    Single flight: concurrent calls with the same key run the function once
    per process. Exceptions are never cached. ``None`` results are not stored
    unless ``cache_none=True`` (stored with ``ttl``) or ``negative_ttl=S``.
    A result msgpack cannot carry raises SerializationError; one over
    ``max_value_bytes`` is returned uncached, with a warning.
    """
    if inspect.iscoroutinefunction(cache):
        raise ConfigurationError(
            "@cached needs the cache first: write @cached(cache, ttl=...) above the function"
        )

    def decorate(function: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
        state = _Cached(
            function,
            cache,
            ttl=ttl,
            key=key,
            version=version,
            prefix=prefix,
            name=name,
            ignore=ignore,
            cache_none=cache_none,
            negative_ttl=negative_ttl,
            readable_key_chars=readable_key_chars,
        )
        return _wrap(state)

    return decorate
