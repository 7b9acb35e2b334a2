"""Reading baseline values typed by people (CLI --set, CSV and Excel cells) against the
protocol's field definitions, and deciding eligibility from the registered rules.

Values are checked before anything is drawn: a unit with a missing or impossible value
gets no arm, and the message names the field, the value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from evalkit.dates import parse_iso
from evalkit.protocol import BaselineField, Protocol

TRUE = {"true", "yes", "y", "1"}
FALSE = {"false", "no", "n", "0"}


@dataclass(frozen=True)
class ValueProblem:
    field: str
    value: Any
    message: str


def _blank(raw: Any) -> bool:
    if raw is None:
        return True
    if isinstance(raw, float) and math.isnan(raw):
        return True
    return isinstance(raw, str) and raw.strip() == ""


def parse_value(f: BaselineField, raw: Any) -> Any:
    """One value of field ``f``; raises ValueError with a message a person can act on."""
    text = raw.strip() if isinstance(raw, str) else raw
    if f.type == "integer":
        if isinstance(text, bool):
            raise ValueError("is not a whole number")
        if isinstance(text, float) and text.is_integer():
            value: Any = int(text)
        else:
            try:
                value = int(str(text))
            except ValueError:
                raise ValueError("is not a whole number") from None
    elif f.type == "number":
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise ValueError("is not a number") from None
        if not math.isfinite(value):
            raise ValueError("is not a finite number")
    elif f.type == "boolean":
        if isinstance(text, bool):
            value = text
        elif str(text).lower() in TRUE:
            value = True
        elif str(text).lower() in FALSE:
            value = False
        else:
            raise ValueError("is not yes/no (write true or false)")
    elif f.type == "category":
        value = str(text)
        if isinstance(text, float) and text.is_integer():
            value = str(int(text))
        if f.levels and value not in f.levels:
            raise ValueError(f"is not one of the allowed values ({', '.join(f.levels)})")
    else:  # date
        if isinstance(text, datetime):
            value = text.date().isoformat()
        elif isinstance(text, date):
            value = text.isoformat()
        else:
            try:
                value = parse_iso(text).isoformat()
            except ValueError:
                raise ValueError("is not a date (write YYYY-MM-DD)") from None
    if f.type in {"integer", "number"}:
        check_range(value, f.min, f.max)
    return value


def check_range(value: float, low: float | None, high: float | None) -> None:
    """The protocol's allowed range, for baseline fields and outcomes alike."""
    if low is not None and value < low:
        raise ValueError(f"is below the minimum {low:g}")
    if high is not None and value > high:
        raise ValueError(f"is above the maximum {high:g}")


def parse_values(
    fields: list[BaselineField], raw: dict[str, Any], allow_extra: bool = False
) -> tuple[dict[str, Any], list[ValueProblem]]:
    """Typed values for every declared field (missing optional ones as None), and every
    problem found. Identifier fields are not returned: they never leave this function."""
    out: dict[str, Any] = {}
    problems: list[ValueProblem] = []
    known = {f.name for f in fields}
    for name in raw:
        if name not in known and not allow_extra:
            problems.append(ValueProblem(name, raw[name], "is not a field of this protocol"))
    for f in fields:
        value = raw.get(f.name)
        if _blank(value):
            if f.required:
                problems.append(ValueProblem(f.name, None, "is required but missing"))
            if not f.identifier:
                out[f.name] = None
            continue
        try:
            parsed = parse_value(f, value)
        except ValueError as exc:
            problems.append(ValueProblem(f.name, value, str(exc)))
            continue
        if not f.identifier:
            out[f.name] = parsed
    return out, problems


def ineligible_reasons(protocol: Protocol, values: dict[str, Any]) -> list[str]:
    """The reasons of every eligibility rule the unit fails (empty when eligible)."""
    return [
        r.reason
        for r in protocol.population.eligibility
        if not r.condition.holds(values.get(r.condition.field))
    ]


def stratum_label(names: list[str], values: dict[str, Any]) -> str:
    """'benefit=ESA|gender=female'; 'all' when the design has no strata."""
    if not names:
        return "all"
    return "|".join(f"{n}={_text(values.get(n))}" for n in names)


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)
