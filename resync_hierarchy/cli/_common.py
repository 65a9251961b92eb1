"""What every subcommand shares: selecting the cache, printing results."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from resync_hierarchy.config import HierarchyConfig
from resync_hierarchy.hierarchy import CacheHierarchy

__all__ = ["add_common_arguments", "build_cache", "emit", "resolve_url"]


def add_common_arguments(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """--redis-url, --namespace and --json, accepted before or after the subcommand."""
    default = None if top_level else argparse.SUPPRESS
    parser.add_argument(
        "--redis-url",
        default=default,
        metavar="URL",
        help="Redis URL (redis://, rediss://, unix://); default: $REDIS_URL, else none",
    )
    parser.add_argument("--namespace", default=default, metavar="NS", help="cache namespace")
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top_level else argparse.SUPPRESS,
        help="print one JSON document instead of text",
    )


def resolve_url(args: argparse.Namespace) -> str | None:
    """--redis-url, else $REDIS_URL, else None."""
    url: str | None = args.redis_url or os.environ.get("REDIS_URL") or None
    return url


def build_cache(args: argparse.Namespace, *, default_namespace: str = "default") -> CacheHierarchy:
    """The CacheHierarchy the arguments name (``memory://`` when no URL is given)."""
    url = resolve_url(args) or "memory://"
    config = HierarchyConfig.from_env(url=url, namespace=args.namespace or default_namespace)
    return CacheHierarchy(config)


def emit(args: argparse.Namespace, document: dict[str, Any], text: str) -> None:
    """Print ``document`` as one JSON document with --json, else ``text``."""
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True, default=str))
    else:
        print(text)
