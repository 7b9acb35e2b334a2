"""Analytic power, minimum detectable effect and required sample size of a registered design.

A pilot should say before it starts how likely it is to detect the difference that matters.
These are the standard closed forms, so that anyone can check them by hand or with PowerUp!:

- individual randomisation: PowerUp! (Dong & Maynard 2013), model IRA: standard error
  ``sd * sqrt((1 - R2) / (P (1 - P) n))`` with ``n - g - 2`` degrees of freedom;
- randomised places: PowerUp! model CRA2 with the Eldridge, Ashby & Kerry (2006) design
  effect ``1 + ((cv^2 + 1) m - 1) rho`` for unequal place sizes, i.e. standard error
  ``sd * sqrt((rho (1 + cv^2) (1 - R2_2) + (1 - rho) (1 - R2_1) / m) / (P (1 - P) J))`` with
  ``J - g2 - 2`` degrees of freedom, or ``J - strata - 1 - g2`` when places are randomised
  within strata or pairs (fixed stratum effects, one common effect: pairs - 1 for pairs);
- stepped wedge: Hussey & Hughes (2007), equation 8, with the normal distribution as in
  their paper.

Power is the two-sided power of the t-test from the noncentral t distribution (as PowerUpR
computes it); the minimum detectable effect is PowerUp!'s ``M * SE`` with
``M = t[1 - alpha/2, df] + t[power, df]``. Everything here is pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from evalkit.errors import UserError
from evalkit.protocol import (
    BlockedDesign,
    MatchedPairClusterDesign,
    MinimisationDesign,
    Protocol,
    SteppedWedgeDesign,
    StratifiedClusterDesign,
)

TARGET_POWER = 0.8

__all__ = [
    "TARGET_POWER",
    "PowerResult",
    "binary_sd",
    "cluster_power",
    "design_effect",
    "format_power",
    "individual_power",
    "multiplier",
    "power_for_protocol",
    "power_warnings",
    "smallest_size",
    "stepped_wedge_power",
    "stepped_wedge_variance",
    "two_sided_power",
]


@dataclass(frozen=True)
class PowerResult:
    """Power at one effect, the minimum detectable effect, and the standard error behind them
    (all in outcome units); ``df`` None means the normal distribution was used."""

    power: float
    mde: float
    se: float
    df: float | None


# --- distributions -------------------------------------------------------------------


def two_sided_power(ncp: float, df: float | None, alpha: float) -> float:
    """Chance that a two-sided test at ``alpha`` rejects when effect / SE is ``ncp``:
    noncentral t with ``df`` degrees of freedom, or the normal when ``df`` is None."""
    ncp = abs(ncp)
    if df is None:
        z = stats.norm.ppf(1 - alpha / 2)
        return float(stats.norm.cdf(ncp - z) + stats.norm.cdf(-ncp - z))
    t = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(t, df, ncp) + stats.nct.cdf(-t, df, ncp))


def multiplier(df: float | None, alpha: float, power: float = TARGET_POWER) -> float:
    """PowerUp!'s M: the minimum detectable effect is M standard errors (two-sided test)."""
    dist = stats.norm() if df is None else stats.t(df)
    t1 = abs(dist.ppf(alpha / 2))
    t2 = abs(dist.ppf(power))
    return float(t1 + t2 if power >= 0.5 else t1 - t2)


def _check(alpha: float, power: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha} must be between 0 and 1")
    if not 0 < power < 1:
        raise ValueError(f"power {power} must be between 0 and 1")


def _result(effect: float, se: float, df: float | None, alpha: float, power: float):
    if df is not None and df < 1:
        raise ValueError(f"{df:g} degrees of freedom: too few units for this design")
    return PowerResult(
        power=two_sided_power(effect / se, df, alpha),
        mde=multiplier(df, alpha, power) * se,
        se=se,
        df=df,
    )


# --- the three designs -----------------------------------------------------------------


