"""Reading baseline values typed by people (CLI --set, CSV and Excel cells) against the
protocol's field definitions, and deciding eligibility from the registered rules.

Values are checked before anything is drawn: a unit with a missing or impossible value
gets no arm, and the message names the field, the value and what is allowed.

A category value that is not one of the field's levels (a referral on PIP when the
levels are ESA, JSA and UC) is a fact about the person, not a typing error: the person
was assessed and does not fit the pilot, so they are recorded as excluded with the reason
of the eligibility rule they fail (see :func:`ineligible_reasons`), and CONSORT's
"assessed" counts them. A value that matches a level except for letter case ("uc") is a
typing slip and is refused with "did you mean".
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


class OutsideLevels(ValueError):
    """A category value that is not one of the field's levels (nor one in another case)."""


@dataclass(frozen=True)
class Difference:
    """A baseline value given again that differs from the one in the log."""

    field: str
    recorded: Any
    given: Any

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "recorded": self.recorded, "given": self.given}

    def __str__(self) -> str:
        return f"{self.field}: recorded {_shown(self.recorded)}, given {_shown(self.given)}"


def _shown(v: Any) -> str:
    return "(none)" if v is None else repr(v) if isinstance(v, str) else _text(v)


def _blank(raw: Any) -> bool:
    if raw is None:
        return True
    if isinstance(raw, float) and math.isnan(raw):
        return True
    return isinstance(raw, str) and raw.strip() == ""


def parse_value(f: BaselineField, raw: Any) -> Any:
    """One value of field ``f``; raises ValueError with a message a person can act on.

    A category value outside the levels raises :class:`OutsideLevels` (callers checking
    a referral keep the value and exclude the person); one that differs from a level only
    in letter case raises a plain ValueError suggesting the level. A number outside the
    field's min and max stays an error: the range says what can be true of anyone (an
    age of 150), so such a value is a typing error, whereas who the pilot is for is
    said by the eligibility rules (``age between 18 and 64``), which exclude."""
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
            allowed = f"is not one of the allowed values ({', '.join(f.levels)})"
            same = [lv for lv in f.levels if lv.casefold() == value.casefold()]
            if same:
                raise ValueError(f"{allowed}: did you mean {' or '.join(map(repr, same))}?")
            raise OutsideLevels(allowed)
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
    fields: list[BaselineField],
    raw: dict[str, Any],
    allow_extra: bool = False,
    keep_outside_levels: bool = False,
) -> tuple[dict[str, Any], list[ValueProblem]]:
    """Typed values for every declared field (missing optional ones as None), and every
    problem found. Identifier fields are not returned: they never leave this function.

    With ``keep_outside_levels`` (referrals), a category value outside the field's levels
    is returned as typed rather than reported: :func:`ineligible_reasons` then excludes
    the person."""
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
        except OutsideLevels as exc:
            if not keep_outside_levels or f.identifier:
                problems.append(ValueProblem(f.name, value, str(exc)))
            else:
                out[f.name] = _category_text(value)
            continue
        except ValueError as exc:
            problems.append(ValueProblem(f.name, value, str(exc)))
            continue
        if not f.identifier:
            out[f.name] = parsed
    return out, problems


def _category_text(raw: Any) -> str:
    """A category cell as text, as :func:`parse_value` reads it (3.0 from Excel is '3')."""
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw.strip() if isinstance(raw, str) else raw)


def outside_levels(fields: list[BaselineField], values: dict[str, Any]) -> list[BaselineField]:
    """The category fields whose value is not one of their levels."""
    return [
        f
        for f in fields
        if f.type == "category"
        and f.levels
        and values.get(f.name) is not None
        and values[f.name] not in f.levels
    ]


def ineligible_reasons(protocol: Protocol, values: dict[str, Any]) -> list[str]:
    """The reasons of every eligibility rule the unit fails (empty when eligible).

    A category value outside its field's levels fails any rule on that field that it
    does not meet (PIP fails ``benefit in [ESA, JSA, UC]``); when no rule it fails
    covers the field, the reason names the field and its allowed levels, so that such a
    person is never allocated (a stratum or minimisation factor with an unknown level
    could not be randomised anyway)."""
    failed = [
        r
        for r in protocol.population.eligibility
        if not r.condition.holds(values.get(r.condition.field))
    ]
    reasons = [r.reason for r in failed]
    covered = {r.condition.field for r in failed}
    for f in outside_levels(protocol.fields, values):
        if f.name not in covered:
            reasons.append(f"{f.name} is not one of the allowed values ({', '.join(f.levels)})")
    return reasons


def baseline_differences(recorded: dict[str, Any], given: dict[str, Any]) -> list[Difference]:
    """Each field whose value given now differs from the one recorded in the log, in the
    order given. Someone enrolled again keeps their allocation (it is never redrawn), but
    the evaluator should know when the values typed this time disagree with the log. Both
    sides are typed by the same field definitions, so plain equality compares them."""
    return [
        Difference(name, recorded.get(name), value)
        for name, value in given.items()
        if recorded.get(name) != value
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
