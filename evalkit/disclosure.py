"""Statistical disclosure control for published counts.

A count from 1 to the protocol's threshold less one could identify a resident, so it is
shown as "fewer than N" (zeros are shown: they identify no one). Suppressing it is not
enough when the report also shows totals: a box that is the only unknown in "randomised =
analysed + lost + not yet due" can be recovered by subtraction. So the hidden cells are
checked against all the additive identities of the report at once, together with what
the labels give away (a count shown as "fewer than 10" is 1 to 9), by linear programming;
further cells are withheld until no hidden cell has only one possible value (secondary
suppression).

Percentages and rates whose numerator or denominator is suppressed are withheld too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linprog

PRIMARY = "primary"
SECONDARY = "secondary"


@dataclass(frozen=True)
class Identity:
    """total = sum(parts): a relation a reader can use to recover a hidden cell."""

    total: str
    parts: tuple[str, ...]


@dataclass
class Table:
    """Counts that appear (or can be derived) in one report, with their identities."""

    cells: dict[str, int] = field(default_factory=dict)
    identities: list[Identity] = field(default_factory=list)

    def add(self, name: str, value: int | float | None) -> None:
        if value is not None:
            self.cells[name] = round(float(value))

    def relate(self, total: str, parts: Iterable[str]) -> None:
        parts = tuple(p for p in parts if p in self.cells)
        if total in self.cells and parts:
            self.identities.append(Identity(total, parts))


def ranges(
    cells: Mapping[str, int], identities: list[Identity], status: Mapping[str, str], threshold: int
) -> dict[str, tuple[float, float]]:
    """What a reader can work out about each hidden cell: its smallest and largest value
    given the shown cells, the identities, and what the labels say (a count shown as
    "fewer than N" is between 1 and N - 1, since zeros are shown; any count is >= 0)."""
    names = sorted(status)
    if not names:
        return {}
    col = {n: j for j, n in enumerate(names)}
    rows, rhs = [], []
    for ident in identities:
        row = np.zeros(len(names))
        const = 0.0
        for name, coef in [(ident.total, 1.0), *((p, -1.0) for p in ident.parts)]:
            if name in col:
                row[col[name]] += coef
            else:
                const -= coef * cells[name]
        if row.any():
            rows.append(row)
            rhs.append(const)
    bounds = [(1, threshold - 1) if status[n] == PRIMARY else (0, None) for n in names]
    out = {}
    for n, j in col.items():
        if not rows:
            out[n] = bounds[j][0], bounds[j][1] if bounds[j][1] is not None else np.inf
            continue
        c = np.zeros(len(names))
        c[j] = 1.0
        lo = linprog(c, A_eq=np.array(rows), b_eq=rhs, bounds=bounds, method="highs")
        hi = linprog(-c, A_eq=np.array(rows), b_eq=rhs, bounds=bounds, method="highs")
        if lo.status != 0 or hi.status not in (0, 3):  # 3: unbounded above
            raise AssertionError(f"disclosure: the identities are inconsistent at {n}")
        out[n] = lo.fun, (-hi.fun if hi.status == 0 else np.inf)
    return out


def determined(
    cells: Mapping[str, int], identities: list[Identity], status: Mapping[str, str], threshold: int
) -> list[str]:
    """Hidden cells a reader could recover exactly (one whole number fits)."""
    return [
        n
        for n, (lo, hi) in ranges(cells, identities, status, threshold).items()
        if math.ceil(lo - 1e-9) >= math.floor(hi + 1e-9)
    ]


def suppress(table: Table, threshold: int) -> dict[str, str]:
    """Which cells to hide and why: {cell: "primary" | "secondary"}.

    Primary: every count from 1 to ``threshold`` - 1. Zeros are shown: "nobody" identifies
    no one, and hiding them would only make the rest easier to bound. Secondary: while a
    hidden cell can be recovered, hide the smallest shown cell of an identity it belongs
    to, preferring parts over totals so the headline totals survive.
    """
    status = {n: PRIMARY for n, v in table.cells.items() if 0 < v < threshold}
    for _ in range(len(table.cells) + 1):
        pinned = determined(table.cells, table.identities, status, threshold)
        if not pinned:
            return status
        target = pinned[0]
        candidates: list[tuple[bool, int, str]] = []
        for ident in table.identities:
            members = (ident.total, *ident.parts)
            if target not in members:
                continue
            for m in members:
                if m not in status:
                    candidates.append((m == ident.total, table.cells[m], m))
        if not candidates:  # pinned through identities whose members are all hidden
            for ident in table.identities:
                members = (ident.total, *ident.parts)
                if any(m in status for m in members):
                    candidates += [
                        (m == ident.total, table.cells[m], m) for m in members if m not in status
                    ]
        if not candidates:
            raise AssertionError(f"cannot protect {target}: every related cell is hidden")
        status[min(candidates)[2]] = SECONDARY
    raise AssertionError("secondary suppression did not converge")


@dataclass
class Shown:
    """The published form of each count, after suppression."""

    table: Table
    threshold: int
    hidden: dict[str, str]
    exact: bool = False

    def count(self, name: str) -> str:
        """The count as printed: the number, "fewer than N", or "withheld"."""
        if name not in self.table.cells:
            return "not recorded"
        if self.exact or name not in self.hidden:
            return f"{self.table.cells[name]:,}"
        if self.hidden[name] == PRIMARY:
            return f"fewer than {self.threshold}"
        return "withheld"

    def is_hidden(self, name: str) -> bool:
        return not self.exact and name in self.hidden

    def value(self, name: str) -> int | None:
        """The number, or None when it must not be published."""
        if name not in self.table.cells or self.is_hidden(name):
            return None
        return self.table.cells[name]

    def share(self, numerator: str, denominator: str) -> float | None:
        """A proportion, or None when it rests on a hidden count."""
        num, den = self.value(numerator), self.value(denominator)
        if num is None or den is None or den == 0:
            return None
        return num / den


def report_table(results: Mapping[str, Any]) -> Table:
    """Every people-count the reports print or imply, with the sums that link them.

    Place counts are not personal data and are not included."""
    t = Table()
    c = results["consort"]
    t.add("assessed", c["assessed"])
    t.add("excluded", c["excluded"]["total"])
    t.add("randomised", c["randomised"])
    t.relate("assessed", ["randomised", "excluded"])
    reasons = c["excluded"]["reasons"]
    for i, n in enumerate(reasons.values()):
        t.add(f"excluded.reason.{i}", n)
    if reasons and sum(reasons.values()) == c["excluded"]["total"]:
        t.relate("excluded", [f"excluded.reason.{i}" for i in range(len(reasons))])
    arm_totals = []
    for a in c["arms"]:
        k = f"arm.{a['arm']}"
        arm_totals.append(f"{k}.randomised")
        for box in ("randomised", "analysed", "lost_to_follow_up", "not_yet_due"):
            t.add(f"{k}.{box}", a[box])
        t.add(f"{k}.withdrawn", a["withdrawn"])
        t.add(f"{k}.did_not_start", a["did_not_start"])
        t.add(f"{k}.received", a["received"])
        t.relate(f"{k}.randomised", [f"{k}.analysed", f"{k}.lost_to_follow_up", f"{k}.not_yet_due"])
        if a["received"] is not None and a["received"] + a["did_not_start"] == a["randomised"]:
            t.relate(f"{k}.randomised", [f"{k}.received", f"{k}.did_not_start"])
    t.relate("randomised", arm_totals)
    for o in [results["primary"], *results.get("secondary", [])]:
        _outcome_cells(t, o, results)
    return t


def _outcome_cells(t: Table, o: Mapping[str, Any], results: Mapping[str, Any]) -> None:
    name = o["outcome"]
    control = next(a["name"] for a in results["arms"] if a.get("control"))
    for arm, n in (o.get("analysed") or {}).items():
        t.add(f"{name}.{arm}.analysed", n)
        if o.get("primary"):  # the same people as the CONSORT box
            t.relate(f"{name}.{arm}.analysed", [f"arm.{arm}.analysed"])
    b = o.get("binary")
    if b:
        for side, arm in (("control", control), ("treated", _treated(results))):
            n = f"{name}.{arm}.analysed"
            t.add(f"{name}.{arm}.events", b[f"events_{side}"])
            t.add(f"{name}.{arm}.non_events", b[f"n_{side}"] - b[f"events_{side}"])
            t.relate(n, [f"{name}.{arm}.events", f"{name}.{arm}.non_events"])
    for s in o.get("subgroups") or []:
        levels = [f"{name}.subgroup.{s['subgroup']}.{lv['level']}" for lv in s["levels"]]
        for cell, lv in zip(levels, s["levels"], strict=True):
            t.add(cell, lv["n"])
        total = sum(lv["n"] for lv in s["levels"])
        if o.get("effect") and total == o["effect"]["n"]:
            t.add(f"{name}.n", total)
            t.relate(f"{name}.n", levels)


def _treated(results: Mapping[str, Any]) -> str:
    return next(a["name"] for a in results["arms"] if not a.get("control"))


def rates_hidden(results: Mapping[str, Any], outcome: str, counts: Shown) -> bool:
    """Whether an outcome's rates must be withheld: a rate times the number analysed gives
    the events (or, from the other side, the people without the outcome)."""
    return any(
        counts.is_hidden(f"{outcome}.{a['name']}.{cell}")
        for a in results["arms"]
        for cell in ("events", "non_events")
    )


def lost_hidden(results: Mapping[str, Any], counts: Shown) -> bool:
    """Whether the share followed up must be withheld: it would give the few lost away."""
    return any(
        counts.is_hidden(f"arm.{a['arm']}.lost_to_follow_up") for a in results["consort"]["arms"]
    )


def starts_hidden(results: Mapping[str, Any], counts: Shown) -> bool:
    """Whether the share who started must be withheld: it would give the few who did not
    start away."""
    return counts.is_hidden(f"arm.{_treated(results)}.did_not_start")


def shown(results: Mapping[str, Any], exact: bool = False) -> Shown:
    """The disclosure-controlled counts of one results.json."""
    threshold = int(
        ((results.get("protocol") or {}).get("reporting") or {}).get("suppression_threshold", 10)
    )
    table = report_table(results)
    return Shown(table, threshold, suppress(table, threshold), exact=exact)
