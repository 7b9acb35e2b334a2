"""The pilot's secret: the seed of every random draw and the key of every pseudonym.

It lives in a key file outside the workspace (``$EVALKIT_KEY_DIR``, else the user's XDG
config directory), readable only by its owner. The store keeps a commitment to it (a
hash), so that when the secret is revealed after follow-up anyone can check it is the one
fixed at registration and replay the allocation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import UserError

SECRET_BYTES = 32


def default_key_dir() -> Path:
    env = os.environ.get("EVALKIT_KEY_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "evalkit" / "keys"


def commitment(secret: bytes) -> str:
    """Published hash of the secret; reveals nothing about it."""
    return hashlib.sha256(b"evalkit secret commitment\x00" + secret).hexdigest()


def derive(secret: bytes, purpose: str) -> bytes:
    """A separate key for each use (random seed, pseudonyms), so one never leaks another."""
    return hmac.new(secret, purpose.encode("utf-8"), hashlib.sha256).digest()


@dataclass(frozen=True)
class KeyRing:
    directory: Path

    def path(self, pilot_id: str, uid: str) -> Path:
        return self.directory / f"{pilot_id}-{uid}.key"

    def ensure_outside(self, workspace: Path) -> None:
        d, w = self.directory.resolve(), workspace.resolve()
        if d == w or w in d.parents:
            raise UserError(
                f"the key directory {d} is inside the workspace {w}",
                "set EVALKIT_KEY_DIR to a folder outside the workspace and the repo",
            )

    def create(
        self, pilot_id: str, uid: str, created_at: str, secret: bytes | None = None
    ) -> bytes:
        """Make and save a new secret; never overwrites an existing key file. ``secret`` is
        for synthetic pilots only (the demo derives its secrets from its seed so that it
        gives the same pilots every time); a real pilot's secret is always drawn here."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if secret is None:
            secret = secrets.token_bytes(SECRET_BYTES)
        elif len(secret) != SECRET_BYTES:
            raise ValueError(f"a secret has {SECRET_BYTES} bytes, not {len(secret)}")
        body = json.dumps(
            {"pilot": pilot_id, "uid": uid, "created_at": created_at, "secret": secret.hex()},
            indent=2,
        )
        path = self.path(pilot_id, uid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return secret

    def remove(self, pilot_id: str, uid: str) -> None:
        self.path(pilot_id, uid).unlink(missing_ok=True)

    def load(self, pilot_id: str, uid: str, expected_commitment: str) -> bytes:
        path = self.path(pilot_id, uid)
        try:
            secret = bytes.fromhex(json.loads(path.read_text(encoding="utf-8"))["secret"])
        except FileNotFoundError:
            raise UserError(
                f"the secret of pilot {pilot_id!r} is not on this machine (looked for {path})",
                "copy the pilot's key file here or set EVALKIT_KEY_DIR",
            ) from None
        except (ValueError, KeyError):
            raise UserError(
                f"the key file {path} is damaged",
                "restore it from your backup of the key directory",
            ) from None
        if not hmac.compare_digest(commitment(secret), expected_commitment):
            raise UserError(
                f"the key file {path} does not match the registered commitment",
                "this is not the secret created when the pilot was registered",
            )
        return secret
