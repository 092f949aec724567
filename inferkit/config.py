"""The typed, frozen configuration, built once from layers: defaults < preset < values files < --set < flags.

Pure: callers hand in already-parsed layers (see `inferkit.chart` for the files). Every problem is
collected with its field path and the layer it came from, and reported together as one ConfigError.
Keys are camelCase in values files and `--set` (as in Helm charts); fields are snake_case here.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from inferkit.errors import ConfigError

RAYJOB = "RayJob"
RAYCLUSTER = "RayCluster"
# KubeRay derives Service and Pod names from these, hence limits below the 63 of a DNS label.
MAX_NAME_LENGTH = {RAYJOB: 47, RAYCLUSTER: 53}

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

TASKS = ("embedding", "image-classification", "text-classification")


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


def _help(text: str) -> Any:
    return field(metadata={"help": text})


@dataclass(frozen=True)
class Image:
    cpu: str
    gpu: str
    pull_policy: Literal["Always", "IfNotPresent", "Never"]
    pull_secrets: tuple[str, ...]


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True)
class ModelCache:
    claim_name: str
    mount_path: str


@dataclass(frozen=True)
class Head:
    cpu: Quantity
    memory: Quantity
    node_selector: dict[str, str]
    tolerations: tuple[dict, ...]
    affinity: dict
    ray_start_params: dict[str, str]


@dataclass(frozen=True)
class Workers:
    replicas: int
    min_replicas: int | None
    max_replicas: int | None
    cpu: Quantity
    memory: Quantity
    node_selector: dict[str, str]
    tolerations: tuple[dict, ...]
    affinity: dict
    ray_start_params: dict[str, str]
    ray_resources: dict[str, str]

    @property
    def bounds(self) -> tuple[int, int]:
        """(min, max) replicas; unset bounds equal `replicas`."""
        low = self.replicas if self.min_replicas is None else self.min_replicas
        high = self.replicas if self.max_replicas is None else self.max_replicas
        return low, high

    @property
    def enabled(self) -> bool:
        return max(self.replicas, self.bounds[1]) > 0


@dataclass(frozen=True)
class GpuWorkers(Workers):
    gpus_per_node: int
    gpu_type: str
    accelerator_label: str


@dataclass(frozen=True)
class Autoscaler:
    idle_timeout_seconds: int
    upscaling_mode: Literal["Default", "Aggressive", "Conservative"]
    cpu: Quantity
    memory: Quantity


@dataclass(frozen=True)
class Submitter:
    cpu: Quantity
    memory: Quantity


@dataclass(frozen=True)
class Job:
    shutdown_after_job_finishes: bool
    ttl_seconds_after_finished: int
    active_deadline_seconds: int | None
    pre_running_deadline_seconds: int | None
    backoff_limit: int
    submission_mode: Literal["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]
    suspend: bool
    deletion_rules: tuple[dict, ...]
    runtime_env: dict
    submitter: Submitter


@dataclass(frozen=True)
class Scheduling:
    kueue_queue: str
    volcano_queue: str
    yunikorn_queue: str
    gang_scheduling: bool


@dataclass(frozen=True)
class RunOptions:
    """The job's own arguments: flags of `inferkit run`, and of `render`/`submit` for the entrypoint."""

    task: Literal["embedding", "image-classification", "text-classification"] = _help(
        "What to compute: embeddings, or class labels for images or texts.")
    model: tuple[str, ...] = _help(
        "Hugging Face model id or local directory; repeat for an ensemble. Default: the bundled demo model.")
    ensemble: Literal["max-confidence", "mean"] = _help(
        "How several --model values combine: the most confident model's label, or the mean of probabilities.")
    input: str = _help(
        "Folder of images, or parquet/jsonl/csv files; local, s3:// or gs://. Default: the bundled sample.")
    output: str = _help(
        "Output parquet folder (local, s3:// or gs://). Default: ./inferkit-output/<run id>.")
    input_format: Literal["auto", "images", "parquet", "jsonl", "csv"] = _help(
        "Input format; auto looks at the file extensions.")
    id_column: str = _help("Column that identifies a row in the output (default: path for images, else 'id' if present).")
    text_column: str = _help("Column holding the text for text tasks.")
    image_column: str = _help("Column holding encoded image bytes in tabular inputs.")
    device: Literal["auto", "cpu", "gpu"] = _help("Run the model on GPUs, CPUs, or whatever the cluster has.")
    batch_size: int | None = _help("Rows per model call (default: planned from device memory or cores).")
    actors: str | None = _help("Inference actor pool size, N or MIN:MAX (default: planned).")
    num_cpus_per_actor: float | None = _help("CPUs each inference actor holds (default: planned).")
    num_gpus_per_actor: float | None = _help("GPUs each inference actor holds (default: planned).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _help(
        "auto picks bf16 where the hardware has it and the first batch agrees with fp32 on >= 99% of rows.")
    max_error_fraction: float = _help(
        "Exit non-zero when more than this fraction of rows failed, or when an input file could not be read "
        "at all (its rows are missing); the output is written either way.")
    overwrite: bool = _help("Replace an existing output folder.")
    trust_remote_code: bool = _help("Allow models that ship their own Python code (off: only built-in classes).")


