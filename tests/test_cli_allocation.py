"""The allocation commands as a user runs them."""

from __future__ import annotations

import csv
import json
import random

import pytest

from tests.pilots import referral, write_csv

SET = [
    "--set",
    "age=44",
    "--set",
    "benefit=ESA",
    "--set",
    "months_unemployed=30",
    "--set",
    "referral_route=GP",
    "--set",
    "mh_condition=true",
]


@pytest.fixture
def run(cli_in):
    cli_in("init", "kw-pilot")
    cli_in("register", "kw-pilot")
    return cli_in


def test_enrol_prints_the_arm_and_head_and_never_the_raw_id(run):
    out = run("enrol", "kw-pilot", "--unit-id", "QQ123456C", *SET).output
    assert "QQ123456C" not in out
    assert "(Key worker)" in out or "(Usual support)" in out
    assert "log head: entry 1, sha256 " in out
    data = json.loads(run("enrol", "kw-pilot", "--unit-id", "QQ123456C", *SET, "--json").output)
    assert data["already_enrolled"] and data["seq"] == 1
    assert "QQ123456C" not in json.dumps(data)
    bad = run("enrol", "kw-pilot", "--unit-id", "X", "--set", "age=old", ok=1)
    assert bad.output.startswith("error: cannot enrol: age 'old' is not a whole number")


def test_enrol_refuses_a_changed_protocol(run):
    path = run.ws / "protocols" / "kw-pilot.yaml"
    path.write_text(path.read_text().replace("block_sizes: [4, 6]", "block_sizes: [2, 4]"))
    res = run("enrol", "kw-pilot", "--unit-id", "QQ1", *SET, ok=1)
    assert "design.block_sizes[0]" in res.output and "evalkit amend" in res.output


def test_allocate_file_out_and_verify(run, tmp_path):
    rnd = random.Random(3)
    rows = [{"id": f"NI{i}", **referral(rnd, eligible=i != 4)} for i in range(12)]
    src = write_csv(tmp_path / "referrals.csv", rows)
    out_file = tmp_path / "result.csv"
    res = run("allocate", "kw-pilot", str(src), "--out", str(out_file)).output
    assert "12 new entries" in res and "excluded: 1" in res
    with out_file.open() as fh:
        lines = list(csv.DictReader(fh))
    assert [r["row"] for r in lines] == [str(i) for i in range(2, 14)]
    assert lines[4]["status"] == "excluded" and lines[4]["arm"] == ""
    assert not any(f"NI{i}" in out_file.read_text() for i in range(12))
    again = run("allocate", "kw-pilot", str(src), "--json").output
    assert all(r["already_in_log"] for r in json.loads(again)["rows"])
    ok = run("verify", "kw-pilot").output
    assert "verifies: 12 entries" in ok
    status = json.loads(run("status", "kw-pilot", "--json").output)
    assert status["log_entries"] == 12
    head = status["log_head"]
    assert "the published head is in the log" in run("verify", "kw-pilot", "--head", head).output
    revealed = run("verify", "kw-pilot", "--reveal-secret").output
    assert "replayed 11 allocations from the secret" in revealed
    secret = revealed.split("\n  secret: ")[1].split()[0]
    assert "every one matches" in run("verify", "kw-pilot", "--secret", secret).output
    assert run("verify", "kw-pilot", "--secret", "00" * 32, ok=1).output.startswith(
        "error: that secret does not match"
    )


def test_allocate_bad_file_names_rows_and_writes_nothing(run, tmp_path):
    rnd = random.Random(4)
    rows = [{"id": f"R{i}", **referral(rnd)} for i in range(5)]
    rows[2]["referral_route"] = "Gp"
    src = write_csv(tmp_path / "bad.csv", rows)
    res = run("allocate", "kw-pilot", str(src), ok=1)
    assert "1 problem; nothing was allocated" in res.output
    assert (
        "row 4: referral_route 'Gp' is not one of the allowed values "
        "(JCP, GP, IAPT, self, VCS): did you mean 'GP'?" in res.output
    )
    assert json.loads(run("status", "kw-pilot", "--json").output)["log_entries"] == 0
    (tmp_path / "x.txt").write_text("a,b\n")
    assert (
        "reads .csv and .xlsx" in run("allocate", "kw-pilot", str(tmp_path / "x.txt"), ok=1).output
    )


