"""Errors that are the user's to fix.

Anything raised as `UserError` is printed by the CLI as one sentence (no traceback) and the
process exits with code 2. Everything else is a bug in llm360 and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the input (config, files, arguments) that the user can fix."""
