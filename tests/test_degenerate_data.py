"""No outcome data can stop `evalkit analyse`: every degenerate data set a small pilot can
produce gives a results.json that follows its schema and is written, with whatever cannot
be estimated saying why, and never a number that is not a real estimate.

The pilots are real (registered, people enrolled or places allocated in a store); the
outcomes of the analysis data set are then set by each test, because the point is the
data the models meet. Firth's penalised likelihood and the refitted negative binomial are
checked against R (logistf, MASS::glm.nb, sandwich) in tests/data/reference_degenerate.json,
made by tests/data/make_reference_degenerate.R; R is never needed to run these tests.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from evalkit import consort, progression
from evalkit import results as R
from evalkit.effects import binary_effects, ratio_model
from evalkit.enrolment import allocate_file, enrol
from evalkit.estimators import design_matrix
from evalkit.keys import KeyRing
from evalkit.store import Store
from evalkit.synthetic import place_values, referral_values
from evalkit.tracking import Tracking
from tests.pilots import NOW, make_pilot, referral, write_csv

DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "reference_degenerate.json").read_text())
TODAY = date(2028, 6, 1)  # every outcome of a pilot enrolled on 2027-04-02 is due


def _pilot(tmp: Path, template: str, name: str, people: int, edits=()) -> SimpleNamespace:
    store = Store.open(f"sqlite:///{tmp / 'evalkit.db'}")
    keys = KeyRing(tmp / "keys")
    pilot = make_pilot(store, keys, tmp / "ws", template, name, list(edits))
    p = pilot.protocol
    if p.unit.level == "place":
        rng = np.random.default_rng(7)
        places = write_csv(tmp / "places.csv", place_values(p, rng))
        allocate_file(store, pilot, places, NOW, "ana", "2027-04-02")
        rows = [{"id": f"P{i}", **referral_values(p, rng)} for i in range(people)]
        allocate_file(store, pilot, write_csv(tmp / "people.csv", rows), NOW, "ana", "2027-04-02")
    else:
        rnd = random.Random(3)
        for i in range(people):
            enrol(store, pilot, f"P{i}", referral(rnd), NOW, "ana", "2027-04-02")
    return SimpleNamespace(store=store, keys=keys, pilot=pilot, ws=tmp / "ws")


@pytest.fixture(scope="module")
def individual(tmp_path_factory):
    """30 people randomised one by one (the key-worker protocol; a logistic model
    registered for the primary outcome)."""
    return _pilot(
        tmp_path_factory.mktemp("ind"),
        "hackney-keyworker",
        "deg-ind",
        30,
        [("      model: linear_probability", "      model: logistic")],
    )


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """16 estates in pairs with 6 people each; negative binomial and logistic models
    registered."""
    return _pilot(
        tmp_path_factory.mktemp("est"),
        "hackney-estates",
        "deg-est",
        96,
        [
            ("      model: ols   # difference", "      model: negative_binomial   # rate"),
            ("      model: linear_probability", "      model: logistic"),
        ],
    )


def analyse_with(p: SimpleNamespace, edit, monkeypatch) -> dict:
    """Run `analyse` (evalkit.results.run: analysis, schema check, file written) with the
    analysis data set's rows changed by ``edit``."""
    real = R.track

    def track(store, protocol, today, *args, **kwargs) -> Tracking:
        t = real(store, protocol, today, *args, **kwargs)
        rows = [dict(r) for r in t.dataset.rows]
        edit(rows)
        return Tracking(
            t.entries,
            replace(t.dataset, rows=rows),
            consort.flow(protocol, t.entries, rows),
            progression.evaluate(protocol, rows),
        )

    monkeypatch.setattr(R, "track", track)
    path, results = R.run(p.store, p.keys, p.ws, p.pilot.protocol.id, TODAY, False)
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    R.check_results(json.loads(path.read_text()))
    return results


def set_outcome(rows, name: str, value_of) -> None:
    """Every row's outcome ``name`` observed, with value_of(row, index within its arm),
    or missing where that gives None."""
    seen: dict[str, int] = {}
    for r in rows:
        k = seen.get(r["arm"], 0)
        seen[r["arm"]] = k + 1
        v = value_of(r, k)
        r[name] = None if v is None else float(v)
        r[f"{name}_status"] = "missing" if v is None else "observed"


