"""The analysis data set: one row per randomised person with baseline values, arm,
place, and every outcome with whether it is observed, not yet due, or missing.

Built from the store's log, outcome records and imports only (pure over those), so the
same data set comes out wherever and whenever it is rebuilt from the same store.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from typing import Any

from evalkit import derivation as D
from evalkit.ledger import Entry
from evalkit.outcome_import import randomisation_dates
from evalkit.protocol import FromSpells, Outcome, Protocol
from evalkit.store import ImportRecord, Observation


@dataclass(frozen=True)
class Dataset:
    rows: list[dict[str, Any]]
    columns: list[str]
    vintage: list[dict[str, Any]]  # which imports the outcomes come from, and when
    as_of: dict[str, str | None]  # each outcome's latest extract date


def outcome_as_of(protocol: Protocol, imports: list[ImportRecord]) -> dict[str, date | None]:
    """The latest extract date of the files that carried each outcome."""
    out: dict[str, date | None] = {o.name: None for o in protocol.outcomes}
    for imp in imports:
        for name in json.loads(imp.outcomes):
            d = date.fromisoformat(imp.as_of)
            if name in out and (out[name] is None or d > out[name]):
                out[name] = d
    return out


def derive(
    o: Outcome, records: list[Observation], randomised: date, as_of: date | None, today: date
) -> D.Derived:
    kind = o.derive.source_kind
    if isinstance(o.derive, FromSpells):
        spells = [
            D.Spell(
                date.fromisoformat(r.start_date or ""),
                date.fromisoformat(r.end_date) if r.end_date else None,
            )
            for r in records
        ]
        min_weeks = o.derive.min_weeks if o.derive.min_weeks > 0 else 1 / 7  # any day
        return D.derive_spells(spells, randomised, o.window.months, min_weeks, as_of, today)
    if kind == "events":
        dates = [date.fromisoformat(r.on_date or "") for r in records]
        return D.derive_events(
            dates, randomised, o.window.months, as_of, today, count=o.type == "count"
        )
    measurements = [
        D.Measurement(date.fromisoformat(r.on_date or ""), float(r.value))
        for r in records
        if r.value is not None
    ]
    return D.derive_measurement(
        measurements, randomised, o.window.months, o.window.tolerance_weeks, today
    )


def build(
    protocol: Protocol,
    entries: list[Entry],
    observations: list[Observation],
    imports: list[ImportRecord],
    today: date,
    labels: dict[str, str] | None = None,
) -> Dataset:
    """One row per randomised person (a stepped wedge's rows carry their period)."""
    labels = labels or {}
    randomised = randomisation_dates(entries)
    by_unit: dict[tuple[str, str], list[Observation]] = defaultdict(list)
    for r in observations:
        by_unit[(r.unit, r.outcome)].append(r)
    events: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        if e.kind == "event" and e.unit:
            events[e.unit].add(e.detail.get("event", ""))
    as_of = outcome_as_of(protocol, imports)
    fields = [f.name for f in protocol.fields if not f.identifier]
    rows = []
    for e in entries:
        if not (e.kind == "allocation" and e.level == "participant" and e.unit):
            continue
        row: dict[str, Any] = {
            "unit": e.unit,
            "arm": labels.get(e.arm or "", e.arm),
            "place": e.place,
            "stratum": e.stratum,
            "randomised_on": randomised[e.unit].isoformat(),
        }
        if "period" in e.detail:
            row["period"] = e.detail["period"]
        if e.detail.get("ref") is not None:
            row["ref"] = e.detail["ref"]
        for name in fields:
            row[name] = e.baseline.get(name)
        row["withdrawn"] = "withdrawn" in events[e.unit]
        row["started"] = (
            True
            if "started" in events[e.unit]
            else (False if "did_not_start" in events[e.unit] else None)
        )
        for o in protocol.outcomes:
            d = derive(
                o, by_unit.get((e.unit, o.name), []), randomised[e.unit], as_of[o.name], today
            )
            row[o.name] = d.value
            row[f"{o.name}_status"] = d.status
        rows.append(row)
    columns = ["unit", "arm", "place", "stratum", "randomised_on"]
    if any("period" in r for r in rows):
        columns.append("period")
    if any("ref" in r for r in rows):
        columns.append("ref")
    columns += [*fields, "withdrawn", "started"]
    for o in protocol.outcomes:
        columns += [o.name, f"{o.name}_status"]
    vintage = [
        {
            "import": i.id,
            "source": i.source,
            "file": i.file_name,
            "sha256": i.file_sha256,
            "rows": i.rows,
            "as_of": i.as_of,
            "imported_at": i.imported_at,
            "correction": i.correction_reason,
        }
        for i in imports
    ]
    return Dataset(
        rows, columns, vintage, {k: v.isoformat() if v else None for k, v in as_of.items()}
    )