def individual_power(
    effect: float,
    n: float,
    *,
    sd: float = 1.0,
    treated_share: float = 0.5,
    r_squared: float = 0.0,
    covariates: int = 0,
    alpha: float = 0.05,
    power: float = TARGET_POWER,
) -> PowerResult:
    """Individually randomised: PowerUp! IRA, SE = sd sqrt((1 - R2) / (P (1 - P) n)),
    df = n - g - 2 (``covariates`` is g, the number of model terms besides the arm)."""
    _check(alpha, power)
    p = treated_share
    se = sd * math.sqrt((1 - r_squared) / (p * (1 - p) * n))
    return _result(effect, se, n - covariates - 2, alpha, power)


def design_effect(cluster_size: float, icc: float, cv: float = 0.0) -> float:
    """Eldridge, Ashby & Kerry (2006): 1 + ((cv^2 + 1) m - 1) rho for places of mean size m
    whose sizes vary with coefficient of variation cv (cv = 0: the usual 1 + (m - 1) rho)."""
    return 1 + ((cv**2 + 1) * cluster_size - 1) * icc


def cluster_power(
    effect: float,
    places: float,
    cluster_size: float,
    icc: float,
    *,
    sd: float = 1.0,
    treated_share: float = 0.5,
    cv: float = 0.0,
    r2_individual: float = 0.0,
    r2_place: float = 0.0,
    place_covariates: int = 0,
    strata: int = 0,
    df: float | None = None,
    alpha: float = 0.05,
    power: float = TARGET_POWER,
) -> PowerResult:
    """Places randomised: PowerUp! CRA2 with the Eldridge design effect for unequal sizes.

    SE = sd sqrt((rho (1 + cv^2)(1 - R2_2) + (1 - rho)(1 - R2_1) / m) / (P (1 - P) J)), which
    with R2 = 0 is sd sqrt(DE / (P (1 - P) J m)). df = J - g2 - 2, or J - strata - 1 - g2
    when places are randomised within ``strata`` strata or pairs; ``df`` overrides both.
    """
    _check(alpha, power)
    p = treated_share
    between = icc * (1 + cv**2) * (1 - r2_place)
    within = (1 - icc) * (1 - r2_individual) / cluster_size
    se = sd * math.sqrt((between + within) / (p * (1 - p) * places))
    if df is None:
        df = places - place_covariates - (strata + 1 if strata else 2)
    return _result(effect, se, df, alpha, power)


def _wedge(steps: Sequence[int], periods: int) -> np.ndarray:
    """0/1 matrix, one row per place and one column per period: the places of step s (1, 2,
    ...) are treated from period s + 1 onwards."""
    if len(steps) > periods - 1 or any(s <= 0 for s in steps):
        raise ValueError("give a positive number of places for each step, one step per period")
    rows = [[int(t >= s) for t in range(periods)] for s, k in enumerate(steps, 1) for _ in range(k)]
    return np.array(rows, dtype=float)


def stepped_wedge_variance(steps: Sequence[int], periods: int, sigma2: float, tau2: float) -> float:
    """Hussey & Hughes (2007), equation 8: variance of the effect estimated by weighted least
    squares with period effects and random place intercepts. ``sigma2`` is the variance of a
    place-period mean (individual variance / people per place and period), ``tau2`` the
    variance between places."""
    x = _wedge(steps, periods)
    i, t = x.shape
    u = x.sum()
    w = float((x.sum(axis=0) ** 2).sum())
    v = float((x.sum(axis=1) ** 2).sum())
    num = i * sigma2 * (sigma2 + t * tau2)
    den = (i * u - w) * sigma2 + (u**2 + i * t * u - t * w - i * v) * tau2
    return float(num / den)


def stepped_wedge_power(
    effect: float,
    steps: Sequence[int],
    periods: int,
    per_period: float,
    icc: float,
    *,
    sd: float = 1.0,
    r_squared: float = 0.0,
    alpha: float = 0.05,
    power: float = TARGET_POWER,
) -> PowerResult:
    """Stepped wedge, cross-sectional samples of ``per_period`` people per place and period:
    Hussey & Hughes with tau^2 = rho sd^2 and sigma^2 = (1 - rho)(1 - R2) sd^2 / n, normal
    distribution (as in their paper)."""
    _check(alpha, power)
    tau2 = icc * sd**2
    sigma2 = (1 - icc) * (1 - r_squared) * sd**2 / per_period
    se = math.sqrt(stepped_wedge_variance(steps, periods, sigma2, tau2))
    return _result(effect, se, None, alpha, power)


