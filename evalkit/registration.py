"""Registration and amendment: the plan is fixed before results exist, and every later
change is recorded with its reason and a field-level diff.

:func:`standing` is the pure test every command runs ("is this file a registered
version?"); :func:`register`, :func:`amend` and :func:`require_registered` wrap it with
the store, the key ring and the clock, which are handed in.
"""

from __future__ import annotations

import json
import platform
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from evalkit import __version__
from evalkit.canonical import Change, canonical_json, diff, protocol_hash
from evalkit.errors import UserError
from evalkit.keys import KeyRing, commitment
from evalkit.protocol import Protocol
from evalkit.protocol_file import Located, load_protocol
from evalkit.store import DuplicateRecord, PilotRecord, Store, VersionRecord

RNG_ALGORITHM = "numpy.random.Generator(PCG64), seeded by HMAC-SHA256(secret, protocol hash)"

Status = Literal["current", "superseded", "changed", "unregistered"]


@dataclass(frozen=True)
class Receipt:
    """What a registration proves; meant to be published or emailed."""

    pilot: str
    number: int
    protocol_version: str
    hash: str
    registered_at: str
    registered_by: str
    evalkit_version: str
    secret_commitment: str
    reason: str | None = None

    @classmethod
    def of(cls, pilot: PilotRecord, v: VersionRecord) -> Receipt:
        return cls(
            pilot.id,
            v.number,
            v.protocol_version,
            v.hash,
            v.registered_at,
            v.registered_by,
            v.evalkit_version,
            pilot.secret_commitment,
            v.reason,
        )

    def text(self) -> str:
        kind = "registration" if self.number == 1 else f"amendment {self.number - 1}"
        lines = [
            f"evalkit registration receipt ({kind})",
            f"  pilot:             {self.pilot}",
            f"  protocol version:  {self.protocol_version} (registered version {self.number})",
            f"  sha256:            {self.hash}",
            f"  registered at:     {self.registered_at} (UTC)",
            f"  registered by:     {self.registered_by}",
            f"  evalkit:           {self.evalkit_version}",
            f"  secret commitment: {self.secret_commitment}",
        ]
        if self.reason:
            lines.append(f"  reason:            {self.reason}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Standing:
    """Where a protocol file stands against the pilot's registered versions."""

    pilot: str
    status: Status
    file_hash: str
    matched: VersionRecord | None = None
    latest: VersionRecord | None = None
    changes: list[Change] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "current"

    def message(self) -> str:
        if self.status == "current":
            assert self.matched is not None
            return (
                f"{self.pilot}: the protocol file is registered version "
                f"{self.matched.number} ({self.matched.protocol_version}), sha256 "
                f"{self.file_hash}"
            )
        if self.status == "unregistered":
            return f"{self.pilot}: the pilot is not registered"
        assert self.latest is not None
        if self.status == "superseded":
            assert self.matched is not None
            return (
                f"{self.pilot}: the protocol file is registered version "
                f"{self.matched.number}, but version {self.latest.number} is current"
            )
        names = ", ".join(sorted({c.path for c in self.changes})) or "(formatting only)"
        return (
            f"{self.pilot}: the protocol file differs from registered version "
            f"{self.latest.number}; changed: {names}"
        )

    def hint(self) -> str:
        return {
            "current": "",
            "unregistered": f"register it first: evalkit register protocols/{self.pilot}.yaml",
            "superseded": "restore the current version of the file (evalkit history shows it)",
            "changed": "record the change with: evalkit amend protocols/"
            f'{self.pilot}.yaml --reason "..."; an analysis can go on with --exploratory, '
            "labelled exploratory",
        }[self.status]

    def as_dict(self) -> dict[str, Any]:
        return {
            "pilot": self.pilot,
            "status": self.status,
            "file_hash": self.file_hash,
            "registered_version": self.matched.number if self.matched else None,
            "current_version": self.latest.number if self.latest else None,
            "changes": [c.as_dict() for c in self.changes],
        }


def standing(pilot: str, versions: list[VersionRecord], data: Any) -> Standing:
    """Compare a protocol's data with the registered versions (pure)."""
    h = protocol_hash(data)
    if not versions:
        return Standing(pilot, "unregistered", h)
    latest = versions[-1]
    matched = next((v for v in versions if v.hash == h), None)
    if matched is latest:
        return Standing(pilot, "current", h, matched, latest)
    if matched is not None:
        return Standing(
            pilot, "superseded", h, matched, latest, diff(json.loads(latest.canonical), data)
        )
    return Standing(pilot, "changed", h, None, latest, diff(json.loads(latest.canonical), data))


def environment() -> dict[str, str]:
    """Algorithm and versions recorded with each pilot so any draw can be replayed."""
    import numpy

    return {
        "rng": RNG_ALGORITHM,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "evalkit": __version__,
    }


def register(
    store: Store, keys: KeyRing, path: Path, by: str, now: str, secret: bytes | None = None
) -> tuple[Receipt, bool]:
    """Register a protocol file. Returns the receipt and whether anything new was stored;
    registering identical content again stores nothing and returns the same receipt.
    ``secret`` only for synthetic pilots (see KeyRing.create)."""
    protocol, located = load_protocol(path)
    data, h = located.data, protocol_hash(located.data)
    pilot = store.pilot(protocol.id)
    if pilot is not None:
        return _existing_receipt(store, pilot, protocol.id, data, h), False

    uid = secrets.token_hex(16)
    secret = keys.create(protocol.id, uid, now, secret)
    record = PilotRecord(
        protocol.id, uid, commitment(secret), now, json.dumps(environment(), sort_keys=True)
    )
    first = VersionRecord(
        protocol.id, 1, protocol.version, h, canonical_json(data), now, by, __version__
    )
    try:
        store.create_pilot(record, first)
    except DuplicateRecord:
        keys.remove(protocol.id, uid)  # another process registered it first
        pilot = store.pilot(protocol.id)
        assert pilot is not None
        return _existing_receipt(store, pilot, protocol.id, data, h), False
    except BaseException:
        keys.remove(protocol.id, uid)
        raise
    return Receipt.of(record, first), True


def start_date_warning(protocol: Protocol, registered_at: str) -> str | None:
    """A plan registered after its own start date was not fixed before the pilot began:
    say so at registration, while it can still be put right (an amendment can move the
    start date; referrals cannot be dated before registration without --backdate)."""
    start = protocol.start_date
    day = registered_at[:10]
    if start is None or start.isoformat() >= day:
        return None
    return (
        f"start_date {start.isoformat()} is before today's registration ({day}): the "
        "reports show the registration date, and referrals dated before it need "
        "--backdate --reason; if the pilot has not started, amend start_date"
    )


KEY_BACKUP = (
    "back up this key file now, somewhere safe and private (not in the workspace): "
    "without it nobody can enrol, import outcomes or replay the allocation, and it "
    "cannot be made again"
)


def key_file(store: Store, keys: KeyRing, pilot_id: str) -> Path:
    """Where this machine keeps the pilot's secret key: what `register` tells the user to
    back up (the path, never the key)."""
    record = store.pilot(pilot_id)
    if record is None:
        raise UserError(f"pilot {pilot_id!r} is not registered")
    return keys.path(record.id, record.uid)


def _existing_receipt(store: Store, pilot: PilotRecord, pid: str, data: Any, h: str) -> Receipt:
    versions = store.versions(pid)
    s = standing(pid, versions, data)
    if s.status == "current":
        assert s.matched is not None
        return Receipt.of(pilot, s.matched)
    raise UserError(
        f"pilot {pid!r} is already registered and this file is not its current version "
        f"({s.message().split(': ', 1)[1]})",
        f'to change a registered protocol use: evalkit amend {_rel(pid)} --reason "..."',
    )


def _rel(pid: str) -> str:
    return f"protocols/{pid}.yaml"


def amend(store: Store, path: Path, reason: str, by: str, now: str) -> tuple[Receipt, Standing]:
    """Store the file as a new registered version with its reason and diff."""
    if not reason.strip():
        raise UserError("an amendment needs a reason", 'give --reason "why the plan changed"')
    protocol, located = load_protocol(path)
    pilot = store.pilot(protocol.id)
    if pilot is None:
        raise UserError(
            f"pilot {protocol.id!r} is not registered, so there is nothing to amend",
            f"register it first: evalkit register {path}",
        )
    versions = store.versions(protocol.id)
    s = standing(protocol.id, versions, located.data)
    if s.status == "current":
        assert s.matched is not None
        return Receipt.of(pilot, s.matched), s
    if s.status == "superseded":
        assert s.matched is not None
        raise UserError(
            f"the file is identical to registered version {s.matched.number}",
            "to go back to an earlier plan, change its 'version' so the amendment "
            "is recorded as a new version",
        )
    assert s.latest is not None
    number = s.latest.number + 1
    v = VersionRecord(
        protocol.id,
        number,
        protocol.version,
        s.file_hash,
        canonical_json(located.data),
        now,
        by,
        __version__,
        reason.strip(),
        json.dumps([c.as_dict() for c in s.changes], ensure_ascii=False),
    )
    try:
        store.add_version(v, expected_number=number)
    except DuplicateRecord:
        raise UserError(
            f"pilot {protocol.id!r} was amended by someone else meanwhile",
            "run 'evalkit history' to see the new version, then amend again",
        ) from None
    return Receipt.of(pilot, v), s


@dataclass(frozen=True)
class RegisteredProtocol:
    """A protocol a command may work to: registered, or explicitly exploratory."""

    protocol: Protocol
    located: Located
    standing: Standing
    pilot: PilotRecord | None

    @property
    def exploratory(self) -> bool:
        return not self.standing.ok


def require_registered(
    store: Store, path: Path, pilot: str, exploratory: bool = False
) -> RegisteredProtocol:
    """Load the pilot's protocol and refuse, naming the changed fields, unless it is the
    current registered version; with ``exploratory`` go on and say so."""
    protocol, located = load_protocol(path)
    if protocol.id != pilot:
        raise UserError(
            f"{path} has id {protocol.id!r}, not {pilot!r}",
            f"the file protocols/{pilot}.yaml must have 'id: {pilot}'",
        )
    record = store.pilot(pilot)
    s = standing(pilot, store.versions(pilot) if record else [], located.data)
    if not s.ok and not exploratory:
        raise UserError(s.message(), s.hint())
    return RegisteredProtocol(protocol, located, s, record)


def history(store: Store, pilot: str) -> list[dict[str, Any]]:
    if store.pilot(pilot) is None:
        raise UserError(
            f"pilot {pilot!r} is not registered",
            f"register it first: evalkit register protocols/{pilot}.yaml",
        )
    out = []
    for v in store.versions(pilot):
        out.append(
            {
                "number": v.number,
                "protocol_version": v.protocol_version,
                "hash": v.hash,
                "registered_at": v.registered_at,
                "registered_by": v.registered_by,
                "evalkit_version": v.evalkit_version,
                "reason": v.reason,
                "changes": json.loads(v.changes) if v.changes else [],
            }
        )
    return out
