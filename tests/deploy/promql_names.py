"""What the deploy tests know about metrics: every series the code exports, with its labels (read
from the source with `ast`: the Counter/Gauge/Histogram/... definitions), and the selectors a
PromQL expression uses (parsed by promql-parser)."""

from __future__ import annotations

import ast
from pathlib import Path

import promql_parser

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("shared", "services")
# Labels Prometheus adds to every scraped series (deploy/prometheus/*.yml).
TARGET_LABELS = frozenset({"job", "instance", "pod", "namespace"})
# Series Prometheus itself writes for every target.
SCRAPE_SERIES = {"up": frozenset[str]()}

_KINDS = {
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
    "GaugeMetricFamily": "gauge",
    "CounterMetricFamily": "counter",
    "HistogramMetricFamily": "histogram",
}


def _string_list(node: ast.expr | None) -> list[str]:
    if isinstance(node, ast.List | ast.Tuple):
        return [
            e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
        ]
    return []


def _definitions(path: Path) -> list[tuple[str, str, list[str]]]:
    """(kind, name, label names) of every metric defined in a Python file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        callee = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if callee not in _KINDS or not node.args:
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        labels = _string_list(node.args[2]) if len(node.args) > 2 else []
        for keyword in node.keywords:
            if keyword.arg in ("labelnames", "labels"):
                labels = _string_list(keyword.value)
        found.append((_KINDS[callee], first.value, labels))
    return found


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name the processes expose, with its label names."""
    series: dict[str, frozenset[str]] = dict(SCRAPE_SERIES)
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            for kind, name, labels in _definitions(path):
                label_set = frozenset(labels)
                if kind == "counter":
                    series[f"{name.removesuffix('_total')}_total"] = label_set
                elif kind == "histogram":
                    series[f"{name}_bucket"] = label_set | {"le"}
                    series[f"{name}_count"] = label_set
                    series[f"{name}_sum"] = label_set
                elif kind == "summary":
                    series[name] = label_set | {"quantile"}
                    series[f"{name}_count"] = label_set
                    series[f"{name}_sum"] = label_set
                else:
                    series[name] = label_set
    return series


def selectors(expr: str) -> list[tuple[str | None, set[str]]]:
    """(metric name, label names matched) of every vector selector in a PromQL expression."""
    found: list[tuple[str | None, set[str]]] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            found.append((node.name, labels))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def unknown_names(expr: str, known: dict[str, frozenset[str]]) -> list[str]:
    """What in `expr` names a series or a label that nothing exports: empty when all is well."""
    problems = []
    for name, labels in selectors(expr):
        if name is None:
            problems.append("a selector without a metric name")
        elif name not in known:
            problems.append(f"metric {name}")
        else:
            extra = labels - known[name] - TARGET_LABELS
            if extra:
                problems.append(f"label(s) {sorted(extra)} of {name}")
    return problems
