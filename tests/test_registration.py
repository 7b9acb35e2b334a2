"""Registration, amendment and the check every command runs, on both back ends."""

from __future__ import annotations

import json
import stat

import pytest
from sqlalchemy import text

from evalkit.errors import UserError
from evalkit.keys import KeyRing, commitment
from evalkit.registration import amend, history, register, require_registered, standing

NOW = "2026-11-24T12:00:00.000000Z"
LATER = "2026-12-01T09:30:00.000000Z"


@pytest.fixture
def keys(key_dir) -> KeyRing:
    return KeyRing(key_dir)


def edit(path, old, new):
    text_ = path.read_text()
    assert old in text_
    path.write_text(text_.replace(old, new, 1))


def test_register_is_idempotent_and_stores_a_commitment(store, keys, workspace):
    path = workspace / "protocols" / "hackney-keyworker.yaml"
    receipt, created = register(store, keys, path, "ana", NOW)
    assert created and receipt.number == 1 and len(receipt.hash) == 64
    again, created_again = register(store, keys, path, "someone else", LATER)
    assert not created_again
    assert again == receipt  # same hash, time and author: the first registration
    [key_file] = keys.directory.glob("hackney-keyworker-*.key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = bytes.fromhex(json.loads(key_file.read_text())["secret"])
    assert receipt.secret_commitment == commitment(secret)
    pilot = store.pilot("hackney-keyworker")
    assert keys.load(pilot.id, pilot.uid, pilot.secret_commitment) == secret
    assert "PCG64" in json.loads(pilot.environment)["rng"]


def test_comments_and_key_order_do_not_change_the_registration(store, keys, workspace):
    path = workspace / "protocols" / "hackney-keyworker.yaml"
    receipt, _ = register(store, keys, path, "ana", NOW)
    body = path.read_text()
    path.write_text(
        "# reformatted by hand\n"
        + body.replace("  alpha: 0.05\n", "").replace(
            "  se: auto", "  alpha: 0.05\n  se: auto   # moved"
        )
    )
    assert require_registered(store, path, "hackney-keyworker").standing.ok
    assert register(store, keys, path, "ana", LATER)[0].hash == receipt.hash


def test_an_edit_is_refused_until_amended(store, keys, workspace):
    path = workspace / "protocols" / "hackney-keyworker.yaml"
    register(store, keys, path, "ana", NOW)
    edit(path, "    green: 40", "    green: 45")
    with pytest.raises(UserError) as exc:
        require_registered(store, path, "hackney-keyworker")
    assert "progression[0].green" in exc.value.message
    assert "evalkit amend" in exc.value.hint
    with pytest.raises(UserError, match="already registered"):
        register(store, keys, path, "ana", LATER)
    rp = require_registered(store, path, "hackney-keyworker", exploratory=True)
    assert rp.exploratory and rp.standing.status == "changed"

    receipt, s = amend(store, path, "Referral forecast revised with JCP", "ana", LATER)
    assert receipt.number == 2 and receipt.reason == "Referral forecast revised with JCP"
    assert [str(c) for c in s.changes] == ["progression[0].green: 40 -> 45"]
    assert require_registered(store, path, "hackney-keyworker").standing.ok
    rows = history(store, "hackney-keyworker")
    assert [r["number"] for r in rows] == [1, 2]
    assert rows[1]["changes"] == [
        {"path": "progression[0].green", "kind": "changed", "old": 40, "new": 45}
    ]
    assert rows[1]["registered_at"] == LATER


def test_amend_rules(store, keys, workspace):
    path = workspace / "protocols" / "hackney-keyworker.yaml"
    with pytest.raises(UserError, match="not registered"):
        amend(store, path, "why", "ana", NOW)
    register(store, keys, path, "ana", NOW)
    with pytest.raises(UserError, match="needs a reason"):
        amend(store, path, "  ", "ana", NOW)
    receipt, s = amend(store, path, "no change", "ana", NOW)  # nothing to amend: a no-op
    assert receipt.number == 1 and s.status == "current"
    original = path.read_text()
    edit(path, "    green: 40", "    green: 45")
    amend(store, path, "raise the bar", "ana", LATER)
    path.write_text(original)  # back to version 1: superseded, refused
    with pytest.raises(UserError, match="registered version 1, but version 2 is current"):
        require_registered(store, path, "hackney-keyworker")
    with pytest.raises(UserError, match="identical to registered version 1"):
        amend(store, path, "go back", "ana", LATER)


def test_file_id_must_match_the_pilot(store, keys, workspace):
    path = workspace / "protocols" / "hackney-keyworker.yaml"
    register(store, keys, path, "ana", NOW)
    with pytest.raises(UserError, match="has id 'hackney-keyworker', not 'other-pilot'"):
        require_registered(store, path, "other-pilot")


def test_unregistered_pilot_is_refused(store, workspace):
    path = workspace / "protocols" / "hackney-estates.yaml"
    with pytest.raises(UserError, match="not registered") as exc:
        require_registered(store, path, "hackney-estates")
    assert "evalkit register" in exc.value.hint


def test_secret_is_never_in_the_store_or_the_workspace(store_url, store, keys, workspace):
    path = workspace / "protocols" / "hackney-keyworker.yaml"
    receipt, _ = register(store, keys, path, "ana", NOW)
    [key_file] = keys.directory.glob("*.key")
    secret_hex = json.loads(key_file.read_text())["secret"]
    with store.read() as conn:
        for table in ("pilots", "protocol_versions"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                assert secret_hex not in " ".join(str(v) for v in row)
    for f in workspace.rglob("*"):
        if f.is_file():
            assert secret_hex.encode() not in f.read_bytes()
            assert bytes.fromhex(secret_hex) not in f.read_bytes()
    assert secret_hex not in receipt.text()
    assert secret_hex not in json.dumps(receipt.as_dict())


def test_key_dir_inside_the_workspace_is_refused(tmp_path):
    with pytest.raises(UserError, match="inside the workspace"):
        KeyRing(tmp_path / "ws" / "keys").ensure_outside(tmp_path / "ws")
    KeyRing(tmp_path / "keys").ensure_outside(tmp_path / "ws")


def test_wrong_key_file_is_detected(store, keys, workspace):
    path = workspace / "protocols" / "hackney-keyworker.yaml"
    register(store, keys, path, "ana", NOW)
    pilot = store.pilot("hackney-keyworker")
    with pytest.raises(UserError, match="does not match the registered commitment"):
        keys.load(pilot.id, pilot.uid, "0" * 64)


def test_standing_is_pure():
    assert standing("p", [], {"a": 1}).status == "unregistered"