def observe_all(rows) -> None:
    """Ordinary data for every outcome of the key-worker protocol, so that each test
    changes only what it is about."""
    rng = np.random.default_rng(1)
    for name in ("in_work_13wk", "volunteering_or_training", "off_benefit"):
        set_outcome(rows, name, lambda r, k: float(rng.random() < 0.4))
    set_outcome(rows, "wellbeing", lambda r, k: float(round(rng.normal(44, 8))))


def _outcome(results: dict, name: str) -> dict:
    return next(o for o in [results["primary"], *results["secondary"]] if o["outcome"] == name)


# --- the case: zero events in one arm -----------------------------------------


def test_zero_events_in_one_arm_still_writes_schema_valid_results(individual, monkeypatch):
    """3 controls and no treated person with the outcome: the logistic odds ratio of
    maximum likelihood is infinite; the file is written with Firth's finite odds ratio,
    saying so, and the relative risk says why it is missing."""

    def edit(rows):
        observe_all(rows)
        set_outcome(rows, "in_work_13wk", lambda r, k: r["arm"] == "usual" and k < 3)

    res = analyse_with(individual, edit, monkeypatch)
    p = res["primary"]
    assert p["binary"]["events_treated"] == 0 and p["binary"]["events_control"] == 3
    assert p["effect"]["estimate"] < 0
    for ratio in (p["registered_model"], p["odds_ratio"]):
        assert ratio["method"] == "firth" and "perfect separation" in ratio["note"]
    m = p["registered_model"]
    assert 0 < m["conf_low"] < m["estimate"] < m["conf_high"] < 1e3
    assert m["se_type"] == "Firth" and 0 < m["p_value"] < 1
    assert res["not_run"] == []
    assert p["binary"]["relative_risk"] is None
    assert "no finite log-scale interval" in p["binary"]["relative_risk_not_estimable"]
    assert p["binary"]["odds_ratio"] is None and p["binary"]["odds_ratio_not_estimable"]


def test_separation_gives_firth_odds_ratio_matching_logistf():
    """Firth's penalised likelihood where maximum likelihood diverges: the estimate, its
    standard error, the profile penalised likelihood interval and the penalised
    likelihood-ratio p-value equal R's logistf (and the estimate brglm2's)."""
    from evalkit.effects import firth_logistic

    frame = pd.read_csv(DATA / REF["firth"]["data"])
    for case in ("quasi", "complete"):
        ref = REF["firth"][case]
        part = frame[frame["case"] == case]
        d = design_matrix(part, "in_work", "arm", ref["covariates"], None, None, None)
        got = firth_logistic(d.y, d.X, 1, 0.05)
        for key in ("coef", "std_error", "conf_low", "conf_high", "p_value"):
            assert got[key] == pytest.approx(ref[key], rel=1e-6), (case, key)
        assert got["coef"] == pytest.approx(ref["brglm2_coef"], rel=1e-6)
        assert abs(ref["ml_coef"]) > 15  # maximum likelihood ran off towards infinity
        model = ratio_model(d.y, d.X, "logistic")
        assert model["method"] == "firth"
        assert model["estimate"] == pytest.approx(np.exp(ref["coef"]), rel=1e-6)
        assert model["conf_low"] == pytest.approx(np.exp(ref["conf_low"]), rel=1e-6)
        assert model["conf_high"] == pytest.approx(np.exp(ref["conf_high"]), rel=1e-6)
        assert model["p_value"] == pytest.approx(ref["p_value"], rel=1e-6)


# --- the negative binomial that failed on unlucky data ------------------------------------


