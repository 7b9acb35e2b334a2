"""Importing outcome files from the agencies: every row checked first, then all rows or
none; a file imported twice changes nothing; a changed value needs a stated correction and
is kept as a new version beside the old one.

:func:`plan_import` is pure (rows in, records and problems out); :func:`import_outcomes`
wraps it with the file, the store and the pilot's key.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from evalkit.allocation import RowProblem, pseudonymiser
from evalkit.baseline import check_range
from evalkit.dates import entry_on, parse_iso, stored_on
from evalkit.enrolment import Pilot, read_table
from evalkit.errors import BatchRejected, UserError
from evalkit.ledger import Entry
from evalkit.protocol import ColumnMap, ImportSource, Outcome, Protocol
from evalkit.store import ImportRecord, Observation, Store

TRUE = {"1", "true", "yes", "y"}
FALSE = {"0", "false", "no", "n"}

# --date-format: the strptime directives a date may be written with, by what they give
_PARTS = {"d": "day", "m": "month", "b": "month", "B": "month", "Y": "year"}
_TIME = {"H", "M", "S"}  # a time after the date is read and ignored
_EXAMPLE = datetime(2026, 11, 24)
_DAY_FIRST = re.compile(r"\d{1,2}([/.-])\d{1,2}\1\d{4}")


@dataclass(frozen=True)
class ImportPlan:
    new: list[Observation]  # records to write (first versions, corrections, ended spells)
    unchanged: int
    corrected: int
    problems: list[RowProblem]
    skipped_not_randomised: int = 0  # rows of people assessed but excluded
    ended: int = 0  # spells open in an earlier extract that have ended since


def randomisation_dates(entries: list[Entry]) -> dict[str, date]:
    """Each randomised person's pseudonym and randomisation (or joining) date."""
    return {
        e.unit: entry_on(e)
        for e in entries
        if e.kind == "allocation" and e.level == "participant" and e.unit
    }


def resolve_mapping(
    protocol: Protocol, source: str, id_column: str | None, overrides: list[str]
) -> ImportSource:
    """The protocol's mapping for the agency, with ``--map OUTCOME:FIELD=COLUMN`` and
    ``--id-column`` from the command line on top."""
    base = next((m for m in protocol.imports if m.source == source), None)
    columns = {c.outcome: c for c in base.columns} if base else {}
    for item in overrides:
        left, sep, column = item.partition("=")
        outcome, sep2, key = left.partition(":")
        if not sep or not sep2 or key not in {"value", "date", "start", "end"} or not column:
            raise UserError(
                f"--map {item!r} is not OUTCOME:FIELD=COLUMN",
                "FIELD is value, date, start or end, e.g. --map wellbeing:value=score",
            )
        current = columns.get(outcome) or ColumnMap(outcome=outcome)
        columns[outcome] = current.model_copy(update={key: column})
    if not columns:
        raise UserError(
            f"no column mapping for {source} files",
            "declare one under 'imports' in the protocol, or give --map OUTCOME:FIELD=COLUMN",
        )
    return ImportSource(
        source=source,
        id_column=id_column or (base.id_column if base else "id"),
        columns=list(columns.values()),
    )


def _blank(v: Any) -> bool:
    return (
        v is None
        or (isinstance(v, float) and math.isnan(v))
        or (isinstance(v, str) and not v.strip())
    )


