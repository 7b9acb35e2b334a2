"""Assignment procedures: one pure function per design, in the manner of R's randomizr.

Every function takes its randomness from the generator or :class:`RngFactory` passed in
and nothing else (no clock, no global state, no I/O), so a pilot's whole allocation can be
replayed from its seed. Each result also carries the probability of every arm for every
unit, because honest small-sample analysis (inverse-probability weights, randomisation
inference) needs the design's probabilities, not just the arms that came out.

Arms come as ``arms`` (names) and ``ratios`` (positive weights); the first arm is the
control.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from evalkit.randomness import RngFactory

SIZE_CHUNK = 1024
"""Block sizes are drawn this many at a time, always from the start of the stream."""

_TIE = 1e-9
"""Scores this close (relative) are treated as tied: summation order must not break ties."""


@dataclass(frozen=True)
class Draw:
    """One unit allocated on its own, with what the design gave it a chance of."""

    arm: str
    probabilities: dict[str, float]
    exact: bool
    detail: dict[str, Any]


@dataclass(frozen=True)
class Assignment:
    """A batch of units (people or places) allocated together."""

    arms: list[str]
    probabilities: np.ndarray
    arm_names: list[str]
    exact: bool
    method: str
    groups: list[str | None]
    extra: dict[str, Any]


# --- shared checks and helpers --------------------------------------------------------


def _check_arms(arms: Sequence[str], ratios: Sequence[float]) -> np.ndarray:
    """Shares p_k = ratio_k / sum(ratios), after refusing anything a protocol could not mean."""
    names = list(arms)
    if len(names) < 2:
        raise ValueError(f"a randomised design needs at least two arms, got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be distinct, got {names}")
    if len(ratios) != len(names):
        raise ValueError(f"{len(names)} arms but {len(ratios)} ratios: give one ratio per arm")
    r = np.asarray(ratios, dtype=float)
    for name, value in zip(names, r, strict=True):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"ratio {value:g} for arm {name!r} is not positive")
    return r / r.sum()


def _check_places(places: Sequence[str]) -> list[str]:
    names = list(places)
    if not names:
        raise ValueError("no places to randomise")
    if len(set(names)) != len(names):
        repeated = sorted({p for p in names if names.count(p) > 1})
        raise ValueError(f"each place must appear once; repeated: {repeated}")
    return names


def _rows(shares: np.ndarray, n: int) -> np.ndarray:
    return np.tile(np.asarray(shares, dtype=float), (n, 1))


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=float)
    a.setflags(write=False)
    return a


def _complete_counts(n: int, ratios: Sequence[float], u: float) -> list[int]:
    """floor(n p_k) each, the remainder by systematic sampling from random start ``u``.

    Exact rational arithmetic, so the fractional parts sum to the remainder exactly and
    arm k gets its extra unit with probability equal to its fractional part: that is what
    makes every unit's marginal exactly p_k.
    """
    fr = [Fraction(float(x)) for x in ratios]
    total = sum(fr)
    expected = [Fraction(n) * x / total for x in fr]
    floors = [math.floor(e) for e in expected]
    start = Fraction(u)
    counts, upper, below_prev = [], Fraction(0), 0
    remainder = n - sum(floors)
    for e, f in zip(expected, floors, strict=True):
        upper += e - f
        below = min(max(math.ceil(upper - start), 0), remainder)
        counts.append(f + below - below_prev)
        below_prev = below
    return counts


def _complete_labels(n: int, ratios: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Arm indexes for ``n`` units: the random start first, then one permutation."""
    counts = _complete_counts(n, ratios, float(rng.random()))
    return rng.permutation(np.repeat(np.arange(len(counts)), counts))


def _possible_counts(n: int, ratios: Sequence[float]) -> list[tuple[int, ...]]:
    """Every count vector the complete rule can produce (one per stretch of random starts)."""
    fr = [Fraction(float(x)) for x in ratios]
    total = sum(fr)
    cuts = {Fraction(0)}
    acc = Fraction(0)
    for x in fr:
        e = Fraction(n) * x / total
        acc += e - math.floor(e)
        cuts.add(acc - math.floor(acc))
    edges = [*sorted(cuts), Fraction(1)]
    found = []
    for lo, hi in itertools.pairwise(edges):
        c = tuple(_complete_counts(n, ratios, float((lo + hi) / 2)))
        if c not in found:
            found.append(c)
    return found


