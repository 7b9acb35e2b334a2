"""Enrolment, batch allocation, events and verification: the allocation decisions of
:mod:`evalkit.allocation` run against the store, inside the pilot's write lock.

Allocation only ever runs on the current registered protocol (there is no exploratory
allocation), with the secret from the pilot's key file.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from evalkit import allocation as AL
from evalkit.baseline import Difference, baseline_differences
from evalkit.dates import (
    check_not_future,
    check_randomisation_date,
    date_problems,
    entry_on,
    user_date,
)
from evalkit.errors import BatchRejected, UserError
from evalkit.keys import KeyRing, commitment
from evalkit.ledger import EVENTS, ChainCheck, Entry, chain, check_chain
from evalkit.protocol import Protocol
from evalkit.randomness import RngFactory, pilot_seed
from evalkit.registration import RegisteredProtocol, require_registered
from evalkit.store import Store


@dataclass(frozen=True)
class Pilot:
    """A registered pilot ready to allocate: protocol, secret-derived seed, versions."""

    rp: RegisteredProtocol
    secret: bytes
    registration_hash: str
    registered_on: date  # the day of the first registration: no one is randomised before it

    @property
    def protocol(self) -> Protocol:
        return self.rp.protocol

    def context(self, now: str, by: str) -> AL.Context:
        s = self.rp.standing
        assert s.matched is not None
        return AL.Context(
            self.protocol,
            s.matched.hash,
            s.matched.number,
            RngFactory(pilot_seed(self.secret, self.registration_hash)),
            now,
            by,
        )


def open_pilot(store: Store, keys: KeyRing, path: Path, pilot: str) -> Pilot:
    rp = require_registered(store, path, pilot)
    record = rp.pilot
    assert record is not None
    secret = keys.load(record.id, record.uid, record.secret_commitment)
    first = store.versions(pilot)[0]
    return Pilot(rp, secret, first.hash, date.fromisoformat(first.registered_at[:10]))


def checked_date(pilot: Pilot, on: str, now: str, backdate: str | None = None) -> str:
    """The referral or joining date as YYYY-MM-DD, checked: a real date, not after today
    (the day of ``now``), not before the pilot's registration unless ``backdate`` gives the
    reason."""
    day = user_date(on, "the date")
    check_randomisation_date(day, pilot.registered_on, date.fromisoformat(now[:10]), backdate)
    return day.isoformat()


def with_backdate(pilot: Pilot, entries: list[Entry], reason: str | None) -> list[Entry]:
    """Mark entries dated before registration with the stated reason (the reports show it)."""
    if not reason:
        return entries
    first = pilot.registered_on.isoformat()
    return [
        replace(e, detail={**e.detail, "backdated": reason.strip()})
        if (e.detail.get("on") or first) < first
        else e
        for e in entries
    ]


@dataclass(frozen=True)
class Written:
    """What an enrolment or a batch did, for printing."""

    entries: list[Entry]  # new entries written
    existing: list[Entry] = field(default_factory=list)  # units already in the log
    head: tuple[int, str | None] = (0, None)
    rows: list[tuple[int | None, Entry, bool]] = field(default_factory=list)  # file order
    # for units already in the log: each baseline value given now that differs from the
    # recorded one, by pseudonym (the allocation stands; the caller warns)
    differences: dict[str, list[Difference]] = field(default_factory=dict)


def _differences(existing: list[Entry], refs: list[AL.Referral]) -> dict[str, list[Difference]]:
    recorded = {e.unit: e.baseline for e in existing}
    out = {}
    for r in refs:
        if r.unit in recorded:
            diffs = baseline_differences(recorded[r.unit], r.values)
            if diffs:
                out[r.unit] = diffs
    return out


def _check_ref(pilot: Pilot, ref: str | None) -> None:
    if ref and not pilot.protocol.data_protection.evaluator_reference:
        raise UserError(
            "this protocol does not allow evaluators' own references",
            "set data_protection.evaluator_reference: true (an amendment)",
        )


def enrol(
    store: Store,
    pilot: Pilot,
    raw_id: str,
    raw_values: dict[str, Any],
    now: str,
    by: str,
    on: str,
    ref: str | None = None,
    backdate: str | None = None,
) -> Written:
    """One referral: its existing record if already enrolled (with the values that differ
    from those recorded), else an exclusion (with the rules' reasons) or an allocation,
    written with the head moved in one transaction. ``backdate`` is the reason for a
    referral dated before registration."""
    _check_ref(pilot, ref)
    on = checked_date(pilot, on, now, backdate)
    refs, problems = AL.check_referrals(
        pilot.protocol, pilot.secret, [(None, raw_id, raw_values)], on
    )
    refs = [replace(r, ref=ref) for r in refs]
    if problems:
        raise UserError(
            "cannot enrol: " + "; ".join(str(p) for p in problems),
            "give every field with --set FIELD=VALUE, as the protocol declares it",
        )
    ctx = pilot.context(now, by)
    with store.log_tx(pilot.protocol.id) as tx:
        existing = tx.unit("participant", refs[0].unit)
        if existing is not None:
            return Written([], [existing], tx.head(), differences=_differences([existing], refs))
        entry = AL.exclusion(ctx, refs[0]) if refs[0].reasons else AL.decide(ctx, tx, refs[0])
        entries = with_backdate(pilot, AL.with_refs([entry], refs), backdate)
        sealed = chain(entries, pilot.protocol.id, pilot.registration_hash, tx.head())
        head = tx.append(sealed)
    return Written(sealed, [], head)


def read_table(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a CSV or Excel file as (row number as a spreadsheet shows it, values)."""
    if not path.is_file():
        raise UserError(f"{path} does not exist", "check the file name")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                rows = [(i, dict(r)) for i, r in enumerate(reader, start=2)]
                header = reader.fieldnames or []
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text", "save the file as CSV UTF-8") from None
        except csv.Error as exc:
            raise UserError(f"{path} is not a readable CSV file: {exc}") from None
    elif suffix in {".xlsx", ".xlsm"}:
        from openpyxl import load_workbook

        try:
            wb = load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:
            raise UserError(f"{path} is not a readable Excel file: {exc}") from None
        sheet = wb.worksheets[0]
        it = sheet.iter_rows(values_only=True)
        header = [str(h).strip() if h is not None else "" for h in next(it, ())]
        rows = []
        for i, values in enumerate(it, start=2):
            if values is None or all(v is None for v in values):
                continue
            rows.append((i, dict(zip(header, values, strict=False))))
        wb.close()
    else:
        raise UserError(
            f"{path}: evalkit reads .csv and .xlsx files",
            "save the list as CSV UTF-8 or Excel workbook",
        )
    if not header:
        raise UserError(f"{path} has no header row", "the first row must name the columns")
    for _, row in rows:
        row.pop(None, None)  # type: ignore[call-overload]  # cells beyond the header
    return rows


def allocate_file(
    store: Store,
    pilot: Pilot,
    file: Path,
    now: str,
    by: str,
    on: str,
    id_column: str = "id",
    backdate: str | None = None,
) -> Written:
    """Allocate every row of a file, or none: all rows are checked before anything is
    drawn, and all entries are written in one transaction. ``on`` is the referral (or
    joining) date of every row; ``backdate`` the reason when it is before registration."""
    p = pilot.protocol
    on = checked_date(pilot, on, now, backdate)
    rows = read_table(file)
    places_first = p.unit.level == "place" and not _places_allocated(store, p.id)
    if places_first:
        col = p.unit.place_field or "place"
        _require_column(file, rows, col)
        refs, problems = AL.check_places(p, [(i, r.get(col), _without(r, col)) for i, r in rows])
    else:
        place_col = p.unit.place_field
        if (
            p.unit.level == "place"
            and rows
            and id_column not in rows[0][1]
            and (place_col in rows[0][1])
        ):
            raise UserError(
                f"{file} lists places, but the places of this pilot have already been allocated",
                "a place design allocates its places once; "
                "later lists are people, with an 'id' column and their place",
            )
        _require_column(file, rows, id_column)
        has_ref = bool(rows) and "ref" in rows[0][1]
        if has_ref:
            _check_ref(pilot, "ref")
        refs, problems = AL.check_referrals(
            p,
            pilot.secret,
            [(i, r.get(id_column), _without(_without(r, id_column), "ref")) for i, r in rows],
            on,
        )
        if has_ref:
            by_row = {i: r.get("ref") for i, r in rows}
            refs = [
                replace(x, ref=str(by_row[x.row]).strip() or None) if by_row.get(x.row) else x
                for x in refs
            ]
    if problems:
        raise BatchRejected(file, problems)
    ctx = pilot.context(now, by)
    with store.log_tx(p.id) as tx:
        if places_first:
            entries = AL.allocate_places(ctx, tx, refs)
            existing: list[Entry] = []
        else:
            known = tx.units("participant", [r.unit for r in refs])
            existing = [known[r.unit] for r in refs if r.unit in known]
            entries = AL.with_refs(AL.allocate_batch(ctx, tx, refs), refs)
        entries = with_backdate(pilot, entries, backdate)
        sealed = chain(entries, p.id, pilot.registration_hash, tx.head())
        head = tx.append(sealed)
    new = {e.unit: e for e in sealed}
    old = {e.unit: e for e in existing}
    rows = [(r.row, new.get(r.unit) or old[r.unit], r.unit not in new) for r in refs]
    return Written(sealed, existing, head, rows, _differences(existing, refs))


def write_results(path: Path, written: Written) -> None:
    """One line per input row: row number, pseudonym (or place), status, arm, reasons.
    No raw identifier is written; join back to your list by row number."""
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "unit", "status", "arm", "crossover_period", "reasons"])
        for row, e, existed in written.rows:
            state = "excluded" if e.kind == "exclusion" else "allocated"
            w.writerow(
                [
                    row,
                    e.unit,
                    f"already {state}" if existed else state,
                    e.arm or "",
                    e.detail.get("crossover_period", ""),
                    "; ".join(e.detail.get("reasons", [])),
                ]
            )
    tmp.replace(path)


