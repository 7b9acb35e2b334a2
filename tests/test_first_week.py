"""What a council evaluator met in a first week with a pilot of their own (issue "Any real
pilot"): dates typed the London way, dates before registration or in the future, a log
already holding a bad date, and an analysis run before any outcome is due. Each test is
named after what it checks and failed before the fix."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from evalkit.allocation import event as event_entry
from evalkit.enrolment import open_pilot
from evalkit.keys import KeyRing
from evalkit.ledger import chain
from evalkit.store import Store

SET = [
    "--set", "age=44", "--set", "benefit=ESA", "--set", "months_unemployed=30",
    "--set", "referral_route=GP", "--set", "mh_condition=true",
]  # fmt: skip
REGISTERED = date(2027, 1, 11)
LATER = date(2027, 3, 1)


@pytest.fixture
def run(cli_in):
    """A key-worker pilot registered on 11 January 2027; the clock then stands at 1 March
    unless a test moves it."""
    cli_in("init", "kw-pilot", at=REGISTERED)
    cli_in("register", "kw-pilot", at=REGISTERED)

    def _run(*args, ok=0, at=LATER):
        return cli_in(*args, ok=ok, at=at)

    _run.ws = cli_in.ws
    return _run


def head(run) -> tuple[int, str]:
    s = json.loads(run("status", "kw-pilot", "--json").output)
    return s["log_entries"], s["log_head"]


@pytest.mark.parametrize(
    "typed",
    ["01/02/2027", "1/2/2027", "2027-13-45", "yesterday", "20270201", "2027/02/01"],
)
def test_a_date_not_written_yyyy_mm_dd_is_refused_where_it_is_typed(run, typed):
    """`enrol --date 01/02/2027` used to be written into the append-only log, after which
    status, followup, analyse and export failed for ever."""
    before = head(run)
    out = run("enrol", "kw-pilot", "--unit-id", "QQ1", *SET, "--date", typed, ok=1).output
    assert f"--date {typed!r}" in out and "YYYY-MM-DD" in out and "hint" in out
    assert head(run) == before  # nothing written
    run("status", "kw-pilot")
    run("export", "kw-pilot", "--what", "analysis")


def test_a_day_first_date_names_both_readings_and_guesses_neither(run):
    out = run("enrol", "kw-pilot", "--unit-id", "QQ1", *SET, "--date", "01/02/2027", ok=1)
    assert "2027-02-01 or 2027-01-02" in out.output
    assert "never guesses" in out.output


@pytest.mark.parametrize(
    "args",
    [
        ["note", "kw-pilot", "--date", "1/2/2027", "Work Programme contract ended"],
        ["event", "kw-pilot", "--unit-id", "QQ1", "--type", "withdrawn", "--date", "yesterday"],
        ["analyse", "kw-pilot", "--as-of", "2026/01/01"],
        ["followup", "kw-pilot", "--as-of", "02/03/2026"],
        ["outcomes", "import", "kw-pilot", "x.csv", "--source", "DWP", "--as-of", "24/11/2026"],
        ["places", "rank", "areas.csv", "--by", "x", "--choose", "1", "--date", "2027-02-30"],
    ],
)
def test_every_date_option_is_checked_where_it_enters(run, args):
    """`note --date 1/2/2026` and `event --date yesterday` were written to the log;
    `analyse --as-of 2026/01/01` and `followup --as-of 02/03/2026` gave tracebacks."""
    run("enrol", "kw-pilot", "--unit-id", "QQ1", *SET, "--date", "2027-02-01")
    before = head(run)
    out = run(*args, ok=1).output
    option = args[args.index(next(a for a in args if a in {"--date", "--as-of"}))]
    assert option in out and "YYYY-MM-DD" in out
    assert head(run) == before


def test_a_randomisation_date_in_the_future_is_refused(run):
    out = run("enrol", "kw-pilot", "--unit-id", "QQ1", *SET, "--date", "2027-03-02", ok=1)
    assert "2027-03-02 is in the future (today is 2027-03-01)" in out.output
    out = run("allocate", "kw-pilot", "list.csv", "--date", "2028-01-01", ok=1)
    assert "in the future" in out.output


def test_a_randomisation_date_before_registration_needs_backdate_and_the_reports_show_it(run):
    """Dates before registration were accepted silently while the reports said the plan
    was fixed before anyone was allocated."""
    out = run("enrol", "kw-pilot", "--unit-id", "QQ1", *SET, "--date", "2027-01-04", ok=1)
    assert "before the pilot was registered (2027-01-11)" in out.output
    assert "--backdate" in out.output
    out = run(
        "enrol", "kw-pilot", "--unit-id", "QQ1", *SET, "--date", "2027-01-04", "--backdate", ok=1
    )
    assert "--backdate needs a reason" in out.output
    assert head(run)[0] == 0
    run(
        "enrol", "kw-pilot", "--unit-id", "QQ1", *SET, "--date", "2027-01-04",
        "--backdate", "--reason", "paper referrals from the launch event",
    )  # fmt: skip
    exported = run("export", "kw-pilot", "--what", "allocations").output
    assert "paper referrals from the launch event" in exported
    for i in range(2, 12):
        run("enrol", "kw-pilot", "--unit-id", f"QQ{i}", *SET, "--date", "2027-02-01")
    survey = run.ws / "survey.csv"
    survey.write_text(
        "id,wemwbs,survey_date\n" + "".join(f"QQ{i},50,2028-02-01\n" for i in range(1, 12))
    )
    dwp = run.ws / "dwp.csv"
    dwp.write_text("nino,spell_start,spell_end,off_benefit,status_date\nQQ1,2027-03-01,,,\n")
    when = date(2028, 3, 1)
    run("outcomes", "import", "kw-pilot", str(dwp), "--source", "DWP", at=when)
    run("outcomes", "import", "kw-pilot", str(survey), "--source", "survey", at=when)
    run("analyse", "kw-pilot", at=when)
    results = json.loads((run.ws / "analyses" / "kw-pilot" / "results.json").read_text())
    reason = "paper referrals from the launch event"
    assert results["registration"]["backdated"] == [
        {"reason": reason, "first": "2027-01-04", "last": "2027-01-04"}
    ]
    assert results["registration"]["first_randomised"] == "2027-01-04"
    run("report", "kw-pilot", at=when)
    for page in ("summary.html", "technical.html"):
        html = (run.ws / "analyses" / "kw-pilot" / page).read_text()
        assert "entered late, with dates before the plan was registered" in html
        assert "dated 2027-01-04: paper referrals from the launch event" in html


def test_an_event_before_the_person_was_randomised_is_refused(run):
    run("enrol", "kw-pilot", "--unit-id", "QQ1", *SET, "--date", "2027-02-01")
    out = run(
        "event", "kw-pilot", "--unit-id", "QQ1", "--type", "withdrawn", "--date", "2027-01-20",
        ok=1,
    )  # fmt: skip
    assert "before this person was randomised (2027-02-01)" in out.output


def test_a_log_already_holding_a_bad_date_is_reported_by_verify_and_status(run, store_url, key_dir):
    """Logs written before dates were checked can hold '01/02/2027': status, followup,
    analyse and export used to die with 'Invalid isoformat string'. Now every command
    reads it as the day the entry was written, and verify and status say so."""
    run("enrol", "kw-pilot", "--unit-id", "QQ1", *SET, "--date", "2027-02-01")
    store = Store.open(store_url)
    try:  # what an older evalkit wrote: an allocation dated the London way
        pilot = open_pilot(
            store, KeyRing(key_dir), run.ws / "protocols" / "kw-pilot.yaml", "kw-pilot"
        )
        with store.log_tx("kw-pilot") as tx:
            [allocation] = tx.entries("allocation")
            legacy = allocation.__class__(
                **{
                    **allocation.__dict__,
                    "unit": "f" * 24,
                    "detail": {**allocation.detail, "on": "01/02/2027"},
                }
            )
            note = event_entry(
                pilot.context("2027-02-03T10:00:00.000000Z", "old"), None, "note", "yesterday", "x"
            )
            tx.append(chain([legacy, note], "kw-pilot", pilot.registration_hash, tx.head()))
    finally:
        store.close()
    out = run("verify", "kw-pilot").output
    assert "entry 2 holds the date '01/02/2027', which is not YYYY-MM-DD" in out
    assert "entry 3 holds the date 'yesterday'" in out
    status = run("status", "kw-pilot").output
    assert "warning: entry 2 holds the date '01/02/2027'" in status
    for args in (["followup", "kw-pilot"], ["export", "kw-pilot"], ["analyse", "kw-pilot"]):
        res = run(*args, ok=None)
        assert res.exit_code in (0, 1) and "Traceback" not in res.output
    verified = json.loads(run("verify", "kw-pilot", "--json").output)
    assert verified["ok"] and len(verified["date_problems"]) == 2


def test_analyse_before_the_primary_outcome_is_due_says_when_it_will_be(run):
    """Someone following the quick start literally (enrol today, analyse) was told 'no
    effect given for valued outcome(s): in_work_13wk' with no hint."""
    for i, day in enumerate(["2027-02-01", "2027-02-10", "2027-02-20"]):
        run("enrol", "kw-pilot", "--unit-id", f"QQ{i}", *SET, "--date", day)
    out = run("analyse", "kw-pilot", ok=1).output
    assert "is not known for anyone yet" in out
    assert "the first is due on 2028-02-01 and half of those still to come by 2028-02-10" in out
    assert "evalkit status kw-pilot" in out and "evalkit followup kw-pilot" in out
    assert not (run.ws / "analyses" / "kw-pilot" / "results.json").exists()
    late = run("analyse", "kw-pilot", ok=1, at=date(2028, 6, 1)).output
    assert "not recorded for anyone, although it is due" in late
    assert "evalkit outcomes import kw-pilot FILE --source DWP" in late


