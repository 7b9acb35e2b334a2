"""`evalkit analyse` runs the registered plan on every demo pilot and writes results.json;
the numbers in it are the ones the estimators give on the exported analysis data."""

from __future__ import annotations

import json
from datetime import date
from types import SimpleNamespace

import pandas as pd
import pytest
from click.testing import CliRunner

from cli import cli
from evalkit.estimators import estimate_effect
from evalkit.protocol_file import load_protocol
from evalkit.results import check_results
from evalkit.store import Store
from evalkit.tracking import track
from tests.conftest import DEMO_DAY, demo_keys, run_demo, travel


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    target = tmp_path_factory.mktemp("d") / "demo"
    res = run_demo(target)
    assert res.exit_code == 0, res.output
    return SimpleNamespace(root=target, keys=str(demo_keys(target)))


def analyse(demo, pilot, *extra, ok=0):
    with travel(DEMO_DAY):
        res = CliRunner(env={"EVALKIT_KEY_DIR": demo.keys}).invoke(
            cli, ["--workspace", str(demo.root), "analyse", pilot, *extra], catch_exceptions=False
        )
    assert res.exit_code == ok, res.output
    return res.output


@pytest.mark.parametrize(
    ("pilot", "se", "ri"),
    [
        ("demo-keyworker", "HC2", "permuted blocks"),
        ("demo-estates", "CR2", "all 256 splits of the 8 pairs"),
        ("demo-front-door", "CR2", "stepped wedge: all 90 orders"),
    ],
)
def test_results_match_the_estimators_on_the_exported_data(demo, pilot, se, ri):
    out = analyse(demo, pilot)
    assert f"wrote {demo.root / 'analyses' / pilot / 'results.json'}" in out
    results = json.loads((demo.root / "analyses" / pilot / "results.json").read_text())
    check_results(results)
    assert results["exploratory"] is False and results["deviations"] == []
    protocol, _ = load_protocol(demo.root / "protocols" / f"{pilot}.yaml")
    store = Store.open(f"sqlite:///{demo.root / 'evalkit.db'}")
    rows = track(store, protocol, date.fromisoformat(results["as_of"])).dataset.rows
    store.close()
    frame = pd.DataFrame(rows)
    primary = protocol.primary.name
    frame = frame[frame[f"{primary}_status"] == "observed"].copy()
    covariates = list(protocol.analysis.covariates)
    if protocol.design.method == "stepped_wedge":
        frame["period"] = frame["period"].astype(str)
        covariates.append("period")
    cluster = "place" if protocol.unit.level == "place" else None
    arms = [a.name for a in protocol.arms]
    direct = estimate_effect(
        frame, primary, "arm", covariates, cluster, None, "auto", 0.05, arms
    ).as_dict()
    got = results["primary"]["effect"]
    for k in ("estimate", "std_error", "df", "p_value", "conf_low", "conf_high"):
        assert got[k] == pytest.approx(direct[k], rel=1e-12), k
    assert got["se_type"] == se
    ri_result = results["primary"]["randomisation_inference"]
    assert ri_result["design"].startswith(ri)
    assert 0 < ri_result["p_value"] <= 1
    means = results["primary"]["means"]
    for arm in arms:
        assert means[arm] == pytest.approx(frame.loc[frame["arm"] == arm, primary].mean())
    assert results["consort"]["randomised"] == len(rows)
    assert results["provenance"]["log_head"] and results["provenance"]["data_vintage"]
    md = results["primary"]["missing_data"]
    assert md["method"] == "multiple imputation" and md["missing"] == 0
    assert md["estimate"] == pytest.approx(got["estimate"], rel=1e-12)  # nothing to impute
    if protocol.design.method == "stepped_wedge":
        models = results["primary"]["stepped_wedge_models"]
        assert set(models) == {"mixed", "fixed"}
        assert models["fixed"]["conf_low"] < models["fixed"]["estimate"]
        assert models["fixed"]["estimate"] < models["fixed"]["conf_high"]
        mixed = models["mixed"]
        if mixed["std_error"] is None:
            # some allocations leave the place variance at its boundary: statsmodels then
            # has no standard error, and results.json says so instead of inventing one
            assert mixed["conf_low"] is None and mixed["conf_high"] is None
            assert mixed["p_value"] is None and mixed["warnings"]
        else:
            assert mixed["conf_low"] < mixed["estimate"] < mixed["conf_high"]
    assert results["not_run"] == []
    secondary = [s for s in results["secondary"] if s["effect"]]
    assert all(s["adjusted_p_value"] >= s["effect"]["p_value"] for s in secondary)


