"""Choosing the places of a place-based pilot by a rule fixed before the data are seen.

Scrutiny recommendation 6c asks for a place with many high-need, high-spend profiles.
Candidate areas (wards, estates, GP practices) are ranked on a weighted sum of
standardised indicators (claimant rate, share claiming for mental health reasons,
deprivation, spend per head) and the top ones are chosen. Writing the rule down (fields,
weights, directions, how many, the exact file) and recording it in the pilot's
tamper-evident log lets anyone check that the places were chosen by the rule, not by
hand.

The ranking is pure (rows in, ranking out); reading the areas file, writing the places
file and recording the rule happen in :func:`rank_areas` at the edge.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from evalkit import allocation as AL
from evalkit.dates import check_not_future, user_date
from evalkit.enrolment import Pilot, read_table
from evalkit.errors import BatchRejected, UserError
from evalkit.ledger import chain
from evalkit.protocol import Protocol
from evalkit.store import Store

STANDARDISATION = (
    "z = (value - mean) / SD over all candidate areas (SD with divisor n); an indicator "
    "marked lower-is-more has its z-score's sign reversed, so a higher score always means "
    "more need or spend; an indicator with the same value everywhere gets z = 0"
)
TIES = "equal scores (to 9 decimal places) are ordered by id, in text order"
_DIGITS = 9


# --- the rule -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """What decides the choice: indicators, their weights and directions, how many."""

    fields: tuple[str, ...]
    weights: tuple[float, ...]
    lower_is_more: tuple[str, ...]
    choose: int

    def sign(self, name: str) -> int:
        return -1 if name in self.lower_is_more else 1

    def formula(self) -> str:
        terms = []
        for name, w in zip(self.fields, self.weights, strict=True):
            z = f"z(-{name})" if self.sign(name) < 0 else f"z({name})"
            terms.append(f"{w:g} {z}")
        return "score = " + " + ".join(terms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fields": list(self.fields),
            "weights": list(self.weights),
            "directions": {
                f: f"{'lower' if self.sign(f) < 0 else 'higher'} means more need or spend"
                for f in self.fields
            },
            "choose": self.choose,
            "score": self.formula(),
            "standardisation": STANDARDISATION,
            "ties": TIES,
        }


def _names(text: str | None, option: str) -> list[str]:
    if text is None:
        return []
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise UserError(f"{option} {text!r} has an empty name", "separate names by commas")
    return names


def make_rule(by: str, weights: str | None, lower_is_more: str | None, choose: int) -> Rule:
    """The rule from the command's options; every inconsistency is a UserError."""
    fields = _names(by, "--by")
    if not fields:
        raise UserError("--by names no indicator", "e.g. --by claimant_rate,imd_score")
    dup = sorted({f for f in fields if fields.count(f) > 1})
    if dup:
        raise UserError(f"--by names {', '.join(dup)} more than once", "name each indicator once")
    if weights is None:
        ws = [1.0 / len(fields)] * len(fields)
    else:
        ws = []
        for item in _names(weights, "--weights"):
            try:
                w = float(item)
            except ValueError:
                raise UserError(f"--weights: {item!r} is not a number") from None
            if not math.isfinite(w):
                raise UserError(f"--weights: {item!r} is not a finite number")
            ws.append(w)
        if len(ws) != len(fields):
            raise UserError(
                f"--weights gives {len(ws)} weight{'s' if len(ws) != 1 else ''} for "
                f"{len(fields)} --by field{'s' if len(fields) != 1 else ''}",
                "give one weight per --by field, in the same order",
            )
        for name, w in zip(fields, ws, strict=True):
            if w < 0:
                raise UserError(
                    f"--weights: the weight of {name} is {w:g}, which is negative",
                    "weights are 0 or more; mark an indicator where lower means more need "
                    "with --lower-is-more instead",
                )
        if not any(w > 0 for w in ws):
            raise UserError("--weights: every weight is 0", "give at least one positive weight")
    lower = _names(lower_is_more, "--lower-is-more")
    stray = [f for f in lower if f not in fields]
    if stray:
        raise UserError(
            f"--lower-is-more names {', '.join(stray)}, which {'is' if len(stray) == 1 else 'are'}"
            " not in --by",
            "list only --by fields in --lower-is-more",
        )
    if choose < 1:
        raise UserError(f"--choose {choose}: choose at least one place")
    return Rule(tuple(fields), tuple(ws), tuple(dict.fromkeys(lower)), choose)


