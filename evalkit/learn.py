"""Iteration chains: what a run of pilots testing the same idea has learned together.

A protocol with ``iteration_of: <pilot>`` is the next round of test, learn, adapt: it
starts from the earlier pilot's registered plan (``evalkit init NEW --from PILOT``) and
changes what the last round taught. ``evalkit learn PILOT`` pools every iteration of the
chain the pilot belongs to, because one small pilot rarely settles a question and a
commission needs to know what all of them say together and how much more is needed.

The pure core works on plain numbers and data: :func:`chain` orders the pilots,
:func:`pool` gives the fixed-effect (inverse-variance) and random-effects
(DerSimonian-Laird, with the Hartung-Knapp-Sidik-Jonkman interval) estimates,
:func:`bayes_chain` updates a normal prior one iteration at a time, :func:`next_iteration`
sizes the next round, and :func:`learning` assembles learning.json. The functions at the
end (:func:`learn`, :func:`start_iteration`, :func:`check_link`) are the I/O edge: the
store, the workspace's protocols/ and analyses/ are handed in.

Every pooled figure uses each iteration's estimate and standard error of the registered
primary outcome from its results.json, on a normal approximation (each iteration's own
degrees of freedom are not carried into the pooling).

learning.json (written to ``analyses/<latest pilot of the chain>/learning.json``)::

    schema_version   "1.0"
    kind             "evalkit iteration chain"
    pilot            the latest pilot of the chain (where the file is written)
    requested        the pilot named on the command line
    cycle            "test, learn, adapt"
    outcome          {name, label, type, direction, scale, mid}: the latest iteration's
                     registered primary outcome (mid = its minimal important difference)
    alpha            the latest iteration's registered alpha; confidence = 1 - alpha
    exploratory      true if any iteration's results.json is labelled exploratory
    chain            one entry per iteration, first to latest: position, pilot, title,
                     protocol_version, registered_hash (SHA-256 of the registered protocol
                     the analysis ran on), registered_version (null if that hash matches no
                     registered version), outcome, scale, direction, mid, alpha, estimate,
                     std_error, df, conf_low, conf_high, se_type, n, clusters, as_of,
                     exploratory, bayes_prior (the prior in its results.json),
                     changes_from_previous (field-level changes of the registered protocol
                     from the previous iteration's, each {path, kind, old?, new?}; id and
                     iteration_of left out; null for the first)
    fixed            inverse-variance fixed effect: estimate, std_error, conf_low,
                     conf_high, weights (relative, summing to 1), method
    random           DerSimonian-Laird: tau2, tau, q, q_df, q_p, i2 (a fraction, 0 to 1),
                     estimate, std_error, conf_low, conf_high (normal), weights, method,
                     hksj {estimate, std_error, df, conf_low, conf_high, method}
                     (tau2, q_p, i2 and hksj are null with one iteration)
    bayes            prior {kind, mean, sd} (the first iteration's registered prior),
                     steps (one per iteration: pilot, prior_mean, prior_sd, estimate,
                     std_error, posterior_mean, posterior_sd, credible_low,
                     credible_high, p_benefit, p_beyond_mid, mid, direction, words),
                     final (the last step)
    next_iteration   settled, power, alpha, mid, target_std_error, pooled_std_error,
                     per_person_variance, from_pilot, participants (null if settled),
                     places, mean_place_size (place designs), assumptions, statement
    notes            plain sentences on what the figures can and cannot say
    statement        what has been learned, in plain words
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from scipy import stats

from evalkit.canonical import diff
from evalkit.effects import bayesian_reading, words_for
from evalkit.errors import UserError
from evalkit.protocol import Prior, slug_ok
from evalkit.workspace import write_atomically

SCHEMA_VERSION = "1.0"
POWER = 0.8
CYCLE = "test, learn, adapt"
# The link fields differ between any two iterations by construction; listing them as
# changes would say nothing.
_LINK_FIELDS = {"id", "iteration_of"}


class ChainError(ValueError):
    """The iteration links cannot be followed (an unknown pilot, a loop, a fork)."""


# --- the chain -----------------------------------------------------------------------


def ancestors(pilot: str, lookup: Mapping[str, str | None]) -> list[str]:
    """The pilot and every earlier iteration, latest first, following ``iteration_of``.

    ``lookup`` maps every known pilot to the pilot it is an iteration of (or None).
    """
    if pilot not in lookup:
        raise ChainError(f"{pilot!r} is not a registered pilot")
    out = [pilot]
    while (earlier := lookup[out[-1]]) is not None:
        if earlier in out:
            loop = " -> ".join([*out[out.index(earlier) :], earlier])
            raise ChainError(f"the iteration links go round in a loop: {loop}")
        if earlier not in lookup:
            raise ChainError(
                f"{out[-1]!r} is an iteration of {earlier!r}, which is not a registered pilot"
            )
        out.append(earlier)
    return out


def chain(pilot: str, lookup: Mapping[str, str | None]) -> list[str]:
    """Every iteration of the pilot's chain, first to latest.

    Goes back along ``iteration_of`` to the first pilot and forward through the later
    iterations that point at this one. Refuses a loop, and a fork after ``pilot`` (two
    pilots that are both iterations of the same one), naming them: then the latest pilot
    of the branch meant must be named instead.
    """
    out = ancestors(pilot, lookup)[::-1]
    later: dict[str, list[str]] = {}
    for p, earlier in lookup.items():
        if earlier is not None:
            later.setdefault(earlier, []).append(p)
    here = pilot
    while nexts := sorted(later.get(here, [])):
        if len(nexts) > 1:
            raise ChainError(
                f"the chain forks after {here!r}: {', '.join(nexts)} are all iterations of it"
            )
        if nexts[0] in out:
            raise ChainError(f"the iteration links go round in a loop through {nexts[0]!r}")
        out.append(nexts[0])
        here = nexts[0]
    return out


def changes(previous: Any, current: Any) -> list[dict[str, Any]]:
    """Field-level changes between two iterations' registered protocols (plain data)."""
    return [
        c.as_dict() for c in diff(previous, current) if c.path.split(".")[0] not in _LINK_FIELDS
    ]


