"""Allocation concealment: what someone who enrols sees must not predict the next arm.

The replay tests enrol a few hundred seeded referrals one at a time through the CLI, as an
office would, into a stratified blocked design with random block sizes and into a
minimisation design, and keep everything the enrolling person was shown: each `enrol`
(text and --json), `allocate` (--json, --out and text), `export --what allocations` and
`--what analysis`, and `status --json`. The same referrals go into a second pilot with a
different secret. What the arms themselves tell (an unblinded enroller learns each arm)
is not tested here: the arm history permits the guessing inherent to any blocked or
minimised design, which random block sizes and a probability below 1 reduce but do not
remove.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import time_machine
from click.testing import CliRunner

import evalkit.keys
from cli import cli
from evalkit import allocation as AL
from evalkit.canonical import canonical_json
from evalkit.concealment import concealed, declared_shares, enroller_view
from evalkit.ledger import Entry
from evalkit.protocol_file import parse_protocol
from evalkit.randomness import RngFactory
from tests.pilots import REPO, referral, write_csv

WHEN = datetime(2027, 4, 2, 9, 0, tzinfo=UTC)  # registration and every enrolment
PILOT = "kw-pilot"
BLOCKED = "  method: blocked\n  strata: [benefit]\n  block_sizes: [4, 6]"  # the template's
MINIMISATION = (
    "  method: minimisation\n  factors:\n    - field: benefit\n      weight: 2\n"
    "    - field: referral_route\n  probability: 0.8"
)
DESIGNS = {"blocked": BLOCKED, "minimisation": MINIMISATION}
ONE_AT_A_TIME = 200
IN_A_FILE = 40
BLOCK_FIELDS = ("position", "block", "block_size", "position_in_block")
MINIMISATION_FIELDS = ("totals", "preferred")


def _protocol_text(design: str, edits: tuple[tuple[str, str], ...] = ()) -> str:
    text = (REPO / "protocols" / "hackney-keyworker.yaml").read_text()
    text = text.replace("id: hackney-keyworker", f"id: {PILOT}", 1)
    for old, new in ((BLOCKED, DESIGNS[design]), *edits):
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def _secret(seed: int):
    """A stand-in for the secret drawn at registration: seeded, so the test is too."""
    return SimpleNamespace(
        token_bytes=lambda n: hashlib.sha256(f"concealment secret {seed}".encode()).digest()[:n]
    )


class Office:
    """One pilot in its own workspace, store and key folder, run through the CLI as a user
    runs it, at a fixed time and with a seeded secret."""

    def __init__(self, root: Path, design: str, secret: int, edits=()):
        self.root = root
        self.ws = root / "ws"
        (self.ws / "protocols").mkdir(parents=True)
        (self.ws / "protocols" / f"{PILOT}.yaml").write_text(_protocol_text(design, edits))
        self.env = {
            "EVALKIT_KEY_DIR": str(root / "keys"),
            "EVALKIT_USER": "enroller",
            "EVALKIT_DATABASE_URL": None,
        }
        self.url = f"sqlite:///{root / 'evalkit.db'}"
        with mock.patch.object(evalkit.keys, "secrets", _secret(secret)):
            self("register", PILOT)

    def __call__(self, *args: str, ok: int = 0) -> str:
        with time_machine.travel(WHEN, tick=False):
            res = CliRunner().invoke(
                cli,
                ["--workspace", str(self.ws), "--store", self.url, *args],
                env=self.env,
                catch_exceptions=False,
            )
        assert res.exit_code == ok, res.output
        assert "Traceback" not in res.output
        return res.output


def _sets(values: dict[str, str]) -> list[str]:
    return [x for k, v in values.items() for x in ("--set", f"{k}={v}")]


@dataclass
class Seen:
    """Everything the enrolling person was shown, and what the restricted export holds."""

    views: dict[str, str] = field(default_factory=dict)  # what was shown, by where
    entries: list[dict] = field(default_factory=list)  # every entry shown with its detail
    restricted: list[dict] = field(default_factory=list)  # the restricted export's rows
    arms: list[str] = field(default_factory=list)


def _log_rows(text: str) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(text)))
    for r in rows:
        r["detail"] = json.loads(r["detail"])
        r["probabilities"] = json.loads(r["probabilities"])
    return rows


def enrol_as_an_office(root: Path, design: str, secret: int) -> Seen:
    office = Office(root, design, secret)
    rnd = random.Random(2027)  # the same referrals whatever the secret
    referrals = [
        {"id": f"NI{i:04d}", **referral(rnd, eligible=rnd.random() > 0.05)}
        for i in range(ONE_AT_A_TIME + IN_A_FILE)
    ]
    seen = Seen()
    for i, r in enumerate(referrals[:ONE_AT_A_TIME]):
        values = {k: v for k, v in r.items() if k != "id"}
        args = ["enrol", PILOT, "--unit-id", r["id"], *_sets(values)]
        if i % 2:
            seen.views[f"enrol {i}"] = office(*args)
        else:
            out = office(*args, "--json")
            seen.views[f"enrol --json {i}"] = out
            seen.entries.append(json.loads(out))
    first = referrals[0]
    again = ["enrol", PILOT, "--unit-id", first["id"], *_sets(dict(list(first.items())[1:]))]
    seen.views["enrol again"] = office(*again)
    seen.views["enrol again --json"] = office(*again, "--json")
    src = write_csv(root / "referrals.csv", referrals[ONE_AT_A_TIME:])
    out_file = root / "allocated.csv"
    batch = office("allocate", PILOT, str(src), "--out", str(out_file), "--json")
    seen.views["allocate --json"] = batch
    seen.entries += json.loads(batch)["rows"]
    seen.views["allocate --out"] = out_file.read_text()
    seen.views["allocate again"] = office("allocate", PILOT, str(src))
    log = office("export", PILOT, "--what", "allocations")
    seen.views["export allocations"] = log
    seen.entries += _log_rows(log)
    seen.views["export analysis"] = office("export", PILOT, "--what", "analysis")
    seen.views["status --json"] = _status_without_arm_counts(office("status", PILOT, "--json"))
    restricted = office("export", PILOT, "--what", "allocations", "--restricted")
    seen.restricted = _log_rows(restricted)
    seen.arms = [r["arm"] for r in seen.restricted]
    return seen


def _status_without_arm_counts(text: str) -> str:
    """Status with each count by arm replaced by its total over the arms: counts by arm
    are the arms themselves, added up."""
    s = json.loads(text)
    s["allocated"] = {level: sum(c.values()) for level, c in s["allocated"].items()}
    arms = s["consort"]["arms"]
    s["consort"]["arms"] = {
        key: sorted(a[key] for a in arms)
        if isinstance(arms[0][key], str)
        else sum(a[key] or 0 for a in arms)
        for key in arms[0]
    }
    return json.dumps(s, indent=1, sort_keys=True)


ARM_WORDS = re.compile(r"\b(Usual support|Key worker|usual|keyworker)\b")
HASHES = re.compile(r"\b([0-9a-f]{64}|[0-9a-f]{24})\b")


def without_arms_and_hashes(text: str) -> str:
    """The view with every arm (name or label) and every hash or pseudonym blanked: the
    pseudonyms and hashes differ with the secret by design, and carry no arm."""
    return HASHES.sub("HASH", ARM_WORDS.sub("ARM", text))


@pytest.fixture(scope="module", params=list(DESIGNS))
def offices(request, tmp_path_factory) -> tuple[str, Seen, Seen]:
    """The same referrals enrolled into two pilots of one design with different secrets."""
    root = tmp_path_factory.mktemp(f"concealment-{request.param}")
    first = enrol_as_an_office(root / "first", request.param, secret=1)
    second = enrol_as_an_office(root / "second", request.param, secret=2)
    return request.param, first, second


def test_what_an_enroller_sees_is_the_same_whatever_the_secret_but_the_arms(offices):
    """Only the secret decides the arms, so a view that is the same under another secret,
    arms and hashes aside, carries nothing about the sequence but the arms."""
    design, first, second = offices
    assert first.arms != second.arms  # the secrets differ, so do the sequences
    assert first.views.keys() == second.views.keys()
    for where, text in first.views.items():
        a = without_arms_and_hashes(text).splitlines()
        b = without_arms_and_hashes(second.views[where]).splitlines()
        differ = [(x, y) for x, y in zip(a, b, strict=False) if x != y]
        assert len(a) == len(b) and not differ, f"{design}, {where}: {differ[:1]}"


def forced_predictions(rows: list[dict], shares: dict[str, float]) -> list[tuple[str, str]]:
    """The attack from issue 11: once an enroller can see where a block starts (position
    in block 0) and how big it is, its last places are forced when the block's other arms
    are used up. Returns (predicted, actual) for every such allocation; rows without that
    detail give none."""
    blocks: Counter = Counter()  # blocks started, by stratum
    used: dict[tuple, Counter] = defaultdict(Counter)
    out = []
    for r in rows:
        d = r.get("detail") or {}
        if r.get("kind") != "allocation" or not {"block_size", "position_in_block"} <= set(d):
            continue
        if d["position_in_block"] == 0:
            blocks[r["stratum"]] += 1
        block = (r["stratum"], blocks[r["stratum"]])
        left = {a: round(d["block_size"] * p) - used[block][a] for a, p in shares.items()}
        open_arms = [a for a, n in left.items() if n > 0]
        if len(open_arms) == 1:
            out.append((open_arms[0], r["arm"]))
        used[block][r["arm"]] += 1
    return out


def test_no_allocation_is_forced_by_what_an_enroller_sees(offices):
    design, first, _ = offices
    if design != "blocked":
        pytest.skip("blocks only in the blocked design")
    shares = {"usual": 0.5, "keyworker": 0.5}
    assert forced_predictions(first.entries, shares) == []
    # the same attack on the restricted export: every completed block has a forced place
    allocated = [r for r in first.restricted if r["kind"] == "allocation"]
    per_stratum = Counter(r["stratum"] for r in allocated)
    at_least = sum(n // 6 for n in per_stratum.values())
    found = forced_predictions(first.restricted, shares)
    assert len(found) >= at_least > 20
    assert all(predicted == actual for predicted, actual in found)


# --- the rule itself ----------------------------------------------------------------------


def _context(design: str = "blocked") -> AL.Context:
    protocol = parse_protocol(_protocol_text(design), f"{PILOT}.yaml")[0]
    return AL.Context(protocol, "hash", 1, RngFactory.for_test(0), "now", "me")


def test_enroller_view_keeps_only_method_date_reference_and_the_declared_share():
    ctx = _context("minimisation")
    stored = ctx.entry(
        kind="allocation",
        unit="u1",
        arm="keyworker",
        stratum="benefit=ESA|referral_route=GP",
        probabilities={"usual": 0.2, "keyworker": 0.8},
        detail={
            "method": "minimisation",
            "index": 7,
            "totals": {"usual": 3.0, "keyworker": 1.0},
            "preferred": ["keyworker"],
            "exact": True,
            "on": "2027-04-02",
            "ref": "case-7",
            "a_field_added_later": 1,  # hidden until someone decides it is safe
        },
    )
    shown = enroller_view(stored, ctx.protocol)
    assert shown.detail == {
        "method": "minimisation",
        "exact": True,
        "on": "2027-04-02",
        "ref": "case-7",
    }
    assert shown.probabilities == {"usual": 0.5, "keyworker": 0.5}
    assert (shown.arm, shown.stratum, shown.unit) == (stored.arm, stored.stratum, stored.unit)
    other = replace(stored, probabilities={"usual": 0.2, "mentor": 0.8})  # an arm since dropped
    assert enroller_view(other, ctx.protocol).probabilities is None


def test_enroller_view_shows_batches_places_exclusions_and_events_as_stored():
    ctx = _context()
    half = {"usual": 0.5, "keyworker": 0.5}
    stored = [
        ctx.entry(
            kind="allocation",
            unit="u1",
            arm="usual",
            probabilities=half,
            detail={"method": "complete", "batch": 1, "index": 0, "size": 9, "exact": True},
        ),
        ctx.entry(
            kind="allocation",
            level="place",
            unit="Estate A",
            place="Estate A",
            arm="keyworker",
            probabilities=half,
            detail={"method": "cluster", "index": 0, "size": 8, "exact": True},
        ),
        ctx.entry(
            kind="allocation",
            unit="u2",
            place="Estate A",
            detail={"method": "joined_place", "period": 2, "crossover_period": 3},
        ),
        ctx.entry(kind="exclusion", unit="u3", detail={"reasons": ["too young"], "on": "x"}),
        AL.event(ctx, "u1", "withdrawn", "2027-05-01", "moved away"),
    ]
    assert [enroller_view(e, ctx.protocol) for e in stored] == stored


def test_concealment_lasts_until_unblinding_is_recorded():
    ctx = _context()
    log = [AL.event(ctx, None, "note", "2027-05-01", "a note")]
    assert concealed(log)
    assert not concealed([*log, AL.event(ctx, None, "unblinded", "2028-06-01", "ended")])


# --- statistical check: a seeded simulation ----------------------------------------------

HIDDEN_FROM_PREDICTOR = {"arm", "unit", "seq", "entry_hash", "prev_hash", "created_at"}


def _features(view: Entry) -> str:
    """Everything shown but the arm and what is unique to the entry (its pseudonym,
    number, time and hash); the referral's own values are in its stratum."""
    shown = {k: v for k, v in view.__dict__.items() if k not in HIDDEN_FROM_PREDICTOR}
    shown.pop("baseline")  # not shown by enrol; the stratum carries the values that count
    return canonical_json(shown)