def test_events_and_tamper_through_the_cli(run, store_url):
    run("enrol", "kw-pilot", "--unit-id", "QQ9", *SET)
    run("event", "kw-pilot", "--unit-id", "qq9", "--type", "withdrawn", "--reason", "moved")
    s = json.loads(run("status", "kw-pilot", "--json").output)
    assert s["events"] == {"withdrawn": 1} and s["log_entries"] == 2
    from sqlalchemy import text

    from evalkit.store import Store

    store = Store.open(store_url)
    with store.write() as conn:
        conn.execute(text("UPDATE log SET arm = 'x' WHERE seq = 1"))
    store.close()
    res = run("verify", "kw-pilot", ok=1)
    assert "FAILS verification" in res.output and "first bad entry: 1" in res.output
    data = json.loads(run("verify", "kw-pilot", "--json", ok=1).output)
    assert data["ok"] is False and data["bad_entry"] == 1


def _with(field: str, value: str) -> list[str]:
    out = list(SET)
    i = out.index(next(x for x in out if x.startswith(f"{field}=")))
    out[i] = f"{field}={value}"
    return out


def test_enrol_outside_the_levels_is_recorded_as_excluded_and_counted_as_assessed(run):
    res = run("enrol", "kw-pilot", "--unit-id", "QQ1", *_with("benefit", "PIP")).output
    assert "not eligible (Not on ESA, JSA or Universal Credit); recorded as excluded" in res
    res = run("enrol", "kw-pilot", "--unit-id", "QQ2", *_with("referral_route", "postman"))
    assert (
        "not eligible (referral_route is not one of the allowed values "
        "(JCP, GP, IAPT, self, VCS)); recorded as excluded" in res.output
    )
    slip = run("enrol", "kw-pilot", "--unit-id", "QQ3", *_with("benefit", "uc"), ok=1).output
    assert slip.startswith(
        "error: cannot enrol: benefit 'uc' is not one of the allowed values (ESA, JSA, UC): "
        "did you mean 'UC'?"
    )
    assert "CONSORT: assessed 2, excluded 2, randomised 0" in run("status", "kw-pilot").output


def test_allocate_records_rows_outside_the_levels_as_excluded(run, tmp_path):
    rnd = random.Random(5)
    rows = [{"id": f"PIP{i}", **referral(rnd)} for i in range(6)]
    rows[1]["benefit"] = "PIP"
    res = run("allocate", "kw-pilot", str(write_csv(tmp_path / "pip.csv", rows)), "--json")
    data = json.loads(res.output)["rows"]
    assert data[1]["kind"] == "exclusion"
    assert data[1]["detail"]["reasons"] == ["Not on ESA, JSA or Universal Credit"]
    s = json.loads(run("status", "kw-pilot", "--json").output)
    assert s["consort"]["assessed"] == 6 and s["consort"]["randomised"] == 5


def test_re_enrolment_with_different_values_warns_naming_each_difference(run, tmp_path):
    first = run("enrol", "kw-pilot", "--unit-id", "QQ7", *SET).output
    arm = first.split(": ", 2)[2].split(" (")[0]
    again = run("enrol", "kw-pilot", "--unit-id", "qq7", *_with("age", "50")).output
    assert f": {arm} (" in again and "nothing drawn" in again
    assert (
        "warning: the values given differ from those recorded in log entry 1 (the existing "
        "record stands; nothing was changed): age: recorded 44, given 50" in again
    )
    assert "warning" not in run("enrol", "kw-pilot", "--unit-id", "QQ7", *SET).output
    data = json.loads(
        run("enrol", "kw-pilot", "--unit-id", "QQ7", *_with("benefit", "JSA"), "--json").output
    )
    assert data["arm"] == arm and data["differences"] == [
        {"field": "benefit", "recorded": "ESA", "given": "JSA"}
    ]
    rows = [
        {"id": "QQ7", "age": "44", "benefit": "UC", "months_unemployed": "30",
         "referral_route": "GP", "mh_condition": "true"},
        {"id": "QQ8", "age": "44", "benefit": "UC", "months_unemployed": "30",
         "referral_route": "GP", "mh_condition": "true"},
    ]  # fmt: skip
    src = str(write_csv(tmp_path / "again.csv", rows))
    res = run("allocate", "kw-pilot", src).output
    assert "1 new entries" in res
    assert "warning: row 2: the values given differ from those recorded in log entry 1" in res
    assert "benefit: recorded 'ESA', given 'UC'" in res and "row 3" not in res
    rows_json = json.loads(run("allocate", "kw-pilot", src, "--json").output)["rows"]
    assert rows_json[0]["differences"] == [{"field": "benefit", "recorded": "ESA", "given": "UC"}]
    assert rows_json[1]["differences"] == []
    assert json.loads(run("status", "kw-pilot", "--json").output)["log_entries"] == 2
