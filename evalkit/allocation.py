"""Allocation decisions: from a checked referral (or a list of places) and the log so far
to new log entries. Pure functions over a read-only view of the log.

The same functions serve live enrolment (the view reads the store inside the pilot's
write lock) and ``verify`` (the view holds the entries before the one being replayed), so
a replay runs exactly the code that allocated.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any
from typing import Protocol as Interface

import numpy as np

from evalkit import assignment as A
from evalkit.baseline import ineligible_reasons, parse_values, stratum_label
from evalkit.errors import UserError
from evalkit.keys import derive
from evalkit.ledger import Entry
from evalkit.protocol import (
    BlockedDesign,
    ConstrainedClusterDesign,
    MatchedPairClusterDesign,
    MinimisationDesign,
    Protocol,
    SteppedWedgeDesign,
    StratifiedClusterDesign,
)
from evalkit.randomness import RngFactory

SEQUENTIAL = {"simple", "blocked", "minimisation"}


def pseudonymiser(secret: bytes) -> Callable[[str], str]:
    """HMAC-SHA256 pseudonyms under the pilot's pseudonym key; spaces and letter case in
    an identifier do not matter."""
    key = derive(secret, "pseudonym")

    def pseudonym_of(raw_id: str) -> str:
        norm = "".join(str(raw_id).split()).upper()
        return hmac.new(key, norm.encode(), hashlib.sha256).hexdigest()[:24]

    return pseudonym_of


def pseudonym(secret: bytes, raw_id: str) -> str:
    return pseudonymiser(secret)(raw_id)


class LogView(Interface):
    def unit(self, level: str, unit: str) -> Entry | None: ...
    def units(self, level: str, units: Sequence[str]) -> dict[str, Entry]: ...
    def count(self, stratum: str | None = None, level: str = "participant") -> int: ...
    def entries(self, kind: str | None = None, level: str | None = None) -> list[Entry]: ...


class MemoryView:
    """A log view over entries held in memory (replay, and batches before they commit)."""

    def __init__(self, base: LogView | None = None, entries: Sequence[Entry] = ()):
        self.base = base
        self.pending: list[Entry] = []
        self._units: dict[str, Entry] = {}
        self._counts: dict[tuple[str, str | None], int] = {}
        self._base_counts: dict[tuple[str, str | None], int] = {}
        for e in entries:
            self.add(e)

    def add(self, e: Entry) -> None:
        self.pending.append(e)
        if e.unit_key:
            self._units[e.unit_key] = e
        if e.kind == "allocation":
            for key in {(e.level or "", e.stratum), (e.level or "", None)}:
                self._counts[key] = self._counts.get(key, 0) + 1

    def unit(self, level: str, unit: str) -> Entry | None:
        hit = self._units.get(f"{level}:{unit}")
        if hit is None and self.base is not None:
            return self.base.unit(level, unit)
        return hit

    def units(self, level: str, units: Sequence[str]) -> dict[str, Entry]:
        found = self.base.units(level, units) if self.base is not None else {}
        for u in units:
            hit = self._units.get(f"{level}:{u}")
            if hit is not None:
                found[u] = hit
        return found

    def count(self, stratum: str | None = None, level: str = "participant") -> int:
        key = (level, stratum)
        if self.base is not None and key not in self._base_counts:
            self._base_counts[key] = self.base.count(stratum, level)
        return self._base_counts.get(key, 0) + self._counts.get(key, 0)

    def entries(self, kind: str | None = None, level: str | None = None) -> list[Entry]:
        base = self.base.entries(kind, level) if self.base is not None else []
        mine = [
            e
            for e in self.pending
            if (kind is None or e.kind == kind) and (level is None or e.level == level)
        ]
        return base + mine


@dataclass(frozen=True)
class Context:
    """Everything a decision needs besides the log: the plan, the seed, who and when."""

    protocol: Protocol
    protocol_hash: str
    protocol_number: int
    rngs: RngFactory
    now: str
    by: str

    @property
    def arms(self) -> list[str]:
        return [a.name for a in self.protocol.arms]

    @property
    def ratios(self) -> list[float]:
        return [a.ratio for a in self.protocol.arms]

    def entry(self, **kw: Any) -> Entry:
        base = dict(
            pilot_id=self.protocol.id,
            seq=0,
            stratum=None,
            place=None,
            arm=None,
            probabilities=None,
            detail={},
            baseline={},
            level="participant",
            protocol_hash=self.protocol_hash,
            protocol_number=self.protocol_number,
            created_at=self.now,
            created_by=self.by,
            prev_hash="",
        )
        base.update(kw)
        return Entry(**base)


@dataclass(frozen=True)
class Referral:
    """A checked unit: its pseudonym, typed baseline values and why it is ineligible."""

    row: int | None
    unit: str
    values: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    joined: str | None = None  # date a person joined (place designs) or was randomised
    ref: str | None = None  # the evaluator's own reference, where the protocol allows one


def with_refs(entries: list[Entry], referrals: list[Referral]) -> list[Entry]:
    """Add each referral's evaluator reference to its new entry's detail."""
    refs = {r.unit: r.ref for r in referrals if r.ref}
    return [
        replace(e, detail={**e.detail, "ref": refs[e.unit]}) if e.unit in refs else e
        for e in entries
    ]


@dataclass(frozen=True)
class RowProblem:
    row: int | None
    column: str
    value: Any
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}: " if self.row is not None else ""
        shown = "" if self.value is None else f" {self.value!r}"
        return f"{where}{self.column}{shown} {self.message}"


def _needed_fields(p: Protocol) -> list[str]:
    d = p.design
    if isinstance(d, BlockedDesign):
        return list(d.strata)
    if isinstance(d, MinimisationDesign):
        return [f.field for f in d.factors]
    return [p.unit.place_field] if p.unit.level == "place" and p.unit.place_field else []


def check_referrals(
    protocol: Protocol, secret: bytes, rows: list[tuple[int | None, str, dict[str, Any]]], on: str
) -> tuple[list[Referral], list[RowProblem]]:
    """Check every row before anything is drawn; pseudonymise identifiers on the way.

    ``rows`` are (row number, raw identifier, raw values). Problems from every row are
    returned together; raw identifiers go no further than this function. A category
    value outside its field's levels is not a problem: the referral carries it and the
    reason it is excluded (:func:`evalkit.baseline.ineligible_reasons`)."""
    out, problems = [], []
    seen: dict[str, int | None] = {}
    needed = _needed_fields(protocol)
    pseudonym_of = pseudonymiser(secret)
    for row, raw_id, raw in rows:
        if raw_id is None or str(raw_id).strip() == "":
            problems.append(RowProblem(row, "id", None, "is missing: every unit needs an id"))
            continue
        unit = pseudonym_of(raw_id)
        if unit in seen:
            first = seen[unit]
            problems.append(
                RowProblem(row, "id", None, f"repeats the id of row {first} (ids are not shown)")
            )
            continue
        seen[unit] = row
        values, value_problems = parse_values(protocol.fields, raw, keep_outside_levels=True)
        problems += [RowProblem(row, vp.field, vp.value, vp.message) for vp in value_problems]
        for name in needed:
            if values.get(name) is None and not any(vp.field == name for vp in value_problems):
                problems.append(
                    RowProblem(row, name, None, "is needed to randomise but is missing")
                )
        out.append(Referral(row, unit, values, ineligible_reasons(protocol, values), on))
    return out, problems


def check_places(
    protocol: Protocol, rows: list[tuple[int | None, str, dict[str, Any]]]
) -> tuple[list[Referral], list[RowProblem]]:
    """Check a places file: one row per place with the protocol's place fields."""
    out, problems = [], []
    seen: dict[str, int | None] = {}
    pf = protocol.field(protocol.unit.place_field or "")
    for row, place, raw in rows:
        name = "" if place is None else str(place).strip()
        if not name:
            problems.append(RowProblem(row, "place", None, "is missing"))
            continue
        if name in seen:
            problems.append(RowProblem(row, "place", name, f"repeats row {seen[name]}"))
            continue
        seen[name] = row
        if pf is not None and pf.levels and name not in pf.levels:
            problems.append(
                RowProblem(
                    row,
                    "place",
                    name,
                    f"is not one of the protocol's places ({', '.join(pf.levels)})",
                )
            )
        values, vps = parse_values(protocol.unit.place_fields, raw)
        problems += [RowProblem(row, vp.field, vp.value, vp.message) for vp in vps]
        out.append(Referral(row, name, values))
    return out, problems


