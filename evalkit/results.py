"""Running the registered analysis for a pilot and writing analyses/PILOT/results.json.

The file records what was run and on what: the registration and its amendments, the
protocol as registered, protocol hash and version, data vintage, log head, library
versions, and every deviation from the registered plan (then the whole file is labelled
exploratory). Reports are built from this file alone, so its shape is a contract: the JSON
Schema in evalkit/results.schema.json documents every field, and a file that does not
validate against it is never written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import date
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from evalkit.analysis import SCHEMA_VERSION, analyse
from evalkit.dates import backdated, first_randomised
from evalkit.errors import UserError
from evalkit.keys import KeyRing
from evalkit.protocol import Protocol
from evalkit.registration import history, require_registered
from evalkit.store import Store, VersionRecord
from evalkit.tracking import notes, nothing_to_analyse, track
from evalkit.workspace import write_atomically


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of results.json, shipped inside the package."""
    text = resources.files("evalkit").joinpath("results.schema.json").read_text("utf-8")
    return json.loads(text)


def _where(path: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path) or "(top level)"


def _deepest(error: Any) -> Any:
    """For "one of these shapes" errors (a value or null, say), the sub-error that reaches
    furthest into the value: the one that names the field actually wrong."""
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return error


def check_results(results: dict[str, Any]) -> None:
    """Raise ValueError naming the first problems if results.json does not follow its
    schema (evalkit/results.schema.json) or holds a number that JSON cannot carry."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(
        (_deepest(e) for e in validator.iter_errors(results)),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    if errors:
        shown = [f"results{_where(e.absolute_path)}: {e.message}" for e in errors[:5]]
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError(
            f"results.json does not follow its schema {SCHEMA_VERSION}: " + "; ".join(shown) + more
        )
    json.dumps(results, allow_nan=False)  # every number finite or null


def registration(rows: list[dict[str, Any]], number: int) -> dict[str, Any]:
    """The registration as results.json records it, from ``history`` rows: the version
    analysed (``number``), the first registration, and every amendment with its reason and
    field-level changes."""
    analysed = next((r for r in rows if r["number"] == number), None)
    if analysed is None:
        raise ValueError(f"registered version {number} is not in the history")
    first = rows[0]
    return {
        "version": number,
        "protocol_version": analysed["protocol_version"],
        "hash": analysed["hash"],
        "registered_at": first["registered_at"],
        "registered_by": first["registered_by"],
        "version_registered_at": analysed["registered_at"],
        "amendments": [
            {
                "version": r["number"],
                "protocol_version": r["protocol_version"],
                "hash": r["hash"],
                "at": r["registered_at"],
                "by": r["registered_by"],
                "reason": r["reason"],
                "changes": [
                    {
                        "field": c["path"],
                        "kind": c["kind"],
                        "before": c.get("old"),
                        "after": c.get("new"),
                    }
                    for c in r["changes"]
                ],
            }
            for r in rows[1:]
        ],
    }


def registered_protocol(version: VersionRecord) -> dict[str, Any]:
    """The protocol as registered (the stored canonical form, not the file on disk), as
    plain JSON with the names used in protocol files."""
    return Protocol.model_validate(json.loads(version.canonical)).model_dump(
        mode="json", by_alias=True
    )


def run(
    store: Store, keys: KeyRing, workspace: Path, pilot: str, today: date, exploratory: bool
) -> tuple[Path, dict[str, Any]]:
    rp = require_registered(store, workspace / "protocols" / f"{pilot}.yaml", pilot, exploratory)
    record = rp.pilot
    if record is None:
        raise UserError(f"pilot {pilot!r} is not registered")
    secret = keys.load(record.id, record.uid, record.secret_commitment)
    seed = int.from_bytes(hmac.new(secret, b"analysis", hashlib.sha256).digest()[:8], "big")
    t = track(store, rp.protocol, today)
    if not t.dataset.rows:
        raise UserError(f"pilot {pilot!r} has nobody randomised yet", "enrol or allocate first")
    if len(rp.protocol.arms) != 2:
        raise UserError(
            f"the registered analysis of a pilot with {len(rp.protocol.arms)} arms is not "
            "built yet (evalkit analyses two-arm pilots)",
            f"export the data with 'evalkit export {pilot} --what analysis --out data.csv' "
            "and estimate each comparison with 'evalkit estimate data.csv --outcome Y "
            "--treatment arm --arms CONTROL,ARM' (labelled exploratory)",
        )
    early = nothing_to_analyse(rp.protocol, t.dataset.rows)
    if early is not None:
        raise UserError(*early)
    deviations = [str(c) for c in rp.standing.changes] if rp.exploratory else []
    versions = store.versions(pilot)
    analysed = rp.standing.matched or versions[-1]  # exploratory: deviations from the latest
    provenance = {
        "protocol_hash": rp.standing.file_hash,
        "registered_version": rp.standing.matched.number if rp.standing.matched else None,
        "registration_hash": versions[0].hash,
        "log_entries": record.log_count,
        "log_head": record.log_head,
        "data_vintage": t.dataset.vintage,
        "outcome_extracts": t.dataset.as_of,
        "libraries": _versions(),
    }
    try:
        results = analyse(
            rp.protocol,
            t.dataset.rows,
            t.entries,
            {"consort": t.consort, "progression": t.progression, "notes": notes(t.entries)},
            seed,
            today,
            deviations,
            provenance,
            {
                **registration(history(store, pilot), analysed.number),
                "first_randomised": first_randomised(t.entries),
                "backdated": backdated(t.entries),
            },
            registered_protocol(analysed),
        )
    except ValueError as exc:
        raise UserError(
            f"the analysis cannot run: {exc}",
            "nothing was written; this is a gap in evalkit, not a fault in the pilot's data: "
            f"report it with the protocol ('evalkit status {pilot}' and 'evalkit export' "
            "still work)",
        ) from None
    try:
        check_results(results)
    except ValueError as exc:  # never write a file the reports cannot trust
        raise UserError(
            f"results.json was not written: {exc}",
            "this is a fault in evalkit, not in the pilot's data: report it with the protocol",
        ) from None
    out = workspace / "analyses" / pilot / "results.json"
    write_atomically(out, json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return out, results


def _versions() -> dict[str, str]:
    import numpy
    import pandas
    import scipy
    import statsmodels

    return {
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pandas": pandas.__version__,
        "statsmodels": statsmodels.__version__,
    }
