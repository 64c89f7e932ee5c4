"""The one exception type for mistakes a user can cause or fix."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can act on.

    The message is one sentence that says what happened and what to do; the CLI prints it
    without a traceback and exits non-zero.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
