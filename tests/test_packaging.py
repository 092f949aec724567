"""The package as users get it: a wheel carrying the chart, one Ray version everywhere, a light CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from inferkit import RAY_VERSION, __version__

REPO = Path(__file__).resolve().parents[1]


def test_import_of_the_cli_stays_light():
    code = ("import sys, inferkit.cli; heavy = [m for m in ('ray', 'torch', 'transformers', 'kubernetes', "
            "'jsonschema', 'pyarrow') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_one_ray_and_package_version_everywhere():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
    pins = [d for d in project["optional-dependencies"]["job"] if d.startswith("ray[")]
    assert pins == [f"ray[data,default]=={RAY_VERSION}"]
    images = yaml.safe_load((REPO / "charts" / "inferkit" / "values.yaml").read_text())["image"]
    assert images["cpu"].endswith(f":{__version__}-cpu") and images["gpu"].endswith(f":{__version__}-gpu")


def _config_paths(cls=None, prefix=""):
    """Every field path of the typed config, camelCase as in values.yaml."""
    import dataclasses
    from typing import get_type_hints

    from inferkit.config import Config, camel

    cls = cls or Config
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{camel(f.name)}"
        yield path
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _config_paths(hints[f.name], path + ".")


def _has_comment_above(lines: list[str], number: int, key_line) -> bool:
    """A comment at the key's indent directly above it, or above the run of sibling keys it ends."""
    indent = len(lines[number]) - len(lines[number].lstrip())
    for text in reversed(lines[:number]):
        stripped = text.lstrip()
        depth = len(text) - len(stripped)
        if stripped.startswith("#") and depth == indent:
            return True
        if not stripped or depth < indent or (depth == indent and not key_line.match(text)):
            return False
    return False


def test_values_yaml_documents_every_key():
    """Each config key in values.yaml has a comment above it, alone or shared with the sibling keys
    right under that comment (free-form Kubernetes maps inside values are not config keys)."""
    lines = (REPO / "charts" / "inferkit" / "values.yaml").read_text().splitlines()
    key_line = re.compile(r"^(\s*)([A-Za-z][\w]*):")
    where, stack = {}, []
    for number, line in enumerate(lines):
        match = key_line.match(line)
        if match:
            indent = len(match.group(1))
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, match.group(2))]
            where.setdefault(".".join(k for _, k in stack), number)
    undocumented = [path for path in _config_paths() if not _has_comment_above(lines, where[path], key_line)]
    assert undocumented == []


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_renders(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = wheels.glob("inferkit-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([str(venv / "bin" / "inferkit"), "render", "--preset", "kind"], cwd=elsewhere,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "tests" / "golden" / "kind.yaml").read_text()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import inferkit.chart as c; print(c.chart_dir())"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout
    assert str(venv) in where  # the chart came from the wheel, not from this checkout
