"""The registered analysis: the protocol's plan run on the analysis data set, as plain data
ready for results.json. Pure over its inputs; the seed comes from the pilot's secret, so
nobody can try seeds until a p-value pleases them.

Built: intention-to-treat effects for every outcome with the registered standard errors
(every other type beside them), rates, odds ratio and effect sizes, randomisation
inference that replays the registered design, the wild cluster bootstrap, multiplicity
adjustment of secondary outcomes, the Bayesian reading, balance, attrition and costs.
Also: subgroup effects with interaction tests, CACE by instrumental variables when receipt
is recorded, the registered missing-data analysis (multiple imputation or inverse
probability weighting) beside the complete-case one, and mixed-model and panel versions
of a stepped wedge. A registered logistic, Poisson or negative binomial model is fitted as
registered and is the primary analysis of its outcome (``registered_model``: odds ratio or
rate ratio, with its test); the linear model's difference beside it (``effect``) presents
the same comparison on the natural scale (percentage points, counts) for the commission,
the Bayesian reading against the minimal important difference and the costs. A registered
model that cannot be fitted on the data is named in ``not_run`` rather than left out.
"""

from __future__ import annotations

import platform
import warnings
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from evalkit import __version__
from evalkit import costs as costing
from evalkit import effects as E
from evalkit import sensitivity as S
from evalkit.design_ri import redraw
from evalkit.estimators import check_rank, design_matrix, estimate_effect
from evalkit.inference import randomisation_test, wild_cluster_bootstrap
from evalkit.ledger import Entry
from evalkit.protocol import Outcome, Protocol, SteppedWedgeDesign

SCHEMA_VERSION = "1.1"
OTHER_SE = {"HC2": ["hc1"], "HC1": ["hc2"], "CR2": ["cr1"], "CR1": ["cr2"]}


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _model(protocol: Protocol, o: Outcome) -> str:
    chosen = next((m.model for m in protocol.analysis.models if m.outcome == o.name), None)
    return chosen or {"binary": "linear_probability", "continuous": "ols", "count": "ols"}[o.type]


def _frame(protocol: Protocol, rows: list[dict[str, Any]], o: Outcome) -> pd.DataFrame:
    """The people whose outcome is observed, with what the model needs."""
    frame = pd.DataFrame(rows)
    frame = frame[frame[f"{o.name}_status"] == "observed"].copy()
    frame[o.name] = frame[o.name].astype(float)
    if isinstance(protocol.design, SteppedWedgeDesign):
        frame["period"] = frame["period"].astype(str)  # period fixed effects
    needed = [o.name, "arm", *protocol.analysis.covariates]
    if protocol.unit.level == "place":
        needed.append("place")
    return frame.dropna(subset=needed)


def _covariates(protocol: Protocol) -> list[str]:
    extra = ["period"] if isinstance(protocol.design, SteppedWedgeDesign) else []
    return [*protocol.analysis.covariates, *extra]