def _probabilities(arms: list[str], row: np.ndarray | Sequence[float]) -> dict[str, float]:
    return {a: float(p) for a, p in zip(arms, row, strict=True)}


def exclusion(ctx: Context, r: Referral) -> Entry:
    return ctx.entry(
        kind="exclusion",
        unit=r.unit,
        baseline=r.values,
        detail={"reasons": r.reasons, "on": r.joined},
    )


def decide(ctx: Context, view: LogView, r: Referral) -> Entry:
    """The entry for one eligible referral under a sequential design, or for a person
    joining an allocated place. Raises UserError when the design cannot enrol one at a
    time."""
    p, d = ctx.protocol, ctx.protocol.design
    if p.unit.level == "place":
        return _join_place(ctx, view, r)
    n = view.count()
    if d.method == "simple":
        drawn = A.simple(1, ctx.arms, ctx.ratios, ctx.rngs(f"simple/{n}"))
        return ctx.entry(
            kind="allocation",
            unit=r.unit,
            arm=drawn.arms[0],
            probabilities=_probabilities(drawn.arm_names, drawn.probabilities[0]),
            baseline=r.values,
            detail={"method": "simple", "index": n, "exact": True, "on": r.joined},
        )
    if isinstance(d, BlockedDesign):
        stratum = stratum_label(d.strata, r.values)
        draw = A.blocked_next(
            stratum, view.count(stratum), ctx.arms, ctx.ratios, d.block_sizes, ctx.rngs
        )
        return _blocked_entry(ctx, r, draw)
    if isinstance(d, MinimisationDesign):
        factors = [(f.field, f.weight) for f in d.factors]
        previous = view.entries("allocation", "participant")
        counts = A.minimisation_counts(
            [_levels(e.baseline, factors) for e in previous],
            [e.arm for e in previous],
            factors,
            ctx.arms,
        )
        draw = A.minimisation_next(
            _levels(r.values, factors),
            counts,
            factors,
            ctx.arms,
            ctx.ratios,
            d.probability,
            ctx.rngs(f"minimisation/{n}"),
        )
        return ctx.entry(
            kind="allocation",
            unit=r.unit,
            arm=draw.arm,
            stratum=stratum_label([f for f, _ in factors], r.values),
            probabilities=draw.probabilities,
            baseline=r.values,
            detail={
                "method": "minimisation",
                "index": n,
                **_plain(draw.detail),
                "exact": draw.exact,
                "on": r.joined,
            },
        )
    raise UserError(
        f"a {d.method} design allocates its whole list at once, not one referral at a time",
        "put the referrals in a CSV or Excel file and use 'evalkit allocate'",
    )


