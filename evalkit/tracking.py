"""Where a pilot stands: the analysis data set, CONSORT flow, progression criteria,
follow-up due and context notes, all rebuilt from the store on request."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from evalkit import consort, progression
from evalkit.dataset import Dataset, build
from evalkit.dates import entry_on
from evalkit.derivation import window_end
from evalkit.ledger import Entry
from evalkit.protocol import Protocol
from evalkit.store import Store


@dataclass(frozen=True)
class Tracking:
    entries: list[Entry]
    dataset: Dataset
    consort: dict[str, Any]
    progression: list[dict[str, Any]]


def track(
    store: Store,
    protocol: Protocol,
    today: date,
    labels: dict[str, str] | None = None,
    entries: list[Entry] | None = None,
) -> Tracking:
    """Everything rebuilt from the store (``entries``: the log, if already read)."""
    entries = store.log_entries(protocol.id) if entries is None else entries
    data = build(
        protocol,
        entries,
        store.observations(protocol.id),
        store.imports(protocol.id),
        today,
        labels,
    )
    return Tracking(
        entries,
        data,
        consort.flow(protocol, entries, data.rows, labels),
        progression.evaluate(protocol, data.rows),
    )


def followup(
    protocol: Protocol, rows: list[dict[str, Any]], today: date, within_days: int = 30
) -> list[dict[str, Any]]:
    """Follow-up measurements (surveys, statuses) that are due now or within
    ``within_days``, or overdue: what an evaluator should chase, person by person.
    Outcomes from complete agency extracts (spells, events) need no chasing."""
    out = []
    for o in protocol.outcomes:
        if o.derive.source_kind != "measurement":
            continue
        tol = timedelta(weeks=o.window.tolerance_weeks)
        for r in rows:
            status = r[f"{o.name}_status"]
            if status == "observed":
                continue
            due = window_end(date.fromisoformat(r["randomised_on"]), o.window.months)
            opens, closes = due - tol, due + tol
            if status == "missing":
                state = "overdue"
            elif opens <= today + timedelta(days=within_days):
                state = "due now" if opens <= today else "due soon"
            else:
                continue
            item = {
                "unit": r["unit"],
                "outcome": o.name,
                "source": o.source,
                "due": due.isoformat(),
                "window_opens": opens.isoformat(),
                "window_closes": closes.isoformat(),
                "state": state,
            }
            if "ref" in r:
                item["ref"] = r["ref"]
            out.append(item)
    order = {"overdue": 0, "due now": 1, "due soon": 2}
    return sorted(out, key=lambda x: (order[x["state"]], x["due"], x["outcome"], x["unit"]))


def nothing_to_analyse(protocol: Protocol, rows: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Why the registered analysis cannot start yet, as (message, hint), or None.

    It cannot start while nobody's primary outcome is known: either it is not due yet
    (then say when it will be: the first due date and the date by which half are due)
    or its agency's file has not been imported."""
    o = protocol.primary
    status = [r[f"{o.name}_status"] for r in rows]
    if not rows or "observed" in status:
        return None
    pilot = protocol.id
    if "not_yet_due" in status:
        due = sorted(
            window_end(date.fromisoformat(r["randomised_on"]), o.window.months)
            for r in rows
            if r[f"{o.name}_status"] == "not_yet_due"
        )
        median = due[(len(due) - 1) // 2]
        return (
            f"the primary outcome ({o.label}) is not known for anyone yet: it is measured "
            f"{o.window.months} months after randomisation, so the first is due on "
            f"{due[0].isoformat()} and half of those still to come by {median.isoformat()}",
            f"see how the pilot stands now with 'evalkit status {pilot}' and "
            f"'evalkit followup {pilot}'; analyse once the {o.source} file with "
            f"{o.name} has been imported with 'evalkit outcomes import'",
        )
    return (
        f"the primary outcome ({o.label}) is not recorded for anyone, although it is due "
        "for everyone randomised",
        f"import the {o.source} file that holds {o.name}: "
        f"evalkit outcomes import {pilot} FILE --source {o.source}",
    )


def recruitment_by_month(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(r["randomised_on"][:7] for r in rows).items()))


def notes(entries: list[Entry]) -> list[dict[str, Any]]:
    return [
        {
            "date": entry_on(e).isoformat(),
            "text": e.detail.get("reason", ""),
            "recorded_at": e.created_at,
            "by": e.created_by,
        }
        for e in entries
        if e.kind == "event" and e.detail.get("event") == "note"
    ]