def test_register_warns_when_the_start_date_has_passed(cli_in):
    cli_in("init", "late-pilot", at=date(2027, 6, 1))
    out = cli_in("register", "late-pilot", at=date(2027, 6, 1)).output
    assert "warning: start_date 2027-04-01 is before today's registration (2027-06-01)" in out


# --- found by the any-pilot generator (tests/test_any_pilot.py) ------------------------


def test_an_open_spell_that_ends_in_a_later_extract_is_an_update_not_a_correction(run):
    """DWP's extract shows a job still open; the next one shows when it ended. That is new
    information, not a correction: the second file used to be refused until imported
    with --correct --reason."""
    run("enrol", "kw-pilot", "--unit-id", "QQ1", *SET, "--date", "2027-02-01")
    header = "nino,spell_start,spell_end,off_benefit,status_date\n"
    first, later = run.ws / "dwp-1.csv", run.ws / "dwp-2.csv"
    first.write_text(header + "QQ1,2027-03-01,,,\n")
    later.write_text(header + "QQ1,2027-03-01,2027-05-20,,\n")
    run("outcomes", "import", "kw-pilot", str(first), "--source", "DWP", at=date(2027, 4, 1))
    out = run(
        "outcomes", "import", "kw-pilot", str(later), "--source", "DWP", at=date(2027, 6, 1)
    ).output  # fmt: skip
    assert "1 spells that were open have ended" in out
    versions = run("export", "kw-pilot", "--what", "outcomes", at=date(2027, 6, 1)).output
    assert versions.count("2027-03-01") >= 2 and "2027-05-20" in versions
    changed = run.ws / "dwp-3.csv"  # a different end date is a correction, as before
    changed.write_text(header + "QQ1,2027-03-01,2027-05-27,,\n")
    refused = run(
        "outcomes", "import", "kw-pilot", str(changed), "--source", "DWP", ok=1, at=date(2027, 6, 2)
    )  # fmt: skip
    assert "--correct" in refused.output


