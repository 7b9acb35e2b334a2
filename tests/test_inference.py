"""Randomisation inference and the wild cluster bootstrap against brute-force loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from evalkit.estimators import estimate_effect
from evalkit.inference import (
    _weights,
    complete_within_blocks,
    complete_within_blocks_chunks,
    randomisation_test,
    wild_cluster_bootstrap,
)

SIZES = np.array([12, 20, 25, 31, 40, 44, 57, 70])  # eight places of unequal size


def place_pilot(seed: int, effect: float = 0.0):
    """Eight places, four treated, an individual covariate and place effects."""
    rng = np.random.default_rng(seed)
    place = np.repeat(np.arange(8), SIZES)
    treated = np.array([1, 0, 0, 1, 1, 0, 1, 0])[place]
    x = rng.normal(size=place.size)
    y = rng.normal(0, 0.5, 8)[place] + rng.normal(size=place.size) + 0.4 * x + effect * treated
    return y, x, treated, place


def ols_coef(y, X, j):
    return np.linalg.lstsq(X, y, rcond=None)[0][j]


# --- assignments ----------------------------------------------------------------------


def test_eight_places_four_treated_are_enumerated_exactly():
    _, _, treated, place = place_pilot(1)
    A, exact = complete_within_blocks(treated, None, place, 1000, np.random.default_rng(0))
    assert exact and A.shape == (70, place.size) and A.dtype == np.int8
    per_place = A[:, np.searchsorted(place, np.arange(8))]
    assert len({tuple(row) for row in per_place}) == 70
    assert (per_place.sum(axis=1) == 4).all()
    assert (per_place[:, place] == A).all()  # members of a place share its draw
    assert any((row == treated).all() for row in A)  # the observed assignment is one of them


def test_blocked_enumeration_and_sampling_keep_block_totals():
    rng = np.random.default_rng(2)
    place = np.repeat(np.arange(8), 3)
    blocks = np.repeat([0, 0, 0, 0, 1, 1, 1, 1], 3)
    treated = np.repeat([1, 1, 0, 0, 0, 1, 0, 1], 3)
    A, exact = complete_within_blocks(treated, blocks, place, 100, rng)
    assert exact and A.shape[0] == math.comb(4, 2) ** 2
    assert len({tuple(r) for r in A}) == 36
    assert (A[:, blocks == 0].sum(axis=1) == 6).all() and (A[:, blocks == 1].sum(axis=1) == 6).all()
    sampled, exact = complete_within_blocks(treated, blocks, place, 20, rng)
    assert not exact and sampled.shape == (20, 24)
    assert (sampled[:, blocks == 0].sum(axis=1) == 6).all()


@pytest.mark.parametrize("draws", [50, 2000])  # an exact listing (36) and sampled draws
def test_chunked_assignments_are_those_of_the_whole_array(draws):
    place = np.repeat(np.arange(8), 3)
    blocks = np.repeat([0, 0, 0, 0, 1, 1, 1, 1], 3)
    treated = np.repeat([1, 1, 0, 0, 0, 1, 0, 1], 3)
    whole, exact = complete_within_blocks(treated, blocks, place, draws, np.random.default_rng(4))
    chunks, chunked_exact = complete_within_blocks_chunks(
        treated, blocks, place, draws, np.random.default_rng(4)
    )
    assert chunked_exact == exact == (draws >= 36)
    assert np.array_equal(np.concatenate(list(chunks)), whole)


def test_assignments_for_a_borough_pilot_come_a_chunk_at_a_time():
    """14,000 people in three benefit blocks, 10,000 draws: the chunks are made as they are
    read, each about 4 million values (4 MB), never the 140 MB of all draws at once."""
    rng = np.random.default_rng(5)
    blocks = rng.integers(0, 3, 14_000)
    treated = (rng.random(14_000) < 0.5).astype(int)
    chunks, exact = complete_within_blocks_chunks(treated, blocks, None, 10_000, rng)
    first = [next(chunks) for _ in range(3)]
    assert not exact and all(c.shape == (285, 14_000) and c.dtype == np.int8 for c in first)
    for b in range(3):
        assert (first[0][:, blocks == b].sum(axis=1) == treated[blocks == b].sum()).all()
    assert sum(c.shape[0] for c in chunks) == 10_000 - 3 * 285


def test_sampled_assignments_are_uniform_and_compact():
    rng = np.random.default_rng(3)
    n = 600
    blocks = np.repeat([0, 1, 2], [100, 200, 300])
    treated = np.concatenate(
        [np.r_[np.ones(k), np.zeros(m - k)] for m, k in ((100, 30), (200, 100), (300, 200))]
    )
    A, exact = complete_within_blocks(treated, blocks, None, 4000, rng)
    assert not exact and A.dtype == np.int8 and A.nbytes == 4000 * n
    for b, share in ((0, 0.3), (1, 0.5), (2, 2 / 3)):
        assert (A[:, blocks == b].sum(axis=1) == treated[blocks == b].sum()).all()
        freq = A[:, blocks == b].mean(axis=0)  # each person's chance of treatment
        assert np.abs(freq - share).max() < 5 * math.sqrt(share * (1 - share) / 4000)


def test_assignment_inputs_are_checked():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same for every member of a cluster"):
        complete_within_blocks(np.array([1, 0, 1, 1]), None, np.array([0, 0, 1, 1]), 10, rng)
    with pytest.raises(ValueError, match="within one block"):
        complete_within_blocks(
            np.array([1, 1, 0, 0]), np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]), 10, rng
        )
    with pytest.raises(ValueError, match="0/1"):
        complete_within_blocks(np.array([2, 0]), None, None, 10, rng)


# --- randomisation tests --------------------------------------------------------------


@pytest.mark.parametrize("effect", [0.0, 1.5])
def test_exact_p_value_equals_brute_force_over_all_70_assignments(effect):
    y, x, treated, place = place_pilot(4, effect)
    Z = np.column_stack([np.ones_like(x), x])
    A, exact = complete_within_blocks(treated, None, place, 1000, np.random.default_rng(0))
    result = randomisation_test(y, Z, treated, A, exact=exact)
    observed = ols_coef(y, np.column_stack([Z, treated]), 2)
    null = []
    for chosen in itertools.combinations(range(8), 4):
        d = np.isin(place, chosen).astype(float)
        null.append(ols_coef(y, np.column_stack([Z, d]), 2))
    null = np.array(null)
    brute_p = np.mean(np.abs(null) >= abs(observed) * (1 - 1e-12))
    assert result.exact and result.draws == 70 and result.statistic == "estimate"
    assert result.p_value == brute_p
    assert result.observed == pytest.approx(observed, rel=1e-10)
    np.testing.assert_allclose(np.sort(result.null), np.sort(null), rtol=1e-9, atol=1e-12)
    if effect:
        assert result.p_value == pytest.approx(2 / 70)  # the observed split and its mirror


def test_t_statistic_matches_estimate_effect():
    y, x, treated, place = place_pilot(5)
    Z = np.column_stack([np.ones_like(x), x])
    A, _ = complete_within_blocks(treated, None, place, 1000, np.random.default_rng(0))
    clustered = randomisation_test(y, Z, treated, A[:12], statistic="t", cluster=place)
    plain = randomisation_test(y, Z, treated, iter([A[:5], A[5:12]]), statistic="t")
    frame = pd.DataFrame({"y": y, "x": x, "place": place})
    for i in range(12):
        frame["arm"] = A[i]
        cr2 = estimate_effect(frame, "y", "arm", ["x"], cluster="place")
        hc2 = estimate_effect(frame, "y", "arm", ["x"])
        assert clustered.null[i] == pytest.approx(cr2.estimate / cr2.std_error, rel=1e-9)
        assert plain.null[i] == pytest.approx(hc2.estimate / hc2.std_error, rel=1e-9)
    frame["arm"] = treated
    cr2 = estimate_effect(frame, "y", "arm", ["x"], cluster="place")
    assert clustered.observed == pytest.approx(cr2.estimate / cr2.std_error, rel=1e-9)


def test_randomisation_p_values_are_uniform_under_the_null():
    """300 simulated individually randomised pilots (40 people, two blocks), no effect:
    sampled-draw p-values should look uniform."""
    rng = np.random.default_rng(20240613)
    blocks = np.repeat([0, 1], [16, 24])
    Z = np.column_stack([np.ones(40), blocks])
    base = np.r_[np.ones(8), np.zeros(8), np.ones(12), np.zeros(12)]
    p_values = []
    for _ in range(300):
        treated = np.concatenate([rng.permutation(base[:16]), rng.permutation(base[16:])])
        y = rng.standard_t(4, 40) + 0.8 * blocks  # heavy tails do not matter under the null
        A, exact = complete_within_blocks(treated, blocks, None, 500, rng)
        p_values.append(randomisation_test(y, Z, treated, A, exact=exact).p_value)
    p_values = np.array(p_values)
    assert stats.kstest(p_values, "uniform").pvalue > 0.05
    assert 0.02 <= np.mean(p_values <= 0.05) <= 0.09
    deciles = np.histogram(p_values, bins=10, range=(0, 1))[0]
    assert deciles.min() >= 15 and deciles.max() <= 45, deciles


def test_randomisation_inputs_are_checked():
    y, _, treated, _ = place_pilot(6)
    with pytest.raises(ValueError, match="'estimate' or 't'"):
        randomisation_test(y, None, treated, treated[None], statistic="z")
    with pytest.raises(ValueError, match="one value per unit"):
        randomisation_test(y, None, treated, np.ones((3, 5)))
    with pytest.raises(ValueError, match="no assignments"):
        randomisation_test(y, None, treated, [])


# --- wild cluster bootstrap -----------------------------------------------------------


def brute_wcr_p(y, X, cluster, term, V, beta0=0.0):
    """The WCR bootstrap by refitting: impose the null, flip residuals by cluster, refit,
    and compare CR1 t statistics (statsmodels' cluster errors are Stata's CR1)."""
    codes = pd.factorize(cluster, sort=True)[0]
    x = X[:, term]
    others = np.delete(X, term, axis=1)
    target = y - beta0 * x
    gamma = np.linalg.lstsq(others, target, rcond=None)[0]
    fitted, resid = others @ gamma + beta0 * x, target - others @ gamma

    def t_of(outcome):
        fit = sm.OLS(outcome, X).fit(cov_type="cluster", cov_kwds={"groups": codes})
        return (fit.params[term] - beta0) / fit.bse[term]

    t_obs = t_of(y)
    t_star = np.array([t_of(fitted + resid * v[codes]) for v in V])
    return np.mean(np.abs(t_star) >= abs(t_obs) * (1 - 1e-12))


def test_wild_bootstrap_matches_a_refitting_loop_with_the_same_draws():
    y, x, treated, place = place_pilot(7, effect=0.6)
    X = np.column_stack([np.ones_like(x), treated, x])
    result = wild_cluster_bootstrap(y, X, place, 1, 399, rng=np.random.default_rng(11))
    V, kind = _weights("auto", 8, 399, np.random.default_rng(11))
    assert result.weights == kind == "webb" and result.draws == 399
    assert set(np.unique(np.abs(V)).round(6)) == {0.707107, 1.0, 1.224745}
    assert result.p_value == brute_wcr_p(y, X, place, 1, V)


def test_wild_bootstrap_interval_ends_are_where_p_crosses_alpha():
    y, x, treated, place = place_pilot(8, effect=0.6)
    X = np.column_stack([np.ones_like(x), treated, x])
    result = wild_cluster_bootstrap(y, X, place, 1, 199, rng=np.random.default_rng(12))
    V, _ = _weights("auto", 8, 199, np.random.default_rng(12))
    beta = ols_coef(y, X, 1)
    assert result.conf_low < beta < result.conf_high
    width = result.conf_high - result.conf_low
    step = 1e-7 * width
    # Just inside each end the refitting loop does not reject; just outside it does.
    assert brute_wcr_p(y, X, place, 1, V, result.conf_low + step) > 0.05
    assert brute_wcr_p(y, X, place, 1, V, result.conf_low - step) <= 0.05
    assert brute_wcr_p(y, X, place, 1, V, result.conf_high - step) > 0.05
    assert brute_wcr_p(y, X, place, 1, V, result.conf_high + step) <= 0.05


def test_wild_bootstrap_weights_by_number_of_clusters():
    rng = np.random.default_rng(13)
    G = 14
    cluster = np.repeat(np.arange(G), 10)
    X = np.column_stack([np.ones(140), np.repeat(np.arange(G) % 2, 10), rng.normal(size=140)])
    y = rng.normal(size=140) + rng.normal(size=G)[cluster]
    many = wild_cluster_bootstrap(y, X, cluster, 1, 9999, rng=np.random.default_rng(1))
    assert many.weights == "rademacher" and many.draws == 9999
    few = wild_cluster_bootstrap(y, X, cluster, 1, 2**G, rng=np.random.default_rng(1))
    assert few.weights == "rademacher" and few.draws == 2**G  # every sign pattern once
    webb = wild_cluster_bootstrap(
        y, X, cluster, 1, 999, rng=np.random.default_rng(1), weights="webb"
    )
    assert webb.weights == "webb"
    # p-values agree closely across weight schemes on 14 clusters
    assert abs(many.p_value - few.p_value) < 0.03 and abs(many.p_value - webb.p_value) < 0.05
    with pytest.raises(ValueError, match="weights must be"):
        wild_cluster_bootstrap(y, X, cluster, 1, 99, rng=rng, weights="mammen")
    with pytest.raises(ValueError, match="term must index"):
        wild_cluster_bootstrap(y, X, cluster, 3, 99, rng=rng)
    with pytest.raises(ValueError, match="collinear"):
        wild_cluster_bootstrap(y, np.column_stack([X, X[:, 2]]), cluster, 1, 99, rng=rng)


def test_wild_bootstrap_size_with_eight_places():
    """No effect, 8 unequal places, Webb weights: the 5% test rejects about 5% of the time."""
    rng = np.random.default_rng(20240614)
    place = np.repeat(np.arange(8), SIZES)
    rejections = 0
    sims = 400
    for _ in range(sims):
        treated = rng.permutation(np.repeat([0, 1], 4))[place]
        x = rng.normal(size=place.size)
        y = rng.normal(0, 0.5, 8)[place] + rng.normal(size=place.size) + 0.4 * x
        X = np.column_stack([np.ones_like(x), treated, x])
        rejections += wild_cluster_bootstrap(y, X, place, 1, 399, rng=rng).p_value <= 0.05
    assert 0.02 <= rejections / sims <= 0.09
