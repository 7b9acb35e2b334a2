"""The plain-English sentences of the scrutiny summary, worked out from results.json.

Two rules. The words are never more confident than the evidence: "very likely" needs the
Bayesian reading under the registered sceptical prior, the confidence interval and every
registered sensitivity check to agree, and "significant" is never used. And counts a
reader could use to identify someone are never printed: rates resting on a suppressed
count are replaced by the estimated difference alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evalkit.disclosure import Shown, lost_hidden, rates_hidden, recruitment_hidden, starts_hidden

HELPS = "helps"
HARMS = "makes things worse"
UNCLEAR = "may help, may not"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def arms(results: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    control = next(a for a in results["arms"] if a.get("control"))
    treated = next(a for a in results["arms"] if not a.get("control"))
    return control, treated


def _benefit_sign(outcome: Mapping[str, Any]) -> int:
    return 1 if outcome["direction"] == "higher_is_better" else -1


def amount(outcome: Mapping[str, Any], value: float) -> str:
    """A difference in words on the outcome's own scale: '7 more in every 100 people',
    '2.7 points higher', '0.31 fewer'."""
    if outcome["type"] == "binary":
        points = round(value * 100)
        if points == 0:
            return "no more and no fewer in every 100 people"
        return f"{abs(points)} {'more' if points > 0 else 'fewer'} in every 100 people"
    if outcome["type"] == "count":
        v = round(value, 2)
        return "no difference" if v == 0 else f"{abs(v):.2f} {'more' if v > 0 else 'fewer'}"
    v = round(value, 1)
    return "no difference" if v == 0 else f"{abs(v):.1f} points {'higher' if v > 0 else 'lower'}"


def mid_words(outcome: Mapping[str, Any]) -> str:
    mid = outcome["minimal_important_difference"]
    if outcome["type"] == "binary":
        return f"{mid * 100:.0f} in every 100 people"
    return f"{mid:g} points" if outcome["type"] == "continuous" else f"{mid:g}"


def _checks(outcome: Mapping[str, Any], alpha: float) -> list[tuple[str, float]]:
    """The registered sensitivity analyses that give a p-value for the primary effect."""
    out = []
    m = outcome.get("registered_model")
    if outcome.get("primary_analysis") == "registered_model" and m and "p_value" in m:
        out.append((f"the registered {m['model'].replace('_', ' ')} model", m["p_value"]))
    ri = outcome.get("randomisation_inference")
    if ri and "p_value" in ri:  # not when it could not be run (not_estimable)
        out.append(("randomisation inference", ri["p_value"]))
    wcb = outcome.get("wild_cluster_bootstrap")
    if wcb and "p_value" in wcb:
        out.append(("the wild cluster bootstrap", wcb["p_value"]))
    return out


def verdict(outcome: Mapping[str, Any], alpha: float) -> dict[str, Any]:
    """How sure we are, as one of five phrases, with the reasons for any downgrade.

    - "very likely helps": P(benefit) >= 0.95 under the sceptical prior, the interval
      excludes no effect in the helpful direction, and every registered check agrees;
    - "probably helps": P(benefit) >= 0.80 (or 0.95 with a check disagreeing);
    - the same two for "makes things worse" with P(harm);
    - otherwise "may help, may not".
    """
    if not outcome.get("effect") or not outcome.get("bayes"):
        return {
            "phrase": "cannot be told yet",
            "level": None,
            "direction": None,
            "matters": "the effect could not be estimated: "
            + str(outcome.get("not_estimable") or "see the technical report"),
            "notes": [],
            "underpowered": False,
        }
    b = outcome["bayes"]
    e = outcome["effect"]
    sign = _benefit_sign(outcome)
    low, high = sorted((sign * e["conf_low"], sign * e["conf_high"]))
    favourable, harmful = low > 0, high < 0
    disagree = [name for name, p in _checks(outcome, alpha) if p > alpha]
    notes = []
    if b["p_benefit"] >= 0.95 and favourable and not disagree:
        level, direction = "very likely", HELPS
    elif b["p_benefit"] >= 0.80:
        level, direction = "probably", HELPS
        if b["p_benefit"] >= 0.95:
            notes.append(_downgrade(favourable, disagree))
    elif b["p_harm"] >= 0.95 and harmful and not disagree:
        level, direction = "very likely", HARMS
    elif b["p_harm"] >= 0.80:
        level, direction = "probably", HARMS
        if b["p_harm"] >= 0.95:
            notes.append(_downgrade(harmful, disagree))
    else:
        level, direction = None, UNCLEAR
    phrase = direction if level is None else f"{level} {direction}"
    mid = outcome["minimal_important_difference"]
    if direction == HELPS:
        matters = (
            "probably by at least the smallest difference that matters"
            if b["p_beyond_mid"] >= 0.80
            else "but perhaps by less than the smallest difference that matters"
        )
    elif direction == HARMS:
        matters = ""
    elif low < 0 < high and high >= mid:
        matters = (
            "the pilot was too small to tell, because the result fits both no effect and "
            "an effect as large as the smallest difference that matters"
        )
    elif high < mid:
        matters = "any benefit is probably smaller than the smallest difference that matters"
    else:
        matters = ""
    return {
        "phrase": phrase,
        "level": level,
        "direction": direction,
        "matters": matters,
        "notes": [n for n in notes if n],
        "underpowered": direction == UNCLEAR and low < 0 < high and high >= mid,
    }


def _downgrade(interval_clear: bool, disagree: list[str]) -> str:
    parts = []
    if not interval_clear:
        parts.append("the 95% confidence interval includes no effect")
    if disagree:
        parts.append(" and ".join(disagree) + " did not confirm the result")
    return "Not 'very likely' because " + "; ".join(parts) + "." if parts else ""


def headline(results: Mapping[str, Any], counts: Shown) -> dict[str, Any]:
    """What was tested, for whom, what happened, and the answer."""
    control, treated = arms(results)
    p = results["primary"]
    protocol = results.get("protocol") or {}
    audience = (protocol.get("reporting") or {}).get("audience") or {}
    people = audience.get("people", "people")
    area = audience.get("area") or results["pilot"].get("area") or ""
    t_label, c_label = _lower_first(treated["label"]), _lower_first(control["label"])
    tested = (
        f"We tested {t_label} against {c_label}"
        + (f" for {people} in {area}" if area else f" for {people}")
        + "."
    )
    finding = _finding(results, p, counts, people, t_label, c_label)
    v = verdict(p, results["alpha"])
    answer = f"The answer: {t_label} {v['phrase']}"
    if v["direction"] == HELPS:
        answer += f", {v['matters']}."
    elif v["matters"]:
        answer += f". {v['matters'][:1].upper()}{v['matters'][1:]}."
    else:
        answer += "."
    return {"tested": tested, "finding": finding, "answer": answer, "verdict": v}


def _finding(
    results: Mapping[str, Any],
    p: Mapping[str, Any],
    counts: Shown,
    people: str,
    t_label: str,
    c_label: str,
) -> str:
    control, treated = arms(results)
    name = p["outcome"]
    e = p["effect"]
    if not e:
        return f"The effect of {t_label} could not be estimated."
    if p["type"] == "binary" and p.get("binary"):
        rates = [
            counts.share(f"{name}.{arm}.events", f"{name}.{arm}.analysed")
            for arm in (treated["name"], control["name"])
        ]
        if None not in rates and not rates_hidden(results, name, counts):
            # the comparison arm's rate as observed, and the rate that the registered
            # (adjusted) difference implies for the new support
            control_rate = rates[1]
            rc = round(control_rate * 100)
            rt = round(min(max(control_rate + e["estimate"], 0.0), 1.0) * 100)
            return (
                f"{rt} in every 100 {people} offered {t_label} {p['wording']}, against {rc} "
                f"in every 100 with {c_label}."
            )
        return (
            f"Too few {people} in one of the groups {p['wording']} to publish the numbers "
            f"safely; taking account of differences at referral, {t_label} made a difference "
            f"of {amount(p, e['estimate'])}."
        )
    means = p.get("means") or {}
    mt, mc = means.get(treated["name"]), means.get(control["name"])
    if mt is None or mc is None:
        return (
            f"{t_label[:1].upper()}{t_label[1:]} made a difference of {amount(p, e['estimate'])}."
        )
    return (
        f"The average {p['wording']} was {mt:.1f} for {people} offered {t_label}, against "
        f"{mc:.1f} with {c_label}."
    )


def how_sure(results: Mapping[str, Any]) -> list[str]:
    """The estimate with its interval, and the Bayesian reading, in words."""
    p = results["primary"]
    e, b = p["effect"], p.get("bayes")
    if not e or not b:
        return [
            "The effect on the primary outcome could not be estimated: "
            + str(p.get("not_estimable") or "see the technical report")
            + "."
        ]
    level = round((1 - results["alpha"]) * 100)
    v = verdict(p, results["alpha"])
    out = [
        f"Taking account of differences at referral, the best estimate is "
        f"{amount(p, e['estimate'])}. The {level}% confidence interval runs from "
        f"{amount(p, e['conf_low'])} to {amount(p, e['conf_high'])}: results anywhere in "
        "that range are consistent with what the pilot saw.",
        f"Starting from the sceptical view registered before the pilot began, there is a "
        f"{_chance(b['p_benefit'])} chance that it helps at all, and a "
        f"{_chance(b['p_beyond_mid'])} chance that it helps by at least "
        f"{mid_words(p)}, the smallest difference that matters.",
    ]
    out += v["notes"]
    m = p.get("registered_model")
    if p.get("primary_analysis") == "registered_model" and m and "estimate" in m:
        out.append(
            f"The analysis registered as primary, a {m['model'].replace('_', ' ')} model, gives "
            f"{'an' if m['scale'][0] in 'aeiou' else 'a'} {m['scale']} of {m['estimate']:.2f} "
            f"(95% interval {m['conf_low']:.2f} to {m['conf_high']:.2f}); 1 means no difference."
        )
    for name, pv in _checks(p, results["alpha"]):
        if name.startswith("the registered"):
            continue
        out.append(
            f"A check registered in advance, {name}, gives a p-value of {pv:.3f} "
            f"(below {results['alpha']:g} means the result is unlikely to be chance alone)."
        )
    return out


def _chance(prob: float) -> str:
    n = round(prob * 100)
    if n == 100:
        return "more than 99 in 100"
    if n == 0:
        return "less than 1 in 100"
    return f"{n} in 100"


def limits(results: Mapping[str, Any]) -> list[str]:
    """What the result does not show."""
    p = results["primary"]
    protocol = results.get("protocol") or {}
    control, _ = arms(results)
    out = [
        "It shows the effect of offering the support to everyone allocated to it (whether "
        f"or not they took it up), compared with {_lower_first(control['label'])}, for the "
        "people who took part."
    ]
    population = (protocol.get("population") or {}).get("description")
    if population:
        out.append(
            "It applies to the people the pilot was for ("
            + population.rstrip(".")
            + "). It may not hold for other groups, places or times."
        )
    window = next(
        (o.get("window") for o in protocol.get("outcomes", []) if o.get("name") == p["outcome"]),
        None,
    )
    if window:
        out.append(
            f"It measures the primary outcome {window['months']} months after each person "
            "joined; it does not show whether the difference lasts longer."
        )
    labels = {f["name"]: f.get("label") or f["name"] for f in protocol.get("fields", [])}
    for s in p.get("subgroups") or []:
        if s.get("underpowered"):
            what = _lower_first(labels.get(s["subgroup"], s["subgroup"]))
            out.append(
                f"It cannot say whether the support works differently by {what}: there were "
                "too few people in each group to tell."
            )
    self_reported = [
        o["label"] for o in results.get("secondary", []) if o["source"] in {"survey", "provider"}
    ]
    if self_reported:
        out.append(
            "Some secondary outcomes (" + "; ".join(self_reported) + ") were reported by "
            "people or services who knew which support was given, so they may be biased."
        )
    clusters = (p["effect"] or {}).get("clusters")
    if clusters and clusters < 12:
        out.append(
            f"Only {clusters} places took part, so the result depends on a few places and "
            "their circumstances."
        )
    if results["design"] == "stepped_wedge":
        out.append(
            "Places started the new support at different times; the analysis allows for "
            "change over time, but events that hit one period can still affect the result."
        )
    for item in results.get("not_run", []):
        text = item if isinstance(item, str) else item.get("reason") or str(item)
        out.append(f"Not analysed as planned: {text}")
    if results.get("exploratory"):
        out.append(
            "This analysis departs from the registered plan (see the deviations), so it is "
            "exploratory and should be treated with more caution."
        )
    return out


def progression(results: Mapping[str, Any], counts: Shown) -> list[dict[str, Any]]:
    """Each criterion's rating in words, with the value where publishing it is safe."""
    out = []
    for c in results.get("progression", []):
        value = c["value"]
        shown = None
        if value is not None:
            if not _safe_share(c["metric"], results, counts):
                shown = f"withheld (it rests on fewer than {counts.threshold} people)"
            elif c["metric"] == "recruitment_per_month":
                shown = f"{value:.0f} a month"
            else:
                shown = f"{value * 100:.0f}%"
        fmt = (
            (lambda x: f"{x:g} a month")
            if c["metric"] == "recruitment_per_month"
            else (lambda x: f"{x * 100:g}%")
        )
        out.append(
            {
                "label": c["label"],
                "rating": c["rating"],
                "words": c["words"],
                "value": shown,
                "rule": f"green at {fmt(c['green'])} or more, amber from {fmt(c['amber'])}",
            }
        )
    return out


