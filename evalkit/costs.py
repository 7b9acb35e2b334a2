"""Costs, who pays and who saves, and the cost of each extra person in work.

Costs follow the Early Intervention Foundation method: for each arm, the quantity of every
item a participant receives times its unit cost, summed per agency. Joined-up working moves
money between budgets (the council pays for a key worker, DWP saves on benefits), so every
figure is kept per agency as well as in total; a scrutiny commission needs to see that one
organisation's spending can be another's saving.

The planned unit costs are fixed numbers, so the only uncertainty in the cost per additional
outcome comes from the effect. All functions are pure: no I/O, randomness only from the
numpy Generator passed in, nothing rounded (presentation rounds).
"""

from __future__ import annotations

import math
from typing import Any, get_args

import numpy as np

from evalkit.protocol import Costs, Payer

__all__ = [
    "bootstrap_cost_per_outcome",
    "cost_per_additional_outcome",
    "cost_per_participant",
    "describe_ratio",
    "incremental_cost",
    "unvalued_outcomes",
    "value_by_agency",
]

PAYERS: tuple[str, ...] = get_args(Payer)
TOTAL = "total"
# Resampled values held in memory at once; keeps large pilots x many draws within ~16 MB.
_CHUNK_CELLS = 2_000_000


def _ordered(agencies: set[str]) -> list[str]:
    """Agencies in the protocol's Payer order, so tables read the same in every report."""
    return [a for a in PAYERS if a in agencies] + sorted(agencies - set(PAYERS))


def cost_per_participant(costs: Costs, arms: list[str]) -> dict[str, dict[str, float]]:
    """Arm -> agency -> cost per participant (sum of quantity x unit cost).

    Every arm asked for is present and carries every agency that pays for any of them (0
    where it pays nothing), so arms can be subtracted agency by agency. Items of arms not
    asked for are left out.
    """
    if not arms:
        raise ValueError("name at least one arm")
    if len(set(arms)) != len(arms):
        raise ValueError(f"arms are repeated: {arms}")
    items = [u for u in costs.unit_costs if u.arm in arms]
    agencies = _ordered({u.agency for u in items})
    out: dict[str, dict[str, float]] = {arm: dict.fromkeys(agencies, 0.0) for arm in arms}
    for u in items:
        out[u.arm][u.agency] += u.quantity * u.unit_cost
    return out


def incremental_cost(costs: Costs, control: str, treated: str) -> dict[str, float]:
    """Treated minus control cost per participant, per agency and in ``"total"``.

    Negative for an agency means the treated arm costs it less than usual support does.
    """
    if control == treated:
        raise ValueError(f"control and treated are the same arm ({control!r})")
    per_arm = cost_per_participant(costs, [control, treated])
    out = {a: per_arm[treated][a] - per_arm[control][a] for a in per_arm[treated]}
    out[TOTAL] = sum(out.values())
    return out


def cost_per_additional_outcome(delta_cost: float, effect: float) -> float | None:
    """Incremental cost per additional person achieving a binary outcome: cost / risk difference.

    None when the effect is zero or negative: there is no extra person to divide by, and a
    negative ratio would read as a saving. :func:`describe_ratio` says which case it is.
    """
    _finite(delta_cost=delta_cost, effect=effect)
    if effect <= 0:
        return None
    return delta_cost / effect


def describe_ratio(delta_cost: float, effect: float) -> str:
    """Plain words for a cost and effect pair, so a missing or negative ratio is never a blank."""
    _finite(delta_cost=delta_cost, effect=effect)
    cost = "costs more" if delta_cost > 0 else "costs less" if delta_cost < 0 else "costs the same"
    gain = "achieves more" if effect > 0 else "achieves less" if effect < 0 else "achieves no more"
    words = f"{cost} and {gain}"
    if effect > 0 and delta_cost > 0:
        return f"{words}: the ratio is the extra cost of each additional person"
    if effect > 0:
        return f"{words}: better results for no extra cost, so no trade-off to price"
    if delta_cost >= 0:
        return f"{words}: there is no cost per additional person to report"
    return f"{words}: the question is whether the saving is worth the loss, not a cost per person"