# --- the ranking ----------------------------------------------------------------------


@dataclass(frozen=True)
class RankedArea:
    rank: int
    id: str
    row: int  # row number in the areas file, as a spreadsheet shows it
    values: dict[str, float]
    z: dict[str, float]  # direction applied: higher means more need or spend
    score: float
    chosen: bool
    cells: dict[str, str]  # the indicators as written in the file, for display

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "id": self.id,
            "row": self.row,
            "values": self.values,
            "z": self.z,
            "score": self.score,
            "chosen": self.chosen,
        }


@dataclass(frozen=True)
class Ranking:
    rule: Rule
    areas: list[RankedArea]  # in rank order
    means: dict[str, float]
    sds: dict[str, float]
    constant: list[str]  # indicators with one value everywhere (no effect on the ranking)
    tied_at_cutoff: list[str]  # ids sharing the score at the cut-off, chosen or not

    @property
    def chosen(self) -> list[RankedArea]:
        return [a for a in self.areas if a.chosen]

    @property
    def chosen_ids(self) -> list[str]:
        return [a.id for a in self.chosen]


def cell_text(value: Any) -> str:
    """A cell as text, the same whether it came from CSV or Excel."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("is not a number")
    if isinstance(value, int | float):
        x = float(value)
    else:
        try:
            x = float(str(value).strip())
        except ValueError:
            raise ValueError("is not a number (write plain digits, no £, % or commas)") from None
    if not math.isfinite(x):
        raise ValueError("is not a finite number")
    return x


def require_columns(
    source: Path | str, rows: list[tuple[int, dict[str, Any]]], names: list[str]
) -> None:
    """Refuse, naming every missing column and the columns there are."""
    header = list(rows[0][1]) if rows else []
    missing = [n for n in dict.fromkeys(names) if n not in header]
    if missing:
        s = "s" if len(missing) > 1 else ""
        raise UserError(
            f"{source} has no column{s} {', '.join(repr(m) for m in missing)} "
            f"(columns: {', '.join(h for h in header if h)})",
            "check the column names in the first row, or the names given to --by, "
            "--id-column and --keep",
        )


def rank(
    rows: list[tuple[int, dict[str, Any]]], rule: Rule, id_column: str, source: Path | str
) -> Ranking:
    """Rank candidate areas (rows as :func:`evalkit.enrolment.read_table` gives them) by
    the weighted sum of their oriented z-scores, highest first; choose the top
    ``rule.choose``. Every bad cell is reported at once; nothing is ranked then."""
    if not rows:
        raise UserError(f"{source} has no areas (no rows below the header)")
    require_columns(source, rows, [id_column, *rule.fields])
    if rule.choose > len(rows):
        raise UserError(
            f"--choose {rule.choose}, but {source} has {len(rows)} area"
            f"{'s' if len(rows) != 1 else ''}",
            "choose at most as many places as there are candidate areas",
        )
    problems: list[AL.RowProblem] = []
    seen: dict[str, int] = {}
    parsed: list[tuple[int, str, dict[str, float]]] = []
    texts: dict[int, dict[str, str]] = {}
    for line, row in rows:
        ident = cell_text(row.get(id_column))
        ok = True
        if not ident:
            problems.append(AL.RowProblem(line, id_column, None, "is missing"))
            ok = False
        elif ident in seen:
            problems.append(AL.RowProblem(line, id_column, ident, f"repeats row {seen[ident]}"))
            ok = False
        else:
            seen[ident] = line
        values: dict[str, float] = {}
        for name in rule.fields:
            raw = row.get(name)
            if cell_text(raw) == "":
                problems.append(AL.RowProblem(line, name, None, "is missing"))
                ok = False
                continue
            try:
                values[name] = _number(raw)
            except ValueError as exc:
                problems.append(AL.RowProblem(line, name, raw, str(exc)))
                ok = False
        if ok:
            parsed.append((line, ident, values))
            texts[line] = {f: cell_text(row.get(f)) for f in rule.fields}
    if problems:
        raise BatchRejected(Path(source), problems, done="ranked or written")
    n = len(parsed)
    means = {f: math.fsum(v[f] for _, _, v in parsed) / n for f in rule.fields}
    sds = {
        f: math.sqrt(math.fsum((v[f] - means[f]) ** 2 for _, _, v in parsed) / n)
        for f in rule.fields
    }
    constant = [
        f for f in rule.fields if sds[f] <= 1e-12 * max(1.0, max(abs(v[f]) for _, _, v in parsed))
    ]
    scored = []
    for line, ident, values in parsed:
        z = {
            f: 0.0 if f in constant else rule.sign(f) * (values[f] - means[f]) / sds[f]
            for f in rule.fields
        }
        score = math.fsum(w * z[f] for f, w in zip(rule.fields, rule.weights, strict=True))
        scored.append((round(score, _DIGITS), ident, line, values, z, score))
    scored.sort(key=lambda s: (-s[0], s[1]))
    areas = [
        RankedArea(i, ident, line, values, z, score, i <= rule.choose, texts[line])
        for i, (_, ident, line, values, z, score) in enumerate(scored, start=1)
    ]
    tied: list[str] = []
    if rule.choose < n and scored[rule.choose - 1][0] == scored[rule.choose][0]:
        cut = scored[rule.choose - 1][0]
        tied = [s[1] for s in scored if s[0] == cut]
    return Ranking(rule, areas, means, sds, constant, tied)


# --- the places file for a pilot ------------------------------------------------------


def pilot_columns(protocol: Protocol) -> tuple[str, list[str]]:
    """The places file `evalkit allocate` takes for this pilot: the place field, then
    the place fields, and nothing else."""
    return protocol.unit.place_field or "place", [f.name for f in protocol.unit.place_fields]


def check_for_pilot(
    protocol: Protocol,
    ranking: Ranking,
    rows: list[tuple[int, dict[str, Any]]],
    source: Path | str,
) -> None:
    """Refuse a choice the pilot could not allocate as registered: not a place design,
    other places than the protocol names, another number than it targets, or place
    fields missing or invalid in a chosen area's row."""
    p = protocol
    if p.unit.level != "place":
        raise UserError(
            f"pilot {p.id!r} randomises participants, not places",
            "record a selection rule with a place design (unit.level: place)",
        )
    place_col, fields = pilot_columns(p)
    chosen = ranking.chosen_ids
    pf = p.field(place_col)
    if pf is not None and pf.levels:
        extra = [c for c in chosen if c not in pf.levels]
        left = [lv for lv in pf.levels if lv not in chosen]
        if extra or left:
            parts = []
            if extra:
                parts.append(f"chosen but not among the protocol's places: {', '.join(extra)}")
            if left:
                parts.append(f"the protocol's places not chosen: {', '.join(left)}")
            raise UserError(
                f"the rule does not choose the places pilot {p.id!r} names ({'; '.join(parts)})",
                f"the levels of the field {place_col!r} must be the chosen places; run without "
                "--pilot to see the choice, then write those places into the protocol before "
                "registering it (or amend it)",
            )
    target = p.sample_size.target_places
    if target is not None and target != ranking.rule.choose:
        raise UserError(
            f"--choose {ranking.rule.choose}, but pilot {p.id!r} targets {target} places "
            "(sample_size.target_places)",
            f"use --choose {target}, or amend the protocol",
        )
    required = [f.name for f in p.unit.place_fields if f.required]
    require_columns(source, rows, required)
    by_line = dict(rows)
    _, problems = AL.check_places(
        p,
        [
            (a.row, a.id, {f: by_line[a.row].get(f) for f in fields if f in by_line[a.row]})
            for a in ranking.chosen
        ],
    )
    if problems:
        raise BatchRejected(Path(source), problems, done="written")


