"""Disclosure control: small counts are suppressed, and none can be recovered from what
the summary shows (totals, differences, rates)."""

from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

from evalkit.disclosure import PRIMARY, SECONDARY, Table, shown, suppress
from tests.test_wording import _results


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
    # hiding y as well leaves x + y = 11 with x in 1..9: x is not pinned
    assert status == {"x": PRIMARY, "y": SECONDARY}


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
    assert counts.count("in_work.usual.events") == "fewer than 10"
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
