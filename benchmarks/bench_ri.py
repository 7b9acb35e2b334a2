"""Memory and time of randomisation inference that replays the registered design, at the
size of a whole-borough pilot (Hackney: about 14,000 long-term unemployed residents).

Run: python benchmarks/bench_ri.py [--sizes 1400,14000] [--old-code DIR] [--skip-baseline]

For each size it registers the keyworker template (blocked by benefit, block sizes 4 and 6,
10,000 draws), allocates that many referrals from a CSV, imports the three agency files,
and then, each in a fresh Python process so that its peak resident memory is its own:

- `analyse`: the whole registered analysis (results.run, as `evalkit analyse` calls it);
- the randomisation inference step alone: 10,000 blocked redraws and the test statistic;
- the same two on a minimisation design (factors benefit and referral route), whose redraws
  replay Pocock-Simon person by person;
- a plain numpy baseline: the treatment permuted within each stratum 10,000 times, the whole
  draws x people matrix at once, the difference in means by one matrix product (what one
  would write by hand; it ignores the blocks, so it is not the registered design).

R's ri2 and randomizr (the peer) are not in Debian and CRAN is not reachable here; with
--old-code DIR (a checkout of an earlier evalkit, e.g. `git archive 06ca6ce | tar -x -C DIR`)
the `analyse` and RI steps are also run on that code in the same run (its minimisation
redraws, one Python draw at a time, only for 100 draws at the smaller sizes). Prints one
table: measure, seconds, peak RSS (whole process).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_outcomes import FILES as OUTCOME_FILES  # noqa: E402  the same agency files

NOW = "2027-04-02T09:00:00.000000Z"
ON = "2027-04-02"
TODAY = date(2028, 11, 24)
DRAWS = 10_000
MINIMISATION = (
    "  method: blocked\n  strata: [benefit]\n  block_sizes: [4, 6]",
    "  method: minimisation\n  factors:\n    - field: benefit\n      weight: 1\n"
    "    - field: referral_route\n      weight: 1\n  probability: 0.8",
)
FILES = {source: spec[:2] for source, spec in OUTCOME_FILES.items()}  # columns, mapping


def _agency_row(source: str, raw_id: str, rnd: random.Random) -> list:
    start = date.fromisoformat(ON)
    if source == "DWP":
        s = start + timedelta(days=rnd.randint(0, 300))
        end = s + timedelta(weeks=rnd.randint(1, 40))
        return [raw_id, s.isoformat(), end.isoformat(), rnd.randint(0, 1), "2028-04-02"]
    if source == "survey":
        return [raw_id, rnd.randint(14, 70), "2028-04-09"]
    return [raw_id, (start + timedelta(days=rnd.randint(0, 360))).isoformat()]


def build(root: Path, name: str, n: int, edits: tuple[tuple[str, str], ...] = ()) -> dict:
    """Register, allocate ``n`` referrals and import the agency files; where it all is."""
    sys.path.insert(0, str(REPO))
    from evalkit.enrolment import allocate_file, open_pilot
    from evalkit.keys import KeyRing
    from evalkit.outcome_import import import_outcomes
    from evalkit.registration import register
    from evalkit.store import Store
    from tests.pilots import referral, write_csv

    ws = root / name
    (ws / "protocols").mkdir(parents=True)
    text = (REPO / "protocols" / "hackney-keyworker.yaml").read_text()
    text = text.replace("id: hackney-keyworker", f"id: {name}", 1)
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = ws / "protocols" / f"{name}.yaml"
    path.write_text(text)
    url = f"sqlite:///{root / (name + '.db')}"
    store = Store.open(url)
    keys = KeyRing(root / "keys")
    register(store, keys, path, "bench", NOW)
    pilot = open_pilot(store, keys, path, name)
    rnd = random.Random(n)
    people = [{"id": f"QQ{i:06d}", **referral(rnd)} for i in range(n)]
    allocate_file(store, pilot, write_csv(root / f"{name}.csv", people), NOW, "bench", ON)
    for source, (columns, mapping) in FILES.items():
        file = root / f"{name}-{source}.csv"
        with file.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            # the provider records a start for some people only, so that outcome varies
            some = [p for p in people if source != "provider" or rnd.random() < 0.4]
            w.writerows(_agency_row(source, p["id"], rnd) for p in some)
        import_outcomes(
            store, pilot, file, source, columns[0], mapping, False, None, TODAY, TODAY, NOW, "b"
        )
    store.close()
    return {"url": url, "keys": str(root / "keys"), "ws": str(ws), "pilot": name}


# --- what each child process runs (on the evalkit found first on sys.path) ---------------


def child_analyse(where: dict) -> str:
    from evalkit.keys import KeyRing
    from evalkit.results import run
    from evalkit.store import Store

    store = Store.open(where["url"])
    _, res = run(
        store, KeyRing(Path(where["keys"])), Path(where["ws"]), where["pilot"], TODAY, False
    )
    ri = res["primary"]["randomisation_inference"]
    return f"RI p {ri['p_value']:.4f}, {ri['draws']} draws"


def _ri_inputs(where: dict):
    """The primary outcome, its treatment and strata, and the log, as `analyse` sees them."""
    import numpy as np

    from evalkit.protocol_file import load_protocol
    from evalkit.store import Store
    from evalkit.tracking import track

    store = Store.open(where["url"])
    protocol, _ = load_protocol(Path(where["ws"]) / "protocols" / f"{where['pilot']}.yaml")
    entries = store.log_entries(where["pilot"])
    rows = track(store, protocol, TODAY, entries=entries).dataset.rows
    people = [e for e in entries if e.kind == "allocation" and e.level == "participant"]
    position = {e.unit: i for i, e in enumerate(people)}
    keep = [r for r in rows if r.get("in_work_13wk") is not None]
    columns = np.array([position[r["unit"]] for r in keep])
    y = np.array([float(r["in_work_13wk"]) for r in keep])
    t = np.array([r["arm"] == "keyworker" for r in keep], dtype=float)
    strata = np.array([r["benefit"] for r in keep])
    return protocol, entries, columns, y, t, strata


def child_ri(where: dict) -> str:
    """Redraws and the test statistic alone, as analysis._ri runs them."""
    import numpy as np

    from evalkit.design_ri import redraw
    from evalkit.inference import randomisation_test

    protocol, entries, columns, y, t, strata = _ri_inputs(where)
    Z = np.column_stack([np.ones(y.size)] + [strata == s for s in np.unique(strata)[1:]])
    start = time.perf_counter()
    r = redraw(protocol, entries, "keyworker", where.get("draws", DRAWS), seed=20271124)
    source = r.chunks(columns) if hasattr(r, "chunks") else r.treated[:, columns]
    test = randomisation_test(y, Z.astype(float), t, source, "estimate", r.exact)
    return f"p {test.p_value:.4f} in {time.perf_counter() - start:.2f} s of the step"


def child_numpy(where: dict) -> str:
    """Plain numpy: permute the treatment within strata, all draws at once."""
    import numpy as np

    _, _, _, y, t, strata = _ri_inputs(where)
    rng = np.random.default_rng(1)
    D = np.empty((DRAWS, y.size), dtype=np.int8)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        D[:, idx] = rng.permuted(np.tile(t[idx].astype(np.int8), (DRAWS, 1)), axis=1)
    n1 = D.sum(axis=1)
    null = (D @ y) / n1 - (y.sum() - D @ y) / (y.size - n1)
    observed = y[t == 1].mean() - y[t == 0].mean()
    return f"p {np.mean(np.abs(null) >= abs(observed)):.4f} (difference in means)"


CHILDREN = {"analyse": child_analyse, "ri": child_ri, "numpy": child_numpy}


def run_child(what: str, where: dict, code: Path) -> tuple[float | None, float | None, str]:
    """Seconds, peak RSS (MB) of the whole child process, and its note or error."""
    cmd = [sys.executable, __file__, "--child", what, "--code", str(code), json.dumps(where)]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=code)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return None, None, f"failed: {last[:120]}"
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, got["rss_mb"], got["note"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1400,14000", help="people per pilot, comma-separated")
    parser.add_argument("--old-code", type=Path, help="an earlier evalkit checkout to compare")
    parser.add_argument("--skip-baseline", action="store_true", help="no numpy baseline")
    parser.add_argument("--skip-minimisation", action="store_true", help="no minimisation")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, default=REPO, help=argparse.SUPPRESS)
    parser.add_argument("where", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(args.code))
        note = CHILDREN[args.child](json.loads(args.where))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"rss_mb": rss, "note": note}))
        return
    import numpy as np

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cores; {DRAWS:,} draws; times include starting Python"
    )
    rows = []
    codes = [("evalkit", REPO)] + ([("old evalkit", args.old_code)] if args.old_code else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n in [int(s) for s in args.sizes.split(",")]:
            designs = [("blocked", ())]
            if not args.skip_minimisation:
                designs.append(("minimisation", (MINIMISATION,)))
            for design, edits in designs:
                where = build(root, f"{design}-{n}", n, edits)
                for label, code in codes:
                    for what in ("analyse", "ri"):
                        run = dict(where)
                        if design == "minimisation" and label == "old evalkit":
                            if what == "analyse" or n > 2000:
                                continue  # one Python draw at a time: hours; time 100 draws
                            run["draws"] = 100
                        s, rss, note = run_child(what, run, code)
                        draws = run.get("draws", DRAWS)
                        rows.append(
                            (
                                f"{label} {what}, {design}, {n:,} people, {draws:,} draws",
                                s,
                                rss,
                                note,
                            )
                        )
                if design == "blocked" and not args.skip_baseline:
                    s, rss, note = run_child("numpy", where, REPO)
                    rows.append((f"numpy baseline, {n:,} people, {DRAWS:,} draws", s, rss, note))
    header = ("measure", "seconds", "peak RSS", "note")
    table = [
        (m, "-" if s is None else f"{s:.1f}", "-" if r is None else f"{r:.0f} MB", note)
        for m, s, r, note in rows
    ]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(4)]
    for r in [header, tuple("-" * w for w in widths), *table]:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