# --- pooling -------------------------------------------------------------------------


def _check(estimates: Sequence[float], std_errors: Sequence[float], alpha: float) -> None:
    if len(estimates) != len(std_errors) or not estimates:
        raise ValueError("give one standard error per estimate, and at least one estimate")
    for y, s in zip(estimates, std_errors, strict=True):
        if not (math.isfinite(y) and math.isfinite(s)) or s <= 0:
            raise ValueError("estimates must be finite and standard errors finite and positive")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")


def pool(
    estimates: Sequence[float], std_errors: Sequence[float], alpha: float = 0.05
) -> dict[str, Any]:
    """Fixed-effect and random-effects pooled estimates of k iterations.

    Fixed effect (inverse variance): w_i = 1 / se_i^2, estimate = sum w_i y_i / sum w_i,
    SE = 1 / sqrt(sum w_i), interval estimate +/- z_{1-alpha/2} SE.

    Random effects, DerSimonian & Laird (1986): Q = sum w_i (y_i - fixed)^2 on k - 1 df,
    tau^2 = max(0, (Q - (k - 1)) / (sum w_i - sum w_i^2 / sum w_i)),
    I^2 = max(0, (Q - (k - 1)) / Q); w*_i = 1 / (se_i^2 + tau^2), estimate and SE as
    above with w*. The normal interval understates the uncertainty with few studies, so
    the Hartung-Knapp-Sidik-Jonkman interval is given beside it (IntHout, Ioannidis &
    Borm 2014): SE_HKSJ^2 = sum w*_i (y_i - random)^2 / ((k - 1) sum w*_i), interval
    random +/- t_{k-1, 1-alpha/2} SE_HKSJ. With one iteration there is nothing to pool:
    both estimates are that iteration's and the heterogeneity figures are None.
    """
    _check(estimates, std_errors, alpha)
    k = len(estimates)
    y = [float(v) for v in estimates]
    w = [1 / float(s) ** 2 for s in std_errors]
    z = float(stats.norm.ppf(1 - alpha / 2))
    sw = sum(w)
    fe = sum(wi * yi for wi, yi in zip(w, y, strict=True)) / sw
    fe_se = math.sqrt(1 / sw)
    fixed = {
        "method": "inverse-variance fixed effect",
        "estimate": fe,
        "std_error": fe_se,
        "conf_low": fe - z * fe_se,
        "conf_high": fe + z * fe_se,
        "weights": [wi / sw for wi in w],
    }
    if k == 1:
        random = {
            **fixed,
            "method": "DerSimonian-Laird random effects",
            "tau2": None,
            "tau": None,
            "q": None,
            "q_df": 0,
            "q_p": None,
            "i2": None,
            "hksj": None,
        }
        return {"k": 1, "alpha": alpha, "fixed": fixed, "random": random}
    q = sum(wi * (yi - fe) ** 2 for wi, yi in zip(w, y, strict=True))
    df = k - 1
    c = sw - sum(wi**2 for wi in w) / sw
    tau2 = max(0.0, (q - df) / c)
    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    ws = [1 / (float(s) ** 2 + tau2) for s in std_errors]
    sws = sum(ws)
    re_est = sum(wi * yi for wi, yi in zip(ws, y, strict=True)) / sws
    re_se = math.sqrt(1 / sws)
    hk_var = sum(wi * (yi - re_est) ** 2 for wi, yi in zip(ws, y, strict=True)) / (df * sws)
    hk_se = math.sqrt(hk_var)
    t = float(stats.t.ppf(1 - alpha / 2, df))
    random = {
        "method": "DerSimonian-Laird random effects",
        "tau2": tau2,
        "tau": math.sqrt(tau2),
        "q": q,
        "q_df": df,
        "q_p": float(stats.chi2.sf(q, df)),
        "i2": i2,
        "estimate": re_est,
        "std_error": re_se,
        "conf_low": re_est - z * re_se,
        "conf_high": re_est + z * re_se,
        "weights": [wi / sws for wi in ws],
        "hksj": {
            "method": "Hartung-Knapp-Sidik-Jonkman",
            "estimate": re_est,
            "std_error": hk_se,
            "df": df,
            "conf_low": re_est - t * hk_se,
            "conf_high": re_est + t * hk_se,
        },
    }
    return {"k": k, "alpha": alpha, "fixed": fixed, "random": random}


