"""Pseudonymised exports of a pilot's tables (never a raw identifier), written as the
file's extension says: CSV, an Excel workbook, or Parquet (with pyarrow installed).

The allocation log is exported as an enroller may see it (see :mod:`evalkit.concealment`)
until the pilot records its unblinding; the restricted export keeps every detail."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from evalkit.concealment import concealed, enroller_view, relabel_detail
from evalkit.errors import UserError
from evalkit.exploratory import COMPARISON_COLUMN
from evalkit.keys import KeyRing
from evalkit.registration import require_registered
from evalkit.status import is_blinded, neutral_labels
from evalkit.store import Store
from evalkit.tracking import track
from evalkit.workspace import write_whole


@dataclass(frozen=True)
class Table:
    """An exported table: its name (a workbook's sheet), its columns in order and one
    dict per row."""

    name: str
    columns: list[str]
    rows: list[dict[str, Any]]

    def cells(self) -> list[list[Any]]:
        """Each row's values in column order (None for an empty cell)."""
        return [[r.get(c) for c in self.columns] for r in self.rows]


LOG_COLUMNS = [
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
OUTCOME_COLUMNS = [
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


def export_table(
    store: Store,
    keys: KeyRing,
    path: Path,
    pilot: str,
    what: str,
    today: date,
    restricted: bool = False,
) -> Table:
    """One of a pilot's tables: the analysis data set, the allocation log or the outcome
    records. ``restricted`` (the allocation log only) keeps the detail that could predict
    a later allocation; without it that detail is left out until unblinding is recorded.
    Arms stay under neutral labels while a blinded pilot is not unblinded, in both."""
    if restricted and what != "allocations":
        raise UserError(
            f"--restricted applies to --what allocations, not --what {what}",
            f"the {what} export holds no allocation detail to restrict",
        )
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
            return Table(what, list(data.columns), data.rows)
        # the protocol's first arm is the comparison; `evalkit estimate` reads this column
        # so that an effect from the export has the registered direction
        first = rp.protocol.arms[0].name
        return Table(
            what,
            [*data.columns, COMPARISON_COLUMN],
            [{**r, COMPARISON_COLUMN: first} for r in data.rows],
        )
    if what == "allocations":
        hide = not restricted and concealed(entries)
        rows = []
        for e in entries:
            if hide:
                e = enroller_view(e, rp.protocol)
            row = dict(e.__dict__)
            row["arm"] = labels.get(e.arm or "", e.arm)
            probs = e.probabilities or {}
            row["probabilities"] = json.dumps({labels.get(k, k): v for k, v in probs.items()})
            row["detail"] = json.dumps(relabel_detail(e.detail, labels), sort_keys=True)
            rows.append(row)
        return Table(what, list(LOG_COLUMNS), rows)
    observations = store.observations(pilot, every_version=True)
    return Table(what, list(OUTCOME_COLUMNS), [o.__dict__ for o in observations])


# --- writing ---------------------------------------------------------------------------


def to_csv(table: Table) -> str:
    """The table as CSV text (an empty cell for a missing value)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.columns)
    for values in table.cells():
        w.writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def _write_csv(table: Table, path: Path) -> None:
    path.write_text(to_csv(table), encoding="utf-8")


def _write_xlsx(table: Table, path: Path) -> None:
    """A real workbook, one sheet. Text stays text: a value starting with '=' (an
    evaluator's reference, say) is stored as a string, never run as a formula."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(table.name)
    ws.append(table.columns)
    for values in table.cells():
        row = []
        for v in values:
            cell = WriteOnlyCell(ws, value=v)
            if isinstance(v, str):
                cell.data_type = "s"  # openpyxl would read '=...' as a formula
            row.append(cell)
        ws.append(row)
    wb.save(path)


def _write_parquet(table: Table, path: Path) -> None:
    """One Arrow column per table column, typed from its values; a column whose values
    mix types (which Arrow cannot hold) is written as text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cells = table.cells()
    arrays = []
    for i, _ in enumerate(table.columns):
        values = [r[i] for r in cells]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays.append(pa.array([None if v is None else str(v) for v in values]))
    pq.write_table(pa.Table.from_arrays(arrays, names=table.columns), path)


WRITERS: dict[str, Callable[[Table, Path], None]] = {
    ".csv": _write_csv,
    ".xlsx": _write_xlsx,
    ".parquet": _write_parquet,
}


def write_table(table: Table, path: Path) -> None:
    """Write the table in the format its file name says (.csv, .xlsx, .parquet), or
    refuse. Whole or not at all: it goes to a temporary file beside ``path`` that
    replaces ``path`` only once complete, and is removed if anything fails."""
    suffix = path.suffix.lower()
    writer = WRITERS.get(suffix)
    if writer is None:
        raise UserError(
            f"{path}: evalkit does not write {suffix or 'files without an extension'}",
            f"end the file name in one of {', '.join(WRITERS)}",
        )
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UserError(
            f"{path}: writing .parquet needs pyarrow",
            "pip install pyarrow, or use .csv/.xlsx",
        )
    if path.is_dir():
        raise UserError(f"{path} is a folder", "give a file name to write")
    if not path.parent.is_dir():
        raise UserError(f"the folder {path.parent} does not exist", "create it or choose another")
    write_whole(path, lambda tmp: writer(table, tmp))
