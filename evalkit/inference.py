"""Inference that does not lean on large-sample theory: randomisation tests and the wild
cluster bootstrap.

With 6-24 places, the randomisation itself is the most defensible basis for a p-value: under
the sharp null of no effect for anyone, the outcome would have been the same under every
assignment the design could have drawn. randomisation_test computes the OLS treatment
coefficient (or its t statistic) for every candidate assignment at once by Frisch-Waugh, and
complete_within_blocks makes those assignments the way the design drew them (complete
randomisation of places or people within blocks), enumerating them all when there are few.

wild_cluster_bootstrap is the restricted wild cluster bootstrap (WCR) of Cameron, Gelbach and
Miller with Webb weights for few clusters (Webb 2014; Roodman et al. 2019's boottest): every
quantity it needs per draw is a sum over clusters, so the 9,999 draws cost G-vectors, not
refits, and the confidence interval inverts the test reusing the same draws.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .estimators import _cluster_codes, cr2_parts

__all__ = [
    "RandomisationTest",
    "WildBootstrap",
    "complete_within_blocks",
    "complete_within_blocks_chunks",
    "randomisation_test",
    "wild_cluster_bootstrap",
]

#: |T*| counts as at least as extreme as |T| when |T*| >= |T| (1 - TIE_TOL): ties that only
#: differ by rounding (the same assignment recomputed) are ties.
TIE_TOL = 1e-12

#: Float64 elements per working chunk (about 32 MB): bounds memory for any number of draws.
_CHUNK_ELEMENTS = 4_000_000

WEBB = np.array([-math.sqrt(1.5), -1.0, -math.sqrt(0.5), math.sqrt(0.5), 1.0, math.sqrt(1.5)])


@dataclass(frozen=True)
class RandomisationTest:
    """p-value of the sharp null from the distribution of the statistic over assignments."""

    p_value: float
    observed: float
    null: np.ndarray
    draws: int
    exact: bool
    statistic: str


@dataclass(frozen=True)
class WildBootstrap:
    """Wild cluster bootstrap p-value for coefficient = 0 and the interval from inverting it."""

    p_value: float
    conf_low: float
    conf_high: float
    draws: int
    weights: str


# ---------------------------------------------------------------------------------------
# Randomisation inference


def _two_sided_p(null: np.ndarray, observed: float) -> float:
    """ri2's two-tailed p: the share of draws with |T*| >= |T| (observed not added)."""
    if null.size == 0:
        raise ValueError("no assignments were given")
    return float(np.mean(np.abs(null) >= abs(observed) * (1.0 - TIE_TOL)))


