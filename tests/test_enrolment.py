"""Enrolment, batches, place designs, events and verification, on both back ends."""

from __future__ import annotations

import json
import random

import pytest
from sqlalchemy import text

from evalkit import allocation as AL
from evalkit.enrolment import (
    BatchRejected,
    allocate_file,
    enrol,
    record_event,
    verify,
)
from evalkit.errors import UserError
from evalkit.keys import KeyRing
from evalkit.ledger import chain
from evalkit.status import neutral_labels, pilot_status
from tests.pilots import LATER, NOW, make_pilot, referral, values_for, write_csv

ON = "2027-04-02"


@pytest.fixture
def keys(key_dir) -> KeyRing:
    return KeyRing(key_dir)


@pytest.fixture
def kw(store, keys, tmp_path):
    return make_pilot(store, keys, tmp_path / "ws", "hackney-keyworker", "kw-pilot")


def test_enrol_allocates_once_and_never_redraws(store, kw):
    rnd = random.Random(1)
    values = referral(rnd)
    first = enrol(store, kw, "QQ 12 34 56 C", values, NOW, "ana", ON)
    [e] = first.entries
    assert e.kind == "allocation" and e.arm in {"usual", "keyworker"}
    assert e.probabilities == {"usual": 0.5, "keyworker": 0.5}
    assert e.stratum == f"benefit={values['benefit']}"
    again = enrol(store, kw, "qq123456c", {**values, "age": "50"}, NOW, "bob", ON)
    assert again.entries == [] and again.existing == [e]
    assert store.log_head("kw-pilot") == (1, e.entry_hash) == first.head


def test_ineligible_referral_is_excluded_with_reason_and_no_arm(store, kw):
    out = enrol(store, kw, "X1", referral(random.Random(2), eligible=False), NOW, "ana", ON)
    [e] = out.entries
    assert e.kind == "exclusion" and e.arm is None
    assert e.detail["reasons"] == ["Out of work for less than 24 months"]
    assert enrol(store, kw, "X1", referral(random.Random(3)), NOW, "ana", ON).existing == [e]


def test_bad_values_allocate_nothing(store, kw):
    with pytest.raises(UserError, match="benefit 'esa' is not one of the allowed values"):
        enrol(store, kw, "X2", {**referral(random.Random(2)), "benefit": "esa"}, NOW, "a", ON)
    assert store.log_head("kw-pilot") == (0, None)


def test_raw_identifiers_are_never_stored(store, kw):
    ids = [f"QQ{i:06d}C" for i in range(20)]
    rnd = random.Random(4)
    for raw in ids:
        enrol(store, kw, raw, referral(rnd), NOW, "ana", ON)
    with store.read() as conn:
        dump = " ".join(str(v) for row in conn.execute(text("SELECT * FROM log")) for v in row)
    assert not any(raw in dump or raw.lower() in dump for raw in ids)
    assert AL.pseudonym(kw.secret, ids[0]) in dump


def test_batch_with_bad_rows_allocates_nothing_and_names_every_row(store, kw, tmp_path):
    rnd = random.Random(5)
    rows = [{"id": f"B{i}", **referral(rnd)} for i in range(30)]
    rows[3]["benefit"] = "Esa"
    rows[7]["age"] = "forty"
    rows[11]["mh_condition"] = ""
    rows[12]["id"] = "B0"
    rows[20]["age"] = "130"
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(BatchRejected) as exc:
        allocate_file(store, kw, path, NOW, "ana", ON)
    found = [str(p) for p in exc.value.problems]
    assert found == [
        "row 5: benefit 'Esa' is not one of the allowed values (ESA, JSA, UC): did you mean 'ESA'?",
        "row 9: age 'forty' is not a whole number",
        "row 13: mh_condition is required but missing",
        "row 14: id repeats the id of row 2 (ids are not shown)",
        "row 22: age '130' is above the maximum 100",
    ]
    assert store.log_head("kw-pilot") == (0, None)
    assert store.log_entries("kw-pilot") == []


def test_batch_allocates_all_rows_and_skips_units_already_in_the_log(store, kw, tmp_path):
    rnd = random.Random(6)
    rows = [{"id": f"C{i}", **referral(rnd, eligible=i % 10 != 0)} for i in range(40)]
    enrol(store, kw, "C5", {k: v for k, v in rows[5].items() if k != "id"}, NOW, "ana", ON)
    out = allocate_file(store, kw, write_csv(tmp_path / "ok.csv", rows), NOW, "ana", ON)
    assert len(out.entries) == 39 and len(out.existing) == 1
    assert [r[0] for r in out.rows] == list(range(2, 42))
    assert sum(e.kind == "exclusion" for e in out.entries) == 4
    assert verify(store, "kw-pilot", kw.secret).ok