@pytest.mark.parametrize("dataset", ["seed11", "seed31"])
@pytest.mark.parametrize("design", ["place", "individual"])
def test_negative_binomial_that_failed_to_converge_is_refitted_from_better_starts(dataset, design):
    """Counts barely more variable than Poisson ones, on which the first Newton fit of
    the dispersion stepped below 0 ('invalid value encountered in log') and the model was
    given up: it is refitted and agrees with MASS::glm.nb, and says what was done."""
    ref = REF["negative_binomial"]
    frame = pd.read_csv(DATA / ref["data"])
    frame = frame[frame["dataset"] == dataset]
    cluster = "place" if design == "place" else None
    d = design_matrix(frame, "contacts", "arm", ref["covariates"], cluster, None, None)
    got = ratio_model(d.y, d.X, "negative_binomial", d.clusters)
    want = ref[dataset][design]
    assert 1 / got["dispersion"] == pytest.approx(want["theta"], rel=1e-6)
    for key in ("log_estimate", "log_std_error", "p_value", "estimate", "conf_low", "conf_high"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key
    assert got["refit"].startswith("the negative binomial dispersion was refitted: Newton ")
    assert "invalid value encountered in log" in got["refit"]
    assert got["refit"] in got["note"]


def test_a_negative_binomial_that_cannot_be_fitted_names_every_attempt(monkeypatch):

    ref = REF["negative_binomial"]
    frame = pd.read_csv(DATA / ref["data"])
    frame = frame[frame["dataset"] == "seed11"]
    d = design_matrix(frame, "contacts", "arm", ref["covariates"], None, None, None)

    class Broken:
        def __init__(self, *a, **k):
            pass

        def fit(self, *a, **k):
            raise np.linalg.LinAlgError("singular")

    import statsmodels.api as sm

    monkeypatch.setattr(sm, "NegativeBinomial", Broken)
    with pytest.raises(ValueError) as err:
        ratio_model(d.y, d.X, "negative_binomial")
    message = str(err.value)
    assert message.startswith("the negative binomial likelihood could not be maximised (tried ")
    for attempt in ("Newton from the Poisson", "BFGS on log a", "profile likelihood of a"):
        assert attempt in message


# --- every other degenerate data set ------------------------------------------------------


def test_zero_events_in_both_arms_is_not_estimable_with_the_reason(individual, monkeypatch):
    def edit(rows):
        observe_all(rows)
        set_outcome(rows, "in_work_13wk", lambda r, k: 0)

    p = analyse_with(individual, edit, monkeypatch)["primary"]
    assert p["effect"] is None
    assert p["not_estimable"].startswith("the outcome does not vary within the arms")


def test_all_events_in_one_arm_gives_firth_and_says_why_the_odds_ratio_is_missing(
    individual, monkeypatch
):
    def edit(rows):
        observe_all(rows)
        set_outcome(rows, "in_work_13wk", lambda r, k: r["arm"] == "keyworker" or k < 4)

    p = analyse_with(individual, edit, monkeypatch)["primary"]
    assert p["registered_model"]["method"] == "firth" and p["registered_model"]["estimate"] > 1
    assert p["binary"]["relative_risk"] > 1  # no empty cell for the relative risk
    assert p["binary"]["odds_ratio"] is None and p["binary"]["odds_ratio_not_estimable"]


def test_all_events_in_both_arms_and_an_outcome_split_by_arm_are_not_estimable(
    individual, monkeypatch
):
    for value_of in (lambda r, k: 1, lambda r, k: r["arm"] == "keyworker"):

        def edit(rows, value_of=value_of):
            observe_all(rows)
            set_outcome(rows, "in_work_13wk", value_of)

        res = analyse_with(individual, edit, monkeypatch)
        assert res["primary"]["effect"] is None
        assert "does not vary within the arms" in res["primary"]["not_estimable"]
        total = next(r for r in res["costs"]["by_agency"] if r["agency"] == "total")
        assert total["value_per_participant"] is None and total["cost_per_participant"] > 0
        assert "in_work_13wk" in res["costs"]["value_not_estimable"]
        assert res["not_run"][0].startswith("in_work_13wk: the registered logistic model")


def test_a_binary_outcome_for_two_people_per_arm_and_nearly_everyone_missing(
    individual, monkeypatch
):
    """Two people per arm observed, everyone else missing: the complete-case model runs
    on four people (the covariates that four people cannot carry are left out and
    named) and multiple imputation either runs or says why not."""

    def edit(rows):
        observe_all(rows)
        set_outcome(rows, "in_work_13wk", lambda r, k: (k % 2) if k < 2 else None)

    p = analyse_with(individual, edit, monkeypatch)["primary"]
    assert p["analysed"] == {"usual": 2, "keyworker": 2}
    dropped = {d["covariate"] for d in p.get("covariates_dropped", [])}
    assert dropped and set(p["covariates"]) | dropped == {
        "age",
        "benefit",
        "months_unemployed",
        "referral_route",
    }
    md = p["missing_data"]
    assert md["missing"] == 26
    assert md.get("not_estimable") or md["estimate"] is not None


def test_a_constant_continuous_outcome_has_no_hedges_g_and_says_why(individual, monkeypatch):
    def edit(rows):
        observe_all(rows)
        set_outcome(rows, "wellbeing", lambda r, k: 40)

    w = _outcome(analyse_with(individual, edit, monkeypatch), "wellbeing")
    assert w["effect"] is None and "does not vary within the arms" in w["not_estimable"]


def test_an_outcome_varying_in_one_arm_only_keeps_a_real_hedges_g(individual, monkeypatch):
    """A continuous outcome that varies in one arm only is not degenerate: the effect has
    a standard error and Hedges' g is a real number (the checks above must not catch it)."""

    def edit(rows):
        observe_all(rows)
        set_outcome(rows, "wellbeing", lambda r, k: 40 if r["arm"] == "usual" else 40 + k)

    w = _outcome(analyse_with(individual, edit, monkeypatch), "wellbeing")
    assert w["effect"]["std_error"] > 0 and w["hedges_g"]["g"] > 0


def test_covariates_constant_or_collinear_among_the_analysed_are_left_out_and_named(
    individual, monkeypatch
):
    routes = {"ESA": "GP", "JSA": "JCP", "UC": "self"}

    def edit(rows):
        observe_all(rows)
        for r in rows:
            r["months_unemployed"] = 60  # constant
            r["referral_route"] = routes[r["benefit"]]  # the same split as benefit

    res = analyse_with(individual, edit, monkeypatch)
    p = res["primary"]
    assert p["covariates"] == ["age", "benefit"]
    assert p["covariates_dropped"] == [
        {"covariate": "months_unemployed", "reason": "constant among the analysed people"},
        {
            "covariate": "referral_route",
            "reason": "collinear with the arm and the covariates before it among the analysed "
            "people",
        },
    ]
    assert p["effect"]["std_error"] > 0 and p["registered_model"]["estimate"] > 0


def test_a_subgroup_level_with_one_arm_only(individual, monkeypatch):
    def edit(rows):
        observe_all(rows)
        for r in rows:
            if r["benefit"] == "ESA" and r["arm"] == "keyworker":
                r["benefit"] = "JSA"

    p = analyse_with(individual, edit, monkeypatch)["primary"]
    benefit = next(s for s in p["subgroups"] if s["subgroup"] == "benefit")
    esa = next(level for level in benefit["levels"] if level["level"] == "ESA")
    assert esa["effect"] is None
    assert benefit["interaction_p_value"] is None or 0 <= benefit["interaction_p_value"] <= 1
    if benefit["interaction_p_value"] is None:
        assert benefit["not_estimable"]


def test_cace_with_nobody_starting_says_why(individual, monkeypatch):
    def edit(rows):
        observe_all(rows)
        for r in rows:
            r["started"] = False if r["arm"] == "keyworker" else None

    p = analyse_with(individual, edit, monkeypatch)["primary"]
    assert "nobody in the keyworker arm started it" in p["cace"]["not_estimable"]


def test_counts_all_zero_in_one_arm_or_everywhere_are_not_estimable(places, monkeypatch):
    """Rate ratio 0: Poisson and negative binomial separation. In a place design the
    separated logistic model is not estimable either (Firth's model cannot allow for
    clustering); the rest of the analysis is written."""
    for value_of in (lambda r, k: 0 if r["arm"] == "estate_team" else k % 3, lambda r, k: 0):

        def edit(rows, value_of=value_of):
            rng = np.random.default_rng(2)
            set_outcome(rows, "in_work_13wk", lambda r, k: r["arm"] != "estate_team" and k < 5)
            set_outcome(rows, "off_benefit", lambda r, k: float(rng.random() < 0.3))
            set_outcome(rows, "crisis_contacts", value_of)

        res = analyse_with(places, edit, monkeypatch)
        c = _outcome(res, "crisis_contacts")
        if c["effect"] is None:
            assert "does not vary within the arms" in c["not_estimable"]
        else:
            assert c["registered_model"]["not_estimable"].startswith("the counts are zero")
        primary = res["primary"]["registered_model"]
        assert "clustering by place" in primary["not_estimable"]
        assert res["primary"]["odds_ratio"]["method"] == "firth"
        assert any(n.startswith("crisis_contacts: the registered") for n in res["not_run"])
        assert any(n.startswith("in_work_13wk: the registered") for n in res["not_run"])


def test_binary_effects_say_why_a_ratio_is_missing():
    y = np.r_[np.zeros(15), np.ones(3), np.zeros(12)]
    t = np.r_[np.ones(15), np.zeros(15)]
    b = binary_effects(y, t)
    assert b["relative_risk"] is None and b["odds_ratio"] is None
    assert "0 or infinite" in b["relative_risk_not_estimable"]
    assert "zero" in b["odds_ratio_not_estimable"]
    b = binary_effects(np.r_[np.ones(4), np.zeros(11), np.ones(3), np.zeros(12)], t)
    assert b["relative_risk_not_estimable"] is None and b["odds_ratio_not_estimable"] is None
