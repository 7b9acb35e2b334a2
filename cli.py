"""The evalkit command line: parse, call evalkit, print. No logic of its own.

Exit codes: 0 success, 1 a problem the user can fix (one clear message, no traceback),
2 a usage error (click's own).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from evalkit.errors import BatchRejected, UserError

TEMPLATES = {
    "individual": "hackney-keyworker.yaml",
    "place": "hackney-estates.yaml",
    "stepped-wedge": "hackney-front-door.yaml",
}


@dataclass
class App:
    """What every command shares: where the workspace is and how to reach the store."""

    workspace_opt: Path | None
    store_url: str | None
    _store: Any = field(default=None, repr=False)

    @property
    def workspace(self):
        from evalkit.workspace import Workspace

        return Workspace.find(Path.cwd(), self.workspace_opt)

    def store(self):
        if self._store is None:
            from evalkit.store import Store, default_url

            self._store = Store.open(self.store_url or default_url(self.workspace.root))
        return self._store

    def keyring(self):
        from evalkit.keys import KeyRing, default_key_dir

        ring = KeyRing(default_key_dir())
        ring.ensure_outside(self.workspace.root)
        return ring

    def protocol_path(self, arg: str) -> Path:
        """A path to a protocol file, or a pilot name meaning protocols/NAME.yaml."""
        p = Path(arg)
        if p.suffix in {".yaml", ".yml"} or p.exists():
            return p
        return self.workspace.protocol_path(arg)


def _user() -> str:
    return os.environ.get("EVALKIT_USER") or getpass.getuser()


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _write_or_print(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}")


def _fail(lines: list[str]) -> None:
    for line in lines:
        click.echo(line, err=True)
    sys.exit(1)


class EvalkitGroup(click.Group):
    """Turns the errors a user can act on into one message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from evalkit.protocol_file import ProtocolFileError

        try:
            return super().invoke(ctx)
        except BatchRejected as exc:
            _fail(
                [f"error: {exc.message}"]
                + [f"  {exc.file}: {p}" for p in exc.problems]
                + [f"  hint: {exc.hint}"]
            )
        except UserError as exc:
            _fail([f"error: {exc.message}"] + ([f"  hint: {exc.hint}"] if exc.hint else []))
        except ProtocolFileError as exc:
            n = len(exc.issues)
            _fail([str(i) for i in exc.issues] + [f"{n} problem{'s' if n > 1 else ''} found"])
        except SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            _fail(
                [
                    f"error: the store could not complete the request: {first}",
                    "  hint: nothing was written; check the store URL and try again",
                ]
            )


@click.group(cls=EvalkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--workspace",
    type=click.Path(path_type=Path, file_okay=False),
    help="Workspace folder (default: the nearest folder upwards with protocols/).",
)
@click.option(
    "--store",
    "store_url",
    envvar="EVALKIT_DATABASE_URL",
    metavar="URL",
    help="Store URL, e.g. postgresql://user@host/db (default: sqlite evalkit.db "
    "in the workspace; also EVALKIT_DATABASE_URL).",
)
@click.version_option(package_name="evalkit")
@click.pass_context
def cli(ctx: click.Context, workspace: Path | None, store_url: str | None) -> None:
    """evalkit: pre-registered randomised pilots of public services.

    Write a protocol (init), check it (validate), freeze it (register), record every
    change (amend), and confirm you are working to the registered plan (check).
    """
    ctx.obj = App(workspace, store_url)


pass_app = click.make_pass_decorator(App)


@cli.command()
@click.argument("name")
@click.option(
    "--template",
    type=click.Choice(sorted(TEMPLATES)),
    default="individual",
    show_default=True,
    help="Which flagship protocol to start from.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing protocol file.")
@click.option(
    "--from",
    "pilot",
    default=None,
    metavar="PILOT",
    help="Start from a registered pilot's protocol as its next iteration (iteration_of).",
)
@pass_app
def init(app: App, name: str, template: str, force: bool, pilot: str | None) -> None:
    """Write a commented, valid protocol to protocols/NAME.yaml.

    Example: evalkit init hackney-keyworker --template individual
    Example: evalkit init hackney-keyworker-2 --from hackney-keyworker
    """
    from evalkit.learn import start_iteration
    from evalkit.templates import write_template

    if pilot is not None:
        path = start_iteration(app.store(), app.workspace.root, name, pilot, force)
        click.echo(f"wrote {path} (iteration_of: {pilot}, version 1.0)")
    else:
        path = write_template(app.workspace.root, name, TEMPLATES[template], force)
        click.echo(f"wrote {path}")
    click.echo(f"next: edit it, then 'evalkit validate {name}' and 'evalkit register {name}'")


@cli.command()
@click.argument("protocol")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def validate(app: App, protocol: str, as_json: bool) -> None:
    """Check a protocol file and list every problem as file:line:column.

    PROTOCOL is a path or a pilot name (protocols/NAME.yaml).
    Example: evalkit validate protocols/hackney-keyworker.yaml
    """
    from evalkit.protocol_file import ProtocolFileError, load_protocol

    path = app.protocol_path(protocol)
    try:
        p, located = load_protocol(path)
    except ProtocolFileError as exc:
        if not as_json:
            raise
        _emit({"file": str(path), "valid": False, "problems": [i.__dict__ for i in exc.issues]})
        sys.exit(1)
    from evalkit.canonical import protocol_hash

    summary = {
        "file": str(path),
        "valid": True,
        "pilot": p.id,
        "version": p.version,
        "design": p.design.method,
        "arms": [a.name for a in p.arms],
        "primary_outcome": p.primary.name,
        "sha256": protocol_hash(located.data),
    }
    from evalkit.power import power_warnings

    summary["warnings"] = power_warnings(p)
    if as_json:
        _emit(summary)
        return
    click.echo(f"{path}: valid")
    click.echo(
        f"  pilot {p.id} version {p.version}: {p.design.method} design, "
        f"{len(p.arms)} arms ({', '.join(summary['arms'])}), primary outcome "
        f"{p.primary.name}"
    )
    click.echo(f"  sha256 {summary['sha256']}")
    for w in summary["warnings"]:
        click.echo(f"  warning: {w}")


