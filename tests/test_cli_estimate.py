"""`evalkit estimate` as an analyst runs it: the six numbers match R, exploratory label,
randomisation inference and the wild bootstrap on request, clear errors."""

from __future__ import annotations

import json
import random

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


# --- which arm is the comparison (issue 11) ---------------------------------------------


def _on(cli_in, day):
    import time_machine

    def _run(*args: str, ok: int = 0):
        with time_machine.travel(day, tick=False):
            return cli_in(*args, ok=ok)

    return _run


def _pilot_with_wellbeing(cli_in, blinded: bool = False):
    """A pilot enrolled on 2 April 2027 whose key-worker arm scores 5 points higher on
    wellbeing a year later; returns its analysis export as the user writes it."""
    import csv as csv_
    from datetime import UTC, datetime

    from tests.pilots import referral, write_csv

    start = _on(cli_in, datetime(2027, 4, 2, 10, tzinfo=UTC))
    later = _on(cli_in, datetime(2028, 5, 1, 10, tzinfo=UTC))
    start("init", "kw-pilot")
    if blinded:
        path = cli_in.ws / "protocols" / "kw-pilot.yaml"
        path.write_text(path.read_text().replace("blinded: false", "blinded: true"))
    start("register", "kw-pilot")
    rnd = random.Random(11)
    rows = [{"id": f"NI{i}", **referral(rnd)} for i in range(24)]
    res = start("allocate", "kw-pilot", str(write_csv(cli_in.tmp / "l.csv", rows)), "--json")
    arms = {r["row"]: r["arm"] for r in json.loads(res.output)["rows"]}
    survey = [
        {
            "id": f"NI{i}",
            "wemwbs": str(45 + 5 * (arms[i + 2] == "keyworker") + i % 3),
            "survey_date": "2028-04-02",
        }
        for i in range(24)
    ]
    later("outcomes", "import", "kw-pilot", str(write_csv(cli_in.tmp / "s.csv", survey)),
          "--source", "survey")  # fmt: skip
    out = cli_in.tmp / "analysis.csv"
    later("export", "kw-pilot", "--what", "analysis", "--out", str(out))
    with out.open() as fh:
        return out, list(csv_.DictReader(fh))


def test_estimate_on_an_export_uses_the_pilots_comparison_arm(cli_in):
    path, rows = _pilot_with_wellbeing(cli_in)
    assert {r["comparison_arm"] for r in rows} == {"usual"}
    assert {r["arm"] for r in rows} == {"usual", "keyworker"}  # "keyworker" sorts first
    args = ["estimate", str(path), "--outcome", "wellbeing", "--treatment", "arm"]
    data = json.loads(run(*args, "--json"))
    assert data["treated"] == "keyworker" and data["compared_with"] == "usual"
    assert data["comparison_from"] == "the file's comparison_arm column"
    assert data["estimate"] == pytest.approx(5.0, abs=0.8)
    text = run(*args)
    assert "treated: keyworker, compared with usual (from the file's comparison_arm column)" in text


def test_a_blinded_export_does_not_say_which_arm_is_the_comparison(cli_in):
    _, rows = _pilot_with_wellbeing(cli_in, blinded=True)
    assert "comparison_arm" not in rows[0]
    assert {r["arm"] for r in rows} == {"Arm A", "Arm B"}


def test_two_named_arms_without_arms_are_refused_naming_both(tmp_path):
    import pandas as pd

    rows = [{"arm": "usual", "y": 1.0 + i % 2} for i in range(6)]
    rows += [{"arm": "keyworker", "y": 2.0 + i % 2} for i in range(6)]
    path = tmp_path / "mine.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    args = ["estimate", str(path), "--outcome", "y", "--treatment", "arm"]
    refused = run(*args, ok=1)
    assert refused.startswith(
        "error: --treatment arm has two arms, keyworker and usual, and the file does not "
        "say which is the comparison"
    )
    assert "hint: give --arms COMPARISON,TREATED, e.g. --arms usual,keyworker" in refused
    data = json.loads(run(*args, "--arms", "usual,keyworker", "--json"))
    assert (data["treated"], data["compared_with"]) == ("keyworker", "usual")
    assert data["comparison_from"] == "--arms" and data["estimate"] == pytest.approx(1.0)
    assert "treated: keyworker, compared with usual (from --arms)" in run(
        *args, "--arms", "usual,keyworker"
    )


def test_a_zero_one_treatment_says_which_value_is_treated():
    data = json.loads(run(*BASE, "--json"))
    assert (data["treated"], data["compared_with"]) == ("1", "0")
    assert "treated: arm = 1, compared with arm = 0" in run(*BASE)