def _safe_share(metric: str, results: Mapping[str, Any], counts: Shown) -> bool:
    """A value is published only if the people behind it are not a hidden count: 95%
    retained of 40 would reveal the 2 lost, and recruitment per month over a month or so
    is the number randomised."""
    if metric == "retention":
        return not lost_hidden(results, counts)
    if metric == "adherence":
        return not starts_hidden(results, counts)
    if metric == "recruitment_per_month":
        return not recruitment_hidden(counts)
    return True


def _unvalued(c: Mapping[str, Any]) -> str:
    names = ", ".join(c.get("value_not_estimable") or []) or "an outcome"
    return f"the effect on {names} could not be estimated, so its value is unknown"


def costs(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """Who pays and who saves, per person offered the new support, and the cost of each
    extra person with the primary outcome."""
    c = results.get("costs")
    if not c or not c.get("by_agency"):
        return None
    rows = []
    for a in c["by_agency"]:
        if a["agency"] == "total":
            continue
        net = a["net_per_participant"]
        if net is None:
            words = "not known yet: " + _unvalued(c)
        elif abs(net) < 0.5:
            words = "no change"
        elif net > 0:
            words = f"saves £{net:,.0f} per person"
        else:
            words = f"pays £{-net:,.0f} more per person"
        rows.append({**a, "words": words})
    total = next((a for a in c["by_agency"] if a["agency"] == "total"), None)
    if total is not None:
        net = total["net_per_participant"]
        total = {
            **total,
            "words": "not known yet: " + _unvalued(c)
            if net is None
            else (f"net saving of £{net:,.0f}" if net > 0 else f"net cost of £{-net:,.0f}")
            + " per person",
        }
    per = c.get("per_additional_outcome") or {}
    boot = per.get("bootstrap") or {}
    if per.get("point") is not None and boot.get("conf_low") is not None:
        ratio = (
            f"£{per['point']:,.0f} (95% interval £{boot['conf_low']:,.0f} "
            f"to £{boot['conf_high']:,.0f})"
        )
    elif per.get("point") is not None:
        ratio = (
            f"about £{per['point']:,.0f}, but no reliable range can be given: "
            f"{boot.get('reason') or per.get('words', '')}"
        )
    elif per.get("words"):
        ratio = per["words"]
    elif results["primary"].get("type") == "binary":
        ratio = "not worked out yet: the effect on the primary outcome could not be estimated"
    else:
        ratio = None  # a cost per additional person needs a yes/no primary outcome
    return {
        "currency": c["currency"],
        "price_year": c.get("price_year"),
        "rows": rows,
        "total": total,
        "per_additional": ratio,
    }