@cli.command()
@click.argument("protocol")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def power(app: App, protocol: str, as_json: bool) -> None:
    """Power, minimum detectable effect and sample size needed for the registered design.

    Uses the protocol's sample-size assumptions and the primary outcome's minimal important
    difference; prints the formula and every assumption in words. PROTOCOL is a path or a
    pilot name. Example: evalkit power hackney-estates --json
    """
    from evalkit.power import format_power, power_for_protocol
    from evalkit.protocol_file import load_protocol

    p, _ = load_protocol(app.protocol_path(protocol))
    result = power_for_protocol(p)
    if as_json:
        _emit(result)
        return
    for line in format_power(result):
        click.echo(line)


@cli.command()
@click.argument("protocol")
@click.option("--sims", default=1000, show_default=True, help="Simulated pilots per design.")
@click.option(
    "--alternative",
    "alternatives",
    multiple=True,
    metavar="KEY=VALUE[,KEY=VALUE]",
    help="A design to compare (repeatable): places, units, design, se, icc, effect, rate, "
    "sd, cv, r_squared, place_r2, alpha, periods. E.g. places=24 or units=1200,places=24.",
)
@click.option("--seed", default=20270901, show_default=True, help="Seed of the simulation.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Processes (default: all cores)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the diagnosis as JSON.")
@pass_app
def diagnose(
    app: App,
    protocol: str,
    sims: int,
    alternatives: tuple[str, ...],
    seed: int,
    workers: int | None,
    as_json: bool,
) -> None:
    """Simulate pilots from the protocol's assumptions, randomise and analyse each as
    registered, and report bias, RMSE, power, coverage and type I error.

    The registered design comes first, then each --alternative, on the same random draws.
    Example: evalkit diagnose hackney-estates --sims 1000 --alternative se=cr1
    """
    from evalkit import diagnose as dg
    from evalkit.protocol_file import load_protocol

    p, _ = load_protocol(app.protocol_path(protocol))
    if seed < 0:
        raise UserError(f"--seed {seed} is negative", "use a seed of 0 or more")
    if not sys.stderr.isatty():
        result = dg.diagnose(p, alternatives, sims, seed, workers)
    else:
        with click.progressbar(length=sims, label="simulating", file=sys.stderr) as bar:
            result = dg.diagnose(p, alternatives, sims, seed, workers, bar.update)
    if as_json:
        _emit(result)
        return
    click.echo(dg.table(result), nl=False)


@cli.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write to this file instead of standard output.",
)
def schema(out: Path | None) -> None:
    """Print the JSON Schema of protocol files (for editors).

    Example: evalkit schema --out protocols/schema.json
    """
    from evalkit.protocol import schema as protocol_schema

    text = json.dumps(protocol_schema(), indent=2, ensure_ascii=False) + "\n"
    _write_or_print(text, out)


@cli.command()
@click.argument("protocol")
@click.option("--by", default=None, help="Who registers (default: EVALKIT_USER or login).")
@click.option("--json", "as_json", is_flag=True, help="Print the receipt as JSON.")
@pass_app
def register(app: App, protocol: str, by: str | None, as_json: bool) -> None:
    """Freeze a protocol: store its canonical form and SHA-256, print a receipt.

    Registering identical content again changes nothing and prints the same receipt.
    The pilot's secret is written to a key file outside the workspace; the first
    registration prints where, to be backed up (the key itself is never printed).
    Example: evalkit register protocols/hackney-keyworker.yaml
    """
    from evalkit.clock import utc_now
    from evalkit.learn import check_link
    from evalkit.protocol_file import load_protocol
    from evalkit.registration import KEY_BACKUP, key_file, start_date_warning
    from evalkit.registration import register as do_register

    check_link(app.store(), app.protocol_path(protocol))
    keys = app.keyring()
    receipt, created = do_register(
        app.store(), keys, app.protocol_path(protocol), by or _user(), utc_now()
    )
    key = key_file(app.store(), keys, receipt.pilot) if created else None
    if as_json:
        _emit(
            {
                **receipt.as_dict(),
                "new": created,
                "key_file": str(key) if key else None,
                "key_backup": KEY_BACKUP if key else None,
            }
        )
        return
    click.echo(receipt.text())
    if created:
        click.echo(
            "Registered. Publish or email this receipt so the registration can be "
            "checked independently."
        )
        click.echo(f"secret key: {key}")
        click.echo(f"warning: {KEY_BACKUP}")
        p, _ = load_protocol(app.protocol_path(protocol))
        late = start_date_warning(p, receipt.registered_at)
        if late:
            click.echo(f"warning: {late}")
    else:
        click.echo("Already registered with identical content; nothing changed.")


@cli.command()
@click.argument("protocol")
@click.option("--reason", required=True, help="Why the plan changed (kept with the version).")
@click.option("--by", default=None, help="Who amends (default: EVALKIT_USER or login).")
@click.option("--json", "as_json", is_flag=True, help="Print the receipt as JSON.")
@pass_app
def amend(app: App, protocol: str, reason: str, by: str | None, as_json: bool) -> None:
    """Register a changed protocol as a new version, with its reason and diff.

    Example: evalkit amend protocols/hackney-keyworker.yaml --reason "GP referrals added"
    """
    from evalkit.clock import utc_now
    from evalkit.learn import check_link
    from evalkit.registration import amend as do_amend

    check_link(app.store(), app.protocol_path(protocol))
    receipt, s = do_amend(
        app.store(), app.protocol_path(protocol), reason, by or _user(), utc_now()
    )
    if as_json:
        _emit(
            {
                **receipt.as_dict(),
                "changes": [c.as_dict() for c in s.changes],
                "new": s.status != "current",
            }
        )
        return
    if s.status == "current":
        click.echo(
            f"{receipt.pilot}: the file is already registered version "
            f"{receipt.number}; nothing changed."
        )
        return
    click.echo(receipt.text())
    click.echo("Changes:")
    for c in s.changes:
        click.echo(f"  {c}")
    if s.latest is not None and s.latest.protocol_version == receipt.protocol_version:
        click.echo(
            f"note: the protocol's 'version' is still {receipt.protocol_version!r}; "
            "consider raising it with the next amendment."
        )


@cli.command()
@click.argument("pilot")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def check(app: App, pilot: str, as_json: bool) -> None:
    """Exit 0 if protocols/PILOT.yaml is the current registered version, else 1 naming
    the changed fields.

    Example: evalkit check hackney-keyworker
    """
    from evalkit.registration import require_registered

    rp = require_registered(
        app.store(), app.workspace.protocol_path(pilot), pilot, exploratory=as_json
    )
    if as_json:
        _emit(rp.standing.as_dict())
        sys.exit(0 if rp.standing.ok else 1)
    click.echo(rp.standing.message())