def test_a_valued_primary_outcome_not_yet_estimable_leaves_its_value_unknown(run):
    """One person's job is known early and the rest are not due: the analysis used to stop
    with 'no effect given for valued outcome(s): in_work_13wk' (the costs needed it)."""
    for i in range(3):
        run("enrol", "kw-pilot", "--unit-id", f"QQ{i}", *SET, "--date", "2027-02-01")
    dwp = run.ws / "dwp.csv"
    dwp.write_text(
        "nino,spell_start,spell_end,off_benefit,status_date\nQQ0,2027-03-01,2027-09-01,,\n"
    )
    when = date(2027, 10, 5)
    run(
        "outcomes",
        "import",
        "kw-pilot",
        str(dwp),
        "--source",
        "DWP",
        "--as-of",
        "2027-10-01",
        at=when,
    )
    run("analyse", "kw-pilot", at=when)
    results = json.loads((run.ws / "analyses" / "kw-pilot" / "results.json").read_text())
    assert results["primary"]["effect"] is None
    total = next(r for r in results["costs"]["by_agency"] if r["agency"] == "total")
    assert total["value_per_participant"] is None and total["cost_per_participant"] > 0
    assert results["costs"]["value_not_estimable"] == ["in_work_13wk"]
    run("report", "kw-pilot", at=when)
    summary = (run.ws / "analyses" / "kw-pilot" / "summary.html").read_text()
    assert "not known yet: the effect on in_work_13wk could not be estimated" in summary