def check_date_format(fmt: str) -> str:
    """A ``--date-format`` that reads each date one way only: a day (%d), a month (%m,
    %b or %B) and a four-digit year (%Y), each once, optionally followed by a time
    (%H, %M, %S) that is ignored. Anything else would leave part of the date to be
    guessed (a two-digit year's century, a missing month), so it is refused."""
    hint = (
        "write the form the file's dates are in, e.g. --date-format %d/%m/%Y for "
        "24/11/2026 (day, month and four-digit year)"
    )
    found: dict[str, int] = {"day": 0, "month": 0, "year": 0}
    for code in re.findall(r"%(.?)", fmt.replace("%%", "")):
        if code == "y":
            raise UserError(
                f"--date-format {fmt!r} has a two-digit year (%y): the century would be guessed",
                hint,
            )
        if code in _PARTS:
            found[_PARTS[code]] += 1
        elif code not in _TIME:
            raise UserError(
                f"--date-format {fmt!r}: %{code} is not a directive evalkit reads in a date "
                "(it reads %d, %m, %b, %B, %Y, and %H, %M, %S for a time)",
                hint,
            )
    twice = [part for part, n in found.items() if n > 1]
    if twice:
        raise UserError(f"--date-format {fmt!r} gives the {twice[0]} twice", hint)
    missing = [f"no {part}" for part, n in found.items() if n == 0]
    if missing:
        words = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
        raise UserError(f"--date-format {fmt!r} has {words}", hint)
    return fmt


def _date(v: Any, fmt: str | None = None) -> date:
    """A date cell: Excel's own dates as they are; text in the form ``fmt`` (a checked
    --date-format) or, without one, YYYY-MM-DD only. The order of day and month is never
    guessed: a cell that looks like 24/11/2026 gets a hint to give the format."""
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    text = str(v).strip()
    if fmt is not None:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            raise ValueError(
                f"is not a date in the form {fmt} (e.g. {_EXAMPLE.strftime(fmt)})"
            ) from None
    try:
        return parse_iso(text)
    except ValueError:
        pass
    message = "is not a date (write YYYY-MM-DD)"
    day_first = _DAY_FIRST.fullmatch(text)
    if day_first:
        sep = day_first.group(1)
        message += (
            f"; if the file writes dates day first, import it with --date-format %d{sep}%m{sep}%Y"
        )
    raise ValueError(message)


def _value(o: Outcome, v: Any) -> float:
    text = str(v).strip().lower() if not isinstance(v, bool | int | float) else v
    if o.type == "binary":
        if text is True or text in TRUE or text == 1:
            return 1.0
        if text is False or text in FALSE or text == 0:
            return 0.0
        raise ValueError("is not yes/no (write 1 or 0)")
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise ValueError("is not a number") from None
    if not math.isfinite(x):
        raise ValueError("is not a finite number")
    if o.type == "count" and (x < 0 or not x.is_integer()):
        raise ValueError("is not a whole number of 0 or more")
    check_range(x, o.min, o.max)
    return x


