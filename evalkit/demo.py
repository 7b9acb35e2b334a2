"""`evalkit demo`: the whole evalkit cycle on synthetic pilots, in a fresh workspace.

It goes through the same library calls the commands use: rank candidate estates, check
power and register three pilots, enrol and allocate, record withdrawals, import outcomes
from several agencies, verify every log, analyse, run a second iteration of the key-worker
pilot adapted from the first, learn across the two, and write every report and the index.
Every pilot and data file it makes is synthetic and named so. The pilots are dated in the
past so that their follow-up has ended by today: each is registered two weeks before its
start date, and every referral, withdrawal and start is entered on the day it happened, so
the log reads as a real pilot's would. The demo's secrets are derived from its seed and
kept in a key folder beside its workspace (``DIR-keys``), never in the user's own key
directory: the same seed on the same day gives the same pilots.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from evalkit.clock import utc_now
from evalkit.enrolment import allocate_file, enrol, open_pilot, record_event, verify
from evalkit.errors import UserError
from evalkit.keys import KeyRing
from evalkit.learn import learn, start_iteration
from evalkit.outcome_import import import_outcomes
from evalkit.places import make_rule, rank_areas
from evalkit.power import power_for_protocol
from evalkit.protocol_file import load_protocol, parse_protocol
from evalkit.registration import register
from evalkit.report import write_reports
from evalkit.results import run as run_analysis
from evalkit.store import Store
from evalkit.synthetic import area_values, outcome_files, place_values, referral_values
from evalkit.templates import template_text, write_template
from evalkit.tracking import track

DEMO_PILOTS = {
    "demo-keyworker": "hackney-keyworker.yaml",
    "demo-estates": "hackney-estates.yaml",
    "demo-front-door": "hackney-front-door.yaml",
}
BY = "evalkit demo"
Person = tuple[str, bool, date]  # raw synthetic id, treated, randomisation date

SECOND = "demo-keyworker-2"
# Months before today that each pilot started: every follow-up has ended, and the second
# key-worker iteration starts after the first one's results were known.
STARTS = {"demo-keyworker": 42, "demo-estates": 30, "demo-front-door": 30, SECOND: 20}
ESTATE_INDICATORS = "claimant_rate,mh_claimant_share,imd_score,spend_per_head"
ESTATE_WEIGHTS = "0.3,0.3,0.2,0.2"
REGISTERED_BEFORE_START = timedelta(days=14)


def key_dir(directory: Path) -> Path:
    """The demo's key folder: beside its workspace, never inside it or in the user's own
    key directory."""
    return directory.parent / f"{directory.name}-keys"


def demo_secret(seed: int, pilot: str) -> bytes:
    """A synthetic pilot's secret, derived from the demo's seed (never for a real pilot)."""
    return hashlib.sha256(f"evalkit demo secret/{seed}/{pilot}".encode()).digest()


def _at(day: date, hour: int = 9) -> str:
    """A synthetic entry time on ``day`` (UTC), for entries made on the day they happened."""
    return f"{day.isoformat()}T{hour:02d}:00:00.000000Z"


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
    keys = KeyRing(key_dir(directory.resolve()))
    if keys.directory.exists() and any(keys.directory.iterdir()):
        raise UserError(
            f"{keys.directory} (the demo's key folder) is not empty",
            "give a new folder with --dir, or remove the old demo and its key folder",
        )
    directory.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    keys.ensure_outside(root)
    store = Store.open(f"sqlite:///{root / 'evalkit.db'}")
    rng = np.random.default_rng(seed)  # synthetic data; the secrets come from the seed too
    today = date.today()
    echo(f"evalkit demo in {root} (synthetic pilots and people; no real resident's data)")
    echo(f"   its pilots' keys are in {keys.directory} (synthetic; kept out of your own)")
    try:
        echo("1. Choose 16 of 40 candidate council estates on need and spend (places rank)")
        chosen = _choose_estates(root, rng, echo)
        echo("2. Write, check the power of, and register three protocols")
        for pilot, template in DEMO_PILOTS.items():
            path = write_template(root, pilot, template)
            text = _synthetic(path.read_text(encoding="utf-8"), STARTS[pilot], today)
            if pilot == "demo-estates":
                text = _with_places(text, chosen)
            path.write_text(text, encoding="utf-8")
            _register(store, keys, path, pilot, echo, seed)
        people = {
            "demo-keyworker": _keyworker(store, keys, root, rng, echo, "demo-keyworker", "3."),
            "demo-estates": _places(store, keys, root, rng, echo, "demo-estates", 320),
            "demo-front-door": _places(store, keys, root, rng, echo, "demo-front-door", 360),
        }
        echo(
            "6. Import outcomes from each agency's file (DWP job spells and benefit status, "
            "surveys, provider, NHS and council records)"
        )
        for pilot in DEMO_PILOTS:
            _outcomes(store, keys, root, rng, echo, pilot, people[pilot], today)
        echo("7. Verify every allocation log by replaying it from the pilot's secret")
        for pilot in DEMO_PILOTS:
            _verify(store, keys, pilot, echo)
        echo("8. Run each registered analysis and write analyses/PILOT/results.json")
        for pilot in DEMO_PILOTS:
            _analyse(store, keys, root, pilot, today, echo)
        echo(
            f"9. Adapt the key-worker pilot and run it again as {SECOND} (iteration_of "
            "demo-keyworker): eligibility widened to 18 months out of work"
        )
        _second_iteration(store, keys, root, rng, echo, today, seed)
        echo("10. Learn across the chain demo-keyworker -> demo-keyworker-2")
        _, doc = learn(store, root, SECOND)
        echo(f"   {doc['statement']}")
        echo("11. Write the scrutiny summaries, the technical reports and the index")
        analyses = root / "analyses"
        for pilot in [*DEMO_PILOTS, SECOND]:
            write_reports(analyses, pilot)
    finally:
        store.close()
    echo("Done. Open these files in a browser (they work offline and print well):")
    echo(f"  {analyses / 'index.html'}")
    for pilot in [*DEMO_PILOTS, SECOND]:
        echo(f"  {analyses / pilot / 'summary.html'}")
    echo(f"  {analyses / 'demo-keyworker' / 'technical.html'} (and one for each pilot)")
    echo(
        f"To run evalkit commands on the demo: EVALKIT_KEY_DIR={keys.directory} "
        f"evalkit --workspace {root} status demo-keyworker"
    )
    return [*DEMO_PILOTS, SECOND]


def _synthetic(text: str, months_back: int, today: date) -> str:
    """Label the protocol as synthetic and date it so that its follow-up has ended."""
    start = _months_back(today, months_back)
    text = re.sub(
        r"^start_date: .*$", f"start_date: {start.isoformat()}", text, count=1, flags=re.M
    )
    return re.sub(r"^(title: .*)$", r"\1 (synthetic demonstration)", text, count=1, flags=re.M)


def _with_places(text: str, chosen: list[str]) -> str:
    """The estates protocol names the places chosen by the ranking."""
    head, tail = text.split("  - name: estate\n", 1)
    tail = re.sub(r"levels: \[[^\]]*\]", f"levels: [{', '.join(chosen)}]", tail, count=1)
    return head + "  - name: estate\n" + tail


def _register(store: Store, keys: KeyRing, path: Path, pilot: str, echo, seed: int) -> None:
    """Register two weeks before the protocol's start date, as a real pilot would be."""
    protocol, _ = load_protocol(path)
    assert protocol.start_date is not None
    power = min(c["power_at_mid"] for c in power_for_protocol(protocol)["comparisons"])
    when = _at(protocol.start_date - REGISTERED_BEFORE_START, 10)
    receipt, _ = register(store, keys, path, BY, when, demo_secret(seed, pilot))
    echo(
        f"   {pilot}: registered, sha256 {receipt.hash[:16]}...; power at the smallest "
        f"difference that matters {power:.0%}"
        + (
            " (too small to settle the question: a pilot, not the final test)"
            if power < 0.8
            else ""
        )
    )


