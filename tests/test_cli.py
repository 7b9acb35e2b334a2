"""The commands as a user runs them: messages, exit codes, no tracebacks, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli import cli
from tests.conftest import REPO


@pytest.fixture
def run(cli_in):
    return cli_in


def test_acceptance_flow(run):
    out = run("init", "hackney-keyworker", "--template", "individual").output
    assert "protocols/hackney-keyworker.yaml" in out
    assert "valid" in run("validate", "hackney-keyworker").output
    first = run("register", "protocols/hackney-keyworker.yaml").output
    assert "Registered." in first
    second = run("register", "protocols/hackney-keyworker.yaml").output
    sha = [line for line in first.splitlines() if "sha256" in line]
    assert sha and sha == [line for line in second.splitlines() if "sha256" in line]
    assert "nothing changed" in second
    assert run("check", "hackney-keyworker").exit_code == 0

    path = run.ws / "protocols" / "hackney-keyworker.yaml"
    path.write_text(
        path.read_text().replace(
            "minimal_important_difference: 0.07", "minimal_important_difference: 0.05"
        )
    )
    refused = run("check", "hackney-keyworker", ok=1)
    assert "outcomes[0].minimal_important_difference" in refused.output
    assert "Traceback" not in refused.output
    amended = run("amend", "hackney-keyworker", "--reason", "MID agreed with DWP").output
    assert "outcomes[0].minimal_important_difference: 0.07 -> 0.05" in amended
    assert run("check", "hackney-keyworker").exit_code == 0
    hist = run("history", "hackney-keyworker").output
    assert "reason: MID agreed with DWP" in hist and "0.07 -> 0.05" in hist
    data = json.loads(run("history", "hackney-keyworker", "--json").output)
    assert [v["number"] for v in data] == [1, 2]


def test_check_json_reports_changes_and_exits_1(run):
    run("init", "my-pilot")
    run("register", "my-pilot")
    path = run.ws / "protocols" / "my-pilot.yaml"
    path.write_text(path.read_text().replace("target_units: 800", "target_units: 900"))
    res = run("check", "my-pilot", "--json", ok=1)
    data = json.loads(res.output)
    assert data["status"] == "changed"
    assert data["changes"] == [
        {"path": "sample_size.target_units", "kind": "changed", "old": 800, "new": 900}
    ]


@pytest.mark.parametrize("template", ["individual", "place", "stepped-wedge"])
def test_init_writes_valid_protocols_with_the_given_id(run, template):
    run("init", "new-pilot", "--template", template)
    data = json.loads(run("validate", "new-pilot", "--json").output)
    assert data["valid"] and data["pilot"] == "new-pilot"
    assert run("init", "new-pilot", ok=1).output.count("already exists") == 1


def test_bad_protocol_lists_every_problem_with_exit_1(run, tmp_path):
    text = (REPO / "protocols" / "hackney-keyworker.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace("  block_sizes:", "  blok_sizes:")
        .replace("  strata: [benefit]", "  strata: [benfit]")
        .replace("owner:\n", "owner:\n  name: Duplicate\n", 1)
    )
    res = run("validate", str(bad), ok=1)
    lines = res.output.strip().splitlines()
    assert lines[-1] == "3 problems found"
    assert all(line.startswith(f"{bad}:") for line in lines[:-1])
    assert "Traceback" not in res.output
    data = json.loads(run("validate", str(bad), "--json", ok=1).output)
    assert not data["valid"] and len(data["problems"]) == 3


def test_user_errors_are_one_message(run):
    res = run("check", "no-such-pilot", ok=1)
    assert res.output.startswith("error: no protocol for pilot 'no-such-pilot'")
    assert "hint:" in res.output
    assert run("init", "Bad_Name", ok=1).output.startswith("error: 'Bad_Name' cannot be")
    assert run("amend", "x.yaml", ok=2).exit_code == 2  # --reason missing: usage error


def test_store_that_cannot_be_reached_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(
        cli,
        [
            "--workspace",
            str(tmp_path),
            "--store",
            "postgresql://nobody@127.0.0.1:1/none",
            "history",
            "x",
        ],
    )
    assert res.exit_code == 1
    assert res.output.startswith("error: cannot open the store")


def test_schema_file_is_current():
    committed = json.loads((REPO / "protocols" / "schema.json").read_text())
    res = CliRunner().invoke(cli, ["schema"])
    assert res.exit_code == 0
    assert json.loads(res.output) == committed, "run: evalkit schema --out protocols/schema.json"


def test_console_script_runs_without_traceback(tmp_path):
    env = {**os.environ, "EVALKIT_KEY_DIR": str(tmp_path / "keys")}
    res = subprocess.run(
        [sys.executable, "-m", "cli", "--workspace", str(tmp_path), "validate", "missing.yaml"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "no such file" in res.stderr


def test_a_store_url_in_a_missing_folder_is_an_error_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ws").mkdir()
    res = CliRunner().invoke(
        cli, ["--workspace", "ws", "--store", "sqlite:///nope/x.db", "history", "x"]
    )
    assert res.exit_code == 1, res.output
    assert res.output.startswith("error: cannot open the store sqlite:///nope/x.db: the folder")
    assert "hint:" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "nope").exists()


def test_a_store_written_by_a_newer_evalkit_is_a_clear_error(tmp_path):
    from sqlalchemy import text

    from evalkit.store import Store

    url = f"sqlite:///{tmp_path / 'evalkit.db'}"
    store = Store.open(url)
    with store.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    store.close()
    res = CliRunner().invoke(cli, ["--workspace", str(tmp_path), "history", "x"])
    assert res.exit_code == 1, res.output
    assert "schema revision '0999'" in res.output and "newer version of evalkit" in res.output
    assert "hint: upgrade evalkit" in res.output


def test_register_says_where_the_key_went_and_to_back_it_up(run, key_dir):
    run("init", "kw-pilot")
    out = run("register", "kw-pilot").output
    [key] = key_dir.glob("kw-pilot-*.key")
    assert f"secret key: {key}\n" in out
    assert "warning: back up this key file now" in out
    secret = json.loads(key.read_text())["secret"]
    assert secret not in out
    again = run("register", "kw-pilot").output
    assert "Already registered" in again and str(key) not in again
    run("init", "kw-two")
    data = json.loads(run("register", "kw-two", "--json").output)
    [key2] = key_dir.glob("kw-two-*.key")
    assert data["new"] is True and data["key_file"] == str(key2)
    assert "back up" in data["key_backup"]
    assert json.loads(key2.read_text())["secret"] not in json.dumps(data)
    assert json.loads(run("register", "kw-two", "--json").output)["key_file"] is None
