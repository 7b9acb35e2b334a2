"""Errors a user can act on: the CLI prints them as one message and exits 1."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message
