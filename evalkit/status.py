"""A pilot at a glance, from the store: registration, allocation counts, exclusions,
events and the log head. Arms are shown under neutral labels while a blinded pilot has
not recorded its unblinding."""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

from evalkit.dates import date_problems
from evalkit.keys import KeyRing, derive
from evalkit.ledger import Entry
from evalkit.randomness import RngFactory
from evalkit.registration import require_registered
from evalkit.store import Store


def neutral_labels(arms: list[str], secret: bytes) -> dict[str, str]:
    """'Arm A', 'Arm B', ... in an order drawn from the secret, so the label does not
    give away which arm is the control."""
    order = RngFactory(derive(secret, "blinding"))("labels").permutation(len(arms))
    return {arms[i]: f"Arm {chr(65 + k)}" for k, i in enumerate(order)}


def is_blinded(blinded: bool, entries: list[Entry]) -> bool:
    return blinded and not any(
        e.kind == "event" and e.detail.get("event") == "unblinded" for e in entries
    )


def summarise(entries: list[Entry], labels: dict[str, str]) -> dict[str, Any]:
    allocated: dict[str, Counter] = {"participant": Counter(), "place": Counter()}
    excluded: Counter = Counter()
    events: Counter = Counter()
    for e in entries:
        if e.kind == "allocation":
            key = (
                labels.get(e.arm, e.arm)
                if e.arm
                else (f"crossover period {e.detail.get('crossover_period')}")
            )
            allocated[e.level or "participant"][key] += 1
        elif e.kind == "exclusion":
            for reason in e.detail.get("reasons", []):
                excluded[reason] += 1
        else:
            events[e.detail.get("event", "event")] += 1
    return {
        "allocated": {k: dict(sorted(v.items())) for k, v in allocated.items()},
        "excluded": dict(excluded.most_common()),
        "events": dict(sorted(events.items())),
    }


def pilot_status(
    store: Store, keys: KeyRing, path: Path, pilot: str, today: date | None = None
) -> dict[str, Any]:
    rp = require_registered(store, path, pilot, exploratory=True)
    record = rp.pilot
    if record is None:
        from evalkit.errors import UserError

        raise UserError(
            f"pilot {pilot!r} is not registered",
            f"register it first: evalkit register protocols/{pilot}.yaml",
        )
    entries = store.log_entries(pilot)
    versions = store.versions(pilot)
    blinded = is_blinded(rp.protocol.reporting.blinded, entries)
    labels: dict[str, str] = {}
    if blinded:
        secret = keys.load(record.id, record.uid, record.secret_commitment)
        labels = neutral_labels([a.name for a in rp.protocol.arms], secret)
    from evalkit.tracking import followup, notes, recruitment_by_month, track

    t = track(store, rp.protocol, today or date.today(), labels, entries)
    due = followup(rp.protocol, t.dataset.rows, today or date.today())
    return {
        "pilot": pilot,
        "title": rp.protocol.title,
        "amendments": [
            {"version": v.number, "reason": v.reason, "at": v.registered_at} for v in versions[1:]
        ],
        "recruitment_by_month": recruitment_by_month(t.dataset.rows),
        "target_units": rp.protocol.sample_size.target_units,
        "consort": t.consort,
        "progression": t.progression,
        "followup": dict(Counter(d["state"] for d in due)),
        "notes": notes(entries),
        "data_vintage": t.dataset.vintage,
        "versions": len(versions),
        "registered_version": versions[-1].number,
        "registered_hash": versions[-1].hash,
        "protocol_file_current": rp.standing.ok,
        "blinded": blinded,
        "date_problems": date_problems(entries),
        **summarise(entries, labels),
        "log_entries": record.log_count,
        "log_head": record.log_head,
    }
