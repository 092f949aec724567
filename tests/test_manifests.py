"""manifests/ holds rendered examples users apply as they are: each must equal a fresh render of
the command in its header, and the kind cluster config must be a kind Cluster."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from inferkit.validate import kuberay_rules, schema_problems

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
RENDERED = sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != "kind-cluster.yaml")


def test_examples_exist():
    assert {p.relative_to(MANIFESTS).parts[0] for p in RENDERED} == {"kind", "gpu"}


@pytest.mark.parametrize("path", RENDERED, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_is_a_fresh_render_of_its_header_command(path, inferkit, tmp_path):
    header, command_line, *body = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert header.startswith("# Rendered by inferkit")
    argv = shlex.split(command_line.removeprefix("#").strip())
    assert argv[:2] == ["inferkit", "render"]
    argv[argv.index("--out-dir") + 1] = str(tmp_path)
    result = inferkit(*argv[1:])
    assert result.code == 0, result.stderr
    fresh = (tmp_path / path.name).read_text(encoding="utf-8").splitlines(keepends=True)[2:]
    assert fresh == body, f"{path} is stale: run `{command_line.removeprefix('#').strip()}`"
    assert kuberay_rules(yaml.safe_load("".join(body))) == []


@pytest.mark.parametrize("path", RENDERED, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_fits_the_crd_schema(path, crd_schemas):
    """The only part that needs the KubeRay CRDs from ../shared (skipped, saying why, without them)."""
    assert schema_problems(yaml.safe_load(path.read_text(encoding="utf-8")), crd_schemas) == []


def test_kind_cluster_config_feeds_the_kind_preset():
    config = yaml.safe_load((MANIFESTS / "kind" / "kind-cluster.yaml").read_text())
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    mounts = [m["containerPath"] for node in config["nodes"] for m in node.get("extraMounts", [])]
    preset = yaml.safe_load((MANIFESTS.parent / "charts" / "inferkit" / "presets" / "kind.yaml").read_text())
    assert preset["volumes"][0]["hostPath"]["path"] in mounts
