"""Effect estimates for randomised pilots, with standard errors that stay honest when small.

A pilot has a few hundred people or 6-24 places, so the analysis plan pre-registers OLS with
HC2 standard errors (people randomised) or CR2 standard errors with Bell-McCaffrey degrees
of freedom (places randomised): with few clusters the usual CR1 errors are too small and a
t test on G-1 degrees of freedom rejects too often. The numbers match R's estimatr
(lm_robust, difference_in_means) and clubSandwich to relative 1e-8 (tests/data holds the R
reference values and the script that made them).

The covariance estimators are separate small classes (HC2, HC1, CR2, CR1) with one interface,
``cov(X, resid, M, clusters) -> (V, df)``, so an analysis can swap them and a test can check
each on its own. CR2 is written for scale: it never forms an n_g x n_g matrix. In the
orthonormal basis Q = X L of the design (L L' = M = (X'X)^-1), the block of the hat matrix for
cluster g is H_gg = Q_g Q_g' and has rank <= k; with W_g = Q_g'Q_g = V diag(lam) V',
(I - H_gg)^-1/2 = I + Q_g F_g Q_g' where F_g = V diag(f(lam)) V' and
f(lam) = ((1 - lam)^-1/2 - 1) / lam = 1 / (s (1 + s)), s = sqrt(1 - lam). Every CR2 quantity,
the meat and the Bell-McCaffrey degrees of freedom included, then needs only the k x k
matrices W_g and the k-vectors Q_g'e_g: O(n k^2) work once, then O(G k^3).
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import linalg, stats

__all__ = [
    "CR1",
    "CR2",
    "HC1",
    "HC2",
    "CovarianceEstimator",
    "Effect",
    "cr2_parts",
    "difference_in_means",
    "estimate_effect",
]

SE_TYPES = ("auto", "hc2", "hc1", "cr2", "cr1")

#: Eigenvalues of I - H_gg at or below this are treated as zero: the cluster's adjustment is
#: then a generalised inverse square root, as in estimatr (threshold 1e-12) and clubSandwich.
#: This happens when a regressor is non-zero in one cluster only (a place-level dummy that a
#: single place has); the other clusters and the coefficients that do not load on that
#: direction are unaffected. 1e-10 sits well above the rounding error of 1 - lam.
SINGULAR_TOL = 1e-10

#: A column whose part not explained by the earlier columns is this small relative to its
#: norm is collinear with them; the fit stops and names it rather than guessing a drop.
COLLINEAR_TOL = 1e-10


@dataclass(frozen=True)
class Effect:
    """One treatment effect with its uncertainty, plus the whole coefficient table."""

    term: str
    estimate: float
    std_error: float
    df: float
    p_value: float
    conf_low: float
    conf_high: float
    se_type: str
    n: int
    clusters: int | None
    alpha: float
    coefficients: pd.DataFrame = field(compare=False, repr=False)
    control: str | None = None
    treated: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The effect as JSON-ready values (non-finite numbers become None)."""

        def num(x: float) -> float | None:
            x = float(x)
            return x if math.isfinite(x) else None

        return {
            "term": self.term,
            "estimate": num(self.estimate),
            "std_error": num(self.std_error),
            "df": num(self.df),
            "p_value": num(self.p_value),
            "conf_low": num(self.conf_low),
            "conf_high": num(self.conf_high),
            "se_type": self.se_type,
            "n": int(self.n),
            "clusters": None if self.clusters is None else int(self.clusters),
        }


# ---------------------------------------------------------------------------------------
# Covariance estimators