def outcome_effect(
    protocol: Protocol,
    o: Outcome,
    rows: list[dict[str, Any]],
    entries: list[Entry],
    primary: bool,
    seed: int,
) -> dict[str, Any]:
    """Every registered number for one outcome (the sensitivity analyses for the primary)."""
    a = protocol.analysis
    arms = [protocol.arms[0].name, protocol.arms[1].name]
    frame = _frame(protocol, rows, o)
    cluster = "place" if protocol.unit.level == "place" else None
    covariates = _covariates(protocol)
    counts = {arm: int((frame["arm"] == arm).sum()) for arm in arms}
    out: dict[str, Any] = {
        "outcome": o.name,
        "label": o.label,
        "wording": o.wording,
        "type": o.type,
        "primary": primary,
        "direction": o.direction,
        "minimal_important_difference": o.minimal_important_difference,
        "source": o.source,
        "model": _model(protocol, o),
        "primary_analysis": "registered_model"
        if _model(protocol, o) in E.RATIO_MODELS
        else "effect",
        "analysed": counts,
        "covariates": covariates,
        "effect": None,
        "registered_model": None,
        "other_standard_errors": [],
    }
    if min(counts.values()) < 2:
        out["not_estimable"] = "fewer than two people with this outcome in an arm"
        return out
    if cluster and min(frame.groupby("arm")["place"].nunique().reindex(arms, fill_value=0)) < 1:
        out["not_estimable"] = "an arm has no place with this outcome observed"
        return out
    in_arm = [frame.loc[frame["arm"] == arm, o.name].to_numpy(dtype=float) for arm in arms]
    if all(v.min() == v.max() for v in in_arm):
        out["not_estimable"] = (
            "the outcome does not vary within the arms among the analysed people, so no "
            "standard error can be estimated"
        )
        return out
    covariates, dropped = usable_covariates(frame, o.name, covariates, cluster, arms)
    out["covariates"] = covariates
    if dropped:
        out["covariates_dropped"] = dropped
    try:
        eff = estimate_effect(frame, o.name, "arm", covariates, cluster, None, a.se, a.alpha, arms)
    except ValueError as exc:  # e.g. a stepped wedge's exposure confounded with period
        out["not_estimable"] = str(exc)
        return out
    if not (np.isfinite(eff.std_error) and eff.std_error > 0):
        out["not_estimable"] = "the linear model has no standard error on these data"
        return out
    out["effect"] = {
        **eff.as_dict(),
        "scale": "difference in proportions" if o.type == "binary" else "difference in means",
    }
    for other in OTHER_SE[eff.se_type]:
        out["other_standard_errors"].append(
            estimate_effect(
                frame, o.name, "arm", covariates, cluster, None, other, a.alpha, arms
            ).as_dict()
        )
    if out["model"] in E.RATIO_MODELS:
        out["registered_model"] = _registered_model(
            frame, o, out["model"], covariates, cluster, arms, a.alpha
        )
    y = frame[o.name].to_numpy(dtype=float)
    t = (frame["arm"] == arms[1]).to_numpy().astype(int)
    out["means"] = {arm: float(y[t == k].mean()) for k, arm in enumerate(arms)}
    clusters = frame["place"].to_numpy() if cluster else None
    if o.type == "binary":
        out["binary"] = _clean(E.binary_effects(y, t, a.alpha))
        out["odds_ratio"] = _odds_ratio(frame, o, covariates, arms, a.alpha)
    else:
        wedge = isinstance(protocol.design, SteppedWedgeDesign)  # places cross over
        try:
            out["hedges_g"] = _clean(E.hedges_g(y, t, None if wedge else clusters))
        except ValueError as exc:
            out["hedges_g"] = {"not_estimable": str(exc)}
    bayes = E.bayesian_reading(
        eff.estimate, eff.std_error, a.prior, o.minimal_important_difference, o.direction
    )
    out["bayes"] = _clean(bayes)
    out["bayes"]["words"] = E.words_for(bayes["p_benefit"], bayes["p_beyond_mid"])
    if primary:
        out["missing_data"] = _missing_data(protocol, rows, o, covariates, arms[1], seed)
        if isinstance(protocol.design, SteppedWedgeDesign):
            wedge_frame = frame.assign(exposure=t)
            out["stepped_wedge_models"] = {
                "mixed": S.stepped_wedge_mixed(
                    wedge_frame, o.name, "exposure", "period", "place", a.alpha
                ),
                "fixed": S.stepped_wedge_fixed(
                    wedge_frame, o.name, "exposure", "period", "place", a.alpha
                ),
            }
        out["subgroups"] = [
            subgroup_effects(protocol, rows, name, covariates)
            for name in protocol.analysis.subgroups
        ]
        out["cace"] = cace(protocol, rows, covariates)
        out["randomisation_inference"] = _ri(
            protocol, frame, o, covariates, entries, rows, arms[1], seed
        )
        out["wild_cluster_bootstrap"] = _wcb(protocol, frame, o, covariates, arms, seed)
    return out