def test_rerunning_gives_the_same_file(demo):
    analyse(demo, "demo-estates")
    first = (demo.root / "analyses" / "demo-estates" / "results.json").read_text()
    analyse(demo, "demo-estates")
    assert (demo.root / "analyses" / "demo-estates" / "results.json").read_text() == first


def test_a_changed_protocol_is_refused_unless_exploratory(demo):
    path = demo.root / "protocols" / "demo-keyworker.yaml"
    original = path.read_text()
    try:
        path.write_text(
            original.replace(
                "covariates: [age, benefit, months_unemployed, referral_route]", "covariates: [age]"
            )
        )
        refused = analyse(demo, "demo-keyworker", ok=1)
        assert "analysis.covariates" in refused
        out = analyse(demo, "demo-keyworker", "--exploratory")
        assert out.startswith("EXPLORATORY")
        results = json.loads(
            (demo.root / "analyses" / "demo-keyworker" / "results.json").read_text()
        )
        assert results["exploratory"] is True
        assert any("analysis.covariates" in d for d in results["deviations"])
    finally:
        path.write_text(original)


def _observed(demo, pilot: str, outcome: str, as_of: str) -> tuple:
    """The analysed people for one outcome, straight from the store, and the protocol."""
    protocol, _ = load_protocol(demo.root / "protocols" / f"{pilot}.yaml")
    store = Store.open(f"sqlite:///{demo.root / 'evalkit.db'}")
    rows = track(store, protocol, date.fromisoformat(as_of)).dataset.rows
    store.close()
    frame = pd.DataFrame(rows)
    frame = frame[frame[f"{outcome}_status"] == "observed"].copy()
    frame[outcome] = frame[outcome].astype(float)
    return protocol, frame