def _cluster_codes(clusters: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes 0..G-1; codes that are already contiguous are used as they are."""
    clusters = np.asarray(clusters)
    if clusters.dtype.kind in "iu" and clusters.size:
        lo = int(clusters.min())
        if lo >= 0:
            counts = np.bincount(clusters)
            if counts.min() > 0:
                return clusters.astype(np.intp, copy=False), int(counts.size)
    codes, uniques = pd.factorize(pd.Series(clusters), sort=True)
    if (codes < 0).any():
        raise ValueError("clusters contain missing values; drop those rows first")
    return codes.astype(np.intp, copy=False), len(uniques)


def _cluster_sums(codes: np.ndarray, n_clusters: int, columns: np.ndarray) -> np.ndarray:
    """Sum each column of an (n, m) array within clusters: (G, m), no sort and no copy of X."""
    out = np.empty((n_clusters, columns.shape[1]))
    for j in range(columns.shape[1]):
        out[:, j] = np.bincount(codes, weights=columns[:, j], minlength=n_clusters)
    return out


def _cluster_crossprods(codes: np.ndarray, n_clusters: int, Q: np.ndarray) -> np.ndarray:
    """W_g = Q_g'Q_g for every cluster, (G, k, k), one product column at a time."""
    k = Q.shape[1]
    W = np.empty((n_clusters, k, k))
    for a in range(k):
        for b in range(a, k):
            s = np.bincount(codes, weights=Q[:, a] * Q[:, b], minlength=n_clusters)
            W[:, a, b] = s
            W[:, b, a] = s
    return W


def _basis(
    X: np.ndarray, M: np.ndarray, basis: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """An orthonormal basis Q = X L of the design with L L' = M.

    estimate_effect passes the one from its QR factorisation, which keeps leverages accurate
    for badly scaled regressors; otherwise L is the Cholesky factor of M.
    """
    if basis is not None:
        return basis
    L = np.linalg.cholesky(M)
    return X @ L, L


def cr2_parts(W: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-cluster CR2 pieces in the orthonormal basis, batched over leading axes.

    W: (..., G, k, k) with W_g = Q_g'Q_g; t: (..., G, k) with t_g = Q_g'e_g. Returns
    T (..., G, k, k) with T_g = I + F_g W_g, so that A_g Q_g = Q_g T_g, and the adjusted
    scores u (..., G, k) with u_g = Q_g' A_g e_g = T_g' t_g.
    """
    lam, vec = np.linalg.eigh(W)
    lam = np.clip(lam, 0.0, 1.0)
    one_minus = 1.0 - lam
    singular = one_minus <= SINGULAR_TOL
    s = np.sqrt(one_minus)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(singular, -1.0 / np.where(lam > 0, lam, 1.0), 1.0 / (s * (1.0 + s)))
    F = (vec * f[..., None, :]) @ np.swapaxes(vec, -1, -2)
    k = W.shape[-1]
    T = np.eye(k) + F @ W
    u = np.einsum("...ji,...j->...i", T, t)
    return T, u


def bell_mccaffrey_df(W: np.ndarray, T: np.ndarray, contrasts: np.ndarray) -> np.ndarray:
    """Bell-McCaffrey (Satterthwaite) degrees of freedom for each contrast column.

    contrasts (k, m) are contrasts on the orthonormal-basis coefficients (a = L'c for a
    contrast c on beta). For contrast a, w_g = A_g X_g M c = Q_g T_g a, so with
    d_g = w_g'w_g and p_g = Q_g'w_g = W_g T_g a, the Gram matrix of the working-model
    scores is Omega = diag(d) - P'P (G x G). df = tr(Omega)^2 / ||Omega||_F^2, computed from
    k x k sums: ||Omega||_F^2 = sum d^2 - 2 sum d_g |p_g|^2 + ||sum_g p_g p_g'||_F^2.
    """
    TA = T @ contrasts  # (G, k, m)
    P = W @ TA  # (G, k, m): column j is p_g for contrast j
    d = np.einsum("gkm,gkm->gm", TA, P)  # w_g'w_g = a'T'W T a
    pp = np.einsum("gkm,gkm->gm", P, P)  # |p_g|^2
    trace = d.sum(axis=0) - pp.sum(axis=0)
    outer = np.einsum("gim,gjm->mij", P, P)  # sum_g p_g p_g' per contrast
    frob = (d**2).sum(axis=0) - 2.0 * (d * pp).sum(axis=0) + (outer**2).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(frob > 0, trace**2 / frob, np.nan)
    return df


class CovarianceEstimator(ABC):
    """Common interface: V (k x k) and degrees of freedom per coefficient."""

    name: str = ""
    clustered: bool = False

    @abstractmethod
    def cov(
        self,
        X: np.ndarray,
        resid: np.ndarray,
        M: np.ndarray,
        clusters: np.ndarray | None = None,
        *,
        basis: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (V, df). ``basis`` is an optional (Q, L) with Q = X L orthonormal."""

    def _needs(self, clusters: np.ndarray | None) -> tuple[np.ndarray, int]:
        if clusters is None:
            raise ValueError(f"{self.name} standard errors need clusters")
        return _cluster_codes(clusters)


class HC2(CovarianceEstimator):
    """Bell-McCaffrey's leverage-adjusted heteroskedasticity-robust errors, df = n - k.

    An observation with leverage 1 has a zero residual and adds nothing (0/0 taken as 0).
    """

    name = "HC2"

    def cov(self, X, resid, M, clusters=None, *, basis=None):
        Q, L = _basis(X, M, basis)
        n, k = Q.shape
        h = np.einsum("ij,ij->i", Q, Q)
        one_minus = 1.0 - h
        omega = np.where(
            one_minus > SINGULAR_TOL, resid**2 / np.where(one_minus > 0, one_minus, 1.0), 0.0
        )
        meat = (Q * omega[:, None]).T @ Q
        return L @ meat @ L.T, np.full(k, float(n - k))


class HC1(CovarianceEstimator):
    """White's errors scaled by n / (n - k), df = n - k (estimatr's se_type="stata")."""

    name = "HC1"

    def cov(self, X, resid, M, clusters=None, *, basis=None):
        Q, L = _basis(X, M, basis)
        n, k = Q.shape
        meat = (Q * (resid**2)[:, None]).T @ Q
        return (n / (n - k)) * (L @ meat @ L.T), np.full(k, float(n - k))


class CR1(CovarianceEstimator):
    """Liang-Zeger errors scaled by G/(G-1) (n-1)/(n-k), df = G - 1 (Stata's, estimatr's)."""

    name = "CR1"
    clustered = True

    def cov(self, X, resid, M, clusters=None, *, basis=None):
        codes, G = self._needs(clusters)
        Q, L = _basis(X, M, basis)
        n, k = Q.shape
        U = _cluster_sums(codes, G, Q * resid[:, None])
        scale = G / (G - 1) * (n - 1) / (n - k) if G > 1 else float("nan")
        return scale * (L @ (U.T @ U) @ L.T), np.full(k, float(G - 1))


class CR2(CovarianceEstimator):
    """Bell-McCaffrey / Pustejovsky-Tipton CR2 errors with Satterthwaite df per coefficient.

    Low rank throughout (see the module docstring): the work that grows with n is one pass to
    sum Q_g'Q_g and Q_g'e_g within clusters.
    """

    name = "CR2"
    clustered = True

    def cov(self, X, resid, M, clusters=None, *, basis=None):
        codes, G = self._needs(clusters)
        Q, L = _basis(X, M, basis)
        W = _cluster_crossprods(codes, G, Q)
        t = _cluster_sums(codes, G, Q * resid[:, None])
        T, u = cr2_parts(W, t)
        V = L @ (u.T @ u) @ L.T
        df = bell_mccaffrey_df(W, T, L.T)
        return V, df


ESTIMATORS: dict[str, type[CovarianceEstimator]] = {"hc2": HC2, "hc1": HC1, "cr2": CR2, "cr1": CR1}


# ---------------------------------------------------------------------------------------
# Design matrix


def _is_categorical(s: pd.Series) -> bool:
    return (
        isinstance(s.dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(s.dtype)
        or pd.api.types.is_object_dtype(s.dtype)
        or pd.api.types.is_string_dtype(s.dtype)
    )


def _levels(s: pd.Series) -> list[Any]:
    """Observed levels: Categorical order when given, else sorted (False before True)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        seen = set(s.unique())
        return [c for c in s.cat.categories if c in seen]
    values = list(pd.unique(s))
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _treatment_indicator(
    s: pd.Series, name: str, arms: Sequence[Any] | None
) -> tuple[np.ndarray, str | None, str | None]:
    """0/1 treatment from 0/1, boolean or arm names (control first)."""
    if arms is not None:
        arms = list(arms)
        if len(arms) != 2:
            raise ValueError(
                f"arms must name two arms, the comparison arm first; got {len(arms)}: "
                f"{', '.join(map(str, arms))}"
            )
        labels = s.astype(str).to_numpy()
        control, treated = str(arms[0]), str(arms[1])
        other = sorted(set(labels) - {control, treated})
        if other:
            raise ValueError(
                f"treatment {name!r} has arms {', '.join(other)} besides {control} and "
                f"{treated}; estimate one effect at a time by keeping only the two arms compared"
            )
        d = (labels == treated).astype(float)
    elif pd.api.types.is_bool_dtype(s.dtype) or (
        pd.api.types.is_numeric_dtype(s.dtype) and set(pd.unique(s)) <= {0, 1}
    ):
        d = s.to_numpy(dtype=float)
        control = treated = None
    else:
        levels = _levels(s)
        if len(levels) > 2:
            raise ValueError(
                f"treatment {name!r} has {len(levels)} arms ({', '.join(map(str, levels))}); "
                "estimate one effect at a time: keep the rows of two arms and pass "
                "arms=[comparison, treated]"
            )
        if len(levels) < 2:
            raise ValueError(f"treatment {name!r} has one arm only ({levels[0]}); need two")
        control, treated = str(levels[0]), str(levels[1])
        d = (s == levels[1]).to_numpy(dtype=float)
    if d.min() == d.max():
        raise ValueError(f"treatment {name!r} has one arm only in the rows used; need two")
    return d, control, treated


def _dummies(s: pd.Series, name: str) -> tuple[list[np.ndarray], list[str]]:
    levels = _levels(s)
    cols, names = [], []
    for level in levels[1:]:
        cols.append((s == level).to_numpy(dtype=float))
        names.append(f"{name}{level}")
    return cols, names


@dataclass(frozen=True)
class Design:
    """The regression's inputs once rows with missing values are dropped: outcome, design
    matrix (intercept, treatment, covariates, block dummies) and cluster codes."""

    y: np.ndarray
    X: np.ndarray
    names: list[str]
    clusters: np.ndarray | None
    n_clusters: int | None
    blocks: pd.Series | None
    control: str | None
    treated: str | None


def _complete_rows(data: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise ValueError(f"data has no column {', '.join(map(repr, missing))}")
    frame = data[columns]
    keep = frame.notna().all(axis=1).to_numpy()
    if not keep.all():
        frame = frame[keep]
    if frame.empty:
        raise ValueError("no rows left once rows with missing values are dropped")
    return frame


def _numeric(s: pd.Series, name: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
        return s.to_numpy(dtype=float)
    raise ValueError(f"column {name!r} must be numeric (it holds {s.dtype} values)")


def design_matrix(
    data: pd.DataFrame,
    outcome: str,
    treatment: str,
    covariates: Sequence[str],
    cluster: str | None,
    blocks: str | None,
    arms: Sequence[Any] | None,
) -> Design:
    if isinstance(covariates, str):
        covariates = [covariates]
    used = list(
        dict.fromkeys([outcome, treatment, *covariates, *(c for c in (cluster, blocks) if c)])
    )
    frame = _complete_rows(data, used)
    y = _numeric(frame[outcome], outcome)
    d, control, treated = _treatment_indicator(frame[treatment], treatment, arms)
    cols = [np.ones(len(frame)), d]
    names = ["(Intercept)", treatment]
    for cov in covariates:
        s = frame[cov]
        if _is_categorical(s):
            c, nm = _dummies(s, cov)
            cols += c
            names += nm
        else:
            cols.append(_numeric(s, cov))
            names.append(cov)
    block_series = None
    if blocks:
        block_series = frame[blocks]
        c, nm = _dummies(block_series, blocks)
        cols += c
        names += nm
    codes = n_clusters = None
    if cluster:
        codes, n_clusters = _cluster_codes(frame[cluster].to_numpy())
    X = np.column_stack(cols)
    return Design(y, X, names, codes, n_clusters, block_series, control, treated)


def check_rank(X: np.ndarray, names: Sequence[str], rows: str) -> tuple[np.ndarray, np.ndarray]:
    """Refuse a design whose columns cannot all be estimated, naming them; returns the QR
    factors so a caller that fits by QR need not factor twice."""
    n, k = X.shape
    if n <= k:
        raise ValueError(f"{n} {rows} cannot identify {k} coefficients")
    Q, R = np.linalg.qr(X)
    norms = np.linalg.norm(X, axis=0)
    diag = np.abs(np.diag(R))
    bad = [names[j] for j in range(k) if diag[j] <= COLLINEAR_TOL * max(norms[j], 1e-300)]
    if bad:
        raise ValueError(
            f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} constant or collinear with "
            f"the terms before it in the {rows}; drop it from the model"
        )
    return Q, R


def _ols(y: np.ndarray, X: np.ndarray, names: Sequence[str]):
    """OLS by Householder QR; returns beta, residuals, M = (X'X)^-1 and the basis (Q, L)."""
    k = X.shape[1]
    Q, R = check_rank(X, names, "rows used")
    L = linalg.solve_triangular(R, np.eye(k))
    gamma = Q.T @ y
    beta = L @ gamma
    resid = y - Q @ gamma
    return beta, resid, L @ L.T, (Q, L)


def _table(
    names: Sequence[str], beta: np.ndarray, V: np.ndarray, df: np.ndarray, alpha: float
) -> pd.DataFrame:
    se = np.sqrt(np.clip(np.diag(V), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = beta / se
    p = 2.0 * stats.t.sf(np.abs(t), df)
    q = stats.t.ppf(1.0 - alpha / 2.0, df)
    return pd.DataFrame(
        {
            "estimate": beta,
            "std_error": se,
            "df": df,
            "p_value": p,
            "conf_low": beta - q * se,
            "conf_high": beta + q * se,
        },
        index=pd.Index(list(names), name="term"),
    )


def check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")


def estimate_effect(
    data: pd.DataFrame,
    outcome: str,
    treatment: str,
    covariates: Sequence[str] = (),
    cluster: str | None = None,
    blocks: str | None = None,
    se: str = "auto",
    alpha: float = 0.05,
    arms: Sequence[str] | None = None,
) -> Effect:
    """OLS effect of treatment on outcome, adjusting for covariates (and block dummies).

    se: "auto" (HC2, or CR2 with a cluster), "hc2", "hc1", "cr2" or "cr1"; hc1/cr1 are
    estimatr's se_type="stata". Categorical covariates (text, category, boolean) get dummies
    with the first level (sorted, or the Categorical's order) as reference. The treatment
    may be 0/1, boolean, or two arm names (the comparison arm is arms[0], else the first in
    sorted order); the term keeps the treatment column's name. Rows with a missing value in
    any column used are dropped and ``n`` counts the rows used.
    """
    check_alpha(alpha)
    kind = str(se).lower()
    if kind not in SE_TYPES:
        raise ValueError(f"se must be one of {', '.join(SE_TYPES)}; got {se!r}")
    if kind == "auto":
        kind = "cr2" if cluster else "hc2"
    if kind in ("cr2", "cr1") and not cluster:
        raise ValueError(
            f"se={kind!r} is a cluster-robust error and needs cluster=: name the column of the "
            "unit of randomisation (for example cluster='place')"
        )
    if kind in ("hc2", "hc1") and cluster:
        raise ValueError(
            f"se={kind!r} ignores clustering but cluster={cluster!r} was given; use se='cr2' "
            "(or 'cr1') for a clustered design"
        )
    design = design_matrix(data, outcome, treatment, covariates, cluster, blocks, arms)
    if design.n_clusters is not None and design.n_clusters < 2:
        raise ValueError(f"cluster {cluster!r} has one cluster only in the rows used; need two")
    beta, resid, M, basis = _ols(design.y, design.X, design.names)
    estimator = ESTIMATORS[kind]()
    V, df = estimator.cov(design.X, resid, M, design.clusters, basis=basis)
    table = _table(design.names, beta, V, df, alpha)
    row = table.loc[treatment]
    if not (np.isfinite(row["std_error"]) and row["std_error"] > 0):
        raise ValueError(
            "the effect has no standard error on these data: the outcome does not vary "
            "within the arms (everyone analysed has the same value, or the model fits "
            "every person exactly)"
        )
    return Effect(
        term=treatment,
        estimate=float(row["estimate"]),
        std_error=float(row["std_error"]),
        df=float(row["df"]),
        p_value=float(row["p_value"]),
        conf_low=float(row["conf_low"]),
        conf_high=float(row["conf_high"]),
        se_type=estimator.name,
        n=len(design.y),
        clusters=design.n_clusters,
        alpha=alpha,
        coefficients=table,
        control=design.control,
        treated=design.treated,
    )


# ---------------------------------------------------------------------------------------
# Difference in means


def _neyman(y: np.ndarray, d: np.ndarray) -> tuple[float, float, float, int]:
    """Difference, its Neyman SE and Welch-Satterthwaite df within one group of units."""
    y1, y0 = y[d == 1], y[d == 0]
    n1, n0 = len(y1), len(y0)
    diff = float(y1.mean() - y0.mean())
    if n1 < 2 or n0 < 2:
        return diff, float("nan"), float("nan"), n1 + n0
    v1, v0 = y1.var(ddof=1) / n1, y0.var(ddof=1) / n0
    se = math.sqrt(v1 + v0)
    df = se**4 / (v1**2 / (n1 - 1) + v0**2 / (n0 - 1))
    return diff, se, df, n1 + n0


def difference_in_means(
    data: pd.DataFrame,
    outcome: str,
    treatment: str,
    blocks: str | None = None,
    alpha: float = 0.05,
    arms: Sequence[str] | None = None,
) -> Effect:
    """estimatr's difference_in_means: the design-based estimate with its SE and df.

    Without blocks: Neyman SE with Welch-Satterthwaite df (design "Standard"). With blocks:
    block differences weighted by block size, SE from the block variances, df = N - 2B
    ("Blocked"); when every block has two units, or some have two and others more, the
    matched-pair variance with df = B - 1 ("Matched-pair", with a warning for the mixed case,
    as estimatr). se_type reports estimatr's design label.
    """
    check_alpha(alpha)
    frame = _complete_rows(
        data, list(dict.fromkeys([outcome, treatment, *([blocks] if blocks else [])]))
    )
    y = _numeric(frame[outcome], outcome)
    d, control, treated = _treatment_indicator(frame[treatment], treatment, arms)
    n = len(y)
    if blocks is None:
        if min(d.sum(), n - d.sum()) < 2:
            raise ValueError("each arm needs at least two units for a standard error")
        est, se, df, _ = _neyman(y, d)
        design = "Standard"
    else:
        codes, n_blocks = _cluster_codes(frame[blocks].to_numpy())
        sizes = np.bincount(codes, minlength=n_blocks)
        if (sizes == 1).any():
            raise ValueError(f"every block of {blocks!r} must have at least two units")
        pair_matched = bool((sizes == 2).any())
        if pair_matched and (sizes > 2).any():
            warnings.warn(
                "some blocks have two units and others more; as within-block variances cannot "
                "be estimated in blocks of two, the matched-pair variance is used",
                UserWarning,
                stacklevel=2,
            )
        diffs, ses, counts = np.empty(n_blocks), np.empty(n_blocks), np.empty(n_blocks)
        for b in range(n_blocks):
            mask = codes == b
            db = d[mask]
            n1 = int(db.sum())
            if n1 == 0 or n1 == len(db):
                raise ValueError("every block must have units in both arms")
            if not pair_matched and (n1 == 1 or len(db) - n1 == 1):
                raise ValueError(
                    "every block must have at least two units in each arm (or be a pair)"
                )
            diffs[b], ses[b], _, counts[b] = _neyman(y[mask], db)
        weights = counts / n
        est = float(np.sum(weights * diffs))
        if pair_matched:
            se = math.sqrt(np.sum((diffs - est) ** 2) / (n_blocks * (n_blocks - 1)))
            df = float(n_blocks - 1)
            design = "Matched-pair"
        else:
            se = math.sqrt(np.sum(ses**2 * weights**2))
            df = float(n - 2 * n_blocks)
            design = "Blocked"
    table = _table([treatment], np.array([est]), np.array([[se**2]]), np.array([df]), alpha)
    row = table.iloc[0]
    return Effect(
        term=treatment,
        estimate=est,
        std_error=float(row["std_error"]),
        df=float(df),
        p_value=float(row["p_value"]),
        conf_low=float(row["conf_low"]),
        conf_high=float(row["conf_high"]),
        se_type=design,
        n=n,
        clusters=None,
        alpha=alpha,
        coefficients=table,
        control=control,
        treated=treated,
    )
