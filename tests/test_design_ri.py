"""Randomisation inference replays the registered design: every redraw is an assignment
the pilot's own procedure could have made, and small designs are listed exactly."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections import Counter, defaultdict

import numpy as np
import pytest
from scipy import stats

from evalkit import analysis
from evalkit import assignment as A
from evalkit.baseline import stratum_label
from evalkit.design_ri import _arrangements, _wedge_count, redraw
from evalkit.enrolment import allocate_file, enrol
from evalkit.inference import randomisation_test
from evalkit.keys import KeyRing
from evalkit.ledger import Entry
from evalkit.protocol import (
    CompleteDesign,
    MinimisationDesign,
    MinimisationFactor,
    Protocol,
    SimpleDesign,
)
from evalkit.protocol_file import load_protocol
from evalkit.randomness import RngFactory
from tests.pilots import LATER, NOW, REPO, make_pilot, referral, values_for, write_csv


@pytest.fixture
def keys(key_dir):
    return KeyRing(key_dir)


def test_blocked_redraws_keep_block_balance_in_arrival_order(store, keys, tmp_path):
    p = make_pilot(store, keys, tmp_path / "ws", "hackney-keyworker", "ri-block")
    rnd = random.Random(3)
    for i in range(60):
        enrol(store, p, f"B{i}", referral(rnd), NOW, "a", "2025-01-06")
    entries = store.log_entries("ri-block")
    r = redraw(p.protocol, entries, "keyworker", 200, seed=5)
    assert r.treated.shape == (200, 60) and not r.exact
    strata = [e.stratum for e in entries]
    for row in r.treated:
        diff: dict[str, int] = defaultdict(int)
        for s, t in zip(strata, row, strict=True):
            diff[s] += 1 if t else -1
            assert abs(diff[s]) <= 3  # never more than half the largest block (6) apart
    assert len({row.tobytes() for row in r.treated}) > 190
    observed = np.array([e.arm == "keyworker" for e in entries], dtype=float)
    y = np.random.default_rng(1).normal(size=60)
    rt = randomisation_test(y, np.ones((60, 1)), observed, r.treated, exact=False)
    assert 0 < rt.p_value <= 1 and rt.draws == 200


def test_complete_cluster_with_8_places_is_listed_exactly(store, keys, tmp_path):
    edits = [
        ("  method: matched_pair_cluster", "  method: cluster"),
        ("  match_on: [imd_score, claimant_rate]\n", ""),
    ]
    p = make_pilot(store, keys, tmp_path / "ws", "hackney-estates", "ri-cluster", edits)
    places = [
        {
            "estate": f"E{i:02d}",
            "imd_score": "30",
            "claimant_rate": "0.1",
            "mh_claimant_share": "0.5",
            "deprivation_band": "lower",
            "homes": "500",
        }
        for i in range(1, 9)
    ]
    allocate_file(store, p, write_csv(tmp_path / "pl.csv", places), NOW, "a", "2025-01-06")
    rnd = random.Random(4)
    for i in range(40):
        enrol(
            store,
            p,
            f"C{i}",
            values_for(p.protocol, rnd, estate=f"E{1 + i % 8:02d}"),
            NOW,
            "a",
            "2025-01-06",
        )
    r = redraw(p.protocol, store.log_entries("ri-cluster"), "estate_team", 1000, seed=1)
    assert r.exact and r.treated.shape == (70, 40)
    people = [e for e in store.log_entries("ri-cluster") if e.level == "participant"]
    for row in r.treated:  # everyone in a place shares its arm; 4 places treated
        by_place = defaultdict(set)
        for e, t in zip(people, row, strict=True):
            by_place[e.place].add(int(t))
        assert all(len(v) == 1 for v in by_place.values())
        assert sum(v == {1} for v in by_place.values()) == 4


def test_matched_pairs_list_every_split_and_stepped_wedge_every_order(store, keys, tmp_path):
    est = make_pilot(store, keys, tmp_path / "ws", "hackney-estates", "ri-pairs")
    rnd = np.random.default_rng(2)
    places = [
        {
            "estate": f"E{i:02d}",
            "imd_score": f"{rnd.uniform(20, 60):.1f}",
            "claimant_rate": f"{rnd.uniform(0.05, 0.25):.3f}",
            "mh_claimant_share": "0.5",
            "deprivation_band": "lower",
            "homes": "500",
        }
        for i in range(1, 17)
    ]
    allocate_file(store, est, write_csv(tmp_path / "e.csv", places), NOW, "a", "2025-01-06")
    r = random.Random(5)
    for i in range(32):
        enrol(
            store,
            est,
            f"M{i}",
            values_for(est.protocol, r, estate=f"E{1 + i % 16:02d}"),
            NOW,
            "a",
            "2025-01-06",
        )
    got = redraw(est.protocol, store.log_entries("ri-pairs"), "estate_team", 256, seed=1)
    assert got.exact and got.treated.shape == (256, 32)  # 2^8 splits of 8 pairs
    assert len({row.tobytes() for row in got.treated}) == 256

    sw = make_pilot(store, keys, tmp_path / "ws", "hackney-front-door", "ri-wedge")
    locs = [
        {"locality": f"L{i}", "imd_score": "30", "claimant_rate": "0.1", "mh_claimant_share": "0.5"}
        for i in range(1, 7)
    ]
    allocate_file(store, sw, write_csv(tmp_path / "l.csv", locs), NOW, "a", "2025-01-06")
    start = sw.protocol.start_date
    for i in range(24):
        day = start.replace(
            month=((start.month - 1 + 4 * (i % 4)) % 12) + 1,
            year=start.year + (start.month - 1 + 4 * (i % 4)) // 12,
        )
        enrol(
            store,
            sw,
            f"W{i}",
            values_for(sw.protocol, r, locality=f"L{1 + i % 6}"),
            LATER,
            "a",
            day.isoformat(),
        )
    wedge = redraw(sw.protocol, store.log_entries("ri-wedge"), "front_door", 1000, seed=1)
    assert wedge.exact and wedge.treated.shape == (90, 24)  # 6!/(2!2!2!) orders
    people = [e for e in store.log_entries("ri-wedge") if e.level == "participant"]
    first = [i for i, e in enumerate(people) if e.detail["period"] == 1]
    assert wedge.treated[:, first].sum() == 0  # nobody is exposed in period 1


def test_multiset_arrangements():
    assert _wedge_count([2, 2, 2]) == 90
    orders = list(_arrangements([2, 2, 3, 3, 4, 4]))
    assert len(orders) == len(set(orders)) == 90
    assert len(list(_arrangements([2] * 6 + [3] * 6))) == 924


# --- redraws made a group of draws at a time ------------------------------------------

TEMPLATE = REPO / "protocols" / "hackney-keyworker.yaml"


def _keyworker(design=None, draws: int | None = None) -> Protocol:
    """The keyworker template (blocked by benefit, blocks of 4 and 6), with another design
    or number of randomisation-inference draws."""
    p, _ = load_protocol(TEMPLATE)
    if design is not None:
        p = p.model_copy(update={"design": design})
    if draws is not None:
        s = p.analysis.sensitivity
        ri = s.randomisation_inference.model_copy(update={"draws": draws})
        sens = s.model_copy(update={"randomisation_inference": ri})
        p = p.model_copy(update={"analysis": p.analysis.model_copy(update={"sensitivity": sens})})
    return p


MINIMISATION = MinimisationDesign(
    method="minimisation",
    factors=[
        MinimisationFactor(field="benefit", weight=1.0),
        MinimisationFactor(field="referral_route", weight=2.0),
    ],
    probability=0.8,
)
DESIGNS = {
    "blocked": None,
    "minimisation": MINIMISATION,
    "complete": CompleteDesign(method="complete"),
    "simple": SimpleDesign(method="simple"),
}


def _log(protocol: Protocol, people: list[dict], arms: list[str] | None = None) -> list[Entry]:
    """Allocation entries as the log holds them (no store needed): one per person, in order."""
    strata = getattr(protocol.design, "strata", [])
    return [
        Entry(
            pilot_id=protocol.id,
            seq=i + 1,
            kind="allocation",
            level="participant",
            unit=f"P{i:05d}",
            stratum=stratum_label(strata, b),
            place=None,
            arm=arms[i] if arms else protocol.arms[i % 2].name,
            probabilities=None,
            detail={"batch": 1 + i // 500},
            baseline=b,
            protocol_hash="",
            protocol_number=1,
            created_at="",
            created_by="",
            prev_hash="",
        )
        for i, b in enumerate(people)
    ]


def _referrals(n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    return [
        {**r, "age": int(r["age"]), "months_unemployed": int(r["months_unemployed"])}
        for r in (referral(rnd) for _ in range(n))
    ]


def test_blocked_randomisation_inference_memory_grows_linearly():
    """4,000 people in three benefit strata, 2,000 draws: the step that replays the blocks
    and computes the null distribution peaks at a few tens of MB (a group of draws x people
    at a time). It used to build a draws x people x blocks array: 2,000 x 1,340 x 335, about
    0.9 GB here and 50 GB for a 14,000-person pilot with 10,000 draws."""
    protocol = _keyworker(draws=2000)
    people = _referrals(4000, seed=11)
    entries = _log(protocol, people)
    rows = [
        {
            "unit": e.unit,
            "arm": e.arm,
            "in_work_13wk": float(i % 3 == 0),
            "in_work_13wk_status": "observed",
            **e.baseline,
        }
        for i, e in enumerate(entries)
    ]
    o = protocol.outcomes[0]
    frame = analysis._frame(protocol, rows, o)
    covariates = analysis._covariates(protocol)
    gc.collect()
    tracemalloc.start()
    try:
        got = analysis._ri(protocol, frame, o, covariates, entries, rows, "keyworker", 7)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got["draws"] == 2000 and 0 <= got["p_value"] <= 1
    assert peak < 50e6, f"peak {peak / 1e6:.0f} MB"


@pytest.mark.parametrize("design", DESIGNS)
def test_redraws_come_in_bounded_chunks_whatever_the_number_of_draws(design):
    protocol = _keyworker(DESIGNS[design])
    entries = _log(protocol, _referrals(300, seed=2))
    r = redraw(protocol, entries, "keyworker", 5000, seed=3)
    columns = np.arange(0, 300, 2)
    shapes = [c.shape for c in r.chunks(columns)]
    assert sum(s[0] for s in shapes) == 5000 == r.draws
    assert all(s[1] == 150 and s[0] <= r.group <= 2048 for s in shapes)
    assert {c.dtype for c in r.chunks(columns, rows=999)} == {np.dtype(np.int8)}


@pytest.mark.parametrize("design", DESIGNS)
def test_randomisation_inference_does_not_depend_on_the_chunk_size(design):
    """The same seed gives the same draws, null distribution and p-value however the
    draws are cut into chunks (each group of draws has its own generator)."""
    protocol = _keyworker(DESIGNS[design])
    entries = _log(protocol, _referrals(120, seed=4))
    r = redraw(protocol, entries, "keyworker", 1000, seed=9)
    columns = np.arange(3, 120)
    t = np.array([e.arm == "keyworker" for e in entries], dtype=float)[columns]
    y = np.random.default_rng(6).normal(size=columns.size) + 0.3 * t
    Z = np.ones((columns.size, 1))
    tests = [randomisation_test(y, Z, t, r.chunks(columns, rows=rows)) for rows in (None, 7, 1000)]
    small, whole = list(r.chunks(columns, rows=7)), list(r.chunks(columns, rows=1000))
    assert len(small) == 143 and len(whole) == 1
    assert np.array_equal(np.concatenate(small), whole[0])
    assert np.array_equal(whole[0], r.treated[:, columns])
    for other in tests[1:]:
        np.testing.assert_array_equal(other.null, tests[0].null)
        assert other.p_value == tests[0].p_value and other.draws == 1000
    again = redraw(protocol, entries, "keyworker", 1000, seed=9)
    assert np.array_equal(again.treated, r.treated)
    assert not np.array_equal(
        redraw(protocol, entries, "keyworker", 1000, seed=10).treated, r.treated
    )


def _patterns(rows) -> Counter:
    return Counter(tuple(int(x) for x in row) for row in rows)


@pytest.mark.parametrize("design", DESIGNS)
def test_redraws_follow_the_registered_procedure(design):
    """Redraws are made for many draws at once, not by the registered procedure itself:
    the assignments they give 9 people (7 on ESA, 2 on UC) occur as often as those of the
    registered procedure run with 3,000 different seeds (chi-squared test of the two
    tables of patterns)."""
    protocol = _keyworker(DESIGNS[design])
    benefits = ["ESA"] * 4 + ["UC"] + ["ESA"] * 3 + ["UC"]
    routes = ["JCP", "GP", "GP", "IAPT", "JCP", "GP", "JCP", "VCS", "GP"]
    people = [
        {
            "age": 30,
            "benefit": b,
            "months_unemployed": 30,
            "referral_route": r,
            "mh_condition": True,
        }
        for b, r in zip(benefits, routes, strict=True)
    ]
    arms, ratios = ["usual_support", "keyworker"], [1.0, 1.0]
    reference = Counter()
    for s in range(3000):
        rngs = RngFactory.for_test(s)
        if design == "blocked":
            got = A.blocked([f"benefit={b}" for b in benefits], arms, ratios, [4, 6], rngs)
        elif design == "minimisation":
            levels = [
                {"benefit": p["benefit"], "referral_route": p["referral_route"]} for p in people
            ]
            factors = [("benefit", 1.0), ("referral_route", 2.0)]
            got = A.minimisation(levels, factors, arms, ratios, 0.8, rngs)
        elif design == "complete":
            got = A.complete(9, arms, ratios, rngs("batch/1"))
        else:
            got = A.simple(9, arms, ratios, rngs("draw"))
        reference[tuple(int(a == "keyworker") for a in got.arms)] += 1
    redrawn = _patterns(redraw(protocol, _log(protocol, people), "keyworker", 3000, 1).treated)
    keys = sorted(set(reference) | set(redrawn))
    table = np.array([[reference[k] for k in keys], [redrawn[k] for k in keys]])
    assert stats.chi2_contingency(table)[1] > 0.001
    if design == "blocked":  # never more than half the largest block apart, per stratum
        assert all(
            abs(sum(2 * k[i] - 1 for i in range(8) if benefits[i] == "ESA")) <= 3 for k in keys
        )


@pytest.mark.parametrize("design", ["blocked", "minimisation"])
def test_randomisation_p_values_of_the_replayed_design_are_uniform_under_the_null(design):
    """Pilots allocated by the registered procedure, outcomes unrelated to the arm: the
    p-values from redraws of the design look uniform (and reject 5% of the time)."""
    protocol = _keyworker(DESIGNS[design])
    people = _referrals(60, seed=8)
    strata = [stratum_label(["benefit"], b) for b in people]
    levels = [{"benefit": b["benefit"], "referral_route": b["referral_route"]} for b in people]
    arms, ratios = ["usual_support", "keyworker"], [1.0, 1.0]
    y = np.random.default_rng(12).normal(size=60)
    p_values = []
    for s in range(300):
        rngs = RngFactory.for_test(1000 + s)
        if design == "blocked":
            got = A.blocked(strata, arms, ratios, [4, 6], rngs).arms
        else:
            factors = [("benefit", 1.0), ("referral_route", 2.0)]
            got = A.minimisation(levels, factors, arms, ratios, 0.8, rngs).arms
        entries = _log(protocol, people, got)
        t = np.array([a == "keyworker" for a in got], dtype=float)
        r = redraw(protocol, entries, "keyworker", 200, seed=s)
        p_values.append(randomisation_test(y, np.ones((60, 1)), t, r.chunks()).p_value)
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    assert 0.02 < np.mean(np.array(p_values) <= 0.05) < 0.09