def _blocked_entry(ctx: Context, r: Referral, draw: A.Draw) -> Entry:
    return ctx.entry(
        kind="allocation",
        unit=r.unit,
        arm=draw.arm,
        stratum=draw.detail["stratum"],
        probabilities=draw.probabilities,
        baseline=r.values,
        detail={"method": "blocked", **draw.detail, "exact": draw.exact, "on": r.joined},
    )


def _levels(values: dict[str, Any], factors: list[tuple[str, float]]) -> dict[str, str]:
    return {f: stratum_label([f], values).split("=", 1)[1] for f, _ in factors}


def _plain(v: Any) -> Any:
    """JSON-ready copy (numpy scalars and arrays to Python) for hashing and storing."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def period_of(protocol: Protocol, on: str) -> int:
    """The stepped-wedge period (1-based) a date falls in, from the protocol's start."""
    d = protocol.design
    assert isinstance(d, SteppedWedgeDesign)
    if protocol.start_date is None:
        raise UserError(
            "a stepped wedge needs the protocol's start_date to place people in periods",
            "add start_date and record it with evalkit amend",
        )
    day = date.fromisoformat(on)
    start = protocol.start_date
    months = (day.year - start.year) * 12 + (day.month - start.month) - (day.day < start.day)
    if months < 0:
        raise UserError(f"{on} is before the pilot's start date {start.isoformat()}")
    period = months // d.period_months + 1
    if period > d.periods:
        raise UserError(f"{on} is after the last period of the stepped wedge")
    return period


