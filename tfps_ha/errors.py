"""Errors the kit raises for bad input, kept apart from crashes.

A `UsageError` is the user's to fix (a bad spec, a bad flag, a bad TF_CONFIG):
the CLI prints its one-line message and exits with `ExitCode.USAGE`, with no
traceback. Anything else that escapes is a crash and keeps its traceback.
"""

from __future__ import annotations


class UsageError(Exception):
    """Invalid input from the user; the message names what to change."""


class SpecError(UsageError):
    """One invalid value in a cluster spec or a TF_CONFIG.

    The message has the form
    `SOURCE: PATH: received VALUE; expected WHAT`, for example
    `local.yaml: cluster.worker[1]: received 'localhost:0'; expected a port in
    1..65535`.

    Attributes:
      source: The file name, or `TF_CONFIG`.
      path: Where the value sits, such as `cluster.worker[1]`.
      received: The value as given (repr'd in the message).
      expected: What would have been valid.
    """

    _MISSING = object()

    def __init__(self, source: str, path: str, received: object, expected: str):
        self.source = source
        self.path = path
        self.received = received
        self.expected = expected
        if received is SpecError._MISSING:
            shown = "nothing (the key is missing)"
        else:
            shown = _short_repr(received)
        where = f"{path}: " if path else ""
        super().__init__(f"{source}: {where}received {shown}; expected {expected}")

    @classmethod
    def missing(cls, source: str, path: str, expected: str) -> "SpecError":
        """Builds the error for a required key that is absent."""
        return cls(source, path, cls._MISSING, expected)


class StartupTimeoutError(Exception):
    """A task did not come up before the start-up deadline."""


def _short_repr(value: object, limit: int = 120) -> str:
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
