"""Pseudonymised CSV exports of a pilot's tables (never a raw identifier)."""

from __future__ import annotations

import csv
import io
import json
from datetime import date
from pathlib import Path

from evalkit.errors import UserError
from evalkit.exploratory import COMPARISON_COLUMN
from evalkit.keys import KeyRing
from evalkit.registration import require_registered
from evalkit.status import is_blinded, neutral_labels
from evalkit.store import Store
from evalkit.tracking import track


def _csv(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
    return buf.getvalue()


def export_table(
    store: Store, keys: KeyRing, path: Path, pilot: str, what: str, today: date
) -> str:
    rp = require_registered(store, path, pilot, exploratory=True)
    record = rp.pilot
    if record is None:
        raise UserError(f"pilot {pilot!r} is not registered")
    entries = store.log_entries(pilot)
    labels: dict[str, str] = {}
    if is_blinded(rp.protocol.reporting.blinded, entries):
        secret = keys.load(record.id, record.uid, record.secret_commitment)
        labels = neutral_labels([a.name for a in rp.protocol.arms], secret)
    if what == "analysis":
        data = track(store, rp.protocol, today, labels).dataset
        if labels:  # blinded: saying which neutral label is the comparison would unblind
            return _csv(data.columns, data.rows)
        # the protocol's first arm is the comparison; `evalkit estimate` reads this column
        # so that an effect from the export has the registered direction
        first = rp.protocol.arms[0].name
        return _csv(
            [*data.columns, COMPARISON_COLUMN], [{**r, COMPARISON_COLUMN: first} for r in data.rows]
        )
    if what == "allocations":
        cols = [
            "seq",
            "kind",
            "level",
            "unit",
            "stratum",
            "place",
            "arm",
            "probabilities",
            "detail",
            "protocol_number",
            "created_at",
            "created_by",
            "entry_hash",
        ]
        rows = []
        for e in entries:
            row = dict(e.__dict__)
            row["arm"] = labels.get(e.arm or "", e.arm)
            probs = e.probabilities or {}
            row["probabilities"] = json.dumps({labels.get(k, k): v for k, v in probs.items()})
            row["detail"] = json.dumps(e.detail, sort_keys=True)
            rows.append(row)
        return _csv(cols, rows)
    cols = [
        "unit",
        "outcome",
        "kind",
        "obs_key",
        "value",
        "start_date",
        "end_date",
        "on_date",
        "version",
        "import_id",
    ]
    return _csv(cols, [o.__dict__ for o in store.observations(pilot, every_version=True)])