def _join_place(ctx: Context, view: LogView, r: Referral) -> Entry:
    p = ctx.protocol
    place = r.values.get(p.unit.place_field or "")
    place_entry = view.unit("place", str(place)) if place is not None else None
    if place_entry is None:
        raise UserError(
            f"place {place!r} has not been allocated",
            "allocate the places first with 'evalkit allocate PILOT places.csv'",
        )
    detail: dict[str, Any] = {
        "method": "joined_place",
        "exact": place_entry.detail.get("exact"),
        "on": r.joined,
    }
    if isinstance(p.design, SteppedWedgeDesign):
        assert r.joined is not None
        period = period_of(p, r.joined)
        crossover = int(place_entry.detail["crossover_period"])
        arm = ctx.arms[1] if period >= crossover else ctx.arms[0]
        detail.update(period=period, crossover_period=crossover)
        probs = None  # exposure depends on the period; the place entry holds the draw
    else:
        arm, probs = place_entry.arm, place_entry.probabilities
    return ctx.entry(
        kind="allocation",
        unit=r.unit,
        arm=arm,
        place=str(place),
        stratum=place_entry.stratum,
        probabilities=probs,
        baseline=r.values,
        detail=detail,
    )


def allocate_batch(ctx: Context, view: LogView, referrals: list[Referral]) -> list[Entry]:
    """Entries for a list of checked participants, in file order: exclusions for the
    ineligible, one allocation each for the rest. A unit already in the log is skipped
    (enrolling the same person again never draws again)."""
    mem = MemoryView(view)
    known = view.units("participant", [r.unit for r in referrals])
    new = [r for r in referrals if r.unit not in known]
    d = ctx.protocol.design
    method = d.method
    eligible = [r for r in new if not r.reasons]
    queued: dict[str, list[A.Draw]] = {}
    if isinstance(d, BlockedDesign) and ctx.protocol.unit.level == "participant":
        # each stratum's run drawn at once: the same draws as one at a time, made faster
        runs: dict[str, int] = {}
        for r in eligible:
            label = stratum_label(d.strata, r.values)
            runs[label] = runs.get(label, 0) + 1
        for label, n in runs.items():
            draws = A.blocked_run(
                label, view.count(label), n, ctx.arms, ctx.ratios, d.block_sizes, ctx.rngs
            )
            queued[label] = draws[::-1]
    if method == "complete" and eligible:
        batch = 1 + len(
            {
                e.detail.get("batch")
                for e in view.entries("allocation", "participant")
                if e.detail.get("batch") is not None
            }
        )
        drawn = A.complete(len(eligible), ctx.arms, ctx.ratios, ctx.rngs(f"batch/{batch}"))
        arms_by_unit = {
            r.unit: (drawn.arms[i], drawn.probabilities[i], i) for i, r in enumerate(eligible)
        }
    out = []
    for r in new:
        if r.reasons:
            e = exclusion(ctx, r)
        elif method == "complete":
            arm, probs, i = arms_by_unit[r.unit]
            e = ctx.entry(
                kind="allocation",
                unit=r.unit,
                arm=arm,
                probabilities=_probabilities(ctx.arms, probs),
                baseline=r.values,
                detail={
                    "method": "complete",
                    "batch": batch,
                    "index": i,
                    "size": len(eligible),
                    "exact": True,
                    "on": r.joined,
                },
            )
        elif queued:
            out.append(_blocked_entry(ctx, r, queued[stratum_label(d.strata, r.values)].pop()))
            continue  # drawn ahead, so no later decision reads the memory view
        else:
            e = decide(ctx, mem, r)
        mem.add(e)
        out.append(e)
    return out


