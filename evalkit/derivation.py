"""Outcome derivation: turn a person's dated records into one pre-registered outcome.

Every outcome is defined relative to the person's randomisation date, over a window of
calendar months. These functions are pure: the extract date (``as_of``) and the current
date (``today``) are handed in, so a derivation can be re-run and gives the same answer.

Windows are half-open, ``[randomised, window_end)``: the randomisation day counts, the
day ``months`` calendar months later does not. An agency extract dated ``as_of`` covers
every day up to and including ``as_of``, so it is complete for a window once it reaches
the window's last day, ``window_end - 1 day``.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

Status = Literal["observed", "not_yet_due", "missing"]

ONE_DAY = timedelta(days=1)
# Weeks are days / 7, so a threshold like 13 weeks is compared in days; the slack only
# absorbs float error in thresholds such as 1/7 of a week, never a whole day.
_EPS_DAYS = 1e-9


@dataclass(frozen=True)
class Spell:
    """A spell in paid work; ``end`` is the last day in work, None while still open."""

    start: date
    end: date | None


@dataclass(frozen=True)
class Measurement:
    """One dated measurement, e.g. a wellbeing score from a follow-up survey."""

    on: date
    value: float


@dataclass(frozen=True)
class Derived:
    """A derived outcome; ``value`` is None unless ``status`` is "observed"."""

    value: float | None
    status: Status
    reason: str


def add_months(d: date, months: int) -> date:
    """Calendar months later (or earlier), clamping the day to the month's end, so that a
    window from 31 January ends on the last day of February rather than in March."""
    index = d.year * 12 + (d.month - 1) + months
    year, month0 = divmod(index, 12)
    month = month0 + 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return date(year, month, day)


def window_end(randomised: date, months: int) -> date:
    """First day after the outcome window (the window is ``[randomised, window_end)``)."""
    if months < 0:
        raise ValueError(f"an outcome window cannot be negative ({months} months)")
    return add_months(randomised, months)


def _days_in_work(spells: Sequence[Spell], start: date, end: date) -> int:
    """Days in ``[start, end)`` covered by at least one spell, counting each day once."""
    if end <= start:
        return 0
    intervals: list[tuple[date, date]] = []
    for s in spells:
        if s.end is not None and s.end < s.start:
            raise ValueError(f"spell ends ({s.end}) before it starts ({s.start})")
        stop = end if s.end is None else s.end + ONE_DAY
        lo, hi = max(s.start, start), min(stop, end)
        if lo < hi:
            intervals.append((lo, hi))
    intervals.sort()
    total = 0
    cur_lo: date | None = None
    cur_hi: date | None = None
    for lo, hi in intervals:
        if cur_hi is not None and lo <= cur_hi:
            cur_hi = max(cur_hi, hi)
            continue
        if cur_lo is not None and cur_hi is not None:
            total += (cur_hi - cur_lo).days
        cur_lo, cur_hi = lo, hi
    if cur_lo is not None and cur_hi is not None:
        total += (cur_hi - cur_lo).days
    return total


def weeks_in_work(spells: Sequence[Spell], start: date, end: date) -> float:
    """Weeks in work within ``[start, end)``. Agency extracts often repeat or overlap
    spells (a job reported by two sources), so days are counted once however many
    spells cover them; open spells run to ``end``."""
    return _days_in_work(spells, start, end) / 7


def _weeks_text(days: int) -> str:
    """Weeks to one decimal, rounded down, so 90 days never reads as "13.0 weeks"."""
    tenths = days * 10 // 7
    return f"{tenths // 10}.{tenths % 10}"


def _min_weeks_text(min_weeks: float) -> str:
    return f"{min_weeks:g}"


def derive_spells(
    spells: Sequence[Spell],
    randomised: date,
    months: int,
    min_weeks: float,
    as_of: date | None,
    today: date,
) -> Derived:
    """1 if in paid work for ``min_weeks`` (cumulative) within the window, else 0.

    A 1 can be observed early, as soon as the extract shows enough weeks; a 0 needs an
    extract reaching the window's last day, because work after ``as_of`` is unknown.
    Without any extract nothing is counted: an open spell means nothing without the date
    it was still open on."""
    if min_weeks <= 0:
        raise ValueError(f"min_weeks must be positive, not {min_weeks}")
    end = window_end(randomised, months)
    last = end - ONE_DAY
    need = f"{_min_weeks_text(min_weeks)} weeks"
    if as_of is None:
        if today < end:
            return Derived(None, "not_yet_due", f"window ends {end}; no employment extract yet")
        return Derived(None, "missing", f"window ended {end}; no employment extract")
    counted_to = min(end, as_of + ONE_DAY)
    days = _days_in_work(spells, randomised, counted_to)
    weeks = f"{_weeks_text(days)} weeks in work by {counted_to - ONE_DAY}"
    if days + _EPS_DAYS >= min_weeks * 7:
        return Derived(1.0, "observed", f"{weeks} (needs {need})")
    if as_of >= last:
        return Derived(0.0, "observed", f"{weeks} (needs {need})")
    if today < end:
        return Derived(None, "not_yet_due", f"window ends {end}; {weeks} so far")
    return Derived(
        None, "missing", f"window ended {end} but employment data only reach {as_of}; {weeks}"
    )


def derive_events(
    dates: Sequence[date],
    randomised: date,
    months: int,
    as_of: date | None,
    today: date,
    count: bool,
) -> Derived:
    """Whether (``count=False``) or how often (``count=True``) something happened within
    the window. Any event in the window settles a binary outcome at once; "none" and a
    count need an extract reaching the window's last day. Events on the same day are
    separate events (two crisis contacts on one day are two contacts)."""
    end = window_end(randomised, months)
    last = end - ONE_DAY
    inside = sorted(d for d in dates if randomised <= d < end)
    complete = as_of is not None and as_of >= last
    if not count and inside:
        return Derived(1.0, "observed", f"first event on {inside[0]} (window ends {end})")
    if complete:
        if count:
            n = len(inside)
            return Derived(float(n), "observed", f"{n} event{'' if n == 1 else 's'} before {end}")
        return Derived(0.0, "observed", f"no event before {end} (data to {as_of})")
    so_far = f"{len(inside)} event{'' if len(inside) == 1 else 's'} so far" if count else ""
    data = f"data to {as_of}" if as_of is not None else "no extract yet"
    detail = "; ".join(x for x in (data, so_far) if x)
    if today < end:
        return Derived(None, "not_yet_due", f"window ends {end}; {detail}")
    return Derived(None, "missing", f"window ended {end} but {detail}")


def derive_measurement(
    measurements: Sequence[Measurement],
    randomised: date,
    months: int,
    tolerance_weeks: int,
    today: date,
) -> Derived:
    """The measurement taken closest to the due date, within ± ``tolerance_weeks``.

    Ties in distance go to the later date (the person had been in the pilot longer);
    several measurements on the chosen date resolve to the last one given, so a
    re-entered record supersedes the earlier entry. Nothing dated before randomisation
    is accepted, however wide the tolerance: a baseline score is not a follow-up."""
    if tolerance_weeks < 0:
        raise ValueError(f"tolerance_weeks cannot be negative ({tolerance_weeks})")
    due = window_end(randomised, months)
    tol = timedelta(weeks=tolerance_weeks)
    opens, closes = max(due - tol, randomised), due + tol
    window = f"due {due} ± {tolerance_weeks} weeks"
    best: Measurement | None = None
    for m in measurements:
        if not opens <= m.on <= closes:
            continue
        if best is None:
            best = m
            continue
        gap, best_gap = abs((m.on - due).days), abs((best.on - due).days)
        if gap < best_gap or (gap == best_gap and m.on >= best.on):
            best = m
    if best is not None:
        return Derived(best.value, "observed", f"measured on {best.on} ({window})")
    if today < opens:
        return Derived(None, "not_yet_due", f"survey not yet due ({window})")
    if today <= closes:
        return Derived(None, "not_yet_due", f"survey window open until {closes} ({window})")
    return Derived(None, "missing", f"no measurement between {opens} and {closes} ({window})")
