"""Assignments the registered procedure could have produced, for randomisation inference
that replays the pilot's own design rather than shuffling labels.

The same units, in the same arrival order, with the same strata, blocks, minimisation
factors, pairs, admissible set or stepped-wedge steps are re-randomised with fresh
random streams (never the pilot's secret). Where the design's possible assignments can be
listed in full and there are no more of them than the draws asked for, all of them are
returned and the test is exact.

The draws are made a group at a time and handed on in chunks (``Redraws.chunks``), so a
whole-borough pilot (14,000 people, 10,000 draws) never holds more than a group of draws
for its people: memory grows with people plus draws, not with their product. Each group
has its own generator derived from the analysis seed, so the p-value does not depend on
how the draws are chunked.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

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

#: Draws made from one generator, default_rng([seed, group]): the draws depend on the
#: analysis seed alone, never on how many rows a chunk holds or how much memory there is.
GROUP = 256

#: Minimisation replays people one by one for a whole group of draws at once; a larger
#: group spreads that per-person cost over more draws (its output is GROUP x people int8).
MINIMISATION_GROUP = 2048


@dataclass(frozen=True)
class Redraws:
    """Assignments the registered procedure could have made, made a group of draws at a time.

    Nothing holds every draw for every person: ``chunks`` yields (b, people) int8 blocks,
    1 where a person (in log order) gets the compared arm, so memory stays about
    ``group`` x people whatever the number of draws. ``make(g, columns)`` makes group g's
    draws (rows ``g * group`` on) for the people at ``columns``.
    """

    units: list[str]
    draws: int
    exact: bool
    description: str
    group: int
    make: Callable[[int, np.ndarray], np.ndarray] = field(repr=False, compare=False)

    def chunks(
        self, columns: Sequence[int] | np.ndarray | None = None, rows: int | None = None
    ) -> Iterator[np.ndarray]:
        """The draws in order, for the people at ``columns`` (all people by default), in
        blocks of at most ``rows`` draws (by default one generator group per block). The
        draws are the same whatever ``rows`` is."""
        cols = np.arange(len(self.units)) if columns is None else np.asarray(columns, np.intp)
        if rows is not None and rows < 1:
            raise ValueError(f"rows must be at least 1, got {rows}")
        groups = -(-self.draws // self.group)
        pending: list[np.ndarray] = []
        have = 0
        for g in range(groups):
            block = self.make(g, cols)
            if rows is None:
                yield block
                continue
            pending.append(block)
            have += block.shape[0]
            while have >= rows:
                joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield joined[:rows]
                pending = [joined[rows:]] if have > rows else []
                have -= rows
        if pending:
            yield np.concatenate(pending)

    @property
    def treated(self) -> np.ndarray:
        """Every draw for every person at once, (draws, people): for small designs and
        tests only; the analysis reads ``chunks``."""
        parts = list(self.chunks())
        return np.concatenate(parts) if parts else np.zeros((0, len(self.units)), np.int8)


def _people(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.kind == "allocation" and e.level == "participant"]


def _places(entries: list[Entry]) -> list[Entry]:
    places = [e for e in entries if e.kind == "allocation" and e.level == "place"]
    return sorted(places, key=lambda e: e.detail.get("index", 0))


def _rows_in(g: int, group: int, draws: int) -> int:
    return min(group, draws - g * group)


def redraw(protocol: Protocol, entries: list[Entry], arm: str, draws: int, seed: int) -> Redraws:
    """Re-run the registered assignment procedure ``draws`` times (or list every possible
    assignment when there are no more than ``draws``); 1 marks ``arm``.

    Group g of draws comes from ``np.random.default_rng([seed, g])``, so the same seed
    gives the same draws however they are later cut into chunks."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    people = _people(entries)
    units = [e.unit or "" for e in people]
    arms = [a.name for a in protocol.arms]
    ratios = [float(a.ratio) for a in protocol.arms]
    k = arms.index(arm)
    d = protocol.design
    if protocol.unit.level == "place":
        return _place_design(protocol, entries, people, units, arm, draws, seed)
    if isinstance(d, BlockedDesign):
        strata = [stratum_label(d.strata, e.baseline) for e in people]
        make_blocked = blocked_group_maker(strata, arms, ratios, d.block_sizes, arm)

        def make(g: int, cols: np.ndarray) -> np.ndarray:
            rng = np.random.default_rng([seed, g])
            return make_blocked(_rows_in(g, GROUP, draws), rng)[:, cols]

        how = (
            f"permuted blocks (sizes {d.block_sizes}) "
            f"re-drawn {draws} times within each stratum in the order of arrival"
        )
        return Redraws(units, draws, False, how, GROUP, make)
    if isinstance(d, MinimisationDesign):
        factors = [(f.field, float(f.weight)) for f in d.factors]
        levels = [
            [stratum_label([f], e.baseline).split("=", 1)[1] for f, _ in factors] for e in people
        ]
        A._check_arms(arms, ratios)
        A._check_factors(factors)
        codes, n_levels = _level_codes(levels, len(factors))
        weights = np.array([w for _, w in factors])

        def make(g: int, cols: np.ndarray) -> np.ndarray:
            rng = np.random.default_rng([seed, g])
            rows = _rows_in(g, MINIMISATION_GROUP, draws)
            got = minimisation_draws(codes, n_levels, weights, ratios, d.probability, rows, rng)
            return (got[:, cols] == k).view(np.int8)

        how = f"minimisation design re-run {draws} times in the order of arrival"
        return Redraws(units, draws, False, how, MINIMISATION_GROUP, make)
    if d.method == "complete":
        batches: dict[int, list[int]] = {}
        for i, e in enumerate(people):
            batches.setdefault(int(e.detail.get("batch", 1)), []).append(i)
        index = [np.asarray(idx, dtype=np.intp) for idx in batches.values()]
        A._check_arms(arms, ratios)

        def make(g: int, cols: np.ndarray) -> np.ndarray:
            rng = np.random.default_rng([seed, g])
            rows = _rows_in(g, GROUP, draws)
            out = np.empty((rows, len(people)), dtype=np.int8)
            for idx in index:
                out[:, idx] = complete_draws(idx.size, ratios, k, rows, rng)
            return out[:, cols]

        how = f"complete design re-run {draws} times in the order of arrival"
        return Redraws(units, draws, False, how, GROUP, make)
    shares = A._check_arms(arms, ratios)  # simple: each person on their own
    lo, hi = float(shares[:k].sum()), float(shares[: k + 1].sum())

    def make(g: int, cols: np.ndarray) -> np.ndarray:
        u = np.random.default_rng([seed, g]).random((_rows_in(g, GROUP, draws), len(people)))
        return ((u >= lo) & (u < hi))[:, cols].view(np.int8)

    how = f"simple design re-run {draws} times in the order of arrival"
    return Redraws(units, draws, False, how, GROUP, make)