# --- Bayesian updating ---------------------------------------------------------------


def bayes_chain(
    estimates: Sequence[float],
    std_errors: Sequence[float],
    mids: Sequence[float],
    prior_mean: float | None,
    prior_sd: float | None,
    direction: str,
) -> list[dict[str, Any]]:
    """Normal-normal updating one iteration at a time: each posterior is the next prior.

    The first prior is the first iteration's registered one (``prior_sd`` None means
    flat). Each step is :func:`evalkit.effects.bayesian_reading` with the previous
    posterior as a normal prior and that iteration's own minimal important difference,
    so the first step reproduces the first pilot's own Bayesian reading. The last
    posterior equals one update of the first prior with the product of all the
    likelihoods.
    """
    _check(estimates, std_errors, 0.05)
    if len(mids) != len(estimates):
        raise ValueError("give one minimal important difference per iteration")
    if (prior_mean is None) != (prior_sd is None):
        raise ValueError("give both the prior mean and sd, or neither (a flat prior)")
    steps = []
    m0, s0 = prior_mean, prior_sd
    for y, se, mid in zip(estimates, std_errors, mids, strict=True):
        prior = Prior(kind="flat") if s0 is None else Prior(kind="normal", mean=m0, sd=s0)
        r = bayesian_reading(float(y), float(se), prior, float(mid), direction)
        steps.append(
            {
                "prior_mean": m0,
                "prior_sd": s0,
                "estimate": float(y),
                "std_error": float(se),
                "posterior_mean": r["posterior_mean"],
                "posterior_sd": r["posterior_sd"],
                "credible_low": r["credible_low"],
                "credible_high": r["credible_high"],
                "p_benefit": r["p_benefit"],
                "p_beyond_mid": r["p_beyond_mid"],
                "mid": float(mid),
                "direction": direction,
                "words": words_for(r["p_benefit"], min(r["p_beyond_mid"], r["p_benefit"])),
            }
        )
        m0, s0 = r["posterior_mean"], r["posterior_sd"]
    return steps


# --- the next iteration --------------------------------------------------------------


