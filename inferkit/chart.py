"""The chart on disk: values.yaml, presets and templates, plus the user's values files.

The I/O half of building a config; `inferkit.config` does the pure half.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from inferkit.config import (RAYJOB, Config, Layer, RunOptions, build_config, build_run_options, flag_layer, load_yaml,
                             set_layer)
from inferkit.console import say
from inferkit.errors import ConfigError
from inferkit.kuberay import version_problems, version_warnings
from inferkit.render import render_object, template_environment
from inferkit.validate import kuberay_rules, kuberay_warnings, schema_problems


@cache
def chart_dir() -> Path:
    """charts/inferkit inside an installed wheel, or in the source tree for an editable install."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "charts" / "inferkit", package.parent / "charts" / "inferkit"):
        if (candidate / "values.yaml").is_file():
            return candidate
    raise ConfigError([f"the inferkit chart is missing (looked in {package / 'charts'}); reinstall inferkit"])


def _load_yaml_mapping(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{what}: cannot read {path}: {e.strerror or e}"]) from e
    except UnicodeDecodeError as e:
        raise ConfigError([f"{what}: {path} is not UTF-8 text (byte {e.start})"]) from e
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        reason = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError([f"{what}:{where}: {reason}"]) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{what}: must be a map of keys to values, not {type(data).__name__}"])
    return data


@cache
def default_values() -> dict:
    return _load_yaml_mapping(chart_dir() / "values.yaml", "chart values.yaml")


def presets() -> list[str]:
    return sorted(p.stem for p in (chart_dir() / "presets").glob("*.yaml"))


def load_preset(name: str) -> Layer:
    path = chart_dir() / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError([f"--preset {name!r}: no such preset (have: {', '.join(presets())})"])
    return Layer(f"preset {name}", _load_yaml_mapping(path, f"preset {name}"))


def load_config(
    *,
    kind: str = RAYJOB,
    preset: str | None = None,
    values_files: tuple[str, ...] = (),
    sets: tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> Config:
    """The one config for render and submit: defaults < preset < values files < --set < flags."""
    layers = [load_preset(preset)] if preset else []
    problems: list[str] = []
    for file in values_files:
        try:
            layers.append(Layer(f"values file {file}", _load_yaml_mapping(Path(file), f"values file {file}")))
        except ConfigError as e:
            problems += e.problems
    set_values, set_problems = set_layer(list(sets))
    flag_values, flag_problems = flag_layer(**(flags or {}))
    layers += [set_values, flag_values]
    return build_config(default_values(), layers, kind, problems + set_problems + flag_problems)


def load_run_options(flags: dict[str, Any]) -> RunOptions:
    return build_run_options(default_values()["run"], flags)


def default_run_options() -> RunOptions:
    return load_run_options({})


def render_checked(cfg: Config, kind: str = RAYJOB, schemas: dict[str, dict] | None = None) -> dict:
    """Render the object and check it against KubeRay's rules and, when given, the CRD schemas;
    every problem is reported at once."""
    env = template_environment(jinja2.FileSystemLoader(str(chart_dir() / "templates")))
    obj = render_object(cfg, kind, default_run_options(), env)
    problems = kuberay_rules(obj) + version_problems(obj, cfg.kuberay_version)
    if schemas is not None:
        problems += schema_problems(obj, schemas)
    if problems:
        raise ConfigError(problems)
    for warning in kuberay_warnings(obj, cfg.kuberay_version) + version_warnings(obj, cfg.kuberay_version):
        say(f"warning: {warning}")
    return obj


def write_manifest(out_dir: str, obj: dict, text: str, command: str, output_format: str) -> Path:
    """Write a rendered manifest headed by the command that made it, so a stale file can be spotted."""
    folder = Path(out_dir)
    path = folder / f"{obj['metadata']['name']}-{obj['kind'].lower()}.{output_format}"
    if output_format == "yaml":
        text = f"# Rendered by inferkit; regenerate with:\n#   {command}\n{text}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"--out-dir {out_dir}: cannot write {path}: {e.strerror or e}"]) from e
    return path