def plan_import(
    protocol: Protocol,
    mapping: ImportSource,
    rows: list[tuple[int, dict]],
    pseudonym_of,
    randomised: dict[str, date],
    latest: dict[tuple[str, str, str], Observation],
    today: date,
    correct: bool,
    excluded: set[str] | frozenset[str] = frozenset(),
    date_format: str | None = None,
) -> ImportPlan:
    """Check every row against the protocol, the allocations and what is already stored.

    Rows of people in ``excluded`` (assessed but never randomised) are skipped and
    counted: agencies are often sent everyone referred, and those people have no
    outcomes in the pilot, so their rows are neither kept nor read. A person in neither
    the randomised nor the excluded is still a problem: the file may be another pilot's.
    Every date cell is read with ``date_format`` (see :func:`check_date_format`), else as
    YYYY-MM-DD."""
    problems: list[RowProblem] = []
    outcomes = {o.name: o for o in protocol.outcomes}
    for c in mapping.columns:
        if c.outcome not in outcomes:
            problems.append(
                RowProblem(
                    None,
                    c.outcome,
                    None,
                    f"is not an outcome of this protocol (outcomes: {', '.join(outcomes)})",
                )
            )
        elif outcomes[c.outcome].source != mapping.source:
            problems.append(
                RowProblem(
                    None,
                    c.outcome,
                    None,
                    f"comes from {outcomes[c.outcome].source}, not {mapping.source}",
                )
            )
    header = set(rows[0][1]) if rows else set()
    for c in mapping.columns:
        for key in ("value", "date", "start", "end"):
            col = getattr(c, key)
            if col is not None and rows and col not in header:
                problems.append(
                    RowProblem(
                        None,
                        col,
                        None,
                        f"is not a column of the file (needed for {c.outcome} {key})",
                    )
                )
    if rows and mapping.id_column not in header:
        problems.append(RowProblem(None, mapping.id_column, None, "is not a column of the file"))
    if problems:
        return ImportPlan([], 0, 0, problems)

    seen: dict[tuple[str, str, str], tuple[int, Observation]] = {}
    skipped = 0
    for row, values in rows:
        raw_id = values.get(mapping.id_column)
        if _blank(raw_id):
            problems.append(RowProblem(row, mapping.id_column, None, "is missing"))
            continue
        unit = pseudonym_of(str(raw_id))
        if unit not in randomised and unit in excluded:
            skipped += 1
            continue
        if unit not in randomised:
            problems.append(
                RowProblem(
                    row,
                    mapping.id_column,
                    None,
                    "is not a randomised person of this pilot (the id is not shown)",
                )
            )
            continue
        start = randomised[unit]
        for c in mapping.columns:
            o = outcomes[c.outcome]
            obs = _record(protocol.id, unit, o, c, values, row, start, today, problems, date_format)
            if obs is None:
                continue
            key = (unit, o.name, obs.obs_key)
            if key in seen:
                first_row, first = seen[key]
                if not first.same_content(obs):
                    problems.append(
                        RowProblem(
                            row,
                            o.name,
                            None,
                            f"gives a different record "
                            f"for the same person and date as row {first_row}",
                        )
                    )
                continue
            seen[key] = (row, obs)

    new, unchanged, corrected, ended = [], 0, 0, 0
    for key, (row, obs) in seen.items():
        old = latest.get(key)
        if old is None:
            new.append(obs)
        elif old.same_content(obs):
            unchanged += 1
        elif _spell_ended(old, obs):  # new information, not a correction
            new.append(replace(obs, version=old.version + 1))
            ended += 1
        elif correct:
            new.append(replace(obs, version=old.version + 1))
            corrected += 1
        else:
            problems.append(
                RowProblem(
                    row,
                    obs.outcome,
                    _shown(obs),
                    "differs from the "
                    f"stored value {_shown(old)}; to change it, import "
                    'with --correct --reason "..."',
                )
            )
    problems.sort(key=lambda p: -1 if p.row is None else p.row)
    return ImportPlan(new, unchanged, corrected, problems, skipped, ended)


def _spell_ended(old: Observation, new: Observation) -> bool:
    """A spell that was still open in an earlier extract and has an end date in this one:
    agencies report a job's end once it ends, so this is an update, kept as a new version
    like a correction but needing no reason."""
    return (
        old.kind == new.kind == "spell"
        and old.end_date is None
        and new.end_date is not None
        and old.start_date == new.start_date
    )


def _shown(o: Observation) -> str:
    if o.kind == "spell":
        return f"{o.start_date} to {o.end_date or 'open'}"
    return f"{o.value:g}" if o.value is not None else str(o.on_date)


class _Bad(Exception):
    """A cell that cannot be used; already reported."""


def _cell(values: dict, column: str, row: int, parse, problems: list[RowProblem]):
    try:
        return parse(values[column])
    except ValueError as exc:
        problems.append(RowProblem(row, column, str(values[column]), str(exc)))
        raise _Bad from None