def usable_covariates(
    frame: pd.DataFrame,
    outcome: str,
    covariates: list[str],
    cluster: str | None,
    arms: list[str],
) -> tuple[list[str], list[dict[str, str]]]:
    """The registered covariates that can be estimated among the analysed people, in the
    registered order, and those left out with the reason. A covariate that is constant
    among them (every analysed person on one benefit, say), or whose columns are collinear
    with the arm and the covariates kept before it, carries no information the model can
    use: R's lm would report its coefficients as NA (aliased) and estimatr drops them. It
    is left out of every model of this outcome, and results.json says so, rather than the
    analysis stopping; so is one that would leave no fewer people than coefficients."""
    kept: list[str] = []
    dropped: list[dict[str, str]] = []
    for c in covariates:
        d = design_matrix(frame, outcome, "arm", [*kept, c], cluster, None, arms)
        try:
            check_rank(d.X, d.names, "analysed people")
        except ValueError:
            if frame[c].nunique(dropna=True) < 2:
                why = "constant among the analysed people"
            elif d.X.shape[0] <= d.X.shape[1]:
                why = "more coefficients than analysed people"
            else:
                why = (
                    "collinear with the arm and the covariates before it among the analysed people"
                )
            dropped.append({"covariate": c, "reason": why})
            continue
        kept.append(c)
    return kept, dropped


def _registered_model(
    frame: pd.DataFrame,
    o: Outcome,
    model: str,
    covariates: list[str],
    cluster: str | None,
    arms: list[str],
    alpha: float,
) -> dict[str, Any]:
    """The registered logistic, Poisson or negative binomial model on the analysed people,
    with the same covariates as the linear model; why not, when it cannot be fitted."""
    d = design_matrix(frame, o.name, "arm", covariates, cluster, None, arms)
    try:
        return _clean(E.ratio_model(d.y, d.X, model, d.clusters, alpha))
    except (ValueError, np.linalg.LinAlgError) as exc:
        return {"model": model, "scale": E.RATIO_MODELS[model], "not_estimable": str(exc)}


def _test_p_value(r: dict[str, Any]) -> float | None:
    """The p-value of an outcome's registered test: the registered model's when one is
    registered and could be fitted, else the linear model's (``not_run`` then says the
    registered model could not be fitted)."""
    fitted = (r["registered_model"] or {}).get("p_value")
    if r["primary_analysis"] == "registered_model" and fitted is not None:
        return fitted
    return r["effect"]["p_value"] if r["effect"] else None


def _missing_data(
    protocol: Protocol,
    rows: list[dict[str, Any]],
    o: Outcome,
    covariates: list[str],
    treated: str,
    seed: int,
) -> dict[str, Any] | None:
    """The registered missing-data analysis beside the complete-case one: everyone whose
    outcome is due, with the missing outcomes imputed or the observed reweighted."""
    method = protocol.analysis.sensitivity.missing_data
    if method == "none":
        return None
    frame = pd.DataFrame(rows)
    frame = frame[frame[f"{o.name}_status"] != "not_yet_due"].copy()
    frame[o.name] = frame[o.name].astype(float)
    if isinstance(protocol.design, SteppedWedgeDesign):
        frame["period"] = frame["period"].astype(str)
    frame = frame.dropna(subset=["arm", *covariates])
    cluster = "place" if protocol.unit.level == "place" else None
    missing = int(frame[o.name].isna().sum())
    alpha = protocol.analysis.alpha
    try:
        if method == "inverse_probability_weighting":
            res = S.inverse_probability_weighted(
                frame, o.name, "arm", treated, covariates, cluster, alpha
            )
        else:
            rng = np.random.default_rng([seed, 4])
            res = S.multiple_imputation(
                frame, o.name, "arm", treated, covariates, 20, rng, alpha, cluster
            )
    except ValueError as exc:
        return {"method": method, "missing": missing, "not_estimable": str(exc)}
    return {**res, "missing": missing}


