"""Assignments the registered procedure could have produced, for randomisation inference
that replays the pilot's own design rather than shuffling labels.

The same units, in the same arrival order, with the same strata, blocks, minimisation
factors, pairs, admissible set or stepped-wedge steps are re-randomised with fresh
random streams (never the pilot's secret). Where the design's possible assignments can be
listed in full and there are no more of them than the draws asked for, all of them are
returned and the test is exact.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from evalkit import assignment as A
from evalkit.baseline import stratum_label
from evalkit.ledger import Entry
from evalkit.protocol import (
    BlockedDesign,
    ConstrainedClusterDesign,
    MatchedPairClusterDesign,
    MinimisationDesign,
    Protocol,
    SteppedWedgeDesign,
    StratifiedClusterDesign,
)
from evalkit.randomness import RngFactory


@dataclass(frozen=True)
class Redraws:
    """``treated[b, i]``: whether person i (in log order) gets the compared arm in draw b."""

    units: list[str]
    treated: np.ndarray
    exact: bool
    description: str


def _people(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.kind == "allocation" and e.level == "participant"]


def _places(entries: list[Entry]) -> list[Entry]:
    places = [e for e in entries if e.kind == "allocation" and e.level == "place"]
    return sorted(places, key=lambda e: e.detail.get("index", 0))


def redraw(protocol: Protocol, entries: list[Entry], arm: str, draws: int, seed: int) -> Redraws:
    """Re-run the registered assignment procedure ``draws`` times (or list every possible
    assignment when there are no more than ``draws``); 1 marks ``arm``."""
    people = _people(entries)
    units = [e.unit or "" for e in people]
    arms = [a.name for a in protocol.arms]
    ratios = [a.ratio for a in protocol.arms]
    d = protocol.design
    if protocol.unit.level == "place":
        return _place_design(protocol, entries, people, units, arm, draws, seed)
    if isinstance(d, BlockedDesign):
        strata = [stratum_label(d.strata, e.baseline) for e in people]
        treated = blocked_redraws(
            strata, arms, ratios, d.block_sizes, arm, draws, np.random.default_rng(seed)
        )
        return Redraws(
            units,
            treated,
            False,
            f"permuted blocks (sizes {d.block_sizes}) "
            f"re-drawn {draws} times within each stratum in the order of arrival",
        )
    out = np.zeros((draws, len(people)), dtype=np.int8)
    for b in range(draws):
        rngs = RngFactory.for_test(seed * 1_000_003 + b)
        if isinstance(d, MinimisationDesign):
            factors = [(f.field, f.weight) for f in d.factors]
            levels = [
                {f: stratum_label([f], e.baseline).split("=", 1)[1] for f, _ in factors}
                for e in people
            ]
            got = A.minimisation(levels, factors, arms, ratios, d.probability, rngs).arms
        elif d.method == "complete":
            got = _complete_batches(people, arms, ratios, rngs)
        else:  # simple
            got = A.simple(len(people), arms, ratios, rngs("draw")).arms
        out[b] = [g == arm for g in got]
    return Redraws(
        units, out, False, f"{d.method} design re-run {draws} times in the order of arrival"
    )


def blocked_redraws(
    strata: list[str],
    arms: list[str],
    ratios: list[float],
    block_sizes: list[int],
    arm: str,
    draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Permuted blocks with random sizes, re-drawn for all draws at once.

    In each stratum, positions are padded to a whole last block; each position gets a
    random key, positions are ranked by (block, key), and a position's arm follows from
    its rank within its block, so every block is a uniformly random permutation of its
    arms and a part-filled last block is a prefix of one, as in the registered procedure.
    """
    total = sum(ratios)
    k = arms.index(arm)
    lo_share = sum(ratios[:k]) / total
    hi_share = sum(ratios[: k + 1]) / total
    sizes_choice = np.asarray(block_sizes, dtype=np.int64)
    index: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        index.setdefault(s, []).append(i)
    out = np.zeros((draws, len(strata)), dtype=np.int8)
    for members in index.values():
        n = len(members)
        length = n + int(sizes_choice.max())
        n_blocks = length // int(sizes_choice.min()) + 1
        sizes = sizes_choice[rng.integers(0, sizes_choice.size, size=(draws, n_blocks))]
        ends = np.cumsum(sizes, axis=1)
        positions = np.arange(length)
        block = (positions[None, :, None] >= ends[:, None, :]).sum(axis=2)  # (draws, length)
        size_of = np.take_along_axis(sizes, block, axis=1)
        order = np.lexsort((rng.random((draws, length)), block), axis=1)
        start = np.take_along_axis(ends - sizes, block, axis=1)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(length)[None, :].repeat(draws, 0), axis=1)
        within = rank - start
        chosen = (within >= np.round(lo_share * size_of)) & (within < np.round(hi_share * size_of))
        out[:, members] = chosen[:, :n]
    return out


def _complete_batches(people: list[Entry], arms, ratios, rngs: RngFactory) -> list[str]:
    got: list[str] = [""] * len(people)
    batches: dict[int, list[int]] = {}
    for i, e in enumerate(people):
        batches.setdefault(int(e.detail.get("batch", 1)), []).append(i)
    for k, idx in batches.items():
        drawn = A.complete(len(idx), arms, ratios, rngs(f"batch/{k}")).arms
        for j, i in enumerate(idx):
            got[i] = drawn[j]
    return got


