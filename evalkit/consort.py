"""The CONSORT flow of a pilot, computed from the log and the analysis data set.

Every box is a count of distinct people (or places), and the boxes add up: the assessed
are the randomised plus the excluded, and in each arm the randomised are those analysed
for the primary outcome plus those lost to follow-up plus those not yet due.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from evalkit.ledger import Entry
from evalkit.protocol import Protocol


def flow(
    protocol: Protocol,
    entries: list[Entry],
    rows: list[dict[str, Any]],
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    labels = labels or {}
    primary = protocol.primary.name
    excluded = [e for e in entries if e.kind == "exclusion" and e.level == "participant"]
    reasons: Counter = Counter()
    for e in excluded:
        for r in e.detail.get("reasons", []):
            reasons[r] += 1
    place_entries = [e for e in entries if e.kind == "allocation" and e.level == "place"]
    places: Counter = Counter(e.arm for e in place_entries if e.arm)  # none in a stepped wedge
    arms = []
    for a in protocol.arms:
        mine = [r for r in rows if r["arm"] == labels.get(a.name, a.name)]
        status = Counter(r[f"{primary}_status"] for r in mine)
        started = [r["started"] for r in mine]
        arms.append(
            {
                "arm": labels.get(a.name, a.name),
                "label": a.label if not labels else labels.get(a.name, a.name),
                "places": places.get(a.name) if protocol.unit.level == "place" else None,
                "randomised": len(mine),
                "received": sum(s is True for s in started)
                if any(s is not None for s in started)
                else None,
                "did_not_start": sum(s is False for s in started),
                "withdrawn": sum(bool(r["withdrawn"]) for r in mine),
                "lost_to_follow_up": status.get("missing", 0),
                "not_yet_due": status.get("not_yet_due", 0),
                "analysed": status.get("observed", 0),
            }
        )
    randomised = sum(a["randomised"] for a in arms)
    out = {
        "unit": protocol.unit.level,
        "assessed": randomised + len(excluded),
        "excluded": {"total": len(excluded), "reasons": dict(reasons.most_common())},
        "randomised": randomised,
        "places_randomised": len(place_entries) if protocol.unit.level == "place" else None,
        "arms": arms,
        "primary_outcome": primary,
    }
    check(out)
    return out


def check(f: dict[str, Any]) -> None:
    """Raise if the boxes do not add up (a bug, never a user error)."""
    if f["assessed"] != f["randomised"] + f["excluded"]["total"]:
        raise AssertionError("CONSORT: assessed != randomised + excluded")
    for a in f["arms"]:
        if a["randomised"] != a["analysed"] + a["lost_to_follow_up"] + a["not_yet_due"]:
            raise AssertionError(f"CONSORT: arm {a['arm']} does not add up")
    if sum(a["randomised"] for a in f["arms"]) != f["randomised"]:
        raise AssertionError("CONSORT: arms do not add up to the randomised")