@cli.command()
@click.argument("pilot")
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON.")
@pass_app
def history(app: App, pilot: str, as_json: bool) -> None:
    """List the registered versions of a pilot with reasons and diffs.

    Example: evalkit history hackney-keyworker
    """
    from evalkit.canonical import Change
    from evalkit.registration import history as pilot_history

    rows = pilot_history(app.store(), pilot)
    if as_json:
        _emit(rows)
        return
    for r in rows:
        kind = "registered" if r["number"] == 1 else "amended"
        click.echo(
            f"version {r['number']} ({r['protocol_version']}) {kind} "
            f"{r['registered_at']} by {r['registered_by']}"
        )
        click.echo(f"  sha256 {r['hash']}")
        if r["reason"]:
            click.echo(f"  reason: {r['reason']}")
        for c in r["changes"]:
            click.echo(f"  {Change.from_dict(c)}")


def _fmt(x: float | None, spec: str) -> str:
    """A number for the terminal, or a dash where results.json holds none."""
    return "—" if x is None else format(x, spec)


def _today() -> str:
    from datetime import date

    return date.today().isoformat()


def _date(value: str | None, option: str) -> str:
    """The date typed for ``option`` as YYYY-MM-DD (today when not given); any other form
    is refused here, where it enters, with both readings of an ambiguous date."""
    if value is None:
        return _today()
    from evalkit.dates import user_date

    return user_date(value, option).isoformat()


def _backdate(backdate: bool, reason: str | None) -> str | None:
    if backdate and not (reason and reason.strip()):
        raise UserError(
            "--backdate needs a reason",
            '--backdate --reason "paper referrals from the launch event entered late"',
        )
    if reason and not backdate:
        raise UserError("--reason is only for --backdate", "add --backdate, or leave out --reason")
    return reason.strip() if backdate and reason else None


def _pilot(app: App, pilot: str):
    from evalkit.enrolment import open_pilot

    return open_pilot(app.store(), app.keyring(), app.workspace.protocol_path(pilot), pilot)


def _entry_line(pilot, e, existing: bool = False) -> str:
    p = pilot.protocol
    labels = {a.name: a.label for a in p.arms}
    who = f"{e.level} {e.unit}"
    if e.kind == "exclusion":
        text = f"{who}: not eligible ({'; '.join(e.detail['reasons'])}); recorded as excluded"
    elif e.arm is None and "crossover_period" in e.detail:
        text = f"{who}: crosses over at the start of period {e.detail['crossover_period']}"
    else:
        probability = (e.probabilities or {}).get(e.arm)
        chance = f", chance {probability:.3g}" if probability is not None else ""
        text = f"{who}: {e.arm} ({labels.get(e.arm, e.arm)}){chance}"
    return f"{text} [already in the log, entry {e.seq}; nothing drawn]" if existing else text


def _head_line(head) -> str:
    return f"log head: entry {head[0]}, sha256 {head[1]}"


def _entry_json(e) -> dict:
    return {k: v for k, v in e.__dict__.items() if k not in {"baseline", "prev_hash"}}


def _differences_line(e, differences, row=None) -> str:
    """The warning for someone enrolled again with values that differ from the log's."""
    where = f"row {row}: " if row is not None else ""
    return (
        f"warning: {where}the values given differ from those recorded in log entry {e.seq} "
        "(the existing record stands; nothing was changed): "
        + "; ".join(str(d) for d in differences)
    )


