"""Synthetic referrals and places for the demo and for simulations, labelled synthetic.

Proportions follow the Hackney figures in the domain brief: long-term claimants are
mostly 45-64, 54% male, most have claimed for five years or more; the commission's
interviewees were mainly council tenants (14 of 24) or housing-association tenants (7).
No real resident's data is used or imitated row by row.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np

from evalkit.protocol import BaselineField, Protocol

BENEFIT_MIX = {"ESA": 0.6, "UC": 0.3, "JSA": 0.1}
ROUTE_MIX = {"JCP": 0.4, "GP": 0.2, "IAPT": 0.15, "self": 0.1, "VCS": 0.15}
HOUSING_MIX = {
    "council": 14 / 24,
    "housing_association": 7 / 24,
    "private_rented": 2 / 24,
    "owner": 1 / 24,
}


def _pick(rng: np.random.Generator, mix: dict[str, float], allowed: list[str]) -> str:
    names = [k for k in mix if k in allowed] or allowed
    p = np.array([mix.get(k, 1.0) for k in names], dtype=float)
    return str(names[int(rng.choice(len(names), p=p / p.sum()))])


def referral_values(
    protocol: Protocol, rng: np.random.Generator, eligible_share: float = 0.9
) -> dict[str, Any]:
    """One synthetic referral's baseline values, as text (as a form or CSV would give
    them). About ``1 - eligible_share`` are out of work for less than 24 months."""
    out: dict[str, Any] = {}
    for f in protocol.fields:
        if f.identifier:
            continue
        if f.name == "age":
            out[f.name] = int(np.clip(rng.normal(49, 9), 19, 64))
        elif f.name == "months_unemployed":
            eligible = rng.random() < eligible_share
            out[f.name] = int(24 + rng.exponential(50)) if eligible else int(rng.integers(6, 24))
        elif f.name == "benefit":
            out[f.name] = _pick(rng, BENEFIT_MIX, f.levels or [])
        elif f.name == "referral_route":
            out[f.name] = _pick(rng, ROUTE_MIX, f.levels or [])
        elif f.name in {"housing", "tenure"}:
            out[f.name] = _pick(rng, HOUSING_MIX, f.levels or [])
        elif f.name == "gender":
            out[f.name] = _pick(rng, {"male": 0.54, "female": 0.45, "other": 0.01}, f.levels or [])
        elif f.type == "boolean":
            out[f.name] = bool(rng.random() < 0.9)
        elif f.type == "category":
            out[f.name] = str(rng.choice(f.levels or [""]))
        elif f.type == "integer":
            out[f.name] = int(rng.integers(int(f.min or 0), int(f.max or 100) + 1))
        elif f.type == "number":
            out[f.name] = float(rng.uniform(f.min or 0, f.max or 1))
    return {k: _text(v) for k, v in out.items()}


def place_values(protocol: Protocol, rng: np.random.Generator) -> list[dict[str, str]]:
    """One synthetic row per place the protocol names: deprivation and claimant
    indicators that vary between places as Hackney's wards and estates do."""
    pf = protocol.field(protocol.unit.place_field or "")
    names = pf.levels if pf is not None and pf.levels else []
    rows = []
    for name in names:
        imd = float(np.clip(rng.normal(38, 9), 15, 65))
        row: dict[str, Any] = {protocol.unit.place_field or "place": name}
        for f in protocol.unit.place_fields:
            if f.name == "imd_score":
                row[f.name] = round(imd, 1)
            elif f.name == "claimant_rate":
                row[f.name] = round(
                    float(np.clip(0.04 + imd / 400 + rng.normal(0, 0.015), 0.03, 0.3)), 3
                )
            elif f.name == "mh_claimant_share":
                row[f.name] = round(float(np.clip(rng.normal(0.48, 0.05), 0.3, 0.7)), 2)
            else:
                row[f.name] = _place_field_value(f, rng, imd >= 38)
        rows.append({k: _text(v) for k, v in row.items()})
    return rows


def _place_field_value(f: BaselineField, rng: np.random.Generator, deprived: bool) -> Any:
    """A value for a place field with no indicator of its own: a higher/lower band follows
    deprivation, a number of homes is spread like council estates' sizes, anything else
    is drawn within the field's range."""
    if f.type == "category":
        if "higher" in (f.levels or []):
            return "higher" if deprived else "lower"
        return str(rng.choice(f.levels or [""]))
    if f.name == "homes":
        return int(np.clip(rng.lognormal(np.log(450), 0.6), 80, 2500))
    if f.type == "integer":
        return int(rng.integers(int(f.min or 100), int(f.max or 2000) + 1))
    if f.type == "boolean":
        return bool(rng.random() < 0.5)
    low, high = f.min if f.min is not None else 0.0, f.max if f.max is not None else 1
    return round(float(rng.uniform(low, high)), 3)


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def outcome_files(
    protocol: Protocol, people: list[tuple[str, bool, date]], rng: np.random.Generator, as_of: date
) -> dict[str, list[dict[str, str]]]:
    """One synthetic file per agency in the protocol's import mapping, for people given as
    (raw id, treated, randomisation date): job spells, dated events and follow-up
    measurements, with a modest true benefit of treatment and some missing surveys."""
    files: dict[str, list[dict[str, str]]] = {}
    outcomes = {o.name: o for o in protocol.outcomes}
    for src in protocol.imports:
        cols = [src.id_column] + [
            c for m in src.columns for c in (m.value, m.date, m.start, m.end) if c
        ]
        rows: list[dict[str, str]] = []
        for m in src.columns:
            o = outcomes[m.outcome]
            for raw_id, treated, start in people:
                for rec in _records(protocol, o, treated, start, rng, as_of):
                    row = dict.fromkeys(cols, "")
                    row[src.id_column] = raw_id
                    for key, value in rec.items():
                        column = getattr(m, key)
                        if column:
                            row[column] = value
                    rows.append(row)
        files[src.source] = rows
    return files


