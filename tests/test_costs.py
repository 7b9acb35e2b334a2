"""Costs per agency and cost per extra person in work, checked by hand on the keyworker pilot.

The Hackney keyworker protocol costs usual support at £169 (council) and a key worker at
£2,100 (council); a move into work is worth £6,000 a year to DWP.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from evalkit.costs import (
    bootstrap_cost_per_outcome,
    cost_per_additional_outcome,
    cost_per_participant,
    describe_ratio,
    incremental_cost,
    unvalued_outcomes,
    value_by_agency,
)
from evalkit.protocol import Costs, OutcomeValue, UnitCost
from evalkit.protocol_file import load_protocol

ROOT = Path(__file__).resolve().parents[1]
DELTA = 2100 - 169


@pytest.fixture(scope="module")
def costs() -> Costs:
    p, _ = load_protocol(ROOT / "protocols" / "hackney-keyworker.yaml")
    return p.costs


def several_payers() -> Costs:
    """Quantities, two agencies and an agency that only saves, to exercise the sums."""
    return Costs(
        unit_costs=[
            UnitCost(arm="usual", agency="council", item="referral", unit_cost=169),
            UnitCost(arm="keyworker", agency="council", item="session", unit_cost=50, quantity=30),
            UnitCost(arm="keyworker", agency="council", item="training", unit_cost=400),
            UnitCost(
                arm="keyworker", agency="NHS", item="talking therapy", unit_cost=95, quantity=6
            ),
            UnitCost(arm="usual", agency="DWP", item="work coach", unit_cost=30, quantity=10),
            UnitCost(arm="keyworker", agency="DWP", item="work coach", unit_cost=30, quantity=4),
        ],
        outcome_values=[
            OutcomeValue(outcome="in_work_13wk", agency="DWP", value=6000, description="benefit"),
            OutcomeValue(outcome="in_work_13wk", agency="HMRC", value=1500, description="tax"),
            OutcomeValue(outcome="gp_visits", agency="NHS", value=-45, description="per visit"),
        ],
    )


# --- cost per participant and incremental cost -------------------------------------------


def test_cost_per_participant_keyworker(costs):
    assert cost_per_participant(costs, ["usual", "keyworker"]) == {
        "usual": {"council": 169.0},
        "keyworker": {"council": 2100.0},
    }


def test_every_arm_present_with_zero_where_none(costs):
    out = cost_per_participant(costs, ["usual", "keyworker", "waitlist"])
    assert out["waitlist"] == {"council": 0.0}


def test_quantity_times_unit_cost_summed_per_agency():
    out = cost_per_participant(several_payers(), ["usual", "keyworker"])
    assert out["keyworker"] == {"DWP": 120.0, "council": 1900.0, "NHS": 570.0}
    assert out["usual"] == {"DWP": 300.0, "council": 169.0, "NHS": 0.0}


def test_cost_per_participant_rejects_no_or_repeated_arms(costs):
    with pytest.raises(ValueError, match="at least one"):
        cost_per_participant(costs, [])
    with pytest.raises(ValueError, match="repeated"):
        cost_per_participant(costs, ["usual", "usual"])


def test_incremental_cost_keyworker(costs):
    assert incremental_cost(costs, "usual", "keyworker") == {"council": 1931.0, "total": 1931.0}


def test_incremental_cost_can_be_a_saving_for_one_agency():
    out = incremental_cost(several_payers(), "usual", "keyworker")
    assert out == {"DWP": -180.0, "council": 1731.0, "NHS": 570.0, "total": 2121.0}


def test_incremental_cost_needs_two_arms(costs):
    with pytest.raises(ValueError, match="same arm"):
        incremental_cost(costs, "usual", "usual")


# --- cost per additional outcome -----------------------------------------------------------


def test_cost_per_extra_person_in_work_seven_points():
    assert cost_per_additional_outcome(DELTA, 0.07) == pytest.approx(1931 / 0.07)
    assert cost_per_additional_outcome(DELTA, 0.07) == pytest.approx(27585.714285714286)


@pytest.mark.parametrize("effect", [0.0, -0.03])
def test_no_ratio_without_a_gain(effect):
    assert cost_per_additional_outcome(DELTA, effect) is None


def test_ratio_rejects_non_numbers():
    with pytest.raises(ValueError, match="finite"):
        cost_per_additional_outcome(DELTA, float("nan"))


@pytest.mark.parametrize(
    ("delta", "effect", "words"),
    [
        (DELTA, 0.07, "costs more and achieves more"),
        (DELTA, 0.0, "costs more and achieves no more"),
        (DELTA, -0.02, "costs more and achieves less"),
        (-100, 0.05, "costs less and achieves more"),
        (0, 0.05, "costs the same and achieves more"),
        (-100, -0.05, "costs less and achieves less"),
    ],
)
def test_describe_ratio_plain_words(delta, effect, words):
    assert describe_ratio(delta, effect).startswith(words)


def test_describe_ratio_says_when_there_is_no_ratio():
    assert "no cost per additional person" in describe_ratio(DELTA, 0.0)


# --- who pays and who saves -----------------------------------------------------------------


def test_value_by_agency_keyworker_seven_points(costs):
    rows = value_by_agency(costs, {"in_work_13wk": 0.07}, 150, "usual", "keyworker")
    by = {r["agency"]: r for r in rows}
    assert [r["agency"] for r in rows] == ["DWP", "council", "total"]
    assert by["DWP"]["cost_per_participant"] == 0
    assert by["DWP"]["value_per_participant"] == pytest.approx(420)
    assert by["DWP"]["net_per_participant"] == pytest.approx(420)
    assert by["DWP"]["net_total"] == pytest.approx(420 * 150)
    assert by["council"]["cost_per_participant"] == 1931
    assert by["council"]["value_per_participant"] == 0
    assert by["council"]["net_per_participant"] == pytest.approx(-1931)
    assert by["council"]["cost_total"] == pytest.approx(1931 * 150)
    assert by["council"]["net_total"] == pytest.approx(-1931 * 150)
    assert by["total"]["net_per_participant"] == pytest.approx(420 - 1931)
    assert by["total"]["net_total"] == pytest.approx((420 - 1931) * 150)


def test_value_by_agency_not_rounded(costs):
    rows = value_by_agency(costs, {"in_work_13wk": 0.0712345}, 7, "usual", "keyworker")
    dwp = next(r for r in rows if r["agency"] == "DWP")
    assert dwp["value_per_participant"] == 0.0712345 * 6000
    assert dwp["value_total"] == 0.0712345 * 6000 * 7


def test_value_by_agency_several_payers():
    rows = value_by_agency(
        several_payers(), {"in_work_13wk": 0.1, "gp_visits": -2.0}, 10, "usual", "keyworker"
    )
    by = {r["agency"]: r for r in rows}
    assert [r["agency"] for r in rows] == ["DWP", "council", "NHS", "HMRC", "total"]
    assert by["DWP"]["net_per_participant"] == pytest.approx(600 + 180)
    assert by["NHS"]["value_per_participant"] == pytest.approx(90)
    assert by["NHS"]["net_per_participant"] == pytest.approx(90 - 570)
    assert by["HMRC"]["cost_per_participant"] == 0
    assert by["HMRC"]["net_total"] == pytest.approx(1500)
    agencies = [r for r in rows if r["agency"] != "total"]
    assert by["total"]["net_total"] == pytest.approx(sum(r["net_total"] for r in agencies))


def test_value_by_agency_leaves_value_unknown_without_the_effect(costs):
    """A valued outcome not yet estimated: its agency's value and net (and the total's) are
    unknown, never zero; the costs are still shown."""
    rows = value_by_agency(costs, {"wellbeing": 1.0}, 100, "usual", "keyworker")
    by = {r["agency"]: r for r in rows}
    assert by["DWP"]["value_per_participant"] is None and by["DWP"]["net_total"] is None
    assert by["total"]["value_per_participant"] is None
    assert by["council"]["cost_per_participant"] == pytest.approx(2100 - 169)
    assert by["council"]["net_per_participant"] == pytest.approx(-(2100 - 169))
    assert unvalued_outcomes(costs, {"wellbeing": 1.0}) == ["in_work_13wk"]


def test_value_by_agency_rejects_bad_counts(costs):
    with pytest.raises(ValueError, match="negative"):
        value_by_agency(costs, {"in_work_13wk": 0.07}, -1, "usual", "keyworker")
    with pytest.raises(ValueError, match="whole number"):
        value_by_agency(costs, {"in_work_13wk": 0.07}, 1.5, "usual", "keyworker")


# --- bootstrap ----------------------------------------------------------------------------


def pilot(p_control: float, p_treated: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    treated = np.repeat([0, 1], n)
    y = (rng.random(2 * n) < np.where(treated == 1, p_treated, p_control)).astype(float)
    return y, treated


def test_bootstrap_clear_effect_contains_estimate():
    y, t = pilot(0.15, 0.40, 300, seed=1)
    effect = y[t == 1].mean() - y[t == 0].mean()
    out = bootstrap_cost_per_outcome(y, t, DELTA, 2000, np.random.default_rng(7))
    assert set(out) == {"estimate", "conf_low", "conf_high", "draws", "share_no_gain", "reason"}
    assert out["estimate"] == pytest.approx(DELTA / effect)
    assert out["conf_low"] < out["estimate"] < out["conf_high"]
    assert out["share_no_gain"] == 0
    assert out["reason"] is None
    assert out["draws"] == 2000


def test_bootstrap_is_reproducible_from_the_seed():
    y, t = pilot(0.15, 0.40, 200, seed=2)
    a = bootstrap_cost_per_outcome(y, t, DELTA, 500, np.random.default_rng(11))
    b = bootstrap_cost_per_outcome(y, t, DELTA, 500, np.random.default_rng(11))
    c = bootstrap_cost_per_outcome(y, t, DELTA, 500, np.random.default_rng(12))
    assert a == b
    assert a["conf_low"] != c["conf_low"]


def test_bootstrap_near_zero_effect_gives_no_interval():
    # 45 of 150 in work with usual support, 47 of 150 with a key worker: a 1.3-point gain.
    t = np.repeat([0, 1], 150)
    y = np.concatenate([np.arange(150) < 45, np.arange(150) < 47]).astype(float)
    out = bootstrap_cost_per_outcome(y, t, DELTA, 2000, np.random.default_rng(5))
    assert out["conf_low"] is None and out["conf_high"] is None
    assert out["estimate"] == pytest.approx(DELTA * 75)
    assert out["share_no_gain"] >= 0.025
    assert "meaningless when the effect can be zero" in out["reason"]


def test_bootstrap_no_observed_gain():
    y, t = pilot(0.30, 0.20, 150, seed=4)
    out = bootstrap_cost_per_outcome(y, t, DELTA, 500, np.random.default_rng(5))
    assert out["estimate"] is None
    assert out["conf_low"] is None and out["conf_high"] is None
    assert "no gain" in out["reason"]
    assert out["share_no_gain"] > 0.5


def test_bootstrap_without_variation_is_the_point():
    y = np.array([0.0] * 20 + [1.0] * 20)
    t = np.repeat([False, True], 20)
    out = bootstrap_cost_per_outcome(y, t, DELTA, 200, np.random.default_rng(0))
    assert out["estimate"] == out["conf_low"] == out["conf_high"] == DELTA


def test_bootstrap_saving_gives_ordered_negative_bounds():
    y, t = pilot(0.15, 0.40, 300, seed=1)
    out = bootstrap_cost_per_outcome(y, t, -500.0, 1000, np.random.default_rng(7))
    assert out["conf_low"] < out["estimate"] < out["conf_high"] < 0


def places_pilot() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five treated places of ten (four all in work, one none), two control places (none)."""
    clusters = np.repeat(np.arange(7), 10)
    treated = clusters < 5
    y = (clusters < 4).astype(float)
    return y, treated, clusters


