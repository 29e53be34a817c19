"""The exception gradsmith raises for bad input from the user, which the CLI reports as one line
with exit status 2 (every other exception is an internal error)."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user (an argument, an option, a path): the message names it and the
    fix."""