def bootstrap_cost_per_outcome(
    y: np.ndarray,
    treated: np.ndarray,
    delta_cost: float,
    draws: int,
    rng: np.random.Generator,
    alpha: float = 0.05,
    clusters: np.ndarray | None = None,
) -> dict[str, Any]:
    """Percentile bootstrap interval for the incremental cost per additional outcome.

    People are resampled within arm (whole places within arm when ``clusters`` is given,
    because people in a place are alike and resampling them singly would understate the
    uncertainty). The cost per participant is fixed, so each draw's ratio is
    ``delta_cost / effect``.

    A ratio interval is meaningless when the effect can be zero: as the effect nears zero
    the ratio runs off to infinity, and below zero it changes sign and no longer means a
    cost per extra person. So the share of draws with an effect <= 0 is reported, and the
    interval is given only when that share is below alpha/2; otherwise both bounds are
    None and ``reason`` says why. When it is given, both bounds come from draws with a
    positive effect: they are ``delta_cost`` over the alpha/2 and 1-alpha/2 percentiles of
    the effect draws (in order), which is the percentile interval of the ratio with draws of
    no gain ranked beyond every positive one: the ratio moves monotonically with a positive
    effect, so its percentiles are those of the effect, transformed.

    Returns estimate, conf_low, conf_high, draws, share_no_gain and reason (None when the
    interval is given).
    """
    y_arr, t_arr, c_arr = _check_sample(y, treated, clusters)
    _finite(delta_cost=delta_cost)
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy Generator, so that draws can be reproduced")
    if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 1:
        raise ValueError(f"draws must be a positive whole number, not {draws!r}")
    _finite(alpha=alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha!r}")

    effect = float(y_arr[t_arr].mean() - y_arr[~t_arr].mean())
    estimate = cost_per_additional_outcome(delta_cost, effect)
    effects = _bootstrap_effects(y_arr, t_arr, c_arr, int(draws), rng)
    share = float(np.mean(effects <= 0))
    out: dict[str, Any] = {
        "estimate": estimate,
        "conf_low": None,
        "conf_high": None,
        "draws": int(draws),
        "share_no_gain": share,
        "reason": None,
    }
    if estimate is None:
        out["reason"] = (
            f"the pilot found no gain (effect {effect:+.3g}), so there is no cost per "
            "additional person to put an interval around; a ratio interval is meaningless "
            "when the effect can be zero"
        )
        return out
    if share >= alpha / 2:
        out["reason"] = (
            f"in {share:.1%} of bootstrap draws the effect was zero or negative (the limit "
            f"is {alpha / 2:.1%}), so the cost per additional person could be unbounded; a "
            "ratio interval is meaningless when the effect can be zero"
        )
        return out
    lo_eff, hi_eff = np.quantile(effects, [alpha / 2, 1 - alpha / 2])
    if lo_eff <= 0:
        out["reason"] = (
            "the lower percentile of the effect touches zero, so the cost per additional "
            "person could be unbounded; a ratio interval is meaningless when the effect can "
            "be zero"
        )
        return out
    bounds = sorted([delta_cost / float(hi_eff), delta_cost / float(lo_eff)])
    out["conf_low"], out["conf_high"] = bounds
    return out


def value_by_agency(
    costs: Costs, effects: dict[str, float], n_treated: int, control: str, treated: str
) -> list[dict[str, Any]]:
    """Who pays and who saves: per agency, incremental cost, value of outcomes and net.

    Value per participant is the sum, over the agency's outcome values, of value x effect
    (the effect as a difference in proportion or mean). Net is value minus cost, so a
    positive net means the agency saves. The ``_total`` figures are for ``n_treated``
    participants. A last row with agency ``"total"`` adds up all agencies, the view of the
    public purse as a whole; leave it out when summing rows.

    A valued outcome missing from ``effects`` (it could not be estimated yet) leaves the
    value and net of its agency, and of the total, unknown (None): its costs are still
    known, and a value of zero would understate what the support may be worth.
    """
    if isinstance(n_treated, bool) or not isinstance(n_treated, int | np.integer):
        raise ValueError(f"n_treated must be a whole number, not {n_treated!r}")
    if n_treated < 0:
        raise ValueError(f"n_treated cannot be negative ({n_treated})")
    _finite(**{f"effect on {k}": v for k, v in effects.items()})

    delta = incremental_cost(costs, control, treated)
    delta.pop(TOTAL)
    value: dict[str, float | None] = {}
    for v in costs.outcome_values:
        known = value.get(v.agency, 0.0)
        effect = effects.get(v.outcome)
        value[v.agency] = None if known is None or effect is None else known + v.value * effect
    rows = []
    for agency in _ordered(set(delta) | set(value)):
        rows.append(_row(agency, delta.get(agency, 0.0), value.get(agency, 0.0), n_treated))
    values = [r["value_per_participant"] for r in rows]
    rows.append(
        _row(
            TOTAL,
            sum(r["cost_per_participant"] for r in rows),
            None if None in values else sum(values),
            n_treated,
        )
    )
    return rows