def _places_allocated(store: Store, pilot_id: str) -> bool:
    return store.count_allocations(pilot_id, level="place") > 0


def _require_column(file: Path, rows: list, column: str) -> None:
    if rows and column not in rows[0][1]:
        cols = ", ".join(k for k in rows[0][1] if k)
        raise UserError(
            f"{file} has no column {column!r} (columns: {cols})",
            "name the identifier column 'id' or give --id-column",
        )


def _without(row: dict[str, Any], column: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != column and k}


def record_event(
    store: Store,
    pilot: Pilot,
    raw_id: str | None,
    kind: str,
    now: str,
    by: str,
    on: str,
    reason: str,
) -> Written:
    """Withdrawal, did-not-start, started, unblinding or a context note: a new entry,
    never an edit. Its date is checked: not in the future, and for a person's event not
    before that person was randomised (a note may record something from before the
    pilot, such as a contract that ended)."""
    if kind not in EVENTS:
        raise UserError(f"unknown event {kind!r}", f"use one of {', '.join(EVENTS)}")
    day = user_date(on, "the date")
    check_not_future(day, date.fromisoformat(now[:10]))
    ctx = pilot.context(now, by)
    with store.log_tx(pilot.protocol.id) as tx:
        unit = None
        if raw_id is not None:
            unit = AL.pseudonym(pilot.secret, raw_id)
            found = tx.unit("participant", unit)
            if found is None or found.kind != "allocation":
                raise UserError(
                    "no allocation for that id in this pilot",
                    "check the id; events are recorded for allocated people",
                )
            if day < entry_on(found):
                raise UserError(
                    f"the date {day.isoformat()} is before this person was randomised "
                    f"({entry_on(found).isoformat()})",
                    "give the date it happened, on or after randomisation",
                )
        elif kind not in {"unblinded", "note"}:
            raise UserError(f"a {kind} event needs --unit-id")
        entry = AL.event(ctx, unit, kind, day.isoformat(), reason)
        sealed = chain([entry], pilot.protocol.id, pilot.registration_hash, tx.head())
        head = tx.append(sealed)
    return Written(sealed, [], head)


