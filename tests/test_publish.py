"""`evalkit publish DIR`: the folder to put on a website holds the reports, the index and
one results file per pilot with the pages' own suppression, and nothing else."""

from __future__ import annotations

import json
import re
import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from evalkit.disclosure import shown
from evalkit.store import Store
from tests.attack import consort_from_page
from tests.small_pilot import REGISTERED, Built, build, run

DAY = date(2028, 6, 1)
PILOT = "small-pilot"
ARMS = {"Usual support": "usual", "Key worker": "keyworker"}

# Numbers in results.published.json that are not counts of people: what they are, and
# why a small value there gives nobody away.
NOT_PEOPLE = {
    "version",  # the registration's version number
    "registered_version",
    "import",  # an import's number
    "padlocks",
    "ceiling",
    "deduction",
    "imputations",
    "draws",  # randomisation or bootstrap draws
    "df",  # degrees of freedom of an effect whose n is shown
    "price_year",
    "alpha",
    "suppression_threshold",
    "places",  # places are not people
    "places_randomised",
    "clusters",
}
# Numbers that are model statistics or the registered plan's constants, not a share of
# people: a share that is a hidden count over its arm is looked for everywhere else.
STATISTICS = {
    *("estimate", "std_error", "p_value", "conf_low", "conf_high", "adjusted_p_value"),
    *("interaction_p_value", "interaction_detectable", "observed", "null_quantiles"),
    *("posterior_mean", "posterior_sd", "credible_low", "credible_high", "credible_level"),
    *("p_benefit", "p_beyond_mid", "p_harm", "prior", "mid", "minimal_important_difference"),
    *("log_estimate", "log_std_error", "smd", "g", "j", "sd_pooled", "icc", "g_total"),
    *("g_within", "fraction_missing_information", "minimum_detectable_effect_sd"),
    *("confidence", "point", "cost_per_participant", "value_per_participant"),
    *("net_per_participant", "per_participant", "cost_total", "value_total", "net_total"),
}


@pytest.fixture(scope="module")
def pilot(tmp_path_factory) -> Built:
    """A 38-person pilot with small counts everywhere a small pilot has them: 7 excluded
    for one reason, 4 referred late enough that their outcome is not yet due, few people
    in work in an arm, subgroup levels of a handful of people."""
    root = tmp_path_factory.mktemp("publish")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVALKIT_KEY_DIR", str(root / "keys"))
        mp.setenv("EVALKIT_USER", "test-evaluator")
        days = [REGISTERED + timedelta(days=14 * i) for i in range(3)]
        return build(
            root / "ws",
            [(days[0], 12, 3), (days[1], 11, 2), (days[2], 11, 2), (date(2027, 12, 1), 4, 0)],
            analyse_on=DAY,
            pilot=PILOT,
        )


def _results(ws: Path) -> dict[str, Any]:
    return json.loads((ws / "analyses" / PILOT / "results.json").read_text(encoding="utf-8"))


def _publish(ws: Path, *args: str, ok: int = 0):
    return run(ws, DAY, "publish", *args, ok=ok)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _numbers(doc: Any, path: tuple = ()) -> list[tuple[tuple, float]]:
    """Every number in a JSON document with its path (the registered protocol left out:
    it is the plan, not data)."""
    if isinstance(doc, dict):
        return [
            x for k, v in doc.items() if path or k != "protocol" for x in _numbers(v, (*path, k))
        ]
    if isinstance(doc, list):
        return [x for i, v in enumerate(doc) for x in _numbers(v, (*path, i))]
    if isinstance(doc, bool) or not isinstance(doc, int | float):
        return []
    return [(path, doc)]


