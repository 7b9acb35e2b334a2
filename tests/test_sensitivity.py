"""Sensitivity analyses: hand computations, limiting cases and seeded recovery of known effects."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from linearmodels import PanelOLS
from scipy import stats

from evalkit.estimators import estimate_effect
from evalkit.sensitivity import (
    inverse_probability_weighted,
    multiple_imputation,
    rubin_combine,
    stepped_wedge_fixed,
    stepped_wedge_mixed,
)

EFFECT = 0.5


def _expit(x):
    return 1.0 / (1.0 + np.exp(-x))


def _trial(seed: int, n: int = 1200, missing: str = "mar") -> pd.DataFrame:
    """People randomised to two named arms, a numeric and a categorical covariate, a place,
    and an outcome missing completely at random ("mcar"), at random given arm and x ("mar"),
    or not at all ("none")."""
    rng = np.random.default_rng(seed)
    arm = rng.permutation(np.repeat(["control", "treatment"], n // 2))
    d = (arm == "treatment").astype(float)
    x = rng.normal(size=n)
    site = rng.choice(["Dalston", "Hoxton", "Clapton"], size=n)
    place = rng.integers(0, 12, size=n)
    y = 1.0 + EFFECT * d + 1.0 * x + 0.3 * (site == "Hoxton") + rng.normal(size=n)
    if missing == "mcar":
        y[rng.random(n) < 0.3] = np.nan
    elif missing == "mar":
        y[rng.random(n) > _expit(0.8 + 1.5 * x - 0.7 * d)] = np.nan
    return pd.DataFrame({"y": y, "arm": arm, "x": x, "site": site, "place": place})


def _hand_design(frame: pd.DataFrame) -> np.ndarray:
    return np.column_stack(
        [
            np.ones(len(frame)),
            (frame["arm"] == "treatment").to_numpy(float),
            frame["x"].to_numpy(),
            (frame["site"] == "Dalston").to_numpy(float),  # sorted levels: Clapton is reference
            (frame["site"] == "Hoxton").to_numpy(float),
        ]
    )


# ---------------------------------------------------------------------------------------
# Inverse probability weighting


@pytest.mark.parametrize("cluster", [None, "place"])
def test_ipw_equals_hand_computation(cluster):
    frame = _trial(1)
    got = inverse_probability_weighted(
        frame, "y", "arm", "treatment", ["x", "site"], cluster=cluster
    )
    X = _hand_design(frame)
    obs = frame["y"].notna().to_numpy()
    p = sm.GLM(obs.astype(float), X, family=sm.families.Binomial()).fit().fittedvalues
    w = 1.0 / p[obs]
    wls = sm.WLS(frame["y"].to_numpy()[obs], X[obs], weights=w)
    if cluster:
        res = wls.fit(cov_type="cluster", cov_kwds={"groups": frame["place"].to_numpy()[obs]})
        df = 11.0
    else:
        res = wls.fit(cov_type="HC1")
        df = obs.sum() - 5.0
    assert got["estimate"] == pytest.approx(res.params[1], rel=1e-10)
    assert got["std_error"] == pytest.approx(res.bse[1], rel=1e-10)
    assert got["df"] == df
    q = stats.t.ppf(0.975, df)
    assert got["conf_low"] == pytest.approx(res.params[1] - q * res.bse[1], rel=1e-10)
    assert got["p_value"] == pytest.approx(
        2 * stats.t.sf(abs(res.params[1] / res.bse[1]), df), rel=1e-8
    )
    assert got["n_observed"] == obs.sum() < got["n_total"] == len(frame)
    assert got["weight_min"] == pytest.approx(w.min()) and got["weight_max"] == pytest.approx(
        w.max()
    )
    assert got["weight_min"] >= 1.0
    assert got["method"] == "inverse probability weighting"
    json.dumps(got)


def test_ipw_without_missing_outcomes_is_ols():
    frame = _trial(2, missing="none")
    got = inverse_probability_weighted(frame, "y", "arm", "treatment", ["x", "site"])
    ols = estimate_effect(frame, "y", "arm", ["x", "site"], se="hc1")
    assert got["estimate"] == pytest.approx(ols.estimate, rel=1e-10)
    assert got["std_error"] == pytest.approx(ols.std_error, rel=1e-10)
    assert got["p_value"] == pytest.approx(ols.p_value, rel=1e-8)
    assert got["weight_min"] == got["weight_max"] == 1.0
    assert got["n_observed"] == got["n_total"] == len(frame)


def test_ipw_recovers_effect_under_mcar():
    frame = _trial(3, n=3000, missing="mcar")
    got = inverse_probability_weighted(frame, "y", "arm", "treatment", ["x", "site"])
    assert 0.02 < got["std_error"] < 0.1
    assert abs(got["estimate"] - EFFECT) < 3 * got["std_error"]
    assert got["conf_low"] < EFFECT < got["conf_high"]


def test_ipw_rejects_bad_input():
    frame = _trial(4)
    with pytest.raises(ValueError, match="treated_arm='placebo'"):
        inverse_probability_weighted(frame, "y", "arm", "placebo", ["x"])
    holes = frame.copy()
    holes.loc[0, "x"] = np.nan
    with pytest.raises(ValueError, match="'x' has 1 missing"):
        inverse_probability_weighted(holes, "y", "arm", "treatment", ["x"])
    with pytest.raises(ValueError, match="no column 'age'"):
        inverse_probability_weighted(frame, "y", "arm", "treatment", ["age"])
    three = frame.assign(arm=np.where(frame.index < 10, "other", frame["arm"]))
    with pytest.raises(ValueError, match="3 arms"):
        inverse_probability_weighted(three, "y", "arm", "treatment", ["x"])


# ---------------------------------------------------------------------------------------
# Multiple imputation


def test_rubin_rules_hand_example():
    got = rubin_combine([1.0, 1.2, 0.9], [0.04, 0.05, 0.045], df_complete=100.0)
    m = 3
    qbar = (1.0 + 1.2 + 0.9) / 3
    within = (0.04 + 0.05 + 0.045) / 3
    between = ((1.0 - qbar) ** 2 + (1.2 - qbar) ** 2 + (0.9 - qbar) ** 2) / (m - 1)
    total = within + (1 + 1 / m) * between
    lam = (1 + 1 / m) * between / total
    nu_old = (m - 1) / lam**2
    nu_obs = (100 + 1) / (100 + 3) * 100 * (1 - lam)
    nu = 1 / (1 / nu_old + 1 / nu_obs)
    r = (1 + 1 / m) * between / within
    assert got["estimate"] == pytest.approx(31 / 30, rel=1e-12)
    assert got["within_variance"] == pytest.approx(0.045, rel=1e-12)
    assert got["between_variance"] == pytest.approx(0.07 / 3, rel=1e-12)
    assert got["total_variance"] == pytest.approx(total, rel=1e-12)
    assert total == pytest.approx(0.045 + 4 / 3 * 0.07 / 3, rel=1e-12)
    assert got["std_error"] == pytest.approx(math.sqrt(total), rel=1e-12)
    assert got["df"] == pytest.approx(nu, rel=1e-12)
    assert got["df"] == pytest.approx(9.9206, abs=1e-3)
    assert got["fraction_missing_information"] == pytest.approx(
        (r + 2 / (nu + 3)) / (r + 1), rel=1e-12
    )
    assert got["proportion_variance_missing"] == pytest.approx(lam, rel=1e-12)
    with pytest.raises(ValueError, match="at least two"):
        rubin_combine([1.0], [0.1], 10.0)


def test_mi_without_missing_outcomes_is_complete_data_analysis():
    frame = _trial(5, missing="none")
    got = multiple_imputation(
        frame, "y", "arm", "treatment", ["x", "site"], 5, np.random.default_rng(0)
    )
    ols = estimate_effect(frame, "y", "arm", ["x", "site"], se="hc2")
    assert got["estimate"] == ols.estimate
    assert got["std_error"] == ols.std_error
    assert got["df"] == ols.df
    assert got["between_variance"] == 0.0
    assert got["fraction_missing_information"] == 0.0
    assert got["imputations"] == 5


def test_mi_recovers_effect_under_mar():
    frame = _trial(6, n=2000, missing="mar")
    got = multiple_imputation(
        frame, "y", "arm", "treatment", ["x", "site"], 20, np.random.default_rng(42)
    )
    assert frame["y"].isna().mean() > 0.2
    assert abs(got["estimate"] - EFFECT) < 3 * got["std_error"]
    assert got["between_variance"] > 0
    assert 0 < got["fraction_missing_information"] < 1
    assert 20 < got["df"] < got["df_complete"] == 2000 - 5
    assert got["imputation_model"] == "normal linear"
    assert got["se_type"] == "HC2"
    assert got["n_observed"] == frame["y"].notna().sum()
    json.dumps(got)
    again = multiple_imputation(
        frame, "y", "arm", "treatment", ["x", "site"], 20, np.random.default_rng(42)
    )
    assert again == got


def test_mi_binary_outcome_with_clusters():
    rng = np.random.default_rng(7)
    n = 1500
    d = rng.permutation(np.repeat([0, 1], n // 2))
    x = rng.normal(size=n)
    y = (rng.random(n) < _expit(-0.2 + 0.8 * d + x)).astype(float)
    truth = float(np.mean(_expit(0.6 + x) - _expit(-0.2 + x)))
    y[rng.random(n) > _expit(1.0 + x)] = np.nan
    frame = pd.DataFrame({"y": y, "d": d, "x": x, "place": rng.integers(0, 20, n)})
    got = multiple_imputation(
        frame, "y", "d", 1, ["x"], 10, np.random.default_rng(1), cluster="place"
    )
    assert got["imputation_model"] == "logistic"
    assert got["se_type"] == "CR2" and got["clusters"] == 20
    assert abs(got["estimate"] - truth) < 3 * got["std_error"]


def test_mi_rejects_bad_input():
    frame = _trial(8)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least two imputations"):
        multiple_imputation(frame, "y", "arm", "treatment", ["x"], 1, rng)
    with pytest.raises(ValueError, match="numpy Generator"):
        multiple_imputation(frame, "y", "arm", "treatment", ["x"], 5, 123)
    with pytest.raises(ValueError, match="missing for everyone"):
        multiple_imputation(frame.assign(y=np.nan), "y", "arm", "treatment", ["x"], 5, rng)


# ---------------------------------------------------------------------------------------
# Stepped wedge

SW_EFFECT = 0.4


def _stepped_wedge(seed: int, per_cell: int = 60) -> pd.DataFrame:
    """6 places, 4 periods, two places cross over at each of periods 1-3; ICC 0.05 (place
    variance 0.05, residual 0.95) and a secular trend."""
    rng = np.random.default_rng(seed)
    place_effect = rng.normal(0.0, math.sqrt(0.05), 6)
    rows = [(g, t) for g in range(6) for t in range(4) for _ in range(per_cell)]
    frame = pd.DataFrame(rows, columns=["place", "period"])
    frame["place"] = "P" + frame["place"].astype(str)
    start = frame["place"].str[1].astype(int) // 2 + 1
    frame["exposed"] = (frame["period"] >= start).astype(float)
    frame["score"] = (
        SW_EFFECT * frame["exposed"]
        + 0.15 * frame["period"]
        + place_effect[frame["place"].str[1].astype(int)]
        + rng.normal(0.0, math.sqrt(0.95), len(frame))
    )
    return frame


def test_stepped_wedge_mixed_recovers_effect_and_matches_statsmodels():
    frame = _stepped_wedge(11)
    got = stepped_wedge_mixed(frame, "score", "exposed", "period", "place")
    direct = smf.mixedlm("score ~ exposed + C(period)", frame, groups=frame["place"]).fit()
    assert got["estimate"] == pytest.approx(direct.params["exposed"], rel=1e-8)
    assert got["std_error"] == pytest.approx(direct.bse["exposed"], rel=1e-8)
    assert got["p_value"] == pytest.approx(direct.pvalues["exposed"], rel=1e-6)
    lo, hi = direct.conf_int().loc["exposed"]
    assert (got["conf_low"], got["conf_high"]) == pytest.approx((lo, hi), rel=1e-8)
    assert got["place_variance"] == pytest.approx(direct.cov_re.iloc[0, 0], rel=1e-8)
    assert got["residual_variance"] == pytest.approx(direct.scale, rel=1e-8)
    assert abs(got["estimate"] - SW_EFFECT) < 3 * got["std_error"]
    assert got["method"] == "linear mixed model, random place intercepts, period fixed effects"
    assert (got["n"], got["places"], got["periods"]) == (1440, 6, 4)
    json.dumps(got)


def test_stepped_wedge_fixed_recovers_effect_and_matches_direct_calls():
    frame = _stepped_wedge(12)
    got = stepped_wedge_fixed(frame, "score", "exposed", "period", "place")
    panel = frame.assign(row=frame.groupby("place").cumcount()).set_index(["place", "row"])
    direct = PanelOLS(
        panel["score"], panel[["exposed"]], entity_effects=True, other_effects=panel[["period"]]
    ).fit(cov_type="clustered", cluster_entity=True, group_debias=True)
    assert got["estimate"] == pytest.approx(direct.params["exposed"], rel=1e-8)
    assert got["std_error"] == pytest.approx(direct.std_errors["exposed"], rel=1e-8)
    # The same thing as individual-level OLS with dummies and Stata's CR1 by place.
    ols = smf.ols("score ~ exposed + C(place) + C(period)", frame).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(frame["place"])[0]}
    )
    assert got["estimate"] == pytest.approx(ols.params["exposed"], rel=1e-8)
    assert got["std_error"] == pytest.approx(ols.bse["exposed"], rel=1e-8)
    assert got["df"] == 5.0
    assert abs(got["estimate"] - SW_EFFECT) < 3 * got["std_error"]
    assert got["conf_low"] < SW_EFFECT < got["conf_high"]


def test_stepped_wedge_rejects_unidentified_exposure():
    frame = _stepped_wedge(13, per_cell=5)
    frame["exposed"] = (frame["period"] >= 2).astype(float)  # everyone switches at once
    for fn in (stepped_wedge_mixed, stepped_wedge_fixed):
        with pytest.raises(ValueError, match="determined by period and place"):
            fn(frame, "score", "exposed", "period", "place")