def test_batch_equals_one_at_a_time(kw):
    """The same referrals give the same arms whether enrolled singly or as a list."""
    rnd = random.Random(7)
    refs, problems = AL.check_referrals(
        kw.protocol, kw.secret, [(i, f"D{i}", referral(rnd)) for i in range(300)], ON
    )
    assert problems == []
    ctx = kw.context(NOW, "ana")
    batch = AL.allocate_batch(ctx, AL.MemoryView(), refs)
    view = AL.MemoryView()
    for r in refs:
        view.add(AL.decide(ctx, view, r))
    assert [e.arm for e in batch] == [e.arm for e in view.pending]
    for stratum in {e.stratum for e in batch}:
        arms = [e.arm for e in batch if e.stratum == stratum]
        for n in range(1, len(arms) + 1):  # never more than half the largest block apart
            assert abs(arms[:n].count("usual") - arms[:n].count("keyworker")) <= 3


def test_excel_files_are_read_like_csv(store, kw, tmp_path):
    from openpyxl import Workbook

    rnd = random.Random(8)
    rows = [{"id": f"E{i}", **referral(rnd)} for i in range(10)]
    wb = Workbook()
    ws = wb.active
    ws.append(list(rows[0]))
    for r in rows:
        ws.append([int(v) if v.isdigit() else v for v in r.values()])
    ws.append([None] * len(rows[0]))  # trailing empty rows are ignored
    wb.save(tmp_path / "list.xlsx")
    out = allocate_file(store, kw, tmp_path / "list.xlsx", NOW, "ana", ON)
    assert len(out.entries) == 10 and all(e.kind == "allocation" for e in out.entries)


def test_place_design_places_first_then_people(store, keys, tmp_path):
    est = make_pilot(store, keys, tmp_path / "ws", "hackney-estates", "est-pilot")
    rnd = random.Random(9)
    places = [
        {
            "estate": f"E{i:02d}",
            "imd_score": f"{rnd.uniform(20, 60):.1f}",
            "claimant_rate": f"{rnd.uniform(0.08, 0.25):.3f}",
            "mh_claimant_share": f"{rnd.uniform(0.4, 0.6):.2f}",
            "deprivation_band": rnd.choice(["higher", "lower"]),
            "homes": str(rnd.randint(300, 1500)),
        }
        for i in range(1, 17)
    ]
    person = values_for(est.protocol, rnd, estate="E03")
    with pytest.raises(UserError, match="place 'E03' has not been allocated"):
        enrol(store, est, "P1", person, NOW, "ana", ON)
    out = allocate_file(store, est, write_csv(tmp_path / "places.csv", places), NOW, "ana", ON)
    assert len(out.entries) == 16
    by_pair: dict[str, list[str]] = {}
    for e in out.entries:
        by_pair.setdefault(e.stratum, []).append(e.arm)
    assert all(sorted(v) == ["estate_team", "usual"] for v in by_pair.values()), by_pair
    [joined] = enrol(store, est, "P1", person, NOW, "ana", ON).entries
    place_arm = next(e.arm for e in out.entries if e.unit == "E03")
    assert joined.arm == place_arm and joined.place == "E03"
    with pytest.raises(UserError, match="already been allocated"):
        allocate_file(store, est, tmp_path / "places.csv", NOW, "ana", ON)
    assert verify(store, "est-pilot", est.secret).ok


def test_stepped_wedge_exposure_follows_the_period_of_joining(store, keys, tmp_path):
    sw = make_pilot(store, keys, tmp_path / "ws", "hackney-front-door", "sw-pilot")
    localities = sw.protocol.field("locality").levels
    places = [
        {"locality": name, "imd_score": str(30 + i), "claimant_rate": "0.1"}
        for i, name in enumerate(localities)
    ]
    extra = {f.name for f in sw.protocol.unit.place_fields} - set(places[0])
    for p in places:
        p.update({name: "1" for name in extra})
    out = allocate_file(store, sw, write_csv(tmp_path / "loc.csv", places), NOW, "ana", ON)
    periods = sorted(e.detail["crossover_period"] for e in out.entries)
    assert periods == [2, 2, 3, 3, 4, 4]
    start = sw.protocol.start_date
    late = start.replace(year=start.year + 1).isoformat()  # period 4 with 4-month periods
    rnd = random.Random(10)
    for i, name in enumerate(localities):
        early = enrol(
            store,
            sw,
            f"S{i}",
            values_for(sw.protocol, rnd, locality=name),
            LATER,
            "a",
            start.isoformat(),
        ).entries[0]
        assert early.arm == "usual" and early.detail["period"] == 1
        after = enrol(
            store, sw, f"T{i}", values_for(sw.protocol, rnd, locality=name), LATER, "a", late
        ).entries[0]
        assert after.arm == sw.protocol.arms[1].name and after.detail["period"] == 4
    assert verify(store, "sw-pilot", sw.secret).ok


