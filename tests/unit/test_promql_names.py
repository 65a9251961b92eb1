"""The PromQL metric-name extractor used by the deploy/ cross-checks (tests/support/promql.py)."""

from __future__ import annotations

import pytest
from support.promql import (
    PromQLSyntaxError,
    Selector,
    metric_names,
    selectors,
    substitute_grafana_variables,
)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", {"up"}),
        ('resync_cache_l2_up{namespace="llm"} == 0', {"resync_cache_l2_up"}),
        (
            "sum by (namespace, tier) (rate(resync_cache_requests_total[5m]))",
            {"resync_cache_requests_total"},
        ),
        (
            "sum(rate(a_total[5m])) without (instance) / ignoring(source) group_left sum(b_total)",
            {"a_total", "b_total"},
        ),
        (
            'histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket{le!="+Inf"}[1m])))',
            {"x_seconds_bucket"},
        ),
        ("rate(a_total[10m] offset 1h) > 3 * rate(a_total[1h:5m])", {"a_total"}),
        ("a > bool 1 and on (job) b or c unless d", {"a", "b", "c", "d"}),
        ('{__name__="by_name", job="x"}', {"by_name"}),
        ('{__name__=~"regex.*"}', set()),
        ('label_replace(a, "dst", "$1 b c", "src", "(.*)")', {"a"}),
        ("max without (state) (s{state=~'open|half_open'}) == 1", {"s"}),
        ("a # a comment naming not_a_metric\n + b", {"a", "b"}),
        ("recorded:ratio:rate5m * 1e-3 + Inf - NaN", {"recorded:ratio:rate5m"}),
        ("a @ 1609746000 + b[1h30m]", {"a", "b"}),
    ],
)
def test_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_selectors_keep_their_label_matchers() -> None:
    expr = (
        'sum by (tier) (rate(r_total{operation="get", result=~"hit|stale",}[5m]))'
        " / ignoring(tier) group_left sum(r_total{tier!='l1'})"
        ' + {__name__="named", kind!~"x.*"} + plain'
    )
    assert selectors(expr) == [
        Selector("r_total", (("operation", "=", "get"), ("result", "=~", "hit|stale"))),
        Selector("r_total", (("tier", "!=", "l1"),)),
        Selector("named", (("kind", "!~", "x.*"),)),
        Selector("plain", ()),
    ]


@pytest.mark.parametrize(
    "expr", ["sum(rate(a[5m])", 'a{b="c"', "a ; b", 'a{b="c" d="e"}', "a{b=c}"]
)
def test_unbalanced_or_foreign_syntax_is_refused(expr: str) -> None:
    with pytest.raises(PromQLSyntaxError):
        metric_names(expr)


def test_grafana_variables_are_substituted() -> None:
    expr = 'rate(a{namespace=~"$namespace", instance=~"${instance}"}[$__rate_interval])'
    assert (
        substitute_grafana_variables(expr, {"namespace": "llm", "instance": ".+"})
        == 'rate(a{namespace=~"llm", instance=~".+"}[1m])'
    )
    assert substitute_grafana_variables("increase(a[$__range])", {}) == "increase(a[1h])"
    assert substitute_grafana_variables("a[[[interval]]]", {"interval": "5m"}) == "a[5m]"


def test_unknown_grafana_variable_is_an_error() -> None:
    with pytest.raises(KeyError, match=r"\$missing"):
        substitute_grafana_variables("rate(a[$missing])", {})
