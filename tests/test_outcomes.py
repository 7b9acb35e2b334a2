"""Outcome imports: every problem listed, all rows or none, re-imports change nothing,
corrections kept as versions; CONSORT, progression and follow-up from the store."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pytest
from sqlalchemy import text

from evalkit import progression
from evalkit.enrolment import enrol, record_event
from evalkit.errors import BatchRejected, UserError
from evalkit.keys import KeyRing
from evalkit.outcome_import import import_outcomes
from evalkit.protocol import ProgressionCriterion
from evalkit.tracking import followup, track
from tests.pilots import NOW, make_pilot, referral, write_csv

TODAY = date(2026, 11, 24)
START = date(2025, 1, 6)


@pytest.fixture
def kw(store, key_dir, tmp_path):
    pilot = make_pilot(store, KeyRing(key_dir), tmp_path / "ws", "hackney-keyworker", "kw-out")
    rnd = random.Random(1)
    for i in range(20):
        enrol(
            store,
            pilot,
            f"P{i}",
            referral(rnd),
            NOW,
            "ana",
            (START + timedelta(days=i)).isoformat(),
        )
    return pilot


def imp(store, pilot, path, source, **kw):
    args = dict(
        id_column=None,
        overrides=[],
        correct=False,
        reason=None,
        as_of=TODAY,
        today=TODAY,
        now=NOW,
        by="ana",
    )
    args.update(kw)
    return import_outcomes(store, pilot, path, source, **args)


def table_counts(store) -> tuple[int, int, list]:
    with store.read() as conn:
        obs = conn.execute(
            text("SELECT unit, outcome, obs_key, value, version FROM observations ORDER BY id")
        ).all()
        n_imp = conn.execute(text("SELECT COUNT(*) FROM imports")).scalar()
    return n_imp, len(obs), obs


def test_a_file_with_a_dozen_kinds_of_bad_rows_is_rejected_whole(store, kw, tmp_path):
    good = [{"nino": "P1", "wemwbs": "50", "survey_date": "2026-01-10"}]
    imp(
        store,
        kw,
        write_csv(tmp_path / "ok.csv", good),
        "survey",
        id_column="nino",
        overrides=["wellbeing:value=wemwbs", "wellbeing:date=survey_date"],
    )
    before = table_counts(store)
    rows = [
        {"nino": "P2", "wemwbs": "51", "survey_date": "2026-01-11"},  # 2 fine
        {"nino": "NOBODY", "wemwbs": "40", "survey_date": "2026-01-11"},  # 3 unknown unit
        {"nino": "P3", "wemwbs": "high", "survey_date": "2026-01-11"},  # 4 wrong type
        {"nino": "P4", "wemwbs": "90", "survey_date": "2026-01-11"},  # 5 out of range
        {"nino": "P5", "wemwbs": "13", "survey_date": "2026-01-11"},  # 6 below range
        {"nino": "P6", "wemwbs": "45", "survey_date": "2024-12-01"},  # 7 before randomisation
        {"nino": "P7", "wemwbs": "45", "survey_date": "2027-03-01"},  # 8 in the future
        {"nino": "P8", "wemwbs": "45", "survey_date": "11/01/2026"},  # 9 bad date
        {"nino": "P9", "wemwbs": "45", "survey_date": ""},  # 10 value, no date
        {"nino": "", "wemwbs": "45", "survey_date": "2026-01-11"},  # 11 no id
        {"nino": "P2", "wemwbs": "52", "survey_date": "2026-01-11"},  # 12 clash with row 2
        {"nino": "P1", "wemwbs": "49", "survey_date": "2026-01-10"},  # 13 changed value
        {"nino": "P10", "wemwbs": "inf", "survey_date": "2026-01-11"},  # 14 not finite
    ]
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(BatchRejected) as exc:
        imp(
            store,
            kw,
            path,
            "survey",
            id_column="nino",
            overrides=["wellbeing:value=wemwbs", "wellbeing:date=survey_date"],
        )
    found = [str(p) for p in exc.value.problems]
    expected_rows = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert [int(f.split(":")[0].split()[1]) for f in found] == expected_rows, found
    assert "row 4: wemwbs 'high' is not a number" in found
    assert "row 5: wemwbs '90' is above the maximum 70" in found
    assert "row 7: survey_date '2024-12-01' is before the person's randomisation" in found[4]
    assert "row 8: survey_date '2027-03-01' is in the future" in found
    assert (
        "row 12: wellbeing gives a different record for the same person and date as row 2" in found
    )
    assert "differs from the stored value 50" in found[10]
    assert "nothing was imported" in exc.value.message
    assert table_counts(store) == before  # count and content unchanged


def test_undeclared_outcome_and_missing_column_are_reported(store, kw, tmp_path):
    path = write_csv(tmp_path / "x.csv", [{"id": "P1", "score": "3", "d": "2026-01-01"}])
    with pytest.raises(BatchRejected) as exc:
        imp(
            store,
            kw,
            path,
            "survey",
            overrides=["happiness:value=score", "happiness:date=d", "wellbeing:value=wemwbs"],
        )
    found = [str(p) for p in exc.value.problems]
    assert any(f.startswith("happiness is not an outcome of this protocol") for f in found)
    assert any(f.startswith("wemwbs is not a column of the file") for f in found)


def test_reimport_is_a_no_op_and_corrections_keep_both_versions(store, kw, tmp_path):
    rows = [{"id": f"P{i}", "wemwbs": str(40 + i), "survey_date": "2026-01-20"} for i in range(10)]
    path = write_csv(tmp_path / "survey.csv", rows)
    first = imp(store, kw, path, "survey")
    assert (first.new, first.unchanged) == (10, 0)
    again = imp(store, kw, path, "survey")
    assert again.import_id is None and again.unchanged == 10
    assert table_counts(store)[:2] == (1, 10)

    rows[3]["wemwbs"] = "60"
    changed = write_csv(tmp_path / "survey-v2.csv", rows)
    with pytest.raises(BatchRejected, match="1 problem"):
        imp(store, kw, changed, "survey")
    with pytest.raises(UserError, match="needs a reason"):
        imp(store, kw, changed, "survey", correct=True)
    fixed = imp(store, kw, changed, "survey", correct=True, reason="typed 43 for 60")
    assert (fixed.corrected, fixed.new, fixed.unchanged) == (1, 0, 9)
    history = [o for o in store.observations("kw-out", every_version=True) if o.value in (43, 60)]
    assert [(o.value, o.version) for o in history] == [(43.0, 1), (60.0, 2)]
    latest = {o.unit: o.value for o in store.observations("kw-out")}
    assert sorted(latest.values()).count(60.0) == 1 and 43.0 not in latest.values()
    assert store.imports("kw-out")[-1].correction_reason == "typed 43 for 60"
    analysed = track(store, kw.protocol, TODAY).dataset.rows
    scores = sorted(r["wellbeing"] for r in analysed if r["wellbeing_status"] == "observed")
    assert scores == [40, 41, 42, 44, 45, 46, 47, 48, 49, 60]  # the corrected value, not 43


def test_the_analysis_data_set_uses_the_latest_values(store, kw, tmp_path):
    rows = [
        {
            "nino": f"P{i}",
            "spell_start": (START + timedelta(days=30)).isoformat(),
            "spell_end": (START + timedelta(days=30 + 7 * (10 + i))).isoformat(),
            "off_benefit": "",
            "status_date": "",
        }
        for i in range(6)
    ]
    imp(store, kw, write_csv(tmp_path / "dwp.csv", rows), "DWP", as_of=START + timedelta(days=400))
    data = track(store, kw.protocol, TODAY).dataset
    by_unit = {r["unit"]: r for r in data.rows}
    assert len(data.rows) == 20
    worked = sorted(r["in_work_13wk"] for r in data.rows if r["in_work_13wk"] is not None)
    assert worked == [0.0] * 17 + [1.0] * 3  # 10-12 weeks: no; 13-15 weeks: yes
    assert {r["in_work_13wk_status"] for r in by_unit.values()} == {"observed"}
    assert data.vintage[0]["source"] == "DWP" and data.as_of["in_work_13wk"]


def test_consort_adds_up_and_counts_withdrawals(store, kw, tmp_path):
    record_event(store, kw, "P1", "withdrawn", NOW, "ana", "2025-03-01", "moved")
    enrol(store, kw, "X1", referral(random.Random(9), eligible=False), NOW, "ana", "2025-02-01")
    t = track(store, kw.protocol, TODAY)
    c = t.consort
    assert c["assessed"] == 21 and c["excluded"]["total"] == 1 and c["randomised"] == 20
    assert c["excluded"]["reasons"] == {"Out of work for less than 24 months": 1}
    assert sum(a["withdrawn"] for a in c["arms"]) == 1
    for a in c["arms"]:
        assert a["randomised"] == a["analysed"] + a["lost_to_follow_up"] + a["not_yet_due"]
        assert a["lost_to_follow_up"] == a["randomised"]  # no DWP extract, window ended


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "not_yet"),
        (0.85, "green"),
        (0.8499999, "amber"),
        (0.7, "amber"),
        (0.6999999, "red"),
        (1.0, "green"),
        (0.0, "red"),
    ],
)
def test_progression_thresholds_at_the_boundaries(value, expected):
    c = ProgressionCriterion(metric="retention", label="r", green=0.85, amber=0.7)
    assert progression.rating(c, value) == expected
    assert progression.WORDS[expected]


def test_progression_values(store, kw):
    t = track(store, kw.protocol, TODAY)
    by_metric = {p["metric"]: p for p in t.progression}
    assert by_metric["recruitment_per_month"]["value"] == 20.0  # 20 in under a month
    assert by_metric["recruitment_per_month"]["rating"] == "red"  # green needs 40
    assert by_metric["retention"]["value"] == 0.0
    assert by_metric["adherence"]["value"] is None  # no starts recorded yet
    assert by_metric["data_completeness"]["value"] == pytest.approx(5 / 7)  # 2 optional blank


def test_followup_lists_due_and_overdue_surveys(store, kw):
    t = track(store, kw.protocol, START + timedelta(days=365))
    items = followup(kw.protocol, t.dataset.rows, START + timedelta(days=365), within_days=10)
    states = {i["state"] for i in items if i["outcome"] == "wellbeing"}
    assert states == {"due now"}
    later = START + timedelta(days=500)
    overdue = followup(kw.protocol, track(store, kw.protocol, later).dataset.rows, later)
    assert {i["state"] for i in overdue} == {"overdue"}
    assert {i["outcome"] for i in overdue} == {"wellbeing", "off_benefit"}


# --- agency files met in a first week (issue 11) ----------------------------------------

ENROLLED = "2027-04-02"  # the registration day of tests.pilots.NOW
LATER = date(2028, 5, 1)  # a year on: the surveys are due


@pytest.fixture
def fresh(store, key_dir, tmp_path):
    """Six people randomised and one excluded on the pilot's registration day."""
    pilot = make_pilot(store, KeyRing(key_dir), tmp_path / "ws", "hackney-keyworker", "kw-new")
    rnd = random.Random(3)
    for i in range(6):
        enrol(store, pilot, f"N{i}", referral(rnd), NOW, "ana", ENROLLED)
    enrol(store, pilot, "EX1", referral(rnd, eligible=False), NOW, "ana", ENROLLED)
    return pilot


