"""Random real-sized pilots, run start to finish through the command line.

evalkit's own demo is one pilot; users bring others. This module makes a pilot from a
seed the way a council evaluator might: any design the protocol allows, two or three
arms, 6 to 300 people or 4 to 30 places, rare or absent outcomes, an agency file never
imported, withdrawals, enrolment spread over months, analysis before any outcome is due,
part-way and after, and bad input typed along the way. Every command goes through the
CLI (click's CliRunner, with the clock moved by time-machine) and after each one the
invariants every user is promised are checked:

- every command exits 0, 1 or 2 and never shows a traceback; exit 1 is one message with
  a hint;
- a command that fails writes nothing (the log head and the outcome records are as they
  were) and the store verifies after every step;
- every results.json follows its schema and every report renders;
- no raw identifier reaches any output, and no pseudonym reaches a page;
- the counts and the primary effect a summary states are those of results.json, with
  counts under the threshold never shown exactly.

``run_pilot(seed, folder)`` runs one pilot; a failure raises ``PilotFailed`` naming the
seed and the commands run so far, so it can be replayed alone.
"""

from __future__ import annotations

import contextlib
import csv
import html as htmllib
import json
import random
import re
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from cli import cli
from evalkit.derivation import add_months
from evalkit.results import check_results
from evalkit.store import Store
from tests.conftest import PG_URL, REPO, _pg_schema_url, travel

TEMPLATES = {
    "individual": "hackney-keyworker",
    "place": "hackney-estates",
    "stepped-wedge": "hackney-front-door",
}
BENEFITS = ["ESA", "JSA", "UC"]
WRITES = {"register", "amend", "enrol", "allocate", "event", "note", "outcomes", "places"}


class PilotFailed(AssertionError):
    """A broken promise, with what is needed to replay it."""


@dataclass
class Person:
    raw_id: str
    values: dict[str, str]
    eligible: bool
    day: date
    arm: str | None = None  # as the CLI printed it
    enrolled: bool = False


@dataclass
class Run:
    """One generated pilot being run: its choices, its people and what the CLI did."""

    seed: int
    folder: Path
    rnd: random.Random
    name: str = ""
    template: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    registered: date = date(2025, 1, 1)
    people: list[Person] = field(default_factory=list)
    places: list[dict[str, str]] = field(default_factory=list)
    place_arm: dict[str, str] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    analysed: list[date] = field(default_factory=list)
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    imported: dict[str, date] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    typed_ids: set[str] = field(default_factory=set)  # every raw id typed, people or not
    backdated: bool = False
    extra_excluded: int = 0  # referrals typed by the attacks and recorded as excluded
    uk_dates: set[str] = field(default_factory=set)  # agencies whose files write dd/mm/yyyy
    send_excluded: bool = False  # agency files also hold people who were excluded
    pg_url: str | None = None  # a PostgreSQL store (a schema of its own) instead of SQLite

    @property
    def ws(self) -> Path:
        return self.folder / "ws"

    @property
    def store_url(self) -> str:
        return self.pg_url or f"sqlite:///{self.ws / 'evalkit.db'}"

    # -- running commands --------------------------------------------------------------

    def fail(self, what: str, output: str = "") -> None:
        shown = "\n".join(self.log[-12:])
        raise PilotFailed(
            f"any-pilot seed {self.seed} ({self.template}, {self.design}, "
            f"{'PostgreSQL' if self.pg_url else 'SQLite'}, "
            f"{len(self.arms)} arms, {len(self.people)} people): {what}\n"
            f"reproduce: EVALKIT_FUZZ_SEED={self.seed} EVALKIT_FUZZ_PILOTS=1 "
            f"python3 -m pytest tests/test_any_pilot.py\n"
            f"last commands:\n{shown}\noutput:\n{output[-3000:]}"
        )

    def cli(self, *args: str, at: date, ok: set[int] | int | None = 0) -> Any:
        """Run `evalkit ARGS` with the clock at noon on ``at``; check the promises every
        command keeps, and the exit code when ``ok`` says which are right."""
        store = ["--store", self.pg_url] if self.pg_url and args[0] != "--store" else []
        full = ["--workspace", str(self.ws), *store, *args]
        self.log.append(f"[{at}] evalkit {' '.join(args)}")
        with travel(datetime(at.year, at.month, at.day, 12, tzinfo=UTC)):
            res = CliRunner().invoke(cli, full, catch_exceptions=True)
        out = res.output
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            tb = "".join(traceback.format_exception(res.exception))
            self.fail(f"evalkit {' '.join(args)} raised {res.exception!r}", tb)
        if res.exit_code not in (0, 1, 2):
            self.fail(f"exit code {res.exit_code}", out)
        if "Traceback" in out:
            self.fail("a traceback was printed", out)
        if res.exit_code == 1 and "hint" not in out and not _verify_failure(args, out):
            self.fail("exit 1 without a hint", out)
        for raw in self.typed_ids | {p.raw_id for p in self.people}:
            if raw in out:
                self.fail(f"a raw identifier ({raw}) was printed", out)
        wanted = {ok} if isinstance(ok, int) else ok
        if wanted is not None and res.exit_code not in wanted:
            self.fail(f"exit code {res.exit_code}, expected {sorted(wanted)}", out)
        if args[0] in WRITES and self.state() not in ((), ("unregistered",)):
            self.verified(at)  # the store verifies after every step that writes
        return res

    def refused(self, *args: str, at: date, needle: str | None = None) -> None:
        """A command that must fail with exit 1, one message, and write nothing."""
        before = self.state()
        res = self.cli(*args, at=at, ok=1)
        if needle and needle not in res.output:
            self.fail(f"expected {needle!r} in the message", res.output)
        if self.state() != before:
            self.fail(f"evalkit {' '.join(args)} failed but changed the store", res.output)

    def state(self) -> tuple[Any, ...]:
        """What a failed command must leave as it was: the log head and outcome records."""
        if self.pg_url is None and not (self.ws / "evalkit.db").exists():
            return ()
        store = Store.open(self.store_url)
        try:
            record = store.pilot(self.name)
            if record is None:
                return ("unregistered",)
            return (
                record.log_count,
                record.log_head,
                len(store.observations(self.name, every_version=True)),
                len(store.imports(self.name)),
            )
        finally:
            store.close()

    def verified(self, at: date) -> None:
        res = self.cli("verify", self.name, "--json", at=at, ok=None)
        doc = json.loads(res.output)
        if not doc["ok"]:
            self.fail("the log does not verify", res.output)

    # -- what the pilot is -------------------------------------------------------------

    @property
    def design(self) -> str:
        return self.protocol.get("design", {}).get("method", "?")

    @property
    def arms(self) -> list[str]:
        return [a["name"] for a in self.protocol.get("arms", [])]

    @property
    def place_level(self) -> bool:
        return self.protocol["unit"]["level"] == "place"

    @property
    def place_field(self) -> str | None:
        return self.protocol["unit"].get("place_field")