def next_iteration(
    pooled_std_error: float,
    mid: float,
    alpha: float,
    last_std_error: float,
    last_n: int,
    last_clusters: int | None = None,
    power: float = POWER,
) -> dict[str, Any]:
    """People (and places) the next iteration needs for the pooled evidence to settle the
    question: 80% power at the registered two-sided alpha to detect the minimal important
    difference, taking the pooled evidence so far as it is.

    Target variance V* = (MID / (z_{1-alpha/2} + z_{power}))^2. Adding an iteration of n
    people with variance s^2 / n, where s^2 = SE_last^2 n_last is the per-person variance
    scale of the latest iteration (same design, allocation ratio and outcome spread),
    gives pooled variance 1 / (1 / V_pooled + n / s^2) <= V*, so
    n = ceil(s^2 (1 / V* - 1 / V_pooled)). Settled (n = 0) when V_pooled <= V* already.
    For a place design, places = ceil(n / m) with m the latest iteration's mean people per
    place; its standard error already carries the clustering at that place size.
    """
    for name, v in (("pooled_std_error", pooled_std_error), ("last_std_error", last_std_error)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be finite and positive")
    if not mid > 0:
        raise ValueError("the minimal important difference must be positive")
    if last_n < 1:
        raise ValueError("the latest iteration must have analysed someone")
    z = float(stats.norm.ppf(1 - alpha / 2)) + float(stats.norm.ppf(power))
    target_var = (mid / z) ** 2
    pooled_var = pooled_std_error**2
    s2 = last_std_error**2 * last_n
    settled = pooled_var <= target_var
    n = 0 if settled else math.ceil(s2 * (1 / target_var - 1 / pooled_var) - 1e-9)
    size = last_n / last_clusters if last_clusters else None
    places = None if size is None or settled else math.ceil(n / size - 1e-9)
    assumptions = [
        "the next iteration measures the same primary outcome with the same design, "
        "allocation ratio and spread as the latest one",
        "every iteration estimates the same effect (fixed-effect pooling); if the effect "
        "varies between iterations more people are needed",
    ]
    if size is not None:
        assumptions.append(
            f"places of about {size:.3g} people each, clustered as in the latest iteration "
            "(its standard error already reflects the design effect at that size)"
        )
    return {
        "settled": settled,
        "power": power,
        "alpha": alpha,
        "mid": mid,
        "target_std_error": math.sqrt(target_var),
        "pooled_std_error": pooled_std_error,
        "per_person_variance": s2,
        "participants": None if settled else n,
        "places": places,
        "mean_place_size": size,
        "assumptions": assumptions,
    }


# --- learning.json -------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One iteration as read from the workspace and the store."""

    pilot: str
    results: dict[str, Any]
    protocol: dict[str, Any]  # the registered protocol the analysis ran on (plain data)
    registered_hash: str
    registered_version: int | None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _prob(x: float) -> str:
    """A probability to one decimal, so that 94.97% never reads as the 95% of the words."""
    return f"{100 * x:.1f}%"


def _entry(i: int, m: Member, previous: Member | None) -> dict[str, Any]:
    r = m.results
    p = r["primary"]
    e = p["effect"]
    return {
        "position": i + 1,
        "pilot": m.pilot,
        "title": m.protocol.get("title"),
        "protocol_version": m.protocol.get("version"),
        "registered_hash": m.registered_hash,
        "registered_version": m.registered_version,
        "outcome": p["outcome"],
        "scale": e.get("scale"),
        "direction": p["direction"],
        "mid": p["minimal_important_difference"],
        "alpha": r["alpha"],
        "estimate": e["estimate"],
        "std_error": e["std_error"],
        "df": e.get("df"),
        "conf_low": e["conf_low"],
        "conf_high": e["conf_high"],
        "se_type": e.get("se_type"),
        "n": e["n"],
        "clusters": e.get("clusters"),
        "as_of": r.get("as_of"),
        "exploratory": bool(r.get("exploratory")),
        "bayes_prior": p["bayes"]["prior"],
        "changes_from_previous": None
        if previous is None
        else changes(previous.protocol, m.protocol),
    }


def learning(members: Sequence[Member], requested: str) -> dict[str, Any]:
    """learning.json for a chain of iterations, first to latest (see the module docstring)."""
    if not members:
        raise ValueError("a chain has at least one iteration")
    for m in members:
        if m.results["primary"].get("effect") is None:
            why = m.results["primary"].get("not_estimable", "no estimate")
            raise ValueError(f"{m.pilot} has no estimate of its primary outcome ({why})")
    directions = {m.results["primary"]["direction"] for m in members}
    if len(directions) > 1:
        raise ValueError(
            "the iterations' primary outcomes point different ways ("
            + ", ".join(f"{m.pilot}: {m.results['primary']['direction']}" for m in members)
            + "); they cannot be pooled"
        )
    chain_rows = [_entry(i, m, members[i - 1] if i else None) for i, m in enumerate(members)]
    last = members[-1].results
    lp = last["primary"]
    alpha = float(last["alpha"])
    direction = lp["direction"]
    mid = float(lp["minimal_important_difference"])
    ys = [c["estimate"] for c in chain_rows]
    ses = [c["std_error"] for c in chain_rows]
    pooled = pool(ys, ses, alpha)
    first_prior = members[0].results["primary"]["bayes"]["prior"]
    steps = bayes_chain(
        ys,
        ses,
        [c["mid"] for c in chain_rows],
        first_prior.get("mean") if first_prior.get("sd") is not None else None,
        first_prior.get("sd"),
        direction,
    )
    for s, c in zip(steps, chain_rows, strict=True):
        s["pilot"] = c["pilot"]
    nxt = next_iteration(
        pooled["fixed"]["std_error"],
        mid,
        alpha,
        ses[-1],
        int(chain_rows[-1]["n"]),
        chain_rows[-1]["clusters"] if last.get("unit") == "place" else None,
    )
    nxt["from_pilot"] = chain_rows[-1]["pilot"]
    outcome = {
        "name": lp["outcome"],
        "label": lp.get("label"),
        "type": lp.get("type"),
        "direction": direction,
        "scale": lp["effect"].get("scale"),
        "mid": mid,
    }
    notes = _notes(chain_rows, pooled)
    nxt["statement"] = _next_words(nxt, outcome, alpha)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kind": "evalkit iteration chain",
        "pilot": chain_rows[-1]["pilot"],
        "requested": requested,
        "cycle": CYCLE,
        "outcome": outcome,
        "alpha": alpha,
        "confidence": 1 - alpha,
        "exploratory": any(c["exploratory"] for c in chain_rows),
        "chain": chain_rows,
        "fixed": pooled["fixed"],
        "random": pooled["random"],
        "bayes": {
            "prior": {
                "kind": first_prior.get("kind"),
                "mean": first_prior.get("mean"),
                "sd": first_prior.get("sd"),
            },
            "steps": steps,
            "final": steps[-1],
        },
        "next_iteration": nxt,
        "notes": notes,
    }
    doc["statement"] = statement(doc)
    json.dumps(doc, allow_nan=False)  # every number finite or null
    return doc