def later(store, pilot, path, **kw):
    return imp(store, pilot, path, "survey", as_of=LATER, today=LATER, **kw)


def test_agency_rows_for_people_assessed_but_not_randomised_are_skipped_and_counted(
    store, fresh, tmp_path
):
    from evalkit.allocation import pseudonym

    rows = [
        {"id": "N1", "wemwbs": "50", "survey_date": "2028-04-01"},
        {"id": "EX1", "wemwbs": "41", "survey_date": "2028-04-01"},
        {"id": "N2", "wemwbs": "55", "survey_date": "2028-04-02"},
        {"id": "ex 1", "wemwbs": "", "survey_date": "not a date"},  # skipped, never read
    ]
    res = later(store, fresh, write_csv(tmp_path / "s.csv", rows))
    assert (res.new, res.skipped_not_randomised, res.rows) == (2, 2, 4)
    stored = {o.unit for o in store.observations("kw-new")}
    assert stored == {pseudonym(fresh.secret, "N1"), pseudonym(fresh.secret, "N2")}
    rows += [{"id": "NOBODY", "wemwbs": "40", "survey_date": "2028-04-01"}]
    with pytest.raises(BatchRejected) as exc:
        later(store, fresh, write_csv(tmp_path / "s2.csv", rows))
    assert [str(p) for p in exc.value.problems] == [
        "row 6: id is not a randomised person of this pilot (the id is not shown)"
    ]


