"""The allocation log as a hash chain: each entry commits to the one before it.

An entry's hash covers every field of the entry and the previous entry's hash, so editing,
inserting, deleting or reordering any entry breaks the chain from that point on. The
newest hash (the head) is printed with every allocation; once published (emailed to the
commission, say) not even the last entry can be removed unnoticed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from evalkit.canonical import canonical_json

Kind = Literal["allocation", "exclusion", "event"]
EVENTS = ("withdrawn", "did_not_start", "started", "unblinded", "note")


def _hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def genesis(pilot_id: str, registration_hash: str) -> str:
    """The 'previous hash' of a pilot's first entry: ties the chain to its registration."""
    return hashlib.sha256(f"evalkit log/{pilot_id}/{registration_hash}".encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    pilot_id: str
    seq: int
    kind: Kind
    level: str | None  # participant or place
    unit: str | None  # a participant's pseudonym (never a raw identifier) or a place name
    stratum: str | None
    place: str | None
    arm: str | None
    probabilities: dict[str, float] | None
    detail: dict[str, Any]
    baseline: dict[str, Any]
    protocol_hash: str
    protocol_number: int
    created_at: str
    created_by: str
    prev_hash: str
    entry_hash: str = field(default="")

    def body(self) -> dict[str, Any]:
        """Every field but the entry's own hash (nested values are hashed as they are)."""
        return {name: getattr(self, name) for name in _BODY}

    def computed_hash(self) -> str:
        return _hash(self.body())

    def sealed(self) -> Entry:
        return replace(self, entry_hash=self.computed_hash())

    @property
    def unit_key(self) -> str | None:
        """A unit is allocated or excluded once; events may repeat."""
        return None if self.kind == "event" else f"{self.level}:{self.unit}"


def chain(
    entries: list[Entry], pilot_id: str, registration_hash: str, head: tuple[int, str | None]
) -> list[Entry]:
    """Number and seal new entries so they follow the log's current head."""
    count, prev = head
    prev = prev or genesis(pilot_id, registration_hash)
    out = []
    for i, e in enumerate(entries, start=count + 1):
        body = e.body() | {"seq": i, "prev_hash": prev}
        prev = _hash(body)
        out.append(Entry(**body, entry_hash=prev))
    return out


_BODY = [f.name for f in fields(Entry) if f.name != "entry_hash"]


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    entries: int
    head: str
    problem: str = ""
    bad_seq: int | None = None


def check_chain(
    pilot_id: str,
    registration_hash: str,
    entries: list[Entry],
    recorded_head: tuple[int, str] | None,
) -> ChainCheck:
    """Walk the chain in stored order; name the first entry that does not fit.

    ``recorded_head`` is the (count, hash) the store keeps beside the log; a published
    head hash can be compared with the returned ``head`` as well."""
    prev = genesis(pilot_id, registration_hash)
    for i, e in enumerate(entries, start=1):
        if e.seq != i:
            return ChainCheck(
                False,
                len(entries),
                prev,
                f"entry {i} is missing or out of place (entry {e.seq} stands there): an entry "
                "was deleted, inserted or moved",
                i,
            )
        if e.pilot_id != pilot_id:
            return ChainCheck(False, len(entries), prev, f"entry {i} belongs to another pilot", i)
        if e.prev_hash != prev:
            return ChainCheck(
                False,
                len(entries),
                prev,
                f"entry {i} does not follow entry {i - 1} (its previous hash "
                "differs): an entry was inserted, deleted or edited",
                i,
            )
        if e.computed_hash() != e.entry_hash:
            return ChainCheck(
                False,
                len(entries),
                prev,
                f"entry {i} was edited after it was written (its hash does not match its content)",
                i,
            )
        prev = e.entry_hash
    if recorded_head is not None:
        count, head = recorded_head
        if count != len(entries) or head != prev:
            return ChainCheck(
                False,
                len(entries),
                prev,
                f"the log ends at entry {len(entries)} but the store recorded "
                f"{count} entries: entries were removed from or added to the end",
                min(count, len(entries)) + 1,
            )
    return ChainCheck(True, len(entries), prev)
