"""Eligibility conditions written the way an evaluator says them.

A rule such as ``months_unemployed >= 24``, ``benefit in [ESA, JSA, UC]`` or
``age between 18 and 64`` is parsed once into a typed :class:`Condition`, so a typo in a
rule is caught at validation time rather than when the first referral arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

Operator = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in", "between"]

_RULE = re.compile(
    r"^\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*)\s+"
    r"(?P<op>==|!=|<=|>=|<|>|not\s+in|in|between)\s+(?P<rest>.+?)\s*$"
)
_BETWEEN = re.compile(r"^(?P<low>\S+)\s+and\s+(?P<high>\S+)$")


class ConditionSyntaxError(ValueError):
    """A rule that cannot be read; the message says what form is expected."""


def _scalar(text: str) -> Any:
    """Read one value as YAML would: numbers, booleans, quoted or bare words."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in {"true", "yes"}:
        return True
    if lowered in {"false", "no"}:
        return False
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Condition:
    field: str
    op: Operator
    value: Any

    @classmethod
    def parse(cls, rule: str) -> Condition:
        m = _RULE.match(rule)
        if not m:
            raise ConditionSyntaxError(
                f"cannot read rule {rule!r}; write FIELD OP VALUE, e.g. "
                "'months_unemployed >= 24', 'benefit in [ESA, JSA]' or 'age between 18 and 64'"
            )
        field, op, rest = m["field"], re.sub(r"\s+", " ", m["op"]), m["rest"]
        if op in {"in", "not in"}:
            if not (rest.startswith("[") and rest.endswith("]")):
                raise ConditionSyntaxError(
                    f"rule {rule!r}: '{op}' takes a list in brackets, e.g. [ESA, JSA, UC]"
                )
            items = [_scalar(x) for x in rest[1:-1].split(",") if x.strip()]
            if not items:
                raise ConditionSyntaxError(f"rule {rule!r}: the list is empty")
            return cls(field, op, tuple(items))  # type: ignore[arg-type]
        if op == "between":
            b = _BETWEEN.match(rest)
            if not b:
                raise ConditionSyntaxError(f"rule {rule!r}: write 'FIELD between LOW and HIGH'")
            low, high = _scalar(b["low"]), _scalar(b["high"])
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
                raise ConditionSyntaxError(f"rule {rule!r}: 'between' takes two numbers")
            if low > high:
                raise ConditionSyntaxError(f"rule {rule!r}: {low} is above {high}")
            return cls(field, "between", (low, high))
        return cls(field, op, _scalar(rest))  # type: ignore[arg-type]

    def holds(self, value: Any) -> bool:
        """Whether a unit's value meets the condition; a missing value never does."""
        if value is None:
            return False
        op, target = self.op, self.value
        if op == "in":
            return value in target
        if op == "not in":
            return value not in target
        if op == "between":
            return target[0] <= value <= target[1]
        if op == "==":
            return value == target
        if op == "!=":
            return value != target
        if op == "<":
            return value < target
        if op == "<=":
            return value <= target
        if op == ">":
            return value > target
        return value >= target

    def values(self) -> tuple[Any, ...]:
        """The literal values the rule compares against, for checking against a field."""
        if self.op in {"in", "not in", "between"}:
            return tuple(self.value)
        return (self.value,)
