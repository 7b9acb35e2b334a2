"""`evalkit report`: the scrutiny summary, the technical report and the index, built
from results.json alone, self-contained, with no identifier of any resident."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from evalkit.store import Store
from tests.conftest import demo_keys

PILOTS = ("demo-keyworker", "demo-estates", "demo-front-door", "demo-keyworker-2")


def _run(ws: Path, *args: str, ok: int = 0):
    res = CliRunner().invoke(cli, ["--workspace", str(ws), *args], catch_exceptions=False)
    assert res.exit_code == ok, res.output
    assert "Traceback" not in res.output
    return res


def _page(root: Path, pilot: str, name: str) -> str:
    return (root / "analyses" / pilot / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("pilot", PILOTS)
def test_both_reports_are_written_self_contained(demo_reports, pilot):
    for name in ("summary.html", "technical.html"):
        html = _page(demo_reports, pilot, name)
        assert html.startswith("<!DOCTYPE html>")
        assert '<html lang="en-GB">' in html
        assert "<script" not in html.lower()  # nothing needs JavaScript
        assert "<link" not in html.lower() and "@import" not in html  # CSS is inline
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no other host
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", html)
        hrefs = re.findall(r'href="([^"]+)"', html)
        assert all(
            h.startswith("#") or h in {"technical.html", "summary.html", "../index.html"}
            for h in hrefs
        ), hrefs
        assert html.count("<svg") >= 2 and 'role="img"' in html
        assert "<style>" in html and "@media print" in html


@pytest.mark.parametrize("pilot", PILOTS)
def test_summary_answers_in_the_order_the_commission_reads(demo_reports, pilot):
    html = _page(demo_reports, pilot, "summary.html")
    order = [
        'id="answer"',
        'id="how-sure"',
        'id="progression"',
        'id="costs"',
        'id="flow"',
        'id="outcomes"',
        'id="limits"',
        'id="plan"',
        'id="context"',
        'id="iterations"',
        'id="glossary"',
    ]
    positions = [html.index(o) for o in order]
    assert positions == sorted(positions)
    assert "synthetic" in html.lower()  # the demo is labelled as such
    assert "significant" not in html.lower()
    assert "padlocks" in html


def test_technical_report_draws_the_randomisation_null_distribution(demo_reports):
    results = json.loads((demo_reports / "analyses" / "demo-estates" / "results.json").read_text())
    hist = results["primary"]["randomisation_inference"]["null_histogram"]
    technical = _page(demo_reports, "demo-estates", "technical.html")
    assert 'id="ri-null-title">Randomisation-inference null distribution' in technical
    assert f"Histogram of {sum(hist['counts'])} re-drawn estimates" in technical


def test_headline_numbers_are_those_of_results_json(demo_reports):
    results = json.loads(
        (demo_reports / "analyses" / "demo-keyworker" / "results.json").read_text()
    )
    b = results["primary"]["binary"]
    html = _page(demo_reports, "demo-keyworker", "summary.html")
    assert results["registration"]["hash"] in html
    # each demo draws a new secret, so its arms differ: an arm may have too few people
    # with (or without) the outcome to publish the rates
    small = min(
        b["events_treated"],
        b["events_control"],
        b["n_treated"] - b["events_treated"],
        b["n_control"] - b["events_control"],
    )
    from evalkit.disclosure import rates_hidden, shown

    hidden = rates_hidden(results, results["primary"]["outcome"], shown(results))
    assert hidden or small >= 10
    if hidden:
        assert "Too few residents in one of the groups" in html
        assert "in every 100 residents offered" not in html
        return
    # the control rate as observed; the treated rate implied by the registered estimate
    implied = b["control_rate"] + results["primary"]["effect"]["estimate"]
    rt, rc = round(implied * 100), round(b["control_rate"] * 100)
    assert f"{rt} in every 100 residents offered" in html
    assert f"against {rc} in every 100 with usual support" in html


@pytest.mark.parametrize("pilot", PILOTS)
def test_tables_captions_headers_and_charts_are_labelled(demo_reports, pilot):
    for name in ("summary.html", "technical.html"):
        html = _page(demo_reports, pilot, name)
        assert html.count("<table") == html.count("<caption>")
        assert "<th>" not in html  # every header cell says whether it heads a row or column
        ths = re.findall(r"<th[ >][^>]*>|<th>", html)
        assert ths and all('scope="' in t for t in ths)
        for svg in re.findall(r"<svg [^>]*>", html):
            if 'aria-hidden="true"' in svg or ('focusable="false"' in svg and "role" not in svg):
                continue
            assert 'role="img"' in svg and "aria-labelledby" in svg
        titles = re.findall(r"<h([1-3])", html)
        assert titles[0] == "1" and titles.count("1") == 1


def test_no_pseudonym_or_identifier_appears_in_any_report(demo_reports):
    store = Store.open(f"sqlite:///{demo_reports / 'evalkit.db'}")
    try:
        units = {
            e.unit
            for p in PILOTS
            for e in store.log_entries(p)
            if e.unit and e.level == "participant"
        }
    finally:
        store.close()
    raw = set()
    for f in (demo_reports / "data").glob("*.csv"):
        if "places" in f.name or "candidate" in f.name:  # place codes are not personal data
            continue
        with f.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                raw.update(v for k, v in row.items() if k == "id" and v)
    assert len(units) > 500 and len(raw) > 500
    pages = [p.read_text(encoding="utf-8") for p in (demo_reports / "analyses").rglob("*.html")]
    assert len(pages) == 9
    for html in pages:
        for u in units:
            assert u not in html
        for r in raw:
            assert not re.search(rf"\b{re.escape(r)}\b", html), r


def test_index_lists_every_pilot_with_links_and_headline(demo_reports):
    html = (demo_reports / "analyses" / "index.html").read_text(encoding="utf-8")
    for pilot in PILOTS:
        assert f'href="{pilot}/summary.html"' in html
        assert f'href="{pilot}/technical.html"' in html
    assert html.count("The answer:") == 4
    assert "2 iterations" in html and "iteration of <code>demo-keyworker</code>" in html


def test_a_report_is_built_from_results_json_alone(demo_reports, tmp_path):
    ws = tmp_path / "copy"
    shutil.copytree(demo_reports, ws)
    (ws / "evalkit.db").unlink()  # no store: nothing can be recomputed
    path = ws / "analyses" / "demo-keyworker" / "results.json"
    results = json.loads(path.read_text())
    results["primary"]["effect"]["std_error"] = 0.0123456
    path.write_text(json.dumps(results))
    _run(ws, "report", "demo-keyworker")
    assert "0.0123" in _page(ws, "demo-keyworker", "technical.html")


def test_reports_are_byte_identical_when_rewritten(demo_reports, tmp_path):
    ws = tmp_path / "copy"
    shutil.copytree(demo_reports, ws)
    _run(ws, "report", "--all")
    for pilot in PILOTS:
        for name in ("summary.html", "technical.html"):
            assert _page(ws, pilot, name) == _page(demo_reports, pilot, name)


def test_a_council_restyles_with_its_own_template_folder(demo_reports, tmp_path):
    ws = tmp_path / "copy"
    shutil.copytree(demo_reports, ws)
    mine = tmp_path / "council-templates"
    mine.mkdir()
    (mine / "style.css").write_text("body { color: #123456; } /* council house style */")
    _run(ws, "report", "demo-estates", "--templates", str(mine))
    summary = _page(ws, "demo-estates", "summary.html")
    assert "council house style" in summary and "#123456" in summary
    assert 'id="answer"' in summary  # the rest still comes from evalkit's templates


def test_bad_input_is_one_clear_message(demo_reports, tmp_path):
    ws = tmp_path / "copy"
    shutil.copytree(demo_reports, ws)
    res = _run(ws, "report", "no-such-pilot", ok=1)
    assert "no-such-pilot/results.json does not exist" in res.output
    assert "evalkit analyse no-such-pilot" in res.output
    res = _run(ws, "report", "demo-estates", "--templates", str(tmp_path / "nope"), ok=1)
    assert "is not a folder" in res.output
    res = _run(ws, "report", ok=1)
    assert "--all" in res.output
    empty = tmp_path / "empty"
    (empty / "analyses").mkdir(parents=True)
    res = _run(empty, "report", "--all", ok=1)
    assert "has a results.json yet" in res.output and "evalkit analyse PILOT" in res.output
    broken = ws / "analyses" / "demo-estates" / "results.json"
    broken.write_text('{"schema_version": ')
    res = _run(ws, "report", "demo-estates", ok=1)
    assert "not valid JSON" in res.output and "results.json:1:" in res.output
    broken.write_text("{}")
    res = _run(ws, "report", "demo-estates", ok=1)
    assert "is not a results file evalkit can report on" in res.output


def test_exact_counts_only_on_request_and_labelled_internal(demo_reports, tmp_path):
    ws = tmp_path / "copy"
    shutil.copytree(demo_reports, ws)
    assert "Do not publish it" not in _page(ws, "demo-keyworker", "technical.html")
    _run(ws, "report", "demo-keyworker", "--exact-counts")
    technical = _page(ws, "demo-keyworker", "technical.html")
    assert "Internal: this copy shows exact counts" in technical
    assert (
        "fewer than"
        not in _page(ws, "demo-keyworker", "technical.html")
        .split("CONSORT flow by arm")[1]
        .split("</table>")[0]
    )


def test_a_registered_ratio_model_is_shown_as_the_primary_analysis(demo_reports, tmp_path):
    ws = tmp_path / "copy"
    shutil.copytree(demo_reports, ws)
    path = ws / "analyses" / "demo-estates" / "results.json"
    results = json.loads(path.read_text())
    results["primary"]["model"] = "logistic"
    results["primary"]["primary_analysis"] = "registered_model"
    results["primary"]["registered_model"] = {
        "model": "logistic",
        "scale": "odds ratio",
        "estimate": 1.7526,
        "conf_low": 0.9329,
        "conf_high": 3.2927,
        "p_value": 0.0773,
        "log_estimate": 0.5611,
        "log_std_error": 0.2959,
        "df": 15,
        "se_type": "CR1",
        "n": 288,
        "clusters": 16,
        "dispersion": None,
        "confidence": 0.95,
        "note": "cluster-robust (CR1) standard error with t on 15 df",
    }
    path.write_text(json.dumps(results))
    _run(ws, "report", "demo-estates")
    summary = _page(ws, "demo-estates", "summary.html")
    assert "a logistic model, gives an odds ratio of 1.75 (95% interval 0.93 to 3.29)" in summary
    technical = _page(ws, "demo-estates", "technical.html")
    assert "Registered logistic model (the primary analysis): odds ratio" in technical
    assert "1.753" in technical and "0.5611 (0.2959)" in technical
    # a registered primary analysis that does not confirm the effect stops "very likely"
    assert "very likely helps" not in summary.split('id="how-sure"')[0]


def test_technical_report_withholds_what_would_give_a_small_count_away(demo_reports, tmp_path):
    ws = tmp_path / "copy"
    shutil.copytree(demo_reports, ws)
    path = ws / "analyses" / "demo-keyworker" / "results.json"
    results = json.loads(path.read_text())
    # a baseline category held by very few people in an arm: its share times the arm's
    # size would be the count
    small = [
        b
        for b in results["balance"]
        if b["kind"] != "numeric"
        and any(
            0 < round(m * n) < 10
            for m, n in ((b["mean_treated"], b["n_treated"]), (b["mean_control"], b["n_control"]))
        )
    ]
    assert small, "the demo has a rare baseline category"
    # and a primary outcome that only 6 people in one arm reached
    b = results["primary"]["binary"]
    b["events_control"] = 6
    b["control_rate"] = 6 / b["n_control"]
    path.write_text(json.dumps(results))
    _run(ws, "report", "demo-keyworker")
    technical = _page(ws, "demo-keyworker", "technical.html")
    assert technical.count("withheld: fewer than 10 people") == len(small)
    for row in small:
        cells = (
            f'<th scope="row">{row["variable"]}</th><td>{row["level"]}</td>'
            '<td class="n" colspan="3">withheld: fewer than 10 people</td>'
        )
        assert cells in technical
    assert "Unadjusted rates, risk difference, relative risk, odds ratio" in technical
    assert f"{b['control_rate'] * 100:.1f}%" not in technical
    _run(ws, "report", "demo-keyworker", "--exact-counts")
    exact = _page(ws, "demo-keyworker", "technical.html")
    assert "withheld: fewer than 10 people" not in exact
    assert f"{b['control_rate'] * 100:.1f}%" in exact


def test_amendments_notes_and_deviations_reach_the_reports(demo_reports, tmp_path, monkeypatch):
    """The way an evaluator gets there: a note in the log, an amendment with its reason,
    the registered analysis, then an exploratory one on a changed file."""
    ws = tmp_path / "copy"
    shutil.copytree(demo_reports, ws)
    monkeypatch.setenv("EVALKIT_KEY_DIR", str(demo_keys(demo_reports)))
    _run(ws, "note", "demo-keyworker", "--date", "2025-01-10", "Jobcentre offices merged")
    protocol = ws / "protocols" / "demo-keyworker.yaml"
    text = protocol.read_text()
    assert "    minimal_important_difference: 3\n" in text
    protocol.write_text(
        text.replace(
            "    minimal_important_difference: 3\n", "    minimal_important_difference: 2.5\n", 1
        )
    )
    _run(ws, "amend", "demo-keyworker", "--reason", "Wellbeing MID agreed with DWP")
    _run(ws, "analyse", "demo-keyworker")
    _run(ws, "report", "demo-keyworker")
    summary = _page(ws, "demo-keyworker", "summary.html")
    assert "Wellbeing MID agreed with DWP" in summary
    assert "outcomes[1].minimal_important_difference: 3 → 2.5" in summary
    assert "Jobcentre offices merged" in summary and "2025-01-10" in summary
    assert "The analysis followed the registered plan, with no deviations." in summary

    protocol.write_text(protocol.read_text().replace("alpha: 0.05", "alpha: 0.1", 1))
    _run(ws, "analyse", "demo-keyworker", ok=1)  # a changed plan is refused...
    _run(ws, "analyse", "demo-keyworker", "--exploratory")  # ...unless labelled so
    _run(ws, "report", "demo-keyworker")
    summary = _page(ws, "demo-keyworker", "summary.html")
    technical = _page(ws, "demo-keyworker", "technical.html")
    for html in (summary, technical):
        assert "departs from the registered plan" in html
        assert "analysis.alpha: 0.05 -&gt; 0.1" in html
    index = (ws / "analyses" / "index.html").read_text()
    assert "Exploratory analysis" in index


def test_a_primary_outcome_that_could_not_be_estimated_is_said_plainly(demo_reports, tmp_path):
    ws = tmp_path / "copy"
    shutil.copytree(demo_reports, ws)
    path = ws / "analyses" / "demo-estates" / "results.json"
    results = json.loads(path.read_text())
    keep = (
        "outcome",
        "label",
        "wording",
        "type",
        "primary",
        "direction",
        "minimal_important_difference",
        "source",
        "model",
        "primary_analysis",
        "analysed",
        "covariates",
        "effect",
        "registered_model",
        "other_standard_errors",
    )
    p = {k: v for k, v in results["primary"].items() if k in keep}
    p.update(
        effect=None,
        other_standard_errors=[],
        not_estimable="fewer than two people with this outcome in an arm",
    )
    results["primary"] = p
    path.write_text(json.dumps(results))
    _run(ws, "report", "demo-estates")
    summary = _page(ws, "demo-estates", "summary.html")
    assert "could not be estimated" in summary
    assert "cannot be told yet" in summary
    assert "The primary effect could not be estimated" in _page(
        ws, "demo-estates", "technical.html"
    )


def test_a_37_person_pilot_is_reported_with_and_without_exact_counts(tmp_path):
    """Issue 11: 44 assessed, 7 excluded, 37 randomised, built through the CLI; report
    died in disclosure.determined (a hidden total with no upper bound), and then in the
    technical report (the first secondary outcome, a survey never imported, had no
    multiplicity to name)."""
    from datetime import date

    from tests.attack import consort_from_page, consort_relations, recoverable
    from tests.small_pilot import pilot_37, run

    built = pilot_37(tmp_path / "ws")
    results = json.loads((built.ws / "analyses" / "pilot37" / "results.json").read_text())
    c = results["consort"]
    assert (c["assessed"], c["excluded"]["total"], c["randomised"]) == (44, 7, 37)
    day = date(2028, 6, 1)
    run(built.ws, day, "report", "pilot37", "--exact-counts")
    exact = _page(built.ws, "pilot37", "technical.html")
    assert "Internal: this copy shows exact counts" in exact
    run(built.ws, day, "report", "pilot37")
    summary = _page(built.ws, "pilot37", "summary.html")
    technical = _page(built.ws, "pilot37", "technical.html")
    assert "Do not publish it" not in technical
    seen = consort_from_page(summary, {"Usual support": "usual", "Key worker": "keyworker"})
    assert seen["excluded"] == "fewer than 10" and seen["randomised"] == "37"
    assert recoverable(seen, consort_relations(["usual", "keyworker"]), [], 10) == {}
    for raw in built.raw_ids:
        assert raw not in summary and raw not in technical
