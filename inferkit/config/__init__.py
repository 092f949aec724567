"""The typed, frozen configuration, built once from layers: defaults < preset < values files < --set < flags.

Pure: callers hand in already-parsed layers (see `inferkit.chart` for the files). Every problem is
collected with its field path and the layer it came from, and reported together as one ConfigError.
Keys are camelCase in values files and `--set` (as in Helm charts); fields are snake_case here.

The parts, as kind splits its config API: `schema` (the types), `encoding` (YAML, quantities, counts),
`layers` (values files, `--set`, flags), `convert` (values -> types) and `checks`; this module builds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

from inferkit.config.checks import (DNS1123_SUBDOMAIN, check_config, check_name, check_run, free_text_problem,
                                    is_remote_uri, label_value_problem, nesting_problem, parse_actor_bounds,
                                    qualified_name_problem)
from inferkit.config.convert import Converter, strip_optional
from inferkit.config.encoding import Quantity, load_yaml, parse_quantity, parse_range
from inferkit.config.layers import (DEFAULTS, FLAGS, Layer, flag_layer, merge_layers, name_flags, parse_node_count,
                                    set_layer)
from inferkit.config.schema import (INT32_MAX, INT32_MIN, MAX_NAME_LENGTH, RAYCLUSTER, RAYJOB, TASKS, Autoscaler, Config,
                                    GpuWorkers, Head, Image, Job, ModelCache, RunOptions, Scheduling, SecretKey,
                                    Submitter, Workers, camel, run_flag)
from inferkit.errors import ConfigError

__all__ = [
    "DNS1123_SUBDOMAIN", "INT32_MAX", "INT32_MIN", "MAX_NAME_LENGTH", "RAYCLUSTER", "RAYJOB", "TASKS", "Autoscaler",
    "Config", "GpuWorkers", "Head", "Image", "Job", "Layer", "ModelCache", "Quantity", "RunOptions", "Scheduling",
    "SecretKey", "Submitter", "Workers", "build_config", "build_run_options", "camel", "check_config", "check_name",
    "check_run", "flag_layer", "free_text_problem", "is_remote_uri", "label_value_problem", "load_yaml",
    "merge_layers", "nesting_problem", "parse_actor_bounds", "parse_node_count", "parse_quantity", "parse_range",
    "qualified_name_problem", "run_fields", "run_flag", "set_layer", "strip_optional",
]


def build_config(defaults: dict, overlays: list[Layer], kind: str = RAYJOB,
                 extra_problems: list[str] = ()) -> Config:
    """Lay the overlays over the chart defaults, convert to the typed config and check it; raise
    ConfigError with every problem (`extra_problems` are ones the caller found while parsing)."""
    merged, origin = merge_layers([Layer(DEFAULTS, defaults), *overlays])
    converter = Converter(origin)
    cfg = converter.convert(Config, merged, "")
    problems = list(extra_problems) + converter.problems
    if not converter.problems:  # checks need a complete, well-typed config
        cfg = _default_cpu_group(cfg, converter.source("cpuWorkers.replicas"))
        default_run = converter.convert(RunOptions, defaults.get("run", {}), "run")
        problems += check_config(cfg, kind, default_run)
    if problems:
        raise ConfigError(name_flags(problems, converter.source))
    return cfg


def _default_cpu_group(cfg: Config, replicas_source: str) -> Config:
    """values.yaml's CPU worker makes a bare `render` a job that runs; it stands in only while nothing
    asked for GPU workers, so `--gpu-nodes 4` alone gives GPU pods only."""
    if replicas_source == DEFAULTS and cfg.gpu_workers.enabled:
        return dataclasses.replace(cfg, cpu_workers=dataclasses.replace(cfg.cpu_workers, replicas=0))
    return cfg


def build_run_options(defaults: dict, flags: dict[str, Any]) -> RunOptions:
    """RunOptions for `inferkit run`: the chart's `run:` defaults with the flags laid over."""
    layer = {camel(k): v for k, v in flags.items() if v is not None}
    merged, origin = merge_layers([Layer(DEFAULTS, {"run": defaults}), Layer(FLAGS, {"run": layer})])
    converter = Converter(origin)
    run = converter.convert(RunOptions, merged["run"], "run")
    problems = converter.problems or check_run(run)
    if problems:
        raise ConfigError(name_flags(problems, converter.source))
    return run


def run_fields() -> list[tuple[str, Any, str]]:
    """(name, type, help) for each job argument, for the CLI to turn into flags."""
    hints = get_type_hints(RunOptions)
    return [(f.name, hints[f.name], f.metadata["help"]) for f in dataclasses.fields(RunOptions)]
