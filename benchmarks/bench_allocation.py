"""Allocation speed: batch of 14,000 referrals (Hackney's long-term claimant count) under
the stratified blocked design, sequential enrolment through the library, and the
`evalkit enrol` command's wall time. Prints a table; R's randomizr is timed beside it
when Rscript and randomizr are installed.

Run: python benchmarks/bench_allocation.py [--pg postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evalkit.enrolment import allocate_file, enrol, open_pilot  # noqa: E402
from evalkit.keys import KeyRing  # noqa: E402
from evalkit.registration import register  # noqa: E402
from evalkit.store import Store, normalise_url  # noqa: E402
from tests.pilots import referral, write_csv  # noqa: E402

NOW = "2027-04-02T09:00:00.000000Z"
ON = "2027-04-02"


def fresh_pilot(url: str, root: Path, name: str):
    ws = root / name
    (ws / "protocols").mkdir(parents=True)
    text = (REPO / "protocols" / "hackney-keyworker.yaml").read_text()
    path = ws / "protocols" / f"{name}.yaml"
    path.write_text(text.replace("id: hackney-keyworker", f"id: {name}", 1))
    store = Store.open(url)
    keys = KeyRing(root / "keys")
    register(store, keys, path, "bench", NOW)
    return store, open_pilot(store, keys, path, name), ws


def pg_url(base: str) -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with create_engine(normalise_url(base)).begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}", schema


def drop_schema(base: str, schema: str) -> None:
    from sqlalchemy import create_engine, text

    with create_engine(normalise_url(base)).begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def bench_backend(
    label: str, url: str, root: Path, rows: list[dict], n_seq: int, repeat: int
) -> list:
    out = []
    csv_path = write_csv(root / f"referrals-{label}.csv", rows)
    times = []
    for k in range(repeat):
        store, pilot, _ = fresh_pilot(url, root, f"batch{k}-{label.lower()}")
        t = time.perf_counter()
        res = allocate_file(store, pilot, csv_path, NOW, "bench", ON)
        times.append(time.perf_counter() - t)
        assert len(res.entries) == len(rows)
        store.close()
    out.append(
        (
            f"batch allocate {len(rows):,} (CSV, blocked by benefit), {label}, median of {repeat}",
            f"{statistics.median(times):.2f} s",
            "< 2 s",
        )
    )

    store, pilot, _ = fresh_pilot(url, root, f"seq-{label.lower()}")
    rnd = random.Random(2)
    values = [referral(rnd) for _ in range(n_seq)]
    t = time.perf_counter()
    for i, v in enumerate(values):
        enrol(store, pilot, f"S{i}", v, NOW, "bench", ON)
    rate = n_seq / (time.perf_counter() - t)
    out.append(
        (
            f"sequential enrol via library ({n_seq}), {label}",
            f"{rate:.0f} per s",
            ">= 100 per s (SQLite)",
        )
    )
    store.close()
    return out


def bench_cli(root: Path, runs: int) -> list:
    store, _, ws = fresh_pilot(f"sqlite:///{root / 'cli.db'}", root, "cli-pilot")
    store.close()
    env = {
        **os.environ,
        "EVALKIT_KEY_DIR": str(root / "keys"),
        "EVALKIT_DATABASE_URL": f"sqlite:///{root / 'cli.db'}",
    }
    exe = shutil.which("evalkit") or sys.executable
    base = [exe] if exe.endswith("evalkit") else [sys.executable, "-m", "cli"]
    times = []
    for i in range(runs + 1):
        cmd = [
            *base,
            "--workspace",
            str(ws),
            "enrol",
            "cli-pilot",
            "--unit-id",
            f"C{i}",
            "--set",
            "age=44",
            "--set",
            "benefit=ESA",
            "--set",
            "months_unemployed=30",
            "--set",
            "referral_route=GP",
            "--set",
            "mh_condition=true",
        ]
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        if i:  # the first run warms the file cache
            times.append(time.perf_counter() - t)
    py = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        py.append(time.perf_counter() - t)
    return [
        (
            f"`evalkit enrol` command, median of {runs}",
            f"{statistics.median(times):.2f} s",
            "< 0.5 s",
        ),
        ("(for scale: `python -c pass`)", f"{statistics.median(py):.2f} s", ""),
    ]


def bench_randomizr(n: int) -> list:
    if not shutil.which("Rscript"):
        return [("R randomizr block_ra, same size", "not installed (no Rscript)", "")]
    script = (
        f"suppressMessages(library(randomizr)); set.seed(1); b <- sample(c('ESA','JSA','UC'),"
        f" {n}, TRUE); t <- system.time(block_ra(blocks = b))[['elapsed']]; cat(t)"
    )
    res = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True)
    if res.returncode != 0:
        return [("R randomizr block_ra, same size", "not installed (randomizr)", "")]
    return [(f"R randomizr block_ra {n:,} (draw only, no log)", f"{float(res.stdout):.2f} s", "")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--pg",
        default=os.environ.get("EVALKIT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    ap.add_argument("--n", type=int, default=14_000)
    ap.add_argument("--seq", type=int, default=300)
    ap.add_argument("--cli-runs", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rnd = random.Random(1)
    rows = [{"id": f"QQ{i:06d}", **referral(rnd)} for i in range(args.n)]
    rows_out: list = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows_out += bench_backend(
            "SQLite", f"sqlite:///{root / 'bench.db'}", root, rows, args.seq, args.repeat
        )
        try:
            url, schema = pg_url(args.pg)
        except Exception as exc:  # no server: say so in the table
            rows_out.append(("PostgreSQL", f"not reachable ({type(exc).__name__})", ""))
        else:
            try:
                rows_out += bench_backend("PostgreSQL", url, root, rows, args.seq, args.repeat)
            finally:
                drop_schema(args.pg, schema)
        rows_out += bench_cli(root, args.cli_runs)
    rows_out += bench_randomizr(args.n)
    width = max(len(r[0]) for r in rows_out)
    print(f"{'measure':<{width}}  {'result':>24}  target")
    for name, value, target in rows_out:
        print(f"{name:<{width}}  {value:>24}  {target}")


if __name__ == "__main__":
    main()