def _standardise(covariates: np.ndarray, n: int) -> np.ndarray:
    """Columns to mean 0, SD 1 over the places, so no covariate dominates by its units.

    The SD is that of the places themselves (ddof=0): they are the whole population
    randomised. Constant columns carry no information about balance and are dropped.
    """
    x = np.asarray(covariates, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"covariates need one row per place ({n}), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("covariates contain missing or infinite values")
    sd = x.std(axis=0)
    keep = sd > 1e-12 * np.maximum(1.0, np.abs(x).max(axis=0))
    return (x[:, keep] - x[:, keep].mean(axis=0)) / sd[keep]


def _assignment(
    labels: np.ndarray,
    names: list[str],
    probabilities: np.ndarray,
    method: str,
    groups: Sequence[str | None] | None = None,
    extra: dict[str, Any] | None = None,
    exact: bool = True,
) -> Assignment:
    n = len(labels)
    return Assignment(
        arms=[names[int(k)] for k in labels],
        probabilities=_frozen(probabilities),
        arm_names=list(names),
        exact=exact,
        method=method,
        groups=list(groups) if groups is not None else [None] * n,
        extra=extra or {},
    )


# --- individual designs ---------------------------------------------------------------


def simple(
    n: int, arms: Sequence[str], ratios: Sequence[float], rng: np.random.Generator
) -> Assignment:
    """Independent draws: group sizes vary, but no unit's arm tells anything about another's."""
    shares = _check_arms(arms, ratios)
    if n < 0:
        raise ValueError(f"n must be zero or more, got {n}")
    labels = rng.choice(len(shares), size=n, p=shares)
    return _assignment(labels, list(arms), _rows(shares, n), "simple")


def complete(
    n: int, arms: Sequence[str], ratios: Sequence[float], rng: np.random.Generator
) -> Assignment:
    """Fixed group sizes (within one of n p_k) with every unit's chance still exactly p_k.

    extra["counts"]: units per arm.
    """
    shares = _check_arms(arms, ratios)
    if n < 0:
        raise ValueError(f"n must be zero or more, got {n}")
    labels = _complete_labels(n, ratios, rng)
    counts = np.bincount(labels, minlength=len(shares))
    extra = {"counts": {a: int(c) for a, c in zip(arms, counts, strict=True)}}
    return _assignment(labels, list(arms), _rows(shares, n), "complete", extra=extra)


# --- stratified permuted blocks -------------------------------------------------------


def _block_base(
    arms: Sequence[str], ratios: Sequence[float], block_sizes: Sequence[int]
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Shares, and each block size's sorted list of arm indexes (checked to be whole)."""
    shares = _check_arms(arms, ratios)
    if not all(float(r).is_integer() for r in ratios):
        raise ValueError(
            f"blocks need whole-number ratios (such as 2 and 1, not 1 and 0.5), got {list(ratios)}"
        )
    whole = [int(r) for r in ratios]
    total = sum(whole)
    if len(block_sizes) == 0:
        raise ValueError("no block sizes given")
    bases = {}
    for b in block_sizes:
        if isinstance(b, bool) or not float(b).is_integer() or b <= 0 or int(b) % total:
            raise ValueError(
                f"block size {b} is not a positive multiple of the ratio total {total}"
            )
        b = int(b)
        bases[b] = np.repeat(np.arange(len(whole)), [b * r // total for r in whole])
    return shares, bases


def _block_ends(
    stratum: str, last_position: int, block_sizes: Sequence[int], rngs: RngFactory
) -> tuple[np.ndarray, np.ndarray]:
    """Sizes and cumulative ends of the stratum's blocks, far enough to cover a position.

    The sizes come in whole chunks from the start of one stream, so the k-th block size
    never depends on how far anyone has looked before.
    """
    choices = np.asarray([int(b) for b in block_sizes], dtype=np.int64)
    gen = rngs(f"blocked/{stratum}/sizes")
    sizes = np.empty(0, dtype=np.int64)
    ends = np.empty(0, dtype=np.int64)
    while ends.size == 0 or ends[-1] <= last_position:
        sizes = np.concatenate([sizes, choices[gen.integers(0, choices.size, size=SIZE_CHUNK)]])
        ends = np.cumsum(sizes)
    return sizes, ends


def _block_order(stratum: str, k: int, base: np.ndarray, rngs: RngFactory) -> np.ndarray:
    return rngs(f"blocked/{stratum}/block/{k}").permutation(base)


def blocked_next(
    stratum: str,
    position: int,
    arms: Sequence[str],
    ratios: Sequence[float],
    block_sizes: Sequence[int],
    rngs: RngFactory,
) -> Draw:
    """Allocate the unit at ``position`` (0-based, within its stratum) as referrals arrive.

    Random block sizes keep staff from predicting the last arms of a block. Blocks are
    numbered from 0 in ``detail["block"]`` and in their stream names.
    """
    if position < 0:
        raise ValueError(f"position must be zero or more, got {position}")
    return blocked_run(stratum, position, 1, arms, ratios, block_sizes, rngs)[0]


def blocked_run(
    stratum: str,
    start: int,
    count: int,
    arms: Sequence[str],
    ratios: Sequence[float],
    block_sizes: Sequence[int],
    rngs: RngFactory,
) -> list[Draw]:
    """The draws ``blocked_next`` gives positions ``start`` .. ``start + count - 1`` of one
    stratum, making each block's order once: a list arriving together (a batch) continues
    the stratum's sequence exactly where one-at-a-time enrolment left it."""
    shares, bases = _block_base(arms, ratios, block_sizes)
    if start < 0 or count < 0:
        raise ValueError("start and count must be zero or more")
    if count == 0:
        return []
    sizes, ends = _block_ends(stratum, start + count - 1, block_sizes, rngs)
    names = list(arms)
    probabilities = {a: float(p) for a, p in zip(arms, shares, strict=True)}
    blocks = np.searchsorted(ends, np.arange(start, start + count), side="right")
    orders: dict[int, np.ndarray] = {}
    out = []
    for position, k in zip(range(start, start + count), blocks.tolist(), strict=True):
        first = int(ends[k - 1]) if k else 0
        size = int(sizes[k])
        if k not in orders:
            orders[k] = _block_order(stratum, k, bases[size], rngs)
        out.append(
            Draw(
                arm=names[int(orders[k][position - first])],
                probabilities=dict(probabilities),
                exact=True,
                detail={
                    "stratum": stratum,
                    "position": position,
                    "block": k,
                    "block_size": size,
                    "position_in_block": position - first,
                },
            )
        )
    return out


def blocked(
    strata: Sequence[str],
    arms: Sequence[str],
    ratios: Sequence[float],
    block_sizes: Sequence[int],
    rngs: RngFactory,
) -> Assignment:
    """All units at once, giving exactly what :func:`blocked_next` gives one at a time.

    groups: each unit's stratum. extra (lists, one entry per unit): "position" within the
    stratum, "block", "block_size", "position_in_block".
    """
    shares, bases = _block_base(arms, ratios, block_sizes)
    strata = list(strata)
    n = len(strata)
    labels = np.empty(n, dtype=np.int64)
    position = np.empty(n, dtype=np.int64)
    block = np.empty(n, dtype=np.int64)
    block_size = np.empty(n, dtype=np.int64)
    in_block = np.empty(n, dtype=np.int64)
    members: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        members.setdefault(s, []).append(i)
    for s, idx in members.items():
        m = len(idx)
        sizes, ends = _block_ends(s, m - 1, block_sizes, rngs)
        used = int(np.searchsorted(ends, m - 1, side="right")) + 1
        order = np.concatenate(
            [_block_order(s, k, bases[int(sizes[k])], rngs) for k in range(used)]
        )
        ks = np.repeat(np.arange(used), sizes[:used])
        starts = np.concatenate([[0], ends[: used - 1]])
        where = np.asarray(idx)
        labels[where] = order[:m]
        position[where] = np.arange(m)
        block[where] = ks[:m]
        block_size[where] = sizes[ks[:m]]
        in_block[where] = np.arange(m) - starts[ks[:m]]
    extra = {
        "position": position.tolist(),
        "block": block.tolist(),
        "block_size": block_size.tolist(),
        "position_in_block": in_block.tolist(),
    }
    return _assignment(labels, list(arms), _rows(shares, n), "blocked", strata, extra)


# --- minimisation ---------------------------------------------------------------------


def _check_factors(factors: Sequence[tuple[str, float]]) -> None:
    names = [f for f, _ in factors]
    if len(set(names)) != len(names):
        raise ValueError(f"a factor is listed twice: {names}")
    for name, weight in factors:
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight {weight:g} of factor {name!r} is not positive")


def minimisation_next(
    levels: Mapping[str, str],
    counts: Mapping[tuple[str, str], Sequence[float]],
    factors: Sequence[tuple[str, float]],
    arms: Sequence[str],
    ratios: Sequence[float],
    probability: float,
    rng: np.random.Generator,
) -> Draw:
    """Pocock-Simon: favour the arm that best balances this unit's factor levels.

    The chance of the favoured arm stays below 1 (in practice) so no-one can foresee the
    next arm from the counts. ``probabilities`` are the conditional chances for this unit
    given the units before it. detail: "totals" (arm -> weighted imbalance if the unit
    joined that arm) and "preferred" (arms with the smallest total).
    """
    shares = _check_arms(arms, ratios)
    _check_factors(factors)
    k_arms = len(shares)
    if not 1 / k_arms <= probability <= 1:
        raise ValueError(f"probability {probability} must be between 1/{k_arms} and 1")
    r = [float(x) for x in ratios]
    totals = [0.0] * k_arms
    for name, weight in factors:
        if name not in levels:
            raise ValueError(f"the unit has no level for minimisation factor {name!r}")
        c = [float(x) for x in counts.get((name, levels[name]), [0.0] * k_arms)]
        if len(c) != k_arms:
            raise ValueError(f"counts for {(name, levels[name])} need one entry per arm")
        for k in range(k_arms):
            adjusted = [(c[j] + (j == k)) / r[j] for j in range(k_arms)]
            totals[k] += weight * (max(adjusted) - min(adjusted))
    best = min(totals)
    preferred = [t <= best + _TIE * max(1.0, abs(best)) for t in totals]
    m = sum(preferred)
    if m == k_arms:
        p = [float(x) for x in shares]
    else:
        p = [probability / m if q else (1 - probability) / (k_arms - m) for q in preferred]
    # one uniform, inverse CDF in arm order: the log can show why this arm came out
    u = float(rng.random())
    last = max(k for k in range(k_arms) if p[k] > 0)  # if rounding leaves u past the end
    pick = next((k for k, edge in enumerate(itertools.accumulate(p)) if u < edge), last)
    names = list(arms)
    return Draw(
        arm=names[pick],
        probabilities=dict(zip(names, p, strict=True)),
        exact=True,
        detail={
            "totals": dict(zip(names, totals, strict=True)),
            "preferred": [a for a, q in zip(names, preferred, strict=True) if q],
        },
    )


def _tally(
    counts: dict[tuple[str, str], list[int]],
    unit_levels: Mapping[str, str],
    arm: int,
    factors: Sequence[tuple[str, float]],
    k_arms: int,
) -> None:
    for name, _ in factors:
        if name not in unit_levels:
            raise ValueError(f"a unit has no level for minimisation factor {name!r}")
        counts.setdefault((name, unit_levels[name]), [0] * k_arms)[arm] += 1


def minimisation_counts(
    levels: Sequence[Mapping[str, str]],
    arms_assigned: Sequence[str],
    factors: Sequence[tuple[str, float]],
    arms: Sequence[str],
) -> dict[tuple[str, str], list[int]]:
    """Units per arm at each (factor, level), in the form :func:`minimisation_next` takes."""
    if len(levels) != len(arms_assigned):
        raise ValueError(f"{len(levels)} units but {len(arms_assigned)} arms assigned")
    index = {a: k for k, a in enumerate(arms)}
    counts: dict[tuple[str, str], list[int]] = {}
    for unit, a in zip(levels, arms_assigned, strict=True):
        if a not in index:
            raise ValueError(f"{a!r} is not one of the arms {list(arms)}")
        _tally(counts, unit, index[a], factors, len(index))
    return counts


def minimisation(
    levels: Sequence[Mapping[str, str]],
    factors: Sequence[tuple[str, float]],
    arms: Sequence[str],
    ratios: Sequence[float],
    probability: float,
    rngs: RngFactory,
) -> Assignment:
    """Units in order as if enrolled one by one; unit i draws from ``minimisation/{i}``.

    probabilities: each unit's conditional chances given the units before it.
    extra: "totals" and "preferred", one entry per unit (see :func:`minimisation_next`).
    """
    _check_arms(arms, ratios)
    _check_factors(factors)
    names = list(arms)
    index = {a: k for k, a in enumerate(names)}
    counts: dict[tuple[str, str], list[int]] = {}
    labels, rows, totals, preferred = [], [], [], []
    for i, unit in enumerate(levels):
        d = minimisation_next(
            unit, counts, factors, names, ratios, probability, rngs(f"minimisation/{i}")
        )
        k = index[d.arm]
        _tally(counts, unit, k, factors, len(names))
        labels.append(k)
        rows.append([d.probabilities[a] for a in names])
        totals.append(d.detail["totals"])
        preferred.append(d.detail["preferred"])
    probs = np.asarray(rows, dtype=float).reshape(len(labels), len(names))
    extra = {"totals": totals, "preferred": preferred}
    return _assignment(np.asarray(labels, dtype=int), names, probs, "minimisation", extra=extra)


# --- place (cluster) designs ----------------------------------------------------------


def cluster(
    places: Sequence[str], arms: Sequence[str], ratios: Sequence[float], rng: np.random.Generator
) -> Assignment:
    """Whole places to arms, because the service changes for everyone in a place.

    One row per place, in input order. extra: "places", "counts" (places per arm).
    """
    names = _check_places(places)
    shares = _check_arms(arms, ratios)
    labels = _complete_labels(len(names), ratios, rng)
    counts = np.bincount(labels, minlength=len(shares))
    extra = {"places": names, "counts": {a: int(c) for a, c in zip(arms, counts, strict=True)}}
    return _assignment(labels, list(arms), _rows(shares, len(names)), "cluster", extra=extra)


def expand(assignment: Assignment, places: Sequence[str], unit_places: Sequence[str]) -> list[str]:
    """Each individual gets the arm of their place: outcomes are measured on people."""
    names = list(places)
    if len(names) != len(assignment.arms):
        raise ValueError(f"{len(names)} places but the assignment has {len(assignment.arms)}")
    made_for = assignment.extra.get("places")
    if made_for is not None and list(made_for) != names:
        raise ValueError("places are not those (or not in the order) the assignment was made for")
    arm_of = dict(zip(names, assignment.arms, strict=True))
    missing = sorted({p for p in unit_places if p not in arm_of})
    if missing:
        raise ValueError(f"individuals in places that were not randomised: {missing}")
    return [arm_of[p] for p in unit_places]


def stratified_cluster(
    places: Sequence[str],
    strata: Sequence[str],
    arms: Sequence[str],
    ratios: Sequence[float],
    rng: np.random.Generator,
) -> Assignment:
    """Complete randomisation of places within each stratum, so arms are balanced on it.

    Strata are taken in order of first appearance, each using ``rng`` in turn.
    groups: each place's stratum. extra: "places", "counts" (stratum -> arm -> places).
    """
    names = _check_places(places)
    shares = _check_arms(arms, ratios)
    strata = list(strata)
    if len(strata) != len(names):
        raise ValueError(f"{len(names)} places but {len(strata)} strata: give one per place")
    labels = np.empty(len(names), dtype=np.int64)
    members: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        members.setdefault(s, []).append(i)
    counts = {}
    for s, idx in members.items():
        labels[idx] = _complete_labels(len(idx), ratios, rng)
        got = np.bincount(labels[idx], minlength=len(shares))
        counts[s] = {a: int(c) for a, c in zip(arms, got, strict=True)}
    extra = {"places": names, "counts": counts}
    probs = _rows(shares, len(names))
    return _assignment(labels, list(arms), probs, "stratified_cluster", strata, extra)


def _greedy_pairs(z: np.ndarray) -> list[list[int]]:
    """Closest remaining pair first; first-in-input-order wins ties. No randomness."""
    n = z.shape[0]
    dist = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(axis=2))
    free = np.triu(np.ones((n, n), dtype=bool), k=1)
    masked = np.where(free, dist, np.inf)
    pairs = []
    for _ in range(n // 2):
        i, j = divmod(int(np.argmin(masked)), n)
        pairs.append([i, j])
        masked[[i, j], :] = np.inf
        masked[:, [i, j]] = np.inf
    if n % 2:
        paired = {i for p in pairs for i in p}
        last = next(i for i in range(n) if i not in paired)
        closeness = [dist[last, p].mean() for p in pairs]
        pairs[int(np.argmin(closeness))].append(last)
    return [sorted(p) for p in pairs]


def matched_pair_cluster(
    places: Sequence[str], covariates: np.ndarray, arms: Sequence[str], rng: np.random.Generator
) -> Assignment:
    """Pair similar places, then toss a coin in each pair: few places, so balance by design.

    With an odd number of places the leftover place joins the pair it is closest to (mean
    distance to the two) as a triplet, which treats 1 or 2 of its three places with equal
    chance. groups: "pair-1", ... in the order pairs were formed. extra: "pairs" (place
    names per pair, in input order), "places".
    """
    names = _check_places(places)
    if len(list(arms)) != 2:
        raise ValueError(f"pair matching needs exactly two arms, got {len(list(arms))}")
    _check_arms(arms, [1, 1])
    if len(names) < 2:
        raise ValueError("pair matching needs at least two places")
    z = _standardise(covariates, len(names))
    pairs = _greedy_pairs(z)
    labels = np.zeros(len(names), dtype=np.int64)
    groups: list[str | None] = [None] * len(names)
    for g, members in enumerate(pairs, start=1):
        for i in members:
            groups[i] = f"pair-{g}"
        if len(members) == 2:
            labels[members[int(rng.integers(2))]] = 1
        else:
            treated = 1 + int(rng.integers(2))
            labels[[members[t] for t in rng.permutation(3)[:treated]]] = 1
    extra = {"pairs": [[names[i] for i in p] for p in pairs], "places": names}
    probs = _rows(np.array([0.5, 0.5]), len(names))
    return _assignment(labels, list(arms), probs, "matched_pair_cluster", groups, extra)


def _enumerate(n: int, count_vectors: list[tuple[int, ...]]) -> np.ndarray:
    """Every allocation of ``n`` places with any of these arm counts, one row each."""
    return np.concatenate([_labellings(n, c) for c in count_vectors])


def _labellings(size: int, counts: tuple[int, ...]) -> np.ndarray:
    if len(counts) == 1:
        return np.zeros((1, size), dtype=np.int64)
    combos = list(itertools.combinations(range(size), counts[0]))
    chosen = np.zeros((len(combos), size), dtype=bool)
    chosen[
        np.repeat(np.arange(len(combos)), counts[0]), np.asarray(combos, dtype=np.int64).ravel()
    ] = True
    rest = np.nonzero(~chosen)[1].reshape(len(combos), size - counts[0])
    tail = _labellings(size - counts[0], counts[1:]) + 1
    out = np.zeros((len(combos), len(tail), size), dtype=np.int64)
    out[
        np.arange(len(combos))[:, None, None],
        np.arange(len(tail))[None, :, None],
        rest[:, None, :],
    ] = tail[None, :, :]
    return out.reshape(-1, size)


def _multinomial(n: int, counts: tuple[int, ...]) -> int:
    out, left = 1, n
    for c in counts:
        out *= math.comb(left, c)
        left -= c
    return out


def _sample_distinct(
    n: int,
    count_vectors: list[tuple[int, ...]],
    sizes: list[int],
    wanted: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``wanted`` distinct allocations, uniform over all of them (duplicates drawn again)."""
    total = sum(sizes)
    weights = np.asarray([s / total for s in sizes])  # exact ints, so no overflow
    bases = [np.repeat(np.arange(len(c)), c) for c in count_vectors]
    seen: set[bytes] = set()
    rows = []
    while len(rows) < wanted:
        batch = wanted - len(rows)
        which = rng.choice(len(bases), size=batch, p=weights)
        for v in which:
            row = rng.permutation(bases[v])
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return np.asarray(rows, dtype=np.int64)


def _balance_scores(
    allocations: np.ndarray, z: np.ndarray, k_arms: int, criterion: str
) -> np.ndarray:
    """Standardised mean differences of each arm against control, summarised per allocation."""
    if z.shape[1] == 0:
        return np.zeros(allocations.shape[0])
    means = []
    for k in range(k_arms):
        mask = (allocations == k).astype(float)
        means.append(mask @ z / mask.sum(axis=1, keepdims=True))
    diffs = np.stack([means[k] - means[0] for k in range(1, k_arms)], axis=1)
    if criterion == "l2":
        return (diffs**2).sum(axis=(1, 2))
    return np.abs(diffs).max(axis=(1, 2))


def constrained_cluster(
    places: Sequence[str],
    covariates: np.ndarray,
    arms: Sequence[str],
    ratios: Sequence[float],
    criterion: Literal["l2", "max_abs_smd"],
    keep_fraction: float,
    candidates: int,
    rng: np.random.Generator,
) -> Assignment:
    """Draw only from well-balanced allocations: with few places, chance imbalance is likely.

    Candidates are all allocations whose arm counts the complete rule could give (every
    such count vector when n p_k is not whole), weighted alike. Scores use covariates
    standardised over places; l2 sums squared standardised mean differences of each arm
    against control, max_abs_smd takes the largest absolute one. Every arm must always get
    at least one place. extra: "admissible" (kept allocations, arm indexes, one row each),
    "scores" (their scores, same order), "cutoff" (largest kept score), "n_considered",
    "enumerated", "chosen_index" (row of "admissible" drawn), "chosen_score".
    """
    names = _check_places(places)
    shares = _check_arms(arms, ratios)
    if criterion not in ("l2", "max_abs_smd"):
        raise ValueError(f"criterion must be 'l2' or 'max_abs_smd', got {criterion!r}")
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    n, k_arms = len(names), len(shares)
    z = _standardise(covariates, n)
    vectors = _possible_counts(n, ratios)
    if any(min(c) == 0 for c in vectors):
        raise ValueError(f"{n} places are too few: some allocation would leave an arm empty")
    sizes = [_multinomial(n, c) for c in vectors]
    total = sum(sizes)
    enumerated = total <= candidates
    if enumerated:
        pool = _enumerate(n, vectors)
    elif total <= 4 * candidates:
        pool = _enumerate(n, vectors)
        pool = pool[np.sort(rng.choice(total, size=candidates, replace=False))]
    else:
        pool = _sample_distinct(n, vectors, sizes, candidates, rng)
    scores = _balance_scores(pool, z, k_arms, criterion)
    n_keep = math.ceil(keep_fraction * len(pool))
    cut = np.sort(scores)[n_keep - 1]
    kept = scores <= cut + _TIE * max(1.0, abs(cut))
    admissible, kept_scores = pool[kept], scores[kept]
    chosen = int(rng.integers(admissible.shape[0]))
    probs = np.stack([(admissible == k).mean(axis=0) for k in range(k_arms)], axis=1)
    extra = {
        "admissible": admissible,
        "scores": kept_scores,
        "cutoff": float(kept_scores.max()),
        "n_considered": len(pool),
        "enumerated": enumerated,
        "chosen_index": chosen,
        "chosen_score": float(kept_scores[chosen]),
        "places": names,
    }
    return _assignment(
        admissible[chosen], list(arms), probs, "constrained_cluster", None, extra, enumerated
    )


# --- stepped wedge --------------------------------------------------------------------


def stepped_wedge(
    places: Sequence[str], places_per_step: Sequence[int], rng: np.random.Generator
) -> Assignment:
    """Every place gets the service in the end; only the order is random, to compare over time.

    Period 1 is all control; the first ``places_per_step[0]`` places of a random order cross
    at period 2, and so on. extra: "crossover_period" (per place), "periods", "order"
    (places in crossing order).
    """
    names = _check_places(places)
    steps = [int(s) for s in places_per_step]
    if not steps:
        raise ValueError("a stepped wedge needs at least one step")
    if any(s <= 0 for s in steps):
        raise ValueError(f"each step must move at least one place, got {steps}")
    if sum(steps) != len(names):
        raise ValueError(f"steps move {sum(steps)} places but there are {len(names)} places")
    order = rng.permutation(len(names))
    step_of = np.empty(len(names), dtype=np.int64)
    step_of[order] = np.repeat(np.arange(len(steps)), steps)
    periods = len(steps) + 1
    arm_names = [f"period-{p}" for p in range(2, periods + 1)]
    probs = _rows(np.asarray(steps, dtype=float) / len(names), len(names))
    extra = {
        "crossover_period": (step_of + 2).tolist(),
        "periods": periods,
        "order": [names[i] for i in order],
        "places": names,
    }
    return _assignment(step_of, arm_names, probs, "stepped_wedge", extra=extra)


def wedge_matrix(crossover_period: Sequence[int], periods: int) -> np.ndarray:
    """Exposure (1 = receiving the service) of each place in each period, for the analysis."""
    c = np.asarray(crossover_period, dtype=np.int64)
    if periods < 1:
        raise ValueError(f"periods must be at least 1, got {periods}")
    if c.size and c.min() < 1:
        raise ValueError("crossover periods are numbered from 1")
    return (np.arange(1, periods + 1)[None, :] >= c[:, None]).astype(np.int64)
