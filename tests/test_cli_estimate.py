"""`evalkit estimate` as an analyst runs it: the six numbers match R, exploratory label,
randomisation inference and the wild bootstrap on request, clear errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import cli
from tests.conftest import DATA

REF = json.loads((DATA / "reference.json").read_text())
PLACE = str(DATA / "place_pilot.csv")
BASE = [
    "estimate",
    PLACE,
    "--outcome",
    "wellbeing",
    "--treatment",
    "arm",
    "--covariates",
    "age,months_unemployed,esa",
    "--cluster",
    "place",
]


def run(*args: str, ok: int = 0) -> str:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert res.exit_code == ok, res.output
    assert "Traceback" not in res.output
    return res.output


@pytest.mark.parametrize(("se", "key"), [("cr2", "cr2_bell_mccaffrey"), ("cr1", "cr1_stata")])
def test_json_matches_estimatr(se, key):
    out = json.loads(run(*BASE, "--se", se, "--json"))
    ref = REF["place_pilot"][key]
    for name in ("estimate", "std_error", "df", "p_value", "conf_low", "conf_high"):
        assert out[name] == pytest.approx(ref[name], rel=1e-8), name
    assert out["se_type"] == se.upper() and out["n"] == 300 and out["clusters"] == 12
    assert out["exploratory"] is True and "not a registered analysis" in out["note"]


def test_individual_hc2_with_a_categorical_covariate():
    out = json.loads(
        run(
            "estimate",
            str(DATA / "individual_pilot.csv"),
            "--outcome",
            "in_work_13wk",
            "--treatment",
            "arm",
            "--covariates",
            "age,prior_work_years,benefit",
            "--json",
        )
    )
    ref = REF["individual_pilot"]["hc2"]
    assert out["se_type"] == "HC2" and out["clusters"] is None
    assert out["std_error"] == pytest.approx(ref["std_error"], rel=1e-8)


def test_randomisation_inference_and_wild_bootstrap_are_added():
    out = json.loads(run(*BASE, "--ri", "2000", "--wild-bootstrap", "999", "--seed", "7", "--json"))
    assert out["ri_exact"] is True and out["ri_draws"] == 924  # 12 places, 6 treated
    assert 0.05 < out["ri_p_value"] < 0.15
    assert out["wcb_conf_low"] < out["estimate"] < out["wcb_conf_high"]
    assert 0.05 < out["wcb_p_value"] < 0.15
    again = json.loads(
        run(*BASE, "--ri", "2000", "--wild-bootstrap", "999", "--seed", "7", "--json")
    )
    assert again == out  # seeded
    text = run(*BASE, "--ri", "100")
    assert "randomisation inference (sampled 100 assignments" in text
    assert text.startswith("exploratory: not a registered analysis")


def test_errors_are_one_message():
    assert "ignores clustering" in run(*BASE, "--se", "hc2", ok=1)
    assert "no column 'nope'" in run(
        "estimate", PLACE, "--outcome", "nope", "--treatment", "arm", ok=1
    )
    assert "does not exist" in run(
        "estimate", "missing.csv", "--outcome", "y", "--treatment", "t", ok=1
    )
    assert "needs --cluster" in run(
        "estimate",
        PLACE,
        "--outcome",
        "wellbeing",
        "--treatment",
        "arm",
        "--wild-bootstrap",
        "99",
        ok=1,
    )