def allocate_places(ctx: Context, view: LogView, places: list[Referral]) -> list[Entry]:
    """Entries for every place of a place design, drawn together in file order."""
    d = ctx.protocol.design
    if view.count(level="place"):
        raise UserError(
            "the places of this pilot have already been allocated",
            "a place design allocates all its places once; to add places, amend "
            "the protocol and register a new iteration",
        )
    names = [r.unit for r in places]
    rng = ctx.rngs("places")
    cov = None
    if isinstance(d, MatchedPairClusterDesign | ConstrainedClusterDesign):
        cols = d.match_on if isinstance(d, MatchedPairClusterDesign) else d.balance_on
        cov = np.array([[float(r.values[c]) for c in cols] for r in places], dtype=float)
    strata: list[str | None] = [None] * len(places)
    if d.method == "cluster":
        a = A.cluster(names, ctx.arms, ctx.ratios, rng)
    elif isinstance(d, StratifiedClusterDesign):
        strata = [stratum_label(d.strata, r.values) for r in places]
        a = A.stratified_cluster(names, strata, ctx.arms, ctx.ratios, rng)
    elif isinstance(d, MatchedPairClusterDesign):
        a = A.matched_pair_cluster(names, cov, ctx.arms, rng)
        strata = list(a.groups)
    elif isinstance(d, ConstrainedClusterDesign):
        a = A.constrained_cluster(
            names, cov, ctx.arms, ctx.ratios, d.criterion, d.keep_fraction, d.candidates, rng
        )
    elif isinstance(d, SteppedWedgeDesign):
        a = A.stepped_wedge(names, d.places_per_step, rng)
    else:
        raise UserError(
            f"a {d.method} design randomises participants, not places",
            "use 'evalkit allocate' with a list of participants",
        )
    out = []
    for i, r in enumerate(places):
        detail: dict[str, Any] = {
            "method": d.method,
            "index": i,
            "size": len(places),
            "exact": bool(a.exact),
        }
        if a.groups[i] is not None:
            detail["group"] = a.groups[i]
        arm: str | None = a.arms[i]
        if isinstance(d, SteppedWedgeDesign):
            detail["crossover_period"] = int(a.extra["crossover_period"][i])
            arm = None
        if isinstance(d, ConstrainedClusterDesign) and i == 0:
            detail["admissible"] = len(a.extra["admissible"])
            detail["considered"] = int(a.extra["n_considered"])
        out.append(
            ctx.entry(
                kind="allocation",
                level="place",
                unit=r.unit,
                place=r.unit,
                stratum=strata[i],
                arm=arm,
                probabilities=_probabilities(a.arm_names, a.probabilities[i]),
                baseline=r.values,
                detail=detail,
            )
        )
    return out


def event(ctx: Context, unit: str | None, kind: str, on: str, reason: str) -> Entry:
    return ctx.entry(kind="event", unit=unit, detail={"event": kind, "on": on, "reason": reason})