def _chunks(assignments: Iterable[np.ndarray] | np.ndarray, n: int) -> Iterator[np.ndarray]:
    """Yield (b, n) blocks of candidate assignments, whatever form they came in."""
    if isinstance(assignments, np.ndarray):
        assignments = [assignments]
    for block in assignments:
        block = np.asarray(block)
        if block.ndim == 1:
            block = block[None, :]
        if block.ndim != 2 or block.shape[1] != n:
            raise ValueError(
                f"each assignment must have one value per unit ({n}); got {block.shape}"
            )
        step = max(1, _CHUNK_ELEMENTS // max(n, 1))
        for start in range(0, block.shape[0], step):
            yield block[start : start + step]


class _FrischWaugh:
    """The treatment coefficient (and its t) for many candidate assignments at once.

    With Q_z an orthonormal basis of the other regressors and y~ = y residualised on them,
    beta(D) = D.y~ / (D.D - |Q_z'D|^2): two matrix products per chunk of candidates.
    """

    def __init__(self, y, X_other, cluster, statistic: str):
        y = np.asarray(y, dtype=float)
        n = y.shape[0]
        Z = np.ones((n, 1)) if X_other is None else np.asarray(X_other, dtype=float)
        if Z.ndim == 1:
            Z = Z[:, None]
        if Z.shape[0] != n:
            raise ValueError(f"X_other has {Z.shape[0]} rows but y has {n}")
        Qz, Rz = np.linalg.qr(Z)
        if np.any(np.abs(np.diag(Rz)) <= 1e-10 * np.maximum(np.linalg.norm(Z, axis=0), 1e-300)):
            raise ValueError("X_other has constant-zero or collinear columns")
        self.n, self.p = n, Z.shape[1]
        self.statistic = statistic
        self.Qz = Qz
        self.ytil = y - Qz @ (Qz.T @ y)
        self.basis = np.column_stack([self.ytil, Qz])
        self.codes = None
        if statistic == "t" and cluster is None:
            self.hz = np.einsum("ij,ij->i", Qz, Qz)
        elif statistic == "t":
            codes, G = _cluster_codes(np.asarray(cluster))
            if codes.shape[0] != n:
                raise ValueError(f"cluster has {codes.shape[0]} values but y has {n}")
            order = np.argsort(codes, kind="stable")
            self.order = order
            self.starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
            self.G = G
            Qs, ys = Qz[order], self.ytil[order]
            self.Qs, self.ys = Qs, ys
            self.Wz = np.stack(
                [
                    np.add.reduceat(Qs[:, a][:, None] * Qs, self.starts, axis=0)
                    for a in range(self.p)
                ],
                axis=1,
            )  # (G, p, p)
            self.Zy = np.add.reduceat(Qs * ys[:, None], self.starts, axis=0)  # (G, p)
            self.codes = codes

    def __call__(self, D: np.ndarray) -> np.ndarray:
        D = np.asarray(D, dtype=float)
        prod = D @ self.basis  # (b, 1 + p)
        Dy, DQ = prod[:, 0], prod[:, 1:]
        ss = np.einsum("ij,ij->i", D, D) - np.einsum("ij,ij->i", DQ, DQ)
        if np.any(ss <= 1e-12 * max(1.0, self.n)):
            raise ValueError("an assignment is constant or collinear with X_other")
        beta = Dy / ss
        if self.statistic == "estimate":
            return beta
        Dt = D - DQ @ self.Qz.T  # residualised candidates (b, n)
        if self.codes is None:
            e = self.ytil[None, :] - beta[:, None] * Dt
            h = self.hz[None, :] + Dt**2 / ss[:, None]
            one_minus = 1.0 - h
            omega = np.where(one_minus > 1e-10, e**2 / np.where(one_minus > 0, one_minus, 1), 0)
            var = np.einsum("ij,ij->i", Dt**2, omega) / ss**2
            return beta / np.sqrt(var)
        return self._cr2_t(Dt, ss, beta)

    def _cr2_t(self, Dt: np.ndarray, ss: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """CR2 t for the treatment: the basis is [Q_z, q] with q = D~ / |D~|."""
        b, p, G = Dt.shape[0], self.p, self.G
        q = (Dt / np.sqrt(ss)[:, None])[:, self.order]
        Qs, ys = self.Qs, self.ys
        gamma = beta * np.sqrt(ss)
        c = np.stack(
            [np.add.reduceat(q * Qs[:, a][None, :], self.starts, axis=1) for a in range(p)], axis=2
        )  # (b, G, p): Q_zg' q_g
        m = np.add.reduceat(q * q, self.starts, axis=1)  # (b, G)
        qy = np.add.reduceat(q * ys[None, :], self.starts, axis=1)  # (b, G)
        W = np.empty((b, G, p + 1, p + 1))
        W[:, :, :p, :p] = self.Wz[None]
        W[:, :, :p, p] = c
        W[:, :, p, :p] = c
        W[:, :, p, p] = m
        t = np.empty((b, G, p + 1))
        t[:, :, :p] = self.Zy[None] - gamma[:, None, None] * c
        t[:, :, p] = qy - gamma[:, None] * m
        _, u = cr2_parts(W, t)
        var = np.sum(u[:, :, p] ** 2, axis=1)
        return gamma / np.sqrt(var)

    def chunk_rows(self) -> int:
        if self.codes is None:
            return max(1, _CHUNK_ELEMENTS // max(self.n, 1))
        per = max(self.n, self.G * (self.p + 1) ** 2 * 8)
        return max(1, _CHUNK_ELEMENTS // per)


def randomisation_test(
    y: np.ndarray,
    X_other: np.ndarray | None,
    treatment: np.ndarray,
    assignments: Iterable[np.ndarray] | np.ndarray,
    statistic: str = "estimate",
    exact: bool = False,
    cluster: np.ndarray | None = None,
) -> RandomisationTest:
    """Randomisation test of the sharp null of no effect for anyone.

    The statistic is the OLS coefficient on the treatment adjusting for X_other (which must
    include the intercept), or with statistic="t" that coefficient over its CR2 (when cluster
    is given) or HC2 standard error. assignments are candidate treatment vectors (0/1, one
    per unit): a (B, n) array or an iterable of such chunks, as complete_within_blocks makes
    them. The two-sided p-value follows R's ri2: the share of the given assignments whose
    |statistic| is at least the observed one (ties within a relative 1e-12), without adding
    the observed assignment. Under an exact enumeration (exact=True) the observed assignment
    is among them, so p >= 1/B; with sampled draws p can be 0 and is best read as < 1/B.
    """
    if statistic not in ("estimate", "t"):
        raise ValueError(f"statistic must be 'estimate' or 't', got {statistic!r}")
    treatment = np.asarray(treatment, dtype=float)
    fw = _FrischWaugh(y, X_other, cluster, statistic)
    if treatment.shape != (fw.n,):
        raise ValueError(f"treatment must have one value per unit ({fw.n})")
    observed = float(fw(treatment[None, :])[0])
    step = fw.chunk_rows()
    parts = []
    for chunk in _chunks(assignments, fw.n):
        for start in range(0, chunk.shape[0], step):
            parts.append(fw(chunk[start : start + step]))
    null = np.concatenate(parts) if parts else np.empty(0)
    return RandomisationTest(
        p_value=_two_sided_p(null, observed),
        observed=observed,
        null=null,
        draws=int(null.size),
        exact=bool(exact),
        statistic=statistic,
    )


def _units(treatment, blocks, clusters):
    """Collapse to units of randomisation: their treatment, block code and the unit map."""
    t = np.asarray(treatment)
    n = t.shape[0]
    if not np.isin(t, (0, 1)).all():
        raise ValueError("treatment must be 0/1")
    t = t.astype(np.int8)
    if clusters is None:
        codes, G = np.arange(n), n
    else:
        codes, G = _cluster_codes(np.asarray(clusters))
    counts = np.bincount(codes, minlength=G)
    share = np.bincount(codes, weights=t, minlength=G) / counts
    if not np.isin(share, (0.0, 1.0)).all():
        raise ValueError("treatment must be the same for every member of a cluster")
    unit_t = share.astype(np.int8)
    if blocks is None:
        unit_block = np.zeros(G, dtype=np.intp)
    else:
        bcodes, _ = _cluster_codes(np.asarray(blocks))
        lo = np.full(G, np.iinfo(np.intp).max)
        hi = np.full(G, -1)
        np.minimum.at(lo, codes, bcodes)
        np.maximum.at(hi, codes, bcodes)
        if (lo != hi).any():
            raise ValueError("each cluster must lie within one block")
        unit_block = lo
    return unit_t, unit_block, codes, clusters is not None


def _sample_block(m: int, k: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """rows uniform draws of k treated among m, as int8; rows with a tie at the k-th key are
    drawn again, so every subset is equally likely."""
    if k == 0 or k == m:
        return np.full((rows, m), 1 if k == m else 0, dtype=np.int8)
    keys = rng.random((rows, m), dtype=np.float32)
    pick = keys <= np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
    redo = np.flatnonzero(pick.sum(axis=1) != k)
    if redo.size:
        pick[redo] = _sample_block(m, k, redo.size, rng).view(bool)
    return pick.view(np.int8)


def complete_within_blocks(
    treatment: np.ndarray,
    blocks: np.ndarray | None,
    clusters: np.ndarray | None,
    draws: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, bool]:
    """Assignments as the design drew them: complete randomisation within blocks, by cluster.

    The number treated in each block is the observed one, and all members of a cluster share
    their cluster's draw. When the design has at most ``draws`` distinct assignments they are
    all enumerated (exact=True; 8 places with 4 treated give 70), else ``draws`` are sampled
    uniformly with replacement (exact=False). Returns a (B, n) int8 array: 10,000 draws of
    14,000 people take 140 MB; :func:`complete_within_blocks_chunks` gives the same draws
    a chunk at a time.
    """
    chunks, exact = complete_within_blocks_chunks(treatment, blocks, clusters, draws, rng)
    return np.concatenate(list(chunks)), exact


def complete_within_blocks_chunks(
    treatment: np.ndarray,
    blocks: np.ndarray | None,
    clusters: np.ndarray | None,
    draws: int,
    rng: np.random.Generator,
) -> tuple[Iterator[np.ndarray], bool]:
    """The assignments of :func:`complete_within_blocks`, identical for the same generator,
    as an iterator of (b, n) int8 chunks of about 4 million values each, and whether they
    are an exact enumeration; randomisation_test takes the iterator as it is, so memory
    stays a chunk x n whatever the number of draws. The draws are made (and ``rng`` used)
    as the iterator is read."""
    if draws < 1:
        raise ValueError("draws must be at least 1")
    unit_t, unit_block, codes, clustered = _units(treatment, blocks, clusters)
    G = unit_t.size
    members = [np.flatnonzero(unit_block == b) for b in np.unique(unit_block)]
    treated = [int(unit_t[idx].sum()) for idx in members]
    total = math.prod(math.comb(len(idx), k) for idx, k in zip(members, treated, strict=True))
    exact = total <= draws
    step = max(1, _CHUNK_ELEMENTS // max(G, 1))

    def listed() -> Iterator[np.ndarray]:
        options = []
        for idx, k in zip(members, treated, strict=True):
            combos = list(itertools.combinations(range(len(idx)), k))
            opt = np.zeros((len(combos), len(idx)), dtype=np.int8)
            for r, combo in enumerate(combos):
                opt[r, list(combo)] = 1
            options.append(opt)
        unit = np.empty((total, G), dtype=np.int8)
        stride = total
        rows = np.arange(total)
        for idx, opt in zip(members, options, strict=True):
            stride //= opt.shape[0]
            unit[:, idx] = opt[(rows // stride) % opt.shape[0]]
        for start in range(0, total, step):
            yield unit[start : start + step]

    def sampled() -> Iterator[np.ndarray]:
        for start in range(0, draws, step):
            stop = min(draws, start + step)
            unit = np.empty((stop - start, G), dtype=np.int8)
            for idx, k in zip(members, treated, strict=True):
                unit[:, idx] = _sample_block(len(idx), k, stop - start, rng)
            yield unit

    def by_person(units: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        rows = max(1, _CHUNK_ELEMENTS // max(codes.size, 1))
        for unit in units:
            for start in range(0, unit.shape[0], rows):
                yield unit[start : start + rows][:, codes]

    units = listed() if exact else sampled()
    return (by_person(units) if clustered else units), exact


# ---------------------------------------------------------------------------------------
# Wild cluster bootstrap


def _weights(kind: str, G: int, draws: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    if kind == "auto":
        kind = "webb" if G < 12 else "rademacher"
    if kind == "rademacher":
        if draws >= 2**G:
            # All 2^G sign patterns: the bootstrap distribution exactly (as boottest does).
            grid = np.array(list(itertools.product((-1.0, 1.0), repeat=G)))
            return grid, kind
        return rng.integers(0, 2, size=(draws, G)).astype(float) * 2.0 - 1.0, kind
    if kind == "webb":
        return WEBB[rng.integers(0, 6, size=(draws, G))], kind
    raise ValueError(f"weights must be 'auto', 'rademacher' or 'webb', got {kind!r}")


def wild_cluster_bootstrap(
    y: np.ndarray,
    X: np.ndarray,
    cluster: np.ndarray,
    term: int,
    draws: int = 9999,
    *,
    rng: np.random.Generator,
    alpha: float = 0.05,
    weights: str = "auto",
) -> WildBootstrap:
    """Restricted wild cluster bootstrap (WCR) test of coefficient ``term`` = 0, and its interval.

    The bootstrap imposes the null, draws one weight per cluster (Rademacher; Webb's six-point
    weights when fewer than 12 clusters with weights="auto"; all 2^G Rademacher patterns when
    that is no more than ``draws``), and compares |t*| with |t|, t using the CR1 standard
    error (as wildboottest and boottest). The interval collects the beta_0 whose p-value
    exceeds alpha, found by bisection on p(beta_0) with the same weight draws for every beta_0;
    an end is infinite when no finite beta_0 is rejected (possible with very few clusters).

    Why it is fast: with a the row of (X'X)^-1 X' for the term and u~(beta_0) the restricted
    residuals, which are linear in beta_0, each draw's numerator is v.s and its cluster
    scores are C v with s_g = a_g'u~_g and C = diag(s) - (X_g'a_g)' M (X_h'u~_h); both are
    linear in beta_0, so p(beta_0) for any beta_0 costs O(draws) after two (draws x G)
    products.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    n, k = X.shape
    if not 0 <= term < k:
        raise ValueError(f"term must index a column of X (0..{k - 1}), got {term}")
    codes, G = _cluster_codes(np.asarray(cluster))
    if G < 2:
        raise ValueError("the wild cluster bootstrap needs at least two clusters")
    Q, R = np.linalg.qr(X)
    if np.any(np.abs(np.diag(R)) <= 1e-10 * np.maximum(np.linalg.norm(X, axis=0), 1e-300)):
        raise ValueError("X has constant-zero or collinear columns")
    L = np.linalg.inv(R)
    M = L @ L.T
    a = Q @ L[term]  # row `term` of (X'X)^-1 X'
    beta = float(a @ y)
    resid = y - Q @ (Q.T @ y)
    scale = G / (G - 1) * (n - 1) / (n - k)

    def sums(v: np.ndarray) -> np.ndarray:
        return np.bincount(codes, weights=v, minlength=G)

    se = math.sqrt(scale * np.sum(sums(a * resid) ** 2))
    others = [j for j in range(k) if j != term]
    Qr = np.linalg.qr(X[:, others])[0] if others else np.zeros((n, 0))
    x = X[:, term]
    u_y = y - Qr @ (Qr.T @ y)  # restricted residuals are u_y - beta_0 u_x
    u_x = x - Qr @ (Qr.T @ x)
    aX = np.column_stack([sums(a * X[:, j]) for j in range(k)])  # (G, k): X_g'a_g
    s_y, s_x = sums(a * u_y), sums(a * u_x)
    Xu_y = np.column_stack([sums(X[:, j] * u_y) for j in range(k)])
    Xu_x = np.column_stack([sums(X[:, j] * u_x) for j in range(k)])
    C_y = np.diag(s_y) - aX @ M @ Xu_y.T
    C_x = np.diag(s_x) - aX @ M @ Xu_x.T
    V, kind = _weights(weights, G, draws, rng)
    num_y, num_x = V @ s_y, V @ s_x
    P, Rm = V @ C_y.T, V @ C_x.T
    pp = np.einsum("ij,ij->i", P, P)
    pr = np.einsum("ij,ij->i", P, Rm)
    rr = np.einsum("ij,ij->i", Rm, Rm)

    def p_value(beta0: float) -> float:
        t_obs = (beta - beta0) / se
        var = scale * (pp - 2.0 * beta0 * pr + beta0 * beta0 * rr)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_star = (num_y - beta0 * num_x) / np.sqrt(np.clip(var, 0.0, None))
        return float(np.mean(np.abs(t_star) >= abs(t_obs) * (1.0 - TIE_TOL)))

    def bound(direction: float) -> float:
        step = se * max(1.0, float(stats.t.ppf(1.0 - alpha / 2.0, G - 1)))
        inside, outside = beta, beta + direction * step
        for _ in range(60):
            if p_value(outside) <= alpha:
                break
            inside, outside = outside, beta + (outside - beta) * 2.0
        else:
            return direction * math.inf
        for _ in range(200):
            mid = 0.5 * (inside + outside)
            if mid in (inside, outside):
                break
            if p_value(mid) > alpha:
                inside = mid
            else:
                outside = mid
        return inside

    return WildBootstrap(
        p_value=p_value(0.0),
        conf_low=bound(-1.0),
        conf_high=bound(1.0),
        draws=int(V.shape[0]),
        weights=kind,
    )