def test_cluster_bootstrap_keeps_places_whole():
    y, t, g = places_pilot()
    out = bootstrap_cost_per_outcome(y, t, DELTA, 2000, np.random.default_rng(3), clusters=g)
    assert out["estimate"] == pytest.approx(DELTA / 0.8)
    # Whole places: the treated share in work is k/5 (k places of all-in-work drawn), the
    # control share is always 0. P(k = 5) = 0.33 sets the low bound at DELTA / 1; P(k <= 1)
    # = 0.007 and P(k <= 2) = 0.058 set the high bound at DELTA / 0.4.
    assert out["conf_low"] == pytest.approx(DELTA)
    assert out["conf_high"] == pytest.approx(DELTA / 0.4)
    assert out["share_no_gain"] < 0.025


def test_person_bootstrap_of_the_same_data_splits_places():
    y, t, _ = places_pilot()
    out = bootstrap_cost_per_outcome(y, t, DELTA, 2000, np.random.default_rng(3))
    assert out["conf_low"] > DELTA
    assert out["conf_high"] < DELTA / 0.6
    assert out["share_no_gain"] == 0


def test_cluster_bootstrap_reports_places_that_may_show_no_gain():
    clusters = np.repeat(np.arange(6), 10)
    treated = clusters < 3
    y = np.isin(clusters, [0, 1, 3]).astype(float)
    out = bootstrap_cost_per_outcome(
        y, treated, DELTA, 2000, np.random.default_rng(1), clusters=clusters
    )
    # Effect 2/3 - 1/3 at face value, but two whole-place draws of three can show no gain.
    assert out["estimate"] == pytest.approx(DELTA * 3)
    assert out["share_no_gain"] > 0.2
    assert out["conf_low"] is None and out["conf_high"] is None