def _record(
    pilot: str,
    unit: str,
    o: Outcome,
    c: ColumnMap,
    values: dict,
    row: int,
    randomised: date,
    today: date,
    problems: list[RowProblem],
    date_format: str | None = None,
) -> Observation | None:
    """The record one row gives for one outcome (None when the row has none for it)."""
    kind = o.derive.source_kind

    def dated(column: str, earliest: date | None) -> date:
        d = _cell(values, column, row, lambda v: _date(v, date_format), problems)
        if d > today:
            problems.append(RowProblem(row, column, d.isoformat(), "is in the future"))
            raise _Bad
        if earliest is not None and d < earliest:
            problems.append(
                RowProblem(
                    row,
                    column,
                    d.isoformat(),
                    f"is before the person's randomisation ({earliest.isoformat()})",
                )
            )
            raise _Bad
        return d

    try:
        if kind == "spells":
            if c.start is None or _blank(values.get(c.start)):
                return None
            s = dated(c.start, None)  # spells may start before randomisation
            e = None
            if c.end is not None and not _blank(values.get(c.end)):
                e = dated(c.end, None)
                if e < s:
                    problems.append(
                        RowProblem(row, c.end, e.isoformat(), "is before the spell's start")
                    )
                    return None
            return Observation(
                pilot,
                unit,
                o.name,
                s.isoformat(),
                "spell",
                None,
                s.isoformat(),
                e.isoformat() if e else None,
                None,
            )
        has_value = c.value is not None and not _blank(values.get(c.value))
        if c.date is None or _blank(values.get(c.date)):
            if kind == "measurement" and has_value:
                problems.append(
                    RowProblem(row, c.date or "date", None, "is missing for a recorded value")
                )
            return None
        d = dated(c.date, randomised)
        if kind == "events":
            return Observation(
                pilot, unit, o.name, d.isoformat(), "event", None, None, None, d.isoformat()
            )
        if not has_value:
            return None
        value = _cell(values, c.value or "", row, lambda v: _value(o, v), problems)
        return Observation(
            pilot, unit, o.name, d.isoformat(), "measurement", value, None, None, d.isoformat()
        )
    except _Bad:
        return None


@dataclass(frozen=True)
class ImportResult:
    import_id: int | None
    rows: int
    new: int
    corrected: int
    unchanged: int
    skipped_not_randomised: int = 0  # rows of people assessed but excluded, not kept
    ended: int = 0  # spells open in an earlier extract that have ended since


def import_outcomes(
    store: Store,
    pilot: Pilot,
    file: Path,
    source: str,
    id_column: str | None,
    overrides: list[str],
    correct: bool,
    reason: str | None,
    as_of: date,
    today: date,
    now: str,
    by: str,
    date_format: str | None = None,
) -> ImportResult:
    """Import one agency file into the pilot: all rows or none. ``date_format`` is the
    strptime form of the file's text dates (e.g. %d/%m/%Y); without it, YYYY-MM-DD."""
    if date_format is not None:
        check_date_format(date_format)
    if correct and not (reason and reason.strip()):
        raise UserError("a correction needs a reason", 'give --reason "what was wrong"')
    if as_of > today:
        raise UserError(f"--as-of {as_of.isoformat()} is in the future")
    mapping = resolve_mapping(pilot.protocol, source, id_column, overrides)
    rows = read_table(file)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    randomised = _randomised(store, pilot.protocol.id)
    excluded = store.excluded_units(pilot.protocol.id)
    with store.outcome_tx(pilot.protocol.id) as tx:
        plan = plan_import(
            pilot.protocol,
            mapping,
            rows,
            pseudonymiser(pilot.secret),
            randomised,
            tx.latest(),
            today,
            correct,
            excluded,
            date_format,
        )
        if plan.problems:
            raise BatchRejected(file, plan.problems, "imported")
        if not plan.new:
            return ImportResult(None, len(rows), 0, 0, plan.unchanged, plan.skipped_not_randomised)
        record = ImportRecord(
            pilot.protocol.id,
            source,
            file.name,
            digest,
            len(rows),
            json.dumps(sorted({c.outcome for c in mapping.columns})),
            as_of.isoformat(),
            now,
            by,
            reason.strip() if correct and reason else None,
        )
        import_id = tx.add(record, plan.new)
    return ImportResult(
        import_id,
        len(rows),
        len(plan.new) - plan.corrected - plan.ended,
        plan.corrected,
        plan.unchanged,
        plan.skipped_not_randomised,
        plan.ended,
    )


def _randomised(store: Store, pilot_id: str) -> dict[str, date]:
    return {u: stored_on(on, at) for u, (on, at) in store.randomisation_dates(pilot_id).items()}