def subgroup_effects(
    protocol: Protocol,
    rows: list[dict[str, Any]],
    name: str,
    covariates: list[str] | None = None,
) -> dict[str, Any]:
    """The primary effect within each level of a pre-specified subgroup, and a test of
    whether it differs between levels (arm-by-level interaction, Wald test with the same
    kind of robust covariance). Flagged underpowered when an interaction as large as the
    minimal important difference would be detected with less than 80% power.
    ``covariates``: those the primary model could use (default: the registered ones).
    Levels without at least two people in each arm (and, in a place design, two places)
    get no effect and are left out of the interaction test, which is then over the other
    levels; with fewer than two such levels there is no test, and the reason is given."""
    import statsmodels.formula.api as smf

    a, o = protocol.analysis, protocol.primary
    arms = [protocol.arms[0].name, protocol.arms[1].name]
    frame = _frame(protocol, rows, o)
    frame = frame.dropna(subset=[name])
    frame[name] = frame[name].astype(str)
    cluster = "place" if protocol.unit.level == "place" else None
    covariates = [c for c in (covariates or _covariates(protocol)) if c != name]
    levels = []
    usable = []
    for level, part in frame.groupby(name, sort=True):
        if (
            part["arm"].nunique() < 2
            or part["arm"].value_counts().min() < 2
            or (cluster and part.groupby("arm")["place"].nunique().min() < 2)
        ):
            levels.append({"level": level, "n": len(part), "effect": None})
            continue
        usable.append(level)
        try:
            eff = estimate_effect(
                part, o.name, "arm", covariates, cluster, None, a.se, a.alpha, arms
            )
            levels.append({"level": level, "n": len(part), "effect": eff.as_dict()})
        except ValueError as exc:
            levels.append(
                {"level": level, "n": len(part), "effect": None, "not_estimable": str(exc)}
            )
    frame["treated"] = (frame["arm"] == arms[1]).astype(int)
    frame["_y"] = frame[o.name].astype(float)
    out: dict[str, Any] = {"subgroup": name, "levels": levels, "interaction_p_value": None}
    if frame[name].nunique() < 2:
        out["not_estimable"] = "only one level observed"
        return out
    if len(usable) < 2:
        out["not_estimable"] = (
            "fewer than two levels have at least two people (and, with places, two places) "
            "in each arm, so no interaction can be tested"
        )
        return out
    frame = frame[frame[name].isin(usable)]
    covariates = [c for c in covariates if frame[c].nunique() > 1]
    terms = " + ".join(f"C({c})" if frame[c].dtype == object else c for c in covariates)
    formula = f"_y ~ treated * C({name})" + (f" + {terms}" if terms else "")
    try:
        check_rank(np.asarray(smf.ols(formula, data=frame).exog), [formula], "analysed people")
    except Exception:  # collinear terms, or none patsy can build
        out["not_estimable"] = (
            "the interaction model's terms are collinear among the analysed people"
        )
        return out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a singular test (ValueWarning) is no test
            model = smf.ols(formula, data=frame)
            fit = (
                model.fit(cov_type="cluster", cov_kwds={"groups": frame["place"]})
                if cluster
                else model.fit(cov_type="HC2")
            )
            names = [n for n in fit.params.index if n.startswith("treated:")]
            test = fit.wald_test(", ".join(f"{n} = 0" for n in names), scalar=True)
            largest_se = max(float(fit.bse[n]) for n in names)
        out["interaction_p_value"] = _num(test.pvalue)
        out["interaction_detectable"] = _num(2.8 * largest_se)
        out["underpowered"] = bool(2.8 * largest_se > o.minimal_important_difference)
    except Exception as exc:  # singular designs in small subgroups
        out["not_estimable"] = str(exc).splitlines()[0]
    return out