def binary_sd(baseline_rate: float, effect: float, direction: str = "higher_is_better") -> float:
    """SD of a binary outcome at the average of the two rates: sqrt(pbar (1 - pbar)) with
    pbar = p0 + effect / 2 (p0 - effect / 2 when lower is better). This pooled-variance
    approximation is the one swCRTdesign uses for binomial outcomes."""
    sign = 1 if direction == "higher_is_better" else -1
    p1 = baseline_rate + sign * abs(effect)
    if not 0 < p1 < 1:
        raise UserError(
            f"a difference of {abs(effect):g} from a baseline rate of {baseline_rate:g} gives "
            f"a rate of {p1:g}, outside 0 to 1",
            "check sample_size.baseline_rate, expected_effect and the minimal important difference",
        )
    pbar = (baseline_rate + p1) / 2
    return math.sqrt(pbar * (1 - pbar))


# --- the registered design ---------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """One comparison of the registered design, as a function of the sample size."""

    kind: str  # individual | place | stepped_wedge
    se1: Callable[[int], tuple[float, float | None]]  # size -> (SE at sd 1, df)
    size: int  # units (individual) or places (place designs) as registered
    size_step: int  # sizes searched in steps of this
    units_for: Callable[[int], int]  # size -> units
    places_for: Callable[[int], int | None]  # size -> places
    smallest: int  # smallest size with at least one degree of freedom


def _terms(p: Protocol, names: list[str]) -> int:
    """Model terms for person fields: levels - 1 for a category, 1 otherwise."""
    out = 0
    for name in names:
        f = p.field(name)
        if f is None:
            continue
        out += len(f.levels) - 1 if f.type == "category" and f.levels else 1
    return out


def _strata_count(p: Protocol, names: list[str]) -> int:
    count = 1
    for name in names:
        f = p.place_field_def(name)
        if f is None:
            continue
        count *= len(f.levels) if f.type == "category" and f.levels else 2
    return count