def test_cluster_bootstrap_rejects_places_in_both_arms():
    y, t, g = places_pilot()
    g = g.copy()
    g[0] = 6
    with pytest.raises(ValueError, match="both arms"):
        bootstrap_cost_per_outcome(y, t, DELTA, 100, np.random.default_rng(0), clusters=g)


def test_cluster_bootstrap_needs_two_places_per_arm():
    y, t, g = places_pilot()
    g = np.where(g >= 5, 5, g)
    with pytest.raises(ValueError, match="two places"):
        bootstrap_cost_per_outcome(y, t, DELTA, 100, np.random.default_rng(0), clusters=g)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y": np.array([0.0, 1.0, np.nan, 1.0])}, "missing"),
        ({"treated": np.array([0, 1, 2, 1])}, "0/1"),
        ({"treated": np.array([0, 1, 1, 1])}, "two people"),
        ({"draws": 0}, "draws"),
        ({"alpha": 1.5}, "alpha"),
        ({"rng": 42}, "Generator"),
    ],
)
def test_bootstrap_rejects_bad_input(kwargs, match):
    args = {
        "y": np.array([0.0, 1.0, 0.0, 1.0]),
        "treated": np.array([0, 1, 0, 1]),
        "delta_cost": DELTA,
        "draws": 100,
        "rng": np.random.default_rng(0),
    } | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        bootstrap_cost_per_outcome(**args)


def test_bootstrap_large_pilot_is_quick():
    y, t = pilot(0.2, 0.3, 2000, seed=9)
    g = np.arange(4000) // 50
    start = time.perf_counter()
    out = bootstrap_cost_per_outcome(y, t, DELTA, 9999, np.random.default_rng(1), clusters=g)
    out2 = bootstrap_cost_per_outcome(y, t, DELTA, 2000, np.random.default_rng(1))
    assert time.perf_counter() - start < 10
    assert out["conf_low"] is not None and out2["conf_low"] is not None
