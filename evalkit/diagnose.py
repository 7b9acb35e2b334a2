"""Design diagnosis by simulation, in the manner of DeclareDesign's diagnose_design.

Synthetic pilots are drawn from the protocol's own assumptions (``sample_size``), each is
randomised by the registered assignment procedure (:mod:`evalkit.assignment`) and analysed
with the registered primary model (:func:`evalkit.estimators.estimate_effect` with the
registered covariates, clustering, standard errors and alpha, and period fixed effects in a
stepped wedge, as :mod:`evalkit.analysis` runs it). Over many pilots this shows what the plan
can deliver: bias, RMSE, power, coverage and type I error, each with its Monte Carlo
standard error, and the same for alternatives (more places, another design, CR1 errors).

The data-generating process, stated so that a reader can check it:

- Sizes. People randomised one by one: ``target_units``. Places: ``target_places``, each
  with a gamma-distributed size of mean ``target_units / target_places`` and coefficient of
  variation ``cluster_size_cv``, rounded (at least 1). In a stepped wedge each place has a
  gamma size factor (mean 1, same CV) and ``target_units / (places x periods)`` people per
  period times that factor.
- Covariates. Each registered covariate is drawn independently (numbers standard normal,
  booleans and category levels equally likely). Their standardised sum, the prognostic
  score s, explains ``r_squared`` of the outcome's total variance; it varies within places,
  so the ICC is untouched. Strata and minimisation factors that are not covariates are drawn
  the same way but do not predict the outcome.
- Places. A place effect u ~ N(0, 1). The place variables the registered design uses
  (``match_on``, ``balance_on``, ``strata``; otherwise every place field) are drawn (numbers
  standard normal, category levels in equal shares); they explain ``place_r2`` of the place
  effect's variance (0 unless an alternative sets it, because a protocol states no such
  assumption: matching then neither helps nor harms).
- Binary outcome: a latent normal threshold model. Latent z = sqrt(rho) u +
  sqrt(1 - rho)(sqrt(q) s + sqrt(1 - q) e), e ~ N(0, 1); y = 1 when z exceeds the threshold
  that gives rate ``baseline_rate`` (+ ``expected_effect`` when treated). rho is solved
  (Gauss-Hermite quadrature) so that the ICC of the 0/1 outcome itself is ``icc``, and q in
  closed form so that a linear regression of the 0/1 outcome on s explains ``r_squared`` of
  its variance (treating s as normal). The true effect is exactly the expected difference
  in proportions.
- Continuous and count outcomes: y = sd (sqrt(icc) u + sqrt(r_squared) s +
  sqrt(1 - icc - r_squared) e) + effect x treated, sd = ``baseline_sd``.
- Stepped wedge: the place effect is constant over periods, and a secular trend raises the
  comparison rate by a tenth of ``baseline_rate`` per period (continuous: a tenth of an SD
  per period); the effect is the same in every period.

Each simulated pilot is analysed twice on the same draws: with the expected effect (bias,
RMSE, power, coverage, CI width) and with no effect (type I error). Simulation i always uses
the seed ``SeedSequence(seed, spawn_key=(i, stream))``, whatever process runs it, so results
depend on the seed only, never on the number of workers; alternatives reuse the same seeds
(common random numbers), so their differences are not drawing noise.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from evalkit import assignment as A
from evalkit.errors import UserError
from evalkit.estimators import ESTIMATORS, _ols, design_matrix
from evalkit.protocol import (
    PARTICIPANT_METHODS,
    PLACE_METHODS,
    BlockedDesign,
    ConstrainedClusterDesign,
    MatchedPairClusterDesign,
    MinimisationDesign,
    Protocol,
    SteppedWedgeDesign,
    StratifiedClusterDesign,
)
from evalkit.randomness import RngFactory

DEFAULT_SEED = 20270901
TREND = 0.1
"""Stepped-wedge secular trend per period: a tenth of the baseline rate (or of an SD)."""

KEYS = {
    "places": "number of places (people per place kept unless units is given too)",
    "units": "people randomised in all (target_units)",
    "design": "assignment method, e.g. cluster or matched_pair_cluster",
    "se": "standard errors: auto, hc2, hc1, cr2 or cr1",
    "icc": "intra-cluster correlation, 0 to below 1",
    "effect": "true effect (expected_effect)",
    "rate": "baseline rate of a binary outcome, between 0 and 1",
    "sd": "baseline SD of a continuous or count outcome",
    "cv": "coefficient of variation of place sizes",
    "r_squared": "share of outcome variance the covariates explain",
    "place_r2": "share of the place effect's variance the design's place variables explain",
    "alpha": "significance level",
    "periods": "periods of a stepped wedge (places spread evenly over the steps)",
}

_STREAMS = {"sizes": 0, "places": 1, "people": 2, "noise": 3, "assign": 4}
_COLUMNS = ("estimate", "std_error", "conf_low", "conf_high", "p_value", "null_estimate")
_COLUMNS += ("null_p_value", "null_conf_low", "null_conf_high")


# --- scenarios -----------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """A simulated baseline variable: "number", "boolean" or "category" (with levels)."""

    name: str
    kind: str
    levels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scenario:
    """Everything one column of the diagnosis needs, as plain picklable data."""

    label: str
    level: str
    method: str
    arms: tuple[str, str]
    ratios: tuple[float, float]
    units: int
    places: int | None
    outcome_type: str
    rate: float | None
    sd: float | None
    icc: float
    cv: float
    r_squared: float
    place_r2: float
    effect: float
    se: str
    alpha: float
    covariates: tuple[Variable, ...]
    person_variables: tuple[Variable, ...]
    place_variables: tuple[Variable, ...]
    strata: tuple[str, ...] = ()
    block_sizes: tuple[int, ...] = ()
    factors: tuple[tuple[str, float], ...] = ()
    probability: float = 0.8
    match_on: tuple[str, ...] = ()
    criterion: str = "l2"
    keep_fraction: float = 0.1
    candidates: int = 10000
    periods: int = 1
    places_per_step: tuple[int, ...] = ()
    latent_icc: float = 0.0
    latent_q: float = 0.0

    @property
    def wedge(self) -> bool:
        return self.method == "stepped_wedge"

    def settings(self) -> dict[str, Any]:
        """What a reader needs to tell the columns apart."""
        out: dict[str, Any] = {"design": self.method, "places": self.places}
        out["people"] = self.units
        if self.wedge:
            out["periods"] = self.periods
            out["places_per_step"] = list(self.places_per_step)
        out.update(
            {
                "se": self.se,
                "alpha": self.alpha,
                "effect": self.effect,
                "icc": self.icc if self.level == "place" else None,
                "cluster_size_cv": self.cv if self.level == "place" else None,
                "baseline_rate": self.rate,
                "baseline_sd": self.sd,
                "r_squared": self.r_squared,
                "place_r2": self.place_r2 if self.level == "place" else None,
            }
        )
        return out


def _variable(protocol: Protocol, name: str, place: bool = False) -> Variable:
    f = protocol.place_field_def(name) if place else protocol.field(name)
    if f is None:
        raise UserError(f"{name!r} is not a declared field", "check the protocol with validate")
    if f.type == "category":
        return Variable(name, "category", tuple(f.levels or ("a", "b")))
    if f.type == "boolean":
        return Variable(name, "boolean")
    return Variable(name, "number")


def _gh(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / math.sqrt(2 * math.pi)


def latent_icc(icc: float, rate: float) -> float:
    """The latent correlation whose threshold gives a 0/1 outcome with this ICC."""
    if icc <= 0:
        return 0.0
    c = stats.norm.isf(rate)
    x, w = _gh()

    def binary_icc(r: float) -> float:
        above = stats.norm.sf((c - math.sqrt(r) * x) / math.sqrt(1 - r))
        return (float(w @ above**2) - rate**2) / (rate * (1 - rate)) - icc

    return float(optimize.brentq(binary_icc, 1e-12, 1 - 1e-9, xtol=1e-12))


def _latent_q(r2: float, rho: float, rate: float) -> float:
    """The share q of the latent person variance given to the score s so that the linear
    regression of the 0/1 outcome on s explains ``r2`` of its variance: for jointly normal
    latent z and s with correlation a, cov(y, s) = a phi(c), so R^2 = a^2 phi(c)^2 / (p(1 - p))
    and a^2 = (1 - rho) q."""
    if r2 <= 0:
        return 0.0
    c = stats.norm.isf(rate)
    a2 = r2 * rate * (1 - rate) / stats.norm.pdf(c) ** 2
    if a2 >= 1 - rho:
        most = (1 - rho) * stats.norm.pdf(c) ** 2 / (rate * (1 - rate))
        raise UserError(
            f"covariates cannot explain {r2:g} of a 0/1 outcome with rate {rate:g} and this "
            f"ICC (at most {most:.3f})",
            "lower r_squared",
        )
    return float(a2 / (1 - rho))


def _spread(places: int, steps: int) -> tuple[int, ...]:
    base, extra = divmod(places, steps)
    return tuple(base + (1 if k < extra else 0) for k in range(steps))


def _place_variables(protocol: Protocol) -> tuple[Variable, ...]:
    d = protocol.design
    names: list[str] = []
    if isinstance(d, MatchedPairClusterDesign):
        names = list(d.match_on)
    elif isinstance(d, ConstrainedClusterDesign):
        names = list(d.balance_on)
    elif isinstance(d, StratifiedClusterDesign):
        names = list(d.strata)
    else:
        names = [f.name for f in protocol.unit.place_fields if f.type != "date"]
    return tuple(_variable(protocol, n, place=True) for n in names)


def registered_scenario(protocol: Protocol) -> Scenario:
    """The registered design and assumptions as a scenario."""
    if len(protocol.arms) != 2:
        raise UserError(
            f"{protocol.id} has {len(protocol.arms)} arms; diagnosis compares two arms",
            "diagnose a two-arm version of the protocol",
        )
    s, a, d, o = protocol.sample_size, protocol.analysis, protocol.design, protocol.primary
    level = protocol.unit.level
    binary = o.type == "binary"
    if binary and s.baseline_rate is None:
        raise UserError("a binary primary outcome needs sample_size.baseline_rate")
    if not binary and s.baseline_sd is None:
        raise UserError(f"a {o.type} primary outcome needs sample_size.baseline_sd")
    if level == "place" and (s.target_places is None or s.icc is None):
        raise UserError("a place design needs sample_size.target_places and icc")
    covariates = tuple(_variable(protocol, c) for c in a.covariates)
    extra: list[str] = []
    kw: dict[str, Any] = {}
    if isinstance(d, BlockedDesign):
        extra, kw = list(d.strata), {"strata": tuple(d.strata), "block_sizes": tuple(d.block_sizes)}
    elif isinstance(d, MinimisationDesign):
        extra = [f.field for f in d.factors]
        kw = {
            "factors": tuple((f.field, f.weight) for f in d.factors),
            "probability": d.probability,
        }
    elif isinstance(d, MatchedPairClusterDesign):
        kw = {"match_on": tuple(d.match_on)}
    elif isinstance(d, StratifiedClusterDesign):
        kw = {"strata": tuple(d.strata)}
    elif isinstance(d, ConstrainedClusterDesign):
        kw = {
            "match_on": tuple(d.balance_on),
            "criterion": d.criterion,
            "keep_fraction": d.keep_fraction,
            "candidates": d.candidates,
        }
    elif isinstance(d, SteppedWedgeDesign):
        kw = {"periods": d.periods, "places_per_step": tuple(d.places_per_step)}
    seen = {c.name for c in covariates}
    person = list(covariates) + [
        _variable(protocol, n) for n in dict.fromkeys(extra) if n not in seen
    ]
    scenario = Scenario(
        label="registered",
        level=level,
        method=d.method,
        arms=(protocol.arms[0].name, protocol.arms[1].name),
        ratios=(protocol.arms[0].ratio, protocol.arms[1].ratio),
        units=s.target_units,
        places=s.target_places if level == "place" else None,
        outcome_type="binary" if binary else "continuous",
        rate=s.baseline_rate if binary else None,
        sd=None if binary else s.baseline_sd,
        icc=float(s.icc or 0.0) if level == "place" else 0.0,
        cv=float(s.cluster_size_cv or 0.0) if level == "place" else 0.0,
        r_squared=s.r_squared,
        place_r2=0.0,
        effect=s.expected_effect,
        se=a.se,
        alpha=a.alpha,
        covariates=covariates,
        person_variables=tuple(person),
        place_variables=_place_variables(protocol) if level == "place" else (),
        **kw,
    )
    return _calibrated(scenario)


def _calibrated(sc: Scenario) -> Scenario:
    """Check the assumptions can hold together and solve the latent parameters."""
    if sc.level == "place" and (sc.places or 0) < 2:
        raise UserError(f"{sc.label}: a place design needs at least 2 places")
    if sc.level == "place" and sc.units < (sc.places or 0) * (sc.periods if sc.wedge else 1):
        raise UserError(f"{sc.label}: fewer people ({sc.units}) than places to fill")
    if sc.units < 4:
        raise UserError(f"{sc.label}: {sc.units} people are too few to analyse")
    if sc.wedge and (len(sc.places_per_step) != sc.periods - 1 or min(sc.places_per_step) < 1):
        raise UserError(
            f"{sc.label}: {sc.places} places cannot cross over in {sc.periods - 1} steps",
            "give at least one place per step",
        )
    if sc.outcome_type == "binary":
        rate = sc.rate or 0.0
        drift = TREND * rate * (sc.periods - 1) if sc.wedge else 0.0
        top = rate + drift + max(sc.effect, 0.0)
        low = rate + min(sc.effect, 0.0)
        if not (low > 0 and top < 1):
            raise UserError(
                f"{sc.label}: baseline rate {rate:g} with effect {sc.effect:g} leaves the "
                "0 to 1 range",
                "a binary outcome's rates must stay between 0 and 1",
            )
        rho = latent_icc(sc.icc, rate)
        q = _latent_q(sc.r_squared if sc.covariates else 0.0, rho, rate)
        return replace(sc, latent_icc=rho, latent_q=q)
    if sc.icc + (sc.r_squared if sc.covariates else 0.0) >= 1:
        raise UserError(
            f"{sc.label}: icc {sc.icc:g} and r_squared {sc.r_squared:g} leave no "
            "individual variation",
            "icc + r_squared must be below 1",
        )
    return sc


# --- alternatives --------------------------------------------------------------------


def parse_alternative(text: str) -> dict[str, str]:
    """``"units=1200,places=24"`` -> {"units": "1200", "places": "24"}; unknown keys refused."""
    out: dict[str, str] = {}
    hint = f"settings: {', '.join(KEYS)}; e.g. --alternative places=24,se=cr1"
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key or not value:
            raise UserError(f"--alternative {text!r}: {part.strip()!r} is not KEY=VALUE", hint)
        if key not in KEYS:
            near = difflib.get_close_matches(key, list(KEYS), n=1)
            mean = f" (did you mean {near[0]!r}?)" if near else ""
            raise UserError(f"--alternative {text!r}: unknown setting {key!r}{mean}", hint)
        if key in out:
            raise UserError(f"--alternative {text!r}: {key} is given twice", hint)
        out[key] = value
    return out


def _number(text: str, key: str, value: str, kind: type, low: float, high: float) -> Any:
    try:
        x = kind(value)
    except ValueError:
        x = None
    if x is None or not math.isfinite(x) or not low <= x <= high:
        what = "a whole number" if kind is int else "a number"
        raise UserError(
            f"--alternative {text!r}: {key}={value} must be {what} from {low:g} to {high:g}",
            f"{key}: {KEYS[key]}",
        )
    return x


def _design_settings(
    protocol: Protocol, sc: Scenario, method: str, text: str, periods: int | None
) -> dict[str, Any]:
    """Parameters a switched-to design needs, from the protocol where it has them."""
    known = sorted(PARTICIPANT_METHODS | PLACE_METHODS)
    if method not in known:
        raise UserError(
            f"--alternative {text!r}: unknown design {method!r}", f"designs: {', '.join(known)}"
        )
    same = PLACE_METHODS if sc.level == "place" else PARTICIPANT_METHODS
    if method not in same:
        who = "places" if sc.level == "place" else "people"
        raise UserError(
            f"--alternative {text!r}: {method} does not fit: this protocol randomises {who}",
            f"designs that randomise {who}: {', '.join(sorted(same))}",
        )
    out: dict[str, Any] = {"method": method}
    numeric = [f.name for f in protocol.unit.place_fields if f.type in ("number", "integer")]
    category = [f.name for f in protocol.unit.place_fields if f.type == "category"]
    d = protocol.design
    if method in ("matched_pair_cluster", "constrained_cluster"):
        own = list(getattr(d, "match_on", None) or getattr(d, "balance_on", None) or numeric)
        if not own:
            raise UserError(
                f"--alternative {text!r}: {method} needs numeric place fields to balance on",
                "add them under unit.place_fields",
            )
        out["match_on"] = tuple(own)
        if method == "constrained_cluster" and not isinstance(d, ConstrainedClusterDesign):
            out.update(criterion="l2", keep_fraction=0.1, candidates=10000)
    if method == "stratified_cluster":
        own = list(getattr(d, "strata", None) or category)
        if not own:
            raise UserError(
                f"--alternative {text!r}: stratified_cluster needs a category place field",
                "add one under unit.place_fields",
            )
        out["strata"] = tuple(own)
    if method == "blocked":
        if not all(float(r).is_integer() for r in sc.ratios):
            raise UserError(f"--alternative {text!r}: blocks need whole-number ratios")
        total = int(sum(sc.ratios))
        out["block_sizes"] = sc.block_sizes or (2 * total, 3 * total)
    if method == "minimisation" and not sc.factors:
        cats = [v for v in sc.covariates if v.kind in ("category", "boolean")]
        if not cats:
            raise UserError(
                f"--alternative {text!r}: minimisation needs category covariates as factors"
            )
        out["factors"] = tuple((v.name, 1.0) for v in cats)
    if method == "stepped_wedge" and periods is None and not sc.wedge:
        raise UserError(
            f"--alternative {text!r}: a stepped wedge needs its number of periods",
            "add periods=K, e.g. --alternative design=stepped_wedge,periods=4",
        )
    return out


def alternative_scenario(protocol: Protocol, base: Scenario, text: str) -> Scenario:
    """The registered scenario with the settings of one ``--alternative`` changed."""
    given = parse_alternative(text)
    place = base.level == "place"
    changes: dict[str, Any] = {"label": text}
    periods = None
    if "periods" in given:
        periods = _number(text, "periods", given["periods"], int, 3, 50)
    if "design" in given:
        changes.update(_design_settings(protocol, base, given["design"].lower(), text, periods))
    method = changes.get("method", base.method)
    for key, value in given.items():
        if key in ("places", "place_r2", "icc", "cv") and not place:
            raise UserError(
                f"--alternative {text!r}: {key} applies to place designs only",
                f"{protocol.id} randomises people",
            )
        if key == "places":
            changes["places"] = _number(text, key, value, int, 2, 10000)
        elif key == "units":
            changes["units"] = _number(text, key, value, int, 4, 10_000_000)
        elif key == "se":
            se = value.lower()
            if se not in ("auto", "hc2", "hc1", "cr2", "cr1"):
                raise UserError(
                    f"--alternative {text!r}: unknown se {value!r}", "se: auto, hc2, hc1, cr2, cr1"
                )
            if place and se in ("hc2", "hc1"):
                raise UserError(
                    f"--alternative {text!r}: {se} ignores clustering in a place design",
                    "use cr2 or cr1",
                )
            if not place and se in ("cr2", "cr1"):
                raise UserError(
                    f"--alternative {text!r}: {se} needs clusters, but people are randomised",
                    "use hc2 or hc1",
                )
            changes["se"] = se
        elif key == "icc":
            changes["icc"] = _number(text, key, value, float, 0, 0.99)
        elif key == "cv":
            changes["cv"] = _number(text, key, value, float, 0, 5)
        elif key == "r_squared":
            changes["r_squared"] = _number(text, key, value, float, 0, 0.99)
        elif key == "place_r2":
            changes["place_r2"] = _number(text, key, value, float, 0, 1)
        elif key == "effect":
            changes["effect"] = _number(text, key, value, float, -1e12, 1e12)
        elif key == "alpha":
            changes["alpha"] = _number(text, key, value, float, 1e-6, 0.5)
        elif key == "rate":
            if base.outcome_type != "binary":
                raise UserError(f"--alternative {text!r}: rate is for a binary outcome", "use sd")
            changes["rate"] = _number(text, key, value, float, 1e-6, 1 - 1e-6)
        elif key == "sd":
            if base.outcome_type == "binary":
                raise UserError(f"--alternative {text!r}: sd is for a continuous outcome")
            changes["sd"] = _number(text, key, value, float, 1e-12, 1e12)
        elif key == "periods" and method != "stepped_wedge":
            raise UserError(f"--alternative {text!r}: periods applies to a stepped wedge only")
    if "places" in changes and "units" not in changes:
        changes["units"] = round(base.units * changes["places"] / (base.places or 1))
    if method == "stepped_wedge":
        steps = (periods or base.periods) - 1
        n_places = changes.get("places", base.places) or 0
        changes["periods"] = steps + 1
        if periods is not None or "places" in changes or not base.wedge:
            changes["places_per_step"] = _spread(n_places, steps)
    try:
        out = replace(base, **changes)
    except TypeError as exc:  # a mistake in this module, not in the user's input
        raise AssertionError(str(exc)) from None
    return _calibrated(out)


def scenarios(protocol: Protocol, alternatives: Sequence[str] = ()) -> list[Scenario]:
    """The registered scenario first, then one per alternative, in the order given."""
    base = registered_scenario(protocol)
    return [base, *(alternative_scenario(protocol, base, t) for t in alternatives)]


# --- one simulated pilot -------------------------------------------------------------


def _rng(seed: int, i: int, stream: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i, _STREAMS[stream])))


def _draw_variables(variables: Sequence[Variable], n: int, rng: np.random.Generator):
    """Values (for the data frame) and standardised scores (mean 0, variance 1) of each."""
    values, scores = {}, []
    for v in variables:
        if v.kind == "number":
            x = rng.standard_normal(n)
            values[v.name], score = x, x
        elif v.kind == "boolean":
            x = rng.random(n) < 0.5
            values[v.name], score = x, np.where(x, 1.0, -1.0)
        else:
            k = len(v.levels)
            idx = rng.integers(0, k, size=n)
            values[v.name] = np.asarray(v.levels, dtype=object)[idx]
            sd = math.sqrt((k * k - 1) / 12) or 1.0
            score = (idx - (k - 1) / 2) / sd
        scores.append(score)
    return values, scores


def _score(scores: list[np.ndarray], n: int) -> np.ndarray:
    if not scores:
        return np.zeros(n)
    return np.sum(scores, axis=0) / math.sqrt(len(scores))


def _place_draws(sc: Scenario, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """Place variables (categories in equal shares) and the place effects."""
    g = sc.places or 0
    values, scores = {}, []
    for v in sc.place_variables:
        if v.kind == "category":
            k = len(v.levels)
            idx = rng.permutation(np.arange(g) % k)
            values[v.name] = np.asarray(v.levels, dtype=object)[idx]
            sd = math.sqrt((k * k - 1) / 12) or 1.0
            scores.append((idx - (k - 1) / 2) / sd)
        elif v.kind == "boolean":
            x = rng.permutation(np.arange(g) % 2).astype(bool)
            values[v.name] = x
            scores.append(np.where(x, 1.0, -1.0))
        else:
            x = rng.standard_normal(g)
            values[v.name] = x
            scores.append(x)
    w = _score(scores, g)
    v_ = rng.standard_normal(g)
    return values, math.sqrt(sc.place_r2) * w + math.sqrt(1 - sc.place_r2) * v_


def _sizes(sc: Scenario, rng: np.random.Generator) -> np.ndarray:
    """People per place (per place and period in a stepped wedge)."""
    g = sc.places or 0
    mean = sc.units / g / (sc.periods if sc.wedge else 1)
    if sc.cv <= 0:
        factor = np.ones(g)
    else:
        shape = 1 / sc.cv**2
        factor = rng.gamma(shape, 1 / shape, size=g)
    return np.maximum(1, np.rint(mean * factor)).astype(np.int64)


def _assign_places(sc: Scenario, names: list[str], values: dict, rng) -> np.ndarray:
    """1 = the compared arm, per place (per place: crossover period in a stepped wedge)."""
    arms, ratios = list(sc.arms), list(sc.ratios)
    if sc.method == "cluster":
        got = A.cluster(names, arms, ratios, rng)
    elif sc.method == "stratified_cluster":
        strata = ["|".join(str(values[s][j]) for s in sc.strata) for j in range(len(names))]
        got = A.stratified_cluster(names, strata, arms, ratios, rng)
    elif sc.method == "matched_pair_cluster":
        cov = np.column_stack([np.asarray(values[m], dtype=float) for m in sc.match_on])
        got = A.matched_pair_cluster(names, cov, arms, rng)
    elif sc.method == "constrained_cluster":
        cov = np.column_stack([np.asarray(values[m], dtype=float) for m in sc.match_on])
        got = A.constrained_cluster(
            names, cov, arms, ratios, sc.criterion, sc.keep_fraction, sc.candidates, rng
        )
    else:
        got = A.stepped_wedge(names, list(sc.places_per_step), rng)
        return np.asarray(got.extra["crossover_period"], dtype=np.int64)
    return np.asarray([a == sc.arms[1] for a in got.arms], dtype=np.int64)


def _assign_people(sc: Scenario, values: dict, n: int, seed: int, i: int) -> np.ndarray:
    arms, ratios = list(sc.arms), list(sc.ratios)
    if sc.method in ("simple", "complete"):
        fn = A.simple if sc.method == "simple" else A.complete
        got = fn(n, arms, ratios, _rng(seed, i, "assign"))
    else:
        state = np.random.SeedSequence(seed, spawn_key=(i, _STREAMS["assign"])).generate_state(8)
        rngs = RngFactory(state.tobytes())
        text = {k: [str(x) for x in v] for k, v in values.items()}
        if sc.method == "blocked":
            strata = ["|".join(f"{s}={text[s][j]}" for s in sc.strata) for j in range(n)]
            got = A.blocked(strata, arms, ratios, list(sc.block_sizes), rngs)
        else:
            levels = [{f: text[f][j] for f, _ in sc.factors} for j in range(n)]
            got = A.minimisation(levels, list(sc.factors), arms, ratios, sc.probability, rngs)
    return np.asarray([a == sc.arms[1] for a in got.arms], dtype=np.int64)


def simulate_data(sc: Scenario, seed: int, i: int) -> pd.DataFrame:
    """One synthetic pilot: covariates, place, period, arm, ``y`` (with the effect) and
    ``y0`` (the same draws with no effect), ``treated`` (0/1)."""
    if sc.level == "place":
        names = [f"P{j + 1:04d}" for j in range(sc.places or 0)]
        place_values, u = _place_draws(sc, _rng(seed, i, "places"))
        size = _sizes(sc, _rng(seed, i, "sizes"))
        assigned = _assign_places(sc, names, place_values, _rng(seed, i, "assign"))
        if sc.wedge:
            place = np.repeat(np.arange(len(names)), size * sc.periods)
            period = np.concatenate([np.repeat(np.arange(1, sc.periods + 1), s) for s in size])
            treated = (period >= assigned[place]).astype(np.int64)
        else:
            place = np.repeat(np.arange(len(names)), size)
            period = np.ones(len(place), dtype=np.int64)
            treated = assigned[place]
        n = len(place)
        u_person = u[place]
    else:
        n = sc.units
        place = None
        period = np.ones(n, dtype=np.int64)
        u_person = np.zeros(n)
    people = _rng(seed, i, "people")
    values, scores = _draw_variables(sc.person_variables, n, people)
    s = _score(scores[: len(sc.covariates)], n)
    e = _rng(seed, i, "noise").standard_normal(n)
    if sc.level != "place":
        treated = _assign_people(sc, values, n, seed, i)
    y, y0 = _outcomes(sc, u_person, s, e, treated, period)
    frame = pd.DataFrame({v.name: values[v.name] for v in sc.covariates})
    frame["y"], frame["y0"], frame["treated"] = y, y0, treated
    frame["arm"] = np.where(treated == 1, sc.arms[1], sc.arms[0])
    if place is not None:
        frame["place"] = place
    if sc.wedge:
        frame["period"] = period.astype(str)
    return frame


def _outcomes(sc: Scenario, u, s, e, treated, period) -> tuple[np.ndarray, np.ndarray]:
    trend = TREND * (period - 1)
    if sc.outcome_type == "binary":
        rho, q = sc.latent_icc, sc.latent_q
        z = math.sqrt(rho) * u + math.sqrt(1 - rho) * (math.sqrt(q) * s + math.sqrt(1 - q) * e)
        base = (sc.rate or 0.0) * (1 + trend)
        y = (z > stats.norm.isf(base + sc.effect * treated)).astype(float)
        y0 = (z > stats.norm.isf(base)).astype(float)
        return y, y0
    r2 = sc.r_squared if sc.covariates else 0.0
    sd = sc.sd or 1.0
    noise = sd * (math.sqrt(sc.icc) * u + math.sqrt(r2) * s + math.sqrt(1 - sc.icc - r2) * e)
    y0 = noise + sd * trend
    return y0 + sc.effect * treated, y0


def _fit(design, y: np.ndarray, kind: str, alpha: float) -> list[float]:
    """The treatment row of :func:`estimate_effect` for outcome ``y`` on a design matrix
    built once (the same OLS, covariance estimator and t quantiles; nothing else)."""
    beta, resid, M, basis = _ols(y, design.X, design.names)
    V, df = ESTIMATORS[kind]().cov(design.X, resid, M, design.clusters, basis=basis)
    se = math.sqrt(max(V[1, 1], 0.0))
    p = 2.0 * stats.t.sf(abs(beta[1] / se), df[1]) if se > 0 else float("nan")
    q = stats.t.ppf(1.0 - alpha / 2.0, df[1])
    return [beta[1], se, beta[1] - q * se, beta[1] + q * se, p]


def simulate_one(sc: Scenario, seed: int, i: int) -> np.ndarray:
    """The registered analysis of pilot ``i``, with and without the effect: the values of
    ``_COLUMNS`` (NaN where the model could not be fitted). The design matrix is the one
    :func:`estimate_effect` builds (tests check the two agree), made once for both fits."""
    frame = simulate_data(sc, seed, i)
    covariates = [v.name for v in sc.covariates] + (["period"] if sc.wedge else [])
    cluster = "place" if sc.level == "place" else None
    kind = sc.se if sc.se != "auto" else ("cr2" if cluster else "hc2")
    out = np.full(len(_COLUMNS), np.nan)
    try:
        design = design_matrix(frame, "y", "arm", covariates, cluster, None, list(sc.arms))
        if design.n_clusters is not None and design.n_clusters < 2:
            return out
        est, se, low, high, p = _fit(design, frame["y"].to_numpy(dtype=float), kind, sc.alpha)
        est0, _, low0, high0, p0 = _fit(design, frame["y0"].to_numpy(dtype=float), kind, sc.alpha)
    except ValueError:
        return out
    out[:] = [est, se, low, high, p, est0, p0, low0, high0]
    return out


def _chunk(scenario_list: list[Scenario], seed: int, start: int, stop: int) -> np.ndarray:
    """Pilots start..stop-1 of every scenario: (scenarios, stop - start, columns)."""
    return np.stack(
        [np.stack([simulate_one(sc, seed, i) for i in range(start, stop)]) for sc in scenario_list]
    )


def run_simulations(
    scenario_list: list[Scenario],
    sims: int,
    seed: int = DEFAULT_SEED,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Raw results, (scenarios, sims, columns); the same for any number of workers."""
    if sims < 2:
        raise UserError(f"--sims {sims} is too few", "use at least 100 (1000 or more to report)")
    workers = max(1, workers or os.cpu_count() or 1)
    size = max(1, min(50, math.ceil(sims / (workers * 8))))
    bounds = [(a, min(a + size, sims)) for a in range(0, sims, size)]
    out = np.empty((len(scenario_list), sims, len(_COLUMNS)))
    if workers == 1 or len(bounds) == 1:
        for a, b in bounds:
            out[:, a:b] = _chunk(scenario_list, seed, a, b)
            if progress:
                progress(b - a)
        return out
    with ProcessPoolExecutor(max_workers=min(workers, len(bounds))) as pool:
        jobs = {pool.submit(_chunk, scenario_list, seed, a, b): (a, b) for a, b in bounds}
        for job in as_completed(jobs):
            a, b = jobs[job]
            out[:, a:b] = job.result()
            if progress:
                progress(b - a)
    return out