def _strings(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return [s for k, v in doc.items() if k != "protocol" for s in _strings(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return [doc] if isinstance(doc, str) else []


def test_the_pilot_has_small_counts_the_pages_hide(pilot):
    results = _results(pilot.ws)
    counts = shown(results)
    c = results["consort"]
    assert (c["assessed"], c["excluded"]["total"], c["randomised"]) == (45, 7, 38)
    # (one of the 4 referred late already has 13 weeks in work, so is known early)
    assert 0 < sum(a["not_yet_due"] for a in c["arms"]) <= 4
    small = {n for n, v in counts.table.cells.items() if 0 < v < 10 and counts.is_hidden(n)}
    assert {"excluded", "excluded.reason.0"} <= small
    assert any(n.endswith("not_yet_due") for n in small)
    assert any(".subgroup." in n for n in small)


def test_publish_writes_the_pages_the_index_and_a_results_file_and_nothing_else(pilot, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(pilot.ws, ws)
    res = _publish(ws, str(tmp_path / "site"))
    assert "published 1 pilot to" in res.output
    assert _files(tmp_path / "site") == {
        "index.html",
        f"{PILOT}/summary.html",
        f"{PILOT}/technical.html",
        f"{PILOT}/results.published.json",
    }
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert f'href="{PILOT}/results.published.json"' in index
    assert "Published with evalkit" in index and "Do not publish this folder" not in index
    # the workspace's own index says not to publish analyses/ and points to publish
    run(ws, DAY, "report", "--all")
    own = (ws / "analyses" / "index.html").read_text(encoding="utf-8")
    assert "Do not publish this folder" in own and "evalkit publish FOLDER" in own
    # nothing of the workspace went with it, and no temporary folder is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "ws"]


def test_nothing_published_holds_a_pseudonym_or_raw_id(pilot, tmp_path):
    _publish(pilot.ws, str(tmp_path / "site"))
    store = Store.open(f"sqlite:///{pilot.ws / 'evalkit.db'}")
    try:
        units = {e.unit for e in store.log_entries(PILOT) if e.unit}
    finally:
        store.close()
    assert len(units) == 45 and len(pilot.raw_ids) == 45
    for path in (tmp_path / "site").rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            for secret in (*units, *pilot.raw_ids):
                assert secret not in text, (path.name, secret)


def test_the_published_results_file_holds_no_small_count_the_pages_hide(pilot, tmp_path):
    _publish(pilot.ws, str(tmp_path / "site"))
    results = _results(pilot.ws)
    counts = shown(results)
    cells = counts.table.cells
    small = {v for n, v in cells.items() if 0 < v < 10 and counts.is_hidden(n)}
    doc = json.loads(
        (tmp_path / "site" / PILOT / "results.published.json").read_text(encoding="utf-8")
    )
    # no whole number (counts are written as JSON integers) that is a hidden small count,
    # wherever it sits, unless it is something other than people
    for path, x in _numbers(doc):
        if any(k in NOT_PEOPLE for k in path if isinstance(k, str)):
            continue
        assert not (isinstance(x, int) and x in small), (path, x)
    # no share that is a hidden small count over the people it is a share of
    shares = set()
    for n, v in cells.items():
        if not (0 < v < 10 and counts.is_hidden(n)):
            continue
        prefix = n.rsplit(".", 1)[0]
        for denominator in ("analysed", "randomised"):
            d = cells.get(f"{prefix}.{denominator}") or cells.get(denominator)
            if d:
                shares |= {v / d, 100 * v / d, (d - v) / d, 100 * (d - v) / d}
    for path, x in _numbers(doc):
        if any(k in NOT_PEOPLE | STATISTICS for k in path if isinstance(k, str)):
            continue
        assert not any(abs(x - s) < 1e-9 for s in shares if not float(s).is_integer()), path
    # nor a count of people in words
    for text in _strings(doc):
        for m in re.finditer(r"\b(\d[\d,]*) (?:people|residents|person)\b", text):
            assert int(m.group(1).replace(",", "")) not in small, text


def test_the_pages_and_the_results_file_show_the_same_counts(pilot, tmp_path):
    _publish(pilot.ws, str(tmp_path / "site"))
    site = tmp_path / "site" / PILOT
    doc = json.loads((site / "results.published.json").read_text(encoding="utf-8"))
    summary = (site / "summary.html").read_text(encoding="utf-8")
    seen = consort_from_page(summary, ARMS)
    c = doc["consort"]
    for box in ("assessed", "excluded", "randomised"):
        assert seen[box] == c[box]["shown"], box
    boxes = {"allocated": "randomised", "lost": "lost_to_follow_up"}
    for arm in c["arms"]:
        for box in ("allocated", "withdrawn", "did_not_start", "lost", "not_yet_due", "analysed"):
            assert seen[f"{arm['arm']}.{box}"] == arm[boxes.get(box, box)]["shown"]
            if arm[boxes.get(box, box)]["value"] is not None:
                assert seen[f"{arm['arm']}.{box}"] == f"{arm[boxes.get(box, box)]['value']:,}"
    assert "fewer than 10" in seen.values() and "withheld" in seen.values()
    technical = (site / "technical.html").read_text(encoding="utf-8")
    for r in c["excluded_reasons"]:
        assert f'<th scope="row">{r["reason"]}</th><td class="n">{r["people"]["shown"]}</td>' in (
            technical
        )
    for s in doc["primary"]["subgroups"]:
        for lv in s["levels"]:
            if lv["n"]["value"] is None:
                assert "withheld" in lv["effect"]
                assert f'<th scope="row">{lv["level"]}</th><td colspan="8">withheld' in technical
    assert doc["headline"]["finding"] in summary
    assert (doc["primary"]["binary"] == {"withheld": doc["primary"]["means"]["withheld"]}) == (
        "Unadjusted rates, risk difference, relative risk, odds ratio and number needed to "
        "treat: withheld" in technical.split('id="effect-sizes"')[1].split("<h3>")[1]
    )


def test_published_pages_are_fresh_renders_never_exact_counts(pilot, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(pilot.ws, ws)
    run(ws, DAY, "report", PILOT, "--exact-counts")
    exact = (ws / "analyses" / PILOT / "technical.html").read_text(encoding="utf-8")
    assert "Do not publish it" in exact
    _publish(ws, str(tmp_path / "site"))
    published = tmp_path / "site" / PILOT
    assert "Do not publish it" not in (published / "technical.html").read_text(encoding="utf-8")
    run(ws, DAY, "report", PILOT)  # the same pages report writes, byte for byte
    for name in ("summary.html", "technical.html"):
        assert (published / name).read_bytes() == (ws / "analyses" / PILOT / name).read_bytes()


def test_publish_refuses_analyses_and_a_folder_it_did_not_write_and_replaces_its_own(
    pilot, tmp_path
):
    res = _publish(pilot.ws, str(pilot.ws / "analyses" / "site"), ok=1)
    assert "inside the workspace's analyses folder" in res.output and "hint:" in res.output
    assert not (pilot.ws / "analyses" / "site").exists()
    res = _publish(pilot.ws, str(pilot.ws), ok=1)
    assert "holds the workspace itself" in res.output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = _publish(pilot.ws, str(mine), ok=1)
    assert "was not written by evalkit publish" in res.output and "--force" in res.output
    assert _files(mine) == {"notes.txt"}
    res = _publish(pilot.ws, str(mine), "--force")
    assert "deleted what was in it (--force)" in res.output
    assert "notes.txt" not in _files(mine) and "index.html" in _files(mine)
    res = _publish(pilot.ws, str(mine))
    assert "replaced the previous publish" in res.output
    (mine / PILOT / "extra.csv").write_text("id\n1\n")  # no longer only what publish wrote
    res = _publish(pilot.ws, str(mine), ok=1)
    assert "was not written by evalkit publish" in res.output


def test_a_pilot_that_cannot_be_reported_stops_publish_naming_it_and_nothing_changes(
    pilot, tmp_path
):
    ws = tmp_path / "ws"
    shutil.copytree(pilot.ws, ws)
    site = tmp_path / "site"
    _publish(ws, str(site))
    before = {p: (site / p).read_bytes() for p in _files(site)}
    (ws / "analyses" / PILOT / "results.json").write_text('{"schema_version": ')
    res = _publish(ws, str(site), ok=1)
    assert f"cannot publish: pilot '{PILOT}' cannot be reported" in res.output
    assert "not valid JSON" in res.output and "hint:" in res.output
    assert {p: (site / p).read_bytes() for p in _files(site)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "ws"]
    (ws / "analyses" / PILOT / "results.json").write_text("{}")
    res = _publish(ws, str(tmp_path / "new"), ok=1)
    assert "is not a results file evalkit can report on" in res.output
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    (empty / "analyses").mkdir(parents=True)
    res = _publish(empty, str(tmp_path / "new"), ok=1)
    assert "has a results.json yet" in res.output


def test_the_demo_publishes_every_pilot_and_its_chain(demo_reports, tmp_path):
    ws = tmp_path / "demo"
    shutil.copytree(demo_reports, ws)
    _publish(ws, str(tmp_path / "site"))
    pilots = ("demo-estates", "demo-front-door", "demo-keyworker", "demo-keyworker-2")
    assert _files(tmp_path / "site") == {"index.html"} | {
        f"{p}/{n}"
        for p in pilots
        for n in ("summary.html", "technical.html", "results.published.json")
    }
    doc = json.loads(
        (tmp_path / "site" / "demo-keyworker-2" / "results.published.json").read_text()
    )
    assert doc["synthetic"] is True
    assert [it["pilot"] for it in doc["iterations"]["iterations"]] == [
        "demo-keyworker",
        "demo-keyworker-2",
    ]
    assert doc["iterations"]["iterations"][1]["this"] is True
