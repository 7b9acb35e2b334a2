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


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    keys = str(tmp_path_factory.mktemp("keys"))
    target = tmp_path_factory.mktemp("d") / "demo"
    res = CliRunner(env={"EVALKIT_KEY_DIR": keys}).invoke(
        cli, ["demo", "--dir", str(target)], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    return SimpleNamespace(root=target, keys=keys)


def analyse(demo, pilot, *extra, ok=0):
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
        assert all(m["conf_low"] < m["estimate"] < m["conf_high"] for m in models.values())
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


def test_registered_models_not_built_are_named_not_hidden():
    from evalkit.analysis import _not_run
    from evalkit.protocol_file import parse_protocol
    from tests.conftest import REPO

    text = (REPO / "protocols" / "hackney-estates.yaml").read_text()
    assert "    - outcome: crisis_contacts\n      model: ols" in text
    p, _ = parse_protocol(
        text.replace(
            "    - outcome: crisis_contacts\n      model: ols",
            "    - outcome: crisis_contacts\n      model: poisson",
        ),
        "x",
    )
    not_run = _not_run(p)
    assert any(item.startswith("crisis_contacts: the registered poisson model") for item in not_run)
    assert not any("subgroup" in item for item in not_run)  # built now


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
    assert "not recorded for 1 people" in cace(p, rows)["not_estimable"]


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
