"""`evalkit demo`: the evalkit cycle on synthetic pilots, in a fresh workspace.

It runs the steps that exist, through the same library calls the commands use, and says
plainly which steps of the full cycle are not built yet. Every pilot and data file it
makes is synthetic and named so. The pilots are dated 30 months back so that their
follow-up has ended by today.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from evalkit.clock import utc_now
from evalkit.enrolment import allocate_file, enrol, open_pilot, record_event, verify
from evalkit.errors import UserError
from evalkit.keys import KeyRing, default_key_dir
from evalkit.outcome_import import import_outcomes
from evalkit.registration import register
from evalkit.results import run as run_analysis
from evalkit.store import Store
from evalkit.synthetic import outcome_files, place_values, referral_values
from evalkit.templates import write_template
from evalkit.tracking import track

DEMO_PILOTS = {
    "demo-keyworker": "hackney-keyworker.yaml",
    "demo-estates": "hackney-estates.yaml",
    "demo-front-door": "hackney-front-door.yaml",
}
BY = "evalkit demo"
Person = tuple[str, bool, date]  # raw synthetic id, treated, randomisation date

NOT_YET_BUILT = [
    "write the scrutiny summary and the technical report (HTML)",
    "power, design diagnosis, place ranking and learning across iterations",
]


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _months_back(today: date, months: int) -> date:
    m = today.year * 12 + today.month - 1 - months
    return date(m // 12, m % 12 + 1, 1)


def run_demo(directory: Path, echo: Callable[[str], None] = print, seed: int = 2016) -> list[str]:
    """Run the demo; returns the pilot ids registered."""
    if directory.exists() and any(directory.iterdir()):
        raise UserError(f"{directory} is not empty", "give a new folder with --dir")
    directory.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    keys = KeyRing(default_key_dir())
    keys.ensure_outside(root)
    store = Store.open(f"sqlite:///{root / 'evalkit.db'}")
    rng = np.random.default_rng(seed)  # synthetic data only; allocations use each pilot's secret
    today = date.today()
    echo(f"evalkit demo in {root} (synthetic pilots and people; no real resident's data)")
    try:
        echo(
            "1. Write, validate and register three protocols (dated 30 months back, so that "
            "follow-up has ended)"
        )
        start = _months_back(today, 30)
        for pilot, template in DEMO_PILOTS.items():
            path = write_template(root, pilot, template)
            text = path.read_text(encoding="utf-8")
            path.write_text(
                re.sub(
                    r"^start_date: .*$",
                    f"start_date: {start.isoformat()}",
                    text,
                    count=1,
                    flags=re.M,
                ),
                encoding="utf-8",
            )
            receipt, _ = register(store, keys, path, BY, utc_now())
            echo(f"   {pilot}: registered, sha256 {receipt.hash[:16]}...")
        people = {
            "demo-keyworker": _keyworker(store, keys, root, rng, echo),
            "demo-estates": _places(store, keys, root, rng, echo, "demo-estates", 320),
            "demo-front-door": _places(store, keys, root, rng, echo, "demo-front-door", 360),
        }
        echo(
            "5. Import outcomes from each agency's file (DWP job spells and benefit status, "
            "surveys, provider, NHS and council records)"
        )
        for pilot in DEMO_PILOTS:
            _outcomes(store, keys, root, rng, echo, pilot, people[pilot], today)
        echo("6. Verify every allocation log by replaying it from the pilot's secret")
        for pilot in DEMO_PILOTS:
            record = store.pilot(pilot)
            assert record is not None
            secret = keys.load(record.id, record.uid, record.secret_commitment)
            v = verify(store, pilot, secret)
            if not v.ok:
                raise UserError(f"demo: {pilot} failed verification: {v.chain.problem}")
            echo(
                f"   {pilot}: {v.chain.entries} entries, {v.replayed} allocations replayed; "
                f"head {v.chain.head[:16]}..."
            )
        echo("7. Run each registered analysis and write analyses/PILOT/results.json")
        for pilot in DEMO_PILOTS:
            path, res = run_analysis(store, keys, root, pilot, today, exploratory=False)
            e = res["primary"]["effect"]
            ri = res["primary"]["randomisation_inference"] or {}
            echo(
                f"   {pilot}: {res['primary']['outcome']} {e['estimate']:+.3f} "
                f"({e['se_type']} 95% CI {e['conf_low']:+.3f} to {e['conf_high']:+.3f}; "
                f"randomisation p = {ri.get('p_value', float('nan')):.3f}); "
                f"{res['primary']['bayes']['words'].split(';')[0].lower()}"
            )
    finally:
        store.close()
    echo("Not built yet (later steps of the full cycle):")
    for item in NOT_YET_BUILT:
        echo(f"  - {item}")
    echo(f"Try: evalkit --workspace {root} status demo-keyworker")
    return list(DEMO_PILOTS)


def _keyworker(
    store: Store, keys: KeyRing, root: Path, rng: np.random.Generator, echo: Callable[[str], None]
) -> list[Person]:
    pilot = open_pilot(store, keys, root / "protocols" / "demo-keyworker.yaml", "demo-keyworker")
    start = pilot.protocol.start_date or date.today()
    echo("2. demo-keyworker: enrol 240 referrals one at a time over six months")
    allocated: list[Person] = []
    for i in range(240):
        on = start + timedelta(days=int(i * 182 / 240))
        out = enrol(
            store,
            pilot,
            f"SYN-KW-{i:04d}",
            referral_values(pilot.protocol, rng),
            utc_now(),
            BY,
            on.isoformat(),
        )
        e = out.entries[0]
        if e.kind == "allocation":
            allocated.append((f"SYN-KW-{i:04d}", e.arm != pilot.protocol.control.name, on))
    for raw_id, _, on in allocated[:: max(1, len(allocated) // 8)][:8]:
        record_event(
            store,
            pilot,
            raw_id,
            "withdrawn",
            utc_now(),
            BY,
            (on + timedelta(days=40)).isoformat(),
            "moved out of the area",
        )
    for raw_id, treated, on in allocated:
        if treated:
            kind = "started" if rng.random() < 0.78 else "did_not_start"
            record_event(store, pilot, raw_id, kind, utc_now(), BY, on.isoformat(), "")
    echo(
        f"   {len(allocated)} allocated, {240 - len(allocated)} not eligible (reasons "
        "recorded); 8 withdrawals and each key-worker resident's start recorded as events"
    )
    return allocated


def _places(
    store: Store,
    keys: KeyRing,
    root: Path,
    rng: np.random.Generator,
    echo: Callable[[str], None],
    name: str,
    people: int,
) -> list[Person]:
    pilot = open_pilot(store, keys, root / "protocols" / f"{name}.yaml", name)
    p = pilot.protocol
    step = "3" if name == "demo-estates" else "4"
    places_csv = _write_csv(root / "data" / f"{name}-places-synthetic.csv", place_values(p, rng))
    start = p.start_date or date.today()
    placed = allocate_file(store, pilot, places_csv, utc_now(), BY, start.isoformat())
    echo(f"{step}. {name}: {len(placed.entries)} places allocated together ({p.design.method})")
    rows = [
        {"id": f"SYN-{name[5:8].upper()}-{i:04d}", **referral_values(p, rng)} for i in range(people)
    ]
    days = max(1, int(p.sample_size.recruitment_months) * 30 - 1)
    joined: list[Person] = []
    for chunk in range(4):  # people join in four lists over the recruitment period
        part = rows[chunk::4]
        on = start + timedelta(days=int(days * chunk / 4))
        csv_path = _write_csv(root / "data" / f"{name}-people-{chunk + 1}-synthetic.csv", part)
        out = allocate_file(store, pilot, csv_path, utc_now(), BY, on.isoformat())
        for row, e, _ in out.rows:
            if e.kind == "allocation":
                joined.append((part[int(row or 2) - 2]["id"], e.arm != p.control.name, on))
    echo(
        f"   {len(joined)} people joined their place's arm in four lists; "
        f"{people - len(joined)} not eligible"
    )
    return joined


def _outcomes(
    store: Store,
    keys: KeyRing,
    root: Path,
    rng: np.random.Generator,
    echo: Callable[[str], None],
    name: str,
    people: list[Person],
    today: date,
) -> None:
    pilot = open_pilot(store, keys, root / "protocols" / f"{name}.yaml", name)
    as_of = today - timedelta(days=7)
    counts = []
    for source, rows in outcome_files(pilot.protocol, people, rng, as_of).items():
        if not rows:
            continue
        path = _write_csv(root / "data" / f"{name}-{source.lower()}-outcomes-synthetic.csv", rows)
        res = import_outcomes(
            store, pilot, path, source, None, [], False, None, as_of, today, utc_now(), BY
        )
        counts.append(f"{source} {res.new}")
    t = track(store, pilot.protocol, today)
    c = t.consort
    lights = ", ".join(f"{p['metric']} {p['rating']}" for p in t.progression)
    echo(
        f"   {name}: records imported ({', '.join(counts)}); primary outcome known for "
        f"{sum(a['analysed'] for a in c['arms'])} of {c['randomised']}; progression: {lights}"
    )