@dataclass(frozen=True)
class Config:
    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    pod_annotations: dict[str, str]
    image: Image
    service_account_name: str
    priority_class_name: str
    pod_security_context: dict
    container_security_context: dict
    env: tuple[dict, ...]
    env_from: tuple[dict, ...]
    volumes: tuple[dict, ...]
    volume_mounts: tuple[dict, ...]
    hf_token_secret: SecretKey
    model_cache: ModelCache
    head: Head
    cpu_workers: Workers
    gpu_workers: GpuWorkers
    autoscaler: Autoscaler
    job: Job
    scheduling: Scheduling
    run: RunOptions

    @property
    def autoscaling(self) -> bool:
        return any(g.enabled and g.bounds[0] < g.bounds[1] for g in (self.cpu_workers, self.gpu_workers))


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# ---------------------------------------------------------------------------------------------
# Layers


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


def _field_types(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {camel(f.name): hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, path: str, known: list[str], source: str) -> str:
    hint = difflib.get_close_matches(key, known, n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    where = f"{path}.{key}" if path else key
    return f"{where}: unknown key{suggestion} [{source}]"


def _target_type(parts: list[str]) -> tuple[Any, str | None]:
    """The declared type at a `--set` path, or an error message when the path names no field."""
    tp: Any = Config
    for depth, key in enumerate(parts):
        if not key:
            return None, f"{'.'.join(parts)}: empty key in the path"
        tp = strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            known = _field_types(tp)
            if key not in known:
                return None, _unknown_key(key, ".".join(parts[:depth]), list(known), "--set")
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
        if strip_optional(tp) in (str, Quantity) and not (_is_optional(tp) and raw == "null"):
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


_RANGE = re.compile(r"^(-?[0-9]+)(?::(-?[0-9]+))?$")  # not int()'s looser "1_0" or " 1"


def parse_range(text: str) -> tuple[int, int, bool]:
    """`N` or `MIN:MAX` -> (min, max, whether a range was given); ValueError with the reason."""
    match = _RANGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not N or MIN:MAX with whole numbers")
    low, high = match.group(1), match.group(2)
    return int(low), int(high if high is not None else low), high is not None


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
    run_values = {camel(k): v for k, v in (run or {}).items() if v is not None}
    if run_values:
        values["run"] = run_values
    return Layer("flags", {k: v for k, v in values.items() if v != {}}), problems


# ---------------------------------------------------------------------------------------------
# Conversion: merged values -> typed, frozen dataclasses


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def strip_optional(tp: Any) -> Any:
    if _is_optional(tp):
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


class _Converter:
    def __init__(self, origin: dict[str, str]):
        self.origin = origin
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        source = self._source(path)
        self.problems.append(f"{path}: {message}" + (f" [{source}]" if source else ""))

    def _source(self, path: str) -> str:
        path = re.sub(r"\[\d+\]", "", path)  # a list item comes from where its list was set
        while path:
            if path in self.origin:
                return self.origin[path]
            path = path.rpartition(".")[0]
        return ""

    def convert(self, tp: Any, value: Any, path: str) -> Any:
        if _is_optional(tp):
            return None if value is None else self.convert(strip_optional(tp), value, path)
        if dataclasses.is_dataclass(tp):
            return self._dataclass(tp, value, path)
        origin = get_origin(tp)
        if origin is Literal:
            if value not in get_args(tp):
                self.fail(path, f"must be {_type_name(tp)}, not {value!r}")
            return value
        if origin is tuple:
            if not isinstance(value, (list, tuple)):
                self.fail(path, f"must be a list, not {_describe(value)}")
                return ()
            item = get_args(tp)[0]
            return tuple(self.convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                self.fail(path, f"must be a map, not {_describe(value)}")
                return {}
            if origin is dict and get_args(tp)[1] is str:
                for key, item in value.items():
                    if not isinstance(item, str):
                        self.fail(f"{path}.{key}", f"must be a string, not {_describe(item)} (quote it)")
                return {str(k): v for k, v in value.items()}
            return copy.deepcopy(value)
        return self._scalar(tp, value, path)

    def _scalar(self, tp: Any, value: Any, path: str) -> Any:
        if tp is Quantity:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                self.fail(path, f"must be a quantity such as 500m, 2 or 16Gi, not {_describe(value)}")
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
            self.fail(path, f"must be {_type_name(tp)}, not {_describe(value)}{hint}")
            return value
        if tp is float and not math.isfinite(value):
            self.fail(path, f"must be a finite number, not {value}")
        if tp is int and not INT32_MIN <= value <= INT32_MAX:  # every count and duration is an int32 in the CRDs
            self.fail(path, f"must be between {INT32_MIN} and {INT32_MAX}, not {value}")
        return float(value) if tp is float else value

    def _dataclass(self, cls: type, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            self.fail(path or "(top level)", f"must be a map, not {_describe(value)}")
            return None
        known = _field_types(cls)
        for key in value:
            if key not in known:
                where = f"{path}.{key}" if path else str(key)
                self.problems.append(_unknown_key(str(key), path, list(known), self._source(where) or "values"))
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


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return "a map" if isinstance(value, dict) else "a list"
    return repr(value)


# ---------------------------------------------------------------------------------------------
# Checks on the typed config: what the type system cannot say


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Environment variable names that carry credentials: their values must come from a Secret.
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_KEY)", re.IGNORECASE)
_REMOTE_URI = re.compile(r"^(s3|gs|gcs|abfs|abfss|hdfs)://", re.IGNORECASE)


def check_name(name: str, kind: str) -> list[str]:
    limit = MAX_NAME_LENGTH[kind]
    problems = []
    if len(name) > limit:
        problems.append(f"name: {name!r} is {len(name)} characters; a {kind} name may have at most {limit}")
    if not _DNS1035.match(name):
        problems.append(
            f"name: {name!r} is not a DNS-1035 label (lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit)")
    return problems


def qualified_name_problem(key: str) -> str | None:
    """Kubernetes label/annotation key rules: optional DNS-subdomain prefix, name <= 63."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return "its prefix must be a DNS subdomain (lowercase, dots, at most 253 characters)"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return "its name must be 1-63 characters of letters, digits, '-', '_' or '.', alphanumeric at both ends"
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        return "a label value has at most 63 characters of letters, digits, '-', '_' or '.', alphanumeric at both ends"
    return None


def free_text_problem(text: str) -> str | None:
    """What a string must be to survive YAML, the API server and two shells unchanged."""
    if "\x00" in text:
        return "contains a NUL character, which no command line can carry"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (it contains a lone surrogate)"
    return None


def is_remote_uri(path: str) -> bool:
    return bool(_REMOTE_URI.match(path))


def parse_actor_bounds(text: str) -> tuple[int, int]:
    """`N` or `MIN:MAX` actors -> (min, max), raising ValueError with the reason."""
    lo, hi, _ = parse_range(text)
    if lo < 1 or hi < lo:
        raise ValueError(f"{text!r}: need 1 <= MIN <= MAX")
    return lo, hi


def check_run(run: RunOptions) -> list[str]:
    """Checks on the job's arguments; shared by `inferkit run` and the rendered entrypoint."""
    problems = []
    for name in ("input", "output", "id_column", "text_column", "image_column"):
        problem = free_text_problem(getattr(run, name))
        if problem:
            problems.append(f"run.{camel(name)}: {problem}")
    for i, model in enumerate(run.model):
        problem = "is empty" if not model.strip() else free_text_problem(model)
        if problem:
            problems.append(f"run.model[{i}]: {problem}")
    if run.batch_size is not None and run.batch_size < 1:
        problems.append(f"run.batchSize: must be at least 1, not {run.batch_size}")
    if run.actors is not None:
        try:
            parse_actor_bounds(run.actors)
        except ValueError as e:
            problems.append(f"run.actors: {e}")
    for name in ("num_cpus_per_actor", "num_gpus_per_actor"):
        value = getattr(run, name)
        if value is not None and not value > 0:
            problems.append(f"run.{camel(name)}: must be greater than 0, not {value}")
    if not 0 <= run.max_error_fraction <= 1:
        problems.append(f"run.maxErrorFraction: must be between 0 and 1, not {run.max_error_fraction}")
    if run.device == "cpu" and run.num_gpus_per_actor:
        problems.append("run.numGpusPerActor: conflicts with device 'cpu'")
    return problems


MIN_MEMORY = 2**20  # no container starts with less than a MiB; "500m" memory is half a byte


def _check_quantities(path: str, cpu: str, memory: str) -> list[str]:
    problems = []
    for what, value, least in (("cpu", cpu, Decimal("0.001")), ("memory", memory, MIN_MEMORY)):
        try:
            if parse_quantity(value) < least:
                problems.append(f"{path}.{what}: {value!r} is too small" + (
                    " (memory takes Mi or Gi, e.g. 512Mi; m means a thousandth)" if what == "memory"
                    else "; at least 1m"))
        except ValueError:
            pass  # already reported by the converter
    return problems


def _check_group(path: str, group: Workers) -> list[str]:
    problems = []
    for what in ("replicas", "min_replicas", "max_replicas"):
        value = getattr(group, what)
        if value is not None and value < 0:
            problems.append(f"{path}.{camel(what)}: must not be negative, not {value}")
    low, high = group.bounds
    if not problems and not low <= group.replicas <= high:
        problems.append(
            f"{path}: need minReplicas <= replicas <= maxReplicas, got {low} <= {group.replicas} <= {high}")
    return problems + _check_quantities(path, group.cpu, group.memory)


def _check_metadata(cfg: Config) -> list[str]:
    problems = []
    for path, mapping, values_are_labels in (
        ("labels", cfg.labels, True), ("annotations", cfg.annotations, False),
        ("podAnnotations", cfg.pod_annotations, False),
    ):
        for key, value in mapping.items():
            problem = qualified_name_problem(key)
            if problem:
                problems.append(f"{path}: key {key!r} is invalid: {problem}")
            if values_are_labels and isinstance(value, str):
                problem = label_value_problem(value)
                if problem:
                    problems.append(f"{path}.{key}: {value!r} is invalid: {problem}")
    return problems


def _check_env(cfg: Config) -> list[str]:
    problems = []
    runtime_vars = cfg.job.runtime_env.get("env_vars") if isinstance(cfg.job.runtime_env, dict) else None
    for name in runtime_vars if isinstance(runtime_vars, dict) else {}:
        if _SECRET_NAME.search(str(name)):
            problems.append(f"job.runtimeEnv.env_vars.{name}: a credential must not be inlined in the RayJob; put it "
                            "in a Secret and reference it from env (valueFrom.secretKeyRef) or use hfTokenSecret")
    for i, var in enumerate(cfg.env):
        if not isinstance(var, dict) or not isinstance(var.get("name"), str):
            problems.append(f"env[{i}]: must be a map with a string `name` (a Kubernetes EnvVar)")
            continue
        name = var["name"]
        if "value" in var and not isinstance(var["value"], str):
            problems.append(f"env[{i}] ({name}): value must be a string, not {_describe(var['value'])} (quote it)")
        if "value" in var and _SECRET_NAME.search(name):
            problems.append(
                f"env[{i}] ({name}): a credential must not be inlined; put it in a Secret and use "
                "valueFrom.secretKeyRef (or hfTokenSecret for HF_TOKEN)")
    return problems


def _output_is_kept(cfg: Config) -> bool:
    """Whether the job's output outlives the pods: an object store, or a path on a mounted volume."""
    output = cfg.run.output
    if is_remote_uri(output):
        return True
    mounts = [m.get("mountPath", "") for m in cfg.volume_mounts if isinstance(m, dict)]
    return any(m and (output == m or output.startswith(m.rstrip("/") + "/")) for m in mounts)


def check_config(cfg: Config, kind: str, default_run: RunOptions) -> list[str]:
    problems = check_name(cfg.name, kind)
    if cfg.namespace and (len(cfg.namespace) > 63 or not _DNS1123.match(cfg.namespace)):
        problems.append(f"namespace: {cfg.namespace!r} is not a valid namespace name (DNS-1123 label)")
    if not cfg.image.cpu.strip():
        problems.append("image.cpu: must not be empty")
    if cfg.gpu_workers.enabled and not cfg.image.gpu.strip():
        problems.append("image.gpu: must not be empty when there are GPU workers")
    problems += _check_quantities("head", cfg.head.cpu, cfg.head.memory)
    problems += _check_quantities("job.submitter", cfg.job.submitter.cpu, cfg.job.submitter.memory)
    problems += _check_quantities("autoscaler", cfg.autoscaler.cpu, cfg.autoscaler.memory)
    group_problems = _check_group("cpuWorkers", cfg.cpu_workers) + _check_group("gpuWorkers", cfg.gpu_workers)
    problems += group_problems
    if cfg.gpu_workers.gpus_per_node < 1:
        problems.append(f"gpuWorkers.gpusPerNode: must be at least 1, not {cfg.gpu_workers.gpus_per_node}")
    if cfg.gpu_workers.gpu_type and not cfg.gpu_workers.accelerator_label:
        problems.append("gpuWorkers.acceleratorLabel: must name the node label to select gpuType "
                        f"{cfg.gpu_workers.gpu_type!r} on")
    if not group_problems and not (cfg.cpu_workers.enabled or cfg.gpu_workers.enabled):
        problems.append("no worker nodes: the head runs no work, so ask for --cpu-nodes N or --gpu-nodes N")
    if cfg.autoscaler.idle_timeout_seconds < 0:
        problems.append("autoscaler.idleTimeoutSeconds: must not be negative")
    problems += _check_metadata(cfg)
    problems += _check_env(cfg)
    for path, group in (("cpuWorkers", cfg.cpu_workers), ("gpuWorkers", cfg.gpu_workers)):
        if "num-gpus" in group.ray_start_params:
            problems.append(f"{path}.rayStartParams.num-gpus: KubeRay takes it from the container's nvidia.com/gpu "
                            "limit (gpuWorkers.gpusPerNode, --gpus-per-node); do not set it")
    if cfg.job.submission_mode == "SidecarMode":
        problems.append("job.submissionMode: SidecarMode makes KubeRay add a submitter sidecar whose requests are "
                        "below its limits (500m/200Mi vs 1/1Gi), and no field changes them; use K8sJobMode")
    if kind == RAYJOB and cfg.run.device == "gpu" and not cfg.gpu_workers.enabled:
        problems.append("run.device: 'gpu' needs GPU workers (--gpu-nodes N)")
    per_actor = cfg.run.num_gpus_per_actor
    if cfg.gpu_workers.enabled and per_actor and per_actor > cfg.gpu_workers.gpus_per_node:
        problems.append(f"run.numGpusPerActor: {per_actor:g} is more than a GPU node has "
                        f"({cfg.gpu_workers.gpus_per_node}), so no actor could ever start")
    head_cpus = cfg.head.ray_start_params.get("num-cpus")
    if head_cpus not in (None, "0"):
        problems.append(f"head.rayStartParams.num-cpus: the head runs no work, so it stays \"0\" (got {head_cpus!r})")
    queues = [camel(q) for q in ("kueue_queue", "volcano_queue", "yunikorn_queue") if getattr(cfg.scheduling, q)]
    if len(queues) > 1:
        problems.append(f"scheduling: choose one queueing system, not {' and '.join(queues)}")
    if cfg.job.ttl_seconds_after_finished < 0:
        problems.append("job.ttlSecondsAfterFinished: must not be negative")
    if cfg.job.backoff_limit < 0:
        problems.append("job.backoffLimit: must not be negative")
    for path, value in (("job.activeDeadlineSeconds", cfg.job.active_deadline_seconds),
                        ("job.preRunningDeadlineSeconds", cfg.job.pre_running_deadline_seconds)):
        if value is not None and value <= 0:
            problems.append(f"{path}: must be greater than 0 (or null for no deadline), not {value}")
    problems += check_run(cfg.run)
    if kind == RAYCLUSTER:
        changed = [camel(f.name) for f in dataclasses.fields(RunOptions)
                   if getattr(cfg.run, f.name) != getattr(default_run, f.name)]
        if changed:
            problems.append(f"run.{changed[0]}: job arguments need a RayJob; a RayCluster has no entrypoint "
                            "(submit the job with `inferkit submit --ray-address`)")
    elif cfg.run.input and not cfg.run.output:
        problems.append("run.output: required with --input on a cluster; use s3://..., gs://... or a path on a "
                        "mounted volume, or the results vanish with the pods")
    elif cfg.run.output and not _output_is_kept(cfg):
        problems.append(f"run.output: {cfg.run.output!r} is a path inside the pods and would vanish with them; "
                        "use s3://..., gs://... or a path under one of volumeMounts")
    return problems


# ---------------------------------------------------------------------------------------------
# Entry points


def build_config(defaults: dict, overlays: list[Layer], kind: str = RAYJOB,
                 extra_problems: list[str] = ()) -> Config:
    """Lay the overlays over the chart defaults, convert to the typed config and check it; raise
    ConfigError with every problem (`extra_problems` are ones the caller found while parsing)."""
    merged, origin = merge_layers([Layer("defaults", defaults), *overlays])
    converter = _Converter(origin)
    cfg = converter.convert(Config, merged, "")
    problems = list(extra_problems) + converter.problems
    if not converter.problems:  # checks need a complete, well-typed config
        default_run = converter.convert(RunOptions, defaults.get("run", {}), "run")
        problems += check_config(cfg, kind, default_run)
    if problems:
        raise ConfigError(problems)
    return cfg


def build_run_options(defaults: dict, flags: dict[str, Any]) -> RunOptions:
    """RunOptions for `inferkit run`: the chart's `run:` defaults with the flags laid over."""
    layer = {camel(k): v for k, v in flags.items() if v is not None}
    merged, origin = merge_layers([Layer("defaults", defaults), Layer("flags", layer)])
    converter = _Converter(origin)
    run = converter.convert(RunOptions, merged, "run")
    problems = converter.problems or check_run(run)
    if problems:
        raise ConfigError(problems)
    return run


def run_fields() -> list[tuple[str, Any, str]]:
    """(name, type, help) for each job argument, for the CLI to turn into flags."""
    hints = get_type_hints(RunOptions)
    return [(f.name, hints[f.name], f.metadata["help"]) for f in dataclasses.fields(RunOptions)]