def _notes(rows: list[dict[str, Any]], pooled: dict[str, Any]) -> list[str]:
    k = len(rows)
    out = []
    if k == 1:
        out.append(
            "Only one iteration so far: there is nothing to pool, and how much the effect "
            "varies between iterations cannot be estimated."
        )
    elif k == 2:
        out.append(
            "With two iterations the between-iteration variance (tau^2) is barely "
            "estimable: the random-effects figures rest on one degree of freedom, and the "
            "Hartung-Knapp-Sidik-Jonkman interval (t on 1 df) is very wide for that reason."
        )
    else:
        out.append(
            f"With {k} iterations the between-iteration variance is estimated roughly; the "
            "Hartung-Knapp-Sidik-Jonkman interval is the one to read."
        )
    few = [r for r in rows if r.get("df") is not None and r["df"] < 30]
    if few:
        out.append(
            "The pooled intervals use the normal distribution, while "
            + ", ".join(f"{r['pilot']} ({r['df']:.3g} df)" for r in few)
            + " used t with few degrees of freedom, so the pooled intervals are narrower "
            "than those iterations' own evidence supports."
        )
    hk = pooled["random"]["hksj"]
    if hk is not None and hk["std_error"] < pooled["random"]["std_error"]:
        out.append(
            "The iterations agree more closely than their standard errors imply, so the "
            "Hartung-Knapp-Sidik-Jonkman standard error is below the random-effects one; "
            "the usual correction (Knapp & Hartung 2003; Rover et al. 2015) would keep the "
            "larger one."
        )
    names = {r["outcome"] for r in rows}
    if len(names) > 1:
        out.append(
            "The primary outcome differs between iterations ("
            + ", ".join(f"{r['pilot']}: {r['outcome']}" for r in rows)
            + "); pooling assumes they measure the same effect on the same scale."
        )
    mids = {r["mid"] for r in rows}
    if len(mids) > 1:
        out.append(
            "The minimal important difference changed between iterations; each Bayesian "
            "step uses its own iteration's, the next-iteration size the latest one's."
        )
    if any(r["exploratory"] for r in rows):
        out.append(
            "Exploratory: "
            + ", ".join(r["pilot"] for r in rows if r["exploratory"])
            + " ran on a protocol that differs from its registration."
        )
    return out


def _next_words(nxt: dict[str, Any], outcome: dict[str, Any], alpha: float) -> str:
    level = f"{100 * alpha:g}%"
    goal = (
        f"{100 * nxt['power']:.0f}% power at the {level} level to detect the smallest "
        f"difference that matters ({nxt['mid']:g})"
    )
    if nxt["settled"]:
        return (
            f"Settled: the pooled evidence already has {goal}; another iteration is not "
            "needed to answer this question."
        )
    places = (
        f", about {nxt['places']} places of {nxt['mean_place_size']:.3g} people"
        if nxt["places"] is not None
        else ""
    )
    return (
        f"Not settled yet: for the pooled evidence to have {goal}, the next iteration needs "
        f"about {nxt['participants']} people{places} (with the design of {nxt['from_pilot']})."
    )


