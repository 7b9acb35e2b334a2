"""Statistical disclosure control for published counts.

A count from 1 to the protocol's threshold less one could identify a resident, so it is
shown as "fewer than N" (zeros are shown: they identify no one). Suppressing it is not
enough when the report also shows totals: a box that is the only unknown in "randomised =
analysed + lost + not yet due" can be recovered by subtraction. So the hidden cells are
checked against all the additive identities of the report at once (and the inequalities a
reader knows, such as "no more people analysed for an outcome than were randomised"),
together with what the labels give away, by integer programming: a count shown as "fewer
than N" is 1 to N - 1, and a count shown as "withheld" is N or more, because zeros and
small counts are never withheld (they are shown, or shown as "fewer than N"). Further
cells are withheld until no hidden cell has only one possible whole value (secondary
suppression). A hidden cell that nothing bounds from above (a total whose every part is
hidden too) has infinitely many possible values: it is protected, not an error.

Some counts are never printed but can be worked out from figures that are: the people
with and without an outcome in each arm (from its rates), and the people analysed in each
arm for a secondary outcome (from the standard errors of its rates or standardised
effect). Each outcome's such counts form a group: the figures are published whole or
withheld whole, so either every count of the group is known exactly or the reader knows
nothing of any of them but that it is a whole number (status "unpublished").

Percentages and rates whose numerator or denominator is suppressed are withheld too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

PRIMARY = "primary"  # 1 to threshold - 1, printed "fewer than N"
SECONDARY = "secondary"  # threshold or more, printed "withheld"
UNPUBLISHED = "unpublished"  # never printed: its group's figures are withheld


@dataclass(frozen=True)
class Identity:
    """total = sum(parts): a relation a reader can use to recover a hidden cell."""

    total: str
    parts: tuple[str, ...]


@dataclass(frozen=True)
class Limit:
    """sum(parts) <= sum(totals): what a reader knows without an identity, e.g. no more
    people analysed for a secondary outcome than were randomised in the arm."""

    totals: tuple[str, ...]
    parts: tuple[str, ...]


def _sides(rel: Identity | Limit) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the larger side, the smaller side) of a relation."""
    return ((rel.total,) if isinstance(rel, Identity) else rel.totals), rel.parts


@dataclass
class Table:
    """Counts that appear (or can be derived) in one report, with their identities.

    ``public`` cells are printed (or given away, e.g. by a t-test's degrees of freedom)
    whatever their status, so secondary suppression withholds one only when nothing else
    protects a small count. ``groups`` are counts never printed but worked out from
    figures published or withheld together (see the module's docstring)."""

    cells: dict[str, int] = field(default_factory=dict)
    identities: list[Identity] = field(default_factory=list)
    limits: list[Limit] = field(default_factory=list)
    public: set[str] = field(default_factory=set)
    groups: list[tuple[str, ...]] = field(default_factory=list)

    def group(self, names: Iterable[str]) -> None:
        """Counts whose figures are published or withheld together."""
        names = tuple(n for n in names if n in self.cells)
        if names:
            self.groups.append(names)

    def group_of(self, name: str) -> tuple[str, ...] | None:
        return next((g for g in self.groups if name in g), None)

    def add(self, name: str, value: int | float | None, public: bool = False) -> None:
        if value is not None:
            self.cells[name] = round(float(value))
            if public:
                self.public.add(name)

    def relate(self, total: str, parts: Iterable[str]) -> None:
        """Record total = sum(parts) when it holds (a sum that does not hold is no help to
        a reader, and would make the problem infeasible)."""
        parts = tuple(p for p in parts if p in self.cells)
        if total in self.cells and parts and self._sum(parts) == self.cells[total]:
            self.identities.append(Identity(total, parts))

    def bound(self, totals: str | Iterable[str], parts: Iterable[str]) -> None:
        """Record sum(parts) <= sum(totals) when it holds and every cell is in the table."""
        big = (totals,) if isinstance(totals, str) else tuple(totals)
        parts = tuple(parts)
        if (
            big
            and parts
            and all(p in self.cells for p in (*big, *parts))
            and self._sum(parts) <= self._sum(big)
        ):
            self.limits.append(Limit(big, parts))

    def _sum(self, parts: Sequence[str]) -> int:
        return sum(self.cells[p] for p in parts)


