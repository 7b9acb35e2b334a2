"""The flagship protocols that `evalkit init` starts from (shipped from protocols/)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from evalkit.errors import UserError
from evalkit.protocol import slug_ok

_ID_LINE = re.compile(r"^id: .*$", re.MULTILINE)


def template_text(filename: str) -> str:
    """Read a shipped protocol: package data when installed from a wheel, protocols/ in a
    source checkout (editable installs do not map data-only folders into the package)."""
    try:
        return (resources.files("evalkit.protocol_templates") / filename).read_text("utf-8")
    except ModuleNotFoundError:
        source = Path(__file__).resolve().parents[1] / "protocols" / filename
        return source.read_text(encoding="utf-8")


def render(text: str, pilot_id: str) -> str:
    """The template with its top-level id set to ``pilot_id``; comments kept."""
    out, n = _ID_LINE.subn(f"id: {pilot_id}", text, count=1)
    if n != 1:
        raise ValueError("template has no top-level 'id:' line")
    return out


def write_template(workspace: Path, pilot_id: str, filename: str, force: bool = False) -> Path:
    if not slug_ok(pilot_id):
        raise UserError(
            f"{pilot_id!r} cannot be a pilot name",
            "use 3 to 64 lower-case letters, digits and hyphens, e.g. hackney-keyworker",
        )
    path = workspace / "protocols" / f"{pilot_id}.yaml"
    if path.exists() and not force:
        raise UserError(f"{path} already exists", "choose another name, or add --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    (workspace / "analyses").mkdir(exist_ok=True)
    path.write_text(render(template_text(filename), pilot_id), encoding="utf-8")
    return path
