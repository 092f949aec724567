"""The layers a config is built from (values files, `--set`, flags) and how they merge."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args, get_origin

import yaml

from inferkit.config.convert import is_optional, strip_optional, unknown_key
from inferkit.config.encoding import Quantity, load_yaml, parse_range
from inferkit.config.schema import Config, RunOptions, camel, field_types, run_flag


# Source names of the first and the last layer.
DEFAULTS = "defaults"
FLAGS = "flags"


@dataclass(frozen=True)
class Layer:
    """One source of values, e.g. ("values file prod.yaml", {...})."""

    source: str
    values: dict


def merge_layers(layers: list[Layer]) -> tuple[dict, dict[str, str]]:
    """Deep-merge layers in order (maps merge, everything else replaces); returns values and,
    for every path a layer set, the layer's name (so errors can say where a value came from)."""
    merged: dict = {}
    origin: dict[str, str] = {}

    def merge(into: dict, layer: dict, prefix: str, source: str) -> None:
        for key, value in layer.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value, path + ".", source)
            else:
                into[key] = copy.deepcopy(value)
                origin[path] = source

    for layer in layers:
        merge(merged, layer.values, "", layer.source)
    return merged, origin


def _split_path(path: str) -> list[str]:
    """Split `a.b\\.c.d` on unescaped dots, so map keys such as label names can hold dots."""
    parts, current, escaped = [], "", False
    for char in path:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _target_type(parts: list[str]) -> tuple[Any, str | None]:
    """The declared type at a `--set` path, or an error message when the path names no field."""
    tp: Any = Config
    for depth, key in enumerate(parts):
        if not key:
            return None, f"{'.'.join(parts)}: empty key in the path"
        tp = strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            known = field_types(tp)
            if key not in known:
                return None, unknown_key(key, ".".join(parts[:depth]), list(known), "--set")
            tp = known[key]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1] if get_args(tp) else Any
        elif tp is dict or tp is Any:
            tp = Any
        else:
            return None, f"{'.'.join(parts)}: {'.'.join(parts[:depth])} is not a map [--set]"
    return tp, None


def set_layer(assignments: list[str]) -> tuple[Layer, list[str]]:
    """Parse `--set key.path=value` items. A value for a string field is taken verbatim; others are
    read as YAML (numbers, booleans, null, [lists], {maps})."""
    values: dict = {}
    problems: list[str] = []
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected key.path=value")
            continue
        parts = _split_path(key)
        tp, problem = _target_type(parts)
        if problem:
            problems.append(problem)
            continue
        if strip_optional(tp) in (str, Quantity) and not (is_optional(tp) and raw == "null"):
            value: Any = raw
        else:
            try:
                value = load_yaml(raw) if raw else ""
            except yaml.YAMLError as e:
                problems.append(f"--set {key}: value is not valid YAML ({_first_line(e)})")
                continue
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {key}: conflicts with an earlier --set")
                break
        else:
            node[parts[-1]] = value
    return Layer("--set", values), problems


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())


def parse_node_count(text: str, flag: str) -> tuple[dict, str | None]:
    """`N` pins a group at N nodes; `MIN:MAX` lets the autoscaler move between the bounds."""
    try:
        lo, hi, is_range = parse_range(text)
    except ValueError as e:
        return {}, f"{flag} {e}"
    if not is_range:
        return {"replicas": lo, "minReplicas": None, "maxReplicas": None}, None
    return {"replicas": lo, "minReplicas": lo, "maxReplicas": hi}, None


def flag_layer(
    *,
    name: str | None = None,
    namespace: str | None = None,
    cpu_nodes: str | None = None,
    gpu_nodes: str | None = None,
    gpus_per_node: int | None = None,
    gpu_type: str | None = None,
    cpus_per_node: str | None = None,
    memory_per_node: str | None = None,
    image: str | None = None,
    kuberay_version: str | None = None,
    run: dict[str, Any] | None = None,
) -> tuple[Layer, list[str]]:
    """The command-line flags as the last layer; flags left unset (None) change nothing."""
    values: dict = {}
    problems: list[str] = []
    if name is not None:
        values["name"] = name
    if namespace is not None:
        values["namespace"] = namespace
    for group, text, flag in (("cpuWorkers", cpu_nodes, "--cpu-nodes"), ("gpuWorkers", gpu_nodes, "--gpu-nodes")):
        if text is not None:
            counts, problem = parse_node_count(text, flag)
            values.setdefault(group, {}).update(counts)
            if problem:
                problems.append(problem)
    gpu = values.setdefault("gpuWorkers", {})
    if gpus_per_node is not None:
        gpu["gpusPerNode"] = gpus_per_node
    if gpu_type is not None:
        gpu["gpuType"] = gpu_type
    for group in ("cpuWorkers", "gpuWorkers"):
        if cpus_per_node is not None:
            values.setdefault(group, {})["cpu"] = cpus_per_node
        if memory_per_node is not None:
            values.setdefault(group, {})["memory"] = memory_per_node
    if image is not None:
        values["image"] = {"cpu": image, "gpu": image}
    if kuberay_version is not None:
        values["kuberayVersion"] = kuberay_version
    run_values = {camel(k): v for k, v in (run or {}).items() if v is not None}
    if run_values:
        values["run"] = run_values
    return Layer(FLAGS, {k: v for k, v in values.items() if v != {}}), problems


_INDEX = re.compile(r"\[\d+\]$")


def name_flags(problems: list[str], source: Callable[[str], str]) -> list[str]:
    """A problem with a job argument the command line set names the flag the user typed
    (`--batch-size: ...`, not `run.batchSize: ...`); values files and `--set` keep the key path."""
    flags = {f"run.{camel(f.name)}": run_flag(f.name) for f in dataclasses.fields(RunOptions)}
    named = []
    for problem in problems:
        path, sep, message = problem.partition(": ")
        key = _INDEX.sub("", path)
        if sep and key in flags and source(key) == FLAGS:
            problem = f"{flags[key]}: {message.removesuffix(f' [{FLAGS}]')}"
        named.append(problem)
    return named
