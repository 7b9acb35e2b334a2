"""Effect estimators against R (estimatr, clubSandwich), a brute-force CR2, and simulated pilots.

The R values live in tests/data (reference.json from make_reference.R, reference_extra.json
from make_reference_extra.R); R is never needed to run these tests.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import linalg, stats

from evalkit.estimators import CR1, CR2, HC1, HC2, difference_in_means, estimate_effect

DATA = Path(__file__).with_name("data")
REF = json.loads((DATA / "reference.json").read_text())
EXTRA = json.loads((DATA / "reference_extra.json").read_text())
RTOL = 1e-8
SIX = ("estimate", "std_error", "df", "p_value", "conf_low", "conf_high")


def rel_err(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


def assert_close(got: dict | pd.Series, want: dict, where: str) -> None:
    for key, value in want.items():
        err = rel_err(float(got[key]), value)
        assert err < RTOL, f"{where} {key}: got {got[key]!r}, R says {value!r} (rel {err:.1e})"


@pytest.fixture(scope="module")
def place() -> pd.DataFrame:
    return pd.read_csv(DATA / "place_pilot.csv")


@pytest.fixture(scope="module")
def individual() -> pd.DataFrame:
    return pd.read_csv(DATA / "individual_pilot.csv")


PLACE_COVS = ["age", "months_unemployed", "esa"]
IND_COVS = ["age", "prior_work_years", "benefit"]


# --- reference.json -------------------------------------------------------------------


def test_cr2_matches_estimatr_and_clubsandwich(place):
    effect = estimate_effect(place, "wellbeing", "arm", PLACE_COVS, cluster="place")
    assert effect.se_type == "CR2"
    assert (effect.n, effect.clusters, effect.term) == (300, 12, "arm")
    assert_close(effect.as_dict(), REF["place_pilot"]["cr2_bell_mccaffrey"], "CR2 estimatr")
    assert_close(effect.as_dict(), REF["place_pilot"]["clubsandwich_cr2_satterthwaite"], "CR2 club")


def test_cr1_matches_estimatr_stata(place):
    effect = estimate_effect(place, "wellbeing", "arm", PLACE_COVS, cluster="place", se="cr1")
    assert effect.se_type == "CR1" and effect.df == 11
    assert_close(effect.as_dict(), REF["place_pilot"]["cr1_stata"], "CR1")


@pytest.mark.parametrize(
    ("se", "key", "name"), [("hc2", "hc2", "HC2"), ("hc1", "hc1_stata", "HC1")]
)
def test_hc_matches_estimatr(individual, se, key, name):
    effect = estimate_effect(individual, "in_work_13wk", "arm", IND_COVS, se=se)
    assert effect.se_type == name and effect.clusters is None
    assert_close(effect.as_dict(), REF["individual_pilot"][key], name)
    auto = estimate_effect(individual, "in_work_13wk", "arm", IND_COVS)
    assert auto.se_type == "HC2"


def test_difference_in_means_matches_estimatr(individual):
    plain = difference_in_means(individual, "in_work_13wk", "arm")
    assert plain.se_type == "Standard" and plain.n == 400
    assert_close(plain.as_dict(), REF["individual_pilot"]["unadjusted_difference_in_means"], "DIM")
    blocked = difference_in_means(individual, "in_work_13wk", "arm", blocks="benefit")
    assert blocked.se_type == "Blocked"
    assert_close(blocked.as_dict(), REF["individual_pilot"]["blocked_difference_in_means"], "DIM")


# --- reference_extra.json: every coefficient ------------------------------------------


def _python_term(term: str) -> str:
    # R names a logical covariate's dummy womanTRUE and a factor treatment armkeyworker;
    # evalkit uses Python's True and keeps the treatment column's name.
    return term.replace("TRUE", "True").replace("arm_fkeyworker", "arm")


EXTRA_CASES = [
    (case, key)
    for case, spec in EXTRA.items()
    for key in ("cr2", "cr1", "hc2", "hc1", "clubsandwich_cr2")
    if key in spec
]


@pytest.mark.parametrize(("case", "key"), EXTRA_CASES)
def test_extra_reference_every_coefficient(case, key):
    spec = EXTRA[case]
    data = pd.read_csv(DATA / spec["data"])
    se = "cr2" if key == "clubsandwich_cr2" else key
    effect = estimate_effect(
        data,
        spec["outcome"],
        spec["treatment"],
        spec.get("covariates", []),
        cluster=spec["cluster"] if se.startswith("cr") else None,
        blocks=spec.get("blocks"),
        se=se,
        arms=spec.get("arms"),
    )
    table = effect.coefficients
    assert sorted(table.index) == sorted(_python_term(t) for t in spec[key])
    for term, want in spec[key].items():
        assert_close(table.loc[_python_term(term)], want, f"{case} {key} {term}")
    assert_close(effect.as_dict(), spec[key][next(t for t in spec[key] if "arm" in t)], case)


@pytest.mark.parametrize(
    ("key", "blocks", "design"),
    [
        ("difference_in_means", None, "Standard"),
        ("matched_pair_difference_in_means", "pair", "Matched-pair"),
        ("mixed_block_difference_in_means", "mixed_block", "Matched-pair"),
    ],
)
def test_extra_difference_in_means(key, blocks, design):
    spec = EXTRA["named_arms"]
    data = pd.read_csv(DATA / spec["data"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        effect = difference_in_means(data, "hours", "arm", blocks=blocks, arms=spec["arms"])
    assert effect.se_type == design
    assert (effect.control, effect.treated) == ("usual", "keyworker")
    assert_close(effect.as_dict(), spec[key], key)
    assert bool(caught) == (blocks == "mixed_block")


# --- low-rank CR2 against a brute force that forms (I - H_gg)^(-1/2) -----------------


def brute_cr2(X: np.ndarray, e: np.ndarray, clusters: np.ndarray):
    """Textbook CR2 and Bell-McCaffrey df with n_g x n_g matrices (generalised inverse root)."""
    n, k = X.shape
    M = np.linalg.inv(X.T @ X)
    H = X @ M @ X.T
    groups = [np.flatnonzero(clusters == g) for g in np.unique(clusters)]
    A = []
    for idx in groups:
        lam, vec = linalg.eigh(np.eye(len(idx)) - H[np.ix_(idx, idx)])
        inv_root = np.where(lam > 1e-10, 1 / np.sqrt(np.clip(lam, 1e-300, None)), 0.0)
        A.append((vec * inv_root) @ vec.T)
    meat = sum(
        X[idx].T @ a @ np.outer(e[idx], e[idx]) @ a @ X[idx]
        for idx, a in zip(groups, A, strict=True)
    )
    V = M @ meat @ M
    I_H = np.eye(n) - H
    df = []
    for j in range(k):
        c = np.zeros(k)
        c[j] = 1
        cols = []
        for idx, a in zip(groups, A, strict=True):
            g_col = np.zeros(n)
            g_col[idx] = a @ X[idx] @ M @ c
            cols.append(I_H @ g_col)
        Gm = np.column_stack(cols)
        lam = np.linalg.eigvalsh(Gm.T @ Gm)
        df.append(lam.sum() ** 2 / (lam**2).sum())
    return V, np.array(df)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_low_rank_cr2_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    G = int(rng.integers(4, 9))
    sizes = rng.integers(1, 15, G)
    sizes[0] = 1  # a cluster of one person
    clusters = np.repeat(np.arange(G), sizes)
    rng.shuffle(clusters)  # clusters need not be contiguous
    n = clusters.size
    treated = rng.permutation(np.r_[np.ones(G // 2), np.zeros(G - G // 2)])
    X = np.column_stack(
        [np.ones(n), treated[clusters], rng.normal(size=n), rng.integers(0, 3, n) == 1]
    ).astype(float)
    if seed % 2:  # a place-level dummy only one place has: I - H_gg is singular there
        X = np.column_stack([X, (clusters == 1).astype(float)])
    y = rng.normal(size=n) + rng.normal(size=G)[clusters]
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    e = y - X @ beta
    M = np.linalg.inv(X.T @ X)
    V, df = CR2().cov(X, e, M, clusters)
    V_ref, df_ref = brute_cr2(X, e, clusters)
    np.testing.assert_allclose(V, V_ref, rtol=1e-9, atol=1e-12 * np.abs(V_ref).max())
    np.testing.assert_allclose(df, df_ref, rtol=1e-9)


def test_estimators_share_one_interface(place):
    X = np.column_stack([np.ones(len(place)), place[["arm", *PLACE_COVS]].to_numpy(float)])
    y = place["wellbeing"].to_numpy()
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    e = y - X @ beta
    M = np.linalg.inv(X.T @ X)
    codes = pd.factorize(place["place"])[0]
    for estimator, clusters in ((HC2(), None), (HC1(), None), (CR2(), codes), (CR1(), codes)):
        V, df = estimator.cov(X, e, M, clusters)
        assert V.shape == (5, 5) and df.shape == (5,)
        np.testing.assert_allclose(V, V.T, rtol=1e-12)
    want = REF["place_pilot"]["cr2_bell_mccaffrey"]
    V, df = CR2().cov(X, e, M, place["place"].to_numpy())  # labels work too
    assert rel_err(np.sqrt(V[1, 1]), want["std_error"]) < RTOL
    assert rel_err(df[1], want["df"]) < RTOL
    with pytest.raises(ValueError, match="need clusters"):
        CR2().cov(X, e, M, None)


# --- design handling ------------------------------------------------------------------


def test_categorical_dummies_use_first_level_or_categorical_order(individual):
    base = estimate_effect(individual, "in_work_13wk", "arm", IND_COVS)
    assert list(base.coefficients.index) == [
        "(Intercept)", "arm", "age", "prior_work_years", "benefitJSA", "benefitUC",
    ]  # fmt: skip
    manual = individual.assign(
        benefitJSA=(individual.benefit == "JSA").astype(float),
        benefitUC=(individual.benefit == "UC").astype(float),
    )
    by_hand = estimate_effect(
        manual, "in_work_13wk", "arm", ["age", "prior_work_years", "benefitJSA", "benefitUC"]
    )
    pd.testing.assert_frame_equal(base.coefficients, by_hand.coefficients, rtol=1e-12)
    reordered = individual.assign(
        benefit=pd.Categorical(individual.benefit, categories=["UC", "ESA", "JSA"])
    )
    other = estimate_effect(reordered, "in_work_13wk", "arm", IND_COVS)
    assert "benefitESA" in other.coefficients.index and "benefitUC" not in other.coefficients.index
    assert rel_err(other.estimate, base.estimate) < 1e-10
    assert rel_err(other.std_error, base.std_error) < 1e-10
    assert (
        rel_err(
            other.coefficients.loc["benefitESA", "estimate"],
            -base.coefficients.loc["benefitUC", "estimate"],
        )
        < 1e-10
    )


def test_boolean_treatment_and_covariate(place):
    flagged = place.assign(arm=place.arm.astype(bool), esa=place.esa.astype(bool))
    effect = estimate_effect(flagged, "wellbeing", "arm", PLACE_COVS, cluster="place")
    assert "esaTrue" in effect.coefficients.index
    assert_close(effect.as_dict(), REF["place_pilot"]["cr2_bell_mccaffrey"], "boolean")


def test_arm_names(individual):
    named = individual.assign(arm=np.where(individual.arm == 1, "keyworker", "usual"))
    given = estimate_effect(named, "in_work_13wk", "arm", IND_COVS, arms=["usual", "keyworker"])
    assert (given.control, given.treated) == ("usual", "keyworker")
    assert_close(given.as_dict(), REF["individual_pilot"]["hc2"], "named arms")
    default = estimate_effect(named, "in_work_13wk", "arm", IND_COVS)  # sorted: keyworker first
    assert (default.control, default.treated) == ("keyworker", "usual")
    assert rel_err(default.estimate, -given.estimate) < 1e-10
    assert rel_err(default.std_error, given.std_error) < 1e-10


def test_rows_with_missing_values_are_dropped(place):
    holes = place.copy()
    holes.loc[[3, 50], "wellbeing"] = np.nan
    holes.loc[[7], "age"] = np.nan
    holes.loc[[120], "place"] = None
    holes.loc[[200], "arm"] = np.nan
    effect = estimate_effect(holes, "wellbeing", "arm", PLACE_COVS, cluster="place")
    assert effect.n == 295
    kept = place.drop(index=[3, 50, 7, 120, 200])
    same = estimate_effect(kept, "wellbeing", "arm", PLACE_COVS, cluster="place")
    assert effect.as_dict() == same.as_dict()
    dim = difference_in_means(holes, "wellbeing", "arm")
    assert dim.n == 297


def test_as_dict_is_json_ready(place):
    effect = estimate_effect(place, "wellbeing", "arm", PLACE_COVS, cluster="place")
    got = json.loads(json.dumps(effect.as_dict()))
    assert set(got) == {*SIX, "se_type", "n", "clusters", "term"}
    assert all(isinstance(got[k], float) for k in SIX)


def test_alpha_sets_interval_width(place):
    e90 = estimate_effect(place, "wellbeing", "arm", PLACE_COVS, cluster="place", alpha=0.1)
    q = stats.t.ppf(0.95, e90.df)
    assert rel_err(e90.conf_high - e90.estimate, q * e90.std_error) < 1e-12
    assert e90.alpha == 0.1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"se": "cr2"}, "needs cluster="),
        ({"se": "cr1"}, "needs cluster="),
        ({"se": "hc2", "cluster": "place"}, "ignores clustering"),
        ({"se": "CR3", "cluster": "place"}, "se must be one of"),
        ({"covariates": ["no_such_column"]}, "no column 'no_such_column'"),
        ({"covariates": ["age", "age_again"]}, "age_again is constant or collinear"),
        ({"alpha": 1.5}, "alpha must be between 0 and 1"),
        ({"cluster": "district"}, "one cluster only"),
    ],
)
def test_bad_inputs_raise_clear_errors(place, kwargs, message):
    data = place.assign(age_again=place.age, district="Hackney")
    with pytest.raises(ValueError, match=message):
        estimate_effect(data, "wellbeing", "arm", **kwargs)


def test_treatment_with_three_arms_is_refused(individual):
    three = individual.assign(arm=np.resize(["usual", "keyworker", "peer support"], 400))
    with pytest.raises(ValueError, match="3 arms \\(keyworker, peer support, usual\\)"):
        estimate_effect(three, "in_work_13wk", "arm", IND_COVS)
    with pytest.raises(ValueError, match="arms peer support besides usual and keyworker"):
        estimate_effect(three, "in_work_13wk", "arm", arms=["usual", "keyworker"])
    with pytest.raises(ValueError, match="3 arms"):
        difference_in_means(three, "in_work_13wk", "arm")
    with pytest.raises(ValueError, match="arms must name two arms"):
        estimate_effect(three, "in_work_13wk", "arm", arms=["usual", "keyworker", "peer support"])
    only_one = individual.assign(arm=0)
    with pytest.raises(ValueError, match="one arm only"):
        estimate_effect(only_one, "in_work_13wk", "arm")


# --- simulated pilots -----------------------------------------------------------------


def test_cr2_holds_its_size_with_eight_places_where_cr1_does_not():
    """8 places of very unequal size, ICC 0.05, no effect: CR2 with Bell-McCaffrey df rejects
    at about the nominal 5%; CR1 on G - 1 df rejects about three times as often."""
    rng = np.random.default_rng(20240611)
    sizes = np.array([5, 10, 20, 40, 60, 80, 100, 150])
    place = np.repeat(np.arange(8), sizes)
    n, sims = place.size, 2000
    reject = {"cr2": 0, "cr1": 0}
    for _ in range(sims):
        treated = rng.permutation(np.repeat([0, 1], 4))
        x = rng.normal(size=n)
        y = rng.normal(0, np.sqrt(0.05), 8)[place] + rng.normal(0, np.sqrt(0.95), n) + 0.3 * x
        data = pd.DataFrame({"y": y, "arm": treated[place], "x": x, "place": place})
        for se in reject:
            effect = estimate_effect(data, "y", "arm", ["x"], cluster="place", se=se)
            reject[se] += effect.p_value < 0.05
    rate = {se: count / sims for se, count in reject.items()}
    assert 0.03 <= rate["cr2"] <= 0.07, rate
    assert rate["cr1"] >= rate["cr2"] + 0.05, rate


def test_cr2_intervals_cover_the_true_effect():
    """12 places, a binary outcome (so errors are heteroskedastic) with place effects and a
    true effect of 0.1 on the probability scale: 95% CR2 intervals cover 0.1 often enough."""
    rng = np.random.default_rng(20240612)
    sizes = np.array([8, 12, 15, 18, 20, 22, 25, 28, 30, 35, 40, 47])
    place = np.repeat(np.arange(12), sizes)
    n, sims, effect_size = place.size, 2000, 0.1
    covered = 0
    for _ in range(sims):
        treated = rng.permutation(np.repeat([0, 1], 6))[place]
        prob = 0.3 + rng.uniform(-0.1, 0.1, 12)[place] + effect_size * treated
        data = pd.DataFrame({"y": rng.random(n) < prob, "arm": treated, "place": place})
        effect = estimate_effect(data, "y", "arm", cluster="place")
        covered += effect.conf_low <= effect_size <= effect.conf_high
    assert covered / sims >= 0.93, covered / sims