def _place_design(
    protocol: Protocol,
    entries: list[Entry],
    people: list[Entry],
    units: list[str],
    arm: str,
    draws: int,
    seed: int,
) -> Redraws:
    d = protocol.design
    places = _places(entries)
    names = [e.unit or "" for e in places]
    index = {n: i for i, n in enumerate(names)}
    member = np.array([index[e.place or ""] for e in people])
    arms = [a.name for a in protocol.arms]
    ratios = [a.ratio for a in protocol.arms]
    if isinstance(d, SteppedWedgeDesign):
        period = np.array([int(e.detail["period"]) for e in people])
        orders = _wedge_orders(len(names), d.places_per_step, draws, seed)
        crossover = orders[:, member]  # each draw's crossover period per person's place
        treated = (period[None, :] >= crossover).astype(np.int8)
        exact = _wedge_count(d.places_per_step) <= draws
        how = f"all {len(orders)} orders" if exact else f"{draws} random orders"
        return Redraws(units, treated, exact, f"stepped wedge: {how} of crossing over")
    place_draws, exact, how = _place_assignments(d, places, names, arms, ratios, arm, draws, seed)
    return Redraws(units, place_draws[:, member], exact, how)


def _place_assignments(d, places, names, arms, ratios, arm, draws, seed):
    n = len(names)
    if isinstance(d, MatchedPairClusterDesign):
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(places):
            groups.setdefault(str(e.detail.get("group")), []).append(i)
        pairs = list(groups.values())
        if all(len(g) == 2 for g in pairs) and 2 ** len(pairs) <= draws:
            rows = []
            for flips in itertools.product([0, 1], repeat=len(pairs)):
                row = np.zeros(n, dtype=np.int8)
                for g, f in zip(pairs, flips, strict=True):
                    row[g[f]] = 1
                rows.append(row)
            return np.array(rows), True, f"all {len(rows)} splits of the {len(pairs)} pairs"
    if isinstance(d, ConstrainedClusterDesign):
        cov = np.array([[float(e.baseline[c]) for c in d.balance_on] for e in places])
        a = A.constrained_cluster(
            names,
            cov,
            arms,
            ratios,
            d.criterion,
            d.keep_fraction,
            d.candidates,
            np.random.default_rng(seed),
        )
        admissible = np.asarray(a.extra["admissible"])
        target = arms.index(arm)
        if len(admissible) <= draws:
            return (
                (admissible == target).astype(np.int8),
                bool(a.exact),
                f"all {len(admissible)} admissible allocations",
            )
        pick = np.random.default_rng(seed + 1).integers(0, len(admissible), size=draws)
        return (
            (admissible[pick] == target).astype(np.int8),
            False,
            f"{draws} draws from the {len(admissible)} admissible allocations",
        )
    if d.method == "cluster" and len(arms) == 2 and math.comb(n, _count(n, ratios)) <= draws:
        k = _count(n, ratios)
        rows = []
        for chosen in itertools.combinations(range(n), k):
            row = np.zeros(n, dtype=np.int8)
            row[list(chosen)] = 1
            rows.append(row)
        treated = np.array(rows)
        if arm == arms[0]:
            treated = 1 - treated
        return treated, True, f"all {len(rows)} ways to choose the places"
    out = np.zeros((draws, n), dtype=np.int8)
    strata = [e.stratum or "" for e in places]
    for b in range(draws):
        rng = np.random.default_rng([seed, b])
        if isinstance(d, StratifiedClusterDesign):
            got = A.stratified_cluster(names, strata, arms, ratios, rng).arms
        elif isinstance(d, MatchedPairClusterDesign):
            cov = np.array([[float(e.baseline[c]) for c in d.match_on] for e in places])
            got = A.matched_pair_cluster(names, cov, arms, rng).arms
        else:
            got = A.cluster(names, arms, ratios, rng).arms
        out[b] = [g == arm for g in got]
    return out, False, f"{d.method} design re-run {draws} times"


def _count(n: int, ratios: list[float]) -> int:
    """Places treated under two-arm complete randomisation (the exact case only)."""
    return round(n * ratios[1] / sum(ratios))


def _wedge_count(steps) -> int:
    total = math.factorial(sum(steps))
    for s in steps:
        total //= math.factorial(s)
    return total


def _arrangements(items: list[int]):
    """Every distinct ordering of a multiset, each once (not n! with repeats)."""
    if not items:
        yield ()
        return
    for value in sorted(set(items)):
        rest = list(items)
        rest.remove(value)
        for tail in _arrangements(rest):
            yield (value, *tail)


def _wedge_orders(n: int, steps, draws: int, seed: int) -> np.ndarray:
    """Crossover period of each place for every distinct order (if few) or ``draws``
    random orders."""
    periods = np.repeat(np.arange(2, len(steps) + 2), steps)
    if _wedge_count(steps) <= draws:
        return np.array(list(_arrangements(sorted(periods.tolist()))))
    rng = np.random.default_rng(seed)
    return np.array([rng.permutation(periods) for _ in range(draws)])
