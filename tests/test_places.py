"""Choosing a place pilot's places by a pre-specified rule: `evalkit places rank`."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from evalkit import allocation as AL
from evalkit.errors import BatchRejected, UserError
from evalkit.places import make_rule, rank, selection_path
from evalkit.protocol_file import load_protocol
from evalkit.synthetic import area_values
from tests.pilots import REPO, write_csv

# A table small enough to check by hand.
#   a: mean 3, deviations -2, -1, 0, 3; SD = sqrt(14/4) = sqrt(3.5) = 1.870829
#   b: mean 25, deviations 15, -15, -5, 5; SD = sqrt(500/4) = sqrt(125) = 11.180340
HAND = [
    (2, {"id": "A", "a": "1", "b": "40"}),
    (3, {"id": "B", "a": "2", "b": "10"}),
    (4, {"id": "C", "a": "3", "b": "20"}),
    (5, {"id": "D", "a": "6", "b": "30"}),
]

AFTER = date(2027, 3, 2)  # the day the rule is recorded for has passed


def test_z_scores_and_weighted_scores_match_the_hand_computation():
    r = rank(HAND, make_rule("a,b", "3,1", None, 2), "id", "hand.csv")
    assert r.means == pytest.approx({"a": 3.0, "b": 25.0})
    assert r.sds["a"] == pytest.approx(1.870829, abs=1e-6)
    assert r.sds["b"] == pytest.approx(11.180340, abs=1e-6)
    by_id = {x.id: x for x in r.areas}
    # z(a): -1.069045, -0.534522, 0, 1.603567; z(b): 1.341641, -1.341641, -0.447214, 0.447214
    assert by_id["A"].z == pytest.approx({"a": -1.069045, "b": 1.341641}, abs=1e-6)
    assert by_id["D"].z == pytest.approx({"a": 1.603567, "b": 0.447214}, abs=1e-6)
    # score = 3 z(a) + 1 z(b), weights as given (not rescaled)
    assert by_id["A"].score == pytest.approx(-1.865494, abs=1e-6)
    assert by_id["B"].score == pytest.approx(-2.945208, abs=1e-6)
    assert by_id["C"].score == pytest.approx(-0.447214, abs=1e-6)
    assert by_id["D"].score == pytest.approx(5.257916, abs=1e-6)
    assert [(x.rank, x.id, x.chosen) for x in r.areas] == [
        (1, "D", True),
        (2, "C", True),
        (3, "A", False),
        (4, "B", False),
    ]
    assert r.chosen_ids == ["D", "C"] and r.tied_at_cutoff == [] and r.constant == []
    assert [x.row for x in r.areas] == [5, 4, 2, 3]


def test_lower_is_more_reverses_the_sign_of_that_indicator():
    r = rank(HAND, make_rule("a,b", "3,1", "b", 3), "id", "hand.csv")
    by_id = {x.id: x for x in r.areas}
    assert by_id["A"].z["b"] == pytest.approx(-1.341641, abs=1e-6)
    # score = 3 z(a) - z(b): A -4.548776, B -0.261927, C 0.447214, D 4.363489
    assert [x.score for x in r.areas] == pytest.approx(
        [4.363489, 0.447214, -0.261927, -4.548776], abs=1e-6
    )
    assert r.chosen_ids == ["D", "C", "B"]  # B now ahead of A: lower b counts as more need
    assert r.rule.formula() == "score = 3 z(a) + 1 z(-b)"


def test_equal_weights_by_default_and_one_indicator_alone():
    r = rank(HAND, make_rule("a,b", None, None, 1), "id", "hand.csv")
    assert r.rule.weights == (0.5, 0.5)
    assert r.areas[0].score == pytest.approx(0.5 * 1.603567 + 0.5 * 0.447214, abs=1e-6)
    only_b = rank(HAND, make_rule("b", None, None, 2), "id", "hand.csv")
    assert only_b.chosen_ids == ["A", "D"]  # b = 40, 30


def test_ties_are_ordered_by_id_and_reported_at_the_cut_off():
    rows = [  # file order R, Q, P; equal weights, equal SDs: every score is 0
        (2, {"id": "R", "a": "2", "b": "2"}),
        (3, {"id": "Q", "a": "1", "b": "3"}),
        (4, {"id": "P", "a": "3", "b": "1"}),
        (5, {"id": "S", "a": "0", "b": "0"}),
    ]
    r = rank(rows, make_rule("a,b", "1,1", None, 1), "id", "t.csv")
    assert [x.id for x in r.areas] == ["P", "Q", "R", "S"]
    assert r.chosen_ids == ["P"]
    assert r.tied_at_cutoff == ["P", "Q", "R"]
    # a tie that does not straddle the cut-off is not reported
    r3 = rank(rows, make_rule("a,b", "1,1", None, 3), "id", "t.csv")
    assert r3.chosen_ids == ["P", "Q", "R"] and r3.tied_at_cutoff == []


def test_an_indicator_with_one_value_everywhere_gets_z_zero():
    rows = [(i + 2, {"id": k, "a": str(i), "c": "0.2"}) for i, k in enumerate("XYZ")]
    r = rank(rows, make_rule("a,c", "1,1", None, 1), "id", "t.csv")
    assert r.constant == ["c"]
    assert all(x.z["c"] == 0.0 for x in r.areas)
    assert r.chosen_ids == ["Z"]


@pytest.mark.parametrize(
    ("by", "weights", "lower", "choose", "message"),
    [
        ("a,b", "0.5", None, 1, "--weights gives 1 weight for 2 --by fields"),
        ("a,b", "0.5,-0.5", None, 1, "--weights: the weight of b is -0.5, which is negative"),
        ("a,b", "0.5,x", None, 1, "--weights: 'x' is not a number"),
        ("a,b", "0,0", None, 1, "--weights: every weight is 0"),
        ("a,a", None, None, 1, "--by names a more than once"),
        ("a,,b", None, None, 1, "--by 'a,,b' has an empty name"),
        ("a,b", None, "c", 1, "--lower-is-more names c, which is not in --by"),
        ("a,b", None, None, 0, "--choose 0: choose at least one place"),
    ],
)
def test_bad_rules_are_refused(by, weights, lower, choose, message):
    with pytest.raises(UserError) as exc:
        make_rule(by, weights, lower, choose)
    assert exc.value.message == message


def test_bad_rows_are_all_listed_with_row_and_column():
    rows = [
        (2, {"id": "A", "a": "1", "b": "n/a"}),
        (3, {"id": "", "a": "2", "b": "3"}),
        (4, {"id": "A", "a": " ", "b": "3"}),
        (5, {"id": "C", "a": "inf", "b": "3"}),
    ]
    with pytest.raises(BatchRejected) as exc:
        rank(rows, make_rule("a,b", None, None, 1), "id", "areas.csv")
    assert [str(p) for p in exc.value.problems] == [
        "row 2: b 'n/a' is not a number (write plain digits, no £, % or commas)",
        "row 3: id is missing",
        "row 4: id 'A' repeats row 2",
        "row 4: a is missing",
        "row 5: a 'inf' is not a finite number",
    ]


# --- the command -----------------------------------------------------------------------

SYN = ["claimant_rate", "mh_claimant_share", "imd_score", "spend_per_head"]
RULE = ["--by", ",".join(SYN), "--weights", "0.3,0.3,0.2,0.2"]


def _areas(tmp: Path, n: int = 30, seed: int = 7) -> tuple[Path, list[dict[str, str]]]:
    protocol, _ = load_protocol(REPO / "protocols" / "hackney-estates.yaml")
    rows = area_values(protocol, np.random.default_rng(seed), n)
    return write_csv(tmp / "areas.csv", rows), rows


def _chosen(rows: list[dict[str, str]], lower: str | None = None) -> list[str]:
    rule = make_rule(",".join(SYN), "0.3,0.3,0.2,0.2", lower, 16)
    return rank(list(enumerate(rows, start=2)), rule, "id", "x").chosen_ids


def _place_pilot(cli_in, name: str, places: list[str]) -> None:
    """A place pilot (the estates template) whose places are ``places``."""
    cli_in("init", name, "--template", "place")
    path = cli_in.ws / "protocols" / f"{name}.yaml"
    text = path.read_text()
    text, n = re.subn(
        r"levels: \[E01, [^\]]*\]", f"levels: [{', '.join(sorted(places))}]", text, count=1
    )
    assert n == 1
    path.write_text(text)
    cli_in("register", name)


def test_rank_prints_the_table_and_writes_the_places_file(cli_in):
    src = write_csv(
        cli_in.tmp / "hand.csv", [{"ward": r["id"], "a": r["a"], "b": r["b"]} for _, r in HAND]
    )
    out = cli_in.tmp / "places.csv"
    res = cli_in(
        "places", "rank", str(src), "--by", "a,b", "--weights", "3,1", "--choose", "2",
        "--id-column", "ward", "--out", str(out),
    ).output  # fmt: skip
    lines = res.splitlines()
    assert "score = 3 z(a) + 1 z(b)" in res
    assert "z = (value - mean) / SD over the 4 candidate areas (SD with divisor n)" in res
    assert "ties: equal scores (to 9 decimal places) are ordered by id" in res
    table = lines[lines.index(next(x for x in lines if x.startswith("rank"))) :][:5]
    assert table[0].split() == ["rank", "ward", "a", "b", "score", "chosen"]
    assert [x.split() for x in table[1:]] == [
        ["1", "D", "6", "30", "+5.258", "yes"],
        ["2", "C", "3", "20", "-0.447", "yes"],
        ["3", "A", "1", "40", "-1.865", "no"],
        ["4", "B", "2", "10", "-2.945", "no"],
    ]
    assert "chosen: 2 of 4, in rank order: D, C" in res
    with out.open() as fh:
        assert list(csv.reader(fh)) == [["ward", "a", "b"], ["D", "6", "30"], ["C", "3", "20"]]
    sel = json.loads(selection_path(out).read_text())
    assert selection_path(out).name == "places.selection.json"
    assert sel["chosen"] == ["D", "C"] and sel["weights"] == [3.0, 1.0]
    assert sel["areas_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert sel["places_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sel["directions"] == {"a": "higher means more need or spend"} | {
        "b": "higher means more need or spend"
    }
    assert sel["pilot"] is None and sel["log_entry"] is None
    data = json.loads(
        cli_in(
            "places", "rank", str(src), "--by", "a,b", "--weights", "3,1", "--choose", "2",
            "--id-column", "ward", "--lower-is-more", "b", "--json",
        ).output
    )  # fmt: skip
    assert [a["id"] for a in data["areas"]] == ["D", "C", "B", "A"]
    assert data["areas"][0]["z"]["b"] == pytest.approx(-0.447214, abs=1e-6)
    assert data["areas"][0]["score"] == pytest.approx(4.363489, abs=1e-6)
    assert data["sds"]["a"] == pytest.approx(math.sqrt(3.5))


def test_keep_chooses_the_columns_and_excel_is_read(cli_in):
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["id", "a", "b", "homes", "name"])
    for _, r in HAND:
        ws.append([r["id"], float(r["a"]), int(r["b"]), 300, f"Estate {r['id']}"])
    src = cli_in.tmp / "areas.xlsx"
    wb.save(src)
    out = cli_in.tmp / "kept.csv"
    cli_in(
        "places", "rank", str(src), "--by", "a,b", "--weights", "3,1", "--choose", "3",
        "--keep", "a,homes,name", "--out", str(out),
    )  # fmt: skip
    with out.open() as fh:
        assert list(csv.reader(fh)) == [
            ["id", "a", "homes", "name"],
            ["D", "6", "300", "Estate D"],
            ["C", "3", "300", "Estate C"],
            ["A", "1", "300", "Estate A"],
        ]


BAD_CASES = [
    ("missing column", {}, ["--by", "a,zz"], "has no column 'zz' (columns: id, a, b)"),
    ("non-numeric", {"b": "12%"}, [], "row 3: b '12%' is not a number"),
    ("blank", {"a": ""}, [], "row 3: a is missing"),
    ("duplicate id", {"id": "A"}, [], "row 3: id 'A' repeats row 2"),
    ("blank id", {"id": " "}, [], "row 3: id is missing"),
    ("weights", {}, ["--weights", "1,2,3"], "--weights gives 3 weights for 2 --by fields"),
    ("negative weight", {}, ["--weights", "1,-1"], "the weight of b is -1, which is negative"),
    ("choose too many", {}, ["--choose", "5"], "--choose 5, but"),
    ("lower not in by", {}, ["--lower-is-more", "c"], "--lower-is-more names c"),
]


@pytest.mark.parametrize(
    ("case", "change", "args", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_input_exits_1_with_one_message_and_writes_nothing(cli_in, case, change, args, message):
    rows = [dict(r) for _, r in HAND]
    rows[1].update(change)
    src = write_csv(cli_in.tmp / "areas.csv", rows)
    out = cli_in.tmp / "places.csv"
    opts = {"--by": "a,b", "--choose": "2"}
    for k, v in zip(args[::2], args[1::2], strict=True):
        opts[k] = v
    flat = [x for kv in opts.items() for x in kv]
    res = cli_in("places", "rank", str(src), *flat, "--out", str(out), ok=1)
    assert res.output.startswith("error: ")
    assert message in res.output
    if case in {"non-numeric", "blank", "duplicate id", "blank id"}:
        assert f"error: {src}: 1 problem; nothing was ranked or written" in res.output
        assert f"  {src}: {message}" in res.output
    if case == "missing column":
        assert str(src) in res.output
    assert not out.exists() and not selection_path(out).exists()
    assert list(cli_in.tmp.glob("*.part")) == []


def test_refusals_that_name_the_pilot(cli_in):
    src, _ = _areas(cli_in.tmp)
    out = cli_in.tmp / "places.csv"
    base = ["places", "rank", str(src), *RULE, "--choose", "16", "--out", str(out)]
    res = cli_in(*base, "--pilot", "nowhere", ok=1)
    assert "no protocol for pilot 'nowhere'" in res.output
    cli_in("init", "unregistered", "--template", "place")
    assert "not registered" in cli_in(*base, "--pilot", "unregistered", ok=1).output
    cli_in("init", "kw-pilot", "--template", "individual")
    cli_in("register", "kw-pilot")
    res = cli_in(*base, "--pilot", "kw-pilot", ok=1)
    assert "error: pilot 'kw-pilot' randomises participants, not places" in res.output
    cli_in("register", "unregistered")  # E01..E16 are not the 16 the rule chooses
    res = cli_in(*base, "--pilot", "unregistered", ok=1)
    assert "error: the rule does not choose the places pilot 'unregistered' names" in res.output
    assert "chosen but not among the protocol's places: " in res.output
    res = cli_in(*base[:-2], "--pilot", "kw-pilot", ok=1)
    assert "--pilot records the choice with the pilot, so it needs the places file" in res.output
    res = cli_in(*base, "--pilot", "kw-pilot", "--keep", "homes", ok=1)
    assert "--keep cannot be used with --pilot" in res.output
    res = cli_in("places", "rank", str(src), *RULE, "--choose", "2", "--out", str(src), ok=1)
    assert "is the areas file itself" in res.output
    assert not out.exists() and not selection_path(out).exists()
    assert json.loads(cli_in("status", "kw-pilot", "--json").output)["log_entries"] == 0


def test_a_chosen_place_with_an_invalid_place_field_is_refused(cli_in):
    src, rows = _areas(cli_in.tmp)
    chosen = _chosen(rows)
    _place_pilot(cli_in, "est-bad", chosen)
    for r in rows:
        if r["id"] == chosen[3]:
            r["homes"] = "0"
    write_csv(src, rows)
    out = cli_in.tmp / "places.csv"
    res = cli_in(
        "places", "rank", str(src), *RULE, "--choose", "16", "--pilot", "est-bad",
        "--out", str(out), ok=1,
    )  # fmt: skip
    line = next(i for i, r in enumerate(rows, start=2) if r["id"] == chosen[3])
    assert f"{src}: row {line}: homes '0' is below the minimum 1" in res.output
    assert not out.exists() and not selection_path(out).exists()
    assert json.loads(cli_in("status", "est-bad", "--json").output)["log_entries"] == 0


def test_rank_for_a_pilot_then_allocate_and_verify(cli_in):
    src, rows = _areas(cli_in.tmp)
    chosen = _chosen(rows)
    assert len(chosen) == 16
    _place_pilot(cli_in, "est-pilot", chosen)
    out = cli_in.tmp / "places.csv"
    cmd = ["places", "rank", str(src), *RULE, "--choose", "16", "--pilot", "est-pilot"]
    res = cli_in(*cmd, "--out", str(out), "--date", "2027-03-01", at=AFTER).output
    assert "est-pilot: the selection rule recorded as log entry 1 (a note)" in res
    assert "log head: entry 1, sha256 " in res
    with out.open() as fh:
        places = list(csv.DictReader(fh))
    assert list(places[0]) == [
        "estate", "imd_score", "claimant_rate", "mh_claimant_share", "deprivation_band", "homes",
    ]  # fmt: skip
    assert [p["estate"] for p in places] == chosen
    src_rows = {r["id"]: r for r in rows}
    assert all(p["homes"] == src_rows[p["estate"]]["homes"] for p in places)
    sel = json.loads(selection_path(out).read_text())
    assert sel["pilot"] == "est-pilot" and sel["log_entry"] == 1 and sel["chosen"] == chosen
    assert sel["areas_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    # the same rule again records nothing new
    again = cli_in(*cmd, "--out", str(out), "--date", "2027-03-01", at=AFTER).output
    assert "the selection rule was already recorded as log entry 1" in again
    # the places file is exactly what allocate takes
    alloc = cli_in("allocate", "est-pilot", str(out)).output
    assert "16 new entries (estate_team: 8, usual: 8)" in alloc
    verified = cli_in("verify", "est-pilot", "--reveal-secret").output
    assert "verifies: 17 entries" in verified
    assert "replayed 16 allocations from the secret: every one matches" in verified
    (note,) = json.loads(cli_in("status", "est-pilot", "--json").output)["notes"]
    assert note["date"] == "2027-03-01"
    assert note["text"].startswith(
        "Places chosen by a pre-specified rule: the 16 of 30 candidate areas in areas.csv "
        f"(sha256 {sel['areas_sha256']}) with the highest score = 0.3 z(claimant_rate) + "
        "0.3 z(mh_claimant_share) + 0.2 z(imd_score) + 0.2 z(spend_per_head);"
    )
    assert note["text"].endswith(f"Chosen, in rank order: {', '.join(chosen)}.")
    # once the places are allocated the rule can no longer be recorded
    late = cli_in.tmp / "late.csv"
    res = cli_in(*cmd, "--out", str(late), ok=1)
    assert "the places of pilot 'est-pilot' have already been allocated" in res.output
    assert not late.exists() and not selection_path(late).exists()
    assert list(cli_in.tmp.glob("*.part")) == []


def test_the_note_holds_the_rule_in_the_tamper_evident_chain(store, key_dir, tmp_path):
    from evalkit.enrolment import verify
    from evalkit.keys import KeyRing
    from evalkit.places import rank_areas
    from evalkit.tracking import notes
    from tests.pilots import make_pilot

    src, rows = _areas(tmp_path, n=20, seed=3)
    chosen = _chosen(rows, lower="spend_per_head")
    assert chosen != _chosen(rows)
    levels = "levels: [" + ", ".join(f"E{i:02d}" for i in range(1, 17)) + "]"
    pilot = make_pilot(
        store, KeyRing(key_dir), tmp_path / "ws", "hackney-estates", "est-store",
        [(levels, f"levels: [{', '.join(chosen)}]")],
    )  # fmt: skip
    rule = make_rule(",".join(SYN), "0.3,0.3,0.2,0.2", "spend_per_head", 16)
    res = rank_areas(
        src, rule, "id", None, tmp_path / "p.csv", pilot, store, f"{AFTER}T09:00:00Z", "t",
        "2027-03-01",
    )  # fmt: skip
    (entry,) = store.log_entries("est-store")
    assert entry.kind == "event" and entry.detail["event"] == "note"
    assert entry.detail["selection"] == res.record
    assert entry.detail["selection"]["directions"]["spend_per_head"] == (
        "lower means more need or spend"
    )
    assert notes([entry])[0]["date"] == "2027-03-01"
    assert verify(store, "est-store").ok
    assert store.count_allocations("est-store", level="place") == 0


def test_synthetic_areas_carry_every_place_field_and_follow_deprivation():
    protocol, _ = load_protocol(REPO / "protocols" / "hackney-estates.yaml")
    rows = area_values(protocol, np.random.default_rng(11), 200)
    assert list(rows[0])[:6] == ["id", "name", *SYN]
    assert {f.name for f in protocol.unit.place_fields} <= set(rows[0])
    assert [r["id"] for r in rows[:2]] == ["E001", "E002"]
    assert all("Synthetic" in r["name"] for r in rows)
    imd = np.array([float(r["imd_score"]) for r in rows])
    claim = np.array([float(r["claimant_rate"]) for r in rows])
    spend = np.array([float(r["spend_per_head"]) for r in rows])
    assert np.corrcoef(imd, claim)[0, 1] > 0.75  # about 0.9 by construction
    assert np.corrcoef(claim, spend)[0, 1] > 0.5
    assert 0.44 < np.mean([float(r["mh_claimant_share"]) for r in rows]) < 0.52
    assert sum(r["deprivation_band"] == "higher" for r in rows) == 100
    fields = [f.name for f in protocol.unit.place_fields]
    _, problems = AL.check_places(
        protocol.model_copy(update={"fields": []}),
        [(i, r["id"], {f: r[f] for f in fields}) for i, r in enumerate(rows, start=2)],
    )
    assert problems == []
    estates = area_values(protocol, np.random.default_rng(11), 16)
    assert [r["id"] for r in estates][:3] == ["E01", "E02", "E03"]
