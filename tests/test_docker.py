"""The job images and the kind path, as far as this machine allows: the Dockerfile agrees with the
package (one Ray version, the entrypoint, the cache folder), and the kind end-to-end run where Docker,
kind, helm and kubectl exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from inferkit import RAY_VERSION, __version__

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert match, f"ARG {name} has no default"
    return match.group(1)


def test_ray_version_is_the_pinned_one():
    assert _arg("RAY_VERSION") == RAY_VERSION
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON}-${FLAVOR}" in DOCKERFILE
    job = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["job"]
    assert f"ray[data,default]=={_arg('RAY_VERSION')}" in job


def test_entrypoint_module_exists():
    cmd = re.search(r'^CMD \["(\S+)", "run"\]$', DOCKERFILE, re.MULTILINE)
    assert cmd, "the image runs `inferkit run` by default"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts[cmd.group(1)].partition(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), function))
    assert '"$(ls /tmp/dist/inferkit-*.whl)[job]"' in DOCKERFILE  # the wheel with the job extra


def test_image_matches_the_chart():
    values = yaml.safe_load((REPO / "charts" / "inferkit" / "values.yaml").read_text())
    assert re.search(rf"^ENV HF_HOME={re.escape(values['modelCache']['mountPath'])}$", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^USER ray$", DOCKERFILE, re.MULTILINE)  # uid 1000, as podSecurityContext says
    assert values["podSecurityContext"]["runAsUser"] == 1000
    for flavor in ("cpu", "gpu"):
        assert values["image"][flavor] == f"ghcr.io/inferkit/inferkit:{__version__}-{flavor}"
        assert f"-t ghcr.io/inferkit/inferkit:0.1.0-{flavor}" in DOCKERFILE
    for label in ("title", "description", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in DOCKERFILE
    assert f'org.opencontainers.image.version="{__version__}"' in DOCKERFILE


def test_dockerignore_lets_in_what_the_build_copies():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.MULTILINE)
    sources = {s.rstrip("/") for line in copied for s in line.split()}
    assert sources == {"pyproject.toml", "README.md", "inferkit", "charts"}
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore


def _kind_e2e_blocker() -> str | None:
    missing = [tool for tool in ("docker", "kind", "helm", "kubectl") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} on PATH"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine answers `docker info`"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_kind_e2e_blocker() is not None, reason=f"kind end-to-end: {_kind_e2e_blocker()}")
def test_kind_end_to_end():
    """Cluster, KubeRay operator, CPU image, `inferkit submit --preset kind`, output check, tear-down."""
    try:
        subprocess.run([str(REPO / "scripts" / "kind.sh"), "all"], check=True, timeout=3600)
    finally:
        subprocess.run([str(REPO / "scripts" / "kind.sh"), "down"], timeout=600)