@pytest.mark.parametrize(
    ("design", "enrol_one"),
    [
        ("  method: complete", False),
        ("  method: simple", True),
        (
            "  method: minimisation\n  factors:\n    - field: benefit\n      weight: 2\n"
            "    - field: referral_route\n  probability: 0.8",
            True,
        ),
    ],
)
def test_other_participant_designs_replay(store, keys, tmp_path, design, enrol_one):
    edits = [("  method: blocked\n  strata: [benefit]\n  block_sizes: [4, 6]", design)]
    p = make_pilot(store, keys, tmp_path / "ws", "hackney-keyworker", "alt-pilot", edits)
    rnd = random.Random(11)
    if not enrol_one:
        with pytest.raises(UserError, match="allocates its whole list at once"):
            enrol(store, p, "F0", referral(rnd), NOW, "ana", ON)
    rows = [{"id": f"F{i}", **referral(rnd)} for i in range(60)]
    allocate_file(store, p, write_csv(tmp_path / "a.csv", rows[:30]), NOW, "ana", ON)
    if enrol_one:
        for r in rows[30:]:
            enrol(store, p, r["id"], {k: v for k, v in r.items() if k != "id"}, NOW, "b", ON)
    else:
        allocate_file(store, p, write_csv(tmp_path / "b.csv", rows[30:]), NOW, "ana", ON)
    arms = [e.arm for e in store.log_entries("alt-pilot")]
    if "complete" in design:
        assert arms[:30].count("usual") == 15 and arms[30:].count("usual") == 15
    v = verify(store, "alt-pilot", p.secret)
    assert v.ok and v.replayed == 60


def test_events_are_added_never_edits(store, kw):
    rnd = random.Random(12)
    [e] = enrol(store, kw, "G1", referral(rnd), NOW, "ana", ON).entries
    record_event(store, kw, "G1", "withdrawn", LATER, "ana", "2027-06-01", "moved away")
    record_event(store, kw, "g1", "did_not_start", LATER, "ana", "2027-06-01", "")
    with pytest.raises(UserError, match="no allocation for that id"):
        record_event(store, kw, "nobody", "withdrawn", NOW, "ana", ON, "")
    log = store.log_entries("kw-pilot")
    assert log[0] == e
    assert [x.detail["event"] for x in log[1:]] == ["withdrawn", "did_not_start"]
    assert all(x.unit == e.unit for x in log[1:])
    assert verify(store, "kw-pilot", kw.secret).ok


def test_blinded_pilot_shows_neutral_labels_until_unblinded(store, keys, tmp_path):
    p = make_pilot(
        store,
        keys,
        tmp_path / "ws",
        "hackney-keyworker",
        "blind-pilot",
        [("  blinded: false", "  blinded: true")],
    )
    rnd = random.Random(13)
    for i in range(12):
        enrol(store, p, f"H{i}", referral(rnd), NOW, "ana", ON)
    path = tmp_path / "ws" / "protocols" / "blind-pilot.yaml"
    s = pilot_status(store, keys, path, "blind-pilot")
    labels = neutral_labels(["usual", "keyworker"], p.secret)
    assert s["blinded"] and set(s["allocated"]["participant"]) == set(labels.values())
    record_event(store, p, None, "unblinded", NOW, "ana", ON, "analysis plan locked")
    s = pilot_status(store, keys, path, "blind-pilot")
    assert not s["blinded"] and set(s["allocated"]["participant"]) == {"usual", "keyworker"}


# --- tamper evidence ------------------------------------------------------------------


@pytest.fixture
def filled(store, kw):
    rnd = random.Random(14)
    for i in range(8):
        enrol(store, kw, f"T{i}", referral(rnd), NOW, "ana", ON)
    assert verify(store, "kw-pilot").ok
    return store


def _sql(store, sql: str) -> None:
    with store.write() as conn:
        conn.execute(text(sql))