@cli.command()
@click.argument("pilot")
@click.option(
    "--unit-id",
    required=True,
    help="The referral's identifier (pseudonymised; never stored or shown).",
)
@click.option(
    "--set", "values", multiple=True, metavar="FIELD=VALUE", help="A baseline value; repeat."
)
@click.option(
    "--date",
    "on",
    default=None,
    metavar="YYYY-MM-DD",
    help="Date of referral (default today); not in the future, nor before registration "
    "(unless --backdate).",
)
@click.option(
    "--backdate",
    is_flag=True,
    help="Allow a referral date before the pilot's registration (a paper list entered "
    "late); needs --reason, kept in the log and shown in the reports.",
)
@click.option("--reason", default=None, help="Why the referral is backdated (with --backdate).")
@click.option("--ref", default=None, help="Your own reference, where the protocol allows one.")
@click.option("--by", default=None, help="Who allocates (default: EVALKIT_USER or login).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def enrol(
    app: App,
    pilot: str,
    unit_id: str,
    values: tuple[str, ...],
    on: str | None,
    backdate: bool,
    reason: str | None,
    ref: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    """Enrol one referral and print its arm (or why it is not eligible).

    Enrolling the same person again prints the existing allocation; it never draws again.
    Example: evalkit enrol hackney-keyworker --unit-id QQ123456C --set age=44
    --set benefit=ESA --set months_unemployed=30 --set referral_route=GP
    --set mh_condition=true
    """
    from evalkit.clock import utc_now
    from evalkit.concealment import seen_by_enroller
    from evalkit.enrolment import enrol as do_enrol

    raw = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--set {item!r} is not FIELD=VALUE", "e.g. --set age=44")
        raw[name.strip()] = value
    day, why = _date(on, "--date"), _backdate(backdate, reason)
    p = _pilot(app, pilot)
    out = do_enrol(app.store(), p, unit_id, raw, utc_now(), by or _user(), day, ref, why)
    out = seen_by_enroller(out, p.protocol)
    e, existing = (out.existing[0], True) if out.existing else (out.entries[0], False)
    differences = out.differences.get(e.unit or "", [])
    if as_json:
        _emit(
            {
                **_entry_json(e),
                "already_enrolled": existing,
                "differences": [d.as_dict() for d in differences],
                "head": out.head[1],
                "head_entry": out.head[0],
            }
        )
        return
    click.echo(f"{pilot}: " + _entry_line(p, e, existing))
    if differences:
        click.echo(_differences_line(e, differences))
    click.echo(_head_line(out.head))


@cli.command()
@click.argument("pilot")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write each row's result (row, pseudonym or place, status, arm) as CSV.",
)
@click.option("--id-column", default="id", show_default=True, help="Identifier column.")
@click.option(
    "--date",
    "on",
    default=None,
    metavar="YYYY-MM-DD",
    help="Date of referral of every row (default today); not in the future, nor before "
    "registration (unless --backdate).",
)
@click.option(
    "--backdate",
    is_flag=True,
    help="Allow a date before the pilot's registration (a paper list entered late); "
    "needs --reason, kept in the log and shown in the reports.",
)
@click.option("--reason", default=None, help="Why the list is backdated (with --backdate).")
@click.option("--by", default=None, help="Who allocates (default: EVALKIT_USER or login).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@pass_app
def allocate(
    app: App,
    pilot: str,
    file: Path,
    out: Path | None,
    id_column: str,
    on: str | None,
    backdate: bool,
    reason: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    """Allocate a whole list (CSV or Excel) at once: all rows or none.

    For a place design the first list is the places (with the place fields); later lists
    are people joining allocated places.
    Example: evalkit allocate hackney-estates places.csv --out allocation.csv
    """
    from evalkit.clock import utc_now
    from evalkit.concealment import seen_by_enroller
    from evalkit.enrolment import allocate_file, write_results

    day, why = _date(on, "--date"), _backdate(backdate, reason)
    p = _pilot(app, pilot)
    res = allocate_file(app.store(), p, file, utc_now(), by or _user(), day, id_column, why)
    res = seen_by_enroller(res, p.protocol)
    if out is not None:
        write_results(out, res)
    if as_json:
        _emit(
            {
                "rows": [
                    {
                        "row": row,
                        **_entry_json(e),
                        "already_in_log": x,
                        "differences": [
                            d.as_dict() for d in (res.differences.get(e.unit) if x else None) or []
                        ],
                    }
                    for row, e, x in res.rows
                ],
                "head": res.head[1],
                "head_entry": res.head[0],
            }
        )
        return
    arms: dict[str, int] = {}
    for e in res.entries:
        key = e.arm or ("excluded" if e.kind == "exclusion" else "crossover order drawn")
        arms[key] = arms.get(key, 0) + 1
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(arms.items()))
    click.echo(f"{pilot}: {len(res.entries)} new entries ({summary})")
    if res.existing:
        click.echo(f"  {len(res.existing)} rows were already in the log and are unchanged")
    for row, e, existed in res.rows:
        if existed and res.differences.get(e.unit):
            click.echo(_differences_line(e, res.differences[e.unit], row))
    if out is not None:
        click.echo(f"wrote {out}")
    click.echo(_head_line(res.head))


@cli.group()
def places() -> None:
    """Choose the places of a place-based pilot by a pre-specified rule."""


@places.command("rank")
@click.argument("areas", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--by", "by_fields", required=True, metavar="FIELD,...", help="Indicators to rank on."
)
@click.option(
    "--weights", default=None, metavar="W,...", help="One weight per --by field (default equal)."
)
@click.option(
    "--lower-is-more",
    default=None,
    metavar="FIELD,...",
    help="--by fields where a lower value means more need or spend.",
)
@click.option("--choose", required=True, type=int, help="How many places to choose.")
@click.option("--id-column", default="id", show_default=True, help="The areas' id column.")
@click.option(
    "--keep",
    default=None,
    metavar="FIELD,...",
    help="Columns carried into the places file (default: the --by fields; not with --pilot).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the chosen places as CSV, and the rule beside it (NAME.selection.json).",
)
@click.option(
    "--pilot",
    default=None,
    help="A registered place pilot: write its places file and record the rule in its log.",
)
@click.option(
    "--date",
    "on",
    default=None,
    metavar="YYYY-MM-DD",
    help="Date the rule is recorded for (default today).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the ranking as JSON.")
@pass_app
def places_rank(
    app: App,
    areas: Path,
    by_fields: str,
    weights: str | None,
    lower_is_more: str | None,
    choose: int,
    id_column: str,
    keep: str | None,
    out: Path | None,
    pilot: str | None,
    on: str | None,
    as_json: bool,
) -> None:
    """Rank candidate areas (CSV or Excel) on weighted z-scores and choose the top ones.

    With --pilot the places file is exactly what `evalkit allocate PILOT` takes, and the
    rule (fields, weights, directions, the areas file's SHA-256, the chosen places) is
    recorded as a note in the pilot's log.
    Example: evalkit places rank areas.csv --by claimant_rate,mh_claimant_share,imd_score
    --weights 0.4,0.3,0.3 --choose 16 --pilot hackney-estates --out places.csv
    """
    from evalkit.clock import utc_now
    from evalkit.places import make_rule, rank_areas, report_lines

    rule = make_rule(by_fields, weights, lower_is_more, choose)
    kept = [k.strip() for k in keep.split(",") if k.strip()] if keep else None
    p = _pilot(app, pilot) if pilot else None
    res = rank_areas(
        areas,
        rule,
        id_column,
        kept,
        out,
        p,
        app.store() if p else None,
        utc_now(),
        _user(),
        _date(on, "--date"),
    )
    if as_json:
        _emit(
            {
                **res.record,
                "areas": [a.as_dict() for a in res.ranking.areas],
                "means": res.ranking.means,
                "sds": res.ranking.sds,
                "selection_file": str(res.selection_file) if res.selection_file else None,
                "log_entry": res.log_entry,
                "already_recorded": res.already_recorded,
            }
        )
        return
    for line in report_lines(res, areas):
        click.echo(line)
    if p is not None and res.head is not None:
        said = "was already recorded as" if res.already_recorded else "recorded as"
        click.echo(f"{pilot}: the selection rule {said} log entry {res.log_entry} (a note)")
        click.echo(_head_line(res.head))


@cli.command()
@click.argument("pilot")
@click.option("--unit-id", default=None, help="The person's identifier.")
@click.option(
    "--type",
    "kind",
    required=True,
    type=click.Choice(["withdrawn", "did_not_start", "started", "unblinded"]),
    help="What happened.",
)
@click.option("--reason", default="", help="Why (kept in the log).")
@click.option(
    "--date", "on", default=None, metavar="YYYY-MM-DD", help="When it happened (default today)."
)
@click.option("--by", default=None, help="Who records it.")
@pass_app
def event(
    app: App,
    pilot: str,
    unit_id: str | None,
    kind: str,
    reason: str,
    on: str | None,
    by: str | None,
) -> None:
    """Record a withdrawal, a did-not-start, a start, or unblinding as a new log entry.

    Allocations are never changed or deleted.
    Example: evalkit event hackney-keyworker --unit-id QQ123456C --type withdrawn
    --reason "moved away"
    """
    from evalkit.clock import utc_now
    from evalkit.enrolment import record_event

    day = _date(on, "--date")
    if kind == "unblinded" and not reason.strip():
        raise UserError("unblinding needs a reason", 'give --reason "analysis plan locked"')
    p = _pilot(app, pilot)
    res = record_event(app.store(), p, unit_id, kind, utc_now(), by or _user(), day, reason)
    click.echo(f"{pilot}: recorded {kind} as log entry {res.head[0]}")
    click.echo(_head_line(res.head))


@cli.command()
@click.argument("pilot")
@click.option(
    "--reveal-secret",
    is_flag=True,
    help="Replay every allocation with the pilot's secret and print the secret "
    "(only once follow-up has ended).",
)
@click.option(
    "--secret", "secret_hex", default=None, metavar="HEX", help="Replay with a revealed secret."
)
@click.option(
    "--head",
    "published_head",
    default=None,
    metavar="SHA256",
    help="A head hash published earlier: check the log still contains it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def verify(
    app: App,
    pilot: str,
    reveal_secret: bool,
    secret_hex: str | None,
    published_head: str | None,
    as_json: bool,
) -> None:
    """Check the allocation log's hash chain; exit 1 naming the first bad entry.

    With --reveal-secret or --secret, also replay every allocation from scratch.
    Example: evalkit verify hackney-keyworker --head 8c2e...
    """
    from evalkit.enrolment import verify as do_verify

    store = app.store()
    secret = None
    if secret_hex is not None:
        try:
            secret = bytes.fromhex(secret_hex)
        except ValueError:
            raise UserError("--secret must be hexadecimal") from None
    elif reveal_secret:
        record = store.pilot(pilot)
        if record is None:
            raise UserError(f"pilot {pilot!r} is not registered")
        secret = app.keyring().load(record.id, record.uid, record.secret_commitment)
    v = do_verify(store, pilot, secret, published_head)
    if as_json:
        _emit(
            {
                "ok": v.ok,
                "entries": v.chain.entries,
                "head": v.chain.head,
                "problem": v.chain.problem or v.replay_problem or None,
                "bad_entry": v.chain.bad_seq or v.bad_seq,
                "replayed": v.replayed if secret else None,
                "published_head_found": v.published_head_found,
                "date_problems": v.date_problems,
                "secret": secret.hex() if reveal_secret and v.ok and secret else None,
            }
        )
        sys.exit(0 if v.ok else 1)
    if not v.chain.ok:
        _fail(
            [
                f"{pilot}: the allocation log FAILS verification: {v.chain.problem}",
                f"  first bad entry: {v.chain.bad_seq}",
            ]
        )
    if v.published_head_found is False:
        _fail(
            [
                f"{pilot}: the published head {published_head} is not in the log: entries "
                "it covered were changed or removed"
            ]
        )
    if v.replay_problem:
        _fail([f"{pilot}: the chain is intact but replay FAILS: {v.replay_problem}"])
    click.echo(
        f"{pilot}: the allocation log verifies: {v.chain.entries} entries, head {v.chain.head}"
    )
    for problem in v.date_problems:
        click.echo(f"  warning: {problem}")
    if published_head:
        click.echo("  the published head is in the log")
    if secret is not None:
        click.echo(f"  replayed {v.replayed} allocations from the secret: every one matches")
    if reveal_secret and secret is not None:
        click.echo(f"  secret: {secret.hex()}")
        click.echo(f"  anyone can now check: evalkit verify {pilot} --secret HEX")


@cli.command()
@click.argument("pilot")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_app
def status(app: App, pilot: str, as_json: bool) -> None:
    """Show a pilot at a glance: registration, allocations by arm, exclusions, events and
    the log's head hash (to publish).

    Example: evalkit status hackney-keyworker
    """
    from evalkit.status import pilot_status

    s = pilot_status(app.store(), app.keyring(), app.workspace.protocol_path(pilot), pilot)
    if as_json:
        _emit(s)
        return
    state = "matches" if s["protocol_file_current"] else "DIFFERS from"
    click.echo(f"{pilot}: {s['title']}")
    click.echo(
        f"  registered version {s['registered_version']} of {s['versions']}; "
        f"the protocol file {state} it"
    )
    for level, counts in s["allocated"].items():
        if counts:
            click.echo(f"  {level}s allocated: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if s["blinded"]:
        click.echo("  arms are shown under neutral labels until unblinding is recorded")
    for problem in s["date_problems"]:
        click.echo(f"  warning: {problem}")
    if s["excluded"]:
        click.echo("  excluded: " + "; ".join(f"{k}: {v}" for k, v in s["excluded"].items()))
    if s["events"]:
        click.echo("  events: " + ", ".join(f"{k} {v}" for k, v in s["events"].items()))
    months = s["recruitment_by_month"]
    if months:
        total = sum(months.values())
        click.echo(
            f"  recruited {total} of {s['target_units']} by month: "
            + ", ".join(f"{m} {n}" for m, n in months.items())
        )
    c = s["consort"]
    click.echo(
        f"  CONSORT: assessed {c['assessed']}, excluded {c['excluded']['total']}, "
        f"randomised {c['randomised']}"
    )
    for a in c["arms"]:
        click.echo(
            f"    {a['arm']}: randomised {a['randomised']}, withdrew {a['withdrawn']}, "
            f"analysed {a['analysed']}, lost {a['lost_to_follow_up']}, not yet due "
            f"{a['not_yet_due']} ({c['primary_outcome']})"
        )
    for p in s["progression"]:
        value = "-" if p["value"] is None else f"{p['value']:.3g}"
        click.echo(
            f"  progression: {p['label']}: {value} -> {p['rating'].upper()} "
            f"({p['words']}; green >= {p['green']:g}, amber >= {p['amber']:g})"
        )
    if s["followup"]:
        click.echo("  follow-up: " + ", ".join(f"{k} {v}" for k, v in s["followup"].items()))
    for n in s["notes"]:
        click.echo(f"  note {n['date']}: {n['text']}")
    click.echo(f"  log head: entry {s['log_entries']}, sha256 {s['log_head']}")


def _date_format_option(ctx: click.Context, param: click.Parameter, value: str | None):
    """A --date-format that could be read more than one way is a usage error."""
    if value is None:
        return None
    from evalkit.outcome_import import check_date_format

    try:
        return check_date_format(value)
    except UserError as exc:
        message = exc.message.removeprefix("--date-format ")
        raise click.BadParameter(f"{message} (hint: {exc.hint})") from None


@cli.group()
def outcomes() -> None:
    """Outcome data from the agencies (DWP, council, NHS, provider, survey)."""


@outcomes.command("import")
@click.argument("pilot")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--source",
    required=True,
    type=click.Choice(["DWP", "council", "NHS", "provider", "survey"]),
    help="The agency the file comes from.",
)
@click.option("--id-column", default=None, help="Identifier column (default: the protocol's).")
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="OUTCOME:FIELD=COLUMN",
    help="Column mapping on top of the protocol's (FIELD: value, date, start, end).",
)
@click.option(
    "--as-of",
    default=None,
    metavar="YYYY-MM-DD",
    help="Extract date: data complete up to (default today).",
)
@click.option(
    "--date-format",
    default=None,
    metavar="FORMAT",
    callback=_date_format_option,
    help="How the file writes its dates, e.g. %d/%m/%Y for UK dates (default YYYY-MM-DD; "
    "Excel date cells are read as dates).",
)
@click.option("--correct", is_flag=True, help="Accept changed values as corrections.")
@click.option("--reason", default=None, help="Why the values are corrected (with --correct).")
@click.option("--by", default=None, help="Who imports (default: EVALKIT_USER or login).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def outcomes_import(
    app: App,
    pilot: str,
    file: Path,
    source: str,
    id_column: str | None,
    mapping: tuple[str, ...],
    as_of: str | None,
    date_format: str | None,
    correct: bool,
    reason: str | None,
    by: str | None,
    as_json: bool,
) -> None:
    """Import an agency's outcome file (CSV or Excel): every row checked, then all or none.

    Importing the same file again changes nothing; a changed value is refused unless
    given with --correct --reason, and then kept as a new version beside the old one.
    Text dates are read as YYYY-MM-DD, or in the form --date-format gives (%d/%m/%Y for
    UK dates); the order of day and month is never guessed.
    Example: evalkit outcomes import hackney-keyworker dwp-2028-04.csv --source DWP
    --as-of 2028-04-01
    """
    from datetime import date

    from evalkit.clock import utc_now
    from evalkit.outcome_import import import_outcomes

    extract = date.fromisoformat(_date(as_of, "--as-of"))
    today = date.fromisoformat(_today())
    p = _pilot(app, pilot)
    res = import_outcomes(
        app.store(),
        p,
        file,
        source,
        id_column,
        list(mapping),
        correct,
        reason,
        extract,
        today,
        utc_now(),
        by or _user(),
        date_format,
    )
    if as_json:
        _emit(res.__dict__)
        return
    if res.import_id is None:
        click.echo(
            f"{pilot}: {file} brings nothing new ({res.unchanged} records already "
            "stored, unchanged); nothing was written"
        )
    else:
        click.echo(
            f"{pilot}: imported {file} from {source} as import {res.import_id}: "
            f"{res.new} new records, {res.corrected} corrections, {res.unchanged} unchanged"
            + (f", {res.ended} spells that were open have ended" if res.ended else "")
        )
    if res.skipped_not_randomised:
        n = res.skipped_not_randomised
        click.echo(
            f"  skipped {n} row{'s' if n != 1 else ''} of people who were assessed but "
            "excluded before randomisation (they have no outcomes in the pilot)"
        )