def ranges(
    cells: Mapping[str, int],
    identities: Sequence[Identity],
    status: Mapping[str, str],
    threshold: int,
    limits: Sequence[Limit] = (),
) -> dict[str, tuple[float, float]]:
    """What a reader can work out about each hidden cell: its smallest and largest whole
    value given the shown cells, the identities and limits, and what the labels say (a
    count shown as "fewer than N" is 1 to N - 1; a withheld count is N or more, since
    zeros and small counts are never withheld; an unpublished one is any whole number).
    The largest is ``math.inf`` when nothing bounds the cell from above."""
    out: dict[str, tuple[float, float]] = {}
    for names, relations in _components(status, [*identities, *limits]):
        out.update(_component_ranges(cells, names, relations, status, threshold))
    return out


def _members(rel: Identity | Limit) -> tuple[str, ...]:
    big, small = _sides(rel)
    return (*big, *small)


def _components(
    status: Mapping[str, str], relations: Sequence[Identity | Limit]
) -> list[tuple[list[str], list[Identity | Limit]]]:
    """The hidden cells in groups that no relation links to one another, each with its
    relations: a reader's knowledge of one group says nothing about another, so each is
    solved on its own (and, while cells are being chosen, solved again only if it
    changed)."""
    parent = {n: n for n in status}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    linked = []
    for rel in relations:
        hidden = [m for m in _members(rel) if m in status]
        if hidden:
            linked.append((rel, hidden[0]))
            for m in hidden[1:]:
                parent[find(m)] = find(hidden[0])
    groups: dict[str, tuple[list[str], list[Identity | Limit]]] = {}
    for n in sorted(status):
        groups.setdefault(find(n), ([], []))[0].append(n)
    for rel, first in linked:
        groups[find(first)][1].append(rel)
    return list(groups.values())


