"""Migration flags: their values, where they come from, how they are checked.

Start values come from the environment::

    MIGRATION_USE_NEW_CACHE     true/false   read from new (with fallback to legacy)
    MIGRATION_ROLLOUT_PERCENT   0-100        share of keys that read new while the above is true
    MIGRATION_ENABLE_METRICS    true/false   record the migration metrics
    MIGRATION_DUAL_WRITE        true/false   write both configurations (default: true)
    MIGRATION_SHADOW_READ_PERCENT 0-100      while reading legacy, compare this share of
                                             reads with new (counts mismatches only)

At run time the fleet-wide *flag record* in the new configuration's Redis
overrides them (see :mod:`resync_hierarchy.migration.fleet`). Values are
checked strictly: a percent of 150 or a boolean of "maybe" is refused with a
:class:`ConfigurationError` naming the flag, and whoever applies flags keeps
the previous ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

from resync_hierarchy.errors import ConfigurationError

__all__ = ["ENV_NAMES", "MigrationFlags", "Mode", "parse_bool", "parse_percent"]

Mode = Literal["legacy_only", "dual_write", "read_new", "new_only"]

ENV_NAMES = {
    "use_new_cache": "MIGRATION_USE_NEW_CACHE",
    "rollout_percent": "MIGRATION_ROLLOUT_PERCENT",
    "enable_metrics": "MIGRATION_ENABLE_METRICS",
    "dual_write": "MIGRATION_DUAL_WRITE",
    "shadow_read_percent": "MIGRATION_SHADOW_READ_PERCENT",
}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(name: str, value: object) -> bool:
    """``value`` as a boolean, or ConfigurationError naming ``name``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(
        f"{name}={value!r} is not a boolean; use true or false (also 1/0, yes/no, on/off)"
    )


def parse_percent(name: str, value: object) -> float:
    """``value`` as a percentage in [0, 100], or ConfigurationError naming ``name``."""
    number: float
    if isinstance(value, bool):
        raise ConfigurationError(f"{name}={value!r} is not a percentage; use a number 0-100")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip().rstrip("%"))
        except ValueError:
            raise ConfigurationError(
                f"{name}={value!r} is not a percentage; use a number 0-100"
            ) from None
    else:
        raise ConfigurationError(f"{name}={value!r} is not a percentage; use a number 0-100")
    if not math.isfinite(number) or not 0 <= number <= 100:
        raise ConfigurationError(f"{name}={value!r} is outside 0-100; use a number 0-100")
    return round(number, 2)


@dataclass(frozen=True, kw_only=True)
class MigrationFlags:
    """One consistent set of flags. ``finished`` means new only (migrate finish)."""

    use_new_cache: bool = False
    rollout_percent: float = 100.0
    enable_metrics: bool = True
    dual_write: bool = True
    shadow_read_percent: float = 0.0
    finished: bool = False

    def __post_init__(self) -> None:
        for name in ("use_new_cache", "enable_metrics", "dual_write", "finished"):
            object.__setattr__(self, name, parse_bool(name, getattr(self, name)))
        for name in ("rollout_percent", "shadow_read_percent"):
            object.__setattr__(self, name, parse_percent(name, getattr(self, name)))

    @property
    def mode(self) -> Mode:
        if self.finished:
            return "new_only"
        if self.use_new_cache and self.rollout_percent > 0:
            return "read_new"
        if self.dual_write or self.use_new_cache:
            return "dual_write"
        return "legacy_only"

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mode": self.mode}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Start values from ``MIGRATION_*`` variables (defaults for the unset)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, variable in ENV_NAMES.items():
            if variable in env:
                values[field] = (
                    parse_percent(variable, env[variable])
                    if field.endswith("percent")
                    else parse_bool(variable, env[variable])
                )
        return cls(**values)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """Flags from a fleet record; unknown fields are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - known - {"revision", "updated_at", "updated_by", "mode"})
        if unknown:
            raise ConfigurationError(f"unknown migration flag(s) {', '.join(unknown)}")
        return cls(**{k: v for k, v in record.items() if k in known})
