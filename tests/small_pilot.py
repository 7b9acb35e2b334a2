"""A small pilot of a user's own, built through the command line as a user would build it:
init from the individual template, register, allocate referral lists, import a DWP
extract once the outcomes are due, analyse. Each command runs at the date it would run on
(time-machine moves the clock), so referrals come after registration and outcomes are due
when they are imported."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import time_machine
from click.testing import CliRunner

from cli import cli

REGISTERED = date(2027, 4, 2)
BENEFITS = ["ESA", "JSA", "UC"]
ROUTES = ["JCP", "GP", "IAPT", "self", "VCS"]


@dataclass
class Built:
    ws: Path
    pilot: str
    raw_ids: list[str]


def run(ws: Path, on: date, *args: str, ok: int | None = 0):
    """One command at 09:00 UTC on ``on``; never a traceback."""
    when = datetime(on.year, on.month, on.day, 9, tzinfo=UTC)
    with time_machine.travel(when, tick=False):
        res = CliRunner().invoke(cli, ["--workspace", str(ws), *args], catch_exceptions=False)
    if ok is not None:
        assert res.exit_code == ok, res.output
    assert "Traceback" not in res.output
    return res


def build(
    ws: Path,
    batches: list[tuple[date, int, int]],
    analyse_on: date,
    pilot: str = "pilot37",
    seed: int = 11,
    in_work_rate: float = 0.3,
) -> Built:
    """Register ``pilot``, then for each (date, eligible, ineligible) allocate a list of
    referrals on that date (ineligible ones have been out of work for under 24 months),
    import a DWP extract complete to ``analyse_on`` and analyse on that day."""
    rnd = random.Random(seed)
    ws.mkdir(parents=True, exist_ok=True)
    run(ws, REGISTERED, "init", pilot, "--template", "individual")
    run(ws, REGISTERED, "register", pilot)
    people: list[tuple[str, date, bool]] = []
    for b, (on, eligible, ineligible) in enumerate(batches):
        path = ws / f"referrals-{b}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(
                ["id", "age", "benefit", "months_unemployed", "referral_route", "mh_condition"]
            )
            flags = [True] * eligible + [False] * ineligible
            rnd.shuffle(flags)
            for ok in flags:
                raw = f"QQ{rnd.randrange(10**6):06d}{'ABCD'[len(people) % 4]}"
                people.append((raw, on, ok))
                w.writerow(
                    [
                        raw,
                        rnd.randint(18, 64),
                        rnd.choice(BENEFITS),
                        rnd.randint(24, 120) if ok else rnd.randint(0, 23),
                        rnd.choice(ROUTES),
                        "true",
                    ]
                )
        run(ws, on, "allocate", pilot, str(path), "--date", on.isoformat())
    dwp = ws / "dwp.csv"
    with dwp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["nino", "spell_start", "spell_end", "off_benefit", "status_date"])
        for raw, on, ok in people:
            if not ok:
                continue
            if rnd.random() < in_work_rate:
                start, end = on + timedelta(days=30), on + timedelta(days=200)
                w.writerow([raw, start.isoformat(), min(end, analyse_on).isoformat(), "", ""])
            status_day = on + timedelta(days=365)
            if status_day <= analyse_on:
                off = "1" if rnd.random() < 0.25 else "0"
                w.writerow([raw, "", "", off, status_day.isoformat()])
    iso = analyse_on.isoformat()
    run(ws, analyse_on, "outcomes", "import", pilot, str(dwp), "--source", "DWP", "--as-of", iso)
    run(ws, analyse_on, "analyse", pilot)
    return Built(ws, pilot, [raw for raw, _, _ in people])


def pilot_37(ws: Path) -> Built:
    """Issue 11's pilot: 44 assessed, 7 excluded, 37 randomised, every outcome due."""
    spread = [REGISTERED + timedelta(days=14 * i) for i in range(4)]
    return build(
        ws,
        [(spread[0], 10, 2), (spread[1], 9, 2), (spread[2], 9, 2), (spread[3], 9, 1)],
        analyse_on=date(2028, 6, 1),
    )