def statement(doc: dict[str, Any]) -> str:
    """What the chain has learned, in plain words, from the figures of learning.json."""
    rows, fixed, random = doc["chain"], doc["fixed"], doc["random"]
    k = len(rows)
    o = doc["outcome"]
    level = f"{100 * doc['confidence']:g}%"
    people = sum(int(r["n"]) for r in rows)
    order = ", then ".join(r["pilot"] for r in rows)
    scale = f" ({o['scale']})" if o.get("scale") else ""
    what = (o.get("label") or o["name"]).rstrip(".")
    how = "Pooled (fixed effect)" if k > 1 else "On its own (normal approximation)"
    parts = [
        f"{k} iteration{'s' if k > 1 else ''} ({order}) with {people} people in all.",
        f"{how}, the effect on '{what}' is {_fmt(fixed['estimate'])}{scale}, "
        f"{level} CI {_fmt(fixed['conf_low'])} to {_fmt(fixed['conf_high'])}.",
    ]
    if k > 1:
        hk = random["hksj"]
        caveat = (
            "; with two iterations, how much the effect varies between them is barely "
            "estimable, so this interval is very wide"
            if k == 2
            else ""
        )
        parts.append(
            f"Allowing the effect to vary between iterations (random effects), it is "
            f"{_fmt(random['estimate'])}, {level} CI {_fmt(hk['conf_low'])} to "
            f"{_fmt(hk['conf_high'])} (Hartung-Knapp-Sidik-Jonkman; I^2 = "
            f"{_pct(random['i2'])}){caveat}."
        )
    b = doc["bayes"]
    final = b["final"]
    parts.append(
        f"Reading the iterations in turn from the first pilot's {b['prior']['kind']} prior: "
        f"{final['words'].rstrip('.')} (P(benefit) {_prob(final['p_benefit'])}, P(at least "
        f"{final['mid']:g}) {_prob(final['p_beyond_mid'])})."
    )
    parts.append(doc["next_iteration"]["statement"])
    return " ".join(parts)


def render(doc: dict[str, Any]) -> list[str]:
    """learning.json as lines for the terminal: the chain, pooled figures, updating."""
    level = f"{100 * doc['confidence']:g}%"
    o = doc["outcome"]
    out = [
        f"Iteration chain ({doc['cycle']}): " + " -> ".join(r["pilot"] for r in doc["chain"]),
        f"primary outcome {o['name']}"
        + (f" ({o['scale']})" if o.get("scale") else "")
        + f", MID {o['mid']:g}, {o['direction'].replace('_', ' ')}",
    ]
    if doc["exploratory"]:
        out.insert(0, "EXPLORATORY: at least one iteration's results are exploratory")
    out.append(f"  {'#':>2}  {'pilot':<28} {'estimate':>9} {'SE':>8}  {level + ' CI':<20} {'n':>6}")
    for r in doc["chain"]:
        ci = f"{_fmt(r['conf_low'])} to {_fmt(r['conf_high'])}"
        out.append(
            f"  {r['position']:>2}  {r['pilot']:<28} {_fmt(r['estimate']):>9} "
            f"{_fmt(r['std_error']):>8}  {ci:<20} {r['n']:>6}"
            + (f" ({r['clusters']} places)" if r.get("clusters") else "")
        )
        ch = r["changes_from_previous"]
        if ch is not None:
            out.append(f"      changed from the previous iteration: {len(ch) or 'nothing'}")
            for c in ch:
                old = json.dumps(c.get("old"), ensure_ascii=False) if "old" in c else None
                new = json.dumps(c.get("new"), ensure_ascii=False) if "new" in c else None
                text = {
                    "added": f"added {new}",
                    "removed": f"removed (was {old})",
                    "changed": f"{old} -> {new}",
                }[c["kind"]]
                line = f"        {c['path']}: {text}"
                out.append(line if len(line) <= 110 else line[:107] + "...")
    f, rnd = doc["fixed"], doc["random"]
    out.append(
        f"fixed effect (inverse variance): {_fmt(f['estimate'])} (SE {_fmt(f['std_error'])}), "
        f"{level} CI {_fmt(f['conf_low'])} to {_fmt(f['conf_high'])}"
    )
    if rnd["hksj"] is not None:
        hk = rnd["hksj"]
        out.append(
            f"random effects (DerSimonian-Laird): {_fmt(rnd['estimate'])} "
            f"(SE {_fmt(rnd['std_error'])}), {level} CI {_fmt(rnd['conf_low'])} to "
            f"{_fmt(rnd['conf_high'])}; tau^2 {_fmt(rnd['tau2'])}, I^2 {_pct(rnd['i2'])}, "
            f"Q {_fmt(rnd['q'])} on {rnd['q_df']} df (p = {_fmt(rnd['q_p'])})"
        )
        out.append(
            f"  Hartung-Knapp-Sidik-Jonkman: {level} CI {_fmt(hk['conf_low'])} to "
            f"{_fmt(hk['conf_high'])} (SE {_fmt(hk['std_error'])}, t on {hk['df']} df)"
        )
    b = doc["bayes"]
    pr = b["prior"]
    out.append(
        f"Bayesian updating from the first pilot's {pr['kind']} prior"
        + (f" (mean {_fmt(pr['mean'])}, sd {_fmt(pr['sd'])})" if pr["sd"] is not None else "")
        + ", each posterior the next prior:"
    )
    for s in b["steps"]:
        out.append(
            f"  after {s['pilot']:<28} mean {_fmt(s['posterior_mean'])} "
            f"(sd {_fmt(s['posterior_sd'])}), P(benefit) {_prob(s['p_benefit'])}, "
            f"P(beyond MID {s['mid']:g}) {_prob(s['p_beyond_mid'])}"
        )
    out += [f"note: {n}" for n in doc["notes"]]
    out.append(f"What has been learned: {doc['statement']}")
    return out