def _simulate(protocol, seed: int, n: int) -> list[Entry]:
    """One pilot of ``n`` eligible referrals allocated one at a time from a seeded secret,
    through the code that enrols."""
    secret = hashlib.sha256(f"simulated secret {seed}".encode()).digest()
    rnd = random.Random(seed)
    rows = [(None, f"S{seed}-{i}", referral(rnd)) for i in range(n)]
    refs, problems = AL.check_referrals(protocol, secret, rows, "2027-04-02")
    assert not problems
    ctx = AL.Context(protocol, "sim", 1, RngFactory.for_test(seed), "now", "sim")
    view = AL.MemoryView()
    out = []
    for r in refs:
        e = AL.decide(ctx, view, r)
        view.add(e)
        out.append(e)
    return out


def _predict(table: dict[str, Counter], view: Entry, arms: list[str]) -> str:
    """The arm most often seen with these features in training; for features never seen,
    the arm the view gives the highest chance."""
    seen = table.get(_features(view))
    if seen:
        return max(arms, key=lambda a: (seen[a], -arms.index(a)))
    chances = view.probabilities or {}
    return max(arms, key=lambda a: (chances.get(a, 0.0), -arms.index(a)))


def _score(protocol, shown, train: list[Entry], test: list[Entry]) -> tuple[int, float, float]:
    """How many arms of ``test`` a predictor trained on ``train`` guesses from what
    ``shown`` leaves of each entry; and the count expected by chance, with its SD."""
    arms = [a.name for a in protocol.arms]
    share = declared_shares(protocol)
    table: dict[str, Counter] = defaultdict(Counter)
    for e in train:
        table[_features(shown(e))][e.arm] += 1
    correct, expected, variance = 0, 0.0, 0.0
    for e in test:
        guess = _predict(table, shown(e), arms)
        correct += guess == e.arm
        expected += share[guess]
        variance += share[guess] * (1 - share[guess])
    return correct, expected, math.sqrt(variance)


