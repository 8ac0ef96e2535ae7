"""The metric names a PromQL expression reads, and the names Darkroom's processes export:
enough to catch a renamed or misspelt metric in the alerts and the dashboard without a
Prometheus."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

# PromQL words that look like metric names: operators, modifiers, literals.
KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "offset", "bool", "inf", "nan", "atan2", "start", "end"}
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
# What a label list, a range or a subquery holds is never a metric name.
_BRACKETS = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$:])[a-zA-Z_:][a-zA-Z0-9_:]*")

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects (function names and keywords left out)."""
    text = _STRING.sub('""', expr)
    text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        after = text[match.end() :].lstrip()
        if after.startswith("("):
            continue  # a function: rate(, sum(, histogram_quantile(
        if match.group().lower() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def series(family: str, kind: str) -> set[str]:
    """The series names one family of `kind` produces (a counter's `_total`, a
    histogram's `_bucket`, `_sum` and `_count`, ...)."""
    return {family + suffix for suffix in _SUFFIXES[kind]}


def exported(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry's families produce."""
    names: set[str] = set()
    for family in registry.collect():
        names |= series(family.name, family.type)
    return names