def places_rows(
    ranking: Ranking,
    rows: list[tuple[int, dict[str, Any]]],
    id_name: str,
    columns: list[str],
) -> list[dict[str, str]]:
    """One row per chosen area, in rank order: its id under ``id_name``, then ``columns``
    as text (cells missing from the areas file are left empty)."""
    by_line = dict(rows)
    out = []
    for a in ranking.chosen:
        row = by_line[a.row]
        out.append({id_name: a.id, **{c: cell_text(row.get(c)) for c in columns if c != id_name}})
    return out


def selection_record(
    ranking: Ranking,
    areas_file: Path,
    areas_sha256: str,
    id_column: str,
    places_file: Path | None,
    places_sha256: str | None,
    pilot: str | None,
) -> dict[str, Any]:
    """The rule and what it chose, enough to check the choice from the same file."""
    return {
        **ranking.rule.as_dict(),
        "candidates": len(ranking.areas),
        "areas_file": areas_file.name,
        "areas_sha256": areas_sha256,
        "id_column": id_column,
        "chosen": ranking.chosen_ids,
        "tied_at_cutoff": ranking.tied_at_cutoff,
        "places_file": places_file.name if places_file else None,
        "places_sha256": places_sha256,
        "pilot": pilot,
    }


def note_text(record: dict[str, Any]) -> str:
    """The rule in words, as the log's note (reports show it)."""
    return (
        f"Places chosen by a pre-specified rule: the {record['choose']} of "
        f"{record['candidates']} candidate areas in {record['areas_file']} (sha256 "
        f"{record['areas_sha256']}) with the highest {record['score']}; "
        f"{record['standardisation']}; {record['ties']}. "
        f"Chosen, in rank order: {', '.join(record['chosen'])}."
    )