def _records(
    protocol: Protocol, o, treated: bool, start: date, rng: np.random.Generator, as_of: date
) -> list[dict[str, str]]:
    from evalkit.derivation import add_months

    due = add_months(start, o.window.months)
    kind = o.derive.source_kind
    lift = 1.0 if treated else 0.0
    if kind == "spells":
        base = protocol.sample_size.baseline_rate or 0.12
        effect = protocol.sample_size.expected_effect if o.primary else 0.04
        out = []
        if rng.random() < base + lift * effect:
            first = start + timedelta(days=int(rng.integers(0, max(30, (due - start).days // 2))))
            out.append((first, first + timedelta(weeks=int(rng.integers(14, 45)))))
        elif rng.random() < 0.25:
            first = start + timedelta(days=int(rng.integers(-60, (due - start).days)))
            out.append((first, first + timedelta(weeks=int(rng.integers(1, 9)))))
        return [
            {"start": a.isoformat(), "end": "" if b > as_of else b.isoformat()}
            for a, b in out
            if a <= as_of
        ]
    if kind == "events":
        span = max((due - start).days, 1)
        if o.type == "count":
            n = int(rng.poisson(max(0.2, 1.2 - 0.4 * lift)))
        else:
            n = int(rng.random() < 0.3 + 0.12 * lift)
        days = sorted(int(d) for d in rng.integers(0, span, size=n))
        return [
            {"date": (start + timedelta(days=d)).isoformat()}
            for d in days
            if start + timedelta(days=d) <= as_of
        ]
    if due > as_of or rng.random() < 0.22:  # not yet due, or the survey was not returned
        return []
    when = due + timedelta(days=int(rng.integers(-10, 11)))
    if when > as_of:
        return []
    if o.type == "binary":
        value = str(int(rng.random() < 0.08 + 0.04 * lift))
    else:
        low, high = o.min if o.min is not None else 0.0, o.max if o.max is not None else 1e9
        value = f"{float(np.clip(rng.normal(44 + 2.5 * lift, 8), low, high)):.0f}"
    return [{"value": value, "date": when.isoformat()}]


def area_values(protocol: Protocol, rng: np.random.Generator, n: int = 40) -> list[dict[str, str]]:
    """``n`` synthetic candidate areas (estates, wards) for choosing a place pilot's places
    with `evalkit places rank`: id, name, need and spend indicators, and every place field
    of ``protocol``, as text.

    Ids follow the pattern of the protocol's place codes (E01, E02, ... for the estates
    pilot). Deprivation scores vary as Hackney's small areas do and the claimant rate
    follows deprivation closely (ward correlation 0.9 in the Kensington and Chelsea case
    study); about 48% of claimants claim for mental or behavioural reasons; spend per head
    (council and NHS spend on working-age residents' employment, mental health and
    housing support, pounds a year) rises with the claimant rate. A category place field
    with levels higher/lower splits the candidates at their median deprivation score.
    Names say "synthetic"; no real area is imitated.
    """
    import re

    pf = protocol.field(protocol.unit.place_field or "")
    first = pf.levels[0] if pf is not None and pf.levels else "A1"
    m = re.fullmatch(r"(\D*)(\d+)", first)
    prefix, width = (m.group(1), len(m.group(2))) if m else ("A", 1)
    width = max(width, len(str(n)))
    label = protocol.unit.place_label or "area"
    imd = np.clip(rng.normal(40, 10, size=n), 12, 70)
    middle = float(np.median(imd))
    rows = []
    for i in range(n):
        claimant = float(np.clip(0.05 + imd[i] / 350 + rng.normal(0, 0.015), 0.03, 0.4))
        row: dict[str, Any] = {
            "id": f"{prefix}{i + 1:0{width}d}",
            "name": f"Synthetic {label} {i + 1}",
            "claimant_rate": round(claimant, 3),
            "mh_claimant_share": round(float(np.clip(rng.normal(0.48, 0.05), 0.3, 0.7)), 3),
            "imd_score": round(float(imd[i]), 1),
            "spend_per_head": round(float(max(50.0, 150 + 1500 * claimant + rng.normal(0, 40)))),
        }
        for f in protocol.unit.place_fields:
            if f.name not in row:
                row[f.name] = _place_field_value(f, rng, imd[i] >= middle)
        rows.append({k: _text(v) for k, v in row.items()})
    return rows
