"""Randomisation inference replays the registered design: every redraw is an assignment
the pilot's own procedure could have made, and small designs are listed exactly."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import pytest

from evalkit.design_ri import _arrangements, _wedge_count, redraw
from evalkit.enrolment import allocate_file, enrol
from evalkit.inference import randomisation_test
from evalkit.keys import KeyRing
from tests.pilots import LATER, NOW, make_pilot, referral, values_for, write_csv


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
