"""Allocation concealment: what the person who enrols may see of the allocation log.

The log keeps everything a replay needs: a blocked allocation's position in its stratum,
its block, the block's size and the position in the block; a minimisation's imbalance
totals, its preferred arm and the conditional chances that follow from them (0.8 for the
preferred arm, say). Shown to someone who enrols, any of these lets them foresee later
allocations: a block's last places are forced once its size and position are known, and
a conditional chance says which arm the next similar referral will probably get. So
every view an enroller can reach (``enrol``, ``allocate``, the non-restricted
``export``) passes entries through :func:`enroller_view` until the pilot records its
unblinding; the restricted export and ``verify --reveal-secret`` still see everything.

What stays visible is what the enroller needs or already knows: the arm, the chance the
protocol declares for it (the allocation ratio's share), the referral's own stratum, the
method, the date, their own reference, and the entry's number and hash as a receipt.
The arms themselves (an unblinded enroller learns each one) still allow the guessing that
any blocked or minimised design permits; random block sizes and a minimisation
probability below 1 reduce it, they do not remove it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from evalkit.enrolment import Written
from evalkit.ledger import Entry
from evalkit.protocol import Protocol

SEQUENTIAL = frozenset({"simple", "blocked", "minimisation"})
"""Designs that allocate one referral after another from a secret sequence: a later
allocation depends on the earlier ones, so their bookkeeping must stay hidden."""

SHOWN_DETAIL = frozenset({"method", "exact", "on", "ref", "backdated"})
"""What an enroller sees of a sequential allocation's detail. A list of what may be
shown, not of what is hidden, so that a field added to the detail later stays hidden
until someone decides it is safe."""

CONDITIONAL = frozenset({"minimisation"})
"""Designs whose stored chance is conditional on the log so far. The others (simple,
blocked) store the share the protocol in force declared, which is what is shown."""

ARM_KEYED = ("totals",)  # detail fields keyed by arm name
ARM_LISTS = ("preferred",)  # detail fields listing arm names


def declared_shares(protocol: Protocol) -> dict[str, float]:
    """Each arm's share of the allocation ratio: the chance the protocol declares."""
    total = sum(a.ratio for a in protocol.arms)
    return {a.name: a.ratio / total for a in protocol.arms}


def concealed(entries: list[Entry]) -> bool:
    """True until an ``unblinded`` event is in the log: until then the allocation detail
    that could predict a later allocation is kept from non-restricted views."""
    return not any(e.kind == "event" and e.detail.get("event") == "unblinded" for e in entries)


def enroller_view(entry: Entry, protocol: Protocol) -> Entry:
    """The entry as someone who enrols may see it.

    A sequential allocation keeps only :data:`SHOWN_DETAIL` and shows the declared share
    as its chance: a minimisation's conditional chance (0.8 or 0.2) would name the arm it
    favoured, so it is replaced by ``protocol``'s share (pass the registered protocol; an
    arm it lacks leaves the chance unshown rather than wrong).
    Exclusions, events, a complete design's batch (drawn and shown all at once, and
    independent of the next batch), places (all allocated together) and people joining
    them (their arm is their place's) are shown as stored: nothing in them bears on an
    allocation still to be drawn. ``entry_hash`` stays the stored entry's, so the receipt
    still verifies against the full log.
    """
    if entry.kind != "allocation" or entry.detail.get("method") not in SEQUENTIAL:
        return entry
    detail = {k: v for k, v in entry.detail.items() if k in SHOWN_DETAIL}
    probabilities = entry.probabilities
    if probabilities is not None and entry.detail.get("method") in CONDITIONAL:
        shares = declared_shares(protocol)
        probabilities = shares if set(shares) == set(probabilities) else None
    return replace(entry, detail=detail, probabilities=probabilities)


def seen_by_enroller(written: Written, protocol: Protocol) -> Written:
    """What ``enrol`` and ``allocate`` print or write: every entry through
    :func:`enroller_view`."""
    return replace(
        written,
        entries=[enroller_view(e, protocol) for e in written.entries],
        existing=[enroller_view(e, protocol) for e in written.existing],
        rows=[(row, enroller_view(e, protocol), existed) for row, e, existed in written.rows],
    )


def relabel_detail(detail: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """A detail with arm names under their neutral labels (a blinded pilot's restricted
    export must not name the arms through a minimisation's totals)."""
    if not labels:
        return detail
    out = dict(detail)
    for key in ARM_KEYED:
        if isinstance(out.get(key), dict):
            out[key] = {labels.get(k, k): v for k, v in out[key].items()}
    for key in ARM_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [labels.get(a, a) for a in out[key]]
    return out
