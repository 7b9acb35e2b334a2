"""Sensitivity analyses that sit beside the pre-registered OLS estimate.

The primary analysis (evalkit.estimators) drops people whose outcome is missing, which is
unbiased only if missingness is unrelated to the outcome given arm and covariates in a way the
complete cases represent. These functions ask whether the conclusion survives other standard
assumptions about missing outcomes (inverse probability weighting, multiple imputation), and
give the two usual analyses of a stepped-wedge roll-out (a linear mixed model with random place
intercepts, and two-way fixed effects with place-clustered errors).

Every function is pure: it reads the frame, never writes, does no I/O, and draws random
numbers only from a numpy Generator that the caller passes in. Each returns a plain dict of
JSON-ready values (floats, ints, strings; non-finite numbers become None) or raises
ValueError saying what is wrong with the input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from linearmodels import PanelOLS
from scipy import stats

from evalkit.effects import separated
from evalkit.estimators import check_alpha, check_rank, design_matrix, estimate_effect

__all__ = [
    "inverse_probability_weighted",
    "multiple_imputation",
    "rubin_combine",
    "stepped_wedge_fixed",
    "stepped_wedge_mixed",
]

#: Name of the temporary "outcome observed" column used to build the design of the
#: missingness model; chosen so that it cannot clash with a real column name.
_OBSERVED = "__evalkit_outcome_observed__"

#: A column whose part not explained by the other columns is this small relative to its norm
#: is collinear with them (same threshold as evalkit.estimators).

#: Fitted probabilities of being observed below this mean the missingness model separates
#: (some covariate pattern is never observed): the weights would be unbounded.
_MIN_PROPENSITY = 1e-6


def _num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _t_summary(est: float, se: float, df: float, alpha: float) -> dict[str, float | None]:
    """Estimate, standard error, t interval and two-sided p on ``df`` degrees of freedom."""
    q = stats.t.ppf(1.0 - alpha / 2.0, df)
    return {
        "estimate": _num(est),
        "std_error": _num(se),
        "conf_low": _num(est - q * se),
        "conf_high": _num(est + q * se),
        "p_value": _num(2.0 * stats.t.sf(abs(est / se), df)) if se > 0 else None,
    }


def _check_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"frame has no column {', '.join(map(repr, missing))}")
    dupes = sorted({c for c in columns if list(columns).count(c) > 1})
    if dupes:
        raise ValueError(f"column {', '.join(map(repr, dupes))} is given in two roles")


def _arm_indicator(s: pd.Series, treated_arm: Any, name: str) -> np.ndarray:
    """0/1 indicator of the treated arm; the other arm is the comparison."""
    levels = list(pd.unique(s))
    if len(levels) > 2:
        raise ValueError(
            f"treatment {name!r} has {len(levels)} arms ({', '.join(map(str, levels))}); keep "
            "the rows of the two arms compared"
        )
    d = (s == treated_arm).to_numpy()
    if not d.any():
        d = (s.astype(str) == str(treated_arm)).to_numpy()
    if not d.any():
        raise ValueError(
            f"no row has treatment {name!r} equal to treated_arm={treated_arm!r} "
            f"(arms present: {', '.join(map(str, levels))})"
        )
    if d.all():
        raise ValueError(f"every row is in arm {treated_arm!r}; need a comparison arm")
    return d.astype(float)


def _working_frame(
    frame: pd.DataFrame,
    outcome: str,
    treatment_col: str,
    treated_arm: Any,
    covariates: Sequence[str],
    cluster: str | None,
) -> tuple[pd.DataFrame, list[str], np.ndarray]:
    """Copy of the columns used, treatment as 0/1, and the "outcome observed" mask.

    Arm, covariates and cluster must be complete: these analyses model the people whose
    outcome is missing, so they need everything else about every randomised person.
    """
    if isinstance(covariates, str):
        covariates = [covariates]
    covariates = list(covariates)
    used = [outcome, treatment_col, *covariates, *([cluster] if cluster else [])]
    _check_columns(frame, used)
    if frame.empty:
        raise ValueError("frame has no rows")
    for col in used[1:]:
        n_missing = int(frame[col].isna().sum())
        if n_missing:
            raise ValueError(
                f"column {col!r} has {n_missing} missing value(s); these analyses need arm, "
                "covariates and cluster for every randomised person (only the outcome may be "
                "missing)"
            )
    y = frame[outcome]
    if not (pd.api.types.is_numeric_dtype(y.dtype) or pd.api.types.is_bool_dtype(y.dtype)):
        raise ValueError(f"outcome {outcome!r} must be numeric (it holds {y.dtype} values)")
    work = frame[used].copy()
    work[outcome] = y.astype(float)
    work[treatment_col] = _arm_indicator(frame[treatment_col], treated_arm, treatment_col)
    observed = work[outcome].notna().to_numpy()
    if not observed.any():
        raise ValueError(f"outcome {outcome!r} is missing for everyone")
    return work, covariates, observed


def _full_design(
    work: pd.DataFrame, treatment_col: str, covariates: list[str], observed: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Intercept, arm and covariates (categorical as dummies, first sorted level as reference)
    for every row, built with evalkit's design_matrix so the coding matches the primary
    analysis."""
    tmp = work.drop(columns=[c for c in work.columns if c not in [treatment_col, *covariates]])
    tmp[_OBSERVED] = observed.astype(float)
    design = design_matrix(tmp, _OBSERVED, treatment_col, covariates, None, None, None)
    return design.X, design.names


