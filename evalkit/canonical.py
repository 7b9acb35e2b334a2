"""Canonical form of a protocol, its hash, and readable differences between versions.

The hash is taken over the data the author wrote (not over the model with defaults
filled in), so that a newer evalkit that adds an optional key never changes the hash of
a protocol registered with an older one. Key order, comments, quoting style and
whitespace do not matter; any change of value does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

_MISSING = object()


def canonical_json(data: Any) -> str:
    """One fixed text for the same data: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def protocol_hash(data: Any) -> str:
    """SHA-256 of the canonical form, as lower-case hex."""
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Change:
    path: str
    old: Any = _MISSING
    new: Any = _MISSING

    @property
    def kind(self) -> str:
        if self.old is _MISSING:
            return "added"
        if self.new is _MISSING:
            return "removed"
        return "changed"

    def __str__(self) -> str:
        if self.kind == "added":
            return f"{self.path}: added {_show(self.new)}"
        if self.kind == "removed":
            return f"{self.path}: removed (was {_show(self.old)})"
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Change:
        return cls(d["path"], d.get("old", _MISSING), d.get("new", _MISSING))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind}
        if self.old is not _MISSING:
            out["old"] = self.old
        if self.new is not _MISSING:
            out["new"] = self.new
        return out


def _show(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _named(items: list) -> dict[str, Any] | None:
    """Lists of named items (arms, fields, outcomes) diff by name, not by position."""
    if items and all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in items):
        names = [x["name"] for x in items]
        if len(set(names)) == len(names):
            return {n: x for n, x in zip(names, items, strict=True)}
    return None


def diff(old: Any, new: Any, path: str = "") -> list[Change]:
    """Field-level changes from ``old`` to ``new`` (both plain data), in document order."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[Change] = []
        for k in list(old) + [k for k in new if k not in old]:
            p = _join(path, k)
            if k not in new:
                out.append(Change(p, old=old[k]))
            elif k not in old:
                out.append(Change(p, new=new[k]))
            else:
                out += diff(old[k], new[k], p)
        return out
    if isinstance(old, list) and isinstance(new, list):
        a, b = _named(old), _named(new)
        if a is not None and b is not None and list(a) != list(b) and set(a) != set(b):
            out = []
            for n in list(a) + [n for n in b if n not in a]:
                p = f"{path}[name={n}]"
                if n not in b:
                    out.append(Change(p, old=a[n]))
                elif n not in a:
                    out.append(Change(p, new=b[n]))
                else:
                    out += diff(a[n], b[n], p)
            return out
        if len(old) == len(new):
            out = []
            for i, (x, y) in enumerate(zip(old, new, strict=True)):
                out += diff(x, y, _join(path, i))
            return out
        return [Change(path, old=old, new=new)]
    if type(old) is not type(new) or old != new:
        return [Change(path or "(whole protocol)", old=old, new=new)]
    return []