def _choose_estates(root: Path, rng: np.random.Generator, echo) -> list[str]:
    template, _ = parse_protocol(template_text(DEMO_PILOTS["demo-estates"]), "estates template")
    areas = _write_csv(
        root / "data" / "candidate-estates-synthetic.csv", area_values(template, rng)
    )
    rule = make_rule(ESTATE_INDICATORS, ESTATE_WEIGHTS, None, 16)
    ranked = rank_areas(areas, rule)
    chosen = sorted(ranked.record["chosen"])
    echo(
        f"   {rule.formula()}; chosen: {', '.join(chosen)} "
        "(the rule is recorded in the pilot's log when its places are allocated)"
    )
    return chosen


def _verify(store: Store, keys: KeyRing, pilot: str, echo) -> None:
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


def _analyse(store: Store, keys: KeyRing, root: Path, pilot: str, today: date, echo) -> None:
    _, res = run_analysis(store, keys, root, pilot, today, exploratory=False)
    e = res["primary"]["effect"]
    ri = res["primary"]["randomisation_inference"] or {}
    echo(
        f"   {pilot}: {res['primary']['outcome']} {e['estimate']:+.3f} "
        f"({e['se_type']} 95% CI {e['conf_low']:+.3f} to {e['conf_high']:+.3f}; "
        f"randomisation p = {ri.get('p_value', float('nan')):.3f}); "
        f"{res['primary']['bayes']['words'].split(';')[0].lower()}"
    )