# --- the edge: files and the store ----------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    ranking: Ranking
    areas_sha256: str
    record: dict[str, Any]
    places_file: Path | None = None
    selection_file: Path | None = None
    columns: list[str] | None = None
    log_entry: int | None = None
    already_recorded: bool = False
    head: tuple[int, str | None] | None = None


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def selection_path(places_file: Path) -> Path:
    """places.csv -> places.selection.json"""
    return places_file.with_suffix(".selection.json")


def _write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


def record_selection(
    store: Store, pilot: Pilot, record: dict[str, Any], now: str, by: str, on: str
) -> tuple[int, bool, tuple[int, str | None]]:
    """The rule as a note in the pilot's log, inside its write lock: refused once the
    places are allocated; the same rule and choice again adds nothing.
    Returns (entry number, already recorded, head)."""
    p = pilot.protocol
    on = user_date(on, "the date").isoformat()
    check_not_future(date.fromisoformat(on), date.fromisoformat(now[:10]))
    with store.log_tx(p.id) as tx:
        if tx.count(level="place"):
            raise UserError(
                f"the places of pilot {p.id!r} have already been allocated",
                "a selection rule is recorded before the places are allocated",
            )
        for e in tx.entries(kind="event"):
            if e.detail.get("selection") == record:
                return e.seq, True, tx.head()
        entry = AL.event(pilot.context(now, by), None, "note", on, note_text(record))
        entry = replace(entry, detail={**entry.detail, "selection": record})
        sealed = chain([entry], p.id, pilot.registration_hash, tx.head())
        head = tx.append(sealed)
    return sealed[0].seq, False, head


