"""Kubernetes resource quantities such as `500m`, `2`, `1.5Gi` or `1e3`.

The grammar is the one of `resource.Quantity` in k8s.io/apimachinery, limited
to the non-negative values that container requests and limits accept.
"""

from __future__ import annotations

import decimal
import re

QUANTITY_RE = re.compile(r"(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?")

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_EXPONENTS = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def normalize_quantity(value: object) -> str | None:
    """Returns `value` as quantity text, or None when it is not a quantity.

    YAML reads `cpu: 2` as an int and `cpu: 0.5` as a float, so numbers are
    accepted and written as text. Booleans and negative numbers are not
    quantities.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    return text if QUANTITY_RE.fullmatch(text) else None


def quantity_value(text: str) -> decimal.Decimal:
    """Returns the exact value of quantity text, for comparing a request with its limit.

    Raises:
      ValueError: `text` is not a quantity.
    """
    match = QUANTITY_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number = decimal.Decimal(match["number"])
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return number.scaleb(int(suffix[1:]))
    return number.scaleb(_DECIMAL_EXPONENTS.get(suffix, 0))