@pytest.mark.parametrize(
    ("tamper", "bad"),
    [
        (
            "UPDATE log SET arm = CASE WHEN arm = 'usual' THEN 'keyworker' ELSE 'usual' END "
            "WHERE seq = 4",
            4,
        ),
        ("UPDATE log SET created_by = 'someone else' WHERE seq = 2", 2),
        ("DELETE FROM log WHERE seq = 5", 5),
        ("DELETE FROM log WHERE seq = 8", 8),
        (
            "UPDATE log SET seq = 100 + seq WHERE seq IN (3, 6); "
            "UPDATE log SET seq = 6 WHERE seq = 103; UPDATE log SET seq = 3 WHERE seq = 106",
            3,
        ),
        (
            "INSERT INTO log (pilot_id, seq, kind, level, unit, unit_key, stratum, place, arm, "
            "probabilities, detail, baseline, protocol_hash, protocol_number, created_at, "
            "created_by, prev_hash, entry_hash) SELECT pilot_id, 9, kind, level, 'forged', "
            "'participant:forged', stratum, place, arm, probabilities, detail, baseline, "
            "protocol_hash, protocol_number, created_at, created_by, entry_hash, entry_hash "
            "FROM log WHERE seq = 8",
            9,
        ),
    ],
    ids=["edit-arm", "edit-author", "delete-middle", "delete-last", "reorder", "insert"],
)
def test_tampering_is_detected(filled, tamper, bad):
    for statement in tamper.split("; "):
        _sql(filled, statement)
    v = verify(filled, "kw-pilot")
    assert not v.ok
    assert v.chain.bad_seq == bad


def test_a_rewritten_chain_is_caught_by_replay_with_the_secret(filled, kw):
    """Someone with database access flips an arm and recomputes every hash and the head:
    the chain then checks, but replaying the draws from the secret does not."""
    entries = filled.log_entries("kw-pilot")
    flipped = [
        e
        if e.seq != 3
        else e.__class__(**{**e.__dict__, "arm": "usual" if e.arm == "keyworker" else "keyworker"})
        for e in entries
    ]
    resealed = chain(flipped, "kw-pilot", kw.registration_hash, (0, None))
    with filled.write() as conn:
        conn.execute(text("DELETE FROM log"))
        conn.execute(text("UPDATE pilots SET log_count = 0, log_head = NULL"))
    with filled.log_tx("kw-pilot") as tx:
        tx.append(resealed)
    assert verify(filled, "kw-pilot").ok  # the chain alone cannot tell
    v = verify(filled, "kw-pilot", kw.secret)
    assert not v.ok and v.bad_seq == 3 and "does not replay" in v.replay_problem
    assert (
        verify(filled, "kw-pilot", published_head=entries[-1].entry_hash).published_head_found
        is False
    )


def test_wrong_secret_is_refused(filled):
    with pytest.raises(UserError, match="does not match the commitment"):
        verify(filled, "kw-pilot", b"x" * 32)


def test_published_head_is_found_while_the_log_only_grows(filled, kw):
    head = filled.log_head("kw-pilot")[1]
    enrol(filled, kw, "later", referral(random.Random(15)), NOW, "ana", ON)
    v = verify(filled, "kw-pilot", published_head=head)
    assert v.ok and v.published_head_found


def test_status_counts(filled, keys, kw, tmp_path):
    s = pilot_status(filled, keys, tmp_path / "ws" / "protocols" / "kw-pilot.yaml", "kw-pilot")
    assert sum(s["allocated"]["participant"].values()) == 8
    assert s["log_entries"] == 8 and s["log_head"] == filled.log_head("kw-pilot")[1]
    assert json.dumps(s)


# --- values outside a field's levels (issue 11) ----------------------------------------


def _kw_status(store, keys, tmp_path):
    return pilot_status(store, keys, tmp_path / "ws" / "protocols" / "kw-pilot.yaml", "kw-pilot")


def test_a_benefit_outside_the_levels_is_excluded_with_the_rules_reason(store, keys, kw, tmp_path):
    values = {**referral(random.Random(2)), "benefit": "PIP"}
    [e] = enrol(store, kw, "X3", values, NOW, "ana", ON).entries
    assert e.kind == "exclusion" and e.arm is None
    assert e.detail["reasons"] == ["Not on ESA, JSA or Universal Credit"]
    assert e.baseline["benefit"] == "PIP"
    consort = _kw_status(store, keys, tmp_path)["consort"]
    assert consort["assessed"] == 1 and consort["randomised"] == 0
    assert consort["excluded"] == {
        "total": 1,
        "reasons": {"Not on ESA, JSA or Universal Credit": 1},
    }