def cace(
    protocol: Protocol, rows: list[dict[str, Any]], covariates: list[str] | None = None
) -> dict[str, Any]:
    """Complier average causal effect of receiving the intervention, by instrumental
    variables (assignment instruments receipt; nobody in the control arm receives it),
    when every analysed person in the intervention arm has a start or did-not-start
    recorded. Not estimable, with the reason, when nobody in the intervention arm started
    (the instrument then moves nobody: the effect of receipt is 0/0) or the model cannot
    be fitted. ``covariates``: those the primary model could use (default: the registered
    ones)."""
    from linearmodels.iv import IV2SLS

    a, o = protocol.analysis, protocol.primary
    arms = [protocol.arms[0].name, protocol.arms[1].name]
    frame = _frame(protocol, rows, o)
    treated_rows = frame[frame["arm"] == arms[1]]
    unknown = int(treated_rows["started"].isna().sum())
    if len(treated_rows) == 0 or unknown:
        return {
            # no count here: the reason is printed on the published pages
            "not_estimable": "receipt (started or did not start) is not recorded for "
            f"everyone analysed in the {arms[1]} arm",
            "compliance": a.compliance,
        }
    if not treated_rows["started"].astype(bool).any():
        return {
            "not_estimable": f"nobody in the {arms[1]} arm started it, so assignment moves "
            "nobody into receiving it and there is no complier effect to estimate",
            "compliance": a.compliance,
        }
    d = design_matrix(
        frame,
        o.name,
        "arm",
        _covariates(protocol) if covariates is None else covariates,
        "place" if protocol.unit.level == "place" else None,
        None,
        arms,
    )
    assigned = d.X[:, 1]
    received = np.where(assigned == 1, frame["started"].fillna(False).astype(float), 0.0)
    exog = pd.DataFrame(np.delete(d.X, 1, axis=1))
    try:
        model = IV2SLS(
            pd.Series(d.y),
            exog,
            pd.Series(received, name="received"),
            pd.Series(assigned, name="assigned"),
        )
        fit = (
            model.fit(cov_type="clustered", clusters=pd.Series(d.clusters))
            if d.clusters is not None
            else model.fit(cov_type="robust")
        )
    except (ValueError, np.linalg.LinAlgError) as exc:
        return {
            "not_estimable": "the instrumental-variables model cannot be fitted "
            f"({str(exc).splitlines()[0]})",
            "compliance": a.compliance,
        }
    low, high = fit.conf_int(level=1 - a.alpha).loc["received"]
    return {
        "estimate": _num(fit.params["received"]),
        "std_error": _num(fit.std_errors["received"]),
        "p_value": _num(fit.pvalues["received"]),
        "conf_low": _num(low),
        "conf_high": _num(high),
        "compliance_rate": _num(received[assigned == 1].mean()),
        "compliance": a.compliance,
        "method": "instrumental variables (2SLS), assignment as the instrument",
        "se_type": "clustered by place" if d.clusters is not None else "robust",
    }


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: numpy numbers to floats, non-finite to None, nested dicts too."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _clean(v)
        elif isinstance(v, bool | str) or v is None:
            out[k] = v
        elif isinstance(v, int | np.integer):
            out[k] = int(v)
        elif isinstance(v, float | np.number):
            out[k] = _num(v)
        else:
            out[k] = v
    return out


def _odds_ratio(
    frame: pd.DataFrame, o: Outcome, covariates: list[str], arms: list[str], alpha: float
) -> dict[str, Any]:
    """Logistic model as a secondary presentation (evalkit.effects.logistic_odds_ratio):
    maximum likelihood, or Firth's penalised likelihood under separation, or the reason
    it cannot be estimated."""
    d = design_matrix(frame, o.name, "arm", covariates, None, None, arms)
    return _clean(E.logistic_odds_ratio(d.y, d.X, alpha))


def _ri(
    protocol: Protocol,
    frame: pd.DataFrame,
    o: Outcome,
    covariates: list[str],
    entries: list[Entry],
    rows: list[dict[str, Any]],
    treated: str,
    seed: int,
) -> dict[str, Any] | None:
    plan = protocol.analysis.sensitivity.randomisation_inference
    if plan is None:
        return None
    r = redraw(protocol, entries, treated, plan.draws, seed)
    position = {u: i for i, u in enumerate(r.units)}
    columns = [position[u] for u in frame["unit"]]
    d = design_matrix(
        frame,
        o.name,
        "arm",
        covariates,
        "place" if protocol.unit.level == "place" else None,
        None,
        [protocol.arms[0].name, treated],
    )
    t = d.X[:, 1]
    try:
        test = randomisation_test(
            d.y,
            np.delete(d.X, 1, axis=1),
            t,
            r.chunks(columns),  # a group of draws at a time: never draws x people at once
            plan.statistic,
            r.exact,
            d.clusters,
        )
    except ValueError as exc:  # re-drawn assignments the model cannot take
        return {"not_estimable": f"the randomisation test cannot be run on these data ({exc})"}
    return {
        "p_value": _num(test.p_value),
        "observed": _num(test.observed),
        "draws": int(test.draws),
        "exact": bool(test.exact),
        "statistic": plan.statistic,
        "design": r.description,
        "null_quantiles": [_num(q) for q in np.quantile(test.null, [0.025, 0.5, 0.975])],
        "null_histogram": null_histogram(test.null, test.observed),
    }