@dataclass
class _Problem:
    """The reader's integer program for one group of hidden cells (columns in the
    group's order): the relations with the shown cells filled in, and each label's
    bounds. Identities are rows of ``eq`` (== ``eq_rhs``), limits rows of ``ge``
    (>= ``ge_rhs``)."""

    eq: np.ndarray
    eq_rhs: np.ndarray
    ge: np.ndarray
    ge_rhs: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def trivial(self) -> bool:
        return not len(self.eq) and not len(self.ge)

    def propagated(self, rounds: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """Bounds implied by the relations, row by row, until nothing changes (each
        step only derives what must hold, so a cell whose bounds meet is pinned; cells
        whose bounds do not meet may still be, which the solver settles)."""
        lo, hi = self.lo.copy(), self.hi.copy()
        rows = [(a, b, True) for a, b in zip(self.eq, self.eq_rhs, strict=True)]
        rows += [(a, b, False) for a, b in zip(self.ge, self.ge_rhs, strict=True)]
        rows = [(np.flatnonzero(a), a[np.flatnonzero(a)], b, eq) for a, b, eq in rows]
        for _ in range(rounds):
            changed = False
            for idx, coef, b, equal in rows:
                # coef.x >= b (and <= b when equal): bound each term by the others' extremes
                top = [c * (hi[i] if c > 0 else lo[i]) for i, c in zip(idx, coef, strict=True)]
                low = [c * (lo[i] if c > 0 else hi[i]) for i, c in zip(idx, coef, strict=True)]
                for k, (i, c) in enumerate(zip(idx, coef, strict=True)):
                    implied = [(b - sum(top[:k] + top[k + 1 :]), c > 0)]
                    if equal:
                        implied.append((b - sum(low[:k] + low[k + 1 :]), c < 0))
                    for value, is_lower in implied:  # c x_i >= value, or <= value
                        if math.isinf(value):
                            continue
                        v = value / c
                        if is_lower and math.ceil(v - 1e-9) > lo[i]:
                            lo[i], changed = math.ceil(v - 1e-9), True
                        elif not is_lower and math.floor(v + 1e-9) < hi[i]:
                            hi[i], changed = math.floor(v + 1e-9), True
            if not changed:
                break
        return lo, hi

    def extreme(self, j: int, sign: float) -> tuple[str, np.ndarray | None]:
        """The smallest (sign 1) or largest (sign -1) value of column j, as ("found",
        a whole-number solution) or ("unbounded", None). The linear relaxation is tried
        first: its vertex solutions are whole numbers for sums like these, and a
        whole-number solution is as good a witness as the integer program's, at a
        fraction of the cost."""
        c = np.zeros(len(self.lo))
        c[j] = sign
        lp = linprog(
            c,
            A_ub=-self.ge if len(self.ge) else None,
            b_ub=-self.ge_rhs if len(self.ge) else None,
            A_eq=self.eq if len(self.eq) else None,
            b_eq=self.eq_rhs if len(self.eq) else None,
            bounds=[
                (lo, None if math.isinf(hi) else hi)
                for lo, hi in zip(self.lo, self.hi, strict=True)
            ],
            method="highs",
        )
        if lp.status == 3:  # a feasible integer program with an unbounded relaxation is too
            return "unbounded", None
        if lp.status == 0 and np.allclose(lp.x, np.round(lp.x), atol=1e-7):
            return "found", np.round(lp.x)
        constraints = []
        if len(self.eq):
            constraints.append(LinearConstraint(self.eq, self.eq_rhs, self.eq_rhs))
        if len(self.ge):
            constraints.append(LinearConstraint(self.ge, self.ge_rhs, np.inf))
        res = milp(
            c,
            constraints=constraints,
            integrality=np.ones(len(c)),
            bounds=Bounds(self.lo, self.hi),
        )
        if res.status == 0:
            return "found", np.round(res.x)
        if res.status in (3, 4) and sign < 0:  # "unbounded or infeasible"; it is feasible
            return "unbounded", None
        raise AssertionError("disclosure: the identities are inconsistent")


def _component_problem(
    cells: Mapping[str, int],
    names: list[str],
    relations: Sequence[Identity | Limit],
    status: Mapping[str, str],
    threshold: int,
) -> _Problem:
    col = {n: j for j, n in enumerate(names)}
    rows: dict[bool, tuple[list[np.ndarray], list[float]]] = {True: ([], []), False: ([], [])}
    for rel in relations:
        a, const = np.zeros(len(names)), 0.0
        big, small = _sides(rel)
        for name, coef in [*((m, 1.0) for m in big), *((m, -1.0) for m in small)]:
            if name in col:
                a[col[name]] += coef
            else:
                const -= coef * cells[name]
        if a.any():  # totals - parts == const (identity) or >= const (limit)
            rows[isinstance(rel, Identity)][0].append(a)
            rows[isinstance(rel, Identity)][1].append(const)

    def matrix(kind: bool) -> tuple[np.ndarray, np.ndarray]:
        a, b = rows[kind]
        return np.array(a).reshape(len(a), len(names)), np.array(b, dtype=float)

    eq, eq_rhs = matrix(True)
    ge, ge_rhs = matrix(False)
    floor = {PRIMARY: 1.0, SECONDARY: float(threshold), UNPUBLISHED: 0.0}
    lo = np.array([floor[status[n]] for n in names])
    hi = np.array([threshold - 1.0 if status[n] == PRIMARY else np.inf for n in names])
    return _Problem(eq, eq_rhs, ge, ge_rhs, lo, hi)


def _component_ranges(
    cells: Mapping[str, int],
    names: list[str],
    relations: Sequence[Identity | Limit],
    status: Mapping[str, str],
    threshold: int,
) -> dict[str, tuple[float, float]]:
    problem = _component_problem(cells, names, relations, status, threshold)
    out: dict[str, tuple[float, float]] = {}
    for j, n in enumerate(names):
        if problem.trivial:
            out[n] = float(problem.lo[j]), float(problem.hi[j])
            continue
        ends = []
        for sign in (1.0, -1.0):
            _, x = problem.extreme(j, sign)
            ends.append(math.inf if x is None else float(x[j]))
        out[n] = ends[0], ends[1]
    return out


def _component_pinned(
    cells: Mapping[str, int],
    names: list[str],
    relations: Sequence[Identity | Limit],
    status: Mapping[str, str],
    threshold: int,
    known_free: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[str], set[str]]:
    """The cells of one group that only their true value fits, and those that are free.
    Any whole-number solution that fits the reader's knowledge frees every cell it gives
    another value, so one solve usually settles many cells; a cell is pinned only if
    neither the smallest nor the largest value it can take differs from its own.
    ``known_free``: cells already shown free (with fewer cells hidden), not checked."""
    problem = _component_problem(cells, names, relations, status, threshold)
    if problem.trivial:
        pinned = [n for j, n in enumerate(names) if problem.lo[j] >= problem.hi[j]]
        return pinned, set(names) - set(pinned)
    truth = np.array([cells[n] for n in names], dtype=float)
    free = np.array([n in known_free for n in names], dtype=bool)
    lo, hi = problem.propagated()
    pinned = []
    for j, n in enumerate(names):
        for sign in (1.0, -1.0):
            if not free[j] and lo[j] >= hi[j]:
                break
            if free[j]:
                break
            _, x = problem.extreme(j, sign)
            if x is None:
                free[j] = True
            else:
                free |= np.abs(x - truth) > 0.5
        if not free[j]:
            pinned.append(n)
    return pinned, {n for j, n in enumerate(names) if free[j]}


def determined(
    cells: Mapping[str, int],
    identities: Sequence[Identity],
    status: Mapping[str, str],
    threshold: int,
    limits: Sequence[Limit] = (),
) -> list[str]:
    """Hidden cells a reader could recover exactly (one whole number fits). A cell with
    no upper bound is never one of them."""
    return [
        n
        for n, (lo, hi) in ranges(cells, identities, status, threshold, limits).items()
        if not math.isinf(hi) and lo >= hi
    ]


class _Pinned:
    """``determined`` for one table, for a hidden set that only grows. Withholding more
    cells only widens what a reader can infer, so a cell once shown to have two possible
    values keeps them whatever else is withheld: only the rest is checked again. Each
    group of hidden cells already solved is remembered too, since choosing the next cell
    to withhold tries several, each changing one group."""

    def __init__(self, table: Table, threshold: int) -> None:
        self.table, self.threshold = table, threshold
        self.relations = [*table.identities, *table.limits]
        self.seen: dict[frozenset[tuple[str, str]], list[str]] = {}
        self.freed: list[tuple[frozenset[str], set[str]]] = []

    def __call__(self, status: Mapping[str, str]) -> list[str]:
        hidden = frozenset(status)
        known = set().union(*(free for under, free in self.freed if under <= hidden))
        pinned = []
        for names, relations in _components(status, self.relations):
            key = frozenset((n, status[n]) for n in names)
            if key not in self.seen:
                found, free = _component_pinned(
                    self.table.cells, names, relations, status, self.threshold, known
                )
                self.seen[key] = found
                self.freed.append((hidden, free))
            pinned += self.seen[key]
        return sorted(pinned)


def suppress(table: Table, threshold: int) -> dict[str, str]:
    """Which cells to hide and why: {cell: "primary" | "secondary" | "unpublished"}.

    Primary: every count from 1 to ``threshold`` - 1. Zeros are shown: "nobody"
    identifies no one, and hiding them would only make the rest easier to bound (a reader
    who knows that withheld cells are never small would read a withheld zero back at
    once). A group of derived counts with a hidden one in it is unpublished whole.
    Secondary: while a hidden count that matters can be recovered, withhold one (or two)
    more shown cells of the sums that tie it to the page (see ``_choose``); a derived
    count is withheld by unpublishing its group. Public cells are withheld only when
    nothing else is left. What matters: every printed hidden count, and an unpublished
    one from 1 to ``threshold`` - 1.

    Some small counts cannot be protected by withholding others: those tied to a public
    total (the levels of a subgroup add up to the people analysed, printed with the
    effect). When the search gets stuck, it starts again with each such count no longer
    printed even as "fewer than N" but as "not published", which tells a reader nothing
    of its size."""
    unprintable: set[str] = set()
    for _ in range(len(table.cells) + 1):
        hopeless: list[str] = []
        try:
            return _suppress(table, threshold, unprintable, hopeless)
        except _Stuck as stuck:
            # the first count nothing could free, else the one the search stopped at,
            # else every hidden count tied to it (a tiny pilot where nearly every count
            # is small): none of them printed even as "fewer than N"
            first = next((n for n in hopeless if n not in unprintable), stuck.target)
            if first in unprintable:
                relations = [*table.identities, *table.limits]
                tied = next(n for n, _ in _components(stuck.status, relations) if first in n)
                if set(tied) <= unprintable:
                    raise AssertionError(f"cannot protect {first}") from None
                unprintable.update(tied)
            else:
                unprintable.add(first)
    raise AssertionError("secondary suppression did not converge")


class _Stuck(Exception):
    """No shown cell is left that could protect ``target``."""

    def __init__(self, target: str, status: Mapping[str, str]) -> None:
        super().__init__(f"cannot protect {target}: every related cell is hidden or zero")
        self.target = target
        self.status = dict(status)


def _suppress(
    table: Table, threshold: int, unprintable: set[str], hopeless: list[str]
) -> dict[str, str]:
    small = [n for n, v in table.cells.items() if 0 < v < threshold]
    status = {n: PRIMARY for n in small if table.group_of(n) is None}
    status = _withhold(table, status, [n for n in small if table.group_of(n) is not None])
    status.update(dict.fromkeys(unprintable, UNPUBLISHED))
    pinned = _Pinned(table, threshold)
    for _ in range(len(table.cells) + 1):
        found = _exposed(table, pinned, status)
        if not found:
            return status
        chosen, frees = _choose(table, status, pinned, found[0])
        if not frees:
            hopeless.append(found[0])
        status = _withhold(table, status, chosen)
    raise AssertionError("secondary suppression did not converge")


def _withhold(table: Table, status: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """``status`` with ``names`` withheld: a derived count by unpublishing its whole
    group, any other as secondary."""
    out = dict(status)
    for n in names:
        group = table.group_of(n)
        if group is None:
            out.setdefault(n, SECONDARY)
        else:
            out.update(dict.fromkeys(group, UNPUBLISHED))
    return out


def _exposed(table: Table, pinned: _Pinned, status: Mapping[str, str]) -> list[str]:
    """Hidden counts a reader could recover that must not be: any printed one, and any
    unpublished one from 1 to the threshold less one."""
    return [
        n
        for n in pinned(status)
        if status[n] != UNPUBLISHED or 0 < table.cells[n] < pinned.threshold
    ]


def _choose(
    table: Table, status: dict[str, str], pinned: _Pinned, target: str
) -> tuple[list[str], bool]:
    """The next cells to withhold so that ``target`` can no longer be recovered, and
    whether they free it at once.

    Candidates are the shown, non-zero cells of the relations that tie the target's group
    of hidden cells together (else of any relation with a hidden cell), public cells last.
    The best one frees the target, then leaves the fewest cells recoverable, then is a
    part somewhere rather than only ever a total (so headline totals survive), then is
    the smallest. When no single cell frees the target, the best pair that does; when
    none does either, the best single cell (a step towards freeing it)."""
    relations = [*table.identities, *table.limits]
    group = next(names for names, _ in _components(status, relations) if target in names)
    linked = [r for r in relations if any(m in group for m in _members(r))]
    touching = [r for r in relations if any(m in status for m in _members(r))]
    for public in (False, True):
        for rels in (linked, touching):
            only_total: dict[str, bool] = {}
            for r in rels:
                big, _ = _sides(r)
                for m in _members(r):
                    if m in status or (m in table.public) != public:
                        continue
                    if table.cells[m] == 0 and table.group_of(m) is None:
                        continue
                    only_total[m] = only_total.get(m, True) and m in big
            if not only_total:
                continue

            def score(
                ms: tuple[str, ...], only_total: dict[str, bool] = only_total
            ) -> tuple[bool, int, int, int, tuple[str, ...]]:
                after = _exposed(table, pinned, _withhold(table, status, ms))
                return (
                    target in after,
                    len(after),
                    sum(only_total[m] for m in ms),
                    sum(table.cells[m] for m in ms),
                    ms,
                )

            ranked = sorted(only_total, key=lambda m: (only_total[m], table.cells[m], m))[:10]
            best = min(((m,) for m in ranked), key=score)
            if score(best)[0]:
                pairs = [(a, b) for i, a in enumerate(ranked[:8]) for b in ranked[i + 1 : 8]]
                freeing = [p for p in pairs if not score(p)[0]]
                if freeing:
                    return list(min(freeing, key=score)), True
                return list(best), False
            return list(best), True
    raise _Stuck(target, status)


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
        if self.hidden[name] == UNPUBLISHED:
            return "not published"
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
    """Every people-count the reports print or imply, with the sums that link them and
    the inequalities a reader knows.

    Place counts are not personal data and are not included. An outcome's ``n`` (the
    people in its effect estimate) is public: every effect row prints it, and a t-test's
    degrees of freedom give it away anyway."""
    t = Table()
    c = results["consort"]
    t.add("assessed", c["assessed"])
    t.add("excluded", c["excluded"]["total"])
    t.add("randomised", c["randomised"])
    t.relate("assessed", ["randomised", "excluded"])
    reasons = c["excluded"]["reasons"]
    names = [f"excluded.reason.{i}" for i in range(len(reasons))]
    for name, n in zip(names, reasons.values(), strict=True):
        t.add(name, n)
    if reasons and sum(reasons.values()) == c["excluded"]["total"]:
        t.relate("excluded", names)
    elif reasons:  # a person may have several reasons, and has at least one
        for name in names:
            t.bound("excluded", [name])
        t.bound(names, ["excluded"])
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
        t.bound(f"{k}.randomised", [f"{k}.withdrawn"])
        if a["received"] is None:
            t.bound(f"{k}.randomised", [f"{k}.did_not_start"])
        elif a["received"] + a["did_not_start"] == a["randomised"]:
            t.relate(f"{k}.randomised", [f"{k}.received", f"{k}.did_not_start"])
        else:
            t.bound(f"{k}.randomised", [f"{k}.received", f"{k}.did_not_start"])
    t.relate("randomised", arm_totals)
    for o in [results["primary"], *results.get("secondary", [])]:
        _outcome_cells(t, o, results)
    return t


def _outcome_cells(t: Table, o: Mapping[str, Any], results: Mapping[str, Any]) -> None:
    name = o["outcome"]
    control = next(a["name"] for a in results["arms"] if a.get("control"))
    analysed = o.get("analysed") or {}
    for arm, n in analysed.items():
        t.add(f"{name}.{arm}.analysed", n)
        if o.get("primary"):  # the same people as the CONSORT box
            t.relate(f"{name}.{arm}.analysed", [f"arm.{arm}.analysed"])
        else:
            t.bound(f"arm.{arm}.randomised", [f"{name}.{arm}.analysed"])
    b = o.get("binary")
    if b:
        for side, arm in (("control", control), ("treated", _treated(results))):
            n = f"{name}.{arm}.analysed"
            t.add(f"{name}.{arm}.events", b[f"events_{side}"])
            t.add(f"{name}.{arm}.non_events", b[f"n_{side}"] - b[f"events_{side}"])
            t.relate(n, [f"{name}.{arm}.events", f"{name}.{arm}.non_events"])
    t.group(_derived(name, o, analysed))
    effect = o.get("effect")
    if effect and effect.get("n") is not None:
        t.add(f"{name}.n", effect["n"], public=True)
        t.relate(f"{name}.n", [f"{name}.{arm}.analysed" for arm in analysed])
    for s in o.get("subgroups") or []:
        levels = [f"{name}.subgroup.{s['subgroup']}.{lv['level']}" for lv in s["levels"]]
        for cell, lv in zip(levels, s["levels"], strict=True):
            t.add(cell, lv["n"])
        t.relate(f"{name}.n", levels)
        if f"{name}.n" in t.cells and t._sum(levels) < t.cells[f"{name}.n"]:
            t.bound(f"{name}.n", levels)


def _derived(name: str, o: Mapping[str, Any], analysed: Iterable[str]) -> list[str]:
    """The counts of an outcome that are never printed but follow from its published
    figures: with and without the outcome in each arm (its rates), and for a secondary
    outcome the people analysed in each arm (the standard errors of its rates or of its
    standardised effect). The primary outcome's analysed are printed CONSORT boxes."""
    cells = [f"{name}.{arm}.{c}" for arm in analysed for c in ("events", "non_events")]
    if not o.get("primary"):
        cells += [f"{name}.{arm}.analysed" for arm in analysed]
    return cells


def _treated(results: Mapping[str, Any]) -> str:
    return next(a["name"] for a in results["arms"] if not a.get("control"))


def figures_hidden(results: Mapping[str, Any], outcome: str, counts: Shown) -> bool:
    """Whether an outcome's figures must be withheld: its rates and the measures built on
    them (a rate times the number analysed gives the events, or from the other side the
    people without the outcome), and the standard errors of its standardised effect
    (which give the numbers analysed in each arm)."""
    o = next(
        (x for x in [results["primary"], *results.get("secondary", [])] if x["outcome"] == outcome),
        {"outcome": outcome},
    )
    arms = [a["name"] for a in results["arms"]]
    return any(counts.is_hidden(c) for c in _derived(outcome, o, arms))


rates_hidden = figures_hidden  # the name the wording and older callers use


def lost_hidden(results: Mapping[str, Any], counts: Shown) -> bool:
    """Whether the share followed up must be withheld: it would give the few lost away."""
    return any(
        counts.is_hidden(f"arm.{a['arm']}.lost_to_follow_up") for a in results["consort"]["arms"]
    )


def starts_hidden(results: Mapping[str, Any], counts: Shown) -> bool:
    """Whether the share who started must be withheld: it would give the few who did not
    start away."""
    return counts.is_hidden(f"arm.{_treated(results)}.did_not_start")


def attrition_hidden(results: Mapping[str, Any], counts: Shown) -> bool:
    """Whether attrition percentages (overall, by arm, the observed share of the missing-
    data analysis) must be withheld: times the arm's size they give the lost, so they go
    when any box they rest on is hidden."""
    return any(
        counts.is_hidden(f"arm.{a['arm']}.{box}")
        for a in results["consort"]["arms"]
        for box in ("randomised", "analysed", "lost_to_follow_up", "not_yet_due")
    )


def flow_hidden(counts: Shown) -> bool:
    """Whether any CONSORT box is hidden: then the number of entries in the allocation
    log (one per person assessed, plus each withdrawal, start and note) is withheld, and
    the row counts of the outcome files, which could stand in for a box."""
    return any(
        counts.is_hidden(n)
        for n in counts.table.cells
        if n in ("assessed", "excluded", "randomised") or n.startswith(("arm.", "excluded."))
    )


def cost_totals_hidden(results: Mapping[str, Any], counts: Shown) -> bool:
    """Whether total costs must be withheld: a total over the cost per person is the
    number offered the new support."""
    return counts.is_hidden(f"arm.{_treated(results)}.randomised")


def recruitment_hidden(counts: Shown) -> bool:
    """Whether recruitment per month must be withheld: over a month or so it is the
    number randomised."""
    return counts.is_hidden("randomised")


def subgroup_hidden(outcome: str, subgroup: str, level: str, counts: Shown) -> bool:
    """Whether a subgroup level's effect row must be withheld: its degrees of freedom,
    beside the other levels' n and df, give its number of people away."""
    return counts.is_hidden(f"{outcome}.subgroup.{subgroup}.{level}")


def shown(results: Mapping[str, Any], exact: bool = False) -> Shown:
    """The disclosure-controlled counts of one results.json."""
    threshold = int(
        ((results.get("protocol") or {}).get("reporting") or {}).get("suppression_threshold", 10)
    )
    table = report_table(results)
    return Shown(table, threshold, suppress(table, threshold), exact=exact)