def test_a_value_outside_the_levels_with_no_rule_is_excluded_naming_the_field(store, kw):
    values = {**referral(random.Random(2)), "referral_route": "postman"}
    [e] = enrol(store, kw, "X4", values, NOW, "ana", ON).entries
    assert e.kind == "exclusion"
    assert e.detail["reasons"] == [
        "referral_route is not one of the allowed values (JCP, GP, IAPT, self, VCS)"
    ]


def test_a_level_in_the_wrong_letter_case_is_refused_with_did_you_mean(store, kw, tmp_path):
    with pytest.raises(UserError, match=r"benefit 'uc' .*did you mean 'UC'\?"):
        enrol(store, kw, "X5", {**referral(random.Random(2)), "benefit": "uc"}, NOW, "a", ON)
    rnd = random.Random(9)
    rows = [{"id": f"L{i}", **referral(rnd)} for i in range(4)]
    rows[1]["referral_route"] = "gp"
    with pytest.raises(BatchRejected) as exc:
        allocate_file(store, kw, write_csv(tmp_path / "case.csv", rows), NOW, "ana", ON)
    assert [str(p) for p in exc.value.problems] == [
        "row 3: referral_route 'gp' is not one of the allowed values "
        "(JCP, GP, IAPT, self, VCS): did you mean 'GP'?"
    ]
    assert store.log_head("kw-pilot") == (0, None)


def test_a_list_with_values_outside_the_levels_allocates_the_rest_and_replays(
    store, keys, kw, tmp_path
):
    rnd = random.Random(10)
    rows = [{"id": f"M{i}", **referral(rnd)} for i in range(12)]
    rows[2]["benefit"] = "PIP"
    rows[5]["benefit"] = "IB"
    out = allocate_file(store, kw, write_csv(tmp_path / "pip.csv", rows), NOW, "ana", ON)
    kinds = [e.kind for _, e, _ in out.rows]
    assert kinds.count("exclusion") == 2 and kinds[2] == kinds[5] == "exclusion"
    assert all(e.arm for _, e, _ in out.rows if e.kind == "allocation")
    assert verify(store, "kw-pilot", kw.secret).ok
    consort = _kw_status(store, keys, tmp_path)["consort"]
    assert (consort["assessed"], consort["randomised"]) == (12, 10)


def test_a_number_outside_the_fields_range_is_still_an_error(store, kw):
    with pytest.raises(UserError, match="age '150' is above the maximum 100"):
        enrol(store, kw, "X6", {**referral(random.Random(2)), "age": "150"}, NOW, "a", ON)
    assert store.log_head("kw-pilot") == (0, None)


# --- re-enrolment with different values (issue 11) --------------------------------------


def test_baseline_differences_name_each_field_that_differs():
    from evalkit.baseline import Difference, baseline_differences

    recorded = {"age": 44, "benefit": "ESA", "mh_condition": True, "gender": None}
    given = {"age": 50, "benefit": "ESA", "mh_condition": False, "gender": None}
    assert baseline_differences(recorded, given) == [
        Difference("age", 44, 50),
        Difference("mh_condition", True, False),
    ]
    assert baseline_differences(recorded, dict(recorded)) == []
    assert baseline_differences({"age": 44}, {"age": 44, "housing": "owner"}) == [
        Difference("housing", None, "owner")
    ]


def test_re_enrolment_with_different_values_says_which_differ_and_keeps_the_arm(
    store, kw, tmp_path
):
    from evalkit.baseline import Difference

    values = {**referral(random.Random(1)), "age": "44", "benefit": "ESA"}
    [e] = enrol(store, kw, "R1", values, NOW, "ana", ON).entries
    again = enrol(store, kw, "r1", {**values, "age": "50", "benefit": "JSA"}, NOW, "bob", ON)
    assert again.entries == [] and again.existing == [e]
    assert again.differences == {
        e.unit: [Difference("age", 44, 50), Difference("benefit", "ESA", "JSA")]
    }
    assert enrol(store, kw, "R1", values, NOW, "bob", ON).differences == {}
    rows = [{"id": "R1", **values, "age": "45"}, {"id": "R2", **values}]
    out = allocate_file(store, kw, write_csv(tmp_path / "again.csv", rows), NOW, "ana", ON)
    assert out.differences == {e.unit: [Difference("age", 44, 45)]}
    assert store.log_head("kw-pilot")[0] == 2