def null_histogram(null: np.ndarray, observed: float, bins: int = 40) -> dict[str, list]:
    """The randomisation distribution as a histogram for the technical report (the draws
    themselves are not kept): equal bins over a range symmetric about zero that holds
    every draw and the observed statistic on both sides."""
    reach = float(max(np.max(np.abs(null)), abs(observed))) or 1.0
    counts, edges = np.histogram(null, bins=bins, range=(-reach, reach))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _wcb(
    protocol: Protocol,
    frame: pd.DataFrame,
    o: Outcome,
    covariates: list[str],
    arms: list[str],
    seed: int,
) -> dict[str, Any] | None:
    plan = protocol.analysis.sensitivity.wild_cluster_bootstrap
    if plan is None or protocol.unit.level != "place":
        return None
    d = design_matrix(frame, o.name, "arm", covariates, "place", None, arms)
    try:
        wb = wild_cluster_bootstrap(
            d.y,
            d.X,
            d.clusters,
            1,
            plan.draws,
            rng=np.random.default_rng([seed, 2]),
            alpha=protocol.analysis.alpha,
        )
    except (ValueError, np.linalg.LinAlgError) as exc:
        return {"not_estimable": f"the wild cluster bootstrap cannot be run on these data ({exc})"}
    return {
        "p_value": _num(wb.p_value),
        "conf_low": _num(wb.conf_low),
        "conf_high": _num(wb.conf_high),
        "draws": int(wb.draws),
        "weights": wb.weights,
    }


def _costs(
    protocol: Protocol, rows: list[dict[str, Any]], effects: dict[str, float], seed: int
) -> dict[str, Any]:
    control, treated = protocol.arms[0].name, protocol.arms[1].name
    arms = [a.name for a in protocol.arms]
    delta = costing.incremental_cost(protocol.costs, control, treated)
    n_treated = sum(r["arm"] == treated for r in rows)
    out: dict[str, Any] = {
        "currency": protocol.costs.currency,
        "price_year": protocol.costs.price_year,
        "per_participant": costing.cost_per_participant(protocol.costs, arms),
        "incremental": delta,
        "by_agency": costing.value_by_agency(protocol.costs, effects, n_treated, control, treated),
        "value_not_estimable": costing.unvalued_outcomes(protocol.costs, effects),
    }
    primary = protocol.primary
    if primary.type == "binary" and primary.name in effects:
        frame = pd.DataFrame(rows)
        frame = frame[frame[f"{primary.name}_status"] == "observed"]
        y = frame[primary.name].to_numpy(dtype=float)
        t = (frame["arm"] == treated).to_numpy().astype(int)
        clusters = frame["place"].to_numpy() if protocol.unit.level == "place" else None
        effect = effects[primary.name]
        out["per_additional_outcome"] = {
            "outcome": primary.name,
            "point": costing.cost_per_additional_outcome(delta["total"], effect),
            "words": costing.describe_ratio(delta["total"], effect),
        }
        if not isinstance(protocol.design, SteppedWedgeDesign):
            out["per_additional_outcome"]["bootstrap"] = _clean(
                costing.bootstrap_cost_per_outcome(
                    y,
                    t,
                    delta["total"],
                    1999,
                    np.random.default_rng([seed, 3]),
                    protocol.analysis.alpha,
                    clusters,
                )
            )
    return out


