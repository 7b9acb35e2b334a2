"""Outcome import speed: 14,000 randomised people (Hackney's long-term claimant count)
with 4 outcomes in one CSV (target: under 5 s), and building the analysis data set.

Run: python benchmarks/bench_outcomes.py
"""

from __future__ import annotations

import csv
import random
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evalkit.enrolment import allocate_file  # noqa: E402
from evalkit.outcome_import import import_outcomes  # noqa: E402
from evalkit.tracking import track  # noqa: E402
from tests.pilots import referral, write_csv  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_allocation import NOW, fresh_pilot  # noqa: E402

START = date(2024, 1, 8)
TODAY = date(2026, 11, 24)
FILES = {  # agency -> (columns, mapping, one row's values)
    "DWP": (
        ["nino", "spell_start", "spell_end", "off_benefit", "status_date"],
        [
            "in_work_13wk:start=spell_start",
            "in_work_13wk:end=spell_end",
            "off_benefit:value=off_benefit",
            "off_benefit:date=status_date",
        ],
    ),
    "survey": (
        ["id", "wemwbs", "survey_date"],
        ["wellbeing:value=wemwbs", "wellbeing:date=survey_date"],
    ),
    "provider": (["id", "start_date"], ["volunteering_or_training:date=start_date"]),
}


def _row(source: str, raw_id: str, rnd: random.Random) -> list:
    if source == "DWP":
        s = START + timedelta(days=rnd.randint(0, 300))
        return [
            raw_id,
            s.isoformat(),
            (s + timedelta(weeks=rnd.randint(1, 40))).isoformat(),
            rnd.randint(0, 1),
            "2025-01-08",
        ]
    if source == "survey":
        return [raw_id, rnd.randint(14, 70), "2025-01-15"]
    return [raw_id, (START + timedelta(days=rnd.randint(0, 360))).isoformat()]


def main(n: int = 14_000, repeat: int = 3) -> None:
    rnd = random.Random(1)
    people = [{"id": f"QQ{i:06d}", **referral(rnd)} for i in range(n)]
    import_times, build_times = [], []
    for k in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            store, pilot, _ = fresh_pilot(f"sqlite:///{root / 'o.db'}", root, f"out{k}")
            allocate_file(
                store, pilot, write_csv(root / "people.csv", people), NOW, "b", START.isoformat()
            )
            paths = {}
            for source, (columns, _) in FILES.items():
                paths[source] = root / f"{source}.csv"
                with paths[source].open("w", newline="") as fh:
                    w = csv.writer(fh)
                    w.writerow(columns)
                    w.writerows(_row(source, p["id"], rnd) for p in people)
            t = time.perf_counter()
            new = 0
            for source, (columns, mapping) in FILES.items():
                res = import_outcomes(
                    store,
                    pilot,
                    paths[source],
                    source,
                    columns[0],
                    mapping,
                    False,
                    None,
                    TODAY,
                    TODAY,
                    NOW,
                    "bench",
                )
                new += res.new
            import_times.append(time.perf_counter() - t)
            assert new == 4 * n, new
            t = time.perf_counter()
            data = track(store, pilot.protocol, TODAY).dataset
            build_times.append(time.perf_counter() - t)
            assert len(data.rows) == n
            store.close()
    rows = [
        (
            f"import {n:,} people x 4 outcomes (3 CSV files), SQLite, median of {repeat}",
            f"{statistics.median(import_times):.2f} s",
            "< 5 s",
        ),
        (
            f"build the analysis data set, {n:,} rows, median of {repeat}",
            f"{statistics.median(build_times):.2f} s",
            "",
        ),
    ]
    print(f"{'measure':<66} {'result':>8}  target")
    for name, value, target in rows:
        print(f"{name:<66} {value:>8}  {target}")


if __name__ == "__main__":
    main()
