"""Effect sizes, Bayesian readings, balance, multiplicity and attrition against hand
computations (written out here, not calling the code under test) and scipy/statsmodels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from evalkit.effects import (
    _flag,
    adjust_pvalues,
    attrition,
    bayesian_reading,
    binary_effects,
    hedges_g,
    ratio_model,
    standardised_differences,
    words_for,
)
from evalkit.estimators import design_matrix
from evalkit.protocol import Prior

Z975 = 1.959963984540054

# --- Hedges' g -----------------------------------------------------------------------


def test_hedges_g_by_hand() -> None:
    # treated 5, 7, 9, 11: mean 8, SS 20; control 4, 5, 6: mean 5, SS 2.
    y = np.array([5, 7, 9, 11, 4, 5, 6], dtype=float)
    t = np.array([1, 1, 1, 1, 0, 0, 0])
    r = hedges_g(y, t)
    s = math.sqrt(22 / 5)
    j = 1 - 3 / (4 * 7 - 9)
    g = j * 3 / s
    assert j == pytest.approx(16 / 19, abs=1e-15)
    assert r["g"] == pytest.approx(g, abs=1e-12)
    assert r["se"] == pytest.approx(math.sqrt(7 / 12 + g**2 / 14), abs=1e-12)
    assert r["g_total"] is None and r["g_within"] is None and r["icc"] is None


def test_hedges_g_matches_scipy_t_statistic() -> None:
    rng = np.random.default_rng(20240501)
    y1 = rng.normal(0.4, 1.3, 23)
    y0 = rng.normal(0.0, 1.1, 31)
    res = stats.ttest_ind(y1, y0, equal_var=True)
    d = res.statistic * math.sqrt(1 / 23 + 1 / 31)
    r = hedges_g(np.r_[y1, y0], np.r_[np.ones(23), np.zeros(31)])
    assert r["g"] == pytest.approx((1 - 3 / (4 * 54 - 9)) * d, abs=1e-12)
    # the pooled SD is the two-sample t-test's
    var = (22 * y1.var(ddof=1) + 30 * y0.var(ddof=1)) / 52
    assert r["sd_pooled"] == pytest.approx(math.sqrt(var), abs=1e-12)


# Four places of three people. A and B treated, C and D control.
#   A: 4, 6, 8   (mean 6, SS 8)     C: 1, 3, 5 (mean 3, SS 8)
#   B: 9, 10, 11 (mean 10, SS 2)    D: 5, 6, 7 (mean 6, SS 2)
# Arm means 8 and 4.5, difference 3.5. N = 12, M = 4, n = 3.
# SSW = 20, MSW = 20 / 8 = 2.5. SSB = 3*(4+4) + 3*(2.25+2.25) = 37.5, MSB = 37.5 / 2.
# sigma_B^2 = (18.75 - 2.5) / 3, rho = sigma_B^2 / (sigma_B^2 + 2.5) = 13/19.
# S_T^2 = (20 + 37.5) / 10 = 5.75. J = 1 - 3/39 = 12/13.
CLUSTER_Y = np.array([4, 6, 8, 9, 10, 11, 1, 3, 5, 5, 6, 7], dtype=float)
CLUSTER_T = np.array([1] * 6 + [0] * 6)
CLUSTER_C = np.array(list("AAABBBCCCDDD"))


def _hand_cluster(diff, s_t, s_w, rho, n1, n0, m, n_place):
    big = n1 + n0
    j = 1 - 3 / (4 * big - 9)
    g_t = j * diff / s_t * math.sqrt(1 - 2 * (n_place - 1) * rho / (big - 2))
    num = (
        (big - 2) * (1 - rho) ** 2
        + n_place * (big - 2 * n_place) * rho**2
        + 2 * (big - 2 * n_place) * rho * (1 - rho)
    )
    den = 2 * (big - 2) * ((big - 2) - 2 * (n_place - 1) * rho)
    base = big / (n1 * n0)
    se_t = math.sqrt(base * (1 + (n_place - 1) * rho) + g_t**2 * num / den)
    g_w = j * diff / s_w
    se_w = math.sqrt(base * (1 + (n_place - 1) * rho) / (1 - rho) + g_w**2 / (2 * (big - m)))
    return g_t, se_t, g_w, se_w


def test_cluster_variants_by_hand() -> None:
    r = hedges_g(CLUSTER_Y, CLUSTER_T, CLUSTER_C)
    rho = 13 / 19
    assert r["icc"] == pytest.approx(rho, abs=1e-12)
    assert r["icc_source"] == "estimated"
    assert r["sd_pooled"] == pytest.approx(math.sqrt(5.75), abs=1e-12)
    assert r["sd_within"] == pytest.approx(math.sqrt(2.5), abs=1e-12)
    assert r["n_places"] == 4 and r["mean_place_size"] == 3
    g_t, se_t, g_w, se_w = _hand_cluster(3.5, math.sqrt(5.75), math.sqrt(2.5), rho, 6, 6, 4, 3)
    # the numbers themselves, so a change in the helper above cannot hide a change here
    assert g_t == pytest.approx(12 / 13 * 3.5 / math.sqrt(5.75) * math.sqrt(1 - 0.4 * rho))
    assert g_w == pytest.approx(12 / 13 * 3.5 / math.sqrt(2.5))
    assert r["g_total"] == pytest.approx(g_t, abs=1e-12)
    assert r["se_total"] == pytest.approx(se_t, abs=1e-12)
    assert r["g_within"] == pytest.approx(g_w, abs=1e-12)
    assert r["se_within"] == pytest.approx(se_w, abs=1e-12)
    assert r["g"] == r["g_total"] and r["se"] == r["se_total"]
    # clustering widens the interval compared with treating people as independent
    assert r["se_total"] > hedges_g(CLUSTER_Y, CLUSTER_T)["se"]


def test_cluster_with_given_icc_and_unequal_places() -> None:
    # treated places P (2 people) and Q (4); control R (3) and S (3): N = 12, n = 12/4 = 3
    y = np.array([2, 4, 5, 6, 7, 8, 1, 2, 3, 3, 4, 8], dtype=float)
    t = np.array([1] * 6 + [0] * 6)
    c = np.array(list("PPQQQQRRRSSS"))
    r = hedges_g(y, t, c, icc=0.1)
    y1, y0 = y[:6], y[6:]
    s_t = math.sqrt((((y1 - y1.mean()) ** 2).sum() + ((y0 - y0.mean()) ** 2).sum()) / 10)
    ssw = (
        2 + ((np.array([5, 6, 7, 8]) - 6.5) ** 2).sum() + 2 + ((np.array([3, 4, 8]) - 5) ** 2).sum()
    )
    s_w = math.sqrt(ssw / 8)
    g_t, se_t, g_w, se_w = _hand_cluster(y1.mean() - y0.mean(), s_t, s_w, 0.1, 6, 6, 4, 3)
    assert r["icc"] == 0.1 and r["icc_source"] == "given"
    assert r["g_total"] == pytest.approx(g_t, abs=1e-12)
    assert r["se_total"] == pytest.approx(se_t, abs=1e-12)
    assert r["g_within"] == pytest.approx(g_w, abs=1e-12)
    assert r["se_within"] == pytest.approx(se_w, abs=1e-12)


def test_icc_estimate_with_unequal_places_by_hand() -> None:
    y = np.array([2, 4, 5, 6, 7, 8, 1, 2, 3, 3, 4, 8], dtype=float)
    t = np.array([1] * 6 + [0] * 6)
    c = np.array(list("PPQQQQRRRSSS"))
    # SS within places: P 2, Q 5, R 2, S 14, so MSW = 23 / 8. Arm means 32/6 and 21/6.
    # MSB = [2 (3 - 16/3)^2 + 4 (6.5 - 16/3)^2 + 3 (2 - 3.5)^2 + 3 (5 - 3.5)^2] / 2
    # n0 = (12 - (4 + 16)/6 - (9 + 9)/6) / 2
    msb = (2 * (3 - 16 / 3) ** 2 + 4 * (6.5 - 16 / 3) ** 2 + 3 * 1.5**2 + 3 * 1.5**2) / 2
    n_0 = (12 - 20 / 6 - 18 / 6) / 2
    sigma_b2 = (msb - 23 / 8) / n_0
    r = hedges_g(y, t, c)
    assert r["sd_within"] == pytest.approx(math.sqrt(23 / 8), abs=1e-12)
    assert r["icc"] == pytest.approx(sigma_b2 / (sigma_b2 + 23 / 8), abs=1e-12)


def test_icc_truncated_at_zero() -> None:
    # place means equal within each arm: no between-place variance
    y = np.array([1, 3, 2, 2, 0, 2, 1, 1], dtype=float)
    t = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    c = np.array(list("AABBCCDD"))
    r = hedges_g(y, t, c)
    assert r["icc"] == 0.0
    # with rho = 0 the total-variance g is the plain g
    assert r["g_total"] == pytest.approx(hedges_g(y, t)["g"], abs=1e-12)


def test_hedges_g_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="places in both arms: A"):
        hedges_g(CLUSTER_Y, CLUSTER_T, np.array(list("AAABBBACCDDD")))
    with pytest.raises(ValueError, match="both arms"):
        hedges_g(np.arange(4.0), np.ones(4))
    with pytest.raises(ValueError, match="missing"):
        hedges_g(np.array([1.0, np.nan, 2, 3]), np.array([1, 1, 0, 0]))
    with pytest.raises(ValueError, match="three places"):
        hedges_g(np.arange(4.0), np.array([1, 1, 0, 0]), np.array(list("AABB")))


# --- binary outcomes -----------------------------------------------------------------


def _two_by_two(a1: int, n1: int, a0: int, n0: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.ones(a1), np.zeros(n1 - a1), np.ones(a0), np.zeros(n0 - a0)]
    t = np.r_[np.ones(n1), np.zeros(n0)]
    return y, t


def test_binary_effects_by_hand() -> None:
    # treated 12 of 40 in work, control 6 of 40
    r = binary_effects(*_two_by_two(12, 40, 6, 40))
    assert r["treated_rate"] == 0.3 and r["control_rate"] == 0.15
    assert r["risk_difference"] == pytest.approx(0.15, abs=1e-15)
    assert r["relative_risk"] == pytest.approx(2.0, abs=1e-15)
    se_log = math.sqrt(1 / 12 - 1 / 40 + 1 / 6 - 1 / 40)
    assert se_log == pytest.approx(math.sqrt(0.2))
    assert r["relative_risk_low"] == pytest.approx(math.exp(math.log(2) - Z975 * se_log))
    assert r["relative_risk_high"] == pytest.approx(math.exp(math.log(2) + Z975 * se_log))
    assert r["relative_risk_low"] == pytest.approx(0.8325, abs=1e-4)
    assert r["relative_risk_high"] == pytest.approx(4.8051, abs=1e-4)
    assert r["odds_ratio"] == pytest.approx((12 / 28) / (6 / 34))
    se_rd = math.sqrt(0.3 * 0.7 / 40 + 0.15 * 0.85 / 40)
    assert r["risk_difference_low"] == pytest.approx(0.15 - Z975 * se_rd)
    assert r["nnt"] == pytest.approx(1 / 0.15)
    assert r["nnt_kind"] == "benefit"
    assert "number needed to harm" in r["nnt_convention"]


def test_binary_effects_harm_and_no_difference() -> None:
    # more sanctions in the treated arm when lower is better: a number needed to harm
    r = binary_effects(*_two_by_two(10, 40, 5, 40), direction="lower_is_better")
    assert r["nnt"] == pytest.approx(8.0) and r["nnt_kind"] == "harm"
    r = binary_effects(*_two_by_two(5, 40, 10, 40))
    assert r["nnt"] == pytest.approx(-8.0) and r["nnt_kind"] == "harm"
    r = binary_effects(*_two_by_two(8, 40, 8, 40))
    assert r["nnt"] is None and r["nnt_kind"] is None and r["relative_risk"] == 1.0


def test_binary_effects_zero_cells_give_no_ratio() -> None:
    r = binary_effects(*_two_by_two(4, 20, 0, 20))
    assert r["relative_risk"] is None and r["odds_ratio"] is None
    assert r["risk_difference"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_effects(np.array([0, 1, 2, 0.0]), np.array([1, 1, 0, 0]))


# --- Bayesian reading ----------------------------------------------------------------


def test_sceptical_prior_puts_five_percent_beyond_mid() -> None:
    r = bayesian_reading(0.1, 0.05, Prior(kind="sceptical"), mid=0.08, direction="higher_is_better")
    sd0 = r["prior"]["sd"]
    assert r["prior"]["mean"] == 0.0 and r["prior"]["kind"] == "sceptical"
    assert sd0 == pytest.approx(0.08 / 1.6449, rel=1e-4)
    assert stats.norm.sf(0.08, 0, sd0) == pytest.approx(0.05, abs=1e-14)
    assert stats.norm.cdf(-0.08, 0, sd0) == pytest.approx(0.05, abs=1e-14)


def test_posterior_is_precision_weighted() -> None:
    prior = Prior(kind="normal", mean=0.02, sd=0.04)
    r = bayesian_reading(0.1, 0.05, prior, mid=0.05, direction="higher_is_better")
    w0, w1 = 1 / 0.04**2, 1 / 0.05**2
    mean = (0.02 * w0 + 0.1 * w1) / (w0 + w1)
    sd = math.sqrt(1 / (w0 + w1))
    assert r["posterior_mean"] == pytest.approx(mean, abs=1e-14)
    assert r["posterior_sd"] == pytest.approx(sd, abs=1e-14)
    assert r["credible_low"] == pytest.approx(mean - Z975 * sd, abs=1e-12)
    assert r["credible_high"] == pytest.approx(mean + Z975 * sd, abs=1e-12)
    assert r["p_benefit"] == pytest.approx(stats.norm.sf(0, mean, sd), abs=1e-14)
    assert r["p_beyond_mid"] == pytest.approx(stats.norm.sf(0.05, mean, sd), abs=1e-14)
    assert r["p_harm"] == pytest.approx(1 - r["p_benefit"], abs=1e-14)
    assert r["prior"] == {"kind": "normal", "mean": 0.02, "sd": 0.04}


def test_sceptical_posterior_shrinks_towards_zero() -> None:
    r = bayesian_reading(0.1, 0.05, Prior(), mid=0.08, direction="higher_is_better")
    w0, w1 = (1.6448536269514722 / 0.08) ** 2, 1 / 0.05**2
    assert r["posterior_mean"] == pytest.approx(0.1 * w1 / (w0 + w1), abs=1e-12)
    assert 0 < r["posterior_mean"] < 0.1


def test_flat_prior_returns_the_likelihood() -> None:
    r = bayesian_reading(-2.0, 1.5, Prior(kind="flat"), mid=1.0, direction="lower_is_better")
    assert r["posterior_mean"] == -2.0 and r["posterior_sd"] == 1.5
    assert r["credible_low"] == pytest.approx(-2.0 - Z975 * 1.5, abs=1e-12)
    # lower is better: benefit is an effect below 0, beyond the MID below -1
    assert r["p_benefit"] == pytest.approx(stats.norm.cdf(0, -2, 1.5), abs=1e-14)
    assert r["p_beyond_mid"] == pytest.approx(stats.norm.cdf(-1, -2, 1.5), abs=1e-14)
    assert r["prior"] == {"kind": "flat", "mean": None, "sd": None}


def test_bayesian_reading_refuses() -> None:
    with pytest.raises(ValueError, match="needs mean and sd"):
        bayesian_reading(0.1, 0.05, Prior(kind="normal"), 0.05, "higher_is_better")
    with pytest.raises(ValueError, match="direction"):
        bayesian_reading(0.1, 0.05, Prior(), 0.05, "up")
    with pytest.raises(ValueError, match="positive"):
        bayesian_reading(0.1, 0.05, Prior(), 0.0, "higher_is_better")


# --- words ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "start"),
    [
        (1.0, "Very likely helps;"),
        (0.95, "Very likely helps;"),
        (0.9499, "Probably helps;"),
        (0.80, "Probably helps;"),
        (0.7999, "May help, may not;"),
        (0.5, "May help, may not;"),
        (0.2001, "May help, may not;"),
        (0.20, "Probably does not help;"),
        (0.0501, "Probably does not help;"),
        (0.05, "Very likely does not help;"),
        (0.0, "Very likely does not help;"),
    ],
)
def test_words_at_thresholds(p: float, start: str) -> None:
    text = words_for(p, p)
    assert text.startswith(start)
    assert "significant" not in text.lower()


def test_words_about_the_mid() -> None:
    assert words_for(0.97, 0.95).endswith(
        "it very likely helps by at least the smallest difference that matters."
    )
    assert "it probably helps by at least" in words_for(0.97, 0.80)
    assert "it may or may not help by as much as" in words_for(0.97, 0.5)
    assert "it probably does not help by as much as" in words_for(0.97, 0.2)
    assert "it very likely does not help by as much as" in words_for(0.97, 0.05)
    with pytest.raises(ValueError, match="cannot be larger"):
        words_for(0.5, 0.6)
    with pytest.raises(ValueError, match="probability"):
        words_for(1.2, 0.1)


# --- balance -------------------------------------------------------------------------


def test_standardised_differences_by_hand() -> None:
    baseline = pd.DataFrame(
        {
            "age": [30, 40, 50, 20, 30, 40, 50],
            "benefit": ["UC", "UC", "ESA", "UC", "ESA", "ESA", "JSA"],
        }
    )
    t = np.array([1, 1, 1, 0, 0, 0, 0])
    rows = {(r["variable"], r["level"]): r for r in standardised_differences(baseline, t)}
    assert list(rows) == [("age", None), ("benefit", "ESA"), ("benefit", "JSA"), ("benefit", "UC")]
    age = rows[("age", None)]
    # treated mean 40 (SS 200), control mean 35 (SS 500): pooled var 700 / 5
    assert age["mean_treated"] == 40 and age["mean_control"] == 35
    assert age["smd"] == pytest.approx(5 / math.sqrt(140), abs=1e-12)
    assert age["flag"] == "imbalanced" and age["kind"] == "numeric"
    esa = rows[("benefit", "ESA")]
    # indicator: treated 0,0,1 (mean 1/3, SS 2/3); control 0,1,1,0 (mean 1/2, SS 1)
    assert esa["mean_treated"] == pytest.approx(1 / 3) and esa["mean_control"] == 0.5
    assert esa["smd"] == pytest.approx((1 / 3 - 1 / 2) / math.sqrt((2 / 3 + 1) / 5), abs=1e-12)
    jsa = rows[("benefit", "JSA")]
    assert jsa["smd"] == pytest.approx(-0.25 / math.sqrt(0.75 / 5), abs=1e-12)
    uc = rows[("benefit", "UC")]
    assert uc["smd"] == pytest.approx((2 / 3 - 1 / 4) / math.sqrt((2 / 3 + 0.75) / 5), abs=1e-12)


def test_balance_flags_follow_wwc_boundaries() -> None:
    assert _flag(0.0) == "balanced"
    assert _flag(0.05) == "balanced"
    assert _flag(-0.0501) == "adjust"
    assert _flag(0.25) == "adjust"
    assert _flag(-0.2501) == "imbalanced"
    # a small difference on a real column: treated 1,2,3 vs control 1.1,2.1,3.1 (SD 1)
    rows = standardised_differences(
        pd.DataFrame({"x": [1, 2, 3, 1.1, 2.1, 3.1]}), np.array([1, 1, 1, 0, 0, 0])
    )
    assert rows[0]["smd"] == pytest.approx(-0.1, abs=1e-12) and rows[0]["flag"] == "adjust"


def test_balance_skips_missing_values() -> None:
    baseline = pd.DataFrame({"months": [6, np.nan, 12, 6, 12, 24]})
    rows = standardised_differences(baseline, np.array([1, 1, 1, 0, 0, 0]))
    assert rows[0]["n_treated"] == 2 and rows[0]["n_control"] == 3
    assert rows[0]["mean_treated"] == 9 and rows[0]["mean_control"] == 14


def test_balance_degenerate_columns() -> None:
    t = np.array([1, 1, 0, 0])
    baseline = pd.DataFrame(
        {
            "same": [5, 5, 5, 5],
            "split": ["a", "a", "b", "b"],
            "unasked": [np.nan, np.nan, 1.0, 2.0],
            "lone": pd.Categorical(["x", "x", "x", "x"], categories=["x", "y"]),
        }
    )
    rows = {(r["variable"], r["level"]): r for r in standardised_differences(baseline, t)}
    assert rows[("same", None)]["smd"] == 0.0 and rows[("same", None)]["flag"] == "balanced"
    assert rows[("split", "a")]["smd"] == math.inf
    assert rows[("split", "b")]["smd"] == -math.inf
    assert rows[("split", "a")]["flag"] == "imbalanced"
    assert rows[("unasked", None)]["flag"] == "not enough data"
    assert math.isnan(rows[("unasked", None)]["smd"])
    assert rows[("lone", "y")]["mean_treated"] == 0 and rows[("lone", "y")]["smd"] == 0.0


# --- multiplicity --------------------------------------------------------------------


def test_holm_by_hand() -> None:
    # ordered 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> 0.06
    assert adjust_pvalues([0.01, 0.04, 0.03, 0.005], "holm") == pytest.approx(
        [0.03, 0.06, 0.06, 0.02], abs=1e-15
    )


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("holm", "holm"),
        ("bonferroni", "bonferroni"),
        ("hochberg", "simes-hochberg"),
        ("simes-hochberg", "simes-hochberg"),
        ("fdr_bh", "fdr_bh"),
    ],
)
def test_adjust_pvalues_equal_statsmodels(ours: str, theirs: str) -> None:
    p = [0.001, 0.2, 0.04, 0.013, 0.5, 0.049]
    assert adjust_pvalues(p, ours) == list(multipletests(p, method=theirs)[1])


def test_adjust_pvalues_none_and_unknown() -> None:
    assert adjust_pvalues([0.2, 0.01], "none") == [0.2, 0.01]
    assert adjust_pvalues([], "holm") == []
    with pytest.raises(ValueError, match="unknown method"):
        adjust_pvalues([0.1], "sidak")


# --- attrition -----------------------------------------------------------------------


def test_attrition_arithmetic() -> None:
    r = attrition({"control": 50, "keyworker": 50}, {"control": 45, "keyworker": 40})
    assert r["by_arm_percent"] == {"control": 10.0, "keyworker": 20.0}
    assert r["overall_percent"] == 15.0
    assert r["differential_points"] == 10.0
    r = attrition({"a": 30, "b": 40, "c": 30}, {"a": 27, "b": 40, "c": 24})
    assert r["overall_percent"] == pytest.approx(9.0)
    assert r["differential_points"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="same arms"):
        attrition({"a": 3, "b": 3}, {"a": 3})
    with pytest.raises(ValueError, match="4 analysed of 3"):
        attrition({"a": 3, "b": 3}, {"a": 4, "b": 3})


# --- registered ratio models -----------------------------------------------------------

DATA = Path(__file__).parent / "data"
RATIO = json.loads((DATA / "reference_ratio_models.json").read_text())
# glm.nb alternates theta and the coefficients to its own tolerance; logistic and Poisson
# were fitted in R to 1e-14 (make_reference_extra.R, section E).
RATIO_TOL = {"logistic": 1e-8, "poisson": 1e-8, "negative_binomial": 2e-6}


def _ratio_design(clustered: bool, outcome: str):
    frame = pd.read_csv(DATA / RATIO["data"])
    return design_matrix(
        frame, outcome, "arm", RATIO["covariates"], "place" if clustered else None, None, None
    )


@pytest.mark.parametrize("design", ["place", "individual"])
@pytest.mark.parametrize(
    ("model", "outcome"),
    [("logistic", "in_work"), ("poisson", "contacts"), ("negative_binomial", "contacts")],
)
def test_ratio_models_match_r(design: str, model: str, outcome: str) -> None:
    d = _ratio_design(design == "place", outcome)
    got = ratio_model(d.y, d.X, model, d.clusters)
    ref = RATIO[design][model]
    for key in ("log_estimate", "log_std_error", "p_value", "estimate", "conf_low", "conf_high"):
        assert got[key] == pytest.approx(ref[key], rel=RATIO_TOL[model]), key
    if design == "place":
        assert got["df"] == ref["df"] == 11 and got["se_type"] == "CR1" and got["clusters"] == 12
    else:
        assert got["df"] is None and ref["df"] is None and got["se_type"] == "HC0"
    if model == "negative_binomial":
        assert 1 / got["dispersion"] == pytest.approx(ref["theta"], rel=1e-6)
    else:
        assert got["dispersion"] is None
    assert got["scale"] == ("odds ratio" if model == "logistic" else "rate ratio")


@pytest.mark.parametrize(("model", "family"), [("logistic", "Binomial"), ("poisson", "Poisson")])
def test_ratio_models_match_statsmodels_robust_fits(model: str, family: str) -> None:
    import statsmodels.api as sm

    outcome = "in_work" if model == "logistic" else "contacts"
    for clustered in (True, False):
        d = _ratio_design(clustered, outcome)
        glm = sm.GLM(d.y, d.X, family=getattr(sm.families, family)())
        fit = (
            glm.fit(cov_type="cluster", cov_kwds={"groups": d.clusters}, use_t=True)
            if clustered
            else glm.fit(cov_type="HC0")
        )
        got = ratio_model(d.y, d.X, model, d.clusters)
        assert got["log_estimate"] == pytest.approx(fit.params[1], rel=1e-9)
        assert got["log_std_error"] == pytest.approx(fit.bse[1], rel=1e-7)
        assert got["p_value"] == pytest.approx(fit.pvalues[1], rel=1e-6)
        low, high = np.exp(fit.conf_int()[1])
        assert (got["conf_low"], got["conf_high"]) == pytest.approx((low, high), rel=1e-7)


def test_ratio_model_refuses() -> None:
    d = _ratio_design(False, "contacts")
    with pytest.raises(ValueError, match="0 and 1"):
        ratio_model(d.y, d.X, "logistic")
    with pytest.raises(ValueError, match="whole non-negative counts"):
        ratio_model(d.y + 0.5, d.X, "poisson")
    with pytest.raises(ValueError, match="must be one of"):
        ratio_model(d.y, d.X, "probit")
    separated = d.X[:, 1].copy()  # the outcome is the treatment itself
    clustered = _ratio_design(True, "contacts")
    with pytest.raises(ValueError, match=r"perfect separation.*clustering by place"):
        ratio_model(separated, clustered.X, "logistic", clustered.clusters)