# --- the I/O edge --------------------------------------------------------------------


def _registered_data(store: Any, pilot: str) -> list[tuple[Any, dict[str, Any]]]:
    return [(v, json.loads(v.canonical)) for v in store.versions(pilot)]


def registered_links(store: Any) -> dict[str, str | None]:
    """Every registered pilot and what its current registered version is an iteration of."""
    out: dict[str, str | None] = {}
    for pid in store.pilot_ids():
        versions = store.versions(pid)
        out[pid] = json.loads(versions[-1].canonical).get("iteration_of") if versions else None
    return out


def results_problem(results: Any) -> str | None:
    """What a results.json lacks for pooling, or None (pure)."""
    if not isinstance(results, dict):
        return "it does not hold a JSON object"
    for key in ("alpha", "exploratory", "primary", "provenance"):
        if key not in results:
            return f"it has no {key!r}"
    primary = results["primary"]
    if not isinstance(primary, dict) or "direction" not in primary:
        return "its primary outcome is incomplete"
    if "protocol_hash" not in (results["provenance"] or {}):
        return "its provenance has no protocol_hash"
    effect = primary.get("effect")
    if effect is None:
        return None
    lacking = [
        k for k in ("estimate", "std_error", "conf_low", "conf_high", "n") if k not in effect
    ]
    if lacking:
        return f"the primary effect lacks {', '.join(lacking)}"
    if "prior" not in (primary.get("bayes") or {}):
        return "the primary outcome has no Bayesian reading"
    if "minimal_important_difference" not in primary:
        return "the primary outcome has no minimal_important_difference"
    return None


def _member(store: Any, root: Path, pilot: str) -> Member:
    path = root / "analyses" / pilot / "results.json"
    if not path.is_file():
        raise UserError(
            f"{path} does not exist: {pilot!r} has not been analysed",
            f"run: evalkit analyse {pilot}",
        )
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path} cannot be read as JSON ({exc})",
            f"run the analysis again: evalkit analyse {pilot}",
        ) from None
    problem = results_problem(results)
    if problem is not None:
        raise UserError(
            f"{path} is not a results file evalkit can pool: {problem}",
            f"run the analysis again: evalkit analyse {pilot}",
        )
    primary = results["primary"]
    if primary["effect"] is None:
        raise UserError(
            f"{path}: the primary outcome of {pilot!r} could not be estimated "
            f"({primary.get('not_estimable', 'no estimate')}), so it cannot be pooled",
            f"when its outcomes are in, run: evalkit analyse {pilot}",
        )
    h = results["provenance"]["protocol_hash"]
    versions = _registered_data(store, pilot)
    matched = next(((v, d) for v, d in versions if v.hash == h), None)
    v, data = matched or versions[-1]
    return Member(pilot, results, data, h, v.number if matched else None)


