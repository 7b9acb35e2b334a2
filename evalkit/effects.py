"""Effect sizes and plain-words readings for a pilot's report.

Everything here is a pure function of the numbers it is given (no I/O, no store), so a
report can be recomputed by anyone from the analysed data and checked line by line.

The functions answer the questions a scrutiny commission asks of a small pilot: how big
is the difference in units that travel between studies (Hedges' g), what does it mean for
a yes/no outcome (rates, risk difference, relative risk, number needed to treat), how
sure can we be that it helps at all and by as much as matters (a normal-normal Bayesian
reading against the registered minimal important difference), were the arms alike at the
start (standardised differences), and how many people were lost (attrition).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from evalkit.protocol import Prior

DIRECTIONS = ("higher_is_better", "lower_is_better")

# z such that P(Z > z) = 5% for a standard normal (1.6449...): Spiegelhalter's sceptical
# prior puts 5% of its mass beyond the minimal important difference.
Z_95_ONE_SIDED = float(stats.norm.ppf(0.95))

# Plain-words ladder for a probability that the intervention helps. Boundaries are
# inclusive on the side of the words: p >= 0.95 and p >= 0.80 read upward; p <= 0.20 and
# p <= 0.05 read downward; strictly between 0.20 and 0.80 is "may help, may not".
VERY_LIKELY = 0.95
PROBABLY = 0.80
PROBABLY_NOT = 0.20
VERY_LIKELY_NOT = 0.05

# What Works Clearinghouse baseline-equivalence convention (WWC Procedures and Standards
# Handbook): an absolute baseline difference of at most 0.05 SD is equivalent, above 0.05
# and up to 0.25 SD needs statistical adjustment for that characteristic, above 0.25 SD
# cannot be made equivalent by adjustment.
SMD_ADJUST = 0.05
SMD_IMBALANCED = 0.25

_MULTITEST = {
    "holm": "holm",
    "bonferroni": "bonferroni",
    "hochberg": "simes-hochberg",
    "simes-hochberg": "simes-hochberg",
    "fdr_bh": "fdr_bh",
}


# --- helpers -------------------------------------------------------------------------


def _arms(treated: np.ndarray, n: int) -> np.ndarray:
    """Treatment indicator as booleans, refusing anything but two arms of 0/1 values."""
    t = np.asarray(treated)
    if t.ndim != 1 or len(t) != n:
        raise ValueError(f"treated must be one value per person ({n}), got shape {t.shape}")
    values = set(np.unique(t).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"treated must hold 0/1 (or False/True), got {sorted(values)}")
    t = t.astype(bool)
    if t.all() or not t.any():
        raise ValueError("both arms need at least one person")
    return t


def _outcome(y: np.ndarray) -> np.ndarray:
    v = np.asarray(y, dtype=float)
    if v.ndim != 1:
        raise ValueError("y must be one-dimensional")
    if not np.isfinite(v).all():
        raise ValueError("y has missing or infinite values; drop them before computing")
    return v


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def _pooled_sd(a: np.ndarray, b: np.ndarray) -> float:
    """Pooled SD with n - 2 degrees of freedom (the usual two-sample t-test variance)."""
    n1, n0 = len(a), len(b)
    ss = ((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()
    return math.sqrt(ss / (n1 + n0 - 2))


# --- Hedges' g -----------------------------------------------------------------------


def hedges_g(
    y: np.ndarray,
    treated: np.ndarray,
    clusters: np.ndarray | None = None,
    *,
    icc: float | None = None,
) -> dict[str, Any]:
    """Hedges' g (treated minus control) and its standard error, so that an effect can be
    compared with other studies and pooled in meta-analyses.

    Individual randomisation (Hedges & Olkin 1985; WWC Procedures Handbook)::

        S   = sqrt(((n1 - 1) s1^2 + (n0 - 1) s0^2) / (N - 2)),   N = n1 + n0
        J   = 1 - 3 / (4 N - 9)
        g   = J (ybar1 - ybar0) / S
        se  = sqrt(N / (n1 n0) + g^2 / (2 N))

    Place (cluster) randomisation, Hedges (2007) "Effect sizes in cluster-randomized
    designs", J. Educ. Behav. Stat. 32(4), eqs. for d_T and d_W, as used by the What Works
    Clearinghouse. With M places, n = N / M the average place size (Hedges 2007 p. 351:
    with unequal sizes the average gives a close approximation; the WWC also uses it) and
    rho the intraclass correlation::

        S_T^2     = total variance pooled within arms (as S above), N - 2 df
        S_W^2     = sum (y_ij - ybar_place)^2 / (N - M)      (pooled within-place)
        g_total   = J (ybar1 - ybar0) / S_T * sqrt(1 - 2 (n - 1) rho / (N - 2))
        se_total^2 = N / (n1 n0) (1 + (n - 1) rho)
                     + g_total^2 [(N - 2)(1 - rho)^2 + n (N - 2n) rho^2
                                  + 2 (N - 2n) rho (1 - rho)]
                       / [2 (N - 2) ((N - 2) - 2 (n - 1) rho)]
        g_within  = J (ybar1 - ybar0) / S_W
        se_within^2 = N / (n1 n0) (1 + (n - 1) rho) / (1 - rho) + g_within^2 / (2 (N - M))

    The WWC applies J to g_total; applying it to g_within too is our choice, so that the
    two are on the same footing. With places, ``g`` and ``se`` are g_total and se_total
    (the WWC's reported effect size). ``icc`` may be given (e.g. the registered one);
    otherwise it is the one-way ANOVA estimate within arms, truncated at 0::

        MSW = S_W^2,  MSB = sum_i n_i (ybar_i - ybar_arm)^2 / (M - 2)
        n0  = (N - sum_arms sum_i n_i^2 / N_arm) / (M - 2)
        sigma_B^2 = max(0, (MSB - MSW) / n0),  rho = sigma_B^2 / (sigma_B^2 + MSW)

    Every place must be in one arm only.
    """
    v = _outcome(y)
    t = _arms(treated, len(v))
    y1, y0 = v[t], v[~t]
    n1, n0 = len(y1), len(y0)
    n = n1 + n0
    if n1 < 2 or n0 < 2:
        raise ValueError("each arm needs at least two people for a standard deviation")
    j = 1 - 3 / (4 * n - 9)
    diff = float(y1.mean() - y0.mean())
    s_total = _pooled_sd(y1, y0)
    if s_total == 0:
        raise ValueError("the outcome does not vary within arms; g is undefined")
    out: dict[str, Any] = {
        "n_treated": n1,
        "n_control": n0,
        "difference": diff,
        "sd_pooled": s_total,
        "j": j,
        "g_total": None,
        "se_total": None,
        "g_within": None,
        "se_within": None,
        "icc": None,
        "icc_source": None,
        "n_places": None,
        "mean_place_size": None,
    }
    base = n / (n1 * n0)
    if clusters is None:
        g = j * diff / s_total
        out.update(g=g, se=math.sqrt(base + g**2 / (2 * n)))
        return out

    c = pd.Series(np.asarray(clusters)).astype(str).to_numpy()
    if len(c) != n:
        raise ValueError(f"clusters must be one value per person ({n}), got {len(c)}")
    frame = pd.DataFrame({"y": v, "t": t, "c": c})
    arms_per_place = frame.groupby("c")["t"].nunique()
    mixed = sorted(arms_per_place[arms_per_place > 1].index)
    if mixed:
        raise ValueError(f"places in both arms: {', '.join(mixed)}")
    m = int(arms_per_place.size)
    if n - m < 1:
        raise ValueError("every place has one person; the within-place SD is undefined")
    place = frame.groupby("c").agg(size=("y", "size"), mean=("y", "mean"), t=("t", "first"))
    frame["place_mean"] = frame["c"].map(place["mean"])
    ssw = float(((frame["y"] - frame["place_mean"]) ** 2).sum())
    msw = ssw / (n - m)
    s_within = math.sqrt(msw)
    size = n / m

    if icc is None:
        if m < 3:
            raise ValueError("estimating the ICC needs at least three places; give icc")
        arm_mean = place["t"].map({True: y1.mean(), False: y0.mean()})
        msb = float((place["size"] * (place["mean"] - arm_mean) ** 2).sum()) / (m - 2)
        arm_n = place["t"].map({True: n1, False: n0})
        n_0 = (n - float((place["size"] ** 2 / arm_n).sum())) / (m - 2)
        sigma_b2 = max(0.0, (msb - msw) / n_0)
        rho = sigma_b2 / (sigma_b2 + msw) if sigma_b2 + msw > 0 else 0.0
        source = "estimated"
    else:
        if not 0 <= icc < 1:
            raise ValueError(f"icc must be in [0, 1), got {icc}")
        rho = float(icc)
        source = "given"

    adj = 1 - 2 * (size - 1) * rho / (n - 2)
    if adj <= 0:
        raise ValueError("too few places for the Hedges (2007) total-variance correction")
    g_total = j * diff / s_total * math.sqrt(adj)
    num = (
        (n - 2) * (1 - rho) ** 2
        + size * (n - 2 * size) * rho**2
        + 2 * (n - 2 * size) * rho * (1 - rho)
    )
    den = 2 * (n - 2) * ((n - 2) - 2 * (size - 1) * rho)
    se_total = math.sqrt(base * (1 + (size - 1) * rho) + g_total**2 * num / den)
    if s_within == 0:
        g_within = se_within = None
    else:
        g_within = j * diff / s_within
        se_within = math.sqrt(
            base * (1 + (size - 1) * rho) / (1 - rho) + g_within**2 / (2 * (n - m))
        )
    out.update(
        g=g_total,
        se=se_total,
        g_total=g_total,
        se_total=se_total,
        g_within=g_within,
        se_within=se_within,
        sd_within=s_within,
        icc=rho,
        icc_source=source,
        n_places=m,
        mean_place_size=size,
    )
    return out


# --- binary outcomes -----------------------------------------------------------------


def binary_effects(
    y: np.ndarray,
    treated: np.ndarray,
    alpha: float = 0.05,
    *,
    direction: str = "higher_is_better",
) -> dict[str, Any]:
    """Rates and contrasts of a yes/no outcome, because "8 more in work out of every 100
    referred" is what a commission can weigh, and a relative risk alone is not.

    Treated versus control. Risk difference RD = p1 - p0 (a proportion: 0.08 is 8
    percentage points) with a Wald interval; relative risk RR = p1 / p0 with the log-scale
    Wald interval exp(log RR +/- z sqrt(1/a1 - 1/n1 + 1/a0 - 1/n0)); odds ratio with the
    log-scale (Woolf) interval. RR and OR are None when a cell they need is zero (no
    continuity correction is made up), and ``relative_risk_not_estimable`` /
    ``odds_ratio_not_estimable`` then say why (None when they were estimated). The risk
    difference needs no such cell and is always given.

    Number needed to treat is 1 / RD: the number of people offered the intervention for one
    more (RD > 0) or one fewer (RD < 0) to have the outcome. Whether that is a benefit
    depends on ``direction``; ``nnt_kind`` says "benefit" (number needed to treat for one
    to benefit, NNTB) or "harm" (number needed to harm, NNTH). None when RD is 0.
    """
    _check_direction(direction)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    v = _outcome(y)
    if not np.isin(v, (0.0, 1.0)).all():
        raise ValueError("a binary outcome must hold only 0 and 1")
    t = _arms(treated, len(v))
    n1, n0 = int(t.sum()), int((~t).sum())
    a1, a0 = int(v[t].sum()), int(v[~t].sum())
    p1, p0 = a1 / n1, a0 / n0
    z = float(stats.norm.ppf(1 - alpha / 2))
    rd = p1 - p0
    se_rd = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)

    rr = rr_low = rr_high = None
    rr_why = None
    if a1 > 0 and a0 > 0:
        rr = p1 / p0
        se_log_rr = math.sqrt(1 / a1 - 1 / n1 + 1 / a0 - 1 / n0)
        rr_low = math.exp(math.log(rr) - z * se_log_rr)
        rr_high = math.exp(math.log(rr) + z * se_log_rr)
    else:
        rr_why = (
            "nobody analysed has the outcome, so there is no ratio of rates"
            if a1 == a0 == 0
            else "an arm has no one with the outcome: the relative risk is 0 or infinite, "
            "with no finite log-scale interval (no continuity correction is made up)"
        )

    b1, b0 = n1 - a1, n0 - a0
    odds = odds_low = odds_high = None
    odds_why = None
    if min(a1, a0, b1, b0) > 0:
        odds = (a1 / b1) / (a0 / b0)
        se_log_or = math.sqrt(1 / a1 + 1 / b1 + 1 / a0 + 1 / b0)
        odds_low = math.exp(math.log(odds) - z * se_log_or)
        odds_high = math.exp(math.log(odds) + z * se_log_or)
    else:
        odds_why = (
            "a cell of the two-by-two table is zero (an arm where nobody, or everybody, has "
            "the outcome): the unadjusted odds ratio is 0 or infinite, with no finite Woolf "
            "interval; see the logistic model's odds ratio"
        )

    if rd == 0:
        nnt, kind = None, None
    else:
        nnt = 1 / rd
        good = rd > 0 if direction == "higher_is_better" else rd < 0
        kind = "benefit" if good else "harm"
    return {
        "n_treated": n1,
        "n_control": n0,
        "events_treated": a1,
        "events_control": a0,
        "treated_rate": p1,
        "control_rate": p0,
        "risk_difference": rd,
        "risk_difference_low": rd - z * se_rd,
        "risk_difference_high": rd + z * se_rd,
        "relative_risk": rr,
        "relative_risk_low": rr_low,
        "relative_risk_high": rr_high,
        "odds_ratio": odds,
        "odds_ratio_low": odds_low,
        "odds_ratio_high": odds_high,
        "relative_risk_not_estimable": rr_why,
        "odds_ratio_not_estimable": odds_why,
        "nnt": nnt,
        "nnt_kind": kind,
        "nnt_convention": (
            "nnt = 1 / risk difference: positive means one more person with the outcome "
            "for every nnt offered the intervention, negative one fewer for every |nnt|; "
            "nnt_kind 'benefit' is a number needed to treat, 'harm' a number needed to harm"
        ),
        "confidence": 1 - alpha,
    }


# --- Bayesian reading ----------------------------------------------------------------


def bayesian_reading(
    estimate: float, std_error: float, prior: Prior, mid: float, direction: str
) -> dict[str, Any]:
    """Normal-normal conjugate posterior for the effect, because a commission asks "how
    likely is it that this helps, and by as much as matters?", which a p-value does not
    answer.

    The likelihood is Normal(estimate, std_error^2). Priors:

    - ``sceptical``: mean 0, sd = mid / 1.6449 (Spiegelhalter, Abrams & Myles 2004), so
      the prior gives 5% probability to an effect beyond the minimal important difference
      in the benefit direction. A mean or sd written beside ``kind: sceptical`` is not used;
      the prior actually used is returned.
    - ``normal``: the registered mean and sd.
    - ``flat``: no prior information; the posterior is the likelihood.

    Posterior precision = 1/sd0^2 + 1/se^2; posterior mean = (m0/sd0^2 + est/se^2) /
    precision. P(benefit) is P(effect > 0) for ``higher_is_better`` and P(effect < 0) for
    ``lower_is_better``; P(beyond MID) likewise beyond +mid or -mid; P(harm) is
    1 - P(benefit) (the effect in the other direction).
    """
    _check_direction(direction)
    if not (math.isfinite(estimate) and math.isfinite(std_error)) or std_error <= 0:
        raise ValueError("estimate must be finite and std_error finite and positive")
    if not mid > 0:
        raise ValueError(f"the minimal important difference must be positive, got {mid}")
    if prior.kind == "sceptical":
        m0, sd0 = 0.0, mid / Z_95_ONE_SIDED
    elif prior.kind == "normal":
        if prior.mean is None or prior.sd is None:
            raise ValueError("a normal prior needs mean and sd")
        m0, sd0 = float(prior.mean), float(prior.sd)
    elif prior.kind == "flat":
        m0 = sd0 = None
    else:
        raise ValueError(f"unknown prior kind {prior.kind!r}")

    if sd0 is None:
        mean, sd = float(estimate), float(std_error)
    else:
        w0, w1 = 1 / sd0**2, 1 / std_error**2
        mean = (m0 * w0 + estimate * w1) / (w0 + w1)
        sd = math.sqrt(1 / (w0 + w1))

    post = stats.norm(mean, sd)
    if direction == "higher_is_better":
        p_benefit = float(post.sf(0.0))
        p_beyond = float(post.sf(mid))
    else:
        p_benefit = float(post.cdf(0.0))
        p_beyond = float(post.cdf(-mid))
    return {
        "posterior_mean": mean,
        "posterior_sd": sd,
        "credible_low": float(post.ppf(0.025)),
        "credible_high": float(post.ppf(0.975)),
        "credible_level": 0.95,
        "p_benefit": p_benefit,
        "p_beyond_mid": p_beyond,
        "p_harm": 1 - p_benefit,
        "mid": mid,
        "direction": direction,
        "prior": {"kind": prior.kind, "mean": m0, "sd": sd0},
    }


def _ladder(p: float) -> str:
    if p >= VERY_LIKELY:
        return "very likely"
    if p >= PROBABLY:
        return "probably"
    if p <= VERY_LIKELY_NOT:
        return "very likely not"
    if p <= PROBABLY_NOT:
        return "probably not"
    return "may or may not"


def words_for(p_benefit: float, p_beyond_mid: float) -> str:
    """Plain words for a Bayesian reading that never claim more than the probabilities do.

    Thresholds on P(benefit), boundaries inclusive as written:

    - p >= 0.95: "very likely helps"
    - 0.80 <= p < 0.95: "probably helps"
    - 0.20 < p < 0.80: "may help, may not"
    - 0.05 < p <= 0.20: "probably does not help"
    - p <= 0.05: "very likely does not help"

    The same ladder on P(beyond the MID) gives the second part, about helping by at least
    the smallest difference that matters. P(beyond MID) cannot exceed P(benefit).
    """
    for name, p in (("p_benefit", p_benefit), ("p_beyond_mid", p_beyond_mid)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be a probability, got {p}")
    if p_beyond_mid > p_benefit + 1e-12:
        raise ValueError("P(beyond the MID) cannot be larger than P(benefit)")
    first = {
        "very likely": "very likely helps",
        "probably": "probably helps",
        "may or may not": "may help, may not",
        "probably not": "probably does not help",
        "very likely not": "very likely does not help",
    }[_ladder(p_benefit)]
    second = {
        "very likely": "very likely helps by at least the smallest difference that matters",
        "probably": "probably helps by at least the smallest difference that matters",
        "may or may not": "may or may not help by as much as the smallest difference that matters",
        "probably not": "probably does not help by as much as the smallest difference that matters",
        "very likely not": "very likely does not help by as much as the smallest difference "
        "that matters",
    }[_ladder(p_beyond_mid)]
    return f"{first[0].upper()}{first[1:]}; it {second}."


# --- baseline balance ----------------------------------------------------------------


def _flag(smd: float) -> str:
    a = abs(smd)
    if a > SMD_IMBALANCED:
        return "imbalanced"
    if a > SMD_ADJUST:
        return "adjust"
    return "balanced"


def _smd(diff: float, sd: float) -> float:
    if sd != 0:
        return diff / sd
    # no variation in either arm: identical (0) or entirely separated (infinite)
    return 0.0 if diff == 0 else math.copysign(math.inf, diff)


def _smd_row(
    variable: str, level: str | None, kind: str, x1: np.ndarray, x0: np.ndarray
) -> dict[str, Any]:
    n1, n0 = len(x1), len(x0)
    m1 = float(x1.mean()) if n1 else math.nan
    m0 = float(x0.mean()) if n0 else math.nan
    enough = n1 > 0 and n0 > 0 and n1 + n0 > 2
    sd = _pooled_sd(x1, x0) if enough else math.nan
    smd = _smd(m1 - m0, sd) if enough else math.nan
    return {
        "variable": variable,
        "level": level,
        "kind": kind,
        "n_treated": n1,
        "n_control": n0,
        "mean_treated": m1,
        "mean_control": m0,
        "sd_pooled": sd,
        "smd": smd,
        "flag": _flag(smd) if not math.isnan(smd) else "not enough data",
    }


def standardised_differences(baseline: pd.DataFrame, treated: np.ndarray) -> list[dict]:
    """Balance table: were the arms alike before the intervention started?

    Numeric columns (booleans count as numeric 0/1): difference in means (treated minus
    control) over the pooled SD. Other columns are categorical: one row per level, the
    difference in proportions over the pooled SD of the 0/1 indicator. The pooled SD has
    n - 2 degrees of freedom; missing values are left out column by column.

    Flags follow the What Works Clearinghouse baseline-equivalence convention: |SMD| <=
    0.05 "balanced", 0.05 < |SMD| <= 0.25 "adjust" (adjust for it in the analysis),
    |SMD| > 0.25 "imbalanced". (The WWC itself computes Hedges' g for continuous and the
    Cox index for binary characteristics; these plain SMDs are close to g for continuous
    ones and differ from the Cox index for binary ones.)
    """
    t = _arms(treated, len(baseline))
    rows: list[dict] = []
    for col in baseline.columns:
        s = baseline[col]
        keep = s.notna().to_numpy()
        tt = t[keep]
        s = s[keep]
        name = str(col)
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            x = s.to_numpy(dtype=float)
            kind = "binary" if pd.api.types.is_bool_dtype(s) else "numeric"
            rows.append(_smd_row(name, None, kind, x[tt], x[~tt]))
            continue
        levels = (
            list(s.cat.categories)
            if isinstance(s.dtype, pd.CategoricalDtype)
            else sorted(s.unique(), key=str)
        )
        for level in levels:
            x = (s == level).to_numpy(dtype=float)
            rows.append(_smd_row(name, str(level), "category", x[tt], x[~tt]))
    return rows


# --- multiplicity --------------------------------------------------------------------


def adjust_pvalues(pvalues: Sequence[float], method: str) -> list[float]:
    """P-values adjusted for several outcomes or subgroups, with the registered method.

    "holm", "bonferroni", "hochberg" (Simes-Hochberg step-up, also accepted as
    "simes-hochberg") and "fdr_bh" (Benjamini-Hochberg false discovery rate) are computed
    by ``statsmodels.stats.multitest.multipletests``; "none" returns them unchanged.
    """
    p = [float(x) for x in pvalues]
    if any(not 0 <= x <= 1 for x in p):
        raise ValueError("p-values must be between 0 and 1")
    if method == "none":
        return p
    if method not in _MULTITEST:
        raise ValueError(f"unknown method {method!r}; use one of none, {', '.join(_MULTITEST)}")
    if not p:
        return []
    return [float(x) for x in multipletests(p, method=_MULTITEST[method])[1]]


# --- attrition -----------------------------------------------------------------------


def attrition(randomised_by_arm: dict[str, int], analysed_by_arm: dict[str, int]) -> dict:
    """Overall and differential attrition, because losing people unevenly between arms can
    bias a randomised comparison however it is analysed.

    Attrition in an arm is the share of those randomised who are not analysed. Overall
    attrition pools all arms; differential attrition is the largest arm rate minus the
    smallest, in percentage points. No judgement against the WWC attrition boundary is
    made here: only the rates.
    """
    if set(randomised_by_arm) != set(analysed_by_arm):
        raise ValueError("randomised and analysed must name the same arms")
    if len(randomised_by_arm) < 2:
        raise ValueError("attrition needs at least two arms")
    by_arm = {}
    for arm, r in randomised_by_arm.items():
        a = analysed_by_arm[arm]
        if r <= 0:
            raise ValueError(f"arm {arm!r}: nobody randomised")
        if not 0 <= a <= r:
            raise ValueError(f"arm {arm!r}: {a} analysed of {r} randomised")
        by_arm[arm] = 100 * (r - a) / r
    total_r = sum(randomised_by_arm.values())
    total_a = sum(analysed_by_arm.values())
    return {
        "randomised": total_r,
        "analysed": total_a,
        "overall_percent": 100 * (total_r - total_a) / total_r,
        "differential_points": max(by_arm.values()) - min(by_arm.values()),
        "by_arm_percent": by_arm,
    }


# --- registered generalised linear models ---------------------------------------------

#: The models a protocol may register for a binary or count outcome, with the scale on
#: which their treatment coefficient is reported once exponentiated.
RATIO_MODELS = {
    "logistic": "odds ratio",
    "poisson": "rate ratio",
    "negative_binomial": "rate ratio",
}


#: Why a maximum-likelihood odds ratio does not exist under separation, in words that name
#: no arm and no count (the reasons are printed on published pages).
SEPARATION = (
    "perfect separation: among the analysed people the arm (with the covariates) predicts "
    "the outcome exactly for some of them, so maximum likelihood has no finite odds ratio"
)
#: The same for a count model: zero counts that the arm (with the covariates) predicts.
ZERO_COUNTS = (
    "the counts are zero for everyone in some combination of arm and covariates (an arm "
    "in which nobody had any, for example), so the maximum-likelihood rate ratio is 0 or "
    "infinite and has no finite log-scale interval"
)
#: Firth's fit: Newton-Raphson steps with the information of the augmented data (as
#: logistf), each capped at 5 on the coefficient scale and halved until the penalised
#: log-likelihood does not fall, until the largest penalised score is below _FIRTH_GTOL
#: times the people analysed or the full step below _FIRTH_XTOL.
_FIRTH_GTOL = 1e-11
_FIRTH_XTOL = 1e-10
_FIRTH_MAXIT = 50
_FIRTH_MAXSTEP = 5.0
#: A linear programme whose optimum is below -_LP_TOL (on columns scaled to at most 1 and
#: directions in the unit box) has a direction along which the likelihood never falls.
_LP_TOL = 1e-7


def _unit_columns(X: np.ndarray) -> np.ndarray:
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    return X / scale


def _direction_exists(A_ub: np.ndarray | None, A_eq: np.ndarray | None, c: np.ndarray) -> bool:
    """Whether min c'd subject to A_ub d <= 0, A_eq d = 0 and -1 <= d <= 1 is negative: a
    recession direction of the log-likelihood (Konis 2007's linear programme, in the box
    so that it is bounded)."""
    from scipy.optimize import linprog

    res = linprog(
        c,
        A_ub=A_ub if A_ub is not None and len(A_ub) else None,
        b_ub=np.zeros(len(A_ub)) if A_ub is not None and len(A_ub) else None,
        A_eq=A_eq if A_eq is not None and len(A_eq) else None,
        b_eq=np.zeros(len(A_eq)) if A_eq is not None and len(A_eq) else None,
        bounds=[(-1.0, 1.0)] * len(c),
        method="highs",
    )
    if res.status != 0:  # the box keeps it feasible (d = 0) and bounded
        raise ValueError(f"the separation check failed: {res.message}")
    return bool(res.fun < -_LP_TOL)


def separated(y: np.ndarray, X: np.ndarray) -> bool:
    """Whether a 0/1 outcome is completely or quasi-completely separated by the columns
    of ``X``, so that the logistic model has no finite maximum-likelihood estimate.

    Albert and Anderson (1984): the estimate is infinite exactly when some d != 0 has
    x_i'd >= 0 for every person with the outcome and <= 0 for every person without, with
    at least one inequality strict. With s_i = +1 / -1 for outcome 1 / 0, that is a d in
    the unit box with s_i x_i'd >= 0 for all i and sum_i s_i x_i'd > 0, found by the linear
    programme of Konis (2007) (R's detectseparation and safeBinaryRegression use it).
    Statsmodels only warns on complete separation and misses quasi-complete separation
    (an arm in which nobody had the outcome), which is the common case in small pilots."""
    v = np.asarray(y, dtype=float)
    A = _unit_columns(np.asarray(X, dtype=float)) * np.where(v > 0.5, 1.0, -1.0)[:, None]
    return _direction_exists(-A, None, -A.sum(axis=0))


def zero_count_separation(y: np.ndarray, X: np.ndarray) -> bool:
    """Whether a Poisson or negative binomial model with log link has no finite
    maximum-likelihood estimate: some d != 0 has x_i'd = 0 for every positive count and
    x_i'd <= 0 for every zero count, at least one strictly (the log-likelihood
    sum y_i eta_i - exp(eta_i), and the negative binomial's likewise, then rises for ever
    along d). An arm in which every count is zero is the usual case."""
    v = np.asarray(y, dtype=float)
    Xs = _unit_columns(np.asarray(X, dtype=float))
    zero = v == 0
    if not zero.any():
        return False
    return _direction_exists(Xs[zero], Xs[~zero], Xs[zero].sum(axis=0))


def _penalised(
    y: np.ndarray, X: np.ndarray, beta: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Firth's penalised log-likelihood l(beta) + 1/2 log det X'WX, with the fitted
    probabilities p, the weights W = p (1 - p) and the leverages h (the diagonal of
    W^1/2 X (X'WX)^-1 X' W^1/2), the last two from a QR factorisation of W^1/2 X, which
    keeps them accurate when probabilities are near 0 or 1."""
    from scipy import special

    eta = X @ beta
    loglik = -float((y * np.logaddexp(0.0, -eta) + (1 - y) * np.logaddexp(0.0, eta)).sum())
    p = special.expit(eta)
    w = p * special.expit(-eta)  # not p (1 - p), which loses 1 - p when p is near 1
    q, r = np.linalg.qr(X * np.sqrt(w)[:, None])
    diag = np.abs(np.diag(r))
    if not (diag > 0).all():
        return -math.inf, p, w, np.zeros_like(p)
    return loglik + float(np.log(diag).sum()), p, w, (q**2).sum(axis=1)


def _firth_fit(
    y: np.ndarray, X: np.ndarray, beta: np.ndarray, free: list[int]
) -> tuple[np.ndarray, float]:
    """Maximise the penalised log-likelihood over the coefficients ``free``, the others
    held at their values in ``beta`` (the penalty always uses the whole design, as in
    logistf and Heinze and Schemper 2002). The gradient is Firth's modified score
    X'(y - p + h (1/2 - p)). Newton steps use the information of Heinze and Schemper's
    augmented data, X' diag(w (1 + h)) X (as logistf); under complete separation the
    penalised likelihood is flat far out and those steps crawl, so the fit is finished by
    quasi-Newton (scipy's BFGS) on the exact score. Converged when the score is below
    _FIRTH_GTOL per person or the full Newton step below _FIRTH_XTOL, or when the full
    step is below 1e-8 (1e-7 when no step at all is uphill) and no step raises the
    penalised likelihood by more than rounding (its maximum, to the precision of the
    arithmetic)."""
    from scipy.optimize import minimize

    beta = np.array(beta, dtype=float)
    pll, p, w, h = _penalised(y, X, beta)
    if not free:
        return beta, pll
    idx = np.ix_(free, free)
    tol = _FIRTH_GTOL * max(1, len(y))

    def score_of(p: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
        residual = np.where(y > 0.5, w / np.maximum(p, 1e-300), -p)  # y - p; 1 - p = w / p
        return X.T @ (residual + h * (0.5 - p))

    for _ in range(_FIRTH_MAXIT):
        score = score_of(p, w, h)
        augmented = X.T @ (X * (w * (1 + h))[:, None])
        step = np.zeros_like(beta)
        step[free] = np.linalg.solve(augmented[idx], score[free])
        big = float(np.abs(step).max())
        if np.abs(score[free]).max() <= tol or big <= _FIRTH_XTOL:
            return beta, pll
        if big > _FIRTH_MAXSTEP:
            step *= _FIRTH_MAXSTEP / big
        for _ in range(40):
            trial = _penalised(y, X, beta + step)
            if trial[0] >= pll:
                break
            step /= 2
        else:
            if big <= 1e-7:  # no step uphill: the maximum, to rounding
                return beta, pll
            break
        gain = trial[0] - pll
        beta = beta + step
        pll, p, w, h = trial
        if big <= 1e-8 and gain <= 1e-14 * (1 + abs(pll)):  # flat to rounding
            return beta, pll

    def minus(free_beta: np.ndarray) -> tuple[float, np.ndarray]:
        b = beta.copy()
        b[free] = free_beta
        value, pp, ww, hh = _penalised(y, X, b)
        if not math.isfinite(value):
            return math.inf, np.zeros(len(free))
        return -value, -score_of(pp, ww, hh)[free]

    res = minimize(
        minus, beta[free], jac=True, method="BFGS", options={"gtol": tol, "maxiter": 2000}
    )
    polished = beta.copy()
    polished[free] = res.x
    value = _penalised(y, X, polished)
    if value[0] >= pll and np.abs(score_of(*value[1:])[free]).max() <= 1e4 * tol:
        return polished, value[0]
    raise ValueError("Firth's penalised likelihood did not converge")


def firth_logistic(
    y: np.ndarray, X: np.ndarray, column: int = 1, alpha: float = 0.05
) -> dict[str, Any]:
    """Firth's penalised-likelihood logistic regression (Firth 1993; Heinze and Schemper
    2002), the usual answer to separation: the log-likelihood plus half the log
    determinant of the Fisher information (Jeffreys' prior) has a finite maximum even when
    an arm has no one (or everyone) with the outcome, and its estimates have less
    small-sample bias than maximum likelihood's.

    For coefficient ``column``, as R's logistf reports it (its defaults ``pl = TRUE``):

    - ``coef``: the penalised estimate; ``std_error``: from the inverse of the information
      of Heinze and Schemper's augmented data, X' diag(p (1 - p) (1 + h)) X at the
      estimate (logistf's ``var``), a Wald-type figure only: the interval and test below
      do not use it;
    - ``conf_low``, ``conf_high``: the profile penalised likelihood interval, the values b
      at which 2 (l*(beta hat) - max over the other coefficients of l* with beta_j = b)
      equals the chi-squared(1) quantile at 1 - alpha (each found by Brent's method);
    - ``p_value``: the penalised likelihood-ratio test of beta_j = 0, chi-squared on 1 df.

    Written here because statsmodels has no Firth model; checked against logistf in
    tests/data/make_reference_degenerate.R."""
    from scipy.optimize import brentq

    yv = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    k = X.shape[1]
    if np.linalg.matrix_rank(X) < k:
        raise ValueError("the design's columns are collinear; Firth's model cannot be fitted")
    beta, pll = _firth_fit(yv, X, np.zeros(k), list(range(k)))
    _, _, w, h = _penalised(yv, X, beta)
    augmented = X.T @ (X * (w * (1 + h))[:, None])  # each person counted 1 + h times
    se = math.sqrt(float(np.linalg.inv(augmented)[column, column]))
    others = [j for j in range(k) if j != column]
    target = pll - float(stats.chi2.ppf(1 - alpha, 1)) / 2

    def profile(b: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        fixed = start.copy()
        fixed[column] = b
        fitted, value = _firth_fit(yv, X, fixed, others)
        return value, fitted

    def limit(sign: float) -> float:
        inner, inner_beta = float(beta[column]), beta
        width = max(se, 0.5)
        for _ in range(60):
            outer = float(beta[column]) + sign * width
            value, fitted = profile(outer, inner_beta)
            if value < target:
                break
            inner, inner_beta, width = outer, fitted, width * 2
        else:
            raise ValueError("the profile penalised likelihood does not fall to its limit")
        lo, hi = sorted((inner, outer))
        return float(brentq(lambda b: profile(b, inner_beta)[0] - target, lo, hi, xtol=1e-12))

    at_zero, _ = profile(0.0, beta)
    statistic = max(0.0, 2 * (pll - at_zero))
    return {
        "coef": float(beta[column]),
        "std_error": se,
        "conf_low": limit(-1.0),
        "conf_high": limit(1.0),
        "p_value": float(stats.chi2.sf(statistic, 1)),
        "penalised_loglik": pll,
        "coefficients": [float(b) for b in beta],
    }


def logistic_odds_ratio(y: np.ndarray, X: np.ndarray, alpha: float = 0.05) -> dict[str, Any]:
    """The adjusted odds ratio of column 1 of ``X`` from a logistic model with the rest as
    covariates, a secondary presentation beside the linear probability model: maximum
    likelihood with its model-based Wald interval, or, when maximum likelihood has no
    finite estimate (separation, see ``separated``) or does not converge, Firth's
    penalised likelihood with its profile interval and penalised likelihood-ratio test
    (``method`` says which, ``note`` why). Not estimable, with the reason, when the outcome
    does not vary or the columns are collinear."""
    import statsmodels.api as sm

    yv = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    if yv.min() == yv.max():
        return {"not_estimable": "the outcome does not vary among the analysed people"}
    if np.linalg.matrix_rank(X) < X.shape[1]:
        return {"not_estimable": "the arm and covariates are collinear among the analysed people"}
    why = SEPARATION if separated(yv, X) else None
    if why is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                fit = sm.GLM(yv, X, family=sm.families.Binomial()).fit()
                low, high = fit.conf_int(alpha=alpha)[1]
                values = [float(fit.params[1]), float(low), float(high), float(fit.pvalues[1])]
                if fit.converged and all(math.isfinite(v) for v in values):
                    return {
                        "odds_ratio": math.exp(values[0]),
                        "conf_low": math.exp(values[1]),
                        "conf_high": math.exp(values[2]),
                        "p_value": values[3],
                        "method": "maximum likelihood",
                    }
                why = "maximum likelihood did not converge"
            except (Warning, np.linalg.LinAlgError, ValueError) as exc:
                why = f"maximum likelihood failed ({str(exc).splitlines()[0]})"
    try:
        f = firth_logistic(yv, X, 1, alpha)
    except (ValueError, np.linalg.LinAlgError) as exc:
        return {"not_estimable": f"{why}; Firth's penalised likelihood failed too ({exc})"}
    return {
        "odds_ratio": math.exp(f["coef"]),
        "conf_low": math.exp(f["conf_low"]),
        "conf_high": math.exp(f["conf_high"]),
        "p_value": f["p_value"],
        "method": "firth",
        "note": f"{why}; Firth's penalised likelihood (Heinze and Schemper 2002) gives a "
        "finite odds ratio, with a profile penalised likelihood interval and a penalised "
        "likelihood-ratio test",
    }


def ratio_model(
    y: np.ndarray,
    X: np.ndarray,
    model: str,
    clusters: np.ndarray | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The registered logistic, Poisson or negative binomial model, fitted as registered:
    column 1 of ``X`` is the treatment indicator, column 0 the intercept, the rest the
    registered covariates. Its exponentiated treatment coefficient is the odds ratio
    (logistic) or the rate ratio (Poisson, negative binomial).

    Fitting: statsmodels GLM (binomial or Poisson family, log link for counts, logit for
    binary). The negative binomial is NB2 (variance mu + a mu^2): ``a`` is estimated by
    maximum likelihood (statsmodels NegativeBinomial) and the coefficients are then the GLM
    fit with ``a`` fixed there, as R's MASS::glm.nb reports them (theta = 1 / a). When the
    counts are not overdispersed (the score for ``a`` at 0, half the sum of
    (y - mu)^2 - y over the Poisson fit, is not positive; Cameron and Trivedi 2013, 3.4)
    the maximum is at a = 0, where the negative binomial is the Poisson model: that fit is
    reported with ``dispersion`` 0.

    Covariance, because a model-based one assumes the variance function is right: the
    sandwich with the expected information as bread (as R's sandwich package computes it
    for glm and glm.nb fits; for the negative binomial's log link it differs from the
    observed information)::

        bread = (X' W X)^-1,  W = (dmu/deta)^2 / V(mu)
        score_i = x_i (y_i - mu_i) (dmu/deta)_i / V(mu_i)
        meat = sum over places of (sum of the place's scores)(...)' (each person alone
               for HC0)

    - place designs: cluster-robust sandwich with the CR1 factor G/(G-1) (N-1)/(N-K) (R's
      sandwich::vcovCL(type = "HC1"), Stata's vce(cluster)); t intervals and p-values on
      G - 1 degrees of freedom. No CR2-type correction exists for these models in the
      libraries used, so with few places the interval can still be too narrow: ``note``
      says so and the linear model's CR2 and randomisation inference are the check.
    - individual designs: HC0 sandwich (R's sandwich::sandwich); normal intervals and
      p-values, the usual large-sample inference for a generalised linear model.
    """
    import statsmodels.api as sm

    if model not in RATIO_MODELS:
        raise ValueError(f"model must be one of {', '.join(RATIO_MODELS)}, got {model!r}")
    check = np.asarray(y, dtype=float)
    if model == "logistic" and not np.isin(check, (0.0, 1.0)).all():
        raise ValueError("a logistic model needs an outcome of 0 and 1")
    if model != "logistic" and ((check < 0).any() or (check != np.round(check)).any()):
        raise ValueError(f"a {model.replace('_', ' ')} model needs whole non-negative counts")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    X = np.asarray(X, dtype=float)
    if check.min() == check.max():
        raise ValueError("the outcome does not vary among the analysed people")
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise ValueError("the arm and covariates are collinear among the analysed people")
    if model == "logistic" and separated(check, X):
        return _firth_model(check, X, clusters, alpha, SEPARATION)
    if model != "logistic" and zero_count_separation(check, X):
        raise ValueError(ZERO_COUNTS)
    dispersion, refit = None, None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # non-convergence: Firth (logistic) or not estimable
        try:
            if model == "logistic":
                family = sm.families.Binomial()
            elif model == "poisson":
                family = sm.families.Poisson()
            else:
                dispersion, refit = _nb_dispersion(check, X)
                family = (
                    sm.families.NegativeBinomial(alpha=dispersion)
                    if dispersion > 0
                    else sm.families.Poisson()
                )
            fit = sm.GLM(check, X, family=family).fit()
            if not fit.converged:
                raise ValueError("the model's fit did not converge")
        except (Warning, np.linalg.LinAlgError, ValueError) as exc:
            why = str(exc).splitlines()[0]
            if model == "logistic":
                return _firth_model(check, X, clusters, alpha, f"maximum likelihood failed ({why})")
            raise ValueError(why) from None
    cov = _glm_sandwich(check, X, np.asarray(fit.mu), family, clusters)
    b, se = float(fit.params[1]), math.sqrt(cov[1, 1])
    if not (math.isfinite(b) and math.isfinite(se)) or se <= 0:
        raise ValueError("the treatment coefficient cannot be estimated")
    if clusters is not None:
        groups = len(np.unique(clusters))
        df: float | None = float(groups - 1)
        q = float(stats.t.ppf(1 - alpha / 2, df))
        p = float(2 * stats.t.sf(abs(b / se), df))
        se_type = "CR1"
        note = (
            f"cluster-robust (CR1) standard error with t on {groups - 1} degrees of freedom; "
            f"with {groups} places it may still be too small, so read it beside the linear "
            "model's CR2 interval and the randomisation inference"
        )
    else:
        groups, df = None, None
        q = float(stats.norm.ppf(1 - alpha / 2))
        p = float(2 * stats.norm.sf(abs(b / se)))
        se_type = "HC0"
        note = "heteroskedasticity-robust (HC0 sandwich) standard error, normal inference"
    if dispersion == 0:
        note += (
            "; the counts vary no more than a Poisson model expects, so the negative "
            "binomial's dispersion estimate is at its boundary 0 and the fit is the Poisson one"
        )
    if refit:
        note += f"; {refit}"
    out = {
        "model": model,
        "scale": RATIO_MODELS[model],
        "estimate": math.exp(b),
        "conf_low": math.exp(b - q * se),
        "conf_high": math.exp(b + q * se),
        "p_value": p,
        "log_estimate": b,
        "log_std_error": se,
        "df": df,
        "se_type": se_type,
        "n": len(check),
        "clusters": groups,
        "dispersion": dispersion,
        "confidence": 1 - alpha,
        "method": "maximum likelihood",
        "note": note,
    }
    if refit:
        out["refit"] = refit
    return out


def _firth_model(
    y: np.ndarray, X: np.ndarray, clusters: np.ndarray | None, alpha: float, why: str
) -> dict[str, Any]:
    """The registered logistic model by Firth's penalised likelihood when maximum
    likelihood has no finite estimate. People randomised one by one only: Firth's model
    treats people as independent, and no small-sample cluster-robust version of it is
    established, so a place design's model is then not estimable (the linear model's CR2
    difference and the randomisation inference still answer the question)."""
    if clusters is not None:
        raise ValueError(
            f"{why}; Firth's penalised likelihood, the usual remedy, treats people as "
            "independent and cannot allow for clustering by place"
        )
    f = firth_logistic(y, X, 1, alpha)
    return {
        "model": "logistic",
        "scale": RATIO_MODELS["logistic"],
        "estimate": math.exp(f["coef"]),
        "conf_low": math.exp(f["conf_low"]),
        "conf_high": math.exp(f["conf_high"]),
        "p_value": f["p_value"],
        "log_estimate": f["coef"],
        "log_std_error": f["std_error"],
        "df": None,
        "se_type": "Firth",
        "n": len(y),
        "clusters": None,
        "dispersion": None,
        "confidence": 1 - alpha,
        "method": "firth",
        "note": f"{why}; Firth's penalised likelihood (Heinze and Schemper 2002) gives a "
        "finite odds ratio: the interval is the profile penalised likelihood interval and "
        "the p-value the penalised likelihood-ratio test (as R's logistf); the standard "
        "error is model-based, from the penalised fit's information",
    }


def _glm_sandwich(
    y: np.ndarray, X: np.ndarray, mu: np.ndarray, family: Any, clusters: np.ndarray | None
) -> np.ndarray:
    """Robust covariance of a GLM's coefficients (see ratio_model): CR1 with the factor
    G/(G-1) (N-1)/(N-K) when clustered, HC0 otherwise."""
    n, k = X.shape
    dmu = 1.0 / family.link.deriv(mu)
    var = family.variance(mu)
    bread = np.linalg.inv(X.T @ (X * (dmu**2 / var)[:, None]))
    scores = X * ((y - mu) * dmu / var)[:, None]
    if clusters is None:
        meat = scores.T @ scores
        factor = 1.0
    else:
        codes, groups = np.unique(np.asarray(clusters), return_inverse=True)
        sums = np.zeros((len(codes), k))
        np.add.at(sums, groups, scores)
        meat = sums.T @ sums
        g = len(codes)
        factor = g / (g - 1) * (n - 1) / (n - k)
    return factor * bread @ meat @ bread


def _nb_loglik(y: np.ndarray, mu: np.ndarray, a: float) -> float:
    """NB2 log-likelihood with mean ``mu`` and dispersion ``a`` (Var = mu + a mu^2)."""
    from scipy import special

    r = 1.0 / a
    return float(
        (
            special.gammaln(y + r)
            - special.gammaln(r)
            - special.gammaln(y + 1)
            + r * np.log(r / (r + mu))
            + y * np.log(mu / (r + mu))
        ).sum()
    )


def _nb_dispersion(y: np.ndarray, X: np.ndarray) -> tuple[float, str | None]:
    """Maximum-likelihood NB2 dispersion ``a`` (0 when the counts are not overdispersed),
    and, when the first fit failed, what failed and which refit was used.

    The first fit is Newton-Raphson from the Poisson coefficients with a = 0.1. On counts
    barely more variable than Poisson ones its steps can take ``a`` below 0, where the
    likelihood has no value ("invalid value encountered in log"), or stop at a point that
    is not a maximum. Then, in turn: Newton from the moments estimate of ``a`` (least
    squares of (y - mu)^2 - y on mu^2, Cameron and Trivedi 2013, 3.2); BFGS (which works on
    log a, so ``a`` stays positive) from the same start, polished by Newton; and the
    profile likelihood of log a maximised by Brent's method with the coefficients fitted
    by the GLM at each a (the alternation of MASS::glm.nb), polished by Newton. A fit is
    taken only when it converged without a warning, with ``a`` > 0 and every score below
    1e-6 per person. When none is, the reason names every attempt."""
    import statsmodels.api as sm
    from scipy.optimize import minimize_scalar

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        poisson = sm.GLM(y, X, family=sm.families.Poisson()).fit()
    mu = np.asarray(poisson.mu)
    if float(((y - mu) ** 2 - y).sum()) <= 0:
        return 0.0, None
    model = sm.NegativeBinomial(y, X, loglike_method="nb2")
    tol = 1e-6 * max(1, len(y))
    moments = float((((y - mu) ** 2 - y) * mu**2).sum() / (mu**4).sum())
    base = np.asarray(poisson.params)

    def accept(params: np.ndarray, converged: bool) -> np.ndarray:
        if not converged:
            raise ValueError("did not converge")
        if not np.isfinite(params).all() or params[-1] <= 0:
            raise ValueError(f"ended at a = {params[-1]:.3g}")
        if np.abs(model.score(params)).max() > tol:
            raise ValueError("stopped where the likelihood is not at its maximum")
        return params

    def newton(start: np.ndarray) -> np.ndarray:
        nb = model.fit(start_params=start, method="newton", disp=0, maxiter=200)
        return accept(np.asarray(nb.params), nb.mle_retvals.get("converged", False))

    def bfgs(start: np.ndarray) -> np.ndarray:
        nb = model.fit(start_params=start, method="bfgs", disp=0, maxiter=2000)
        if not nb.mle_retvals.get("converged", False):
            raise ValueError("did not converge")
        return newton(np.asarray(nb.params))

    def profile() -> np.ndarray:
        def minus(log_a: float) -> float:
            a = math.exp(log_a)
            fit = sm.GLM(y, X, family=sm.families.NegativeBinomial(alpha=a)).fit()
            return -_nb_loglik(y, np.asarray(fit.mu), a)

        best = minimize_scalar(
            minus,
            bounds=(math.log(1e-8), math.log(1e4)),
            method="bounded",
            options={"xatol": 1e-10},
        )
        a = math.exp(float(best.x))
        fit = sm.GLM(y, X, family=sm.families.NegativeBinomial(alpha=a)).fit()
        return newton(np.append(np.asarray(fit.params), a))

    attempts = [
        ("Newton from the Poisson coefficients with a = 0.1", lambda: newton(np.append(base, 0.1)))
    ]
    if moments > 0:
        attempts.append(
            (
                f"Newton from the moments estimate a = {moments:.3g}",
                lambda: newton(np.append(base, moments)),
            )
        )
    start = max(moments, 0.01)
    attempts += [
        (f"BFGS on log a from a = {start:.3g}, then Newton", lambda: bfgs(np.append(base, start))),
        ("the profile likelihood of a (as MASS::glm.nb), then Newton", profile),
    ]
    failed = []
    for what, attempt in attempts:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                params = attempt()
            except (Warning, ValueError, np.linalg.LinAlgError) as exc:
                failed.append(f"{what}: {str(exc).splitlines()[0]}")
                continue
        if not failed:
            return float(params[-1]), None
        return float(params[-1]), (
            "the negative binomial dispersion was refitted: "
            + "; ".join(failed)
            + f"; {what} converged"
        )
    raise ValueError(
        "the negative binomial likelihood could not be maximised (tried " + "; ".join(failed) + ")"
    )