def _plans(p: Protocol) -> tuple[list[tuple[str, _Plan]], dict[str, Any]]:
    """One plan per arm compared with the control arm, and what was assumed, in words."""
    s = p.sample_size
    d = p.design
    total_ratio = sum(a.ratio for a in p.arms)
    control = p.control
    notes: dict[str, Any] = {}
    plans: list[tuple[str, _Plan]] = []

    if isinstance(d, SteppedWedgeDesign):
        if s.icc is None:
            raise UserError("a stepped wedge needs sample_size.icc", "add the expected ICC")
        periods = d.periods
        places = sum(d.places_per_step)
        per = s.target_units / (places * periods)
        r2 = s.r_squared

        def se_sw(k: int) -> tuple[float, float | None]:
            steps = [k * n for n in d.places_per_step]
            tau2 = s.icc
            sigma2 = (1 - s.icc) * (1 - r2) / per
            return math.sqrt(stepped_wedge_variance(steps, periods, sigma2, tau2)), None

        notes["method"] = (
            "Hussey & Hughes (2007) variance of the effect estimated with period effects and "
            "random place intercepts; two-sided test on the normal distribution; minimum "
            "detectable effect (z[1-alpha/2] + z[power]) x SE"
        )
        notes["assumptions"] = [
            f"{per:g} people per place and period (target_units {s.target_units} / "
            f"({places} places x {periods} periods)), a new sample of people in each period",
            f"ICC {s.icc:g}; the place effect is the same in every period",
            f"covariates explain {r2:.0%} of the variance between people",
            "places of different sizes are not allowed for (the formula assumes equal sizes; "
            f"cluster_size_cv {s.cluster_size_cv or 0:g} is not used)",
            "needed sizes scale every step by the same whole number of places",
        ]
        plans.append(
            (
                p.arms[1].name,
                _Plan(
                    kind="stepped_wedge",
                    se1=se_sw,
                    size=1,
                    size_step=1,
                    units_for=lambda k: round(k * places * periods * per),
                    places_for=lambda k: k * places,
                    smallest=1,
                ),
            )
        )
        return plans, notes

    if p.unit.level == "participant":
        extra = []
        if isinstance(d, BlockedDesign):
            extra = d.strata
        elif isinstance(d, MinimisationDesign):
            extra = [f.field for f in d.factors]
        covs = list(p.analysis.covariates) + [x for x in extra if x not in p.analysis.covariates]
        g = _terms(p, covs)
        notes["method"] = (
            "PowerUp! individual random assignment (Dong & Maynard 2013): SE = sd x sqrt((1 - "
            "R2) / (P(1 - P) n)), df = n - g - 2; power from the noncentral t, two-sided; "
            "minimum detectable effect (t[1-alpha/2, df] + t[power, df]) x SE"
        )
        notes["assumptions"] = [
            f"covariates explain {s.r_squared:.0%} of the outcome variance (R2)",
            f"g = {g} model terms besides the arm ({', '.join(covs) or 'none'}; a category "
            "counts its levels less one)",
        ]
        for arm in p.arms[1:]:
            share = (arm.ratio + control.ratio) / total_ratio
            treated = arm.ratio / (arm.ratio + control.ratio)

            def se_ind(n: int, share=share, treated=treated) -> tuple[float, float | None]:
                m = n * share
                se = math.sqrt((1 - s.r_squared) / (treated * (1 - treated) * m))
                return se, m - g - 2

            notes["assumptions"].append(
                f"{arm.name} against {control.name}: {share * s.target_units:g} of the "
                f"{s.target_units} units in these two arms, a share P = {treated:.3g} offered "
                f"{arm.name}"
            )
            plans.append(
                (
                    arm.name,
                    _Plan(
                        kind="individual",
                        se1=se_ind,
                        size=s.target_units,
                        size_step=1,
                        units_for=lambda n: n,
                        places_for=lambda n: None,
                        smallest=math.ceil((g + 3) / share),
                    ),
                )
            )
        return plans, notes

    if s.target_places is None or s.icc is None:
        raise UserError(
            "a place design needs sample_size.target_places and icc",
            "add them under sample_size",
        )
    m = s.target_units / s.target_places
    cv = s.cluster_size_cv or 0.0
    strata = 0
    step = 1
    how = "df = J - 2"
    if isinstance(d, MatchedPairClusterDesign):
        step = 2
        how = "df = pairs - 1 (matching assumed to explain none of the variance)"
    elif isinstance(d, StratifiedClusterDesign):
        strata = _strata_count(p, d.strata)
        how = f"df = J - strata - 1 with {strata} strata"
    notes["method"] = (
        "PowerUp! cluster random assignment (Dong & Maynard 2013, CRA2) with the Eldridge et "
        "al. (2006) design effect 1 + ((cv^2 + 1) m - 1) ICC for unequal place sizes: SE = "
        "sd x sqrt((ICC (1 + cv^2) + (1 - ICC)(1 - R2) / m) / (P(1 - P) J)), "
        f"{how}; power from the noncentral t, two-sided; minimum detectable effect "
        "(t[1-alpha/2, df] + t[power, df]) x SE"
    )
    notes["assumptions"] = [
        f"{m:g} people per place on average (target_units {s.target_units} / target_places "
        f"{s.target_places}), sizes varying with cv {cv:g}",
        f"ICC {s.icc:g}",
        f"covariates explain {s.r_squared:.0%} of the variance between people within places "
        "and none of the variance between places",
        "needed sizes keep the people per place and add places",
    ]
    for arm in p.arms[1:]:
        share = (arm.ratio + control.ratio) / total_ratio
        treated = arm.ratio / (arm.ratio + control.ratio)

        def se_pl(j: int, share=share, treated=treated) -> tuple[float, float | None]:
            places = j * share
            between = s.icc * (1 + cv**2)
            within = (1 - s.icc) * (1 - s.r_squared) / m
            se = math.sqrt((between + within) / (treated * (1 - treated) * places))
            if isinstance(d, MatchedPairClusterDesign):
                return se, places / 2 - 1
            return se, places - (strata + 1 if strata else 2)

        plans.append(
            (
                arm.name,
                _Plan(
                    kind="place",
                    se1=se_pl,
                    size=s.target_places,
                    size_step=step,
                    units_for=lambda j: round(j * m),
                    places_for=lambda j: j,
                    smallest=4 if step == 2 else strata + 2 if strata else 3,
                ),
            )
        )
    return plans, notes


