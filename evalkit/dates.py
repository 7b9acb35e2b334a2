"""Dates people type, and the dates a pilot's log holds.

A date is written YYYY-MM-DD and nothing else: "01/02/2027" is 1 February to a London
evaluator and 2 January to a spreadsheet set up in the US, so evalkit never guesses the
order. Every date a user types is checked where it enters (:func:`user_date`), and a
randomisation date must fall between the pilot's registration and today
(:func:`check_randomisation_date`), so the reports' "the plan was fixed before anyone was
allocated" stays true; a referral from before registration (a paper list entered late)
needs a stated reason, which the log keeps and the reports show.

Logs written before these checks may hold a date in another form. Reading such an entry
never fails: :func:`entry_on` falls back to the day the entry was written, and
:func:`date_problems` names every such entry so that ``verify`` and ``status`` can say so.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from evalkit.errors import UserError

ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
EXAMPLE = "2027-02-01 for 1 February 2027"


def parse_iso(text: Any) -> date:
    """``text`` as a YYYY-MM-DD date; ValueError (with words a person can act on) if not."""
    if isinstance(text, date):
        return text
    s = str(text).strip()
    if not ISO_DATE.match(s):
        raise ValueError("is not a date written YYYY-MM-DD")
    try:
        return date.fromisoformat(s)
    except ValueError:
        raise ValueError("is not a real date") from None


def user_date(text: str, where: str) -> date:
    """A date typed for ``where`` (an option such as ``--date``): YYYY-MM-DD only.

    Day-first and month-first forms are refused rather than guessed: the hint spells
    out both readings of an ambiguous date so the person can choose."""
    try:
        return parse_iso(text)
    except ValueError as exc:
        hint = f"write it as YYYY-MM-DD, e.g. {EXAMPLE}"
        m = re.match(r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})\s*$", str(text))
        if m:
            a, b, year = int(m[1]), int(m[2]), int(m[3])
            readings = []
            for day, month in ((a, b), (b, a)):
                try:
                    readings.append(date(year, month, day).isoformat())
                except ValueError:
                    continue
            if readings:
                hint = (
                    f"write it as YYYY-MM-DD: {' or '.join(dict.fromkeys(readings))} "
                    "(evalkit never guesses whether the day or the month comes first)"
                )
        raise UserError(f"{where} {text!r} {exc}", hint) from None


def check_not_future(day: date, today: date) -> None:
    """What has happened happened today or before: an event, a note, a rule recorded."""
    if day > today:
        raise UserError(
            f"the date {day.isoformat()} is in the future (today is {today.isoformat()})",
            "record what has happened, on the day it happened",
        )


def check_randomisation_date(
    on: date, registered_on: date, today: date, backdate_reason: str | None = None
) -> None:
    """A referral or randomisation date must not be in the future, nor before the pilot
    was registered unless a reason is given (then the entry records it as backdated)."""
    if on > today:
        raise UserError(
            f"the date {on.isoformat()} is in the future (today is {today.isoformat()})",
            "give the date the person was referred or joined, no later than today",
        )
    if on < registered_on and not (backdate_reason and backdate_reason.strip()):
        raise UserError(
            f"the date {on.isoformat()} is before the pilot was registered "
            f"({registered_on.isoformat()})",
            "a referral from before registration (a paper list entered late) needs "
            '--backdate --reason "..."; the log keeps the reason and the reports show it',
        )


def stored_on(on: Any, created_at: str) -> date:
    """The date a log entry is for: its recorded date, or the day it was written when the
    recorded one is missing or unreadable (logs written before dates were checked)."""
    try:
        return parse_iso(on)
    except ValueError:
        return date.fromisoformat(created_at[:10])


def entry_on(entry: Any) -> date:
    """The date of a log entry (``Entry``); see :func:`stored_on`."""
    return stored_on(entry.detail.get("on"), entry.created_at)


def date_problems(entries: list[Any]) -> list[str]:
    """A sentence for every entry whose recorded date is not a YYYY-MM-DD date."""
    out = []
    for e in entries:
        on = e.detail.get("on")
        if on is None:
            continue
        try:
            parse_iso(on)
        except ValueError:
            out.append(
                f"entry {e.seq} holds the date {on!r}, which is not YYYY-MM-DD; evalkit "
                f"uses the day it was written ({e.created_at[:10]}) instead"
            )
    return out


def backdated(entries: list[Any]) -> list[dict[str, str]]:
    """Referrals entered with dates before the pilot's registration, grouped by the
    reason given: the reason and the range of dates (no count, so no small number)."""
    groups: dict[str, list[str]] = {}
    for e in entries:
        reason = e.detail.get("backdated")
        if reason and e.kind in {"allocation", "exclusion"}:
            groups.setdefault(reason, []).append(entry_on(e).isoformat())
    return [
        {"reason": reason, "first": min(days), "last": max(days)}
        for reason, days in sorted(groups.items(), key=lambda kv: min(kv[1]))
    ]


def first_randomised(entries: list[Any]) -> str | None:
    """The earliest randomisation (or joining) date in the log, or None."""
    days = [entry_on(e) for e in entries if e.kind == "allocation" and e.level == "participant"]
    return min(days).isoformat() if days else None