# --- verification ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    chain: ChainCheck
    replayed: int = 0
    replay_problem: str = ""
    bad_seq: int | None = None
    published_head_found: bool | None = None
    date_problems: list[str] = field(default_factory=list)  # entries with unreadable dates

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.replay_problem and self.published_head_found is not False


def verify(
    store: Store, pilot_id: str, secret: bytes | None = None, published_head: str | None = None
) -> Verification:
    """Check the chain; with the secret, replay every allocation from scratch."""
    record = store.pilot(pilot_id)
    if record is None:
        raise UserError(f"pilot {pilot_id!r} is not registered")
    versions = store.versions(pilot_id)
    entries = store.log_entries(pilot_id)
    check = check_chain(
        pilot_id,
        versions[0].hash,
        entries,
        (record.log_count, record.log_head)
        if record.log_head
        else (record.log_count, None)
        if record.log_count
        else None,
    )
    found = None
    if published_head is not None:
        found = published_head in {e.entry_hash for e in entries}
    problems = date_problems(entries)
    if not check.ok or secret is None:
        return Verification(check, published_head_found=found, date_problems=problems)
    if commitment(secret) != record.secret_commitment:
        raise UserError(
            "that secret does not match the commitment made at registration",
            "check the secret you were given",
        )
    protocols = {v.number: Protocol.model_validate(json.loads(v.canonical)) for v in versions}
    hashes = {v.number: v.hash for v in versions}
    rngs = RngFactory(pilot_seed(secret, versions[0].hash))
    replayed, problem, bad = replay(entries, protocols, hashes, rngs)
    return Verification(check, replayed, problem, bad, found, problems)


