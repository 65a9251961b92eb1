"""Which keys read from the new configuration at a given rollout percentage.

A key's bucket is a number in ``[0, 10000)`` from a BLAKE2b hash of its UTF-8
bytes: the same in every process, run and Python version (never the salted
built-in ``hash()``). A key reads new when ``bucket < percent * 100``, so the
share is monotone: a key that reads new at 10 % still does at 25 %, and
percentages may have two decimals (0.25 % is 25 buckets).
"""

from __future__ import annotations

from hashlib import blake2b

__all__ = ["BUCKETS", "reads_new", "rollout_bucket"]

BUCKETS = 10_000
_PERSON = b"resync-rollout"  # domain separation: this hash means "rollout" only


def rollout_bucket(key: str) -> int:
    """The key's stable bucket in ``[0, BUCKETS)``."""
    digest = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def reads_new(key: str, percent: float) -> bool:
    """True if ``key`` is in the first ``percent`` % of the buckets."""
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    return rollout_bucket(key) < round(percent * (BUCKETS // 100))
