"""Iteration chains: pooling, Bayesian updating, the next iteration's size, and the
`init --from` and `learn` commands."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.meta_analysis import combine_effects

from evalkit.effects import Z_95_ONE_SIDED, bayesian_reading
from evalkit.learn import (
    ChainError,
    bayes_chain,
    chain,
    changes,
    iteration_text,
    next_iteration,
    pool,
)
from evalkit.protocol import Prior

Z975 = 1.959963984540054
Z80 = 0.8416212335729143


# --- the chain -----------------------------------------------------------------------


def test_chain_follows_links_back_and_forward():
    links = {"a": None, "b": "a", "c": "b", "other": None}
    assert chain("a", links) == ["a", "b", "c"]
    assert chain("b", links) == ["a", "b", "c"]
    assert chain("c", links) == ["a", "b", "c"]
    assert chain("other", links) == ["other"]


def test_chain_refuses_cycles():
    with pytest.raises(ChainError, match="loop: a -> b -> a"):
        chain("a", {"a": "b", "b": "a"})
    with pytest.raises(ChainError, match="loop"):
        chain("p", {"p": "x", "x": "y", "y": "x"})
    with pytest.raises(ChainError, match="loop"):
        chain("a", {"a": "a"})


def test_chain_refuses_a_fork_after_the_pilot_but_not_before_it():
    links = {"a": None, "b": "a", "c": "a"}
    with pytest.raises(ChainError, match="forks after 'a': b, c"):
        chain("a", links)
    assert chain("b", links) == ["a", "b"]
    assert chain("c", links) == ["a", "c"]


def test_chain_refuses_unknown_pilots():
    with pytest.raises(ChainError, match="'z' is not a registered pilot"):
        chain("z", {"a": None})
    with pytest.raises(ChainError, match="iteration of 'gone'"):
        chain("b", {"b": "gone"})


def test_changes_leave_out_the_link_fields():
    old = {"id": "a", "iteration_of": None, "version": "1.0", "sample_size": {"n": 100}}
    new = {"id": "b", "iteration_of": "a", "version": "1.0", "sample_size": {"n": 200}}
    assert changes(old, new) == [
        {"path": "sample_size.n", "kind": "changed", "old": 100, "new": 200}
    ]


# --- pooling -------------------------------------------------------------------------


def test_fixed_effect_of_two_iterations_by_hand():
    # y1 = 0.10, se1 = 0.05 -> w1 = 1 / 0.0025 = 400
    # y2 = 0.20, se2 = 0.10 -> w2 = 1 / 0.01 = 100
    # pooled = (400 * 0.10 + 100 * 0.20) / 500 = (40 + 20) / 500 = 0.12
    # SE = sqrt(1 / 500) = 0.0447214; 95% CI 0.12 -/+ 1.959964 * 0.0447214
    # Q = 400 * 0.02^2 + 100 * 0.08^2 = 0.16 + 0.64 = 0.80 < 1 df, so tau^2 = 0, I^2 = 0
    # HKSJ: SE^2 = Q / (1 * 500) = 0.0016 -> SE 0.04; t(1 df, 0.975) = 12.7062
    r = pool([0.10, 0.20], [0.05, 0.10])
    f, rnd = r["fixed"], r["random"]
    assert f["estimate"] == pytest.approx(0.12, abs=1e-12)
    assert f["std_error"] == pytest.approx(0.0447214, abs=1e-7)
    assert f["conf_low"] == pytest.approx(0.12 - Z975 * 0.0447214, abs=1e-6)
    assert f["conf_high"] == pytest.approx(0.2076528, abs=1e-6)
    assert f["weights"] == pytest.approx([0.8, 0.2])
    assert rnd["q"] == pytest.approx(0.80, abs=1e-12)
    assert rnd["tau2"] == 0.0 and rnd["i2"] == 0.0
    assert rnd["estimate"] == pytest.approx(0.12, abs=1e-12)
    assert rnd["hksj"]["std_error"] == pytest.approx(0.04, abs=1e-12)
    assert rnd["hksj"]["conf_high"] == pytest.approx(0.12 + 12.7062047 * 0.04, abs=1e-6)
    assert rnd["q_p"] == pytest.approx(stats.chi2.sf(0.8, 1), abs=1e-12)


def test_random_effects_of_two_heterogeneous_iterations_by_hand():
    # y = 0.0 (w 400) and 0.3 (w 100): fixed = 30 / 500 = 0.06
    # Q = 400 * 0.06^2 + 100 * 0.24^2 = 1.44 + 5.76 = 7.2 on 1 df
    # C = 500 - (400^2 + 100^2) / 500 = 500 - 340 = 160; tau^2 = (7.2 - 1) / 160 = 0.03875
    # I^2 = 6.2 / 7.2; w* = 1 / 0.04125 and 1 / 0.04875
    r = pool([0.0, 0.3], [0.05, 0.10])
    rnd = r["random"]
    assert r["fixed"]["estimate"] == pytest.approx(0.06, abs=1e-12)
    assert rnd["q"] == pytest.approx(7.2, abs=1e-10)
    assert rnd["tau2"] == pytest.approx(0.03875, abs=1e-12)
    assert rnd["i2"] == pytest.approx(6.2 / 7.2, abs=1e-12)
    w1, w2 = 1 / 0.04125, 1 / 0.04875
    assert rnd["estimate"] == pytest.approx(0.3 * w2 / (w1 + w2), abs=1e-12)
    assert rnd["estimate"] == pytest.approx(0.1375, abs=1e-4)
    assert rnd["std_error"] == pytest.approx(math.sqrt(1 / (w1 + w2)), abs=1e-12)


def test_dersimonian_laird_matches_statsmodels_on_three_iterations():
    # By hand: w = 100, 50, 66.67; fixed 0.223077; Q = 2.884615 on 2 df;
    # C = 216.667 - 16944.4 / 216.667 = 138.462; tau^2 = 0.884615 / 138.462 = 0.0063889
    y = np.array([0.10, 0.30, 0.35])
    v = np.array([0.01, 0.02, 0.015])
    r = pool(list(y), list(np.sqrt(v)))["random"]
    assert r["tau2"] == pytest.approx(0.0063889, abs=1e-7)
    ref = combine_effects(y, v, method_re="dl")
    assert r["tau2"] == pytest.approx(ref.tau2, rel=1e-10)
    assert r["q"] == pytest.approx(ref.q, rel=1e-10)
    assert r["i2"] == pytest.approx(ref.i2, rel=1e-10)
    assert r["estimate"] == pytest.approx(ref.mean_effect_re, rel=1e-10)
    assert r["std_error"] == pytest.approx(ref.sd_eff_w_re, rel=1e-10)
    assert r["hksj"]["std_error"] == pytest.approx(ref.sd_eff_w_re_hksj, rel=1e-10)
    low, high = ref.conf_int(use_t=False)[1]
    assert (r["conf_low"], r["conf_high"]) == pytest.approx((low, high), rel=1e-10)
    t2 = stats.t.ppf(0.975, 2)
    assert r["hksj"]["conf_low"] == pytest.approx(ref.mean_effect_re - t2 * ref.sd_eff_w_re_hksj)


def test_one_iteration_pools_to_itself():
    r = pool([0.2], [0.1])
    assert r["fixed"]["estimate"] == pytest.approx(0.2, abs=1e-15)
    assert r["random"]["estimate"] == r["fixed"]["estimate"]
    assert r["fixed"]["std_error"] == pytest.approx(0.1, abs=1e-15)
    assert r["random"]["tau2"] is None and r["random"]["hksj"] is None


def test_pool_refuses_bad_input():
    with pytest.raises(ValueError):
        pool([0.1, 0.2], [0.1])
    with pytest.raises(ValueError):
        pool([0.1], [0.0])


# --- Bayesian updating ---------------------------------------------------------------


def test_bayesian_chain_equals_one_update_with_the_product_of_likelihoods():
    ys, ses = [0.12, -0.02, 0.08], [0.06, 0.05, 0.04]
    steps = bayes_chain(ys, ses, [0.05] * 3, 0.01, 0.03, "higher_is_better")
    # the product of normal likelihoods is normal with the inverse-variance mean and SE
    f = pool(ys, ses)["fixed"]
    once = bayesian_reading(
        f["estimate"],
        f["std_error"],
        Prior(kind="normal", mean=0.01, sd=0.03),
        0.05,
        "higher_is_better",
    )
    last = steps[-1]
    assert last["posterior_mean"] == pytest.approx(once["posterior_mean"], rel=1e-12)
    assert last["posterior_sd"] == pytest.approx(once["posterior_sd"], rel=1e-12)
    assert last["p_benefit"] == pytest.approx(once["p_benefit"], rel=1e-10)
    # each posterior is the next prior
    for a, b in itertools.pairwise(steps):
        assert (b["prior_mean"], b["prior_sd"]) == (a["posterior_mean"], a["posterior_sd"])


def test_bayesian_chain_from_a_flat_prior_ends_at_the_fixed_effect():
    ys, ses = [0.3, 0.1], [0.1, 0.05]
    steps = bayes_chain(ys, ses, [0.1, 0.1], None, None, "higher_is_better")
    f = pool(ys, ses)["fixed"]
    assert steps[0]["posterior_mean"] == 0.3  # flat prior: the first likelihood
    assert steps[-1]["posterior_mean"] == pytest.approx(f["estimate"], rel=1e-12)
    assert steps[-1]["posterior_sd"] == pytest.approx(f["std_error"], rel=1e-12)


def test_bayesian_chain_first_step_is_the_pilots_own_reading_and_respects_direction():
    mid = 2.0
    own = bayesian_reading(-1.5, 1.0, Prior(kind="sceptical"), mid, "lower_is_better")
    steps = bayes_chain(
        [-1.5, -2.5], [1.0, 0.8], [mid, mid], 0.0, mid / Z_95_ONE_SIDED, "lower_is_better"
    )
    assert steps[0]["posterior_mean"] == pytest.approx(own["posterior_mean"], rel=1e-12)
    assert steps[0]["p_benefit"] == pytest.approx(own["p_benefit"], rel=1e-12)
    post = stats.norm(steps[1]["posterior_mean"], steps[1]["posterior_sd"])
    assert steps[1]["p_benefit"] == pytest.approx(post.cdf(0.0))  # lower is better
    assert steps[1]["p_beyond_mid"] == pytest.approx(post.cdf(-mid))
    assert steps[1]["p_benefit"] > steps[0]["p_benefit"] > 0.5
    assert steps[1]["words"].endswith(".")


# --- the next iteration --------------------------------------------------------------


def test_next_iteration_size_by_hand():
    # target SE = 0.1 / (1.959964 + 0.841621) = 0.0356940; 1 / target^2 = 784.888
    # pooled SE 0.05 -> 1 / V = 400; s^2 = 0.06^2 * 200 = 0.72
    # n = ceil(0.72 * (784.888 - 400)) = ceil(277.12) = 278
    r = next_iteration(0.05, 0.1, 0.05, 0.06, 200)
    target = (0.1 / (Z975 + Z80)) ** 2
    assert r["target_std_error"] == pytest.approx(math.sqrt(target), rel=1e-9)
    assert r["per_person_variance"] == pytest.approx(0.72, rel=1e-12)
    assert r["participants"] == 278 and not r["settled"] and r["places"] is None
    # 278 people reach the target; 277 do not
    assert 1 / (1 / 0.05**2 + 278 / 0.72) <= target < 1 / (1 / 0.05**2 + 277 / 0.72)


def test_next_iteration_places_and_settled():
    r = next_iteration(0.05, 0.1, 0.05, 0.06, 200, last_clusters=20)
    assert r["mean_place_size"] == 10 and r["places"] == 28
    assert any("places of about 10 people" in a for a in r["assumptions"])
    done = next_iteration(0.03, 0.1, 0.05, 0.06, 200)
    assert done["settled"] and done["participants"] is None


def test_next_iteration_gives_the_pooled_evidence_80_percent_power():
    # Seeded simulation: the true effect is the MID, the evidence so far is N(MID, V) and the
    # next iteration N(MID, s^2 / n); the pooled z-test should reject about 80% of the time.
    pooled_se, mid, last_se, last_n = 0.05, 0.1, 0.06, 200
    n = next_iteration(pooled_se, mid, 0.05, last_se, last_n)["participants"]
    rng = np.random.default_rng(20270401)
    draws = 40_000
    v_next = last_se**2 * last_n / n
    a = rng.normal(mid, pooled_se, draws)
    b = rng.normal(mid, math.sqrt(v_next), draws)
    w_a, w_b = 1 / pooled_se**2, 1 / v_next
    est = (w_a * a + w_b * b) / (w_a + w_b)
    power = float(np.mean(np.abs(est) * math.sqrt(w_a + w_b) > Z975))
    assert 0.79 <= power <= 0.82


# --- protocol text of a new iteration ------------------------------------------------


def test_iteration_text_edits_the_top_level_lines_and_keeps_comments():
    text = '# a comment\nid: old\ntitle: T\nversion: "2.3"\niteration_of: null\nx:\n  id: keep\n'
    out = iteration_text(text, "new-one", "old")
    assert out == (
        '# a comment\nid: new-one\ntitle: T\nversion: "1.0"\niteration_of: old\nx:\n  id: keep\n'
    )
    added = iteration_text("id: old\nversion: '1.1'\n", "new-one", "old")
    assert added == 'id: new-one\nversion: "1.0"\niteration_of: old\n'
    assert iteration_text("title: no id\n", "new-one", "old") is None


# --- the commands --------------------------------------------------------------------


def _results(pilot: str, protocol_hash: str, estimate: float, se: float, n: int) -> dict:
    mid = 0.07
    return {
        "schema_version": "1.0",
        "pilot": pilot,
        "exploratory": False,
        "deviations": [],
        "as_of": "2028-06-01",
        "unit": "participant",
        "alpha": 0.05,
        "primary": {
            "outcome": "in_work_13wk",
            "label": "In paid work for 13 weeks or more within 12 months",
            "type": "binary",
            "direction": "higher_is_better",
            "minimal_important_difference": mid,
            "effect": {
                "estimate": estimate,
                "std_error": se,
                "df": n - 10,
                "conf_low": estimate - Z975 * se,
                "conf_high": estimate + Z975 * se,
                "se_type": "HC2",
                "n": n,
                "clusters": None,
                "scale": "difference in proportions",
            },
            "bayes": {"prior": {"kind": "sceptical", "mean": 0.0, "sd": mid / Z_95_ONE_SIDED}},
        },
        "provenance": {"protocol_hash": protocol_hash},
    }


def _write_results(run, pilot: str, estimate: float, se: float, n: int) -> None:
    sha = json.loads(run("validate", pilot, "--json").output)["sha256"]
    path = run.ws / "analyses" / pilot / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_results(pilot, sha, estimate, se, n)))


def test_init_from_copies_the_registered_protocol_and_records_the_link(cli_in):
    run = cli_in
    run("init", "keyworker-one")
    run("register", "keyworker-one")
    out = run("init", "keyworker-two", "--from", "keyworker-one").output
    assert "iteration_of: keyworker-one" in out
    source = (run.ws / "protocols" / "keyworker-one.yaml").read_text()
    copied = (run.ws / "protocols" / "keyworker-two.yaml").read_text()
    assert "\nid: keyworker-two\n" in copied and "\niteration_of: keyworker-one\n" in copied
    assert copied.count("\n# ") == source.count("\n# ") > 3  # comments kept
    assert (
        copied.replace("keyworker-two", "keyworker-one").replace(
            "iteration_of: keyworker-one", "iteration_of: null"
        )
        == source
    )
    data = json.loads(run("validate", "keyworker-two", "--json").output)
    assert data["valid"] and data["pilot"] == "keyworker-two" and data["version"] == "1.0"
    assert "Registered." in run("register", "keyworker-two").output

    exists = run("init", "keyworker-two", "--from", "keyworker-one", ok=1).output
    assert "already exists" in exists and "--force" in exists
    run("init", "keyworker-two", "--from", "keyworker-one", "--force")


def test_init_from_refuses_an_unregistered_or_changed_source(cli_in):
    run = cli_in
    run("init", "draft-pilot")
    refused = run("init", "next-pilot", "--from", "draft-pilot", ok=1).output
    assert "cannot start an iteration of 'draft-pilot': it is not registered" in refused
    assert "evalkit register protocols/draft-pilot.yaml" in refused
    assert not (run.ws / "protocols" / "next-pilot.yaml").exists()

    run("register", "draft-pilot")
    path = run.ws / "protocols" / "draft-pilot.yaml"
    path.write_text(path.read_text().replace("target_units: 800", "target_units: 900"))
    changed = run("init", "next-pilot", "--from", "draft-pilot", ok=1).output
    assert "not the current registered version" in changed
    assert "sample_size.target_units" in changed
    assert not (run.ws / "protocols" / "next-pilot.yaml").exists()


def test_register_refuses_a_link_to_an_unregistered_pilot(cli_in):
    run = cli_in
    run("init", "lonely-pilot")
    path = run.ws / "protocols" / "lonely-pilot.yaml"
    path.write_text(path.read_text().replace("iteration_of: null", "iteration_of: never-was"))
    assert run("validate", "lonely-pilot").exit_code == 0  # the file alone is valid
    out = run("register", "lonely-pilot", ok=1).output
    assert "iteration_of names 'never-was', which is not registered" in out


def test_amend_refuses_links_that_go_round_in_a_loop(cli_in):
    run = cli_in
    run("init", "first-pilot")
    run("register", "first-pilot")
    run("init", "second-pilot", "--from", "first-pilot")
    run("register", "second-pilot")
    path = run.ws / "protocols" / "first-pilot.yaml"
    path.write_text(path.read_text().replace("iteration_of: null", "iteration_of: second-pilot"))
    out = run("amend", "first-pilot", "--reason", "relinked", ok=1).output
    assert "loop: first-pilot -> second-pilot -> first-pilot" in out
    assert len(json.loads(run("history", "first-pilot", "--json").output)) == 1


def test_learn_pools_a_chain_of_two_registered_pilots(cli_in):
    run = cli_in
    run("init", "keyworker-one")
    run("register", "keyworker-one")
    run("init", "keyworker-two", "--from", "keyworker-one")
    path = run.ws / "protocols" / "keyworker-two.yaml"
    path.write_text(path.read_text().replace("target_units: 800", "target_units: 400"))
    run("register", "keyworker-two")

    missing = run("learn", "keyworker-one", ok=1).output
    assert "analyses/keyworker-one/results.json does not exist" in missing
    assert "evalkit analyse keyworker-one" in missing

    _write_results(run, "keyworker-one", 0.0, 0.05, 200)
    _write_results(run, "keyworker-two", 0.3, 0.10, 100)
    out = run("learn", "keyworker-one").output
    assert "keyworker-one -> keyworker-two" in out
    assert "sample_size.target_units: 800 -> 400" in out
    assert "barely estimable" in out
    assert "wrote " in out and "keyworker-two/learning.json" in out

    doc = json.loads((run.ws / "analyses" / "keyworker-two" / "learning.json").read_text())
    assert doc["schema_version"] == "1.0" and doc["pilot"] == "keyworker-two"
    assert [c["pilot"] for c in doc["chain"]] == ["keyworker-one", "keyworker-two"]
    # by hand (see test_random_effects_of_two_heterogeneous_iterations_by_hand):
    # fixed (400 * 0.0 + 100 * 0.3) / 500 = 0.06; tau^2 = 0.03875
    assert doc["fixed"]["estimate"] == pytest.approx(0.06, abs=1e-12)
    assert doc["fixed"]["std_error"] == pytest.approx(math.sqrt(1 / 500), abs=1e-12)
    assert doc["random"]["tau2"] == pytest.approx(0.03875, abs=1e-12)
    assert doc["random"]["estimate"] == pytest.approx(0.1375, abs=1e-4)
    assert doc["random"]["hksj"]["df"] == 1
    assert doc["chain"][0]["changes_from_previous"] is None
    assert doc["chain"][1]["changes_from_previous"] == [
        {"path": "sample_size.target_units", "kind": "changed", "old": 800, "new": 400}
    ]
    hashes = [c["registered_hash"] for c in doc["chain"]]
    assert all(len(h) == 64 for h in hashes) and hashes[0] != hashes[1]
    assert [c["registered_version"] for c in doc["chain"]] == [1, 1]
    steps = doc["bayes"]["steps"]
    assert [s["pilot"] for s in steps] == ["keyworker-one", "keyworker-two"]
    assert doc["bayes"]["prior"]["kind"] == "sceptical"
    # s^2 = 0.1^2 * 100 = 1; n = ceil(1 * (1 / target^2 - 500))
    target = (0.07 / (Z975 + Z80)) ** 2
    assert doc["next_iteration"]["participants"] == math.ceil(1 / target - 500)
    assert "Not settled yet" in doc["statement"]
    again = json.loads(run("learn", "keyworker-two", "--json").output)
    assert again == {**doc, "requested": "keyworker-two"}
    assert (
        json.loads((run.ws / "analyses" / "keyworker-two" / "learning.json").read_text()) == again
    )
