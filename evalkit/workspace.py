"""Where a pilot's files live: protocols/, analyses/ and the default store, in one folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import UserError
from evalkit.protocol import slug_ok


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def find(cls, start: Path, explicit: Path | None = None) -> Workspace:
        """The given folder, else the nearest folder upwards holding protocols/ or a store."""
        if explicit is not None:
            if not explicit.is_dir():
                raise UserError(
                    f"workspace {explicit} is not a folder",
                    "create it, or point --workspace at an existing folder",
                )
            return cls(explicit.resolve())
        here = start.resolve()
        for d in (here, *here.parents):
            if (d / "protocols").is_dir() or (d / "evalkit.db").is_file():
                return cls(d)
        return cls(here)

    @property
    def protocols(self) -> Path:
        return self.root / "protocols"

    @property
    def analyses(self) -> Path:
        return self.root / "analyses"

    def protocol_path(self, pilot: str) -> Path:
        if not slug_ok(pilot):
            raise UserError(
                f"{pilot!r} is not a pilot name",
                "pilot names use lower-case letters, digits and hyphens",
            )
        path = self.protocols / f"{pilot}.yaml"
        if not path.is_file():
            raise UserError(
                f"no protocol for pilot {pilot!r}: {path} does not exist",
                f"create it with 'evalkit init {pilot} --template individual'",
            )
        return path


def write_whole(path: Path, write: Callable[[Path], None]) -> None:
    """Write a whole file or nothing: ``write`` fills a temporary file beside ``path``,
    which then replaces it in one step, so a reader (or a report) never sees half a file
    and a failure leaves the old file as it was. The file is readable like any other the
    user writes (not mkstemp's 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path: Path, text: str) -> None:
    """A text file written whole or not at all (see :func:`write_whole`), its folder made
    if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