def _sd_for(p: Protocol, effect: float) -> float:
    o = p.primary
    s = p.sample_size
    if o.type == "binary":
        if s.baseline_rate is None:
            raise UserError("a binary primary outcome needs sample_size.baseline_rate")
        return binary_sd(s.baseline_rate, effect, o.direction)
    if s.baseline_sd is None:
        raise UserError(f"a {o.type} primary outcome needs sample_size.baseline_sd")
    return s.baseline_sd


def _power(p: Protocol, plan: _Plan, size: int, effect: float) -> float:
    se, df = plan.se1(size)
    if df is not None and df < 1:
        return 0.0
    return two_sided_power(effect / (se * _sd_for(p, effect)), df, p.analysis.alpha)


def _mde(p: Protocol, plan: _Plan, target: float) -> float:
    """M x SE; for a binary outcome the SD depends on the effect, so iterate to the fixed
    point effect = M x SE(sd(effect))."""
    se, df = plan.se1(plan.size)
    k = multiplier(df, p.analysis.alpha, target) * se
    if p.primary.type != "binary":
        return k * _sd_for(p, 0.0)
    s = p.sample_size
    sign = 1 if p.primary.direction == "higher_is_better" else -1
    room = (1 - s.baseline_rate) if sign > 0 else s.baseline_rate
    effect = k * math.sqrt(s.baseline_rate * (1 - s.baseline_rate))
    for _ in range(100):
        effect = min(effect, room * (1 - 1e-9))
        new = k * binary_sd(s.baseline_rate, effect, p.primary.direction)
        if abs(new - effect) < 1e-12:
            break
        effect = new
    return effect


def smallest_size(
    power_of: Callable[[int], float],
    target: float = TARGET_POWER,
    start: int = 1,
    step: int = 1,
    limit: int = 10_000_000,
) -> int | None:
    """Smallest size ``start + k * step`` whose ``power_of(size)`` reaches ``target`` (power
    rises with size), or None if not even ``limit`` does. Used for the units or places needed."""

    def ok(k: int) -> bool:
        return power_of(start + k * step) >= target

    lo, hi = -1, 0
    while not ok(hi):
        lo, hi = hi, max(1, 2 * hi)
        if start + hi * step > limit:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return start + hi * step


def _needed(p: Protocol, plan: _Plan, effect: float, target: float) -> dict[str, int | None]:
    """Smallest size (in the plan's steps) with power at least ``target`` at ``effect``."""
    if effect == 0:
        return {"units": None, "places": None}
    start = math.ceil(plan.smallest / plan.size_step) * plan.size_step
    size = smallest_size(lambda k: _power(p, plan, k, effect), target, start, plan.size_step)
    if size is None:
        return {"units": None, "places": None}
    return {"units": plan.units_for(size), "places": plan.places_for(size)}