def _verify_failure(args: tuple[str, ...], out: str) -> bool:
    """`verify` and `check` report a failed check (not a mistake by the user) without a
    hint; validate lists its problems each with a hint of its own."""
    return bool(args) and args[0] in {"verify", "check"} and "error:" not in out


# --- making a protocol ----------------------------------------------------------------


def _template(template: str) -> dict[str, Any]:
    text = (REPO / "protocols" / f"{TEMPLATES[template]}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _pick_size(rnd: random.Random, low: int, high: int) -> int:
    """Mostly small (what pilots are), sometimes up to ``high``."""
    if rnd.random() < 0.75:
        return rnd.randint(low, min(high, 40))
    return rnd.randint(low, high)


def make_protocol(r: Run) -> None:
    rnd = r.rnd
    r.template = rnd.choices(["individual", "place", "stepped-wedge"], [5, 3, 2])[0]
    p = _template(r.template)
    r.name = f"pilot-{r.seed}"
    p["id"] = r.name
    p["title"] = f"Generated pilot {r.seed}"
    p["iteration_of"] = None
    threshold = rnd.choice([10, 10, 5, 3])
    p["reporting"]["suppression_threshold"] = threshold
    p["reporting"]["blinded"] = rnd.random() < 0.15
    r.registered = date(2024, 1, 1) + timedelta(days=rnd.randint(0, 900))
    p["start_date"] = r.registered + timedelta(days=rnd.randint(0, 30))
    arms = p["arms"]
    three = r.template != "stepped-wedge" and rnd.random() < 0.15
    if three:
        arms.append(
            {
                "name": "phone_coach",
                "label": "Phone coaching",
                "description": "Weekly coaching calls.",
                "ratio": 1,
            }
        )
    if r.template == "individual":
        _individual_design(r, p)
    else:
        _place_design(r, p)
    _vary_outcomes(r, p)
    _vary_analysis(r, p)
    r.protocol = p


def _individual_design(r: Run, p: dict[str, Any]) -> None:
    rnd = r.rnd
    if len(p["arms"]) == 2 and rnd.random() < 0.25:
        p["arms"][1]["ratio"] = 2
    total = int(sum(a["ratio"] for a in p["arms"]))
    method = rnd.choice(["simple", "complete", "blocked", "blocked", "minimisation"])
    categorical = ["benefit", "referral_route"]
    if method == "blocked":
        sizes = sorted({total * k for k in rnd.sample([1, 2, 3], rnd.randint(1, 2))})
        p["design"] = {
            "method": "blocked",
            "strata": rnd.sample(categorical, rnd.randint(0, 2)),
            "block_sizes": sizes,
        }
    elif method == "minimisation":
        k = len(p["arms"])
        low = (k - 1) / k if k > 2 else 0.5
        p["design"] = {
            "method": "minimisation",
            "factors": [{"field": f} for f in rnd.sample(categorical, rnd.randint(1, 2))],
            "probability": round(rnd.uniform(max(low, 0.7), 1.0), 2),
        }
    else:
        p["design"] = {"method": method}
    n = _pick_size(rnd, 6, 300)
    p["sample_size"]["target_units"] = n
    p["sample_size"]["recruitment_months"] = rnd.choice([1, 3, 6, 12])


def _place_design(r: Run, p: dict[str, Any]) -> None:
    rnd = r.rnd
    wedge = r.template == "stepped-wedge"
    k = _pick_size(rnd, 4, 30) if not wedge else rnd.randint(4, 12)
    field_name = p["unit"]["place_field"]
    codes = [f"S{i:02d}" for i in range(1, k + 1)]
    next(f for f in p["fields"] if f["name"] == field_name)["levels"] = codes
    p["sample_size"]["target_places"] = k
    p["unit"]["individuals"]["expected_per_place"] = rnd.randint(2, 20)
    if wedge:
        periods = rnd.randint(3, min(5, k + 1))
        steps = [1] * (periods - 1)
        for _ in range(k - (periods - 1)):
            steps[rnd.randrange(periods - 1)] += 1
        p["design"] = {
            "method": "stepped_wedge",
            "periods": periods,
            "period_months": rnd.choice([1, 2, 3, 4]),
            "places_per_step": steps,
        }
    else:
        two = len(p["arms"]) == 2
        methods = ["cluster", "stratified_cluster", "constrained_cluster"]
        if two:
            methods.append("matched_pair_cluster")
        method = rnd.choice(methods)
        design: dict[str, Any] = {"method": method}
        if method == "stratified_cluster":
            design["strata"] = ["deprivation_band"]
        elif method == "matched_pair_cluster":
            design["match_on"] = ["imd_score", "claimant_rate"]
        elif method == "constrained_cluster":
            design["balance_on"] = ["imd_score", "claimant_rate"]
            design["keep_fraction"] = rnd.choice([0.1, 0.25, 0.5])
            design["candidates"] = rnd.choice([100, 500, 2000])
        p["design"] = design
    per_place = p["unit"]["individuals"]["expected_per_place"]
    p["sample_size"]["target_units"] = max(6, k * per_place)
    p["sample_size"]["recruitment_months"] = rnd.choice([1, 3, 6])
    r.places = _places(rnd, p, codes)


def _places(rnd: random.Random, p: dict[str, Any], codes: list[str]) -> list[dict[str, str]]:
    field_name = p["unit"]["place_field"]
    rows = []
    for code in codes:
        row = {field_name: code}
        for f in p["unit"]["place_fields"]:
            if f["type"] == "number":
                row[f["name"]] = f"{rnd.uniform(f.get('min', 0), min(f.get('max', 1), 60)):.3f}"
            elif f["type"] == "integer":
                row[f["name"]] = str(rnd.randint(int(f.get("min", 1)), 500))
            else:
                row[f["name"]] = rnd.choice(f["levels"])
        rows.append(row)
    return rows


def _vary_outcomes(r: Run, p: dict[str, Any]) -> None:
    rnd = r.rnd
    for o in p["outcomes"]:
        o["window"]["months"] = rnd.choice([3, 6, 12])
    if r.template == "individual" and rnd.random() < 0.2:  # a continuous primary outcome
        for o in p["outcomes"]:
            o["primary"] = o["name"] == "wellbeing"
        p["sample_size"]["baseline_sd"] = 9
        p["analysis"]["models"] = [m for m in p["analysis"]["models"] if m["outcome"] != "x"]
    if r.template == "stepped-wedge":
        span = p["design"]["periods"] * p["design"]["period_months"]
        for o in p["outcomes"]:
            o["window"]["months"] = rnd.choice([1, 2, 3, max(1, span // 2)])


def _vary_analysis(r: Run, p: dict[str, Any]) -> None:
    rnd = r.rnd
    a = p["analysis"]
    s = a.setdefault("sensitivity", {})
    if "randomisation_inference" in s or rnd.random() < 0.5:
        s["randomisation_inference"] = {
            "draws": rnd.choice([100, 200, 500]),
            "statistic": rnd.choice(["estimate", "t"]),
        }
    wild = "wild_cluster_bootstrap" in s or rnd.random() < 0.5
    if r.template != "individual" and wild:
        s["wild_cluster_bootstrap"] = {"draws": rnd.choice([99, 199, 499])}
    s["missing_data"] = rnd.choice(["none", "multiple_imputation", "inverse_probability_weighting"])
    a["multiplicity"] = rnd.choice(["holm", "bonferroni", "hochberg", "fdr_bh", "none"])
    a["covariates"] = rnd.sample(
        a.get("covariates", []), rnd.randint(0, len(a.get("covariates", [])))
    )
    a["subgroups"] = [g for g in a.get("subgroups", []) if rnd.random() < 0.5]
    models = []
    for o in p["outcomes"]:
        if o["type"] == "binary" and rnd.random() < 0.3:
            models.append({"outcome": o["name"], "model": "logistic"})
        elif o["type"] == "count" and rnd.random() < 0.5:
            models.append(
                {"outcome": o["name"], "model": rnd.choice(["poisson", "negative_binomial"])}
            )
    a["models"] = models


# --- people ---------------------------------------------------------------------------


def _raw_id(rnd: random.Random, used: set[str]) -> str:
    while True:
        raw = f"QZ{rnd.randint(0, 999999):06d}{rnd.choice('ABCD')}"
        if raw not in used:
            used.add(raw)
            return raw


def make_people(r: Run) -> None:
    rnd = r.rnd
    p = r.protocol
    n = p["sample_size"]["target_units"]
    if r.place_level:
        n = max(6, min(300, n))
    start = date.fromisoformat(str(p["start_date"]))
    months = p["sample_size"]["recruitment_months"]
    if r.design == "stepped_wedge":
        months = p["design"]["periods"] * p["design"]["period_months"]
    span = max(1, (add_months(start, int(months)) - start).days - 1)
    used: set[str] = set()
    share_ineligible = rnd.choice([0.0, 0.1, 0.3])
    outside = rnd.choice([0.0, 0.0, 0.05])  # a benefit the protocol does not list (PIP)
    codes = [pl[r.place_field] for pl in r.places] if r.place_level else []
    people = []
    for _ in range(n):
        eligible = rnd.random() >= share_ineligible
        values = _values(rnd, p, eligible)
        if rnd.random() < outside:
            values["benefit"], eligible = "PIP", False
        if codes:
            values[r.place_field] = rnd.choice(codes)
        people.append(
            Person(
                _raw_id(rnd, used), values, eligible, start + timedelta(days=rnd.randint(0, span))
            )
        )
    people.sort(key=lambda x: x.day)
    r.people = people


def _values(rnd: random.Random, p: dict[str, Any], eligible: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in p["fields"]:
        name = f["name"]
        if f["type"] == "category":
            out[name] = rnd.choice(f["levels"])
        elif f["type"] == "integer":
            out[name] = str(rnd.randint(18, 64))
        elif f["type"] == "boolean":
            out[name] = "true" if rnd.random() < 0.8 else "false"
        elif f["type"] == "number":
            out[name] = f"{rnd.uniform(0, 10):.2f}"
        else:
            out[name] = "2025-01-01"
        if not f.get("required", True) and rnd.random() < 0.3:
            out[name] = ""
    out["months_unemployed"] = str(rnd.randint(24, 120))
    if "mh_condition" in out:
        out["mh_condition"] = "true"
    if not eligible:  # fails one of the templates' rules
        why = rnd.choice(["young", "recent", "old"])
        if why == "young":
            out["age"] = str(rnd.randint(16, 17))
        elif why == "recent":
            out["months_unemployed"] = str(rnd.randint(0, 23))
        else:
            out["age"] = str(rnd.randint(65, 90))
    return out


# --- the cycle ------------------------------------------------------------------------


def register(r: Run) -> None:
    at = r.registered
    r.cli("init", r.name, "--template", r.template, at=at)
    path = r.ws / "protocols" / f"{r.name}.yaml"
    path.write_text(
        yaml.safe_dump(r.protocol, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    res = r.cli("validate", r.name, at=at, ok=None)
    if res.exit_code != 0:
        r.fail("a generated protocol does not validate", res.output)
    r.cli("register", r.name, at=at)
    r.cli("check", r.name, at=at)
    r.verified(at)


def _row(r: Run, person: Person) -> dict[str, str]:
    return {"id": person.raw_id, **person.values}


def _write_csv(path: Path, rows: list[dict[str, str]], header: list[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = list(dict.fromkeys(header))
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def allocate_places(r: Run) -> None:
    if not r.place_level:
        return
    path = _write_csv(r.folder / "data" / "places.csv", r.places)
    at = date.fromisoformat(str(r.protocol["start_date"]))
    res = r.cli("allocate", r.name, str(path), "--json", at=at)
    for row in json.loads(res.output)["rows"]:
        r.place_arm[row["unit"]] = row.get("arm") or ""
    r.verified(at)


def enrol_people(r: Run) -> None:
    """Some one at a time (on the day, or entered a few days late), the rest in lists."""
    rnd = r.rnd
    sequential = r.design in {"simple", "blocked", "minimisation"} or r.place_level
    one_by_one = min(len(r.people), rnd.choice([0, 4, 12])) if sequential else 0
    for person in r.people[:one_by_one]:
        late = rnd.choice([0, 0, 0, 3])
        args = ["enrol", r.name, "--unit-id", person.raw_id, "--date", person.day.isoformat()]
        for k, v in person.values.items():
            args += ["--set", f"{k}={v}"]
        res = r.cli(*args, "--json", at=person.day + timedelta(days=late))
        doc = json.loads(res.output)
        person.arm = doc.get("arm")
        person.enrolled = True
        _maybe_attack(r, person.day + timedelta(days=late))
    rest = r.people[one_by_one:]
    if not rest:
        return
    cuts = sorted(rnd.sample(range(1, len(rest)), min(len(rest) - 1, rnd.randint(0, 3))))
    for part in [rest[a:b] for a, b in zip([0, *cuts], [*cuts, len(rest)], strict=True)]:
        day = part[-1].day
        path = _write_csv(
            r.folder / "data" / f"list-{part[0].raw_id}.csv", [_row(r, x) for x in part]
        )
        res = r.cli("allocate", r.name, str(path), "--date", day.isoformat(), "--json", at=day)
        rows = json.loads(res.output)["rows"]
        for person, row in zip(part, rows, strict=True):
            person.arm = row.get("arm")
            person.enrolled = True
            person.day = day  # a list is referred on one date
    r.verified(r.people[-1].day)


def events(r: Run) -> None:
    rnd = r.rnd
    allocated = [x for x in r.people if x.arm]
    for person in rnd.sample(allocated, min(len(allocated), rnd.randint(0, 3))):
        day = person.day + timedelta(days=rnd.randint(1, 60))
        r.cli(
            "event",
            r.name,
            "--unit-id",
            person.raw_id,
            "--type",
            "withdrawn",
            "--reason",
            "moved away",
            "--date",
            day.isoformat(),
            at=day,
        )
    control = r.arms[0]
    treated = [x for x in allocated if x.arm not in (None, control)]
    for person in rnd.sample(treated, min(len(treated), rnd.randint(0, 10))):
        kind = "started" if rnd.random() < 0.8 else "did_not_start"
        args = ["event", r.name, "--unit-id", person.raw_id, "--type", kind]
        r.cli(*args, "--date", person.day.isoformat(), at=person.day + timedelta(days=1))
    if rnd.random() < 0.3:
        day = r.people[0].day
        r.cli("note", r.name, "--date", day.isoformat(), "Work Programme contract ended", at=day)


# --- outcomes -------------------------------------------------------------------------


def make_rates(r: Run) -> None:
    """Chance of each outcome by arm: sometimes rare, sometimes absent in an arm."""
    rnd = random.Random(f"{r.seed}/rates")
    out: dict[str, dict[str, float]] = {}
    for o in r.protocol["outcomes"]:
        base = rnd.choice([0.0, 0.02, 0.1, 0.3])
        arms = {a: base for a in r.arms}
        if rnd.random() < 0.3:
            arms[rnd.choice(r.arms)] = 0.0
        elif base and rnd.random() < 0.5:
            arms[r.arms[-1]] = min(0.9, base * 2)
        out[o["name"]] = arms
    r.rates = out


def outcome_files(r: Run, as_of: date, never: set[str]) -> dict[str, tuple[Path, bool]]:
    """Each agency's file as it stands on ``as_of``: records dated up to then only; some
    people never answer a survey; outcomes of agencies in ``never`` are not sent at all.
    Each file comes with whether it holds a row of someone randomised."""
    people = [x for x in r.people if x.arm or (r.send_excluded and x.enrolled)]
    by_name = {o["name"]: o for o in r.protocol["outcomes"]}
    out = {}
    for src in r.protocol.get("imports", []):
        if src["source"] in never:
            continue
        rows: list[dict[str, str]] = []
        randomised = False
        id_col = src.get("id_column", "id")
        for person in people:
            for c in src["columns"]:
                o = by_name[c["outcome"]]
                for rec in _records(o, c, person, r.rates[o["name"]], as_of):
                    if src["source"] in r.uk_dates:
                        rec = {k: _uk(v) for k, v in rec.items()}
                    rows.append({id_col: person.raw_id, **rec})
                    randomised = randomised or person.arm is not None
        header = [id_col] + [
            col
            for c in src["columns"]
            for col in (c.get("value"), c.get("date"), c.get("start"), c.get("end"))
            if col
        ]
        if rows:  # an extract has its whole header even when some columns are empty
            path = r.folder / "data" / f"{src['source']}-{as_of}.csv"
            out[src["source"]] = (_write_csv(path, rows, header), randomised)
    return out


def _uk(text: str) -> str:
    """A YYYY-MM-DD cell as a UK agency writes it (01/02/2027 is 1 February)."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return date.fromisoformat(text).strftime("%d/%m/%Y")
    return text


def _records(
    o: dict[str, Any],
    c: dict[str, Any],
    person: Person,
    rates: dict[str, float],
    as_of: date,
) -> list[dict[str, str]]:
    """One person's records of one outcome, the same whenever the file is cut (seeded by
    the person and outcome), keeping only what is dated up to ``as_of``."""
    months = o["window"]["months"]
    end = add_months(person.day, months)
    kind = (o.get("derive") or {}).get("from", "measurement")
    rate = rates.get(person.arm or "", min(rates.values()))
    prnd = random.Random(f"{person.raw_id}/{o['name']}")
    out = []
    if kind == "spells":
        if prnd.random() < rate:
            s = person.day + timedelta(days=prnd.randint(-20, max(1, (end - person.day).days // 2)))
            e = s + timedelta(weeks=prnd.randint(10, 40))
            if s <= as_of:
                row = {c["start"]: s.isoformat()}
                if c.get("end"):
                    row[c["end"]] = e.isoformat() if e <= as_of else ""
                out.append(row)
    elif kind == "events":
        count = 0
        if o["type"] == "count":
            count = sum(prnd.random() < rate for _ in range(4))
        elif prnd.random() < rate:
            count = 1
        for _ in range(count):
            d = person.day + timedelta(days=prnd.randint(0, max(0, (end - person.day).days - 1)))
            if d <= as_of:
                out.append({c["date"]: d.isoformat()})
    else:
        if prnd.random() < 0.25:  # never answers
            return []
        tol = int(o["window"].get("tolerance_weeks", 0))
        d = end + timedelta(days=prnd.randint(-7 * tol, 7 * tol))
        if d > as_of or d < person.day:
            return []
        if o["type"] == "binary":
            value = "1" if prnd.random() < rate else "0"
        elif o["type"] == "count":
            value = str(prnd.randint(0, 3))
        else:
            low, high = o.get("min", 0), o.get("max", 100)
            value = str(round(prnd.uniform(low, high)))
        out.append({c["value"]: value, c["date"]: d.isoformat()})
    return out


def import_outcomes(r: Run, day: date, never: set[str]) -> None:
    as_of = day - timedelta(days=r.rnd.randint(0, 7))
    if as_of < r.people[0].day:
        return
    for source, (path, randomised) in outcome_files(r, as_of, never).items():
        args = ["outcomes", "import", r.name, str(path), "--source", source]
        args += ["--as-of", as_of.isoformat()]
        if source in r.uk_dates:
            if randomised and r.rnd.random() < 0.3:  # forgetting the format: refused
                r.refused(*args, at=day, needle="--date-format %d/%m/%Y")
            args += ["--date-format", "%d/%m/%Y"]
        res = r.cli(*args, at=day, ok=None)
        if res.exit_code != 0:
            r.fail(f"a well-formed {source} file was refused", res.output)
        r.imported[source] = as_of
    r.verified(day)


# --- analysis and reports -------------------------------------------------------------


def analyse_and_report(r: Run, day: date) -> None:
    res = r.cli("analyse", r.name, at=day, ok=None)
    results_path = r.ws / "analyses" / r.name / "results.json"
    if res.exit_code != 0:
        if (
            len(r.arms) != 2
            and "3 arms" not in res.output
            and "not known for anyone" not in res.output
        ):
            r.fail("a three-arm pilot was refused without saying why", res.output)
        return
    results = json.loads(results_path.read_text(encoding="utf-8"))
    try:
        check_results(results)
    except ValueError as exc:
        r.fail(f"results.json does not follow its schema: {exc}")
    r.analysed.append(day)
    r.cli("report", r.name, at=day)
    check_pages(r, results)


def _text(page: str) -> str:
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", page, flags=re.S)
    return htmllib.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))


def _shown_ok(r: Run, what: str, shown: str, exact: int, threshold: int) -> None:
    shown = shown.strip()
    if shown in ("withheld", "not published"):
        return
    if shown == f"fewer than {threshold}":
        if not 0 < exact < threshold:
            r.fail(f"{what}: 'fewer than {threshold}' shown for {exact}")
        return
    try:
        value = int(shown.replace(",", ""))
    except ValueError:
        r.fail(f"{what}: unexpected text {shown!r}")
    if value != exact:
        r.fail(f"{what}: the summary says {value}, results.json {exact}")
    if 0 < value < threshold:
        r.fail(f"{what}: the exact small count {value} is published")


def check_pages(r: Run, results: dict[str, Any]) -> None:
    folder = r.ws / "analyses" / r.name
    pages = {
        name: (folder / name).read_text(encoding="utf-8")
        for name in ("summary.html", "technical.html")
    }
    pages["index.html"] = (r.ws / "analyses" / "index.html").read_text(encoding="utf-8")
    store = Store.open(r.store_url)
    try:
        pseudonyms = {
            e.unit for e in store.log_entries(r.name) if e.level == "participant" and e.unit
        }
    finally:
        store.close()
    for name, page in pages.items():
        for token in pseudonyms:
            if token in page:
                r.fail(f"a pseudonym reached {name}")
        for p in r.people:
            if p.raw_id in page:
                r.fail(f"a raw identifier reached {name}")
    threshold = results["protocol"]["reporting"]["suppression_threshold"]
    text = _text(pages["summary.html"])
    c = results["consort"]
    m = re.search(
        r"Assessed for eligibility: (.+?)\. Not eligible: (.+?)\. Randomised: (.+?)\.", text
    )
    if not m:
        r.fail("the summary does not state the CONSORT totals")
    for shown, exact, what in zip(
        m.groups(),
        (c["assessed"], c["excluded"]["total"], c["randomised"]),
        ("assessed", "excluded", "randomised"),
        strict=True,
    ):
        _shown_ok(r, what, shown, exact, threshold)
    primary = results["primary"]
    e = primary["effect"]
    if e is not None:
        expected = _amount(primary, e["estimate"])
        if expected not in text:
            r.fail(f"the summary does not state the primary estimate {expected!r} of results.json")


def _amount(outcome: dict[str, Any], value: float) -> str:
    """The primary estimate as the summary must word it (an independent formatting)."""
    if outcome["type"] == "binary":
        points = round(value * 100)
        if points == 0:
            return "no more and no fewer in every 100 people"
        return f"{abs(points)} {'more' if points > 0 else 'fewer'} in every 100 people"
    if outcome["type"] == "count":
        v = round(value, 2)
        return "no difference" if v == 0 else f"{abs(v):.2f} {'more' if v > 0 else 'fewer'}"
    v = round(value, 1)
    return "no difference" if v == 0 else f"{abs(v):.1f} points {'higher' if v > 0 else 'lower'}"


def read_only_commands(r: Run, day: date) -> None:
    r.cli("status", r.name, at=day)
    doc = json.loads(r.cli("status", r.name, "--json", at=day).output)
    if doc["consort"]["randomised"] != sum(1 for x in r.people if x.arm):
        r.fail("status counts a different number randomised than the CLI allocated")
    assessed = sum(1 for x in r.people if x.enrolled) + r.extra_excluded
    if doc["consort"]["assessed"] != assessed:
        r.fail(f"status counts {doc['consort']['assessed']} assessed, the CLI typed {assessed}")
    r.cli("followup", r.name, "--json", at=day)
    for what in ("analysis", "allocations", "outcomes"):
        r.cli("export", r.name, "--what", what, at=day)
    out = r.folder / "exports" / f"analysis-{day}.csv"
    out.parent.mkdir(exist_ok=True)
    r.cli("export", r.name, "--what", "analysis", "--out", str(out), at=day)
    r.cli("learn", r.name, at=day, ok={0, 1})
    r.verified(day)


# --- bad input ------------------------------------------------------------------------


def _with(values: dict[str, str], name: str, value: str) -> list[str]:
    out: list[str] = []
    for k, v in {**values, name: value}.items():
        out += ["--set", f"{k}={v}"]
    return out


def _maybe_attack(r: Run, day: date) -> None:
    """Now and then, type something wrong; it must be refused whole, with a hint."""
    rnd = r.rnd
    if rnd.random() > 0.35:
        return
    someone = rnd.choice([x for x in r.people if x.values.get("benefit") in BENEFITS])
    stranger = f"ZX{rnd.randint(0, 99999):05d}"
    r.typed_ids.add(stranger)
    base = ["enrol", r.name, "--unit-id", stranger]
    sets: list[str] = []
    for k, v in someone.values.items():
        sets += ["--set", f"{k}={v}"]
    attack = rnd.choice(
        [
            "slash-date",
            "bad-date",
            "word-date",
            "future",
            "before-registration",
            "missing-field",
            "unknown-field",
            "note-date",
            "event-date",
            "as-of",
            "followup-as-of",
            "case-slip",
            "outside-levels",
        ]
    )
    future = day + timedelta(days=rnd.randint(1, 400))
    if attack == "slash-date":
        r.refused(*base, *sets, "--date", day.strftime("%d/%m/%Y"), at=day, needle="YYYY-MM-DD")
    elif attack == "bad-date":
        r.refused(*base, *sets, "--date", f"{day.year}-13-45", at=day)
    elif attack == "word-date":
        r.refused(*base, *sets, "--date", "yesterday", at=day)
    elif attack == "future":
        r.refused(*base, *sets, "--date", future.isoformat(), at=day, needle="future")
    elif attack == "before-registration":
        early = r.registered - timedelta(days=rnd.randint(1, 300))
        r.refused(*base, *sets, "--date", early.isoformat(), at=day, needle="--backdate")
    elif attack == "missing-field":
        r.refused(*base, at=day)
    elif attack == "unknown-field":
        r.refused(*base, *sets, "--set", "shoe_size=9", at=day)
    elif attack == "note-date":
        r.refused("note", r.name, "--date", day.strftime("%-d/%-m/%Y"), "something", at=day)
    elif attack == "event-date":
        r.refused(
            "event",
            r.name,
            "--unit-id",
            someone.raw_id,
            "--type",
            "withdrawn",
            "--date",
            "yesterday",
            at=day,
        )
    elif attack == "as-of":
        r.refused("analyse", r.name, "--as-of", day.strftime("%Y/%m/%d"), at=day)
    elif attack == "followup-as-of":
        r.refused("followup", r.name, "--as-of", day.strftime("%d/%m/%Y"), at=day)
    elif attack == "case-slip":
        slipped = [*base, *_with(someone.values, "benefit", someone.values["benefit"].lower())]
        r.refused(*slipped, "--date", day.isoformat(), at=day, needle="did you mean")
    else:  # a benefit the protocol does not list: assessed and excluded, never an error
        before = r.state()
        args = [*base, *_with(someone.values, "benefit", "PIP"), "--date", day.isoformat()]
        res = r.cli(*args, "--json", at=day)
        doc = json.loads(res.output)
        if doc.get("kind") != "exclusion" or r.state()[0] != before[0] + 1:
            r.fail(
                "a referral on a benefit outside the levels was not recorded as excluded",
                res.output,
            )
        r.extra_excluded += 1


# --- the whole run --------------------------------------------------------------------


def seeded_secrets(seed: int):
    """Registration draws the pilot's secret from the operating system; here it comes from
    the seed, so that one seed always gives the same allocations and the same pilot."""
    import hashlib
    import itertools
    from unittest import mock

    drawn = itertools.count()

    def token_bytes(n: int = 32) -> bytes:
        return hashlib.sha256(f"any-pilot secret {seed}/{next(drawn)}".encode()).digest()[:n]

    return mock.patch("evalkit.keys.secrets.token_bytes", token_bytes)


def run_pilot(seed: int, folder: Path) -> Run:
    """Generate pilot ``seed`` and run it start to finish in ``folder``: every fifth on
    PostgreSQL (in a schema of its own) when EVALKIT_TEST_PG_URL is set, else on SQLite."""
    with seeded_secrets(seed), postgresql_schema(seed) as pg_url:
        return _run_pilot(seed, folder, pg_url)


@contextlib.contextmanager
def postgresql_schema(seed: int) -> Iterator[str | None]:
    if not PG_URL or seed % 5:
        yield None
        return
    from sqlalchemy import create_engine, text

    from evalkit.store import normalise_url

    schema = f"anypilot_{seed}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_url(PG_URL))
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _run_pilot(seed: int, folder: Path, pg_url: str | None) -> Run:
    r = Run(seed, folder, random.Random(seed))
    r.pg_url = pg_url
    make_protocol(r)
    make_people(r)
    make_rates(r)
    sources = [s["source"] for s in r.protocol.get("imports", [])]
    r.uk_dates = {s for s in sources if r.rnd.random() < 0.25}
    r.send_excluded = r.rnd.random() < 0.3
    never = {s for s in sources if r.rnd.random() < 0.2}
    r.ws.mkdir(parents=True, exist_ok=True)
    register(r)
    allocate_places(r)
    enrol_people(r)
    backdated_referral(r)
    events(r)
    change_the_plan(r)
    first, last = min(x.day for x in r.people), max(x.day for x in r.people)
    windows = [o["window"]["months"] for o in r.protocol["outcomes"]]
    finished = add_months(last, max(windows)) + timedelta(days=60)
    first_due = add_months(first, min(windows))
    moments = sorted(
        {
            last + timedelta(days=1),  # before any outcome is due
            first_due + timedelta(days=r.rnd.randint(0, 120)),  # part-way
            finished,  # after every window has closed
        }
    )
    for day in moments:
        import_outcomes(r, day, never)
        analyse_and_report(r, day)
        read_only_commands(r, day)
    files_and_estimate(r, finished)
    if r.protocol["reporting"]["blinded"] and r.rnd.random() < 0.5:
        why = "follow-up ended; analysis plan locked"
        r.cli("event", r.name, "--type", "unblinded", "--reason", why, at=finished)
        r.cli("status", r.name, at=finished)
    if r.template == "individual" and r.rnd.random() < 0.12:
        next_iteration(r, finished + timedelta(days=30))
    publish(r, finished + timedelta(days=400))
    return r


def backdated_referral(r: Run) -> None:
    """Now and then a paper referral from before registration, entered with its reason."""
    if r.design == "stepped_wedge" or r.rnd.random() > 0.1:
        return
    rnd = r.rnd
    template = next(x for x in r.people if x.eligible)
    person = Person(
        _raw_id(rnd, {x.raw_id for x in r.people}),
        dict(template.values),
        True,
        r.registered - timedelta(days=rnd.randint(1, 60)),
    )
    entered = r.registered + timedelta(days=rnd.randint(0, 20))
    args = ["enrol", r.name, "--unit-id", person.raw_id, "--date", person.day.isoformat()]
    for k, v in person.values.items():
        args += ["--set", f"{k}={v}"]
    why = "paper referral from the launch event"
    if r.design == "complete":  # a list design: the paper list goes in as a list
        path = _write_csv(r.folder / "data" / "paper-list.csv", [_row(r, person)])
        args = ["allocate", r.name, str(path), "--date", person.day.isoformat()]
        r.refused(*args, at=entered, needle="--backdate")
        res = r.cli(*args, "--backdate", "--reason", why, "--json", at=entered)
        person.arm, person.enrolled = json.loads(res.output)["rows"][0].get("arm"), True
    else:
        r.refused(*args, at=entered, needle="--backdate")
        res = r.cli(*args, "--backdate", "--reason", why, "--json", at=entered)
        person.arm, person.enrolled = json.loads(res.output).get("arm"), True
    r.people.append(person)
    r.backdated = True


def change_the_plan(r: Run) -> None:
    """Sometimes the plan changes: recorded with `amend`, or first tried unrecorded (then
    the registered analysis refuses and an exploratory one is labelled so)."""
    roll = r.rnd.random()
    if roll > 0.25:
        return
    day = max(x.day for x in r.people) + timedelta(days=1)
    path = r.ws / "protocols" / f"{r.name}.yaml"
    original = path.read_text(encoding="utf-8")
    changed = yaml.safe_load(original)
    o = next(o for o in changed["outcomes"] if not o.get("primary"))
    o["minimal_important_difference"] = round(o["minimal_important_difference"] * 1.5, 4)
    changed["version"] = "1.1"
    path.write_text(yaml.safe_dump(changed, sort_keys=False), encoding="utf-8")
    r.cli("check", r.name, at=day, ok=1)
    if roll < 0.08:  # not recorded: nothing registered runs on it
        r.refused("analyse", r.name, at=day, needle="amend")
        r.cli("analyse", r.name, "--exploratory", at=day, ok={0, 1})
        path.write_text(original, encoding="utf-8")
        r.cli("check", r.name, at=day)
        return
    r.cli("amend", r.name, "--reason", "MID agreed with DWP", at=day)
    r.cli("check", r.name, at=day)
    r.cli("history", r.name, "--json", at=day)
    r.protocol = changed


def files_and_estimate(r: Run, day: date) -> None:
    """Exports write what their extension says (or refuse), and `estimate` on the export
    compares the arms the way the pilot registered them."""
    folder = r.folder / "exports"
    folder.mkdir(exist_ok=True)
    xlsx, csv_path = folder / "analysis.xlsx", folder / "analysis.csv"
    r.cli("export", r.name, "--what", "analysis", "--out", str(xlsx), at=day)
    from openpyxl import load_workbook

    sheet = load_workbook(xlsx, read_only=True).worksheets[0]
    randomised = sum(1 for x in r.people if x.arm)
    if sum(1 for _ in sheet.iter_rows()) != randomised + 1:
        r.fail("the .xlsx export does not hold one row per randomised person")
    r.refused("export", r.name, "--out", str(folder / "analysis.txt"), at=day, needle=".csv")
    if (folder / "analysis.txt").exists():
        r.fail("a refused export left a file behind")
    r.cli("export", r.name, "--what", "analysis", "--out", str(csv_path), at=day)
    primary = next(o["name"] for o in r.protocol["outcomes"] if o.get("primary"))
    args = ["estimate", str(csv_path), "--outcome", primary, "--treatment", "arm"]
    res = r.cli(*args, at=day, ok={0, 1})
    plain = len(r.arms) == 2 and not r.protocol["reporting"]["blinded"]
    if res.exit_code == 0 and plain and f"compared with {r.arms[0]}" not in res.output:
        r.fail("estimate on the pilot's own export did not compare with its first arm", res.output)
    missing = r.folder / "no-such-folder" / "evalkit.db"
    r.refused("--store", f"sqlite:///{missing}", "status", r.name, at=day)
    if missing.parent.exists():
        r.fail("a store URL in a missing folder created the folder")


def next_iteration(r: Run, day: date) -> None:
    """The pilot adapted and run again (init --from), then learned across (learn)."""
    name = f"{r.name}-2"
    r.cli("init", name, "--from", r.name, at=day)
    path = r.ws / "protocols" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["start_date"] = day + timedelta(days=7)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    r2 = Run(r.seed, r.folder / "iteration-2", random.Random(f"{r.seed}/2"))
    r2.folder.mkdir()
    (r2.folder / "ws").symlink_to(r.ws)
    r2.name, r2.template, r2.protocol, r2.registered = name, r.template, data, day
    r2.typed_ids = r.typed_ids | {x.raw_id for x in r.people}
    r2.pg_url = r.pg_url
    make_people(r2)
    make_rates(r2)
    r2.cli("register", name, at=day)
    enrol_people(r2)
    windows = [o["window"]["months"] for o in data["outcomes"]]
    done = add_months(max(x.day for x in r2.people), max(windows)) + timedelta(days=60)
    import_outcomes(r2, done, set())
    analyse_and_report(r2, done)
    res = r2.cli("learn", name, at=done, ok={0, 1})
    if res.exit_code == 0 and not (r.ws / "analyses" / name / "learning.json").exists():
        r2.fail("learn wrote no learning.json")
    res = r2.cli("report", "--all", at=done, ok={0, 1})
    if res.exit_code == 1 and any((r.ws / "analyses").glob("*/results.json")):
        r2.fail("report --all refused although pilots have been analysed", res.output)


def publish(r: Run, day: date) -> None:
    """The folder for the website: the pages and a results file, nothing with a small
    count, no identifier."""
    site = r.folder / "site"
    if not any((r.ws / "analyses").glob("*/results.json")):
        r.cli("publish", str(site), at=day, ok=1)
        return
    r.cli("publish", str(site), at=day)
    names = {p.name for p in site.rglob("*") if p.is_file()}
    if names - {"index.html", "summary.html", "technical.html", "results.published.json"}:
        r.fail(f"publish wrote more than the pages and results: {sorted(names)}")
    store = Store.open(r.store_url)
    try:
        pseudonyms = {
            e.unit
            for pilot in store.pilot_ids()
            for e in store.log_entries(pilot)
            if e.level == "participant" and e.unit
        }
    finally:
        store.close()
    raw = r.typed_ids | {x.raw_id for x in r.people}
    for f in site.rglob("*"):
        if f.is_file():
            text = f.read_text(encoding="utf-8")
            if any(token in text for token in pseudonyms | raw):
                r.fail(f"an identifier or pseudonym reached the published {f.name}")
