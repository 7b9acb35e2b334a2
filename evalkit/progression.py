"""Progression criteria: the registered green/amber/red thresholds that decide whether a
pilot scales, adapts or stops, evaluated on what has been observed so far."""

from __future__ import annotations

from datetime import date
from typing import Any

from evalkit.protocol import ProgressionCriterion, Protocol

WORDS = {
    "green": "on track",
    "amber": "needs attention",
    "red": "off track",
    "not_yet": "not yet measurable",
}


def rating(c: ProgressionCriterion, value: float | None) -> str:
    if value is None:
        return "not_yet"
    if value >= c.green:
        return "green"
    if value >= c.amber:
        return "amber"
    return "red"


def _months(first: date, last: date) -> float:
    return max((last - first).days / (365.25 / 12), 1.0)


def observed_value(metric: str, protocol: Protocol, rows: list[dict[str, Any]]) -> float | None:
    if not rows:
        return None
    if metric == "recruitment_per_month":
        days = sorted(date.fromisoformat(r["randomised_on"]) for r in rows)
        return len(rows) / _months(days[0], days[-1])
    if metric == "retention":
        status = [r[f"{protocol.primary.name}_status"] for r in rows]
        due = [s for s in status if s != "not_yet_due"]
        return sum(s == "observed" for s in due) / len(due) if due else None
    if metric == "adherence":
        treated = [r for r in rows if r["arm"] != protocol.control.name]
        known = [r for r in treated if r["started"] is not None]
        return sum(r["started"] is True for r in treated) / len(treated) if known else None
    fields = [f.name for f in protocol.fields if not f.identifier]
    cells = len(rows) * len(fields)
    filled = sum(r.get(f) is not None for r in rows for f in fields)
    return filled / cells if cells else None


def evaluate(protocol: Protocol, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each registered criterion with its observed value, rating and words."""
    out = []
    for c in protocol.progression:
        value = observed_value(c.metric, protocol, rows)
        r = rating(c, value)
        out.append(
            {
                "metric": c.metric,
                "label": c.label,
                "value": value,
                "green": c.green,
                "amber": c.amber,
                "rating": r,
                "words": WORDS[r],
            }
        )
    return out
