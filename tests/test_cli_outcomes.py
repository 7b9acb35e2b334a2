"""The outcome commands as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import date, timedelta

import pytest

from tests.pilots import referral, write_csv

START = date(2025, 2, 3)


@pytest.fixture
def run(cli_in, tmp_path):
    cli_in("init", "kw-pilot")
    cli_in("register", "kw-pilot", at=START - timedelta(days=14))
    rnd = random.Random(2)
    rows = [{"id": f"NI{i}", "ref": f"case-{i}", **referral(rnd)} for i in range(10)]
    cli_in(
        "allocate",
        "kw-pilot",
        str(write_csv(tmp_path / "r.csv", rows)),
        "--date",
        START.isoformat(),
    )
    return cli_in


def test_import_export_followup_note_and_status(run):
    survey = [
        {"id": f"NI{i}", "wemwbs": str(40 + i), "survey_date": "2026-02-10"} for i in range(6)
    ]
    path = write_csv(run.tmp / "survey.csv", survey)
    out = run("outcomes", "import", "kw-pilot", str(path), "--source", "survey").output
    assert "6 new records, 0 corrections, 0 unchanged" in out
    assert (
        "brings nothing new"
        in run("outcomes", "import", "kw-pilot", str(path), "--source", "survey").output
    )
    survey[0]["wemwbs"] = "70"
    write_csv(path, survey)
    refused = run("outcomes", "import", "kw-pilot", str(path), "--source", "survey", ok=1)
    assert "row 2: wellbeing '70' differs from the stored value 40" in refused.output
    fixed = run(
        "outcomes",
        "import",
        "kw-pilot",
        str(path),
        "--source",
        "survey",
        "--correct",
        "--reason",
        "score misread",
        "--json",
    ).output
    assert json.loads(fixed)["corrected"] == 1

    analysis = list(csv.DictReader(io.StringIO(run("export", "kw-pilot").output)))
    assert len(analysis) == 10
    assert sorted(r["wellbeing_status"] for r in analysis).count("observed") == 6
    assert {r["ref"] for r in analysis} == {f"case-{i}" for i in range(10)}
    assert not any(f"NI{i}" in json.dumps(analysis) for i in range(10))
    versions = list(
        csv.DictReader(io.StringIO(run("export", "kw-pilot", "--what", "outcomes").output))
    )
    assert sorted(r["version"] for r in versions) == ["1"] * 6 + ["2"]
    log = list(
        csv.DictReader(io.StringIO(run("export", "kw-pilot", "--what", "allocations").output))
    )
    assert len(log) == 10 and all(r["entry_hash"] for r in log)

    due = json.loads(run("followup", "kw-pilot", "--as-of", "2026-02-20", "--json").output)
    assert {d["ref"] for d in due if d["outcome"] == "wellbeing"} == {
        f"case-{i}" for i in range(6, 10)
    }
    run("note", "kw-pilot", "--date", "2025-06-01", "Work Programme contract ended")
    status = json.loads(run("status", "kw-pilot", "--json").output)
    assert status["notes"][0]["text"] == "Work Programme contract ended"
    assert status["consort"]["randomised"] == 10
    assert {p["metric"] for p in status["progression"]} == {
        "recruitment_per_month",
        "retention",
        "adherence",
        "data_completeness",
    }
    text = run("status", "kw-pilot").output
    assert "CONSORT: assessed 10, excluded 0, randomised 10" in text
    assert "note 2025-06-01: Work Programme contract ended" in text


def test_import_with_bad_rows_names_them_and_writes_nothing(run):
    rows = [
        {"id": "NI1", "wemwbs": "abc", "survey_date": "2026-02-10"},
        {"id": "NOBODY", "wemwbs": "40", "survey_date": "2026-02-10"},
    ]
    res = run(
        "outcomes",
        "import",
        "kw-pilot",
        str(write_csv(run.tmp / "b.csv", rows)),
        "--source",
        "survey",
        ok=1,
    )
    assert "2 problems; nothing was imported" in res.output
    assert "row 2: wemwbs 'abc' is not a number" in res.output
    assert "row 3: id is not a randomised person of this pilot" in res.output
    assert json.loads(run("status", "kw-pilot", "--json").output)["data_vintage"] == []
    assert (
        "is not OUTCOME:FIELD=COLUMN"
        in run(
            "outcomes",
            "import",
            "kw-pilot",
            str(run.tmp / "b.csv"),
            "--source",
            "survey",
            "--map",
            "wellbeing=x",
            ok=1,
        ).output
    )


def test_refs_need_the_protocols_permission(run, tmp_path):
    path = run.tmp / "ws" / "protocols" / "kw-pilot.yaml"
    assert "evaluator_reference: true" in path.read_text()
    d = (START + timedelta(days=3)).isoformat()
    res = run(
        "enrol",
        "kw-pilot",
        "--unit-id",
        "NEW1",
        "--ref",
        "case-x",
        "--date",
        d,
        "--set",
        "age=40",
        "--set",
        "benefit=UC",
        "--set",
        "months_unemployed=30",
        "--set",
        "referral_route=GP",
        "--set",
        "mh_condition=true",
    )
    assert res.exit_code == 0


# --- agency files met in a first week (issue 11) ----------------------------------------


@pytest.fixture
def fresh(cli_in):
    """A pilot registered and enrolled on 2 April 2027 (five randomised, one excluded),
    with each command run on the day a user would run it."""
    from datetime import UTC, datetime

    import time_machine

    def on(day: datetime):
        def _run(*args: str, ok: int = 0):
            with time_machine.travel(day, tick=False):
                return cli_in(*args, ok=ok)

        return _run

    start = on(datetime(2027, 4, 2, 10, tzinfo=UTC))
    start("init", "kw-pilot")
    start("register", "kw-pilot")
    rnd = random.Random(4)
    rows = [{"id": f"NI{i}", **referral(rnd, eligible=i != 5)} for i in range(6)]
    start("allocate", "kw-pilot", str(write_csv(cli_in.tmp / "list.csv", rows)))
    later = on(datetime(2028, 5, 1, 10, tzinfo=UTC))
    later.tmp = cli_in.tmp
    return later


def test_import_skips_and_counts_rows_of_people_excluded_before_randomisation(fresh):
    rows = [
        {"id": "NI1", "wemwbs": "50", "survey_date": "2028-04-01"},
        {"id": "NI5", "wemwbs": "41", "survey_date": "2028-04-01"},
    ]
    path = str(write_csv(fresh.tmp / "survey.csv", rows))
    out = fresh("outcomes", "import", "kw-pilot", path, "--source", "survey").output
    assert "1 new records, 0 corrections, 0 unchanged" in out
    assert "skipped 1 row of people who were assessed but excluded before randomisation" in out
    assert "NI5" not in out and "NI1" not in out
    again = json.loads(
        fresh("outcomes", "import", "kw-pilot", path, "--source", "survey", "--json").output
    )
    assert again["import_id"] is None and again["skipped_not_randomised"] == 1
    rows.append({"id": "NOBODY", "wemwbs": "40", "survey_date": "2028-04-01"})
    refused = fresh(
        "outcomes",
        "import",
        "kw-pilot",
        str(write_csv(fresh.tmp / "s2.csv", rows)),
        "--source",
        "survey",
        ok=1,
    ).output
    assert "row 4: id is not a randomised person of this pilot" in refused


def test_import_reads_uk_dates_with_date_format_and_suggests_it_otherwise(fresh):
    rows = [
        {"id": "NI1", "wemwbs": "50", "survey_date": "01/04/2028"},
        {"id": "NI2", "wemwbs": "52", "survey_date": "02/04/2028"},
    ]
    path = str(write_csv(fresh.tmp / "uk.csv", rows))
    refused = fresh("outcomes", "import", "kw-pilot", path, "--source", "survey", ok=1).output
    assert (
        "row 2: survey_date '01/04/2028' is not a date (write YYYY-MM-DD); if the file "
        "writes dates day first, import it with --date-format %d/%m/%Y" in refused
    )
    out = fresh(
        "outcomes", "import", "kw-pilot", path, "--source", "survey", "--date-format", "%d/%m/%Y"
    ).output
    assert "2 new records" in out
    export = list(
        csv.DictReader(io.StringIO(fresh("export", "kw-pilot", "--what", "outcomes").output))
    )
    assert sorted(r["on_date"] for r in export) == ["2028-04-01", "2028-04-02"]
    bad = fresh(
        "outcomes", "import", "kw-pilot", path, "--source", "survey", "--date-format", "%Y", ok=2
    ).output
    assert "Invalid value for '--date-format'" in bad
    assert "has no day and no month" in bad and "hint: write the form" in bad
