"""Disclosure control: small counts are suppressed, and none can be recovered from what
the summary shows (totals, differences, rates)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import Bounds, LinearConstraint, milp

from evalkit.disclosure import (
    PRIMARY,
    SECONDARY,
    Table,
    determined,
    ranges,
    rates_hidden,
    shown,
    suppress,
)
from tests.attack import reader_relations, recoverable
from tests.test_wording import _results

DATA = Path(__file__).with_name("data")


def _planted() -> dict[str, Any]:
    """200 per arm, with small counts planted in the usual-support arm and the exclusions."""
    r = _results(0.05, 0.04, events=(60, 40))
    usual = r["consort"]["arms"][0]
    usual.update(withdrawn=3, lost_to_follow_up=4, not_yet_due=0, analysed=196)
    r["primary"]["analysed"]["usual"] = 196
    r["consort"]["excluded"] = {"total": 50, "reasons": {"Too young": 46, "Moved away": 4}}
    return r


def test_primary_suppression_hides_counts_from_1_to_9_and_shows_zero():
    t = Table()
    for name, v in {"a": 0, "b": 1, "c": 9, "d": 10}.items():
        t.add(name, v)
    assert suppress(t, 10) == {"b": PRIMARY, "c": PRIMARY}


def test_a_lone_hidden_part_gets_a_partner_hidden_too():
    t = Table()
    for name, v in {"total": 100, "x": 4, "y": 60, "z": 36}.items():
        t.add(name, v)
    t.relate("total", ["x", "y", "z"])
    # x alone could be recovered as 100 - 60 - 36; the smallest other part goes with it
    assert suppress(t, 10) == {"x": PRIMARY, "z": SECONDARY}


def test_zero_sum_and_bounds_are_used_like_a_reader_would():
    t = Table()
    for name, v in {"total": 11, "x": 1, "y": 10}.items():
        t.add(name, v)
    t.relate("total", ["x", "y"])
    status = suppress(t, 10)
    # withholding y would not do: a reader knows a withheld count is 10 or more (zeros
    # are shown and 1 to 9 say "fewer than 10"), and x + y = 11 with x >= 1 leaves only
    # y = 10, x = 1. Withholding the total leaves x in 1..9 and the total in 11..19.
    assert status == {"x": PRIMARY, "total": SECONDARY}
    assert (
        recoverable(
            {"total": "withheld", "x": "fewer than 10", "y": "10"},
            [(["total"], ["x", "y"])],
            [],
            10,
        )
        == {}
    )
    assert recoverable(
        {"total": "11", "x": "fewer than 10", "y": "withheld"}, [(["total"], ["x", "y"])], [], 10
    ) == {"x": 1, "y": 10}


def _attacker_range(cells, identities, shown_cells, bounds) -> dict[str, tuple[int, int]]:
    """An independent reader's attack by integer programming: the smallest and largest
    whole value of each hidden cell that fits everything shown."""
    hidden = sorted(set(cells) - set(shown_cells))
    idx = {n: i for i, n in enumerate(hidden)}
    rows, rhs = [], []
    for total, parts in identities:
        row = np.zeros(len(hidden))
        const = 0.0
        for name, coef in [(total, 1), *((p, -1) for p in parts)]:
            if name in idx:
                row[idx[name]] += coef
            else:
                const -= coef * shown_cells[name]
        if row.any():
            rows.append(row)
            rhs.append(const)
    lo = np.array([bounds[n][0] for n in hidden], dtype=float)
    hi = np.array([bounds[n][1] for n in hidden], dtype=float)
    cons = [LinearConstraint(np.array(rows), rhs, rhs)] if rows else []
    out = {}
    for n, i in idx.items():
        c = np.zeros(len(hidden))
        c[i] = 1
        ends = []
        for sign in (1, -1):
            res = milp(
                sign * c, constraints=cons, integrality=np.ones(len(hidden)), bounds=Bounds(lo, hi)
            )
            assert res.status == 0
            ends.append(round(sign * res.fun))
        out[n] = (ends[0], ends[1])
    return out


def test_no_planted_small_count_is_recoverable_from_the_rendered_summary():
    from evalkit.report import environment, summary_context

    r = _planted()
    html = environment().get_template("summary.html.j2").render(**summary_context(r))
    # What the reader sees, parsed from the page itself: the CONSORT table and the line
    # under it.
    line = re.search(
        r"Assessed for eligibility: ([^.]+)\. Not eligible: ([^.]+)\. Randomised: ([^.]+)\.",
        html,
    )
    assert line is not None
    seen: dict[str, str] = dict(
        zip(("assessed", "excluded", "randomised"), line.groups(), strict=True)
    )
    table = html[html.index("The same flow as a table") :]
    for label, arm in (("Usual support", "usual"), ("Key worker support", "keyworker")):
        row = re.search(rf'<th scope="row">{label}</th>((?:<td class="n">[^<]*</td>)+)', table)
        assert row is not None
        values = re.findall(r'<td class="n">([^<]*)</td>', row.group(1))
        boxes = ("allocated", "withdrawn", "did_not_start", "lost", "not_yet_due", "analysed")
        seen.update({f"{arm}.{box}": v for box, v in zip(boxes, values, strict=True)})
    # every planted count is hidden on the page
    for cell in ("usual.withdrawn", "usual.lost"):
        assert seen[cell] == "fewer than 10", (cell, seen[cell])
    assert "Withdrew: 3" not in html and "No outcome recorded: 4" not in html
    # the reader's identities, from the CONSORT rules printed on every flow diagram
    identities = [
        ("assessed", ["randomised", "excluded"]),
        ("randomised", ["usual.allocated", "keyworker.allocated"]),
        *(
            (f"{a}.allocated", [f"{a}.analysed", f"{a}.lost", f"{a}.not_yet_due"])
            for a in ("usual", "keyworker")
        ),
    ]
    numbers = {k: int(v.replace(",", "")) for k, v in seen.items() if v.replace(",", "").isdigit()}
    bounds = {
        k: (1, 9) if v == "fewer than 10" else (0, 10_000)
        for k, v in seen.items()
        if k not in numbers
    }
    ranges = _attacker_range(seen, identities, numbers, bounds)
    for cell, (lo, hi) in ranges.items():
        assert lo < hi, f"{cell} can be recovered: it must be {lo}"
    # and the headline gives no rate that rests on them
    assert "fewer than 10" in html


def test_rates_are_withheld_when_the_events_are_a_small_count():
    r = _planted()
    r["primary"]["binary"].update(events_control=6, control_rate=6 / 196, n_control=196)
    counts = shown(r)
    # events are never printed: with the rates withheld nothing gives them, or the
    # people without the outcome, away
    assert counts.count("in_work.usual.events") == "not published"
    assert counts.count("in_work.usual.non_events") == "not published"
    assert counts.share("in_work.usual.events", "in_work.usual.analysed") is None
    # 6 of 196 rounds to "3 in every 100", which with 196 shown would pin the 6 down
    from evalkit.wording import headline

    assert "in every 100 residents offered" not in headline(r, counts)["finding"]


def test_reasons_that_add_up_to_the_total_protect_each_other():
    r = _planted()
    counts = shown(r)
    reasons = r["consort"]["excluded"]["reasons"]
    assert sum(reasons.values()) == r["consort"]["excluded"]["total"]
    assert counts.count("excluded.reason.1") == "fewer than 10"  # the 4 who moved away
    assert counts.count("excluded.reason.0") == "withheld"  # else 50 - 46 gives it away
    assert counts.count("excluded") == "50"


def test_exact_counts_are_only_shown_when_asked_for():
    r = _planted()
    assert shown(r).count("arm.usual.withdrawn") == "fewer than 10"
    assert shown(r, exact=True).count("arm.usual.withdrawn") == "3"


@pytest.mark.parametrize("threshold", [5, 10, 20])
def test_threshold_comes_from_the_protocol(threshold):
    r = copy.deepcopy(_planted())
    r["protocol"]["reporting"]["suppression_threshold"] = threshold
    counts = shown(r)
    expected = "3" if threshold <= 3 else f"fewer than {threshold}"
    assert counts.count("arm.usual.withdrawn") == expected


def _pilot_37() -> dict[str, Any]:
    """Issue 11's pilot as analysed: 44 assessed, 7 excluded (all out of work for under
    24 months), 37 randomised (20 usual support, 17 key worker), everyone's outcome in;
    the wellbeing survey never imported; subgroups by benefit and referral route."""
    r = _results(0.08, 0.17, 27.0, n=37, events=(2, 6))
    r["consort"]["assessed"] = 44
    r["consort"]["excluded"] = {
        "total": 7,
        "reasons": {"Out of work for less than 24 months": 7},
    }
    for arm, n in zip(r["consort"]["arms"], (20, 17), strict=True):
        arm.update(randomised=n, analysed=n)
    p = r["primary"]
    p["outcome"] = "in_work_13wk"
    p["analysed"] = {"usual": 20, "keyworker": 17}
    p["binary"].update(n_control=20, n_treated=17, events_control=6, events_treated=2)
    p["subgroups"] = [
        {
            "subgroup": "benefit",
            "levels": [{"level": lv, "n": n} for lv, n in (("ESA", 10), ("JSA", 14), ("UC", 13))],
        },
        {
            "subgroup": "referral_route",
            "levels": [
                {"level": lv, "n": n}
                for lv, n in (("GP", 10), ("IAPT", 4), ("JCP", 6), ("VCS", 10), ("self", 7))
            ],
        },
    ]
    r["secondary"] = [
        {"outcome": "wellbeing", "analysed": {"usual": 0, "keyworker": 0}, "effect": None},
        {"outcome": "volunteering", "analysed": {"usual": 0, "keyworker": 0}, "effect": None},
        {
            "outcome": "off_benefit",
            "analysed": {"usual": 20, "keyworker": 17},
            "effect": {"n": 37},
            "binary": {"n_control": 20, "n_treated": 17, "events_control": 7, "events_treated": 2},
        },
    ]
    return r


def _labels(counts) -> dict[str, str]:
    return {name: counts.count(name) for name in counts.table.cells}


def _disclosed(r, counts) -> dict[str, int]:
    """Hidden counts the independent attack recovers that matter: any count a page prints
    as "fewer than N" or "withheld", and any count from 1 to N - 1 at all (recovering an
    unpublished 0, or the 20 analysed for an outcome in an arm of 20, discloses nothing)."""
    labels = _labels(counts)
    equal, at_most = reader_relations(r)
    return {
        n: v
        for n, v in recoverable(labels, equal, at_most, counts.threshold).items()
        if labels[n] != "not published" or 0 < v < counts.threshold
    }


def test_a_37_person_pilot_with_7_excluded_can_be_reported():
    r = _pilot_37()
    counts = shown(r)  # raised OverflowError: secondary cells had no upper bound
    labels = _labels(counts)
    assert labels["excluded"] == labels["excluded.reason.0"] == "fewer than 10"
    assert _disclosed(r, counts) == {}
    # the one cell that gives the 7 away by subtraction is the assessed total, not the
    # number randomised: 37 people took part, on every page
    assert labels["randomised"] == "37"
    assert labels["assessed"] == "withheld"
    assert shown(r, exact=True).count("assessed") == "44"


def test_a_hidden_cell_with_no_upper_bound_is_not_determined():
    # what the old loop had hidden in the 37-person pilot: nothing bounds 'assessed',
    # 'randomised' or the key worker arm from above
    t = Table()
    for name, v in {
        "assessed": 44,
        "excluded": 7,
        "randomised": 37,
        "arm.usual.randomised": 20,
        "arm.keyworker.randomised": 17,
        "arm.keyworker.analysed": 17,
        "arm.keyworker.lost_to_follow_up": 0,
        "arm.keyworker.not_yet_due": 0,
    }.items():
        t.add(name, v)
    t.relate("assessed", ["randomised", "excluded"])
    t.relate("randomised", ["arm.usual.randomised", "arm.keyworker.randomised"])
    t.relate(
        "arm.keyworker.randomised",
        ["arm.keyworker.analysed", "arm.keyworker.lost_to_follow_up", "arm.keyworker.not_yet_due"],
    )
    status = {
        "excluded": PRIMARY,
        "assessed": SECONDARY,
        "randomised": SECONDARY,
        "arm.keyworker.randomised": SECONDARY,
        "arm.keyworker.analysed": SECONDARY,
    }
    assert determined(t.cells, t.identities, status, 10) == []
    bounds = ranges(t.cells, t.identities, status, 10)
    # withheld counts are 10 or more (zeros are shown, 1 to 9 are "fewer than 10"): the
    # key worker arm has at least 10, so at least 30 were randomised and 31 assessed
    assert bounds["assessed"] == (31, math.inf)
    assert bounds["excluded"] == (1, 9)


@st.composite
def small_pilots(draw) -> dict[str, Any]:
    """The counts of a small two-arm pilot (6 to 40 randomised) as results.json holds
    them: arms with nobody lost or nobody not yet due, everyone excluded for one reason
    or for several (overlapping) ones, rare or universal events, subgroups with empty
    levels, secondary outcomes nobody answered."""
    threshold = draw(st.sampled_from([10, 10, 10, 5]))
    arms = []
    for name, label in (("usual", "Usual support"), ("keyworker", "Key worker")):
        r = draw(st.integers(3, 20))
        nyd = draw(st.sampled_from([0, 0, draw(st.integers(0, r))]))
        lost = draw(st.sampled_from([0, 0, draw(st.integers(0, r - nyd))]))
        received = draw(st.sampled_from([None, draw(st.integers(0, r))]))
        dns = 0 if received is None else draw(st.sampled_from([r - received, 0]))
        arms.append(
            {
                "arm": name,
                "label": label,
                "places": None,
                "randomised": r,
                "analysed": r - nyd - lost,
                "lost_to_follow_up": lost,
                "not_yet_due": nyd,
                "withdrawn": draw(st.integers(0, lost + nyd)),
                "received": received,
                "did_not_start": dns,
            }
        )
    randomised = sum(a["randomised"] for a in arms)
    excluded = draw(st.integers(0, 15))
    kind = draw(st.sampled_from(["one", "split", "overlap"]))
    if excluded == 0:
        reasons = {}
    elif kind == "one":
        reasons = {"Out of work for less than 24 months": excluded}
    elif kind == "split":
        first = draw(st.integers(0, excluded))
        reasons = {"Too young": first, "No mental health condition": excluded - first}
        reasons = {k: v for k, v in reasons.items() if v}
    else:
        reasons = {
            "Too young": draw(st.integers(1, excluded)),
            "Not on a benefit": excluded,
            "No mental health condition": draw(st.integers(1, excluded)),
        }
    analysed = {a["arm"]: a["analysed"] for a in arms}

    def outcome(name: str, per_arm: dict[str, int], primary: bool) -> dict[str, Any]:
        n = sum(per_arm.values())
        o: dict[str, Any] = {"outcome": name, "primary": primary, "analysed": per_arm}
        o["effect"] = {"n": n} if n >= 4 and all(per_arm.values()) else None
        if draw(st.booleans()) or primary:
            events = {arm: draw(st.integers(0, k)) for arm, k in per_arm.items()}
            o["binary"] = {
                "n_control": per_arm["usual"],
                "n_treated": per_arm["keyworker"],
                "events_control": events["usual"],
                "events_treated": events["keyworker"],
            }
        o["subgroups"] = []
        for s in range(draw(st.integers(0, 2)) if primary and o["effect"] else 0):
            cuts = sorted(draw(st.lists(st.integers(0, n), min_size=1, max_size=3)))
            sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
            o["subgroups"].append(
                {
                    "subgroup": f"s{s}",
                    "levels": [{"level": f"l{i}", "n": k} for i, k in enumerate(sizes)],
                }
            )
        return o

    secondary = [
        outcome(
            f"secondary{i}",
            {a["arm"]: draw(st.integers(0, a["randomised"])) for a in arms},
            False,
        )
        for i in range(draw(st.integers(0, 2)))
    ]
    return {
        "arms": [
            {"name": "usual", "label": "Usual support", "control": True},
            {"name": "keyworker", "label": "Key worker", "control": False},
        ],
        "protocol": {"reporting": {"suppression_threshold": threshold}},
        "consort": {
            "assessed": randomised + excluded,
            "excluded": {"total": excluded, "reasons": reasons},
            "randomised": randomised,
            "places_randomised": None,
            "arms": arms,
        },
        "primary": outcome("in_work_13wk", analysed, True),
        "secondary": secondary,
    }


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(small_pilots())
def test_no_small_pilot_breaks_suppression_or_leaves_a_count_recoverable(r):
    counts = shown(r)  # never raises
    t = counts.threshold
    labels = _labels(counts)
    for name, value in counts.table.cells.items():
        if labels[name] == "withheld":
            assert value >= t, name  # zeros and small counts are never merely withheld
        if 0 < value < t:
            assert labels[name] in (f"fewer than {t}", "not published"), name
    # counts no page prints (events, non-events, a secondary outcome's analysed) are
    # either all known exactly, because the outcome's rates and standard errors are
    # published, or none is, because they are all withheld
    for o in [r["primary"], *r["secondary"]]:
        derived = [n for n in labels if n.startswith(o["outcome"] + ".")]
        derived = [n for n in derived if n.endswith(("events", "non_events"))]
        if not o["primary"]:
            derived += [f"{o['outcome']}.{a}.analysed" for a in ("usual", "keyworker")]
        unpublished = [labels[n] == "not published" for n in derived]
        assert all(unpublished) or not any(unpublished), o["outcome"]
        assert rates_hidden(r, o["outcome"], counts) == any(unpublished)
        if not any(unpublished):
            assert all(not 0 < counts.table.cells[n] < t for n in derived)
    assert _disclosed(r, counts) == {}
    exact = shown(r, exact=True)
    assert all(exact.count(n) == f"{v:,}" for n, v in exact.table.cells.items())


def _pilot_6() -> dict[str, Any]:
    """A 6-person pilot with a threshold of 3 (found by the any-pilot generator, seed 47):
    three benefit levels of 2 people each, whose sum is the 6 analysed printed beside
    the effect; every CONSORT box is 3 or 0."""
    r = _results(0.0, 0.67, 0.67, n=6, events=(0, 2))
    r["protocol"]["reporting"]["suppression_threshold"] = 3
    r["consort"]["assessed"] = 6
    r["consort"]["excluded"] = {"total": 0, "reasons": {}}
    for arm in r["consort"]["arms"]:
        arm.update(randomised=3, analysed=3, lost_to_follow_up=0, not_yet_due=0)
    p = r["primary"]
    p["outcome"] = "in_work_13wk"
    p["analysed"] = {"usual": 3, "keyworker": 3}
    p["effect"]["n"] = 6
    p["binary"].update(n_control=3, n_treated=3, events_control=0, events_treated=2)
    p["subgroups"] = [
        {
            "subgroup": "benefit",
            "levels": [{"level": lv, "n": 2} for lv in ("ESA", "JSA", "UC")],
        },
    ]
    r["secondary"] = []
    return r


def test_small_counts_tied_to_a_public_total_are_not_published_and_the_report_renders():
    """The three levels (2, 2, 2) of a subgroup add up to the 6 analysed, which the effect
    prints: no other cell can hide them, and the search used to withhold the whole flow
    and then stop the report ('cannot protect ...'). Now one level is "not published"
    (nothing about its size) and the flow stays on the page."""
    r = _pilot_6()
    counts = shown(r)
    labels = _labels(counts)
    levels = [labels[f"in_work_13wk.subgroup.benefit.{lv}"] for lv in ("ESA", "JSA", "UC")]
    assert levels.count("not published") == 1 and levels.count("fewer than 3") == 2
    assert labels["randomised"] == labels["assessed"] == "6"
    assert labels["arm.usual.randomised"] == labels["arm.keyworker.analysed"] == "3"
    assert _disclosed(r, counts) == {}
    from evalkit.report import environment, summary_context

    environment().get_template("summary.html.j2").render(**summary_context(r))


def test_a_baseline_variable_nobody_in_an_arm_recorded_does_not_stop_the_report():
    """An optional field left blank for everyone in one arm has no mean there (found by
    the any-pilot generator, seed 108: the report stopped with a TypeError)."""
    from evalkit.report import withheld

    r = copy.deepcopy(_planted())
    r["balance"] = [
        {
            "variable": "gender",
            "level": "female",
            "kind": "category",
            "n_treated": 11,
            "n_control": 0,
            "mean_treated": 2 / 11,
            "mean_control": None,
            "sd_pooled": None,
            "smd": None,
            "flag": "not enough data",
        }
    ]
    assert withheld(r, shown(r))["small_balance"] == {0}  # 2 of 11 women in one arm


def test_a_six_person_pilot_with_nearly_every_count_small_is_reported_without_disclosure():
    """6 assessed, 5 randomised (2 and 3), a threshold of 3: almost every count is 1 or 2
    and the zeros are shown, so nothing but "not published" protects them (found by the
    any-pilot generator, seed 1037: the report stopped with 'cannot protect ...'). The
    results.json is that pilot's, as `analyse` wrote it."""
    r = json.loads((DATA / "tiny_pilot_results.json").read_text())
    counts = shown(r)
    labels = _labels(counts)
    assert labels["arm.usual.not_yet_due"] == "0"  # zeros are still shown
    assert "not published" in labels.values()
    assert _disclosed(r, counts) == {}
    from evalkit.report import environment, summary_context

    environment().get_template("summary.html.j2").render(**summary_context(r))
