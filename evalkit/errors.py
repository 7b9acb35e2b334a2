"""Errors a user can act on: the CLI prints them as one message and exits 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class UserError(Exception):
    """Something the user can fix; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class BatchRejected(UserError):
    """A file with problems: nothing was written; every problem is listed."""

    def __init__(self, file: Path, problems: list[Any], done: str = "allocated"):
        n = len(problems)
        super().__init__(
            f"{file}: {n} problem{'s' if n != 1 else ''}; nothing was {done}",
            "correct the rows named and run the same command again",
        )
        self.problems = problems
        self.file = file
