"""Helpers shared by the allocation tests (and importable by spawned worker processes)."""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path

from evalkit.enrolment import Pilot, enrol, open_pilot
from evalkit.keys import KeyRing
from evalkit.registration import register
from evalkit.store import Store

REPO = Path(__file__).resolve().parents[1]
REGISTERED = "2025-01-02T09:00:00.000000Z"  # before every referral date the tests use
NOW = "2027-04-02T09:00:00.000000Z"
LATER = "2028-06-01T09:00:00.000000Z"  # for entries dated after NOW
BENEFITS = ["ESA", "JSA", "UC"]
ROUTES = ["JCP", "GP", "IAPT", "self", "VCS"]


def make_pilot(
    store: Store,
    keys: KeyRing,
    ws: Path,
    template: str,
    pilot: str,
    edits: list[tuple[str, str]] = (),
) -> Pilot:
    """Copy a flagship protocol under a new id, apply text edits, register and open it."""
    text = (REPO / "protocols" / f"{template}.yaml").read_text()
    text = text.replace(f"id: {template}", f"id: {pilot}", 1)
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = ws / "protocols" / f"{pilot}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    register(store, keys, path, "tester", REGISTERED)
    return open_pilot(store, keys, path, pilot)


def referral(rnd: random.Random, eligible: bool = True) -> dict[str, str]:
    return {
        "age": str(rnd.randint(18, 64)),
        "benefit": rnd.choice(BENEFITS),
        "months_unemployed": str(rnd.randint(24, 120) if eligible else rnd.randint(0, 23)),
        "referral_route": rnd.choice(ROUTES),
        "mh_condition": "true",
    }


def values_for(protocol, rnd: random.Random, **fixed: str) -> dict[str, str]:
    """Eligible baseline values for any protocol's fields (identifiers left out)."""
    out: dict[str, str] = {}
    for f in protocol.fields:
        if f.identifier:
            continue
        if f.name == "age":
            out[f.name] = str(rnd.randint(18, 64))
        elif f.name == "months_unemployed":
            out[f.name] = str(rnd.randint(24, 120))
        elif f.type == "integer":
            out[f.name] = str(rnd.randint(int(f.min or 0), int(f.max or 100)))
        elif f.type == "number":
            out[f.name] = str(rnd.uniform(f.min or 0, f.max or 1))
        elif f.type == "boolean":
            out[f.name] = "true"
        elif f.type == "category":
            allowed = [x for x in f.levels if x in {"ESA", "JSA", "UC"}] or f.levels
            out[f.name] = rnd.choice(allowed)
        else:
            out[f.name] = "2027-04-01"
    out.update(fixed)
    return out


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def enrol_worker(
    url: str, key_dir: str, protocol_path: str, pilot_id: str, worker: int, n: int, barrier=None
) -> None:
    """Run in a separate process: enrol ``n`` referrals into the pilot, starting together
    with the other workers at the barrier and pausing briefly between referrals (as an
    office would), so that the offices' enrolments really interleave."""
    store = Store.open(url)
    pilot = open_pilot(store, KeyRing(Path(key_dir)), Path(protocol_path), pilot_id)
    rnd = random.Random(worker)
    if barrier is not None:
        barrier.wait()
    for i in range(n):
        enrol(store, pilot, f"W{worker}-{i}", referral(rnd), NOW, f"office-{worker}", "2027-04-02")
        time.sleep(0.005)
    store.close()


def kill_target(url: str, key_dir: str, protocol_path: str, pilot_id: str, start: int) -> None:
    """Enrol forever (until killed), from id number ``start`` on."""
    store = Store.open(url)
    pilot = open_pilot(store, KeyRing(Path(key_dir)), Path(protocol_path), pilot_id)
    rnd = random.Random(start)
    i = start
    while True:
        enrol(store, pilot, f"K{i}", referral(rnd), NOW, "office", "2027-04-02")
        i += 1
