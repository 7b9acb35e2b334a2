"""`evalkit demo` runs the built steps end to end in a fresh workspace."""

from __future__ import annotations

import json

import pytest

from evalkit.enrolment import verify
from evalkit.store import Store
from tests.conftest import demo_keys, run_demo


def test_demo_runs_every_built_step_and_every_log_verifies(tmp_path, key_dir):
    target = tmp_path / "demo"
    res = run_demo(target)
    assert res.exit_code == 0, res.output
    assert "synthetic" in res.output
    assert "warning" not in res.output.lower()
    for step in (
        "1. Choose 16 of 40 candidate council estates",
        "6. Import outcomes from each agency's file",
        "7. Verify every allocation log",
        "8. Run each registered analysis",
        "9. Adapt the key-worker pilot",
        "10. Learn across the chain",
        "11. Write the scrutiny summaries",
    ):
        assert step in res.output
    pilots = ("demo-keyworker", "demo-estates", "demo-front-door", "demo-keyworker-2")
    for pilot in pilots:
        for name in ("results.json", "summary.html", "technical.html"):
            assert (target / "analyses" / pilot / name).is_file()
            assert f"{target.resolve() / 'analyses' / pilot / 'summary.html'}" in res.output
    assert (target / "analyses" / "demo-keyworker-2" / "learning.json").is_file()
    assert "(and one for each pilot)" in res.output
    keys = demo_keys(target)
    assert res.output.rstrip().endswith(
        f"EVALKIT_KEY_DIR={keys} evalkit --workspace {target.resolve()} status demo-keyworker"
    )
    assert f"{target.resolve() / 'analyses' / 'index.html'}" in res.output
    store = Store.open(f"sqlite:///{target / 'evalkit.db'}")
    try:
        assert store.pilot_ids() == [
            "demo-estates",
            "demo-front-door",
            "demo-keyworker",
            "demo-keyworker-2",
        ]
        for pilot in store.pilot_ids():
            entries = store.log_entries(pilot)
            assert entries and verify(store, pilot).ok
            assert all("SYN-" not in (e.unit or "") for e in entries)  # ids pseudonymised
        kinds = {e.kind for e in store.log_entries("demo-keyworker")}
        assert kinds == {"allocation", "exclusion", "event"}
        # the estates were chosen by a recorded rule, before they were allocated
        notes = [e for e in store.log_entries("demo-estates") if e.kind == "event"]
        assert notes[0].seq == 1 and "selection" in notes[0].detail
    finally:
        store.close()
    again = run_demo(target)
    assert again.exit_code == 1 and "is not empty" in again.output
    # the demo's keys are beside it, never in the user's own key directory
    assert sorted(p.name.rsplit("-", 1)[0] for p in keys.iterdir()) == sorted(pilots)
    assert not any(key_dir.iterdir())


def test_the_demo_registers_each_pilot_before_it_randomises_anyone(demo_reports):
    """Every pilot's plan is registered two weeks before its start date, and its first
    referral is on or after the start date: what the reports say holds."""
    for pilot in ("demo-keyworker", "demo-estates", "demo-front-door", "demo-keyworker-2"):
        results = json.loads((demo_reports / "analyses" / pilot / "results.json").read_text())
        reg = results["registration"]
        start = results["protocol"]["start_date"]
        assert reg["registered_at"][:10] < start <= reg["first_randomised"], pilot
        assert reg["backdated"] == []


def test_the_demo_gives_the_same_pilots_every_time(tmp_path):
    """Its secrets come from its seed: two demos on the same day are the same demo."""
    for name in ("a", "b"):
        assert run_demo(tmp_path / name).exit_code == 0
    for pilot in ("demo-keyworker", "demo-estates"):
        a, b = (
            json.loads((tmp_path / n / "analyses" / pilot / "results.json").read_text())
            for n in ("a", "b")
        )
        assert a["primary"]["effect"] == b["primary"]["effect"]
        assert a["provenance"]["log_head"] == b["provenance"]["log_head"]


@pytest.mark.parametrize("pilot", ["demo-estates", "demo-front-door"])
def test_demo_place_pilots_allocate_places_then_people(tmp_path, pilot):
    target = tmp_path / "demo"
    assert run_demo(target).exit_code == 0
    store = Store.open(f"sqlite:///{target / 'evalkit.db'}")
    entries = store.log_entries(pilot)
    store.close()
    places = [e for e in entries if e.level == "place"]
    people = [e for e in entries if e.level == "participant" and e.kind == "allocation"]
    assert places and people
    assert entries.index(places[-1]) < entries.index(people[0])


def test_consort_adds_up_on_every_demo_pilot(tmp_path):
    from datetime import date

    from evalkit.consort import check
    from evalkit.protocol_file import load_protocol
    from evalkit.tracking import track

    target = tmp_path / "demo"
    assert run_demo(target).exit_code == 0
    store = Store.open(f"sqlite:///{target / 'evalkit.db'}")
    try:
        for pilot in store.pilot_ids():
            protocol, _ = load_protocol(target / "protocols" / f"{pilot}.yaml")
            c = track(store, protocol, date.today()).consort
            check(c)  # raises if any box does not add up
            excluded = [e for e in store.log_entries(pilot) if e.kind == "exclusion"]
            assert c["excluded"]["total"] == len(excluded) > 0
            assert c["assessed"] == c["randomised"] + len(excluded)
            assert sum(a["analysed"] for a in c["arms"]) > 0.9 * c["randomised"]
            if protocol.unit.level == "place":
                assert c["places_randomised"] == len(
                    protocol.field(protocol.unit.place_field).levels
                )
    finally:
        store.close()
