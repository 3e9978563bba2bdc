"""Errors the kit raises for bad input, kept apart from crashes.

A `UsageError` is the user's to fix (a bad spec, a bad flag, a bad TF_CONFIG):
the CLI prints its one-line message and exits with `ExitCode.USAGE`, with no
traceback. Anything else that escapes is a crash and keeps its traceback.
"""

from __future__ import annotations

import math
import reprlib


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
            shown = short_repr(received)
        where = f"{path}: " if path else ""
        super().__init__(f"{source}: {where}received {shown}; expected {expected}")

    @classmethod
    def missing(cls, source: str, path: str, expected: str) -> "SpecError":
        """Builds the error for a required key that is absent."""
        return cls(source, path, cls._MISSING, expected)


class StartupTimeoutError(Exception):
    """A task did not come up before the start-up deadline."""


class _BoundedRepr(reprlib.Repr):
    """`reprlib.Repr` whose cost does not grow with the size of the value.

    YAML anchors and aliases can make a small spec expand into a value with
    billions of elements. The plain `repr()` of 10**9 strings would take
    about a minute and gigabytes of memory (estimated from 0.5 s for 10**7).
    """

    def __init__(self):
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = 6
        self.maxdict = self.maxset = self.maxfrozenset = self.maxdeque = 4
        # Above every `limit` that callers pass, so that a clipped string
        # always ends in the "..." that `short_repr` appends.
        self.maxstring = self.maxother = 200
        self.maxlong = 40

    def repr_dict(self, x, level):
        # reprlib sorts the keys, but insertion order matches the file the user wrote.
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = []
        for index, (key, value) in enumerate(x.items()):
            if index == self.maxdict:
                items.append("...")
                break
            items.append(f"{self.repr1(key, level - 1)}: {self.repr1(value, level - 1)}")
        return "{" + ", ".join(items) + "}"

    def repr_int(self, x, level):
        # repr() of an int is quadratic in its digits, and Python 3.11+ raises
        # ValueError beyond 4300 digits, so a huge int is described instead.
        if x.bit_length() > 128:
            digits = int(x.bit_length() * math.log10(2)) + 1
            return f"<an integer of about {digits} digits>"
        return repr(x)

    def repr_str(self, x, level):
        # The end is clipped by `short_repr`, not the middle as reprlib does.
        return repr(x[: self.maxstring + 1])

    def repr_bytes(self, x, level):
        text = repr(x[: self.maxstring])
        return text + "..." if len(x) > self.maxstring else text


_BOUNDED_REPR = _BoundedRepr()


def short_repr(value: object, limit: int = 120) -> str:
    """Returns `repr(value)` clipped to `limit` characters.

    Nested containers show their first few items and `...`, and long strings
    and huge integers are cut before they are formatted, so the cost does not
    depend on the size of `value`.
    """
    text = _BOUNDED_REPR.repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