def test_reports_render_when_little_could_be_estimated(tmp_path):
    """A tiny pilot's results (tests/data/tiny_pilot_results.json, from the generator):
    no primary effect, no secondary outcome adjusted for multiplicity, no cost per
    additional outcome, a subgroup whose interaction could not be tested and no attrition
    yet. The technical report used to stop on each ('dict object' has no attribute
    'multiplicity', 'per_additional_outcome', 'underpowered'; None attrition)."""
    from evalkit.report import write_reports

    r = json.loads((Path(__file__).with_name("data") / "tiny_pilot_results.json").read_text())
    r["primary"]["subgroups"] = [
        {
            "subgroup": "benefit",
            "levels": [],
            "interaction_p_value": None,
            "not_estimable": "only one level observed",
        }
    ]
    r["attrition"] = None
    folder = tmp_path / "analyses" / r["pilot"]["id"]
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(r))
    written = write_reports(tmp_path / "analyses", r["pilot"]["id"])
    technical = (folder / "technical.html").read_text()
    assert len(written) == 3
    assert "interaction not estimable (only one level observed)" in technical
    assert "Attrition: not yet measurable" in technical


def test_a_three_arm_pilot_is_refused_by_analyse_with_a_hint(cli_in):
    cli_in("init", "three", at=REGISTERED)
    path = cli_in.ws / "protocols" / "three.yaml"
    text = path.read_text()
    extra = (
        "  - name: phone\n    label: Phone coaching\n    description: Weekly calls.\n"
        "    ratio: 1\n\ndesign:"
    )
    path.write_text(text.replace("\ndesign:", "\n" + extra, 1).replace(
        "block_sizes: [4, 6]", "block_sizes: [3, 6]"
    ))  # fmt: skip
    cli_in("register", "three", at=REGISTERED)
    cli_in("enrol", "three", "--unit-id", "QQ1", *SET, "--date", "2027-02-01", at=LATER)
    out = cli_in("analyse", "three", ok=1, at=LATER).output
    assert "a pilot with 3 arms is not built yet" in out
    assert "hint: export the data" in out and "--arms CONTROL,ARM" in out


def test_estimate_on_an_outcome_that_does_not_vary_is_refused_with_a_hint(cli_in, tmp_path):
    """Everyone analysed had no job: estimate printed an SE of 0 with no p-value (then a
    TypeError when printed)."""
    data = tmp_path / "data.csv"
    data.write_text("arm,y\n" + "usual,0\n" * 4 + "keyworker,0\n" * 4)
    out = cli_in(
        "estimate",
        str(data),
        "--outcome",
        "y",
        "--treatment",
        "arm",
        "--arms",
        "usual,keyworker",
        ok=1,
    ).output
    assert "does not vary within the arms" in out and "hint:" in out
