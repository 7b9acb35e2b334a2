"""Outcome derivation on hand-made histories: every expected number is worked out by hand
(in the comments) so a change in the counting rules shows up as a failing test."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evalkit.derivation import (
    Derived,
    Measurement,
    Spell,
    add_months,
    derive_events,
    derive_measurement,
    derive_spells,
    weeks_in_work,
    window_end,
)

D = date.fromisoformat
DAY = timedelta(days=1)

# Randomised 2027-04-01 with a 12-month window: the window is [2027-04-01, 2028-04-01),
# 366 days because it holds 2028-02-29; its last day is 2028-03-31.
R = D("2027-04-01")
END = D("2028-04-01")
LAST = D("2028-03-31")
EARLY = D("2027-08-01")  # a "today" well inside the window


def spells_outcome(
    spells: list[Spell],
    as_of: date | None,
    today: date,
    randomised: date = R,
    months: int = 12,
    min_weeks: float = 13,
) -> Derived:
    return derive_spells(spells, randomised, months, min_weeks, as_of, today)


# --- add_months / window_end -------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        ("2027-01-31", 1, "2027-02-28"),  # clamped to February's end
        ("2027-08-31", 6, "2028-02-29"),  # clamped to a leap-year February
        ("2028-02-29", 12, "2029-02-28"),  # leap day, next year has none
        ("2028-02-29", 48, "2032-02-29"),  # ... four years on it does
        ("2027-03-31", 12, "2028-03-31"),
        ("2027-04-30", 1, "2027-05-30"),  # a short month's end stays on its day
        ("2027-11-15", 3, "2028-02-15"),  # year rolls over
        ("2027-12-31", 1, "2028-01-31"),
        ("2027-05-31", -3, "2027-02-28"),  # backwards, clamped too
        ("2027-01-31", 0, "2027-01-31"),
    ],
)
def test_add_months(start: str, months: int, expected: str) -> None:
    assert add_months(D(start), months) == D(expected)


def test_window_end_is_add_months_and_rejects_negative_windows() -> None:
    assert window_end(R, 12) == END
    assert window_end(D("2027-01-31"), 1) == D("2027-02-28")
    with pytest.raises(ValueError):
        window_end(R, -1)


# --- weeks_in_work ---------------------------------------------------------------------

JAN1, YEAR_END = D("2027-01-01"), D("2027-12-31")


def test_one_week_spell_counts_its_end_day() -> None:
    assert weeks_in_work([Spell(JAN1, D("2027-01-07"))], JAN1, YEAR_END) == 1.0


def test_single_day_spell_is_one_seventh_of_a_week() -> None:
    assert weeks_in_work([Spell(JAN1, JAN1)], JAN1, YEAR_END) == 1 / 7


def test_overlapping_spells_count_once() -> None:
    # 01-01..01-10 and 01-05..01-14: union 01-01..01-14 = 14 days, not 10 + 10.
    spells = [Spell(JAN1, D("2027-01-10")), Spell(D("2027-01-05"), D("2027-01-14"))]
    assert weeks_in_work(spells, JAN1, YEAR_END) == 2.0


def test_nested_spell_adds_nothing() -> None:
    spells = [Spell(JAN1, D("2027-01-14")), Spell(D("2027-01-03"), D("2027-01-05"))]
    assert weeks_in_work(spells, JAN1, YEAR_END) == 2.0


def test_duplicate_spells_count_once() -> None:
    spell = Spell(JAN1, D("2027-01-07"))
    assert weeks_in_work([spell, spell, spell], JAN1, YEAR_END) == 1.0


def test_adjacent_spells_join_without_a_gap_or_double_day() -> None:
    spells = [Spell(JAN1, D("2027-01-07")), Spell(D("2027-01-08"), D("2027-01-14"))]
    assert weeks_in_work(spells, JAN1, YEAR_END) == 2.0


def test_gap_between_spells_is_not_counted() -> None:
    # 7 days, a 7-day gap (01-08..01-14), then 7 days.
    spells = [Spell(D("2027-01-15"), D("2027-01-21")), Spell(JAN1, D("2027-01-07"))]
    assert weeks_in_work(spells, JAN1, YEAR_END) == 2.0


def test_spell_starting_before_the_period_counts_from_its_start() -> None:
    assert weeks_in_work([Spell(D("2026-12-01"), D("2027-01-07"))], JAN1, YEAR_END) == 1.0


def test_spell_entirely_before_the_period_counts_nothing() -> None:
    assert weeks_in_work([Spell(D("2026-12-01"), D("2026-12-31"))], JAN1, YEAR_END) == 0.0


def test_open_spell_runs_to_the_end_of_the_period() -> None:
    assert weeks_in_work([Spell(JAN1, None)], JAN1, D("2027-01-15")) == 2.0


def test_spell_is_cut_at_the_end_which_is_excluded() -> None:
    # [01-01, 01-08): the spell's days from 01-08 on are outside.
    assert weeks_in_work([Spell(JAN1, D("2027-03-31"))], JAN1, D("2027-01-08")) == 1.0


def test_spell_starting_on_the_end_counts_nothing() -> None:
    assert weeks_in_work([Spell(D("2027-01-08"), None)], JAN1, D("2027-01-08")) == 0.0


def test_leap_february_has_29_days() -> None:
    spell = Spell(D("2028-01-15"), D("2028-03-20"))
    assert weeks_in_work([spell], D("2028-02-01"), D("2028-03-01")) == 29 / 7
    assert weeks_in_work([spell], D("2027-02-01"), D("2027-03-01")) == 0.0


def test_empty_or_reversed_period_is_zero() -> None:
    assert weeks_in_work([Spell(JAN1, None)], JAN1, JAN1) == 0.0
    assert weeks_in_work([Spell(JAN1, None)], YEAR_END, JAN1) == 0.0
    assert weeks_in_work([], JAN1, YEAR_END) == 0.0


def test_spell_ending_before_it_starts_is_rejected() -> None:
    with pytest.raises(ValueError, match="before it starts"):
        weeks_in_work([Spell(D("2027-01-07"), JAN1)], JAN1, YEAR_END)


# --- derive_spells ---------------------------------------------------------------------

# 2027-05-01..2027-07-30 is exactly 91 days (13 weeks); ..2027-07-29 is 90.
THIRTEEN = Spell(D("2027-05-01"), D("2027-07-30"))
JUST_SHORT = Spell(D("2027-05-01"), D("2027-07-29"))


def test_exactly_13_weeks_counts_and_is_observed_before_the_window_ends() -> None:
    out = spells_outcome([THIRTEEN], as_of=EARLY, today=EARLY)
    assert out == Derived(1.0, "observed", "13.0 weeks in work by 2027-08-01 (needs 13 weeks)")


def test_one_day_short_is_not_yet_due_inside_the_window() -> None:
    out = spells_outcome([JUST_SHORT], as_of=EARLY, today=EARLY)
    # 90 days = 12.857 weeks, shown rounded down so it cannot read as 13.0.
    assert out == Derived(
        None, "not_yet_due", "window ends 2028-04-01; 12.8 weeks in work by 2027-08-01 so far"
    )


def test_short_is_observed_zero_once_the_extract_reaches_the_last_day() -> None:
    out = spells_outcome([JUST_SHORT], as_of=LAST, today=END)
    assert out == Derived(0.0, "observed", "12.8 weeks in work by 2028-03-31 (needs 13 weeks)")
    after = spells_outcome([JUST_SHORT], as_of=D("2028-09-30"), today=D("2028-10-01"))
    assert (after.value, after.status) == (0.0, "observed")
    assert after.reason.endswith("by 2028-03-31 (needs 13 weeks)")  # capped at the window


def test_extract_stopping_a_day_short_of_the_window_end() -> None:
    before = spells_outcome([JUST_SHORT], as_of=D("2028-03-30"), today=LAST)
    assert (before.value, before.status) == (None, "not_yet_due")
    after = spells_outcome([JUST_SHORT], as_of=D("2028-03-30"), today=END)
    assert after == Derived(
        None,
        "missing",
        "window ended 2028-04-01 but employment data only reach 2028-03-30; "
        "12.8 weeks in work by 2028-03-30",
    )


def test_no_extract_before_and_after_the_window() -> None:
    assert spells_outcome([], as_of=None, today=EARLY) == Derived(
        None, "not_yet_due", "window ends 2028-04-01; no employment extract yet"
    )
    assert spells_outcome([], as_of=None, today=LAST).status == "not_yet_due"
    assert spells_outcome([], as_of=None, today=END) == Derived(
        None, "missing", "window ended 2028-04-01; no employment extract"
    )


def test_no_extract_ignores_spells() -> None:
    # Without an extract date an open spell's length is unknown, so nothing is counted.
    out = spells_outcome([Spell(R, None)], as_of=None, today=D("2029-01-01"))
    assert (out.value, out.status) == (None, "missing")


def test_overlapping_spells_are_not_double_counted() -> None:
    # 05-01..06-30 (61 days) and 06-01..07-29 (59 days): 120 days if summed, 90 as a union.
    spells = [Spell(D("2027-05-01"), D("2027-06-30")), Spell(D("2027-06-01"), D("2027-07-29"))]
    out = spells_outcome(spells, as_of=LAST, today=END)
    assert (out.value, out.status) == (0.0, "observed")


def test_duplicate_spells_are_not_double_counted() -> None:
    # 05-01..06-15 is 46 days; reported twice it would wrongly reach 92.
    spell = Spell(D("2027-05-01"), D("2027-06-15"))
    out = spells_outcome([spell, spell], as_of=LAST, today=END)
    assert (out.value, out.status) == (0.0, "observed")
    assert out.reason.startswith("6.5 weeks in work")


def test_spells_with_a_gap_add_up() -> None:
    # 05-01..06-15 (46 days) + 09-01..10-15 (45 days) = 91 days, cumulative across the gap.
    spells = [Spell(D("2027-05-01"), D("2027-06-15")), Spell(D("2027-09-01"), D("2027-10-15"))]
    assert spells_outcome(spells, as_of=D("2027-10-15"), today=D("2027-10-20")).value == 1.0
    # One day earlier in the extract and the second spell has only 44 days so far.
    out = spells_outcome(spells, as_of=D("2027-10-14"), today=D("2027-10-20"))
    assert (out.value, out.status) == (None, "not_yet_due")


def test_spell_starting_before_randomisation_counts_from_randomisation() -> None:
    # From 2027-04-01: April 30 + May 31 + June 29 = 90 days; to June 30 = 91.
    short = spells_outcome([Spell(D("2027-01-01"), D("2027-06-29"))], as_of=LAST, today=END)
    assert (short.value, short.status) == (0.0, "observed")
    enough = spells_outcome([Spell(D("2027-01-01"), D("2027-06-30"))], as_of=EARLY, today=EARLY)
    assert (enough.value, enough.status) == (1.0, "observed")


def test_spell_entirely_before_randomisation_does_not_count() -> None:
    out = spells_outcome([Spell(D("2026-01-01"), D("2027-03-31"))], as_of=LAST, today=END)
    assert (out.value, out.status) == (0.0, "observed")


def test_open_spell_runs_to_the_extract_date_not_to_today() -> None:
    spell = Spell(D("2027-03-01"), None)
    # Counted over [2027-04-01, 2027-06-30): 90 days, even though today is much later.
    short = spells_outcome([spell], as_of=D("2027-06-29"), today=D("2027-12-01"))
    assert (short.value, short.status) == (None, "not_yet_due")
    enough = spells_outcome([spell], as_of=D("2027-06-30"), today=D("2027-07-01"))
    assert (enough.value, enough.status) == (1.0, "observed")


def test_closed_spell_is_cut_at_the_extract_date() -> None:
    # An end date beyond the extract is not yet evidence: only 90 days up to 2027-06-29.
    out = spells_outcome([Spell(R, D("2027-12-31"))], as_of=D("2027-06-29"), today=EARLY)
    assert (out.value, out.status) == (None, "not_yet_due")


def test_spell_starting_after_the_window_does_not_count() -> None:
    out = spells_outcome([Spell(END, None)], as_of=D("2028-09-30"), today=D("2028-10-01"))
    assert out == Derived(0.0, "observed", "0.0 weeks in work by 2028-03-31 (needs 13 weeks)")


def test_a_single_day_on_the_last_day_meets_an_any_day_threshold() -> None:
    # dataset.py passes min_weeks = 1/7 for "any paid work": one day must be enough.
    out = spells_outcome([Spell(LAST, None)], as_of=LAST, today=END, min_weeks=1 / 7)
    assert (out.value, out.status) == (1.0, "observed")
    none = spells_outcome([Spell(END, None)], as_of=END, today=END, min_weeks=1 / 7)
    assert (none.value, none.status) == (0.0, "observed")


def test_window_ending_on_a_leap_month_end() -> None:
    # Randomised 2027-08-31, 6 months: window [2027-08-31, 2028-02-29), last day 2028-02-28.
    # From 2027-11-30 to 2028-02-28: Nov 1 + Dec 31 + Jan 31 + Feb 28 = 91 days.
    r = D("2027-08-31")
    spells = [Spell(D("2027-11-30"), None)]
    kw = dict(randomised=r, months=6)
    assert spells_outcome(spells, as_of=D("2028-02-28"), today=D("2028-02-29"), **kw).value == 1.0
    late = spells_outcome(spells, as_of=D("2028-02-27"), today=D("2028-02-29"), **kw)
    assert (late.value, late.status) == (None, "missing")
    assert late.reason.startswith("window ended 2028-02-29")
    still = spells_outcome(spells, as_of=D("2028-02-27"), today=D("2028-02-28"), **kw)
    assert still.status == "not_yet_due"
    # Starting a day later is 90 days, and the extract reaching 2028-02-28 settles it at 0.
    later = spells_outcome(
        [Spell(D("2027-12-01"), None)], as_of=D("2028-02-28"), today=D("2028-03-01"), **kw
    )
    assert (later.value, later.status) == (0.0, "observed")


def test_window_from_the_31st_ends_on_the_shorter_month_end() -> None:
    # Randomised 2027-01-31, 1 month: window [2027-01-31, 2027-02-28) is exactly 28 days.
    r = D("2027-01-31")
    spells = [Spell(r, None)]
    kw = dict(randomised=r, months=1, min_weeks=4)
    full = spells_outcome(spells, as_of=D("2027-02-27"), today=D("2027-02-27"), **kw)
    assert full == Derived(1.0, "observed", "4.0 weeks in work by 2027-02-27 (needs 4 weeks)")
    short = spells_outcome(spells, as_of=D("2027-02-26"), today=D("2027-02-27"), **kw)
    assert (short.value, short.status) == (None, "not_yet_due")
    gone = spells_outcome(spells, as_of=D("2027-02-26"), today=D("2027-02-28"), **kw)
    assert (gone.value, gone.status) == (None, "missing")


def test_randomised_on_leap_day() -> None:
    # Randomised 2028-02-29, 12 months: window ends 2029-02-28, last day 2029-02-27.
    # 2028-11-29..2029-02-27: 2 + 31 + 31 + 27 = 91 days.
    kw = dict(randomised=D("2028-02-29"), months=12)
    spells = [Spell(D("2028-11-29"), None)]
    assert spells_outcome(spells, as_of=D("2029-02-27"), today=D("2029-03-01"), **kw).value == 1.0
    later = [Spell(D("2028-11-30"), None)]
    out = spells_outcome(later, as_of=D("2029-02-27"), today=D("2029-03-01"), **kw)
    assert (out.value, out.status) == (0.0, "observed")


def test_min_weeks_must_be_positive() -> None:
    with pytest.raises(ValueError):
        spells_outcome([], as_of=LAST, today=END, min_weeks=0)


# --- derive_events ---------------------------------------------------------------------


def events(dates: list[str], as_of: date | None, today: date, count: bool = False) -> Derived:
    return derive_events([D(x) for x in dates], R, 12, as_of, today, count)


def test_event_on_the_randomisation_day_counts_at_once() -> None:
    out = events(["2027-04-01"], as_of=None, today=R)
    assert out == Derived(1.0, "observed", "first event on 2027-04-01 (window ends 2028-04-01)")


def test_event_on_the_last_day_counts() -> None:
    assert events(["2028-03-31"], as_of=LAST, today=END).value == 1.0


def test_event_on_the_window_end_day_does_not_count() -> None:
    out = events(["2028-04-01"], as_of=D("2028-05-01"), today=D("2028-05-01"))
    assert out == Derived(0.0, "observed", "no event before 2028-04-01 (data to 2028-05-01)")


def test_event_the_day_before_randomisation_does_not_count() -> None:
    out = events(["2027-03-31"], as_of=LAST, today=END)
    assert (out.value, out.status) == (0.0, "observed")


def test_first_event_is_reported_whatever_the_input_order() -> None:
    out = events(["2027-09-01", "2027-03-01", "2027-05-02"], as_of=EARLY, today=EARLY)
    assert out.reason == "first event on 2027-05-02 (window ends 2028-04-01)"


def test_no_events_needs_an_extract_reaching_the_last_day() -> None:
    assert events([], as_of=LAST, today=LAST).value == 0.0
    assert events([], as_of=D("2028-03-30"), today=LAST) == Derived(
        None, "not_yet_due", "window ends 2028-04-01; data to 2028-03-30"
    )
    assert events([], as_of=D("2028-03-30"), today=END) == Derived(
        None, "missing", "window ended 2028-04-01 but data to 2028-03-30"
    )


def test_no_events_and_no_extract() -> None:
    assert events([], as_of=None, today=EARLY) == Derived(
        None, "not_yet_due", "window ends 2028-04-01; no extract yet"
    )
    assert events([], as_of=None, today=END) == Derived(
        None, "missing", "window ended 2028-04-01 but no extract yet"
    )


def test_count_in_window_with_boundaries_and_same_day_events() -> None:
    dates = [
        "2027-03-31",  # before randomisation: out
        "2027-04-01",  # randomisation day: in
        "2027-04-01",  # a second contact that day: in
        "2027-10-10",
        "2028-03-31",  # last day: in
        "2028-04-01",  # window end: out
    ]
    assert events(dates, as_of=LAST, today=END, count=True) == Derived(
        4.0, "observed", "4 events before 2028-04-01"
    )
    assert events(["2027-10-10"], as_of=LAST, today=END, count=True).reason == (
        "1 event before 2028-04-01"
    )


def test_partial_count_is_not_the_outcome() -> None:
    dates = ["2027-04-01", "2027-10-10"]
    assert events(dates, as_of=D("2027-12-31"), today=D("2028-01-05"), count=True) == Derived(
        None, "not_yet_due", "window ends 2028-04-01; data to 2027-12-31; 2 events so far"
    )
    late = events(dates, as_of=D("2028-03-30"), today=END, count=True)
    assert (late.value, late.status) == (None, "missing")
    none = events([], as_of=None, today=END, count=True)
    assert none == Derived(
        None, "missing", "window ended 2028-04-01 but no extract yet; 0 events so far"
    )


def test_zero_count_is_observed() -> None:
    assert events(["2028-04-01"], as_of=LAST, today=END, count=True) == Derived(
        0.0, "observed", "0 events before 2028-04-01"
    )


# --- derive_measurement ----------------------------------------------------------------

# Due 2028-04-01; ± 6 weeks (42 days) accepts 2028-02-19..2028-05-13.
DUE, OPENS, CLOSES = END, D("2028-02-19"), D("2028-05-13")


def measure(ms: list[tuple[str, float]], today: date, tolerance: int = 6) -> Derived:
    return derive_measurement([Measurement(D(d), v) for d, v in ms], R, 12, tolerance, today)


def test_tolerance_boundaries_are_inclusive() -> None:
    assert measure([("2028-02-19", 5.0)], today=CLOSES) == Derived(
        5.0, "observed", "measured on 2028-02-19 (due 2028-04-01 ± 6 weeks)"
    )
    assert measure([("2028-05-13", 6.0)], today=CLOSES).value == 6.0


def test_one_day_outside_the_tolerance_is_not_accepted() -> None:
    outside = [("2028-02-18", 5.0), ("2028-05-14", 6.0)]
    assert measure(outside, today=CLOSES) == Derived(
        None, "not_yet_due", "survey window open until 2028-05-13 (due 2028-04-01 ± 6 weeks)"
    )
    assert measure(outside, today=CLOSES + DAY) == Derived(
        None,
        "missing",
        "no measurement between 2028-02-19 and 2028-05-13 (due 2028-04-01 ± 6 weeks)",
    )


def test_not_yet_due_before_the_window_opens() -> None:
    assert measure([], today=EARLY) == Derived(
        None, "not_yet_due", "survey not yet due (due 2028-04-01 ± 6 weeks)"
    )
    assert measure([], today=OPENS).reason.startswith("survey window open until 2028-05-13")


def test_closest_to_due_wins() -> None:
    ms = [("2028-03-22", 1.0), ("2028-04-04", 2.0), ("2028-04-21", 3.0), ("2028-04-01", 9.0)]
    assert measure(ms[:3], today=CLOSES).value == 2.0  # 3 days after beats 10 before
    assert measure(ms, today=CLOSES).value == 9.0  # on the due date beats everything


def test_tie_goes_to_the_later_measurement_in_either_order() -> None:
    ms = [("2028-03-27", 1.0), ("2028-04-06", 2.0)]  # 5 days either side
    assert measure(ms, today=CLOSES).value == 2.0
    assert measure(ms[::-1], today=CLOSES).value == 2.0


def test_same_day_measurements_resolve_to_the_last_given() -> None:
    assert measure([("2028-04-02", 1.0), ("2028-04-02", 2.0)], today=CLOSES).value == 2.0


def test_zero_tolerance_accepts_only_the_due_date() -> None:
    near = [("2028-03-31", 1.0), ("2028-04-02", 2.0)]
    assert measure(near, today=DUE, tolerance=0) == Derived(
        None, "not_yet_due", "survey window open until 2028-04-01 (due 2028-04-01 ± 0 weeks)"
    )
    assert measure(near, today=DUE + DAY, tolerance=0).status == "missing"
    assert measure([*near, ("2028-04-01", 3.0)], today=DUE + DAY, tolerance=0).value == 3.0


def test_measurement_before_randomisation_is_never_accepted() -> None:
    # 1-month window, 8 weeks' tolerance: due 2027-05-01 would open on 2027-03-06.
    ms = [Measurement(D("2027-03-31"), 4.0)]
    out = derive_measurement(ms, R, 1, 8, today=D("2027-07-01"))
    assert out == Derived(
        None,
        "missing",
        "no measurement between 2027-04-01 and 2027-06-26 (due 2027-05-01 ± 8 weeks)",
    )
    ms.append(Measurement(R, 7.0))
    assert derive_measurement(ms, R, 1, 8, today=D("2027-07-01")).value == 7.0


def test_negative_tolerance_is_rejected() -> None:
    with pytest.raises(ValueError):
        measure([], today=EARLY, tolerance=-1)


# --- properties ------------------------------------------------------------------------

BASE = D("2028-01-01")  # random spells straddle 2028-02-29
offsets = st.integers(min_value=-120, max_value=240)


@st.composite
def spell_sets(draw: st.DrawFn) -> list[Spell]:
    out = []
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        start = BASE + timedelta(days=draw(offsets))
        length = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=150)))
        out.append(Spell(start, None if length is None else start + timedelta(days=length)))
    return out


def brute_force_days(spells: list[Spell], start: date, end: date) -> int:
    """Walk the period a day at a time: is anyone's spell covering this day?"""
    days, d = 0, start
    while d < end:
        if any(s.start <= d and (s.end is None or d <= s.end) for s in spells):
            days += 1
        d += DAY
    return days