def _second_iteration(
    store: Store,
    keys: KeyRing,
    root: Path,
    rng: np.random.Generator,
    echo,
    today: date,
    seed: int,
) -> None:
    path = start_iteration(store, root, SECOND, "demo-keyworker", force=False)
    text = path.read_text(encoding="utf-8")
    text = re.sub(
        r"^start_date: .*$",
        f"start_date: {_months_back(today, STARTS[SECOND])}",
        text,
        count=1,
        flags=re.M,
    )
    text = text.replace("rule: months_unemployed >= 24", "rule: months_unemployed >= 18")
    text = text.replace("24 months or more", "18 months or more")
    text = text.replace(
        "reason: Out of work for less than 24 months", "reason: Out of work for less than 18 months"
    )
    path.write_text(text, encoding="utf-8")
    _register(store, keys, path, SECOND, echo, seed)
    people = _keyworker(store, keys, root, rng, echo, SECOND, "  ")
    _outcomes(store, keys, root, rng, echo, SECOND, people, today)
    _verify(store, keys, SECOND, echo)
    _analyse(store, keys, root, SECOND, today, echo)


def _keyworker(
    store: Store,
    keys: KeyRing,
    root: Path,
    rng: np.random.Generator,
    echo: Callable[[str], None],
    name: str,
    step: str,
) -> list[Person]:
    pilot = open_pilot(store, keys, root / "protocols" / f"{name}.yaml", name)
    start = pilot.protocol.start_date or date.today()
    prefix = "KW" if name == "demo-keyworker" else "KX"
    echo(f"{step} {name}: enrol 240 referrals one at a time over six months")
    allocated: list[Person] = []
    for i in range(240):
        on = start + timedelta(days=int(i * 182 / 240))
        out = enrol(
            store,
            pilot,
            f"SYN-{prefix}-{i:04d}",
            referral_values(pilot.protocol, rng),
            _at(on),
            BY,
            on.isoformat(),
        )
        e = out.entries[0]
        if e.kind == "allocation":
            allocated.append((f"SYN-{prefix}-{i:04d}", e.arm != pilot.protocol.control.name, on))
    for raw_id, _, on in allocated[:: max(1, len(allocated) // 8)][:8]:
        left = on + timedelta(days=40)
        record_event(
            store,
            pilot,
            raw_id,
            "withdrawn",
            _at(left, 15),
            BY,
            left.isoformat(),
            "moved out of the area",
        )
    for raw_id, treated, on in allocated:
        if treated:
            kind = "started" if rng.random() < 0.78 else "did_not_start"
            record_event(store, pilot, raw_id, kind, _at(on, 16), BY, on.isoformat(), "")
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
    step = "4" if name == "demo-estates" else "5"
    start = p.start_date or date.today()
    places_csv = root / "data" / f"{name}-places-synthetic.csv"
    if name == "demo-estates":  # the ranked choice, with its rule recorded in the log
        rank_areas(
            root / "data" / "candidate-estates-synthetic.csv",
            make_rule(ESTATE_INDICATORS, ESTATE_WEIGHTS, None, 16),
            out=places_csv,
            pilot=pilot,
            store=store,
            now=_at(start, 8),
            by=BY,
            on=start.isoformat(),
        )
    else:
        _write_csv(places_csv, place_values(p, rng))
    placed = allocate_file(store, pilot, places_csv, _at(start), BY, start.isoformat())
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
        out = allocate_file(store, pilot, csv_path, _at(on, 11), BY, on.isoformat())
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
