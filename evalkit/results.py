"""Running the registered analysis for a pilot and writing analyses/PILOT/results.json.

The file records what was run and on what: protocol hash and version, data vintage, log
head, library versions, and every deviation from the registered plan (then the whole file
is labelled exploratory).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import date
from pathlib import Path
from typing import Any

from evalkit.analysis import SCHEMA_VERSION, analyse
from evalkit.errors import UserError
from evalkit.keys import KeyRing
from evalkit.registration import require_registered
from evalkit.store import Store
from evalkit.tracking import notes, track

REQUIRED = {
    "schema_version",
    "pilot",
    "exploratory",
    "deviations",
    "as_of",
    "arms",
    "design",
    "unit",
    "alpha",
    "estimand",
    "primary",
    "secondary",
    "balance",
    "attrition",
    "consort",
    "progression",
    "costs",
    "context",
    "not_run",
    "provenance",
}
EFFECT_KEYS = {
    "estimate",
    "std_error",
    "df",
    "p_value",
    "conf_low",
    "conf_high",
    "se_type",
    "n",
    "clusters",
}


def check_results(results: dict[str, Any]) -> None:
    """Raise if results.json lacks a documented part (see docs in README)."""
    if results.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"results schema {results.get('schema_version')} is not {SCHEMA_VERSION}")
    missing = REQUIRED - set(results)
    if missing:
        raise ValueError(f"results.json lacks {', '.join(sorted(missing))}")
    for r in [results["primary"], *results["secondary"]]:
        if r["effect"] is not None and not set(r["effect"]) >= EFFECT_KEYS:
            raise ValueError(
                f"effect of {r['outcome']} lacks "
                f"{', '.join(sorted(EFFECT_KEYS - set(r['effect'])))}"
            )
    json.dumps(results, allow_nan=False)  # every number finite or null


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
    deviations = [str(c) for c in rp.standing.changes] if rp.exploratory else []
    versions = store.versions(pilot)
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
        )
    except ValueError as exc:
        raise UserError(f"the analysis cannot run: {exc}") from None
    check_results(results)
    out = workspace / "analyses" / pilot / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("results.json.part")
    tmp.write_text(
        json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    tmp.replace(out)
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
