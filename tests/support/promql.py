"""The metric names a PromQL expression reads: a small tokenizer, not a parser.

Enough for the cross-check between deploy/ (alerts, dashboard) and what the
package exports: every identifier that stands where a series selector stands
is a metric name. Skipped: string literals, comments, label matchers in
``{...}`` (except ``__name__="x"``), ranges and subqueries in ``[...]``,
durations, numbers, keywords, and the label lists of ``by``, ``without``,
``on``, ``ignoring``, ``group_left`` and ``group_right``. An identifier
followed by ``(`` is a function or an aggregation. The syntax itself is
checked by ``promtool``, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "PromQLSyntaxError",
    "Selector",
    "metric_names",
    "selectors",
    "substitute_grafana_variables",
]

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@])
    """,
    re.VERBOSE,
)

# Binary and modifier keywords; never metric names in these positions.
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
# Keywords followed by a parenthesised label list.
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


class PromQLSyntaxError(ValueError):
    """The expression has a character or a bracket the tokenizer cannot place."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str


def _tokens(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise PromQLSyntaxError(f"unexpected {expr[position]!r} at {position} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            tokens.append(_Token(kind, match.group()))
        position = match.end()
    return tokens


def _closing(tokens: list[_Token], start: int, expr: str) -> int:
    """Index of the bracket closing the one at ``start``."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    opening = tokens[start].text
    depth = 0
    for index in range(start, len(tokens)):
        text = tokens[index].text
        if tokens[index].kind != "op":
            continue
        if text == opening:
            depth += 1
        elif text == pairs[opening]:
            depth -= 1
            if depth == 0:
                return index
    raise PromQLSyntaxError(f"unbalanced {opening!r} in {expr!r}")


def _check_parentheses(tokens: list[_Token], expr: str) -> None:
    depth = 0
    for token in tokens:
        if token.kind == "op" and token.text == "(":
            depth += 1
        elif token.kind == "op" and token.text == ")":
            depth -= 1
        if depth < 0:
            break
    if depth != 0:
        raise PromQLSyntaxError(f"unbalanced parentheses in {expr!r}")


@dataclass(frozen=True)
class Selector:
    """One series selector: its metric name (None if it has none) and its
    label matchers as (label, operator, value), ``__name__`` excluded."""

    name: str | None
    matchers: tuple[tuple[str, str, str], ...]


def _unquote(literal: str) -> str:
    if literal.startswith("`"):
        return literal[1:-1]
    return literal[1:-1].encode("utf-8").decode("unicode_escape")


def _matchers(tokens: list[_Token], expr: str) -> list[tuple[str, str, str]]:
    """The ``label op "value"`` items between ``{`` and ``}``."""
    matchers = []
    items = [tokens[i : i + 3] for i in range(0, len(tokens), 4)]
    for index, item in enumerate(items):
        separator = tokens[4 * index + 3] if 4 * index + 3 < len(tokens) else None
        if (
            len(item) != 3
            or item[0].kind != "ident"
            or item[1].text not in ("=", "!=", "=~", "!~")
            or item[2].kind != "string"
            or (separator is not None and separator.text != ",")
        ):
            raise PromQLSyntaxError(f"bad label matchers in {expr!r}")
        matchers.append((item[0].text, item[1].text, _unquote(item[2].text)))
    return matchers


def selectors(expr: str) -> list[Selector]:
    """The series selectors of ``expr``, in order."""
    tokens = _tokens(expr)
    _check_parentheses(tokens, expr)
    found: list[Selector] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.kind == "op" and token.text == "{":
            end = _closing(tokens, index, expr)
            matchers = _matchers(tokens[index + 1 : end], expr)
            names = [v for label, op, v in matchers if label == "__name__" and op == "="]
            rest = tuple(m for m in matchers if m[0] != "__name__")
            found.append(Selector(names[0] if names else None, rest))
            index = end + 1
            continue
        if token.kind == "op" and token.text == "[":
            index = _closing(tokens, index, expr) + 1
            continue
        if token.kind == "ident":
            word = token.text.lower()
            if word in _LABEL_LIST_KEYWORDS:
                if following is not None and following.text == "(":
                    index = _closing(tokens, index + 1, expr) + 1
                else:
                    index += 1
                continue
            # `sum(...)`, and `sum by (...) (...)`: an aggregation, not a metric.
            is_call = following is not None and (
                following.text == "("
                or (following.kind == "ident" and following.text.lower() in ("by", "without"))
            )
            if word not in _KEYWORDS and not is_call:
                if following is not None and following.text == "{":
                    end = _closing(tokens, index + 1, expr)
                    matchers = _matchers(tokens[index + 2 : end], expr)
                    found.append(Selector(token.text, tuple(matchers)))
                    index = end + 1
                    continue
                found.append(Selector(token.text, ()))
        index += 1
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names that ``expr`` selects."""
    return {selector.name for selector in selectors(expr) if selector.name is not None}


# Grafana's built-in interval variables and the dashboard's template variables,
# replaced by values Prometheus accepts so that the query can be checked.
_GRAFANA_DEFAULTS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__interval_ms": "60000",
    "__range_s": "3600",
}


def substitute_grafana_variables(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with ``$name``, ``${name}`` and ``[[name]]`` replaced.

    ``variables`` gives the dashboard's template variables; Grafana's own
    (``$__rate_interval``, ``$__interval``, ``$__range``) are built in. An
    unknown variable raises KeyError, so a query cannot use one the
    dashboard does not define.
    """
    values = {**_GRAFANA_DEFAULTS, **variables}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    pattern = r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)"
    return re.sub(pattern, replace, expr)