# --- summaries -----------------------------------------------------------------------


def _share(hits: np.ndarray) -> dict[str, float | None]:
    n = hits.size
    if n == 0:
        return {"value": None, "mcse": None}
    p = float(hits.mean())
    return {"value": p, "mcse": math.sqrt(p * (1 - p) / n)}


def _mean(x: np.ndarray) -> dict[str, float | None]:
    if x.size == 0:
        return {"value": None, "mcse": None}
    mcse = float(x.std(ddof=1)) / math.sqrt(x.size) if x.size > 1 else None
    return {"value": float(x.mean()), "mcse": mcse}


def summarise(sc: Scenario, raw: np.ndarray) -> dict[str, Any]:
    """Bias, RMSE, power, type I error, coverage and CI width, each with its Monte Carlo
    standard error (binomial for shares, SD / sqrt(sims) for means, the delta method for
    RMSE); pilots whose model could not be fitted are left out and counted."""
    col = {c: raw[:, k] for k, c in enumerate(_COLUMNS)}
    ok = np.isfinite(col["estimate"]) & np.isfinite(col["p_value"])
    ok0 = np.isfinite(col["null_estimate"]) & np.isfinite(col["null_p_value"])
    err = col["estimate"][ok] - sc.effect
    est = {
        "bias": _mean(err),
        "rmse": {"value": None, "mcse": None},
        "power": _share(col["p_value"][ok] < sc.alpha),
        "type_i_error": _share(col["null_p_value"][ok0] < sc.alpha),
        "coverage": _share(
            (col["conf_low"][ok] <= sc.effect) & (sc.effect <= col["conf_high"][ok])
        ),
        "ci_width": _mean(col["conf_high"][ok] - col["conf_low"][ok]),
        "mean_std_error": _mean(col["std_error"][ok]),
        "sd_estimate": {"value": None, "mcse": None},
    }
    if err.size > 1:
        rmse = float(np.sqrt(np.mean(err**2)))
        mcse = float(np.std(err**2, ddof=1)) / (2 * rmse * math.sqrt(err.size)) if rmse else 0.0
        est["rmse"] = {"value": rmse, "mcse": mcse}
        sd = float(err.std(ddof=1))
        est["sd_estimate"] = {"value": sd, "mcse": sd / math.sqrt(2 * (err.size - 1))}
    return {
        "label": sc.label,
        "settings": sc.settings(),
        "estimands": est,
        "simulations": int(raw.shape[0]),
        "failed": int((~ok).sum() + (~ok0).sum()),
    }


