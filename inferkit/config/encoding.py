"""How values are written: YAML as a manifest holds it, Kubernetes quantities, and `N`/`MIN:MAX` counts."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml


class Quantity(str):
    """A Kubernetes resource quantity such as `500m`, `2`, `16Gi`, kept as the user wrote it."""


_QUANTITY = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_SUFFIX = {
    "": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("0.001"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


class _JsonLikeLoader(yaml.SafeLoader):
    """YAML as a manifest holds it: dates stay text (JSON, and so Kubernetes, has no dates)."""


_JsonLikeLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_JsonLikeLoader)  # noqa: S506 - a SafeLoader subclass


def parse_quantity(text: str) -> Decimal:
    """The numeric value of a Kubernetes quantity (cores for CPU, bytes for memory)."""
    match = _QUANTITY.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)")
    sign, number, suffix = match.groups()
    suffix = suffix or ""
    try:
        value = Decimal(number)
    except InvalidOperation as e:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from e
    if suffix in _SUFFIX:
        value *= _SUFFIX[suffix]
    else:  # a decimal exponent: 1e3
        value *= Decimal(10) ** int(suffix[1:])
    return -value if sign == "-" else value


_RANGE = re.compile(r"^(-?[0-9]+)(?::(-?[0-9]+))?$")  # not int()'s looser "1_0" or " 1"


def parse_range(text: str) -> tuple[int, int, bool]:
    """`N` or `MIN:MAX` -> (min, max, whether a range was given); ValueError with the reason."""
    match = _RANGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not N or MIN:MAX with whole numbers")
    low, high = match.group(1), match.group(2)
    return int(low), int(high if high is not None else low), high is not None