def blocked_group_maker(
    strata: Sequence[str],
    arms: Sequence[str],
    ratios: Sequence[float],
    block_sizes: Sequence[int],
    arm: str,
) -> Callable[[int, np.random.Generator], np.ndarray]:
    """A function making ``rows`` redraws of permuted blocks with random sizes, (rows,
    people) int8, as the registered procedure draws them.

    In each stratum, each draw picks a run of block sizes; each block is a uniformly random
    arrangement of its arms, made slot by slot (slot j is the compared arm with chance
    arms-left / slots-left: every subset of the block's slots equally likely), and the
    blocks laid end to end give the stratum's positions in arrival order, so a part-filled
    last block is the start of one. Working memory is about rows x people x (largest block
    / smallest block): no array spans draws, people and blocks at once.
    """
    _, bases = A._block_base(arms, ratios, block_sizes)
    k = list(arms).index(arm)
    choices = np.asarray([int(b) for b in block_sizes], dtype=np.int64)
    treated_in = np.zeros(int(choices.max()) + 1, dtype=np.int64)
    for size, base in bases.items():
        treated_in[size] = int(np.sum(base == k))
    slots = int(choices.max())
    index: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        index.setdefault(s, []).append(i)
    members = [np.asarray(idx, dtype=np.intp) for idx in index.values()]
    n = len(strata)

    def make(rows: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((rows, n), dtype=np.int8)
        for idx in members:
            m = idx.size
            n_blocks = m // int(choices.min()) + 1  # their sizes add up to more than m
            sizes = choices[rng.integers(0, choices.size, size=(rows, n_blocks))]
            left = treated_in[sizes]
            free = sizes.astype(float)
            chosen = np.empty((rows, n_blocks, slots), dtype=bool)
            for j in range(slots):  # slots past a block's size are made but never used
                pick = np.less(rng.random((rows, n_blocks)) * free, left, out=chosen[:, :, j])
                left -= pick
                free -= 1.0
            # each draw's real slots, in order, are its stratum's positions 0, 1, 2, ...
            flat = chosen[np.arange(slots) < sizes[:, :, None]]  # draw after draw
            total = sizes.sum(axis=1)
            first = np.cumsum(total) - total
            out[:, idx] = flat[first[:, None] + np.arange(m)].view(np.int8)
        return out

    return make


def complete_draws(
    m: int, ratios: Sequence[float], k: int, rows: int, rng: np.random.Generator
) -> np.ndarray:
    """``rows`` redraws of complete randomisation of ``m`` units: 1 for arm ``k``.

    As :func:`assignment.complete`: each draw's group sizes come from a random start
    (so every unit's chance is exactly its share), then the units are shuffled."""
    counts = np.array(
        [A._complete_counts(m, ratios, float(u)) for u in rng.random(rows)], dtype=np.int64
    ).reshape(rows, len(ratios))
    lo = counts[:, :k].sum(axis=1)
    hi = lo + counts[:, k]
    at = np.arange(m)
    sorted_rows = ((at >= lo[:, None]) & (at < hi[:, None])).view(np.int8)
    return rng.permuted(sorted_rows, axis=1)


def _level_codes(levels: list[list[str]], factors: int) -> tuple[np.ndarray, list[int]]:
    codes = np.zeros((len(levels), factors), dtype=np.intp)
    n_levels = []
    for f in range(factors):
        seen: dict[str, int] = {}
        for i, unit in enumerate(levels):
            codes[i, f] = seen.setdefault(unit[f], len(seen))
        n_levels.append(max(len(seen), 1))
    return codes, n_levels


def minimisation_draws(
    codes: np.ndarray,
    n_levels: list[int],
    weights: np.ndarray,
    ratios: Sequence[float],
    probability: float,
    rows: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``rows`` redraws of Pocock-Simon minimisation, (rows, people) arm indexes.

    People are taken in arrival order as :func:`assignment.minimisation_next` takes them
    (the same imbalance totals, tie tolerance, favoured-arm probability and inverse-CDF
    pick), but each step is one array operation across all ``rows`` draws; ``codes[i, f]``
    is person i's level of factor f.
    """
    r = [float(x) for x in ratios]
    K = len(r)
    table = _pick_table([x / sum(r) for x in r], probability)
    offsets = np.concatenate([[0], np.cumsum(n_levels)[:-1]]).astype(np.intp)
    counts = np.zeros((int(sum(n_levels)), K, rows))  # (factor, level) -> arm -> draw
    bump = np.eye(K)[None, :, :, None]  # (factor, candidate arm, arm, draw)
    scale = np.asarray(r)[None, None, :, None]
    w = np.asarray(weights, dtype=float)[:, None, None]
    powers = 1 << np.arange(K)
    out = np.empty((codes.shape[0], rows), dtype=np.int8)
    for i in range(codes.shape[0]):
        at = offsets + codes[i]
        adjusted = (counts[at][:, None] + bump) / scale
        # imbalance if this person joined each arm, summed factor by factor (F, K, draws)
        totals = (w * (adjusted.max(axis=2) - adjusted.min(axis=2))).sum(axis=0)
        best = totals.min(axis=0)  # totals are never negative
        code = powers @ (totals <= best + A._TIE * np.maximum(best, 1.0))
        u = rng.random(rows)
        pick = (u[:, None] >= table.edges[code]).sum(axis=1)  # the first arm whose edge is above u
        past = u >= table.end[code]
        if past.any():  # rounding left u past the last edge: the last arm with a chance
            pick[past] = table.last[code[past]]
        for k in range(K):
            counts[at, k] += pick == k
        out[i] = pick
    return out.T


@dataclass(frozen=True)
class _PickTable:
    edges: np.ndarray  # (preferred set, K - 1): cumulative chances of arms 0 .. K - 2
    end: np.ndarray  # (preferred set,): the last cumulative chance (1, up to rounding)
    last: np.ndarray  # (preferred set,): the last arm with a chance


def _pick_table(shares: list[float], probability: float) -> _PickTable:
    """For each set of favoured arms (bit k set: arm k), the arms' chances as
    :func:`assignment.minimisation_next` computes them (in Python floats, added up in arm
    order), so a draw's pick is a table look-up."""
    K = len(shares)
    edges = np.zeros((1 << K, max(K - 1, 0)))
    end = np.ones(1 << K)
    last = np.full(1 << K, K - 1, dtype=np.int64)
    for code in range(1, 1 << K):
        preferred = [bool(code >> k & 1) for k in range(K)]
        m = sum(preferred)
        if m == K:
            p = list(shares)
        else:
            p = [probability / m if q else (1 - probability) / (K - m) for q in preferred]
        acc = list(itertools.accumulate(p))
        edges[code] = acc[:-1]
        end[code] = acc[-1]
        last[code] = max(k for k in range(K) if p[k] > 0)
    return _PickTable(edges, end, last)


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
    member = np.array([index[e.place or ""] for e in people], dtype=np.intp)
    arms = [a.name for a in protocol.arms]
    ratios = [a.ratio for a in protocol.arms]
    if isinstance(d, SteppedWedgeDesign):
        period = np.array([int(e.detail["period"]) for e in people], dtype=np.int64)
        orders = _wedge_orders(len(names), d.places_per_step, draws, seed)  # (draws, places)
        exact = _wedge_count(d.places_per_step) <= draws
        how = f"all {len(orders)} orders" if exact else f"{draws} random orders"

        def crossed(g: int, cols: np.ndarray) -> np.ndarray:
            crossover = orders[g * GROUP : (g + 1) * GROUP][:, member[cols]]
            return (period[cols][None, :] >= crossover).view(np.int8)

        return Redraws(
            units, len(orders), exact, f"stepped wedge: {how} of crossing over", GROUP, crossed
        )
    place_draws, exact, how = _place_assignments(d, places, names, arms, ratios, arm, draws, seed)

    def expand(g: int, cols: np.ndarray) -> np.ndarray:
        return place_draws[g * GROUP : (g + 1) * GROUP][:, member[cols]]

    return Redraws(units, len(place_draws), exact, how, GROUP, expand)


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