def analyse(
    protocol: Protocol,
    rows: list[dict[str, Any]],
    entries: list[Entry],
    tracking: dict[str, Any],
    seed: int,
    today: date,
    exploratory: list[str],
    provenance: dict[str, Any],
    registration: dict[str, Any],
    registered_protocol: dict[str, Any],
) -> dict[str, Any]:
    """results.json as plain data. ``exploratory`` lists the deviations from the
    registered plan (empty when the registered plan was run); ``registration`` and
    ``registered_protocol`` are carried into the file so that a report needs nothing else."""
    if len(protocol.arms) != 2:
        raise ValueError("the analysis of pilots with more than two arms is not built yet")
    results = [
        outcome_effect(protocol, o, rows, entries, o.primary, seed) for o in protocol.outcomes
    ]
    secondary = [r for r in results if not r["primary"] and _test_p_value(r) is not None]
    adjusted = E.adjust_pvalues(
        [_test_p_value(r) for r in secondary], protocol.analysis.multiplicity
    )
    for r, p in zip(secondary, adjusted, strict=True):
        r["adjusted_p_value"] = _num(p)
        r["multiplicity"] = protocol.analysis.multiplicity
        fitted = (r["registered_model"] or {}).get("p_value") is not None
        r["adjusted_from"] = "registered_model" if fitted else "effect"
    frame = pd.DataFrame(rows)
    treated = (frame["arm"] == protocol.arms[1].name).to_numpy().astype(int)
    base_cols = [
        f.name for f in protocol.fields if not f.identifier and f.name != protocol.unit.place_field
    ]
    both = 0 < treated.sum() < len(treated)
    balance = E.standardised_differences(frame[base_cols], treated) if both else []
    primary = next(r for r in results if r["primary"])
    c = tracking["consort"]
    due = {a["arm"]: a["randomised"] - a["not_yet_due"] for a in c["arms"]}
    analysed = {a["arm"]: a["analysed"] for a in c["arms"]}
    effects = {r["outcome"]: r["effect"]["estimate"] for r in results if r["effect"]}
    return {
        "schema_version": SCHEMA_VERSION,
        "pilot": {
            "id": protocol.id,
            "title": protocol.title,
            "version": protocol.version,
            "summary": protocol.summary,
            "area": protocol.reporting.audience.area,
        },
        "exploratory": bool(exploratory),
        "deviations": exploratory,
        "registration": registration,
        "protocol": registered_protocol,
        "as_of": today.isoformat(),
        "arms": [
            {"name": a.name, "label": a.label, "description": a.description, "control": i == 0}
            for i, a in enumerate(protocol.arms)
        ],
        "design": protocol.design.method,
        "unit": protocol.unit.level,
        "alpha": protocol.analysis.alpha,
        "estimand": protocol.analysis.estimand,
        "primary": primary,
        "secondary": [r for r in results if not r["primary"]],
        "balance": [_clean(b) for b in balance],
        "attrition": _clean(E.attrition(due, analysed)) if all(due.values()) else None,
        "consort": c,
        "progression": tracking["progression"],
        "costs": _costs(protocol, rows, effects, seed),
        "context": tracking["notes"],
        "not_run": _not_run(results),
        "provenance": {
            **provenance,
            "python": platform.python_version(),
            "evalkit": __version__,
            "seed_source": "HMAC of the pilot's secret",
        },
    }


def _not_run(results: list[dict[str, Any]]) -> list[str]:
    """Registered analyses that could not be run on the data, named openly."""
    out = []
    for r in results:
        for key, name in (
            ("missing_data", "missing-data analysis"),
            ("randomisation_inference", "randomisation inference"),
            ("wild_cluster_bootstrap", "wild cluster bootstrap"),
        ):
            why = (r.get(key) or {}).get("not_estimable")
            if why:
                out.append(f"{r['outcome']}: the registered {name} could not be run ({why})")
        m = r["registered_model"]
        if r["primary_analysis"] == "registered_model" and (m is None or "not_estimable" in m):
            why = m["not_estimable"] if m else r.get("not_estimable", "not estimable")
            out.append(
                f"{r['outcome']}: the registered {r['model'].replace('_', ' ')} model could not "
                f"be fitted ({why}); the linear model's difference is reported"
            )
    return out