def rank_areas(
    file: Path,
    rule: Rule,
    id_column: str = "id",
    keep: list[str] | None = None,
    out: Path | None = None,
    pilot: Pilot | None = None,
    store: Store | None = None,
    now: str = "",
    by: str = "",
    on: str = "",
) -> Outcome:
    """Rank the areas file; with ``out`` write the places file and the selection JSON;
    with a pilot (an :class:`evalkit.enrolment.Pilot`) also record the rule in its log.
    Everything is checked before anything is written."""
    if pilot is not None and out is None:
        raise UserError(
            "--pilot records the choice with the pilot, so it needs the places file",
            "add --out places.csv",
        )
    if pilot is not None and keep:
        raise UserError(
            "--keep cannot be used with --pilot",
            "with --pilot the places file holds exactly the pilot's place fields",
        )
    if out is not None:
        if out.suffix.lower() != ".csv":
            raise UserError(f"--out {out}: the places file is written as CSV", "name it *.csv")
        if out.resolve() == file.resolve():
            raise UserError(f"--out {out} is the areas file itself", "write to another file")
    rows = read_table(file)
    ranking = rank(rows, rule, id_column, file)
    digest = sha256_file(file)
    if pilot is not None:
        check_for_pilot(pilot.protocol, ranking, rows, file)
        id_name, columns = pilot_columns(pilot.protocol)
    else:
        id_name, columns = id_column, list(keep) if keep else list(rule.fields)
        require_columns(file, rows, columns)
    pilot_id = pilot.protocol.id if pilot is not None else None
    if out is None:
        record = selection_record(ranking, file, digest, id_column, None, None, None)
        return Outcome(ranking, digest, record)
    header = [id_name, *[c for c in columns if c != id_name]]
    sel_path = selection_path(out)
    tmp_places = out.with_name(out.name + ".part")
    tmp_sel = sel_path.with_name(sel_path.name + ".part")
    try:
        _write_csv(tmp_places, header, places_rows(ranking, rows, id_name, columns))
        record = selection_record(
            ranking, file, digest, id_column, out, sha256_file(tmp_places), pilot_id
        )
        seq, again, head = None, False, None
        if pilot is not None:
            assert store is not None
            seq, again, head = record_selection(store, pilot, record, now, by, on)
        tmp_sel.write_text(
            json.dumps({**record, "log_entry": seq}, indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        tmp_places.replace(out)
        tmp_sel.replace(sel_path)
    finally:
        tmp_places.unlink(missing_ok=True)
        tmp_sel.unlink(missing_ok=True)
    return Outcome(ranking, digest, record, out, sel_path, header, seq, again, head)


# --- printing -------------------------------------------------------------------------


def report_lines(outcome: Outcome, source: Path) -> list[str]:
    """The ranking table and what was chosen and written, for the terminal."""
    r = outcome.ranking
    rule = r.rule
    lines = [
        f"{len(r.areas)} candidate areas in {source} (sha256 {outcome.areas_sha256[:16]}...)",
        f"  {rule.formula()}",
        f"  z = (value - mean) / SD over the {len(r.areas)} candidate areas (SD with divisor n)",
    ]
    if rule.lower_is_more:
        lines.append(
            f"  lower is more need or spend for {', '.join(rule.lower_is_more)}: the sign of "
            "z is reversed, so a higher score always means more"
        )
    lines.append(f"  ties: {TIES}")
    for f in r.constant:
        lines.append(f"  note: {f} is the same in every area, so it does not affect the ranking")
    head = ["rank", outcome.record["id_column"], *rule.fields, "score", "chosen"]
    body = [
        [
            str(a.rank),
            a.id,
            *[a.cells[f] for f in rule.fields],
            f"{a.score:+.3f}",
            "yes" if a.chosen else "no",
        ]
        for a in r.areas
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    left = {1, len(head) - 1}  # id and chosen; numbers are right-aligned
    for cells in [head, *body]:
        lines.append(
            "  ".join(
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()
        )
    lines.append(
        f"chosen: {len(r.chosen)} of {len(r.areas)}, in rank order: {', '.join(r.chosen_ids)}"
    )
    if r.tied_at_cutoff:
        inside = [i for i in r.tied_at_cutoff if i in r.chosen_ids]
        lines.append(
            f"  note: {', '.join(r.tied_at_cutoff)} have equal scores at the cut-off; "
            f"{', '.join(inside)} chosen by id order"
        )
    if outcome.places_file is not None:
        lines.append(
            f"wrote {outcome.places_file} (columns: {', '.join(outcome.columns or [])}) "
            f"and {outcome.selection_file}"
        )
    return lines
