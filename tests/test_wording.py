"""The summary's headline, how-sure words, evidence rating and traffic lights, on fixed
results: the words must never be more confident than the evidence."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from scipy import stats

from evalkit import evidence, wording
from evalkit.disclosure import shown
from evalkit.effects import bayesian_reading
from evalkit.protocol import Prior


def _results(
    estimate: float,
    se: float,
    df: float = 300.0,
    *,
    mid: float = 0.07,
    direction: str = "higher_is_better",
    n: int = 400,
    clusters: int | None = None,
    ri_p: float | None = None,
    events: tuple[int, int] = (60, 40),
    attrition: float = 5.0,
    source: str = "DWP",
    design: str = "blocked",
) -> dict[str, Any]:
    """A results.json with one binary primary outcome; the Bayesian reading is the real one
    under the sceptical prior."""
    half = n // 2
    z = 1.96 if df > 1000 else {300.0: 1.9679, 7.0: 2.3646}.get(df, 1.97)
    bayes = bayesian_reading(estimate, se, Prior(), mid, direction)
    arms = [
        {"name": "usual", "label": "Usual support", "control": True},
        {"name": "keyworker", "label": "Key worker support", "control": False},
    ]
    treated_events, control_events = events
    return {
        "pilot": {"id": "p", "title": "Key worker pilot", "area": "Hackney"},
        "arms": arms,
        "alpha": 0.05,
        "design": design,
        "exploratory": False,
        "deviations": [],
        "protocol": {
            "reporting": {
                "suppression_threshold": 10,
                "audience": {"area": "Hackney", "people": "residents"},
            },
            "population": {"description": "Residents out of work for two years or more."},
            "outcomes": [{"name": "in_work", "window": {"months": 12}}],
        },
        "primary": {
            "outcome": "in_work",
            "label": "In work for 13 weeks",
            "wording": "were in paid work for at least 13 weeks within a year",
            "type": "binary",
            "primary": True,
            "direction": direction,
            "minimal_important_difference": mid,
            "source": source,
            "analysed": {"usual": half, "keyworker": half},
            "effect": {
                "estimate": estimate,
                "std_error": se,
                "df": df,
                "p_value": None,
                "conf_low": estimate - z * se,
                "conf_high": estimate + z * se,
                "n": n,
                "clusters": clusters,
                "se_type": "HC2",
            },
            "binary": {
                "n_treated": half,
                "n_control": half,
                "events_treated": treated_events,
                "events_control": control_events,
                "treated_rate": treated_events / half,
                "control_rate": control_events / half,
            },
            "bayes": bayes,
            "randomisation_inference": {"p_value": ri_p} if ri_p is not None else None,
            "wild_cluster_bootstrap": None,
            "subgroups": [],
        },
        "secondary": [],
        "balance": [],
        "attrition": {"overall_percent": attrition},
        "consort": {
            "assessed": n + 50,
            "excluded": {"total": 50, "reasons": {"Too young": 50}},
            "randomised": n,
            "places_randomised": None,
            "arms": [
                {
                    "arm": a["name"],
                    "label": a["label"],
                    "randomised": half,
                    "analysed": half,
                    "lost_to_follow_up": 0,
                    "not_yet_due": 0,
                    "withdrawn": 0,
                    "did_not_start": 0,
                    "received": None,
                }
                for a in arms
            ],
        },
        "progression": [],
        "not_run": [],
        "as_of": "2026-11-24",
        "costs": None,
        "context": [],
        "provenance": {
            "protocol_hash": "ab" * 32,
            "registered_version": 1,
            "log_head": "cd" * 32,
            "evalkit": "0.1.0",
            "data_vintage": [],
        },
    }


def test_clear_benefit_gives_very_likely_helps_with_natural_frequencies():
    # 15 in 100 with usual support; the adjusted difference of 0.15 implies 30 in 100
    r = _results(0.15, 0.04, events=(64, 30))
    h = wording.headline(r, shown(r))
    assert h["finding"] == (
        "30 in every 100 residents offered key worker support were in paid work for at "
        "least 13 weeks within a year, against 15 in every 100 with usual support."
    )
    assert h["verdict"]["phrase"] == "very likely helps"
    assert h["answer"].startswith("The answer: key worker support very likely helps, ")
    # the sceptical prior pulls 0.15 to about 0.08: P(beyond the MID of 0.07) is only 0.63
    assert h["answer"].endswith("but perhaps by less than the smallest difference that matters.")
    big = _results(0.25, 0.03, events=(80, 30))
    assert wording.headline(big, shown(big))["answer"] == (
        "The answer: key worker support very likely helps, probably by at least the "
        "smallest difference that matters."
    )


def test_null_result_says_may_help_may_not_and_never_significant():
    r = _results(0.0, 0.02)  # interval -0.04 to 0.04, below the MID of 0.07
    h = wording.headline(r, shown(r))
    assert h["verdict"]["phrase"] == "may help, may not"
    assert h["answer"] == (
        "The answer: key worker support may help, may not. Any benefit is probably smaller "
        "than the smallest difference that matters."
    )
    text = " ".join([h["answer"], *wording.how_sure(r)]).lower()
    assert "significant" not in text


def test_harmful_result_says_makes_things_worse():
    r = _results(-0.12, 0.035, events=(30, 54))
    v = wording.verdict(r["primary"], 0.05)
    assert v["phrase"] == "very likely makes things worse"
    assert wording.headline(r, shown(r))["answer"] == (
        "The answer: key worker support very likely makes things worse."
    )


def test_lower_is_better_outcome_turns_the_direction():
    r = _results(-0.12, 0.035, direction="lower_is_better")
    assert wording.verdict(r["primary"], 0.05)["phrase"] == "very likely helps"


def test_underpowered_pilot_says_it_was_too_small_to_tell():
    r = _results(0.05, 0.06)  # interval about -0.07 to 0.17: fits 0 and the MID
    v = wording.verdict(r["primary"], 0.05)
    assert v["phrase"] == "may help, may not"
    assert v["underpowered"] is True
    assert "too small to tell" in wording.headline(r, shown(r))["answer"]


def test_a_registered_check_that_disagrees_stops_very_likely():
    strong = _results(0.15, 0.04)
    assert wording.verdict(strong["primary"], 0.05)["phrase"] == "very likely helps"
    doubtful = _results(0.15, 0.04, ri_p=0.08)
    v = wording.verdict(doubtful["primary"], 0.05)
    assert v["phrase"] == "probably helps"
    assert v["notes"] == [
        "Not 'very likely' because randomisation inference did not confirm the result."
    ]


def test_bayes_alone_is_not_enough_for_very_likely_when_the_interval_includes_zero():
    r = _results(0.15, 0.04)
    p = copy.deepcopy(r["primary"])
    p["effect"]["conf_low"] = -0.001  # an interval that (just) includes no effect
    assert p["bayes"]["p_benefit"] >= 0.95
    v = wording.verdict(p, 0.05)
    assert v["phrase"] == "probably helps"
    assert "includes no effect" in v["notes"][0]


@pytest.mark.parametrize(
    ("p_benefit", "phrase"),
    [
        (0.96, "very likely helps"),
        (0.95, "very likely helps"),
        (0.94, "probably helps"),
        (0.80, "probably helps"),
        (0.79, "may help, may not"),
        (0.21, "may help, may not"),
        (0.19, "probably makes things worse"),
        (0.05, "very likely makes things worse"),
    ],
)
def test_verdict_thresholds_at_their_boundaries(p_benefit, phrase):
    r = _results(0.15, 0.04)
    p = r["primary"]
    p["bayes"] = {
        **p["bayes"],
        "p_benefit": p_benefit,
        "p_harm": 1 - p_benefit,
        "p_beyond_mid": min(p_benefit, 0.5),
    }
    if "worse" in phrase:
        p["effect"].update(conf_low=-0.3, conf_high=-0.01)
    assert wording.verdict(p, 0.05)["phrase"] == phrase


def test_small_event_counts_withhold_the_rates():
    r = _results(0.02, 0.03, events=(7, 5))
    h = wording.headline(r, shown(r))
    assert "in every 100 residents offered" not in h["finding"]
    assert h["finding"].startswith("Too few residents in one of the groups")
    assert "2 more in every 100 people" in h["finding"]


def test_rating_of_a_large_clean_trial_is_five_padlocks():
    r = _results(0.15, 0.02, n=4000, events=(600, 300))
    rating = evidence.rate(r)
    assert rating["padlocks"] == 5 and rating["words"] == "very secure"


def test_rating_falls_with_attrition_size_and_self_report():
    small = _results(0.05, 0.06, n=200)
    mdes = evidence.minimum_detectable_sd(small["primary"], 0.05)
    # (t_.975 + t_.8 on 300 df) x SE / SD at the control rate of 40 in 100
    multiplier = stats.t.ppf(0.975, 300) + stats.t.ppf(0.8, 300)
    assert multiplier == pytest.approx(1.967903 + 0.842821, abs=1e-5)  # t tables
    assert mdes == pytest.approx(multiplier * 0.06 / (0.4 * 0.6) ** 0.5, rel=1e-9)
    assert evidence.rate(small)["padlocks"] == 3  # MDES 0.34 is in [0.3, 0.4): at most 3
    lossy = _results(0.15, 0.02, n=4000, events=(600, 400), attrition=35.0)
    assert evidence.rate(lossy)["padlocks"] == 2
    survey = _results(0.15, 0.02, n=4000, events=(600, 400), source="survey")
    rated = evidence.rate(survey)
    assert rated["padlocks"] == 4
    assert any(r["criterion"] == "measurement" for r in rated["reasons"])


def test_rating_deducts_for_few_places_and_caps_stepped_wedge():
    r = _results(0.15, 0.02, n=4000, events=(600, 400), clusters=6, design="stepped_wedge", df=7.0)
    rating = evidence.rate(r)
    assert rating["padlocks"] == 3  # ceiling 4 for a stepped wedge, one off for 6 places
    assert [x["criterion"] for x in rating["reasons"] if x.get("deduction")] == ["places"]


def test_traffic_lights_carry_words_and_withhold_values_resting_on_small_counts():
    r = _results(0.15, 0.04)
    r["progression"] = [
        {
            "metric": "recruitment_per_month",
            "label": "Recruitment",
            "value": 31.6,
            "green": 40,
            "amber": 30,
            "rating": "amber",
            "words": "needs attention",
        },
        {
            "metric": "retention",
            "label": "Retention",
            "value": 0.99,
            "green": 0.85,
            "amber": 0.7,
            "rating": "green",
            "words": "on track",
        },
    ]
    r["consort"]["arms"][0]["lost_to_follow_up"] = 2
    r["consort"]["arms"][0]["analysed"] -= 2
    rows = wording.progression(r, shown(r))
    assert rows[0]["value"] == "32 a month" and rows[0]["words"] == "needs attention"
    assert rows[0]["rule"] == "green at 40 a month or more, amber from 30 a month"
    assert rows[1]["words"] == "on track"
    assert rows[1]["value"].startswith("withheld")  # 99% of 200 would reveal the 2 lost


def test_retention_is_shown_when_nobody_or_many_were_lost():
    r = _results(0.15, 0.04)
    r["progression"] = [
        {
            "metric": "retention",
            "label": "Retention",
            "value": 1.0,
            "green": 0.85,
            "amber": 0.7,
            "rating": "green",
            "words": "on track",
        },
    ]
    assert wording.progression(r, shown(r))[0]["value"] == "100%"  # zero lost is shown
    for arm in r["consort"]["arms"]:
        arm["lost_to_follow_up"], arm["analysed"] = 30, arm["analysed"] - 30
    r["progression"][0]["value"] = 0.85
    assert wording.progression(r, shown(r))[0]["value"] == "85%"


def test_no_estimate_means_no_padlocks():
    r = _results(0.15, 0.04)
    r["primary"]["effect"] = None
    rating = evidence.rate(r)
    assert rating["padlocks"] == 0 and rating["reasons"][0]["criterion"] == "result"


def test_withheld_attrition_is_never_worded_as_some_lost():
    """Attrition is withheld when a box it rests on is hidden; the rating must not then
    say that some people have no outcome when nobody was lost (seen in a generated
    pilot), and a 0% gives no count away, so it is shown."""
    r = _results(0.12, 0.19, 0.07)
    r["attrition"]["overall_percent"] = 0.0
    zero = next(
        x
        for x in evidence.rate(r, withhold_attrition=True)["reasons"]
        if x["criterion"] == "attrition"
    )
    assert zero["finding"] == "0% of the people randomised have no primary outcome"
    r["attrition"]["overall_percent"] = 12.5
    some = next(
        x
        for x in evidence.rate(r, withhold_attrition=True)["reasons"]
        if x["criterion"] == "attrition"
    )
    assert some["finding"].startswith(
        "the share of the people randomised with no primary outcome is withheld"
    )
