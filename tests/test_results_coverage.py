"""Every number in results.json, checked against an independent computation.

Each demo pilot's results.json (keyworker: individual, blocked; estates: 16 places in
pairs; front door: stepped wedge) is recomputed here from the analysis data in the store
with pandas, scipy and statsmodels directly, never through evalkit's own functions. The
fields and the test that covers each (tests in this file unless a file is named):

- primary/secondary ``effect`` (estimate, std_error, df, p_value, conf_low, conf_high, n,
  clusters): test_analysis.py::test_results_match_the_estimators_on_the_exported_data
  (primary, against estimate_effect, which test_estimators.py checks against R estimatr
  and clubSandwich at 1e-8); test_secondary_effects_and_other_standard_errors (secondary
  and ``other_standard_errors``, HC1/CR1 against statsmodels OLS with its own HC1 and
  cluster covariance)
- ``means``: test_analysis.py::test_results_match_the_estimators_on_the_exported_data;
  ``analysed``: test_consort_counts
- ``binary`` (n, events, rates, risk difference and its interval, relative risk, odds
  ratio and their intervals, nnt, nnt_kind): test_binary_effects (pandas crosstab, scipy
  relative_risk and odds_ratio)
- ``odds_ratio`` (logistic presentation): test_odds_ratio_presentation (statsmodels
  formula logit)
- ``registered_model``: test_analysis.py::test_a_registered_ratio_model_is_fitted_as_registered
  (statsmodels formula GLM) and test_effects.py::test_ratio_models_match_r (R glm, glm.nb,
  sandwich)
- ``hedges_g`` (difference, sd_pooled, sd_within, j, g, se, g_total, se_total,
  g_within, se_within, icc, n_places, mean_place_size): test_hedges_g (Hedges 2007
  formulas and the one-way ANOVA ICC written out here)
- ``bayes`` (posterior mean and sd, credible interval, p_benefit, p_beyond_mid, p_harm,
  prior sd): test_bayes (conjugate normal formulas, scipy.stats.norm)
- ``adjusted_p_value``: test_adjusted_p_values (Holm step-down written out here)
- ``missing_data``: test_analysis.py::test_results_match_the_estimators_on_the_exported_data
  (nothing missing in the demos: equals the complete-case effect) and test_sensitivity.py
- ``stepped_wedge_models``: test_stepped_wedge_models (statsmodels MixedLM formula and a
  dummy-variable OLS with place-clustered errors)
- ``subgroups`` (per-level effects, interaction p-value): test_subgroup_levels (per level,
  against estimate_effect on the subset) and test_analysis.py::
  test_subgroups_give_per_level_effects_and_an_interaction_test
- ``cace``: test_analysis.py::test_cace_without_covariates_is_the_wald_ratio
- ``randomisation_inference`` (p_value, observed, draws, exact, null_quantiles,
  null_histogram):
  test_exact_randomisation_inference_of_the_pairs (all 256 pair flips enumerated here, for
  the estates pilot); test_design_ri.py for the other designs
- ``wild_cluster_bootstrap``: test_inference.py (against a direct implementation);
  here test_wild_bootstrap_brackets_the_estimate (draws, weights, interval around the
  estimate)
- ``balance`` (n, means, sd_pooled, smd, flag): test_balance (pandas)
- ``attrition`` (randomised, analysed, overall_percent, differential_points, by arm):
  test_attrition (from the people's outcome status)
- ``consort`` (assessed, excluded, randomised, places, per arm randomised, analysed, lost,
  not yet due, withdrawn, did not start): test_consort_counts (from the rows and the
  protocol's exclusions)
- ``progression`` (value, green, amber, rating): test_progression_values (dates, statuses
  and baseline cells counted here)
- ``costs`` (per_participant, incremental, by_agency, per_additional_outcome.point,
  bootstrap): test_costs (protocol unit costs and outcome values multiplied out here)
- ``registration``, ``protocol``: test_analysis.py::
  test_registration_and_protocol_are_carried_into_results
- ``provenance`` numbers (registered_version, log_entries): test_provenance_counts
- ``alpha``: test_provenance_counts (equals the protocol's)
- what degenerate data produce (Firth's ``method``/``note`` in ``odds_ratio`` and
  ``registered_model``, the negative binomial's ``refit``, ``covariates_dropped``,
  ``binary`` ``*_not_estimable``, ``not_estimable`` in ``hedges_g``, ``costs``,
  ``randomisation_inference``, ``wild_cluster_bootstrap``): test_degenerate_data.py
  (Firth against R's logistf, the refitted negative binomial against MASS::glm.nb)
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import date
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from scipy.stats.contingency import odds_ratio, relative_risk

from evalkit.estimators import estimate_effect
from evalkit.protocol_file import load_protocol
from evalkit.store import Store
from evalkit.tracking import track
from tests.conftest import run_demo

PILOTS = ["demo-keyworker", "demo-estates", "demo-front-door"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("d") / "demo"
    res = run_demo(root)
    assert res.exit_code == 0, res.output
    out = {}
    store = Store.open(f"sqlite:///{root / 'evalkit.db'}")
    for pilot in PILOTS:
        results = json.loads((root / "analyses" / pilot / "results.json").read_text())
        protocol, _ = load_protocol(root / "protocols" / f"{pilot}.yaml")
        t = track(store, protocol, date.fromisoformat(results["as_of"]))
        out[pilot] = SimpleNamespace(
            results=results,
            protocol=protocol,
            rows=pd.DataFrame(t.dataset.rows),
            entries=t.entries,
            record=store.pilot(pilot),
        )
    store.close()
    return out


def _outcomes(r):
    return [r["primary"], *r["secondary"]]


def _observed(p, outcome: str) -> pd.DataFrame:
    f = p.rows[p.rows[f"{outcome}_status"] == "observed"].copy()
    f[outcome] = f[outcome].astype(float)
    if p.protocol.design.method == "stepped_wedge":
        f["period"] = f["period"].astype(str)
    return f


def _treated(p, frame: pd.DataFrame) -> np.ndarray:
    return (frame["arm"] == p.protocol.arms[1].name).to_numpy()


@pytest.mark.parametrize("pilot", PILOTS)
def test_binary_effects(demo, pilot):
    p = demo[pilot]
    for r in _outcomes(p.results):
        if r["type"] != "binary":
            continue
        f = _observed(p, r["outcome"])
        t = _treated(p, f)
        y = f[r["outcome"]].to_numpy()
        a1, n1, a0, n0 = int(y[t].sum()), int(t.sum()), int(y[~t].sum()), int((~t).sum())
        b = r["binary"]
        assert (b["events_treated"], b["n_treated"], b["events_control"], b["n_control"]) == (
            a1,
            n1,
            a0,
            n0,
        )
        assert b["treated_rate"] == pytest.approx(a1 / n1)
        assert b["control_rate"] == pytest.approx(a0 / n0)
        rd = a1 / n1 - a0 / n0
        se = math.sqrt(a1 / n1 * (1 - a1 / n1) / n1 + a0 / n0 * (1 - a0 / n0) / n0)
        assert b["risk_difference"] == pytest.approx(rd)
        assert b["risk_difference_low"] == pytest.approx(rd - stats.norm.ppf(0.975) * se)
        assert b["risk_difference_high"] == pytest.approx(rd + stats.norm.ppf(0.975) * se)
        rr = relative_risk(a1, n1, a0, n0)
        ci = rr.confidence_interval(0.95)
        assert b["relative_risk"] == pytest.approx(rr.relative_risk)
        assert (b["relative_risk_low"], b["relative_risk_high"]) == pytest.approx((ci.low, ci.high))
        table = [[a1, n1 - a1], [a0, n0 - a0]]
        orr = odds_ratio(table, kind="sample")
        ci = orr.confidence_interval(0.95)
        assert b["odds_ratio"] == pytest.approx(orr.statistic)
        assert (b["odds_ratio_low"], b["odds_ratio_high"]) == pytest.approx((ci.low, ci.high))
        assert b["nnt"] == pytest.approx(1 / rd)
        better = rd > 0 if r["direction"] == "higher_is_better" else rd < 0
        assert b["nnt_kind"] == ("benefit" if better else "harm")


@pytest.mark.parametrize("pilot", PILOTS)
def test_odds_ratio_presentation(demo, pilot):
    p = demo[pilot]
    for r in _outcomes(p.results):
        if r["type"] != "binary":
            continue
        f = _observed(p, r["outcome"])
        f["treated"] = _treated(p, f).astype(int)
        terms = [f"C({c})" if f[c].dtype == object else c for c in r["covariates"]]
        fit = smf.logit(f"{r['outcome']} ~ treated + {' + '.join(terms)}", f).fit(disp=0)
        got = r["odds_ratio"]
        assert got["odds_ratio"] == pytest.approx(math.exp(fit.params["treated"]), rel=1e-5)
        low, high = np.exp(fit.conf_int().loc["treated"])
        assert (got["conf_low"], got["conf_high"]) == pytest.approx((low, high), rel=1e-5)
        assert got["p_value"] == pytest.approx(fit.pvalues["treated"], rel=1e-4)


def _hand_icc(y, t, place) -> float:
    frame = pd.DataFrame({"y": y, "t": t, "c": place})
    n, m = len(frame), frame["c"].nunique()
    arm_mean = frame.groupby("t")["y"].transform("mean")
    place_mean = frame.groupby("c")["y"].transform("mean")
    msw = ((frame["y"] - place_mean) ** 2).sum() / (n - m)
    places = frame.groupby("c").agg(size=("y", "size"), mean=("y", "mean"), t=("t", "first"))
    arm_of_place = places["t"].map(frame.groupby("t")["y"].mean())
    msb = (places["size"] * (places["mean"] - arm_of_place) ** 2).sum() / (m - 2)
    arm_n = places["t"].map(frame.groupby("t").size())
    n0 = (n - (places["size"] ** 2 / arm_n).sum()) / (m - 2)
    del arm_mean
    sb = max(0.0, (msb - msw) / n0)
    return sb / (sb + msw)


@pytest.mark.parametrize("pilot", PILOTS)
def test_hedges_g(demo, pilot):
    p = demo[pilot]
    for r in _outcomes(p.results):
        if r["type"] == "binary":
            continue
        f = _observed(p, r["outcome"])
        t = _treated(p, f)
        y = f[r["outcome"]].to_numpy()
        y1, y0 = y[t], y[~t]
        n1, n0 = len(y1), len(y0)
        n = n1 + n0
        s = math.sqrt(((n1 - 1) * y1.var(ddof=1) + (n0 - 1) * y0.var(ddof=1)) / (n - 2))
        j = 1 - 3 / (4 * n - 9)
        g = r["hedges_g"]
        assert (g["n_treated"], g["n_control"]) == (n1, n0)
        assert g["difference"] == pytest.approx(y1.mean() - y0.mean())
        assert g["sd_pooled"] == pytest.approx(s)
        assert g["j"] == pytest.approx(j)
        if p.protocol.unit.level == "participant" or p.protocol.design.method == "stepped_wedge":
            gi = j * (y1.mean() - y0.mean()) / s
            assert g["g"] == pytest.approx(gi)
            assert g["se"] == pytest.approx(math.sqrt(n / (n1 * n0) + gi**2 / (2 * n)))
            assert g["g_total"] is None and g["icc"] is None
            continue
        place = f["place"].astype(str).to_numpy()
        m = len(set(place))
        size = n / m
        rho = _hand_icc(y, t, place)
        within = f.groupby("place")[r["outcome"]].transform("mean").to_numpy()
        sw = math.sqrt(((y - within) ** 2).sum() / (n - m))
        diff = y1.mean() - y0.mean()
        gt = j * diff / s * math.sqrt(1 - 2 * (size - 1) * rho / (n - 2))
        num = (
            (n - 2) * (1 - rho) ** 2
            + size * (n - 2 * size) * rho**2
            + 2 * (n - 2 * size) * rho * (1 - rho)
        )
        se_t = math.sqrt(
            n / (n1 * n0) * (1 + (size - 1) * rho)
            + gt**2 * num / (2 * (n - 2) * ((n - 2) - 2 * (size - 1) * rho))
        )
        gw = j * diff / sw
        se_w = math.sqrt(n / (n1 * n0) * (1 + (size - 1) * rho) / (1 - rho) + gw**2 / (2 * (n - m)))
        assert g["icc"] == pytest.approx(rho, abs=1e-12)
        assert (g["n_places"], g["mean_place_size"]) == (m, pytest.approx(size))
        assert g["sd_within"] == pytest.approx(sw)
        assert (g["g_total"], g["se_total"]) == pytest.approx((gt, se_t))
        assert (g["g_within"], g["se_within"]) == pytest.approx((gw, se_w))
        assert (g["g"], g["se"]) == pytest.approx((gt, se_t))


@pytest.mark.parametrize("pilot", PILOTS)
def test_bayes(demo, pilot):
    p = demo[pilot]
    for r in _outcomes(p.results):
        e, b, mid = r["effect"], r["bayes"], r["minimal_important_difference"]
        assert p.protocol.analysis.prior.kind == "sceptical"
        sd0 = mid / stats.norm.ppf(0.95)
        prec = 1 / sd0**2 + 1 / e["std_error"] ** 2
        mean = (e["estimate"] / e["std_error"] ** 2) / prec
        sd = math.sqrt(1 / prec)
        assert b["prior"] == {"kind": "sceptical", "mean": 0.0, "sd": pytest.approx(sd0)}
        assert (b["posterior_mean"], b["posterior_sd"]) == pytest.approx((mean, sd))
        assert b["credible_low"] == pytest.approx(mean - stats.norm.ppf(0.975) * sd)
        assert b["credible_high"] == pytest.approx(mean + stats.norm.ppf(0.975) * sd)
        sign = 1 if r["direction"] == "higher_is_better" else -1
        assert b["p_benefit"] == pytest.approx(stats.norm.cdf(sign * mean / sd))
        assert b["p_beyond_mid"] == pytest.approx(stats.norm.cdf((sign * mean - mid) / sd))
        assert b["p_harm"] == pytest.approx(1 - b["p_benefit"])
        assert b["mid"] == mid


@pytest.mark.parametrize("pilot", PILOTS)
def test_adjusted_p_values(demo, pilot):
    sec = [s for s in demo[pilot].results["secondary"] if s["effect"]]
    p = [s["effect"]["p_value"] for s in sec]
    order = np.argsort(p)
    k = len(p)
    holm = np.empty(k)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p[i]))
        holm[i] = running
    for s, h in zip(sec, holm, strict=True):
        assert s["multiplicity"] == "holm" and s["adjusted_from"] == "effect"
        assert s["adjusted_p_value"] == pytest.approx(h)


@pytest.mark.parametrize("pilot", PILOTS)
def test_secondary_effects_and_other_standard_errors(demo, pilot):
    p = demo[pilot]
    place = p.protocol.unit.level == "place"
    for r in _outcomes(p.results):
        f = _observed(p, r["outcome"])
        arms = [a.name for a in p.protocol.arms]
        direct = estimate_effect(
            f,
            r["outcome"],
            "arm",
            r["covariates"],
            "place" if place else None,
            None,
            "auto",
            0.05,
            arms,
        ).as_dict()
        for k in ("estimate", "std_error", "df", "p_value", "conf_low", "conf_high", "n"):
            assert r["effect"][k] == pytest.approx(direct[k], rel=1e-10), (r["outcome"], k)
        f["treated"] = _treated(p, f).astype(int)
        terms = [f"C({c})" if f[c].dtype == object else c for c in r["covariates"]]
        model = smf.ols(f"{r['outcome']} ~ treated + {' + '.join(terms)}", f)
        other = r["other_standard_errors"][0]
        if place:
            fit = model.fit(cov_type="cluster", cov_kwds={"groups": f["place"]}, use_t=True)
            assert other["se_type"] == "CR1" and other["df"] == f["place"].nunique() - 1
        else:
            fit = model.fit(cov_type="HC1", use_t=True)
            assert other["se_type"] == "HC1" and other["df"] == fit.df_resid
        assert other["estimate"] == pytest.approx(fit.params["treated"], rel=1e-9)
        assert other["std_error"] == pytest.approx(fit.bse["treated"], rel=1e-9)
        low, high = fit.conf_int().loc["treated"]
        assert (other["conf_low"], other["conf_high"]) == pytest.approx((low, high), rel=1e-9)
        assert other["p_value"] == pytest.approx(fit.pvalues["treated"], rel=1e-8)
        assert r["analysed"] == {a: int((f["arm"] == a).sum()) for a in arms}


def test_stepped_wedge_models(demo):
    p = demo["demo-front-door"]
    r = p.results["primary"]
    f = _observed(p, r["outcome"])
    f["exposure"] = _treated(p, f).astype(float)
    f["_y"] = f[r["outcome"]]
    mixed = smf.mixedlm("_y ~ exposure + C(period)", f, groups=f["place"]).fit(reml=True)
    got = r["stepped_wedge_models"]["mixed"]
    assert got["estimate"] == pytest.approx(mixed.params["exposure"], rel=1e-6)
    assert got["std_error"] == pytest.approx(mixed.bse["exposure"], rel=1e-4)
    fixed = smf.ols("_y ~ exposure + C(period) + C(place)", f).fit(
        cov_type="cluster", cov_kwds={"groups": f["place"]}, use_t=True
    )
    got = r["stepped_wedge_models"]["fixed"]
    assert got["estimate"] == pytest.approx(fixed.params["exposure"], rel=1e-8)
    assert (got["n"], got["places"], got["periods"]) == (
        len(f),
        f["place"].nunique(),
        f["period"].nunique(),
    )


@pytest.mark.parametrize("pilot", PILOTS)
def test_subgroup_levels(demo, pilot):
    p = demo[pilot]
    r = p.results["primary"]
    f = _observed(p, r["outcome"])
    arms = [a.name for a in p.protocol.arms]
    place = p.protocol.unit.level == "place"
    for sub in r["subgroups"]:
        for level in sub["levels"]:
            part = f[f[sub["subgroup"]].astype(str) == level["level"]]
            assert level["n"] == len(part)
            if level["effect"] is None:
                continue
            covs = [c for c in r["covariates"] if c != sub["subgroup"]]
            direct = estimate_effect(
                part,
                r["outcome"],
                "arm",
                covs,
                "place" if place else None,
                None,
                "auto",
                0.05,
                arms,
            )
            assert level["effect"]["estimate"] == pytest.approx(direct.estimate, rel=1e-10)
            assert level["effect"]["p_value"] == pytest.approx(direct.p_value, rel=1e-8)


def test_exact_randomisation_inference_of_the_pairs(demo):
    """Estates: 8 pairs of places, one of each pair treated; all 2^8 assignments."""
    p = demo["demo-estates"]
    r = p.results["primary"]
    f = _observed(p, r["outcome"])
    treated_places = sorted(set(f.loc[_treated(p, f), "place"]))
    X = pd.get_dummies(f[r["covariates"]], drop_first=True, dtype=float)
    X.insert(0, "const", 1.0)
    y = f[r["outcome"]].to_numpy()
    pair_of = _pairs(p)
    places = sorted(pair_of)
    groups = sorted(set(pair_of.values()))
    by_pair = {g: sorted(pl for pl in places if pair_of[pl] == g) for g in groups}
    observed_treated = set(treated_places)
    estimates = []
    for flips in itertools.product([0, 1], repeat=len(groups)):
        chosen = {by_pair[g][k] for g, k in zip(groups, flips, strict=True)}
        t = f["place"].isin(chosen).to_numpy().astype(float)
        beta = np.linalg.lstsq(
            np.column_stack([X.to_numpy()[:, :1], t, X.to_numpy()[:, 1:]]), y, rcond=None
        )[0]
        estimates.append(beta[1])
    t_obs = f["place"].isin(observed_treated).to_numpy().astype(float)
    obs = np.linalg.lstsq(
        np.column_stack([X.to_numpy()[:, :1], t_obs, X.to_numpy()[:, 1:]]), y, rcond=None
    )[0][1]
    estimates = np.array(estimates)
    ri = r["randomisation_inference"]
    assert ri["exact"] is True and ri["draws"] == 2 ** len(groups) == 256
    assert ri["observed"] == pytest.approx(obs, rel=1e-9)
    assert ri["p_value"] == pytest.approx(np.mean(np.abs(estimates) >= abs(obs) - 1e-12))
    assert ri["null_quantiles"] == pytest.approx(
        list(np.quantile(estimates, [0.025, 0.5, 0.975])), abs=1e-9
    )
    hist = ri["null_histogram"]
    reach = max(np.abs(estimates).max(), abs(obs))
    assert hist["edges"][0] == pytest.approx(-reach) and hist["edges"][-1] == pytest.approx(reach)
    assert sum(hist["counts"]) == 256
    assert hist["counts"] == list(np.histogram(estimates, bins=40, range=(-reach, reach))[0])


def _pairs(p) -> dict[str, str]:
    """Place -> pair, from the place allocations in the log."""
    return {e.place: e.stratum for e in p.entries if e.kind == "allocation" and e.level == "place"}


def test_wild_bootstrap_brackets_the_estimate(demo):
    for pilot in PILOTS:
        p = demo[pilot]
        r = p.results["primary"]
        plan = p.protocol.analysis.sensitivity.wild_cluster_bootstrap
        wb = r["wild_cluster_bootstrap"]
        if plan is None or p.protocol.unit.level != "place":
            assert wb is None
            continue
        assert wb["draws"] == plan.draws
        assert wb["weights"] == ("webb" if r["effect"]["clusters"] < 12 else "rademacher")
        assert wb["conf_low"] < r["effect"]["estimate"] < wb["conf_high"]
        assert 0 < wb["p_value"] <= 1
    assert demo["demo-estates"].results["primary"]["wild_cluster_bootstrap"] is not None


@pytest.mark.parametrize("pilot", PILOTS)
def test_balance(demo, pilot):
    p = demo[pilot]
    t = (p.rows["arm"] == p.protocol.arms[1].name).to_numpy()
    for row in p.results["balance"]:
        s = p.rows[row["variable"]]
        keep = s.notna().to_numpy()
        x = s[keep]
        tt = t[keep]
        if row["level"] is not None:
            x = (x == row["level"]).astype(float)
        x = x.astype(float).to_numpy()
        x1, x0 = x[tt], x[~tt]
        sd = math.sqrt(
            (((x1 - x1.mean()) ** 2).sum() + ((x0 - x0.mean()) ** 2).sum()) / (len(x) - 2)
        )
        assert (row["n_treated"], row["n_control"]) == (len(x1), len(x0))
        assert (row["mean_treated"], row["mean_control"]) == pytest.approx((x1.mean(), x0.mean()))
        assert row["sd_pooled"] == pytest.approx(sd)
        diff = x1.mean() - x0.mean()
        smd = diff / sd if sd else (0.0 if diff == 0 else math.copysign(math.inf, diff))
        assert row["smd"] == pytest.approx(smd)
        flag = "balanced" if abs(smd) <= 0.05 else "adjust" if abs(smd) <= 0.25 else "imbalanced"
        assert row["flag"] == flag


@pytest.mark.parametrize("pilot", PILOTS)
def test_attrition(demo, pilot):
    p = demo[pilot]
    status = p.rows[f"{p.protocol.primary.name}_status"]
    due = p.rows[status != "not_yet_due"]
    got = p.results["attrition"]
    lost = {
        a: int((due["arm"] == a).sum() - ((due["arm"] == a) & (status == "observed")).sum())
        for a in due["arm"].unique()
    }
    n = {a: int((due["arm"] == a).sum()) for a in due["arm"].unique()}
    assert got["randomised"] == len(due)
    assert got["analysed"] == int((status == "observed").sum())
    assert got["overall_percent"] == pytest.approx(100 * sum(lost.values()) / len(due))
    by_arm = {a: 100 * lost[a] / n[a] for a in n}
    assert got["by_arm_percent"] == pytest.approx(by_arm)
    assert got["differential_points"] == pytest.approx(max(by_arm.values()) - min(by_arm.values()))


@pytest.mark.parametrize("pilot", PILOTS)
def test_consort_counts(demo, pilot):
    p = demo[pilot]
    c = p.results["consort"]
    status = p.rows[f"{p.protocol.primary.name}_status"]
    exclusions = [e for e in p.entries if e.kind == "exclusion"]
    assert c["randomised"] == len(p.rows)
    assert c["excluded"]["total"] == len(exclusions)
    assert c["assessed"] == len(p.rows) + len(exclusions)
    reasons = pd.Series([r for e in exclusions for r in e.detail["reasons"]]).value_counts()
    assert c["excluded"]["reasons"] == reasons.to_dict()
    for arm in c["arms"]:
        mine = p.rows["arm"] == arm["arm"]
        assert arm["randomised"] == int(mine.sum())
        assert arm["analysed"] == int((mine & (status == "observed")).sum())
        assert arm["lost_to_follow_up"] == int((mine & (status == "missing")).sum())
        assert arm["not_yet_due"] == int((mine & (status == "not_yet_due")).sum())
        if p.protocol.design.method == "stepped_wedge":  # every place crosses over
            assert arm["places"] is None
        elif p.protocol.unit.level == "place":
            assert arm["places"] == p.rows.loc[mine, "place"].nunique()
        assert arm["withdrawn"] == int((mine & p.rows["withdrawn"].fillna(False)).sum())
        assert arm["did_not_start"] == int((mine & (p.rows["started"] == False)).sum())  # noqa: E712


@pytest.mark.parametrize("pilot", PILOTS)
def test_progression_values(demo, pilot):
    p = demo[pilot]
    rows = p.rows
    status = rows[f"{p.protocol.primary.name}_status"]
    days = pd.to_datetime(rows["randomised_on"])
    months = max((days.max() - days.min()).days / (365.25 / 12), 1.0)
    fields = [f.name for f in p.protocol.fields if not f.identifier]
    expected = {
        "recruitment_per_month": len(rows) / months,
        "retention": (status == "observed").sum() / (status != "not_yet_due").sum(),
        "data_completeness": rows[fields].notna().to_numpy().mean(),
    }
    treated = rows[rows["arm"] != p.protocol.arms[0].name]
    if treated["started"].notna().any():
        expected["adherence"] = (treated["started"] == True).mean()  # noqa: E712
    for got in p.results["progression"]:
        c = next(x for x in p.protocol.progression if x.metric == got["metric"])
        assert (got["green"], got["amber"]) == (c.green, c.amber)
        if got["metric"] not in expected:
            assert got["value"] is None and got["rating"] == "not_yet"
            continue
        v = expected[got["metric"]]
        assert got["value"] == pytest.approx(v)
        assert got["rating"] == ("green" if v >= c.green else "amber" if v >= c.amber else "red")


@pytest.mark.parametrize("pilot", PILOTS)
def test_costs(demo, pilot):
    p = demo[pilot]
    costs, r = p.protocol.costs, p.results
    control, treated = p.protocol.arms[0].name, p.protocol.arms[1].name
    per = {}
    for u in costs.unit_costs:
        per.setdefault(u.arm, {}).setdefault(u.agency, 0.0)
        per[u.arm][u.agency] += u.unit_cost * u.quantity
    for arm, by_agency in r["costs"]["per_participant"].items():
        for agency, v in by_agency.items():
            assert v == pytest.approx(per.get(arm, {}).get(agency, 0.0))
    agencies = set(per.get(control, {})) | set(per.get(treated, {}))
    delta = {
        a: per.get(treated, {}).get(a, 0.0) - per.get(control, {}).get(a, 0.0) for a in agencies
    }
    assert r["costs"]["incremental"]["total"] == pytest.approx(sum(delta.values()))
    effects = {o["outcome"]: o["effect"]["estimate"] for o in _outcomes(r)}
    n_treated = int((p.rows["arm"] == treated).sum())
    value = {}
    for v in costs.outcome_values:
        value[v.agency] = value.get(v.agency, 0.0) + v.value * effects[v.outcome]
    rows = {row["agency"]: row for row in r["costs"]["by_agency"]}
    for agency in set(delta) | set(value):
        row = rows[agency]
        cost, val = delta.get(agency, 0.0), value.get(agency, 0.0)
        assert row["cost_per_participant"] == pytest.approx(cost)
        assert row["value_per_participant"] == pytest.approx(val)
        assert row["net_per_participant"] == pytest.approx(val - cost)
        assert row["cost_total"] == pytest.approx(cost * n_treated)
        assert row["value_total"] == pytest.approx(val * n_treated)
        assert row["net_total"] == pytest.approx((val - cost) * n_treated)
    total = rows["total"]
    assert total["cost_per_participant"] == pytest.approx(sum(delta.values()))
    assert total["value_per_participant"] == pytest.approx(sum(value.values()))
    extra = r["costs"]["per_additional_outcome"]
    rd = effects[p.protocol.primary.name]
    assert extra["point"] == (pytest.approx(sum(delta.values()) / rd) if rd > 0 else None)
    if "bootstrap" in extra:
        b = extra["bootstrap"]
        assert b["draws"] == 1999
        if b["conf_low"] is not None:
            assert b["conf_low"] < extra["point"] < b["conf_high"]


@pytest.mark.parametrize("pilot", PILOTS)
def test_provenance_counts(demo, pilot):
    p = demo[pilot]
    prov = p.results["provenance"]
    assert prov["log_entries"] == len(p.entries) == p.record.log_count
    assert prov["registered_version"] == 1 == p.results["registration"]["version"]
    assert p.results["alpha"] == p.protocol.analysis.alpha
    assert sum(v["rows"] for v in prov["data_vintage"]) > 0