def learn(store: Any, root: Path, pilot: str) -> tuple[Path, dict[str, Any]]:
    """Pool the chain ``pilot`` belongs to and write learning.json beside the latest
    iteration's results."""
    if not slug_ok(pilot):
        raise UserError(
            f"{pilot!r} is not a pilot name", "pilot names use lower-case letters, digits, hyphens"
        )
    links = registered_links(store)
    if pilot not in links:
        raise UserError(
            f"pilot {pilot!r} is not registered",
            f"register it first: evalkit register protocols/{pilot}.yaml",
        )
    try:
        order = chain(pilot, links)
    except ChainError as exc:
        raise UserError(
            f"cannot follow the iterations of {pilot!r}: {exc}",
            "name the latest pilot of the branch you mean, or correct 'iteration_of' "
            "with evalkit amend",
        ) from None
    members = [_member(store, root, p) for p in order]
    try:
        doc = learning(members, pilot)
    except (ValueError, TypeError) as exc:
        raise UserError(f"the iterations of {pilot!r} cannot be pooled: {exc}") from None
    out = root / "analyses" / order[-1] / "learning.json"
    write_atomically(out, json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return out, doc


_TOP = {key: re.compile(rf"^{key}:[^\n]*$", re.MULTILINE) for key in ("id", "version")}
_ITERATION = re.compile(r"^iteration_of:[^\n]*$", re.MULTILINE)


def iteration_text(text: str, new_id: str, pilot: str) -> str | None:
    """The earlier pilot's protocol text made into its next iteration, comments kept: the
    top-level ``id``, ``version`` and ``iteration_of`` lines rewritten (the last added
    after ``version`` if absent). None when those lines are not single lines to edit."""
    out = text
    for key, value in (("id", new_id), ("version", '"1.0"')):
        out, n = _TOP[key].subn(f"{key}: {value}", out, count=1)
        if n != 1:
            return None
    out, n = _ITERATION.subn(f"iteration_of: {pilot}", out, count=1)
    if n == 0:
        out = _TOP["version"].sub(lambda m: f"{m.group(0)}\niteration_of: {pilot}", out, count=1)
    return out


def start_iteration(store: Any, root: Path, new_id: str, pilot: str, force: bool) -> Path:
    """Write protocols/NEW.yaml from the registered protocol of ``pilot``, linked to it."""
    from evalkit.protocol_file import ProtocolFileError, parse_protocol
    from evalkit.registration import standing

    if not slug_ok(new_id):
        raise UserError(
            f"{new_id!r} cannot be a pilot name",
            "use 3 to 64 lower-case letters, digits and hyphens, e.g. hackney-keyworker-2",
        )
    if new_id == pilot:
        raise UserError("a pilot cannot be an iteration of itself", "choose a new name")
    source = root / "protocols" / f"{pilot}.yaml"
    if store.pilot(pilot) is None:
        raise UserError(
            f"cannot start an iteration of {pilot!r}: it is not registered",
            f"an iteration starts from a registered plan; register it first: "
            f"evalkit register protocols/{pilot}.yaml",
        )
    if not source.is_file():
        raise UserError(
            f"{source} does not exist",
            f"restore the registered protocol of {pilot!r} there (evalkit history shows it)",
        )
    text = source.read_text(encoding="utf-8")
    try:
        _, located = parse_protocol(text, str(source))
    except ProtocolFileError:
        located = None
    s = standing(pilot, store.versions(pilot), located.data) if located else None
    if s is None or not s.ok:
        reason = s.message() if s else f"{source} is not a valid protocol"
        raise UserError(
            f"cannot start an iteration of {pilot!r} from {source}: it is not the current "
            f"registered version ({reason})",
            f"restore the registered version, or record the change first with: evalkit "
            f'amend protocols/{pilot}.yaml --reason "..."',
        )
    path = root / "protocols" / f"{new_id}.yaml"
    if path.exists() and not force:
        raise UserError(f"{path} already exists", "choose another name, or add --force")
    new = iteration_text(text, new_id, pilot)
    if new is None or not _is_iteration(new, new_id, pilot, str(path)):
        data = {**located.data, "id": new_id, "version": "1.0", "iteration_of": pilot}
        new = f"# evalkit protocol: the next iteration of {pilot}.\n" + yaml.safe_dump(
            data, sort_keys=False, allow_unicode=True, width=90
        )
        if not _is_iteration(new, new_id, pilot, str(path)):
            raise UserError(f"could not write {path} as an iteration of {pilot!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    (root / "analyses").mkdir(exist_ok=True)
    path.write_text(new, encoding="utf-8")
    return path


def _is_iteration(text: str, new_id: str, pilot: str, file: str) -> bool:
    from evalkit.protocol_file import ProtocolFileError, parse_protocol

    try:
        p, _ = parse_protocol(text, file)
    except ProtocolFileError:
        return False
    return p.id == new_id and p.iteration_of == pilot and p.version == "1.0"


def check_link(store: Any, path: Path) -> None:
    """Refuse to register (or amend) a protocol whose ``iteration_of`` names a pilot that
    is not registered in this store, or that would make the links go round in a loop.
    Done at registration rather than in ``validate``, which reads the file only."""
    from evalkit.protocol_file import load_protocol

    protocol, _ = load_protocol(path)
    earlier = protocol.iteration_of
    if earlier is None:
        return
    if store.pilot(earlier) is None:
        raise UserError(
            f"{path}: iteration_of names {earlier!r}, which is not registered in this store",
            f"register {earlier} first (evalkit register protocols/{earlier}.yaml), or set "
            "'iteration_of: null'",
        )
    links = {**registered_links(store), protocol.id: earlier}
    try:
        ancestors(protocol.id, links)
    except ChainError as exc:
        raise UserError(f"{path}: {exc}", "correct 'iteration_of'") from None