def diagnose(
    protocol: Protocol,
    alternatives: Sequence[str] = (),
    sims: int = 1000,
    seed: int = DEFAULT_SEED,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The diagnosis as plain data: the registered design first, then each alternative."""
    scenario_list = scenarios(protocol, alternatives)
    raw = run_simulations(scenario_list, sims, seed, workers, progress)
    o = protocol.primary
    return {
        "pilot": protocol.id,
        "primary_outcome": o.name,
        "outcome_type": o.type,
        "simulations": sims,
        "seed": seed,
        "model": _model_words(scenario_list[0]),
        "scenarios": [summarise(sc, raw[k]) for k, sc in enumerate(scenario_list)],
        "data_generation": (
            "latent normal threshold model for a 0/1 outcome (ICC on the 0/1 scale)"
            if o.type == "binary"
            else "normal place and person effects (ICC split of the variance)"
        )
        + "; gamma place sizes; registered covariates explain r_squared"
        + ("; stepped wedge with a secular trend" if scenario_list[0].wedge else ""),
    }


def _model_words(sc: Scenario) -> str:
    terms = [v.name for v in sc.covariates] + (["period fixed effects"] if sc.wedge else [])
    adj = f", adjusting for {', '.join(terms)}" if terms else ""
    clus = ", clustered by place" if sc.level == "place" else ""
    return f"OLS of the primary outcome on arm{adj}{clus}"


ROWS = [
    ("bias", "bias", 4),
    ("rmse", "RMSE", 4),
    ("power", "power", 3),
    ("type_i_error", "type I error", 3),
    ("coverage", "coverage", 3),
    ("ci_width", "mean CI width", 4),
    ("mean_std_error", "mean std. error", 4),
    ("sd_estimate", "SD of estimates", 4),
]


def table(result: dict[str, Any]) -> str:
    """The diagnosis side by side as text, Monte Carlo standard errors in brackets."""
    cols = result["scenarios"]

    def fmt(x: Any, digits: int = 4) -> str:
        if x is None:
            return "-"
        if isinstance(x, float) and not x.is_integer():
            return f"{x:.{digits}g}" if abs(x) >= 1e-4 or x == 0 else f"{x:.1e}"
        if isinstance(x, float):
            return f"{x:g}"
        if isinstance(x, list):
            return "+".join(map(str, x))
        return str(x)

    rows: list[tuple[str, list[str]]] = [("", [c["label"] for c in cols])]
    for key in cols[0]["settings"]:
        values = [fmt(c["settings"][key]) for c in cols]
        if any(v != "-" for v in values):
            rows.append((key.replace("_", " "), values))
    rows.append(("", [""] * len(cols)))
    for key, name, digits in ROWS:
        cells = []
        for c in cols:
            e = c["estimands"][key]
            if e["value"] is None:
                cells.append("-")
            else:
                mc = e["mcse"]
                cells.append(
                    f"{e['value']:.{digits}f} ({mc:.{digits}f})"
                    if mc is not None and math.isfinite(mc)
                    else f"{e['value']:.{digits}f}"
                )
        rows.append((name, cells))
    if any(c["failed"] for c in cols):
        rows.append(("fits failed", [str(c["failed"]) for c in cols]))
    left = max(len(r[0]) for r in rows) + 2
    widths = [max(len(r[1][k]) for r in rows) + 2 for k in range(len(cols))]
    lines = [
        f"Design diagnosis of {result['pilot']}: {result['simulations']} simulated pilots, "
        f"seed {result['seed']}",
        f"primary outcome {result['primary_outcome']} ({result['outcome_type']}); "
        f"{result['model']}",
        "",
    ]
    for name, cells in rows:
        lines.append(
            (
                name.ljust(left) + "".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
            ).rstrip()
        )
    lines += [
        "",
        "Monte Carlo standard errors in brackets. Power: share of pilots with p < alpha when "
        "the effect is as expected;",
        "type I error: the same with no effect (about alpha when the analysis is honest); "
        "coverage: share of confidence",
        "intervals holding the true effect. Alternatives reuse the same random draws.",
    ]
    return "\n".join(lines) + "\n"