@pytest.mark.parametrize(
    ("design", "edits"),
    [
        ("blocked", ()),
        ("blocked", (("block_sizes: [4, 6]", "block_sizes: [3, 6]"), ("ratio: 1", "ratio: 2"))),
        ("minimisation", ()),
        ("minimisation", (("ratio: 1", "ratio: 2"),)),
    ],
)
def test_the_view_predicts_no_arm_better_than_its_allocation_probability(design, edits):
    """A predictor trained on 30 simulated pilots, using everything an enroller is shown
    but the arms, guesses each arm of 30 others no better than the declared shares allow
    (4.5 standard deviations of the binomial count above them: a false alarm about once
    in 300,000 runs, and the simulation is seeded)."""
    protocol = parse_protocol(_protocol_text(design, edits), f"{PILOT}.yaml")[0]

    def view(e: Entry) -> Entry:
        return enroller_view(e, protocol)

    train = [e for seed in range(30) for e in _simulate(protocol, seed, 120)]
    test = [e for seed in range(100, 130) for e in _simulate(protocol, seed, 120)]
    correct, expected, sd = _score(protocol, view, train, test)
    assert correct <= expected + 4.5 * sd, (correct, expected, sd)
    if design == "minimisation":
        # the same predictor on the stored entries does far better: the check can fail
        full, expected_full, sd_full = _score(protocol, lambda e: e, train, test)
        assert full > expected_full + 4.5 * sd_full, (full, expected_full, sd_full)