def power_for_protocol(p: Protocol, target: float = TARGET_POWER) -> dict[str, Any]:
    """Power of the registered design for its primary outcome at the minimal important
    difference and at the expected effect, the minimum detectable effect at ``target`` power,
    the sizes needed for ``target`` power, and the formula and assumptions in words."""
    o = p.primary
    s = p.sample_size
    mid = o.minimal_important_difference
    expected = abs(s.expected_effect)
    plans, notes = _plans(p)
    if o.type == "binary":
        notes["assumptions"].insert(
            0,
            f"binary outcome: variance pbar(1 - pbar) at pbar, the average of the baseline "
            f"rate {s.baseline_rate:g} and the rate with the effect",
        )
    else:
        notes["assumptions"].insert(0, f"outcome SD {s.baseline_sd:g} (baseline_sd)")
    comparisons = []
    for arm, plan in plans:
        se, df = plan.se1(plan.size)
        if df is not None and df < 1:
            what = "units" if plan.kind == "individual" else "places"
            raise UserError(
                f"{df:g} degrees of freedom: too few {what} for this design",
                "raise sample_size.target_units or target_places",
            )
        comparisons.append(
            {
                "arm": arm,
                "against": p.control.name,
                "standard_error": se * _sd_for(p, mid),
                "df": df,
                "power_at_mid": _power(p, plan, plan.size, mid),
                "power_at_expected": _power(p, plan, plan.size, expected),
                "mde": _mde(p, plan, target),
                "needed_at_mid": _needed(p, plan, mid, target),
                "needed_at_expected": _needed(p, plan, expected, target),
            }
        )
    return {
        "pilot": p.id,
        "design": p.design.method,
        "primary_outcome": o.name,
        "outcome_type": o.type,
        "alpha": p.analysis.alpha,
        "target_power": target,
        "minimal_important_difference": mid,
        "expected_effect": s.expected_effect,
        "units": s.target_units,
        "places": s.target_places if p.unit.level == "place" else None,
        "distribution": "normal" if isinstance(p.design, SteppedWedgeDesign) else "t",
        "method": notes["method"],
        "assumptions": notes["assumptions"],
        "comparisons": comparisons,
    }


def power_warnings(p: Protocol, target: float = TARGET_POWER) -> list[str]:
    """Plain-words warnings when the registered design has less than ``target`` power at the
    primary outcome's minimal important difference (a warning, not an error: pilots are
    often not built to settle the question)."""
    try:
        result = power_for_protocol(p, target)
    except UserError as exc:
        return [f"power could not be worked out: {exc.message}"]
    out = []
    for c in result["comparisons"]:
        if c["power_at_mid"] < target:
            need = c["needed_at_mid"]
            size = _size_words(need)
            out.append(
                f"{c['arm']} against {c['against']}: power {c['power_at_mid']:.2f} at the "
                f"minimal important difference {result['minimal_important_difference']:g} of "
                f"{result['primary_outcome']}, below {target:.0%}"
                + (f"; {target:.0%} power needs {size}" if size else "")
                + f" (see 'evalkit power {result['pilot']}')"
            )
    return out


def _size_words(need: dict[str, int | None]) -> str:
    if need["units"] is None:
        return ""
    if need["places"] is None:
        return f"{need['units']} units"
    return f"{need['places']} places ({need['units']} people)"


def format_power(result: dict[str, Any]) -> list[str]:
    """The result of :func:`power_for_protocol` as lines of text for the terminal."""
    r = result
    target = f"{r['target_power']:.0%}"
    lines = [
        f"{r['pilot']}: power for the primary outcome {r['primary_outcome']} "
        f"({r['outcome_type']}), {r['design']} design, alpha {r['alpha']:g} two-sided",
    ]
    size = f"{r['units']} units" + (f" in {r['places']} places" if r["places"] else "")
    for c in r["comparisons"]:
        df = "normal" if c["df"] is None else f"df {c['df']:.3g}"
        rows = [
            (
                "minimal important difference",
                f"{r['minimal_important_difference']:g}",
                f"power {c['power_at_mid']:.3f}",
            ),
            ("expected effect", f"{r['expected_effect']:g}", f"power {c['power_at_expected']:.3f}"),
            (f"minimum detectable effect ({target} power)", f"{c['mde']:.3g}", ""),
            (f"needed for {target} power at the MID", _size_words(c["needed_at_mid"]) or "-", ""),
            (
                f"needed for {target} power at the expected effect",
                _size_words(c["needed_at_expected"]) or "-",
                "",
            ),
        ]
        lines.append(
            f"  {c['arm']} against {c['against']}: {size}, standard error "
            f"{c['standard_error']:.3g} ({df})"
        )
        width = max(len(a) for a, _, _ in rows)
        for a, b, x in rows:
            lines.append(f"    {a:<{width}}  {b:<8} {x}".rstrip())
        if c["power_at_mid"] < r["target_power"]:
            lines.append(f"    warning: below {target} power at the minimal important difference")
    lines.append(f"  method: {r['method']}")
    lines.append("  assumptions:")
    lines += [f"    - {a}" for a in r["assumptions"]]
    return lines