def _cluster_codes(s: pd.Series) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(s, sort=True)
    return codes.astype(np.intp), len(uniques)


# ---------------------------------------------------------------------------------------
# Inverse probability weighting


def inverse_probability_weighted(
    frame: pd.DataFrame,
    outcome: str,
    treatment_col: str,
    treated_arm: Any,
    covariates: Sequence[str],
    cluster: str | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Effect estimate re-weighting the observed to stand for everyone randomised.

    Why: complete-case OLS is biased when who responds depends on arm and covariates and they
    also predict the outcome. Weighting each observed person by 1 / P(observed | arm,
    covariates) restores the randomised population if outcomes are missing at random given
    those variables.

    The missingness model is a logistic GLM of "outcome observed" on the arm indicator and
    the covariates (numeric as is, categorical as dummies, first sorted level as reference).
    The outcome model is WLS of outcome on arm and covariates with a sandwich standard error:
    HC1 with t on n - k df, or with ``cluster`` statsmodels' cluster-robust CR1 with t on G - 1
    df. The standard error treats the weights as known, ignoring that they were estimated;
    with a correctly specified logistic model this makes it conservative in practice (the
    estimated weights are more efficient than the true ones). With no missing outcome all
    weights are 1 and the result is OLS with HC1 (or CR1) errors.
    """
    check_alpha(alpha)
    work, covariates, observed = _working_frame(
        frame, outcome, treatment_col, treated_arm, covariates, cluster
    )
    X, names = _full_design(work, treatment_col, covariates, observed)
    n_total = len(work)
    if observed.all():
        p_obs = np.ones(n_total)
    else:
        check_rank(X, names, "rows of the missingness model")
        if separated(observed.astype(float), X):
            raise ValueError(
                "the logistic model of who has an outcome has no finite estimate: arm and "
                "covariates predict exactly who has one for some people (separation), so the "
                "weights would be unbounded: use fewer or coarser covariates"
            )
        glm = sm.GLM(observed.astype(float), X, family=sm.families.Binomial()).fit()
        p_obs = np.asarray(glm.fittedvalues, dtype=float)
        if not glm.converged or not np.all(np.isfinite(p_obs)):
            raise ValueError("the logistic model of who has an outcome did not converge")
        if p_obs[observed].min() < _MIN_PROPENSITY:
            raise ValueError(
                "the logistic model of who has an outcome predicts near-zero chances of being "
                "observed for some observed people (separation); the weights would be "
                "unbounded: use fewer or coarser covariates"
            )
    w = 1.0 / p_obs[observed]
    X_obs = X[observed]
    y_obs = work[outcome].to_numpy()[observed]
    check_rank(X_obs, names, "rows with an observed outcome")
    model = sm.WLS(y_obs, X_obs, weights=w)
    n_clusters = None
    if cluster:
        codes, n_clusters = _cluster_codes(work[cluster][observed])
        if n_clusters < 2:
            raise ValueError(f"cluster {cluster!r} has one cluster only among the observed")
        res = model.fit(cov_type="cluster", cov_kwds={"groups": codes}, use_t=True)
        df = float(n_clusters - 1)
        se_type = "CR1"
    else:
        res = model.fit(cov_type="HC1", use_t=True)
        df = float(res.df_resid)
        se_type = "HC1"
    j = names.index(treatment_col)
    est, se = float(res.params[j]), float(res.bse[j])
    return {
        "method": "inverse probability weighting",
        **_t_summary(est, se, df, alpha),
        "df": _num(df),
        "se_type": se_type,
        "alpha": float(alpha),
        "n_observed": int(observed.sum()),
        "n_total": int(n_total),
        "clusters": n_clusters,
        "weight_min": _num(w.min()),
        "weight_max": _num(w.max()),
    }


# ---------------------------------------------------------------------------------------
# Multiple imputation


def rubin_combine(
    estimates: Sequence[float],
    variances: Sequence[float],
    df_complete: float,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Pool m completed-data analyses by Rubin's rules with Barnard-Rubin degrees of freedom.

    Why: the spread of the estimates across imputations (between variance B) is the extra
    uncertainty from not knowing the missing outcomes; ignoring it gives intervals too narrow.
    Q = mean estimate, W = mean variance, T = W + (1 + 1/m) B, lambda = (1 + 1/m) B / T,
    r = (1 + 1/m) B / W, nu_old = (m - 1) / lambda^2,
    nu_obs = (nu_com + 1) / (nu_com + 3) nu_com (1 - lambda), df = 1 / (1/nu_old + 1/nu_obs)
    (Barnard and Rubin 1999; as R's mice::pool), fraction of missing information
    (r + 2 / (df + 3)) / (1 + r). t-based p-value and interval on df.
    """
    check_alpha(alpha)
    q = np.asarray(estimates, dtype=float)
    u = np.asarray(variances, dtype=float)
    m = q.size
    if m < 2 or u.size != m:
        raise ValueError("need at least two imputations, with one variance per estimate")
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(u)) and np.all(u >= 0)):
        raise ValueError("estimates and variances must be finite, variances non-negative")
    if not (math.isfinite(df_complete) and df_complete > 0):
        raise ValueError(f"the complete-data df must be positive and finite, got {df_complete}")
    qbar = float(q.mean())
    within = float(u.mean())
    between = float(q.var(ddof=1))
    total = within + (1.0 + 1.0 / m) * between
    if total <= 0:
        raise ValueError("the pooled variance is zero")
    lam = (1.0 + 1.0 / m) * between / total
    riv = (1.0 + 1.0 / m) * between / within if within > 0 else math.inf
    nu_obs = (df_complete + 1.0) / (df_complete + 3.0) * df_complete * (1.0 - lam)
    if lam > 0:
        nu_old = (m - 1) / lam**2
        df = nu_old * nu_obs / (nu_old + nu_obs)
    else:
        df = nu_obs
    fmi = (riv + 2.0 / (df + 3.0)) / (1.0 + riv) if math.isfinite(riv) else 1.0
    se = math.sqrt(total)
    return {
        **_t_summary(qbar, se, df, alpha),
        "df": _num(df),
        "df_complete": float(df_complete),
        "imputations": int(m),
        "within_variance": within,
        "between_variance": between,
        "total_variance": total,
        "relative_increase_variance": _num(riv),
        "proportion_variance_missing": lam,
        "fraction_missing_information": _num(fmi),
        "alpha": float(alpha),
    }