@settings(max_examples=300, deadline=None)
@given(spell_sets(), offsets, offsets)
def test_weeks_in_work_matches_a_day_by_day_count(spells: list[Spell], a: int, b: int) -> None:
    start, end = BASE + timedelta(days=a), BASE + timedelta(days=b)
    weeks = weeks_in_work(spells, start, end)
    assert weeks == brute_force_days(spells, start, end) / 7
    assert 0 <= weeks <= max(0, (end - start).days) / 7
    # Order and repetition of the spells make no difference.
    assert weeks_in_work([*reversed(spells), *spells], start, end) == weeks


@settings(max_examples=200, deadline=None)
@given(
    spell_sets(), st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=500)
)
def test_derive_spells_agrees_with_weeks_in_work(spells: list[Spell], lag: int, later: int) -> None:
    """Observed 1 exactly when the counted days reach the threshold; a 0 only once the
    extract reaches the window's last day."""
    randomised = BASE
    as_of = randomised + timedelta(days=lag)
    today = as_of + timedelta(days=later)
    out = derive_spells(spells, randomised, 6, 13, as_of, today)
    end = window_end(randomised, 6)
    days = brute_force_days(spells, randomised, min(end, as_of + DAY))
    if days >= 91:
        assert (out.value, out.status) == (1.0, "observed")
    elif as_of >= end - DAY:
        assert (out.value, out.status) == (0.0, "observed")
    else:
        assert out.value is None
        assert out.status == ("not_yet_due" if today < end else "missing")