@cli.command()
@click.argument("pilot")
@click.option(
    "--what",
    type=click.Choice(["analysis", "allocations", "outcomes"]),
    default="analysis",
    show_default=True,
    help="Which table.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File to write: .csv, .xlsx or .parquet (needs pyarrow); default: CSV on screen.",
)
@click.option(
    "--restricted",
    is_flag=True,
    help="With --what allocations: every allocation detail, including block sizes, "
    "positions in blocks and minimisation totals, which predict later allocations. For "
    "the trial statistician; never give it to anyone who enrols or allocates.",
)
@pass_app
def export(app: App, pilot: str, what: str, out: Path | None, restricted: bool) -> None:
    """Write a pseudonymised table: the analysis data set (one row per randomised
    person), the allocation log, or every outcome record with its versions. CSV on the
    screen; with --out, the format the file's extension names (.csv, .xlsx, .parquet).

    Until unblinding is recorded the allocation log leaves out what could predict a
    later allocation (block sizes, positions, minimisation totals); --restricted keeps it.
    Example: evalkit export hackney-keyworker --what analysis --out analysis.xlsx
    """
    from datetime import date

    from evalkit.exports import export_table, to_csv, write_table

    table = export_table(
        app.store(),
        app.keyring(),
        app.workspace.protocol_path(pilot),
        pilot,
        what,
        date.fromisoformat(_today()),
        restricted,
    )
    if out is None:
        click.echo(to_csv(table), nl=False)
        return
    write_table(table, out)
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("pilot")
@click.option("--within", default=30, show_default=True, help="Days ahead to include.")
@click.option(
    "--as-of", default=None, metavar="YYYY-MM-DD", help="Date to list for (default today)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@pass_app
def followup(app: App, pilot: str, within: int, as_of: str | None, as_json: bool) -> None:
    """List follow-up measurements due now, due soon or overdue, person by person.

    Example: evalkit followup hackney-keyworker --within 14
    """
    from datetime import date

    from evalkit.registration import require_registered
    from evalkit.tracking import followup as due_list
    from evalkit.tracking import track

    today = date.fromisoformat(_date(as_of, "--as-of"))
    rp = require_registered(
        app.store(), app.workspace.protocol_path(pilot), pilot, exploratory=True
    )
    items = due_list(
        rp.protocol, track(app.store(), rp.protocol, today).dataset.rows, today, within
    )
    if as_json:
        _emit(items)
        return
    if not items:
        click.echo(f"{pilot}: nothing due within {within} days and nothing overdue")
        return
    for i in items:
        ref = f" (ref {i['ref']})" if "ref" in i else ""
        click.echo(
            f"{i['state']:>9}  {i['outcome']:<24} due {i['due']} "
            f"(window {i['window_opens']} to {i['window_closes']})  {i['unit']}{ref}"
        )
    click.echo(f"{len(items)} follow-ups listed")


@cli.command()
@click.argument("pilot")
@click.argument("text")
@click.option(
    "--date", "on", default=None, metavar="YYYY-MM-DD", help="When it happened (default today)."
)
@click.option("--by", default=None, help="Who records it.")
@pass_app
def note(app: App, pilot: str, text: str, on: str | None, by: str | None) -> None:
    """Record a context event that may affect the results (it appears in the reports).

    Example: evalkit note hackney-keyworker --date 2027-10-01 "Work Programme contract ended"
    """
    from evalkit.clock import utc_now
    from evalkit.enrolment import record_event

    if not text.strip():
        raise UserError("a note needs some text", 'e.g. evalkit note PILOT "contract ended"')
    day = _date(on, "--date")
    p = _pilot(app, pilot)
    res = record_event(app.store(), p, None, "note", utc_now(), by or _user(), day, text.strip())
    click.echo(f"{pilot}: note recorded as log entry {res.head[0]}")


@cli.command()
@click.argument("data", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--outcome", required=True, help="Outcome column.")
@click.option("--treatment", required=True, help="Treatment column: 0/1 or arm names.")
@click.option("--covariates", default="", help="Comma-separated covariate columns.")
@click.option("--cluster", default=None, help="Place column (clustered standard errors).")
@click.option("--blocks", default=None, help="Block column (block fixed effects).")
@click.option(
    "--se",
    type=click.Choice(["auto", "hc2", "hc1", "cr2", "cr1"]),
    default="auto",
    show_default=True,
    help="auto: HC2 without clusters, CR2 with them.",
)
@click.option(
    "--arms",
    default=None,
    help="Comparison and treated arm names, e.g. usual,keyworker (needed for two named "
    "arms unless the file comes from 'evalkit export', which marks the comparison).",
)
@click.option("--alpha", default=0.05, show_default=True, type=float)
@click.option("--ri", "ri_draws", default=0, type=int, help="Randomisation inference draws.")
@click.option(
    "--ri-statistic", type=click.Choice(["estimate", "t"]), default="estimate", show_default=True
)
@click.option("--wild-bootstrap", "wcb_draws", default=0, type=int, help="Bootstrap draws.")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def estimate(
    data: Path,
    outcome: str,
    treatment: str,
    covariates: str,
    cluster: str | None,
    blocks: str | None,
    se: str,
    arms: str | None,
    alpha: float,
    ri_draws: int,
    ri_statistic: str,
    wcb_draws: int,
    seed: int,
    as_json: bool,
) -> None:
    """Estimate one effect from a CSV or Excel file (exploratory, not a registered analysis).

    Example: evalkit estimate data.csv --outcome y --treatment arm --covariates age,esa
    --cluster place --se cr2 --ri 10000 --wild-bootstrap 9999 --json
    """
    from evalkit.exploratory import estimate as run_estimate
    from evalkit.exploratory import read_data

    res = run_estimate(
        read_data(data),
        outcome,
        treatment,
        [c.strip() for c in covariates.split(",") if c.strip()],
        cluster,
        blocks,
        se,
        alpha,
        [a.strip() for a in arms.split(",")] if arms else None,
        ri_draws,
        ri_statistic,
        wcb_draws,
        seed,
    )
    if as_json:
        _emit(res)
        return
    level = round(100 * (1 - alpha))
    click.echo(f"{res['note']}")
    if res["comparison_from"] == "0/1 treatment":
        treated, control = (f"{treatment} = {res[k]}" for k in ("treated", "compared_with"))
        click.echo(f"treated: {treated}, compared with {control}")
    else:
        click.echo(
            f"treated: {res['treated']}, compared with {res['compared_with']} "
            f"(from {res['comparison_from']})"
        )
    click.echo(
        f"effect of {res['term']} on {outcome}: {_fmt(res['estimate'], '.4g')} "
        f"(SE {_fmt(res['std_error'], '.4g')}, {res['se_type']}, "
        f"df {_fmt(res['df'], '.4g')}), p = {_fmt(res['p_value'], '.3g')}, {level}% CI "
        f"{_fmt(res['conf_low'], '.4g')} to {_fmt(res['conf_high'], '.4g')}; n = {res['n']}"
        + (f", {res['clusters']} clusters" if res.get("clusters") else "")
    )
    if "ri_p_value" in res:
        kind = "exact, all" if res["ri_exact"] else "sampled"
        click.echo(
            f"randomisation inference ({kind} {res['ri_draws']} assignments, "
            f"statistic {res['ri_statistic']}): p = {_fmt(res['ri_p_value'], '.3g')}"
        )
    if "wcb_p_value" in res:
        click.echo(
            f"wild cluster bootstrap ({res['wcb_draws']} draws, {res['wcb_weights']} "
            f"weights): p = {_fmt(res['wcb_p_value'], '.3g')}, {level}% CI "
            f"{_fmt(res['wcb_conf_low'], '.4g')} to {_fmt(res['wcb_conf_high'], '.4g')}"
        )


@cli.command()
@click.argument("pilot")
@click.option(
    "--exploratory",
    is_flag=True,
    help="Run on a protocol file that differs from its registration; everything "
    "produced is labelled exploratory, with the changes listed.",
)
@click.option(
    "--as-of",
    default=None,
    metavar="YYYY-MM-DD",
    help="Date the analysis is for (default today; not in the future).",
)
@click.option("--json", "as_json", is_flag=True, help="Print results.json to the screen too.")
@pass_app
def analyse(app: App, pilot: str, exploratory: bool, as_of: str | None, as_json: bool) -> None:
    """Run the registered analysis plan and write analyses/PILOT/results.json.

    Example: evalkit analyse hackney-keyworker
    """
    from datetime import date

    from evalkit.results import run

    day = date.fromisoformat(_date(as_of, "--as-of"))
    if day > date.today():
        raise UserError(
            f"--as-of {day.isoformat()} is in the future",
            "an analysis can only use what is known today; leave out --as-of",
        )
    path, res = run(app.store(), app.keyring(), app.workspace.root, pilot, day, exploratory)
    if as_json:
        _emit(res)
        return
    p = res["primary"]
    e = p["effect"]
    level = round(100 * (1 - res["alpha"]))
    if res["exploratory"]:
        click.echo(
            "EXPLORATORY: the protocol differs from its registration: "
            + "; ".join(res["deviations"])
        )
    click.echo(f"{pilot}: primary outcome {p['outcome']} ({p['label']})")
    if e is None:
        click.echo(f"  not estimable: {p.get('not_estimable')}")
    else:
        click.echo(
            f"  effect {_fmt(e['estimate'], '.4g')} (SE {_fmt(e['std_error'], '.4g')}, "
            f"{e['se_type']}, df {_fmt(e['df'], '.4g')}), p = {_fmt(e['p_value'], '.3g')}, "
            f"{level}% CI {_fmt(e['conf_low'], '.4g')} to {_fmt(e['conf_high'], '.4g')}; "
            f"n = {e['n']}"
        )
        ri, wcb = p.get("randomisation_inference"), p.get("wild_cluster_bootstrap")
        for name, check in (("randomisation inference", ri), ("wild cluster bootstrap", wcb)):
            if check and check.get("p_value") is None:
                click.echo(f"  {name}: not run ({check.get('not_estimable', 'no p-value')})")
        if ri and ri.get("p_value") is not None:
            click.echo(f"  randomisation inference ({ri['design']}): p = {ri['p_value']:.3g}")
        if wcb and wcb.get("p_value") is not None:
            click.echo(
                f"  wild cluster bootstrap: p = {wcb['p_value']:.3g}, {level}% CI "
                f"{_fmt(wcb.get('conf_low'), '.4g')} to {_fmt(wcb.get('conf_high'), '.4g')}"
            )
        m = p.get("registered_model")
        if m and "estimate" in m:
            primary = " (the registered primary analysis)" * (
                p.get("primary_analysis") == "registered_model"
            )
            click.echo(
                f"  {m['model'].replace('_', ' ')} model{primary}: {m['scale']} "
                f"{_fmt(m['estimate'], '.3g')}, {level}% CI {_fmt(m['conf_low'], '.3g')} "
                f"to {_fmt(m['conf_high'], '.3g')}, p = {_fmt(m['p_value'], '.3g')} "
                f"({m['se_type']})"
            )
        click.echo(f"  Bayesian reading: {p['bayes']['words']}")
    for s in res["secondary"]:
        if s["effect"]:
            click.echo(
                f"  secondary {s['outcome']}: {_fmt(s['effect']['estimate'], '.4g')}, "
                f"adjusted p = {_fmt(s.get('adjusted_p_value'), '.3g')} "
                f"({s.get('multiplicity', 'none')})"
            )
    for item in res["not_run"]:
        click.echo(f"  not run: {item}")
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("pilots", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Report on every analysed pilot.")
@click.option(
    "--templates",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with your own copies of templates (summary.html.j2, style.css, ...); "
    "anything not there comes from evalkit's.",
)
@click.option(
    "--exact-counts",
    is_flag=True,
    help="Show exact counts in the technical report, even those under the disclosure "
    "threshold (for internal checking only; never publish it).",
)
@click.option("--pdf", is_flag=True, help="Also print each report to PDF (needs Chromium).")
@pass_app
def report(
    app: App,
    pilots: tuple[str, ...],
    every: bool,
    templates: Path | None,
    exact_counts: bool,
    pdf: bool,
) -> None:
    """Write analyses/PILOT/summary.html and technical.html from results.json, and the
    index of pilots, analyses/index.html.

    Example: evalkit report hackney-keyworker
    """
    from evalkit.report import analysed_pilots, print_pdf, write_reports

    analyses = app.workspace.root / "analyses"
    names = list(pilots) or (analysed_pilots(analyses) if every else [])
    if not names and every:
        raise UserError(
            f"no pilot in {analyses} has a results.json yet", "run evalkit analyse PILOT first"
        )
    if not names:
        raise UserError(
            "no pilot named", "give a pilot, e.g. evalkit report hackney-keyworker, or --all"
        )
    for name in names:
        for path in write_reports(analyses, name, templates, exact_counts):
            click.echo(f"wrote {path}")
            if pdf and path.name != "index.html":
                click.echo(f"wrote {print_pdf(path)}")


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--templates",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with your own copies of templates, as for report.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace DIRECTORY even though evalkit publish did not write it (its files are "
    "deleted). A folder a previous publish wrote is replaced without it.",
)
@pass_app
def publish(app: App, directory: Path, templates: Path | None, force: bool) -> None:
    """Write the folder to put on a website: for every analysed pilot its summary and
    technical report (rendered afresh, counts suppressed) and results.published.json (what
    the pages show, as data), and index.html. Never results.json, learning.json, the
    store or any data file. Written whole or not at all.

    Example: evalkit publish site
    """
    from evalkit.publish import publish as do_publish

    done = do_publish(app.workspace.root, directory, templates, force)
    if done.replaced == "previous publish":
        click.echo(f"replaced the previous publish in {done.folder}")
    elif done.replaced == "other folder":
        click.echo(f"replaced {done.folder} and deleted what was in it (--force)")
    for path in done.files:
        click.echo(f"wrote {path}")
    n = len(done.pilots)
    click.echo(
        f"published {n} pilot{'s' * (n != 1)} to {done.folder}: put this folder on the "
        "website as it is"
    )


@cli.command()
@click.argument("pilot")
@click.option("--json", "as_json", is_flag=True, help="Print learning.json to the screen.")
@pass_app
def learn(app: App, pilot: str, as_json: bool) -> None:
    """Pool every iteration of the pilot's chain and write learning.json beside the latest.

    Fixed- and random-effects meta-analysis of the primary outcome, Bayesian updating
    (each iteration's posterior the next one's prior), what has been learned, and the
    size the next iteration needs. Example: evalkit learn hackney-keyworker-2
    """
    from evalkit.learn import learn as do_learn
    from evalkit.learn import render

    path, doc = do_learn(app.store(), app.workspace.root, pilot)
    if as_json:
        _emit(doc)
        return
    for line in render(doc):
        click.echo(line)
    click.echo(f"wrote {path}")


@cli.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("evalkit-demo"),
    show_default=True,
    help="Folder for the demo workspace (created; must be empty or new).",
)
@click.option(
    "--seed",
    default=2016,
    show_default=True,
    type=click.IntRange(min=0),
    help="Seed of the synthetic data and of the demo pilots' secrets.",
)
def demo(directory: Path, seed: int) -> None:
    """Run the evalkit cycle end to end on synthetic data in a fresh workspace.

    The demo's pilots' keys go to a folder beside it (DIR-keys), never to your own key
    directory. Example: evalkit demo --dir /tmp/evalkit-demo
    """
    from evalkit.demo import run_demo

    run_demo(directory, echo=click.echo, seed=seed)


def main() -> None:
    cli(prog_name="evalkit")


if __name__ == "__main__":
    main()