def replay(
    entries: list[Entry], protocols: dict[int, Protocol], hashes: dict[int, str], rngs: RngFactory
) -> tuple[int, str, int | None]:
    """Recompute every allocation with the same code and seed; name the first mismatch."""
    mem = AL.MemoryView()
    done_batches: set[tuple[str, Any]] = set()
    replayed = 0
    for e in entries:
        if e.kind == "allocation":
            ctx = AL.Context(
                protocols[e.protocol_number],
                hashes[e.protocol_number],
                e.protocol_number,
                rngs,
                e.created_at,
                e.created_by,
            )
            method = e.detail.get("method")
            if e.level == "place" and ("places", None) not in done_batches:
                done_batches.add(("places", None))
                group = [x for x in entries if x.kind == "allocation" and x.level == "place"]
                refs = [AL.Referral(None, x.unit or "", x.baseline) for x in group]
                expected = AL.allocate_places(ctx, mem, refs)
                for x, y in zip(group, expected, strict=True):
                    if (x.arm, x.probabilities, x.detail) != (y.arm, y.probabilities, y.detail):
                        return replayed, f"place entry {x.seq} does not replay", x.seq
            elif method == "complete" and ("complete", e.detail["batch"]) not in done_batches:
                done_batches.add(("complete", e.detail["batch"]))
                group = [
                    x
                    for x in entries
                    if x.kind == "allocation" and x.detail.get("batch") == e.detail["batch"]
                ]
                refs = [
                    AL.Referral(None, x.unit or "", x.baseline, [], x.detail.get("on"))
                    for x in group
                ]
                view = AL.MemoryView(entries=[x for x in mem.pending])
                expected = [y for y in AL.allocate_batch(ctx, view, refs)]
                for x, y in zip(group, expected, strict=True):
                    if (x.arm, x.probabilities) != (y.arm, y.probabilities):
                        return replayed, f"entry {x.seq} does not replay", x.seq
            elif e.level == "participant" and method != "complete":
                ref = AL.Referral(None, e.unit or "", e.baseline, [], e.detail.get("on"))
                y = AL.decide(ctx, mem, ref)
                if (e.arm, e.probabilities, e.stratum) != (y.arm, y.probabilities, y.stratum):
                    return (
                        replayed,
                        f"entry {e.seq} does not replay: the log says {e.arm!r}, "
                        f"the registered procedure gives {y.arm!r}",
                        e.seq,
                    )
            replayed += 1
        mem.add(e)
    return replayed, "", None