def unvalued_outcomes(costs: Costs, effects: dict[str, float]) -> list[str]:
    """Valued outcomes with no estimated effect: their value to each agency is unknown."""
    return sorted({v.outcome for v in costs.outcome_values} - set(effects))


def _row(agency: str, cost: float, value: float | None, n: int) -> dict[str, Any]:
    net = None if value is None else value - cost
    return {
        "agency": agency,
        "cost_per_participant": cost,
        "value_per_participant": value,
        "net_per_participant": net,
        "cost_total": cost * n,
        "value_total": None if value is None else value * n,
        "net_total": None if net is None else net * n,
    }


def _finite(**values: float) -> None:
    for name, v in values.items():
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float | np.number)
            or not math.isfinite(v)
        ):
            raise ValueError(f"{name} must be a finite number, not {v!r}")


def _check_sample(
    y: np.ndarray, treated: np.ndarray, clusters: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate once, so resampling can trust its inputs."""
    y_arr = np.asarray(y, dtype=float)
    t_raw = np.asarray(treated)
    if y_arr.ndim != 1 or t_raw.shape != y_arr.shape:
        raise ValueError("y and treated must be 1-D and of the same length")
    if not np.isfinite(y_arr).all():
        raise ValueError("y has missing or infinite values; deal with missing outcomes first")
    if not np.isin(t_raw, [0, 1]).all():
        raise ValueError("treated must be 0/1 or True/False")
    t_arr = t_raw.astype(bool)
    if t_arr.sum() < 2 or (~t_arr).sum() < 2:
        raise ValueError("each arm needs at least two people")
    if clusters is None:
        return y_arr, t_arr, None
    c_raw = np.asarray(clusters)
    if c_raw.shape != y_arr.shape:
        raise ValueError("clusters must have one entry per person")
    _, c_arr = np.unique(c_raw, return_inverse=True)
    c_arr = c_arr.reshape(-1)
    in_t = np.unique(c_arr[t_arr])
    in_c = np.unique(c_arr[~t_arr])
    if np.intersect1d(in_t, in_c).size:
        raise ValueError(
            "some places have people in both arms; resampling whole places within arm needs "
            "each place in one arm only"
        )
    if in_t.size < 2 or in_c.size < 2:
        raise ValueError("each arm needs at least two places to resample")
    return y_arr, t_arr, c_arr


def _bootstrap_effects(
    y: np.ndarray,
    treated: np.ndarray,
    clusters: np.ndarray | None,
    draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Treated minus control mean in each draw, resampling within arm (people or places)."""
    means = []
    for arm in (treated, ~treated):
        if clusters is None:
            sums, sizes = y[arm], np.ones(int(arm.sum()))
        else:
            ids, idx = np.unique(clusters[arm], return_inverse=True)
            sums = np.bincount(idx, weights=y[arm], minlength=ids.size)
            sizes = np.bincount(idx, minlength=ids.size).astype(float)
        means.append(_resampled_means(sums, sizes, draws, rng))
    return means[0] - means[1]


def _resampled_means(
    sums: np.ndarray, sizes: np.ndarray, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """Person-weighted mean of units drawn with replacement, in chunks to bound memory."""
    k = sums.size
    step = max(1, _CHUNK_CELLS // k)
    out = np.empty(draws)
    for start in range(0, draws, step):
        stop = min(draws, start + step)
        pick = rng.integers(0, k, size=(stop - start, k))
        out[start:stop] = sums[pick].sum(axis=1) / sizes[pick].sum(axis=1)
    return out