# --- regression tests: each view a user reaches -----------------------------------------

SET = ["--set", "benefit=ESA", "--set", "months_unemployed=30", "--set", "referral_route=GP"]
SET += ["--set", "mh_condition=true"]


def _edit(run, *edits: tuple[str, str]) -> None:
    run("init", PILOT)
    path = run.ws / "protocols" / f"{PILOT}.yaml"
    text = path.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path.write_text(text)
    run("register", PILOT)


def _enrol(run, n: int) -> list[dict]:
    """Enrol ``n`` alike referrals (ages differ) and return what `enrol --json` showed."""
    out = []
    for i in range(n):
        args = ["enrol", PILOT, "--unit-id", f"QQ{i}", "--set", f"age={20 + i}", *SET]
        out.append(json.loads(run(*args, "--json").output))
    return out


def test_enrol_json_does_not_show_block_size_or_position(cli_in):
    _edit(cli_in)
    for e in _enrol(cli_in, 8):
        assert e["arm"] in {"usual", "keyworker"} and e["detail"]["method"] == "blocked"
        for name in BLOCK_FIELDS:
            assert name not in e["detail"], (name, e["detail"])
        assert e["probabilities"] == {"usual": 0.5, "keyworker": 0.5}


def test_allocate_json_does_not_show_block_size_or_position(cli_in):
    _edit(cli_in)
    rnd = random.Random(5)
    src = write_csv(cli_in.tmp / "list.csv", [{"id": f"L{i}", **referral(rnd)} for i in range(9)])
    rows = json.loads(cli_in("allocate", PILOT, str(src), "--json").output)["rows"]
    assert len(rows) == 9
    for r in rows:
        for name in BLOCK_FIELDS:
            assert name not in r["detail"], (name, r["detail"])


