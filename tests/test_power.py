"""Analytic power against published worked examples and independent closed forms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from statsmodels.stats.power import TTestIndPower

from evalkit.power import (
    _wedge,
    binary_sd,
    cluster_power,
    design_effect,
    individual_power,
    multiplier,
    power_for_protocol,
    power_warnings,
    smallest_size,
    stepped_wedge_power,
    stepped_wedge_variance,
    two_sided_power,
)
from evalkit.protocol_file import parse_protocol
from tests.conftest import REPO


def sig3(x: float) -> float:
    return float(f"{x:.3g}")


def template(name: str, replace: tuple[str, str] | None = None):
    text = (REPO / "protocols" / f"{name}.yaml").read_text()
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    return parse_protocol(text, f"{name}.yaml")[0]


# --- individual randomisation ------------------------------------------------------------


def test_individual_matches_powerupr_ira_cross_check():
    # PowerUpR man/ira1r1.Rd "cross-checks": mdes.ira1r1(n=250) gives .356, so
    # power.ira1r1(es=.356, n=250) is .80 (at the rounded MDES) and mrss.ira1r1(es=.356)
    # gives n = 250.
    r = individual_power(0.356, 250)
    assert sig3(r.mde) == 0.356
    assert round(r.power, 2) == 0.80
    assert r.df == 248  # n - g - 2
    assert smallest_size(lambda n: individual_power(0.356, n).power, start=3) == 250


@pytest.mark.parametrize("ratio", [1.0, 2.0, 3.0])
def test_individual_power_agrees_with_statsmodels_t_test(ratio):
    # statsmodels TTestIndPower: noncentral t with n1 + n2 - 2 df, the same closed form
    # (no covariates); unequal allocation n2 = ratio * n1 is P = ratio / (1 + ratio).
    n1 = 120
    ref = TTestIndPower().power(0.3, nobs1=n1, alpha=0.05, ratio=ratio)
    ours = individual_power(0.3, n1 * (1 + ratio), treated_share=ratio / (1 + ratio)).power
    assert sig3(ours) == sig3(ref)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_individual_covariates_shrink_the_se_and_cost_degrees_of_freedom():
    # PowerUp! IRA: SE = sqrt((1 - R2) / (P(1 - P) n)), df = n - g - 2, MDES = M x SE.
    r = individual_power(0.2, 400, r_squared=0.4, covariates=5)
    se = math.sqrt(0.6 / (0.25 * 400))
    assert r.se == pytest.approx(se)
    assert r.df == 393
    assert r.mde == pytest.approx(multiplier(393, 0.05, 0.8) * se)
    assert r.mde < individual_power(0.2, 400).mde


def test_binary_outcome_uses_the_variance_at_the_average_rate():
    # 0.12 against 0.19: pbar = 0.155, sd = sqrt(0.155 x 0.845) = 0.36191...
    assert binary_sd(0.12, 0.07) == pytest.approx(math.sqrt(0.155 * 0.845))
    assert binary_sd(0.12, 0.07, "lower_is_better") == pytest.approx(math.sqrt(0.085 * 0.915))
    # Standard normal-approximation sample size for two proportions with the pooled
    # variance (no continuity correction): n per arm = (z[.975] + z[.8])^2 x 2 pbar(1 - pbar)
    # / d^2 = 419.6 for 0.12 -> 0.19; at that size the normal test has power 0.800.
    z = 1.959963984540054 + 0.8416212335729143
    n_arm = z**2 * 2 * 0.155 * 0.845 / 0.07**2
    assert sig3(n_arm) == 420
    r = individual_power(0.07, 2 * n_arm, sd=binary_sd(0.12, 0.07))
    assert sig3(two_sided_power(0.07 / r.se, None, 0.05)) == 0.800  # the normal version
    assert round(r.power, 2) == 0.80 and r.power < 0.8  # t with 837 df: slightly less


# --- cluster randomisation ---------------------------------------------------------------


def test_cluster_matches_powerupr_cra2_cross_check():
    # PowerUpR man/cra2r2.Rd "cross-checks for the main effect": mdes.cra2r2(rho2=.17,
    # n=15, J=20) gives .629; power.cra2r2(es=.629, ...) .80; mrss.cra2r2(es=.629) J = 20.
    r = cluster_power(0.629, 20, 15, 0.17)
    assert sig3(r.mde) == 0.629
    assert round(r.power, 2) == 0.80
    assert r.df == 18  # J - 2
    assert smallest_size(lambda j: cluster_power(0.629, j, 15, 0.17).power, start=3) == 20


def test_blocked_cluster_matches_powerupr_bcra3f2_cross_check():
    # PowerUpR man/bcra3f2.Rd cross-checks: mdes.bcra3f2(rho2=.10, n=20, J=44, K=5) gives
    # .145 and mrss.bcra3f2(es=.145, n=20, J=44) K = 5; the pyPowerUp README (a port of
    # PowerUpR) prints power_bcra3f2(effect_size=.145, rho2=.10, n=20, J=44, K=5) = 0.803.
    # The standard error is CRA2's on 220 places; PowerUp's df here is K(J - 2).
    r = cluster_power(0.145, 44 * 5, 20, 0.10, df=5 * 42)
    assert sig3(r.mde) == 0.145
    assert sig3(r.power) == 0.803
    k = smallest_size(lambda k: cluster_power(0.145, 44 * k, 20, 0.1, df=42 * k).power)
    assert k == 5


def test_eldridge_design_effect_for_unequal_place_sizes():
    # Eldridge, Ashby & Kerry (2006): DE = 1 + ((cv^2 + 1) m - 1) rho.
    assert design_effect(40, 0.03, 0.4) == pytest.approx(1 + (1.16 * 40 - 1) * 0.03)  # 2.362
    assert design_effect(40, 0.03) == pytest.approx(1 + 39 * 0.03)
    # With no covariates the CRA2 standard error is sd x sqrt(DE / (P(1 - P) J m)).
    r = cluster_power(0.1, 16, 40, 0.03, cv=0.4, sd=0.3)
    assert r.se == pytest.approx(0.3 * math.sqrt(design_effect(40, 0.03, 0.4) / (0.25 * 640)))


def test_cluster_degrees_of_freedom_by_design():
    assert cluster_power(0.2, 16, 40, 0.05).df == 14  # J - 2
    assert cluster_power(0.2, 16, 40, 0.05, strata=8).df == 7  # 8 pairs: pairs - 1
    assert cluster_power(0.2, 16, 40, 0.05, strata=2, place_covariates=1).df == 12
    with pytest.raises(ValueError, match="degrees of freedom"):
        cluster_power(0.2, 2, 40, 0.05)


# --- stepped wedge -----------------------------------------------------------------------


def _gls_variance(steps, periods, sigma2, tau2):
    """The same model fitted directly: (sum_i Z_i' V^-1 Z_i)^-1 with period dummies and the
    arm, V = sigma2 I + tau2 J. Independent of the closed form."""
    x = _wedge(steps, periods)
    v_inv = np.linalg.inv(sigma2 * np.eye(periods) + tau2 * np.ones((periods, periods)))
    info = sum(
        np.column_stack([np.eye(periods), row]).T @ v_inv @ np.column_stack([np.eye(periods), row])
        for row in x
    )
    return float(np.linalg.inv(info)[-1, -1])


@pytest.mark.parametrize(
    "steps,periods,sigma2,tau2",
    [([6, 6, 6, 6], 5, 0.04 / 120, 1e-4), ([2, 2, 2], 4, 0.5, 0.1), ([1, 3, 2], 5, 0.2, 0.05)],
)
def test_hussey_hughes_closed_form_equals_the_gls_variance(steps, periods, sigma2, tau2):
    ours = stepped_wedge_variance(steps, periods, sigma2, tau2)
    assert ours == pytest.approx(_gls_variance(steps, periods, sigma2, tau2), rel=1e-9)


@pytest.mark.parametrize("k,n,rho,per_step", [(4, 20, 0.05, 2), (3, 30, 0.02, 3), (6, 10, 0.1, 1)])
def test_stepped_wedge_agrees_with_woertman_design_effect(k, n, rho, per_step):
    # Woertman et al. (2013, J Clin Epidemiol 66:752): with one baseline and one measurement
    # after each of k steps, DE_sw = (1 + rho(k n + n - 1)) / (1 + rho(k n / 2 + n - 1)) x
    # 3(1 - rho) / (2(k - 1/k)), and N_u x DE_sw = clusters x n, so Var = 4 DE_sw / (I n)
    # for a unit-variance outcome.
    de = (1 + rho * (k * n + n - 1)) / (1 + rho * (k * n / 2 + n - 1))
    de *= 3 * (1 - rho) / (2 * (k - 1 / k))
    clusters = k * per_step
    r = stepped_wedge_power(0.2, [per_step] * k, k + 1, n, rho)
    assert sig3(r.se**2) == sig3(4 * de / (clusters * n))
    assert r.se**2 == pytest.approx(4 * de / (clusters * n), rel=1e-9)


def test_stepped_wedge_swcrtdesign_example_1():
    # swCRTdesign man/swPwr.Rd, Example 1 (the Hussey & Hughes setting): swDsn(c(6,6,6,6)),
    # binomial, n = 120, mu0 = 0.05, mu1 = 0.035, tau = 0.01, alpha 0.05; sigma^2 =
    # pbar(1 - pbar) with pbar = 0.0425 and power Phi(|theta|/SE - z) + Phi(-|theta|/SE - z)
    # (the swPwr closed form). The value is the closed form worked by hand:
    # Var = 2.968e-5, power 0.786.
    sigma2 = 0.0425 * 0.9575 / 120
    var = stepped_wedge_variance([6] * 4, 5, sigma2, 0.01**2)
    assert sig3(var) == 2.97e-5
    z = 0.015 / math.sqrt(var)
    q = 1.959963984540054
    power = 0.5 * math.erfc(-(z - q) / math.sqrt(2)) + 0.5 * math.erfc((z + q) / math.sqrt(2))
    assert sig3(power) == 0.786
    # The same through stepped_wedge_power: tau^2 = rho sd^2, sigma^2 = (1 - rho) sd^2 / n.
    sd2 = 0.01**2 + 0.0425 * 0.9575 * 1.0
    rho = 0.01**2 / sd2
    r = stepped_wedge_power(0.015, [6] * 4, 5, 120, rho, sd=math.sqrt(sd2))
    assert r.df is None
    assert r.power == pytest.approx(power, rel=1e-9)
    assert r.mde == pytest.approx((q + 0.8416212335729143) * math.sqrt(var), rel=1e-9)


# --- the registered design ---------------------------------------------------------------


def test_keyworker_template_power():
    p = template("hackney-keyworker")
    r = power_for_protocol(p)
    c = r["comparisons"][0]
    sd = binary_sd(0.12, 0.07)
    # blocked on benefit (already a covariate): g = age 1 + benefit 2 + months 1 + route 4
    ref = individual_power(0.07, 800, sd=sd, r_squared=0.1, covariates=8)
    assert c["df"] == 790
    assert c["power_at_mid"] == pytest.approx(ref.power)
    assert sig3(c["power_at_mid"]) == 0.821
    assert power_warnings(p) == []
    need = c["needed_at_mid"]["units"]
    assert individual_power(0.07, need, sd=sd, r_squared=0.1, covariates=8).power >= 0.8
    assert individual_power(0.07, need - 1, sd=sd, r_squared=0.1, covariates=8).power < 0.8
    assert "PowerUp!" in r["method"] and r["assumptions"]


def test_unequal_ratio_in_a_protocol():
    text = (REPO / "protocols" / "hackney-keyworker.yaml").read_text()
    text = text.replace("    ratio: 1\n\ndesign:", "    ratio: 2\n\ndesign:")
    text = text.replace("block_sizes: [4, 6]", "block_sizes: [3, 6]")
    p = parse_protocol(text, "keyworker.yaml")[0]
    assert [a.ratio for a in p.arms] == [1, 2]
    p = p.model_copy(update={"sample_size": p.sample_size.model_copy(update={"target_units": 600})})
    c = power_for_protocol(p)["comparisons"][0]
    ref = individual_power(
        0.07, 600, sd=binary_sd(0.12, 0.07), treated_share=2 / 3, r_squared=0.1, covariates=8
    )
    assert c["power_at_mid"] == pytest.approx(ref.power)


def test_estates_template_power_and_warning():
    p = template("hackney-estates")
    r = power_for_protocol(p)
    c = r["comparisons"][0]
    assert c["df"] == 7  # 8 pairs
    ref = cluster_power(
        0.06, 16, 40, 0.03, sd=binary_sd(0.10, 0.06), cv=0.4, r2_individual=0.1, strata=8
    )
    assert c["power_at_mid"] == pytest.approx(ref.power)
    assert c["power_at_mid"] < 0.8
    places = c["needed_at_mid"]["places"]
    assert places % 2 == 0
    (w,) = power_warnings(p)
    assert "below 80%" in w and f"{places} places" in w


def test_front_door_template_power_uses_hussey_hughes():
    p = template("hackney-front-door")
    c = power_for_protocol(p)["comparisons"][0]
    sd = binary_sd(0.08, 0.05)
    ref = stepped_wedge_power(0.05, [2, 2, 2], 4, 30, 0.02, sd=sd)
    assert c["power_at_mid"] == pytest.approx(ref.power)
    assert c["df"] is None
    assert c["mde"] == pytest.approx(
        multiplier(None, 0.05) * ref.se / sd * binary_sd(0.08, c["mde"]), rel=1e-6
    )
    assert c["needed_at_mid"]["places"] % 6 == 0


def test_rates_outside_zero_and_one_are_a_clear_warning():
    p = template("hackney-keyworker", ("baseline_rate: 0.12", "baseline_rate: 0.97"))
    (w,) = power_warnings(p)
    assert w.startswith("power could not be worked out") and "outside 0 to 1" in w


# --- command line --------------------------------------------------------------------------


@pytest.fixture
def run(cli_in):
    return cli_in


def test_cli_power_table_and_json(run):
    run("init", "estates", "--template", "place")
    out = run("power", "estates").output
    assert "estate_team against usual: 640 units in 16 places" in out
    assert "minimal important difference" in out and "power 0.255" in out
    assert "warning: below 80% power" in out
    data = json.loads(run("power", "estates", "--json").output)
    assert data["design"] == "matched_pair_cluster"
    assert sig3(data["comparisons"][0]["power_at_mid"]) == 0.255
    assert data["assumptions"] and data["method"]
    assert run("power", "no-such-pilot", ok=1).output.startswith("error: no protocol")


def test_validate_warns_on_low_power_but_exits_0(run):
    run("init", "estates", "--template", "place")
    run("init", "keyworker", "--template", "individual")
    out = run("validate", "estates").output
    assert "valid" in out and "warning: estate_team against usual: power 0.25" in out
    assert "warning" not in run("validate", "keyworker").output
    data = json.loads(run("validate", "estates", "--json").output)
    assert data["valid"] and len(data["warnings"]) == 1