def _draw_normal(
    X_obs: np.ndarray, y_obs: np.ndarray, X_mis: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One proper draw for a normal linear model (Rubin 1987; mice's "norm"): sigma^2 from its
    scaled inverse chi-square posterior, beta ~ N(beta_hat, sigma^2 (X'X)^-1), then the
    missing outcomes with normal noise."""
    n, k = X_obs.shape
    Q, R = np.linalg.qr(X_obs)
    beta_hat = np.linalg.solve(R, Q.T @ y_obs)
    rss = float(np.sum((y_obs - X_obs @ beta_hat) ** 2))
    sigma = math.sqrt(rss / rng.chisquare(n - k))
    # R^-1 z has covariance (R'R)^-1 = (X'X)^-1.
    beta = beta_hat + sigma * np.linalg.solve(R, rng.standard_normal(k))
    return X_mis @ beta + sigma * rng.standard_normal(X_mis.shape[0])


def multiple_imputation(
    frame: pd.DataFrame,
    outcome: str,
    treatment_col: str,
    treated_arm: Any,
    covariates: Sequence[str],
    imputations: int,
    rng: np.random.Generator,
    alpha: float = 0.05,
    cluster: str | None = None,
) -> dict[str, Any]:
    """Effect estimate with missing outcomes multiply imputed from arm and covariates.

    Why: like IPW this assumes outcomes are missing at random given arm and covariates, but
    uses the outcome model rather than the response model, so the two together show whether
    the conclusion depends on which model is right.

    The imputation model is fitted on the people with an outcome, with intercept, arm and
    covariates: a normal linear model for a continuous outcome, a logistic model when every
    observed value is 0 or 1. Each imputation draws the parameters from their approximate
    posterior (normal model: sigma^2 from its scaled inverse chi-square, then beta from the
    multivariate normal around the fit; logistic: beta from the multivariate normal with the
    fit's covariance) and then the missing outcomes (normal noise / Bernoulli). Each completed
    data set is analysed as the primary analysis is (estimate_effect: OLS with HC2, or CR2
    with ``cluster``; the imputation model itself ignores clustering) and the results are
    pooled by Rubin's rules (rubin_combine). With no missing outcome every completed data set
    is the observed one and the result is the complete-data analysis (B = 0, df = its df).
    """
    check_alpha(alpha)
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy Generator (numpy.random.default_rng(seed))")
    if isinstance(imputations, bool) or not isinstance(imputations, (int, np.integer)):
        raise ValueError(f"imputations must be an integer, got {imputations!r}")
    if imputations < 2:
        raise ValueError(f"need at least two imputations, got {imputations}")
    work, covariates, observed = _working_frame(
        frame, outcome, treatment_col, treated_arm, covariates, cluster
    )
    se = "cr2" if cluster else "hc2"
    n_missing = int((~observed).sum())
    y = work[outcome].to_numpy()
    y_obs = y[observed]
    binary = bool(np.isin(y_obs, (0.0, 1.0)).all())
    model = "logistic" if binary else "normal linear"

    def analyse(data: pd.DataFrame):
        return estimate_effect(
            data, outcome, treatment_col, covariates, cluster, se=se, alpha=alpha
        )

    if n_missing == 0:
        eff = analyse(work)
        return {
            "method": "multiple imputation",
            "estimate": _num(eff.estimate),
            "std_error": _num(eff.std_error),
            "conf_low": _num(eff.conf_low),
            "conf_high": _num(eff.conf_high),
            "p_value": _num(eff.p_value),
            "df": _num(eff.df),
            "df_complete": _num(eff.df),
            "imputations": int(imputations),
            "within_variance": _num(eff.std_error**2),
            "between_variance": 0.0,
            "total_variance": _num(eff.std_error**2),
            "relative_increase_variance": 0.0,
            "proportion_variance_missing": 0.0,
            "fraction_missing_information": 0.0,
            "alpha": float(alpha),
            "imputation_model": model,
            "se_type": eff.se_type,
            "n_observed": int(observed.sum()),
            "n_total": len(work),
            "clusters": eff.clusters,
        }

    X, names = _full_design(work, treatment_col, covariates, observed)
    X_obs, X_mis = X[observed], X[~observed]
    check_rank(X_obs, names, "rows with an observed outcome")
    if binary:
        if y_obs.min() == y_obs.max():
            raise ValueError(
                f"every observed {outcome!r} is {y_obs[0]:g}; a 0/1 outcome needs both values "
                "observed to impute"
            )
        if separated(y_obs, X_obs):  # the draws would be 0 or 1 whatever the data say
            raise ValueError(
                "the logistic imputation model has no finite estimate: among the people with "
                "an outcome, arm and covariates predict it exactly for some (separation)"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-convergence is checked next
            glm = sm.GLM(y_obs, X_obs, family=sm.families.Binomial()).fit()
        if not glm.converged or not np.all(np.isfinite(glm.bse)):
            raise ValueError("the logistic imputation model did not converge")
        params, cov = np.asarray(glm.params), np.asarray(glm.cov_params())

    estimates, variances, dfs = [], [], []
    completed = work.copy()
    for _ in range(imputations):
        if binary:
            beta = rng.multivariate_normal(params, cov, method="cholesky")
            prob = 1.0 / (1.0 + np.exp(-(X_mis @ beta)))
            draw = (rng.random(X_mis.shape[0]) < prob).astype(float)
        else:
            draw = _draw_normal(X_obs, y_obs, X_mis, rng)
        filled = y.copy()
        filled[~observed] = draw
        completed[outcome] = filled
        eff = analyse(completed)
        estimates.append(eff.estimate)
        variances.append(eff.std_error**2)
        dfs.append(eff.df)
    pooled = rubin_combine(estimates, variances, float(np.min(dfs)), alpha)
    return {
        "method": "multiple imputation",
        **{k: (_num(v) if isinstance(v, float) else v) for k, v in pooled.items()},
        "imputation_model": model,
        "se_type": eff.se_type,
        "n_observed": int(observed.sum()),
        "n_total": len(work),
        "clusters": eff.clusters,
    }


# ---------------------------------------------------------------------------------------
# Stepped wedge


def _stepped_wedge_frame(
    frame: pd.DataFrame, outcome: str, exposure_col: str, period_col: str, place_col: str
) -> pd.DataFrame:
    """Columns y, exposure, period, place (complete rows only), checked for identification:
    exposure must vary within some period, and not be a function of period and place alone."""
    used = [outcome, exposure_col, period_col, place_col]
    _check_columns(frame, used)
    data = frame[used].dropna()
    if data.empty:
        raise ValueError("no rows left once rows with missing values are dropped")
    for col in (outcome, exposure_col):
        s = data[col]
        if not (pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype)):
            raise ValueError(f"column {col!r} must be numeric (it holds {s.dtype} values)")
    data = pd.DataFrame(
        {
            "y": data[outcome].astype(float).to_numpy(),
            "exposure": data[exposure_col].astype(float).to_numpy(),
            "period": data[period_col].to_numpy(),
            "place": data[place_col].to_numpy(),
        }
    )
    if data["place"].nunique() < 2:
        raise ValueError(f"{place_col!r} has one place only; need two or more")
    if data["exposure"].nunique() < 2:
        raise ValueError(f"exposure {exposure_col!r} does not vary; nothing to estimate")
    period_d = pd.get_dummies(data["period"], drop_first=True, dtype=float).to_numpy()
    place_d = pd.get_dummies(data["place"], drop_first=True, dtype=float).to_numpy()
    base = np.column_stack([np.ones(len(data)), period_d, place_d])
    x = data["exposure"].to_numpy()
    coef, *_ = np.linalg.lstsq(base, x, rcond=None)
    if np.linalg.norm(x - base @ coef) <= 1e-8 * max(np.linalg.norm(x), 1e-300):
        raise ValueError(
            f"exposure {exposure_col!r} is determined by period and place; a stepped wedge "
            "needs places that cross over at different periods"
        )
    return data


def stepped_wedge_mixed(
    frame: pd.DataFrame,
    outcome: str,
    exposure_col: str,
    period_col: str,
    place_col: str,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Exposure effect in a stepped wedge by a linear mixed model (Hussey and Hughes 2007).

    Why: the standard stepped-wedge analysis; period fixed effects absorb secular trend
    (exposure rises over time by design) and random place intercepts give the within-place
    correlation, using between-place as well as within-place contrasts.

    statsmodels MixedLM, REML: y ~ exposure + C(period), random intercept per place. Rows with
    a missing value are dropped. The p-value and interval are z-based (statsmodels' Wald);
    with few places they are optimistic, which is why stepped_wedge_fixed reports t on G - 1.
    """
    check_alpha(alpha)
    data = _stepped_wedge_frame(frame, outcome, exposure_col, period_col, place_col)
    with warnings.catch_warnings(record=True) as caught:  # reported, not printed
        warnings.simplefilter("always")
        res = smf.mixedlm("y ~ exposure + C(period)", data, groups=data["place"]).fit(reml=True)
    fit_warnings = sorted({str(w.message).splitlines()[0] for w in caught})
    est = float(res.params["exposure"])
    se = float(res.bse["exposure"])
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    place_var = float(np.asarray(res.cov_re)[0, 0])
    resid_var = float(res.scale)
    return {
        "method": "linear mixed model, random place intercepts, period fixed effects",
        "estimate": _num(est),
        "std_error": _num(se),
        "conf_low": _num(est - z * se),
        "conf_high": _num(est + z * se),
        "p_value": _num(2.0 * stats.norm.sf(abs(est / se))) if se > 0 else None,
        "alpha": float(alpha),
        "place_variance": _num(place_var),
        "residual_variance": _num(resid_var),
        "icc": _num(place_var / (place_var + resid_var)),
        "converged": bool(res.converged),
        "warnings": fit_warnings,
        "n": len(data),
        "places": int(data["place"].nunique()),
        "periods": int(data["period"].nunique()),
    }


def stepped_wedge_fixed(
    frame: pd.DataFrame,
    outcome: str,
    exposure_col: str,
    period_col: str,
    place_col: str,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Exposure effect in a stepped wedge with place and period fixed effects.

    Why: makes no assumption about the distribution of place effects (they may correlate with
    when a place crosses over); only within-place contrasts identify the effect.

    Individual-level data have many rows per (place, period), which PanelOLS refuses as an
    (entity, time) index, and aggregating to cell means would weight cells equally rather than
    people. So the panel index is (place, row number within place): place is the entity
    effect and period enters as ``other_effects``. This is exactly OLS of outcome on exposure
    plus place and period dummies at the individual level. Errors are clustered by place
    (cov_type="clustered", cluster_entity=True) with the G/(G-1) and (n-1)/(n-k) corrections
    (Stata's CR1), and the p-value and interval use t on G - 1 df, since with 6-24 places the
    normal reference rejects too often.
    """
    check_alpha(alpha)
    data = _stepped_wedge_frame(frame, outcome, exposure_col, period_col, place_col)
    data["row"] = data.groupby("place", sort=False).cumcount()
    data["period_code"] = pd.factorize(data["period"], sort=True)[0]
    panel = data.set_index(["place", "row"])
    res = PanelOLS(
        panel["y"],
        panel[["exposure"]],
        entity_effects=True,
        other_effects=panel[["period_code"]],
    ).fit(cov_type="clustered", cluster_entity=True, group_debias=True)
    n_places = int(data["place"].nunique())
    df = float(n_places - 1)
    est = float(res.params["exposure"])
    se = float(res.std_errors["exposure"])
    return {
        "method": "two-way fixed effects (place, period), place-clustered errors",
        **_t_summary(est, se, df, alpha),
        "df": df,
        "se_type": "CR1",
        "alpha": float(alpha),
        "n": len(data),
        "places": n_places,
        "periods": int(data["period"].nunique()),
    }