def test_export_allocations_hides_block_detail_until_unblinding_is_recorded(cli_in):
    _edit(cli_in)
    _enrol(cli_in, 7)
    before = _log_rows(cli_in("export", PILOT, "--what", "allocations").output)
    assert len(before) == 7
    assert not any(name in r["detail"] for r in before for name in BLOCK_FIELDS)
    cli_in("event", PILOT, "--type", "unblinded", "--reason", "follow-up ended")
    after = _log_rows(cli_in("export", PILOT, "--what", "allocations").output)
    assert [r["detail"]["position"] for r in after[:7]] == list(range(7))
    assert all(r["detail"]["block_size"] in (4, 6) for r in after[:7])


def test_restricted_export_shows_block_size_and_position(cli_in):
    _edit(cli_in)
    _enrol(cli_in, 7)
    rows = _log_rows(cli_in("export", PILOT, "--what", "allocations", "--restricted").output)
    assert [r["detail"]["position"] for r in rows] == list(range(7))
    assert all(r["detail"]["block_size"] in (4, 6) for r in rows)
    assert rows[0]["detail"]["position_in_block"] == 0
    help_text = cli_in("export", "--help").output
    assert "never give it to anyone who enrols" in " ".join(help_text.split())
    refused = cli_in("export", PILOT, "--restricted", ok=1).output
    assert "--restricted applies to --what allocations" in refused


def test_minimisation_enrol_shows_the_declared_share_not_the_conditional_chance(cli_in):
    _edit(cli_in, (BLOCKED, MINIMISATION))
    shown = _enrol(cli_in, 12)
    assert all(e["probabilities"] == {"usual": 0.5, "keyworker": 0.5} for e in shown)
    assert not any(name in e["detail"] for e in shown for name in MINIMISATION_FIELDS)
    text = cli_in("enrol", PILOT, "--unit-id", "QQ0", "--set", "age=20", *SET).output
    assert "chance 0.5 " in text
    log = _log_rows(cli_in("export", PILOT, "--what", "allocations").output)
    assert {json.dumps(r["probabilities"], sort_keys=True) for r in log} == {
        '{"keyworker": 0.5, "usual": 0.5}'
    }
    # the stored log keeps the conditional chances: the same people, all alike, cannot
    # have been allocated without the preferred arm's 0.8 appearing
    full = _log_rows(cli_in("export", PILOT, "--what", "allocations", "--restricted").output)
    assert 0.8 in {p for r in full for p in r["probabilities"].values()}
    assert all("totals" in r["detail"] and "preferred" in r["detail"] for r in full)


def test_export_of_a_blinded_minimisation_pilot_never_names_an_arm(cli_in):
    _edit(cli_in, (BLOCKED, MINIMISATION), ("blinded: false", "blinded: true"))
    _enrol(cli_in, 6)
    for extra in ([], ["--restricted"]):
        text = cli_in("export", PILOT, "--what", "allocations", *extra).output
        assert "usual" not in text and "keyworker" not in text, text
    full = _log_rows(cli_in("export", PILOT, "--what", "allocations", "--restricted").output)
    assert set(full[0]["detail"]["totals"]) == {"Arm A", "Arm B"}
