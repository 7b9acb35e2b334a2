"""`export --out` writes what the file's extension says (.csv, .xlsx, .parquet) or
refuses, and never leaves half a file."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pytest
from openpyxl import load_workbook

from evalkit.exports import WRITERS, Table, write_table

SET = ["--set", "benefit=ESA", "--set", "months_unemployed=30", "--set", "referral_route=GP"]
SET += ["--set", "mh_condition=true"]


@pytest.fixture
def run(cli_in):
    cli_in("init", "kw-pilot")
    cli_in("register", "kw-pilot")
    for i in range(5):
        ref = "=1+1" if i == 2 else f"case-{i}"  # text a spreadsheet would run as a formula
        args = ["enrol", "kw-pilot", "--unit-id", f"QQ{i}", "--set", f"age={30 + i}", *SET]
        cli_in(*args, "--ref", ref)
    return cli_in


def _printed(run, what: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(run("export", "kw-pilot", "--what", what).output)))


def _as_text(value) -> str:
    """A cell as the CSV export writes it."""
    return "" if value is None else str(value)


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("what", ["analysis", "allocations"])
def test_export_xlsx_writes_an_excel_workbook(run, what):
    out = run.tmp / f"{what}.xlsx"
    assert f"wrote {out}" in run("export", "kw-pilot", "--what", what, "--out", str(out)).output
    wb = load_workbook(out, read_only=True)
    assert wb.sheetnames == [what]
    cells = [[_as_text(v) for v in row] for row in wb.worksheets[0].iter_rows(values_only=True)]
    wb.close()
    printed = _printed(run, what)
    assert len(printed) == 6 and cells == printed


def test_export_xlsx_keeps_text_that_looks_like_a_formula_as_text(run):
    out = run.tmp / "analysis.xlsx"
    run("export", "kw-pilot", "--out", str(out))
    sheet = load_workbook(out).worksheets[0]
    header = [c.value for c in sheet[1]]
    refs = [row[header.index("ref")] for row in sheet.iter_rows(min_row=2)]
    assert [c.value for c in refs] == ["case-0", "case-1", "=1+1", "case-3", "case-4"]
    assert {c.data_type for c in refs} == {"s"}


def test_export_csv_out_writes_what_export_prints(run):
    out = run.tmp / "analysis.csv"
    run("export", "kw-pilot", "--out", str(out))
    assert list(csv.reader(out.open(newline=""))) == _printed(run, "analysis")


def test_export_parquet_writes_a_table_that_reads_back_as_the_csv(run):
    import pyarrow.parquet as pq  # a test extra, so this test always runs
    for what in ("analysis", "allocations"):
        out = run.tmp / f"{what}.parquet"
        run("export", "kw-pilot", "--what", what, "--out", str(out))
        table = pq.read_table(out)
        rows = [[_as_text(v) for v in r.values()] for r in table.to_pylist()]
        assert [table.column_names, *rows] == _printed(run, what)
    assert pq.read_table(run.tmp / "analysis.parquet").schema.field("age").type == "int64"


def test_export_parquet_without_pyarrow_is_refused_and_writes_nothing(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    folder = run.tmp / "out"
    folder.mkdir()
    res = run("export", "kw-pilot", "--out", str(folder / "x.parquet"), ok=1)
    assert res.output.startswith(f"error: {folder / 'x.parquet'}: writing .parquet needs pyarrow")
    assert "hint: pip install pyarrow, or use .csv/.xlsx" in res.output
    assert _left_in(folder) == []


def test_export_to_an_unknown_extension_is_refused_and_writes_nothing(run):
    folder = run.tmp / "out"
    folder.mkdir()
    for name in ("x.txt", "x.xls", "x"):
        res = run("export", "kw-pilot", "--out", str(folder / name), ok=1)
        assert "evalkit does not write" in res.output
        assert "hint: end the file name in one of .csv, .xlsx, .parquet" in res.output
    assert _left_in(folder) == []


def test_export_that_fails_midway_leaves_the_old_file_and_no_part_file(tmp_path, monkeypatch):
    target = tmp_path / "analysis.xlsx"
    target.write_bytes(b"the export from last week")

    def half_then_fail(table: Table, path: Path) -> None:
        path.write_bytes(b"PK half a workbook")
        raise OSError("disk full")

    monkeypatch.setitem(WRITERS, ".xlsx", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_table(Table("analysis", ["unit"], [{"unit": "a"}]), target)
    assert target.read_bytes() == b"the export from last week"
    assert _left_in(tmp_path) == ["analysis.xlsx"]