def test_uk_dates_are_read_with_the_date_format_given(store, fresh, tmp_path):
    rows = [
        {"id": "N1", "wemwbs": "50", "survey_date": "01/04/2028"},
        {"id": "N2", "wemwbs": "55", "survey_date": "2/4/2028"},
    ]
    res = later(store, fresh, write_csv(tmp_path / "uk.csv", rows), date_format="%d/%m/%Y")
    assert res.new == 2
    assert sorted(o.on_date for o in store.observations("kw-new")) == ["2028-04-01", "2028-04-02"]


def test_a_date_not_in_the_given_format_is_a_row_problem_naming_the_format(store, fresh, tmp_path):
    rows = [
        {"id": "N1", "wemwbs": "50", "survey_date": "2028-04-01"},
        {"id": "N2", "wemwbs": "55", "survey_date": "13/13/2028"},
    ]
    with pytest.raises(BatchRejected) as exc:
        later(store, fresh, write_csv(tmp_path / "mixed.csv", rows), date_format="%d/%m/%Y")
    assert [str(p) for p in exc.value.problems] == [
        "row 2: survey_date '2028-04-01' is not a date in the form %d/%m/%Y (e.g. 24/11/2026)",
        "row 3: survey_date '13/13/2028' is not a date in the form %d/%m/%Y (e.g. 24/11/2026)",
    ]


