"""Conversion of merged values into the typed, frozen dataclasses, collecting every problem with its path."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
from typing import Any, Literal, Union, get_args, get_origin

from inferkit.config.encoding import Quantity, parse_quantity
from inferkit.config.schema import INT32_MAX, INT32_MIN, camel, field_types


def unknown_key(key: str, path: str, known: list[str], source: str) -> str:
    hint = difflib.get_close_matches(key, known, n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    where = f"{path}.{key}" if path else key
    return f"{where}: unknown key{suggestion} [{source}]"


def is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def strip_optional(tp: Any) -> Any:
    if is_optional(tp):
        rest = [a for a in get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else Union[tuple(rest)]
    return tp


_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
               Quantity: "a quantity"}


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is tuple or tp is tuple:
        return "a list"
    if get_origin(tp) is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "a map"
    return _TYPE_NAMES.get(tp, str(tp))


class Converter:
    def __init__(self, origin: dict[str, str]):
        self.origin = origin
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        source = self.source(path)
        self.problems.append(f"{path}: {message}" + (f" [{source}]" if source else ""))

    def source(self, path: str) -> str:
        """The layer that set the value at `path` (or the map holding it); "" when none did."""
        path = re.sub(r"\[\d+\]", "", path)  # a list item comes from where its list was set
        while path:
            if path in self.origin:
                return self.origin[path]
            path = path.rpartition(".")[0]
        return ""

    def convert(self, tp: Any, value: Any, path: str) -> Any:
        if is_optional(tp):
            return None if value is None else self.convert(strip_optional(tp), value, path)
        if dataclasses.is_dataclass(tp):
            return self._dataclass(tp, value, path)
        origin = get_origin(tp)
        if origin is Literal:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in get_args(tp):
                value = str(value)  # YAML reads `kuberayVersion: 1.5` as a number
            if value not in get_args(tp):
                self.fail(path, f"must be {_type_name(tp)}, not {value!r}")
            return value
        if origin is tuple:
            if not isinstance(value, (list, tuple)):
                self.fail(path, f"must be a list, not {describe(value)}")
                return ()
            item = get_args(tp)[0]
            return tuple(self.convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                self.fail(path, f"must be a map, not {describe(value)}")
                return {}
            if origin is dict and get_args(tp)[1] is str:
                for key, item in value.items():
                    if not isinstance(item, str):
                        self.fail(f"{path}.{key}", f"must be a string, not {describe(item)} (quote it)")
                return {str(k): v for k, v in value.items()}
            return copy.deepcopy(value)
        return self._scalar(tp, value, path)

    def _scalar(self, tp: Any, value: Any, path: str) -> Any:
        if tp is Quantity:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                self.fail(path, f"must be a quantity such as 500m, 2 or 16Gi, not {describe(value)}")
                return Quantity("")
            try:
                parse_quantity(str(value))
            except ValueError as e:
                self.fail(path, str(e))
            return Quantity(str(value))
        ok = {
            str: isinstance(value, str),
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
        }[tp]
        if not ok:
            hint = " (quote it)" if tp is str and isinstance(value, (int, float, bool)) else ""
            self.fail(path, f"must be {_type_name(tp)}, not {describe(value)}{hint}")
            return value
        if tp is float and not math.isfinite(value):
            self.fail(path, f"must be a finite number, not {value}")
        if tp is int and not INT32_MIN <= value <= INT32_MAX:  # every count and duration is an int32 in the CRDs
            self.fail(path, f"must be between {INT32_MIN} and {INT32_MAX}, not {value}")
        return float(value) if tp is float else value

    def _dataclass(self, cls: type, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            self.fail(path or "(top level)", f"must be a map, not {describe(value)}")
            return None
        known = field_types(cls)
        for key in value:
            if key not in known:
                where = f"{path}.{key}" if path else str(key)
                self.problems.append(unknown_key(str(key), path, list(known), self.source(where) or "values"))
        kwargs = {}
        for f in dataclasses.fields(cls):
            key = camel(f.name)
            where = f"{path}.{key}" if path else key
            if key not in value:
                self.fail(where, "missing (the chart's values.yaml must define every key)")
                kwargs[f.name] = None
            else:
                kwargs[f.name] = self.convert(known[key], value[key], where)
        return cls(**kwargs)


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return "a map" if isinstance(value, dict) else "a list"
    return repr(value)