@pytest.mark.parametrize(
    ("pilot", "outcome", "before", "model"),
    [
        ("demo-estates", "crisis_contacts", "ols", "negative_binomial"),
        ("demo-estates", "in_work_13wk", "linear_probability", "logistic"),
        ("demo-keyworker", "in_work_13wk", "linear_probability", "logistic"),
    ],
)
def test_a_registered_ratio_model_is_fitted_as_registered(demo, pilot, outcome, before, model):
    import numpy as np
    import statsmodels.api as sm

    path = demo.root / "protocols" / f"{pilot}.yaml"
    original = path.read_text()
    text = f"    - outcome: {outcome}\n      model: {before}"
    assert text in original
    try:
        path.write_text(original.replace(text, f"    - outcome: {outcome}\n      model: {model}"))
        analyse(demo, pilot, "--exploratory")
        results = json.loads((demo.root / "analyses" / pilot / "results.json").read_text())
        check_results(results)
    finally:
        path.write_text(original)
        analyse(demo, pilot)
    r = next(x for x in [results["primary"], *results["secondary"]] if x["outcome"] == outcome)
    assert r["model"] == model and r["primary_analysis"] == "registered_model"
    assert results["not_run"] == []
    got = r["registered_model"]
    protocol, frame = _observed(demo, pilot, outcome, results["as_of"])
    # an independent fit: statsmodels' own formula interface on the analysed people
    covs = " + ".join(f"C({c})" if frame[c].dtype == object else c for c in r["covariates"])
    frame["treated"] = (frame["arm"] == protocol.arms[1].name).astype(int)
    place = protocol.unit.level == "place"
    import statsmodels.formula.api as smf

    formula = f"{outcome} ~ treated + {covs}"
    if model == "logistic":
        family = sm.families.Binomial()
    else:
        # without overdispersion (score of Cameron and Trivedi not positive) the dispersion's
        # maximum is at 0, where the negative binomial is the Poisson model
        poisson = smf.glm(formula, frame, family=sm.families.Poisson()).fit()
        y, mu = frame[outcome].to_numpy(), poisson.fittedvalues.to_numpy()
        if ((y - mu) ** 2 - y).sum() <= 0:
            assert got["dispersion"] == 0.0 and "boundary 0" in got["note"]
            family = sm.families.Poisson()
        else:
            nb = smf.negativebinomial(formula, frame).fit(disp=0, method="nm", maxiter=5000)
            nb = smf.negativebinomial(formula, frame).fit(
                start_params=nb.params, disp=0, maxiter=200
            )
            assert got["dispersion"] == pytest.approx(nb.params["alpha"], rel=1e-3)
            family = sm.families.NegativeBinomial(alpha=got["dispersion"])
    glm = smf.glm(formula, frame, family=family)
    fit = (
        glm.fit(cov_type="cluster", cov_kwds={"groups": frame["place"]}, use_t=True)
        if place
        else glm.fit(cov_type="HC0")
    )
    assert got["estimate"] == pytest.approx(np.exp(fit.params["treated"]), rel=1e-6)
    assert got["n"] == len(frame) == r["effect"]["n"]
    if model == "logistic":  # canonical link: statsmodels' robust covariance is the same
        assert got["log_std_error"] == pytest.approx(fit.bse["treated"], rel=1e-6)
        assert got["p_value"] == pytest.approx(fit.pvalues["treated"], rel=1e-5)
    assert got["df"] == (results["primary"]["effect"]["clusters"] - 1 if place else None)
    assert got["se_type"] == ("CR1" if place else "HC0")
    assert got["conf_low"] < got["estimate"] < got["conf_high"]
    # the linear model's difference stays beside it, on the natural scale
    assert r["effect"]["scale"].startswith("difference in")
    if not r["primary"]:
        assert r["adjusted_from"] == "registered_model"
        assert r["adjusted_p_value"] >= got["p_value"]


def test_a_registered_model_that_cannot_be_fitted_is_named():
    from evalkit.analysis import _not_run

    fitted = {"outcome": "a", "model": "poisson", "primary_analysis": "registered_model"}
    assert _not_run([{**fitted, "registered_model": {"estimate": 1.2}}]) == []
    failed = {**fitted, "registered_model": {"not_estimable": "separation"}}
    assert _not_run([failed]) == [
        "a: the registered poisson model could not be fitted (separation); the linear "
        "model's difference is reported"
    ]
    linear = {"outcome": "b", "model": "ols", "primary_analysis": "effect"}
    assert _not_run([{**linear, "registered_model": None}]) == []