def test_without_a_date_format_a_day_month_year_date_suggests_the_option(store, fresh, tmp_path):
    rows = [{"id": "N1", "wemwbs": "50", "survey_date": "01/04/2028"}]
    with pytest.raises(BatchRejected) as exc:
        later(store, fresh, write_csv(tmp_path / "uk.csv", rows))
    assert [str(p) for p in exc.value.problems] == [
        "row 2: survey_date '01/04/2028' is not a date (write YYYY-MM-DD); if the file "
        "writes dates day first, import it with --date-format %d/%m/%Y"
    ]


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("%Y", "has no day and no month"),
        ("%d/%m", "has no year"),
        ("%d/%m/%y", "two-digit year"),
        ("%d/%d/%Y", "gives the day twice"),
        ("%d/%m/%Y %Z", "%Z is not"),
        ("24/11/2026", "has no day, no month and no year"),
    ],
)
def test_a_date_format_that_would_guess_is_refused(fmt, message):
    from evalkit.outcome_import import check_date_format

    with pytest.raises(UserError, match=message) as exc:
        check_date_format(fmt)
    assert "%d/%m/%Y" in exc.value.hint


@pytest.mark.parametrize("fmt", ["%d/%m/%Y", "%m/%d/%Y", "%Y-%m-%d", "%d %B %Y", "%d.%m.%Y %H:%M"])
def test_date_formats_with_day_month_and_year_are_accepted(fmt):
    from evalkit.outcome_import import check_date_format

    assert check_date_format(fmt) == fmt
