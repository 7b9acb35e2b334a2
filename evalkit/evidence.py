"""How secure is the finding? An evidence security rating from 0 to 5 padlocks.

Modelled on the Education Endowment Foundation's padlocks ("Classifying the security of
EEF findings", 2019): the rating starts from the weakest of three ceilings (the design,
the smallest effect the pilot could detect in standard deviations, and attrition) and
loses a padlock for each threat found (imbalance at baseline, outcomes that people who
knew their arm reported, departures from the registered plan, very few places). Every
step is kept as a reason, so a reader can see why a pilot got the padlocks it did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from scipy import stats

WORDS = {
    5: "very secure",
    4: "secure",
    3: "moderately secure",
    2: "of low security",
    1: "of very low security",
    0: "not secure enough to rely on",
}

# EEF ceilings: minimum detectable effect size (standardised) and attrition (%).
MDES_CEILINGS = ((0.2, 5), (0.3, 4), (0.4, 3), (0.5, 2), (0.6, 1))
ATTRITION_CEILINGS = ((10, 5), (20, 4), (30, 3), (40, 2), (50, 1))
# Outcomes from records kept independently of the people in the pilot.
ADMINISTRATIVE = {"DWP", "HMRC", "NHS", "council"}
FEW_PLACES = 8
IMBALANCE_SMD = 0.25


def minimum_detectable_sd(primary: Mapping[str, Any], alpha: float) -> float | None:
    """The effect, in outcome standard deviations, that this analysis had 80% power to
    detect: (t_{1-alpha/2} + t_{0.8}) x standard error / SD, on the achieved df."""
    e = primary["effect"]
    if not e:
        return None
    sd = outcome_sd(primary)
    if sd is None or sd <= 0 or not e.get("std_error"):
        return None
    df = e.get("df") or math.inf
    m = stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(0.8, df)
    return float(m * e["std_error"] / sd)


def outcome_sd(primary: Mapping[str, Any]) -> float | None:
    if primary["type"] == "binary" and primary.get("binary"):
        p = primary["binary"]["control_rate"]
        return math.sqrt(p * (1 - p)) if 0 < p < 1 else None
    g = primary.get("hedges_g") or {}
    return g.get("sd_pooled")


def _ceiling(value: float, table: tuple[tuple[float, int], ...]) -> int:
    return next((padlocks for limit, padlocks in table if value < limit), 0)


def rate(results: Mapping[str, Any], withhold_attrition: bool = False) -> dict[str, Any]:
    """The rating with its reasons: {"padlocks", "words", "reasons": [...]}.

    ``withhold_attrition``: say the attrition band's effect but not the percentage, which
    times the number randomised would give a hidden count of people lost away."""
    primary = results["primary"]
    if not primary.get("effect"):
        return {
            "padlocks": 0,
            "words": WORDS[0],
            "reasons": [
                {
                    "criterion": "result",
                    "finding": "the effect on the primary outcome could not be estimated, so "
                    "there is no finding to rely on",
                    "ceiling": 0,
                }
            ],
        }
    reasons: list[dict[str, Any]] = []
    design = results["design"]
    places = primary["effect"].get("clusters")
    threshold = ((results.get("protocol") or {}).get("reporting") or {}).get(
        "suppression_threshold", 10
    )

    if design == "stepped_wedge":
        ceiling = 4
        why = (
            "places were randomised to the time they started, so the comparison also "
            "depends on adjusting for changes over time"
        )
    else:
        ceiling = 5
        why = "a randomised comparison: chance alone decided who got the new support"
    reasons.append({"criterion": "design", "finding": why, "ceiling": ceiling})

    mdes = minimum_detectable_sd(primary, results["alpha"])
    if mdes is None:
        reasons.append(
            {
                "criterion": "size",
                "finding": "the smallest detectable effect could not be worked out",
                "ceiling": None,
            }
        )
    else:
        c = _ceiling(mdes, MDES_CEILINGS)
        n = primary["effect"]["n"]
        people = f"{n:,} people" if n >= threshold else f"fewer than {threshold} people"
        size = people + (f" in {places} places" if places else "")
        reasons.append(
            {
                "criterion": "size",
                "finding": f"with {size}, the pilot could reliably detect an effect of "
                f"{mdes:.2f} standard deviations or more",
                "ceiling": c,
                "value": mdes,
            }
        )
    attrition = results["attrition"]["overall_percent"]
    reasons.append(
        {
            "criterion": "attrition",
            "finding": (
                "the share of the people randomised with no primary outcome is withheld: "
                f"it would give a count under {threshold} away"
                if withhold_attrition and attrition > 0  # 0% gives nothing away
                else f"{attrition:.0f}% of the people randomised have no primary outcome"
            ),
            "ceiling": _ceiling(attrition, ATTRITION_CEILINGS),
            "value": attrition,
        }
    )
    start = min(r["ceiling"] for r in reasons if r["ceiling"] is not None)

    deductions = []
    imbalanced = sorted(
        {
            b["variable"]
            for b in results.get("balance", [])
            if abs(b.get("smd") or 0) > IMBALANCE_SMD
        }
    )
    if imbalanced:
        deductions.append(
            (
                "balance",
                "the arms differed at referral in " + ", ".join(imbalanced) + " (by more than "
                f"{IMBALANCE_SMD} standard deviations)",
            )
        )
    if primary["source"] not in ADMINISTRATIVE:
        deductions.append(
            (
                "measurement",
                f"the primary outcome came from {primary['source']} records, reported by "
                "people who knew which support was given, not from independent records",
            )
        )
    if results.get("exploratory") or results.get("deviations"):
        deductions.append(
            ("plan", "the analysis departs from the registered plan: see the deviations")
        )
    if places is not None and places < FEW_PLACES:
        deductions.append(
            (
                "places",
                f"only {places} places took part, too few for chance to balance them",
            )
        )
    for criterion, finding in deductions:
        reasons.append({"criterion": criterion, "finding": finding, "deduction": 1})
    if not deductions:
        reasons.append(
            {
                "criterion": "threats",
                "finding": "no imbalance, departures from the plan or self-reported primary "
                "outcome found",
                "deduction": 0,
            }
        )
    padlocks = max(start - len(deductions), 0)
    return {"padlocks": padlocks, "words": WORDS[padlocks], "reasons": reasons}