def test_every_demo_results_file_validates_against_the_packaged_schema(demo):
    from importlib import resources

    from jsonschema import Draft202012Validator

    schema = json.loads(resources.files("evalkit").joinpath("results.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    validator = Draft202012Validator(schema)
    for pilot in ("demo-keyworker", "demo-estates", "demo-front-door"):
        analyse(demo, pilot)
        results = json.loads((demo.root / "analyses" / pilot / "results.json").read_text())
        assert list(validator.iter_errors(results)) == [], pilot
        assert results["schema_version"] == schema["properties"]["schema_version"]["const"]


def _documented(node, where="") -> list[str]:
    """Paths of schema properties that have no description."""
    missing = []
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub and "$ref" not in sub:
                missing.append(f"{where}.{name}")
        for key, sub in node.items():
            missing += _documented(sub, f"{where}.{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            missing += _documented(sub, f"{where}[{i}]")
    return missing


def test_every_field_of_the_schema_is_described():
    from evalkit.results import schema

    assert _documented(schema()) == []


def test_a_broken_results_file_fails_with_a_clear_message(demo):
    import copy

    analyse(demo, "demo-estates")
    good = json.loads((demo.root / "analyses" / "demo-estates" / "results.json").read_text())
    check_results(good)
    broken = copy.deepcopy(good)
    del broken["primary"]["effect"]["p_value"]
    broken["attrition"]["overall_percent"] = "none"
    broken["balance"][0]["surprise"] = 1
    with pytest.raises(ValueError) as err:
        check_results(broken)
    message = str(err.value)
    assert message.startswith("results.json does not follow its schema 1.1: ")
    assert "results.attrition.overall_percent: 'none' is not of type 'number'" in message
    assert "results.balance[0]: Additional properties are not allowed ('surprise'" in message
    assert "results.primary" in message and "'p_value' is a required property" in message
    missing = copy.deepcopy(good)
    del missing["registration"]
    with pytest.raises(ValueError, match="'registration' is a required property"):
        check_results(missing)


def test_registration_and_protocol_are_carried_into_results(demo):
    from evalkit.protocol import Protocol
    from evalkit.registration import history

    analyse(demo, "demo-estates")
    results = json.loads((demo.root / "analyses" / "demo-estates" / "results.json").read_text())
    store = Store.open(f"sqlite:///{demo.root / 'evalkit.db'}")
    rows = history(store, "demo-estates")
    canonical = json.loads(store.versions("demo-estates")[-1].canonical)
    store.close()
    reg = results["registration"]
    assert reg["version"] == rows[-1]["number"] == results["provenance"]["registered_version"]
    assert reg["hash"] == rows[-1]["hash"] == results["provenance"]["protocol_hash"]
    assert reg["registered_at"] == rows[0]["registered_at"]
    assert reg["registered_by"] == rows[0]["registered_by"] == "evalkit demo"
    assert reg["amendments"] == []
    protocol = results["protocol"]
    assert Protocol.model_validate(protocol) == Protocol.model_validate(canonical)
    assert protocol["reporting"]["suppression_threshold"] == 10
    assert protocol["population"]["description"] and protocol["hypotheses"]
    assert "iteration_of" in protocol and isinstance(protocol["answers"], list)


def test_registration_lists_amendments_with_their_changes():
    from evalkit.results import registration

    rows = [
        {
            "number": 1,
            "protocol_version": "1.0",
            "hash": "a" * 64,
            "registered_at": "2026-01-01T10:00:00Z",
            "registered_by": "Ana",
            "reason": None,
            "changes": [],
        },
        {
            "number": 2,
            "protocol_version": "1.1",
            "hash": "b" * 64,
            "registered_at": "2026-02-01T10:00:00Z",
            "registered_by": "Ben",
            "reason": "GP referrals added",
            "changes": [
                {"path": "title", "kind": "changed", "old": "A", "new": "B"},
                {"path": "answers[1]", "kind": "added", "new": "6d"},
            ],
        },
    ]
    reg = registration(rows, 2)
    assert reg["version"] == 2 and reg["hash"] == "b" * 64
    assert (reg["registered_at"], reg["registered_by"]) == ("2026-01-01T10:00:00Z", "Ana")
    assert reg["version_registered_at"] == "2026-02-01T10:00:00Z"
    assert reg["amendments"] == [
        {
            "version": 2,
            "protocol_version": "1.1",
            "hash": "b" * 64,
            "at": "2026-02-01T10:00:00Z",
            "by": "Ben",
            "reason": "GP referrals added",
            "changes": [
                {"field": "title", "kind": "changed", "before": "A", "after": "B"},
                {"field": "answers[1]", "kind": "added", "before": None, "after": "6d"},
            ],
        }
    ]
    assert registration(rows, 1)["hash"] == "a" * 64
    with pytest.raises(ValueError, match="version 3"):
        registration(rows, 3)


def _rows(n: int, seed: int, effect_by_level: dict[str, float], compliance: float):
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        treated = i % 2
        level = list(effect_by_level)[
            i % len(effect_by_level) if i % 4 < 2 else (i // 4) % len(effect_by_level)
        ]
        started = bool(rng.random() < compliance) if treated else None
        y = rng.normal(0, 1) + (effect_by_level[level] if treated and started else 0.0)
        rows.append(
            {
                "unit": f"u{i}",
                "arm": "keyworker" if treated else "usual",
                "benefit": level,
                "age": int(rng.integers(20, 60)),
                "wellbeing": y,
                "wellbeing_status": "observed",
                "started": started,
            }
        )
    return rows


def _protocol(covariates: str):
    from evalkit.protocol_file import parse_protocol
    from tests.conftest import REPO

    text = (REPO / "protocols" / "hackney-keyworker.yaml").read_text()
    text = text.replace(
        "  covariates: [age, benefit, months_unemployed, referral_route]",
        f"  covariates: [{covariates}]",
    )
    text = text.replace("    primary: true\n    type: binary", "    type: binary", 1)
    text = text.replace("  - name: wellbeing\n", "  - name: wellbeing\n    primary: true\n", 1)
    text = text.replace("    - outcome: in_work_13wk\n      model: linear_probability\n", "")
    text = text.replace("  models:\n  covariates", "  covariates")
    text = text.replace(
        "  baseline_rate: 0.12       # 12 in 100 with usual support\n", "  baseline_sd: 8\n"
    )
    return parse_protocol(text, "x")[0]


def test_cace_without_covariates_is_the_wald_ratio():
    import numpy as np

    from evalkit.analysis import cace
    from evalkit.estimators import estimate_effect

    p = _protocol("")
    rows = _rows(400, 1, {"ESA": 0.5}, compliance=0.6)
    got = cace(p, rows)
    frame = pd.DataFrame(rows)
    itt = estimate_effect(
        frame, "wellbeing", "arm", [], None, None, "hc2", 0.05, ["usual", "keyworker"]
    ).estimate
    rate = np.mean([r["started"] for r in rows if r["arm"] == "keyworker"])
    assert got["compliance_rate"] == pytest.approx(rate)
    assert got["estimate"] == pytest.approx(itt / rate, rel=1e-10)
    assert got["conf_low"] < got["estimate"] < got["conf_high"]
    rows[1]["started"] = None
    assert (
        "is not recorded for everyone analysed in the keyworker arm"
        in cace(p, rows)["not_estimable"]
    )


def test_subgroups_give_per_level_effects_and_an_interaction_test():
    from evalkit.analysis import subgroup_effects
    from evalkit.estimators import estimate_effect

    p = _protocol("age")
    rows = _rows(800, 2, {"ESA": 0.0, "UC": 1.5}, compliance=1.0)
    got = subgroup_effects(p, rows, "benefit")
    frame = pd.DataFrame(rows)
    for level in got["levels"]:
        part = frame[frame["benefit"] == level["level"]]
        direct = estimate_effect(
            part, "wellbeing", "arm", ["age"], None, None, "auto", 0.05, ["usual", "keyworker"]
        )
        assert level["effect"]["estimate"] == pytest.approx(direct.estimate, rel=1e-12)
    assert got["interaction_p_value"] < 1e-6  # 0 against 1.5 SD
    assert got["underpowered"] is (got["interaction_detectable"] > 3)  # the MID is 3
    same = subgroup_effects(p, _rows(800, 3, {"ESA": 0.5, "UC": 0.5}, 1.0), "benefit")
    assert same["interaction_p_value"] > 0.001


def test_a_pilot_with_three_arms_is_refused_not_analysed_as_two():
    """Two-arm analysis only: a third arm must never be folded into the comparison."""
    from datetime import date as _date

    from evalkit.analysis import analyse as analyse_plan
    from evalkit.protocol_file import load_protocol
    from tests.conftest import REPO

    p, _ = load_protocol(REPO / "protocols" / "hackney-keyworker.yaml")
    third = p.arms[1].model_copy(update={"name": "keyworker_plus", "label": "Key worker plus"})
    p3 = p.model_copy(update={"arms": [*p.arms, third]})
    with pytest.raises(ValueError, match="more than two arms is not built yet"):
        analyse_plan(p3, [], [], {}, 0, _date(2026, 1, 1), [], {}, {}, {})
