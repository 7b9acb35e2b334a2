"""Design diagnosis: the simulated pilots follow the protocol's assumptions, the registered
analysis keeps its type I error where CR1 does not, power agrees with the closed form, and
the same seed gives the same numbers whatever the number of workers.

Tolerances are Monte Carlo standard errors (binomial for shares) times 4 or more."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats
from statsmodels.stats.power import NormalIndPower

from cli import cli
from evalkit import diagnose as D
from evalkit.errors import UserError
from evalkit.protocol_file import load_protocol
from tests.conftest import REPO

ESTATES = REPO / "protocols" / "hackney-estates.yaml"
KEYWORKER = REPO / "protocols" / "hackney-keyworker.yaml"
FRONT_DOOR = REPO / "protocols" / "hackney-front-door.yaml"


def protocol(path: Path):
    return load_protocol(path)[0]


def anova_icc(y: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """One-way ANOVA estimate of the ICC, and its normal-theory standard error."""
    n_groups = int(g.max()) + 1
    n = np.bincount(g, minlength=n_groups)
    total = len(y)
    means = np.bincount(g, weights=y, minlength=n_groups) / n
    msb = (n * (means - y.mean()) ** 2).sum() / (n_groups - 1)
    msw = ((y - means[g]) ** 2).sum() / (total - n_groups)
    n0 = (total - (n**2).sum() / total) / (n_groups - 1)
    icc = (msb - msw) / (msb + (n0 - 1) * msw)
    se = math.sqrt(
        2 * (1 - icc) ** 2 * (1 + (n0 - 1) * icc) ** 2 / (n0 * (n0 - 1) * (n_groups - 1))
    )
    return float(icc), se


def linear_r_squared(frame, columns: list[np.ndarray]) -> float:
    X = np.column_stack([np.ones(len(frame)), *columns]).astype(float)
    y = frame["y0"].to_numpy()
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    return float(1 - (y - X @ beta).var() / y.var())


# --- the data-generating process -------------------------------------------------------


def test_binary_outcome_has_the_protocols_rate_icc_and_r_squared():
    sc = D.scenarios(protocol(ESTATES), ["places=2000,design=cluster"])[1]
    frame = D.simulate_data(sc, 7, 0)
    assert sc.places == 2000 and sc.units == 80000  # 40 people per estate kept
    sizes = np.bincount(frame["place"])
    assert sizes.std() / sizes.mean() == pytest.approx(0.4, abs=0.03)
    y0 = frame["y0"].to_numpy()
    deff = 1 + ((1 + 0.4**2) * 40 - 1) * 0.03  # design effect of unequal clusters
    assert y0.mean() == pytest.approx(0.10, abs=4 * math.sqrt(0.09 * deff / len(y0)))
    icc, se = anova_icc(y0, frame["place"].to_numpy())
    assert abs(icc - 0.03) < 5 * se, (icc, se)
    benefit = frame["benefit"].to_numpy()
    cols = [frame["age"], benefit == "JSA", benefit == "UC", frame["months_unemployed"]]
    assert linear_r_squared(frame, cols) == pytest.approx(0.10, abs=0.01)
    # the effect is on the difference in proportions, exactly as assumed
    treated = frame["treated"].to_numpy() == 1
    lift = frame["y"].to_numpy()[treated].mean() - y0[treated].mean()
    assert lift == pytest.approx(0.06, abs=0.01)


def test_continuous_outcome_splits_its_variance_as_assumed():
    p = protocol(ESTATES)
    outcomes = [o.model_copy(update={"primary": o.name == "wellbeing"}) for o in p.outcomes]
    size = p.sample_size.model_copy(update={"baseline_sd": 8.0, "expected_effect": 3.0})
    p = p.model_copy(update={"outcomes": outcomes, "sample_size": size})
    sc = D.scenarios(p, ["places=2000,design=cluster"])[1]
    assert sc.outcome_type == "continuous"
    frame = D.simulate_data(sc, 11, 0)
    y0 = frame["y0"].to_numpy()
    assert y0.std() == pytest.approx(8.0, rel=0.03)
    icc, se = anova_icc(y0, frame["place"].to_numpy())
    assert abs(icc - 0.03) < 5 * se
    benefit = frame["benefit"].to_numpy()
    cols = [frame["age"], benefit == "JSA", benefit == "UC", frame["months_unemployed"]]
    assert linear_r_squared(frame, cols) == pytest.approx(0.10, abs=0.01)
    assert np.allclose(frame["y"] - frame["y0"], 3.0 * frame["treated"])


def test_the_registered_randomisation_is_used():
    sc = D.registered_scenario(protocol(ESTATES))
    frame = D.simulate_data(sc, 3, 5)
    arm_of_place = frame.groupby("place")["treated"].agg(["min", "max"])
    assert (arm_of_place["min"] == arm_of_place["max"]).all()  # whole estates
    assert arm_of_place["min"].sum() == 8  # one estate of each of the 8 pairs

    wedge = D.registered_scenario(protocol(FRONT_DOOR))
    frame = D.simulate_data(wedge, 3, 5)
    period = frame["period"].astype(int)
    assert (frame.loc[period == 1, "treated"] == 0).all()
    assert (frame.loc[period == 4, "treated"] == 1).all()
    crossed = frame[frame["treated"] == 1].groupby("place")["period"].min().astype(int)
    assert sorted(crossed.tolist()) == [2, 2, 3, 3, 4, 4]  # places_per_step [2, 2, 2]

    blocked = D.registered_scenario(protocol(KEYWORKER))
    frame = D.simulate_data(blocked, 3, 5)
    for _, part in frame.groupby("benefit"):  # permuted blocks of 4 and 6 within benefit
        assert abs(2 * part["treated"].sum() - len(part)) <= 6


def test_each_pilot_is_analysed_exactly_as_estimate_effect_does():
    from evalkit.estimators import estimate_effect

    for path, alt in ((ESTATES, "se=cr1"), (FRONT_DOOR, "icc=0.05"), (KEYWORKER, "se=hc1")):
        for sc in D.scenarios(protocol(path), [alt]):
            frame = D.simulate_data(sc, 9, 2)
            got = D.simulate_one(sc, 9, 2)
            covs = [v.name for v in sc.covariates] + (["period"] if sc.wedge else [])
            cluster = "place" if sc.level == "place" else None
            for y, cols in (("y", [0, 1, 2, 3, 4]), ("y0", [5, 6, 7, 8])):
                e = estimate_effect(frame, y, "arm", covs, cluster, None, sc.se, sc.alpha, sc.arms)
                want = [e.estimate, e.std_error, e.conf_low, e.conf_high, e.p_value]
                if y == "y0":
                    want = [e.estimate, e.p_value, e.conf_low, e.conf_high]
                assert got[cols] == pytest.approx(want, rel=1e-10, abs=1e-14), (sc.label, y)


# --- reproducibility -------------------------------------------------------------------


def test_same_seed_same_numbers_whatever_the_workers():
    scs = D.scenarios(protocol(ESTATES), ["se=cr1"])
    one = D.run_simulations(scs, 12, seed=5, workers=1)
    two = D.run_simulations(scs, 12, seed=5, workers=2)
    assert np.array_equal(one, two, equal_nan=True)
    assert not np.array_equal(one, D.run_simulations(scs, 12, seed=6, workers=1))
    # common random numbers: CR1 is the same estimate on the same pilots
    assert np.array_equal(one[0, :, 0], one[1, :, 0])


# --- what the diagnosis shows -----------------------------------------------------------


SIMS = 600


@pytest.fixture(scope="module")
def estates_diagnosis():
    scs = D.scenarios(protocol(ESTATES), ["places=6", "places=6,se=cr1"])
    raw = D.run_simulations(scs, SIMS, seed=2027, workers=2)
    return raw, [D.summarise(sc, r) for sc, r in zip(scs, raw, strict=True)]


def test_cr2_keeps_type_i_error_near_alpha_and_cr1_exceeds_it(estates_diagnosis):
    raw, out = estates_diagnosis
    band = 4 * math.sqrt(0.05 * 0.95 / SIMS)
    for k in (0, 1):  # registered CR2 with 16 estates, and with 6
        assert out[k]["failed"] == 0
        assert abs(out[k]["estimands"]["type_i_error"]["value"] - 0.05) < band, out[k]["label"]
    # With 6 places (3 pairs) CR1 rejects a true null more often on the same pilots. Paired
    # (McNemar) comparison: pilots rejected by one method only would split evenly if CR1
    # had no excess.
    p = D._COLUMNS.index("null_p_value")
    cr2, cr1 = raw[1][:, p] < 0.05, raw[2][:, p] < 0.05
    only_cr1, only_cr2 = int((cr1 & ~cr2).sum()), int((cr2 & ~cr1).sum())
    assert only_cr1 > only_cr2
    assert stats.binom.sf(only_cr1 - 1, only_cr1 + only_cr2, 0.5) < 1e-4, (only_cr1, only_cr2)
    assert out[2]["estimands"]["coverage"]["value"] < out[1]["estimands"]["coverage"]["value"]
    cr1_se = out[2]["estimands"]["mean_std_error"]["value"]
    assert cr1_se < out[2]["estimands"]["sd_estimate"]["value"]  # CR1 is too small


def test_six_places_cannot_answer_the_question(estates_diagnosis):
    _, out = estates_diagnosis
    power16 = out[0]["estimands"]["power"]
    power6 = out[1]["estimands"]["power"]
    assert out[1]["settings"]["places"] == 6 and out[1]["settings"]["people"] == 240
    assert power6["value"] + 4 * power6["mcse"] < 0.25  # far below the usual 80%
    assert power6["value"] < power16["value"] - 4 * math.hypot(power6["mcse"], power16["mcse"])
    assert out[1]["estimands"]["rmse"]["value"] > 1.4 * out[0]["estimands"]["rmse"]["value"]
    band = 4 * math.sqrt(0.05 * 0.95 / SIMS)
    assert abs(out[1]["estimands"]["coverage"]["value"] - 0.95) < band


def test_individual_power_and_coverage_agree_with_the_closed_form():
    """Two proportions, 0.12 against 0.19, 200 a side, no prognostic covariates: the normal
    approximation (statsmodels NormalIndPower) gives the power of the HC2 t test."""
    alt = "design=complete,r_squared=0,units=400"
    sc = D.scenarios(protocol(KEYWORKER), [alt])[1]
    raw = D.run_simulations([sc], 400, seed=31, workers=2)[0]
    out = D.summarise(sc, raw)["estimands"]
    p0, p1 = 0.12, 0.19
    sd = math.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / 2)
    expected = NormalIndPower().power(effect_size=(p1 - p0) / sd, nobs1=200, alpha=0.05)
    assert expected == pytest.approx(0.484, abs=0.01)
    mcse = math.sqrt(expected * (1 - expected) / 400)
    assert abs(out["power"]["value"] - expected) < 4 * mcse
    assert abs(out["coverage"]["value"] - 0.95) < 4 * math.sqrt(0.05 * 0.95 / 400)
    assert abs(out["bias"]["value"]) < 4 * out["bias"]["mcse"] + 1e-9


# --- alternatives ------------------------------------------------------------------------


def test_alternatives_change_only_what_they_name():
    p = protocol(ESTATES)
    base, more, both, clus, wedge = D.scenarios(
        p,
        [
            "places=24",
            "units=1200,places=24",
            "design=cluster",
            "design=stepped_wedge,periods=5",
        ],
    )
    assert (more.places, more.units, more.method) == (24, 960, base.method)
    assert (both.places, both.units) == (24, 1200)
    assert clus.method == "cluster" and clus.units == base.units
    assert wedge.places_per_step == (4, 4, 4, 4) and wedge.periods == 5
    fd = D.scenarios(protocol(FRONT_DOOR), ["places=9", "periods=5"])
    assert fd[1].places_per_step == (3, 3, 3) and fd[1].units == 1080
    assert fd[2].places_per_step == (2, 2, 1, 1) and fd[2].periods == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plaes=24", "unknown setting 'plaes' (did you mean 'places'?)"),
        ("places", "'places' is not KEY=VALUE"),
        ("places=1", "places=1 must be a whole number from 2"),
        ("places=many", "places=many must be a whole number"),
        ("se=cr3", "unknown se 'cr3'"),
        ("se=hc2", "hc2 ignores clustering"),
        ("design=blocked", "blocked does not fit: this protocol randomises places"),
        ("design=stepped_wedge", "a stepped wedge needs its number of periods"),
        ("icc=1.5", "icc=1.5 must be a number from 0 to 0.99"),
        ("sd=3", "sd is for a continuous outcome"),
        ("effect=0.95", "leaves the 0 to 1 range"),
        ("places=24,places=30", "places is given twice"),
    ],
)
def test_bad_alternatives_are_refused_clearly(text, message):
    with pytest.raises(UserError) as err:
        D.scenarios(protocol(ESTATES), [text])
    assert message in str(err.value)


def test_alternatives_that_need_places_are_refused_for_people():
    with pytest.raises(UserError, match="icc applies to place designs only"):
        D.scenarios(protocol(KEYWORKER), ["icc=0.05"])
    with pytest.raises(UserError, match="cr2 needs clusters"):
        D.scenarios(protocol(KEYWORKER), ["se=cr2"])


# --- the command ------------------------------------------------------------------------


def run(*args: str, ok: int = 0):
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert res.exit_code == ok, res.output
    assert "Traceback" not in res.output
    return res


def test_cli_table_and_json_agree_with_the_library():
    args = ["diagnose", str(FRONT_DOOR), "--sims", "16", "--seed", "4", "--workers", "1"]
    table = run(*args, "--alternative", "places=12").output
    lines = table.splitlines()
    assert lines[0] == "Design diagnosis of hackney-front-door: 16 simulated pilots, seed 4"
    assert "period fixed effects" in lines[1] and "clustered by place" in lines[1]
    header = next(line for line in lines if "registered" in line)
    assert header.split() == ["registered", "places=12"]
    for row in ("power", "type I error", "coverage", "bias", "RMSE", "mean CI width"):
        assert any(line.startswith(row) for line in lines), row
    data = json.loads(run(*args, "--alternative", "places=12", "--json").output)
    direct = D.diagnose(protocol(FRONT_DOOR), ["places=12"], sims=16, seed=4, workers=1)
    assert data == json.loads(json.dumps(direct))
    assert [s["label"] for s in data["scenarios"]] == ["registered", "places=12"]
    assert data["scenarios"][1]["settings"]["places_per_step"] == [4, 4, 4]
    power = data["scenarios"][0]["estimands"]["power"]
    assert f"{power['value']:.3f} ({power['mcse']:.3f})" in table


def test_cli_bad_alternative_exits_1_with_one_message():
    res = run("diagnose", str(ESTATES), "--sims", "10", "--alternative", "places=x", ok=1)
    assert "error: --alternative 'places=x': places=x must be a whole number" in res.output
    assert "hint: places:" in res.output
    res = run("diagnose", str(ESTATES), "--sims", "1", ok=1)
    assert "--sims 1 is too few" in res.output


# --- analytic power and simulation agree ------------------------------------------------


def test_analytic_power_agrees_with_the_simulation_on_the_place_template(estates_diagnosis):
    """PowerUp!'s closed form for the 8 matched pairs and the simulated registered CR2
    analysis: the same answer within simulation error (4 Monte Carlo SEs)."""
    from evalkit.power import power_for_protocol

    _, out = estates_diagnosis
    analytic = power_for_protocol(protocol(ESTATES))["comparisons"][0]["power_at_expected"]
    simulated = out[0]["estimands"]["power"]
    assert abs(simulated["value"] - analytic) < 4 * simulated["mcse"], (simulated, analytic)


def test_analytic_power_agrees_with_the_simulation_on_the_individual_template():
    from evalkit.power import power_for_protocol

    p = protocol(KEYWORKER)
    scs = D.scenarios(p)
    raw = D.run_simulations(scs, 300, seed=11, workers=2)
    simulated = D.summarise(scs[0], raw[0])["estimands"]["power"]
    analytic = power_for_protocol(p)["comparisons"][0]["power_at_expected"]
    assert analytic == pytest.approx(0.821, abs=0.001)
    assert abs(simulated["value"] - analytic) < 4 * simulated["mcse"], (simulated, analytic)
