"""KubeRay operator versions (inferkit/kuberay.py): what render refuses and warns per version, how the
installed version is read from a RayJob CRD or an operator image, and submit's refusal on a mismatch. Pure:
no cluster (the real v1.5.0 operator and its CRDs are in tests/test_controlplane.py)."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from inferkit import chart
from inferkit.kuberay import VERSIONS, installed_version, mismatch, version_of_crd, version_of_image, version_problems

SHUTDOWN_OFF = ["--set", "job.shutdownAfterJobFinishes=false", "--set", "job.ttlSecondsAfterFinished=0"]


def rules(*conditions: dict) -> list[str]:
    text = yaml.safe_dump([{"condition": c, "policy": "DeleteCluster"} for c in conditions], default_flow_style=True)
    return ["--set", f"job.deletionRules={text.strip()}"]


def test_pre_running_deadline_is_refused_on_1_5_with_the_version_that_has_it(inferkit):
    for version in ("1.6", "1.7"):
        assert inferkit("render", "--kuberay-version", version, "--set", "job.preRunningDeadlineSeconds=60").code == 0
    result = inferkit("render", "--kuberay-version", "1.5", "--set", "job.preRunningDeadlineSeconds=60")
    assert result.code == 2 and result.stdout == ""
    assert result.stderr == ("Error: spec.preRunningDeadlineSeconds: KubeRay 1.5 has no such field (KubeRay 1.6 and "
                             "later have it); drop it or render for a newer operator with --kuberay-version\n")


def test_a_deletion_rule_by_deployment_status_needs_1_6(inferkit):
    args = [*SHUTDOWN_OFF, *rules({"jobStatus": "SUCCEEDED"}, {"jobDeploymentStatus": "Failed", "ttlSeconds": 60})]
    assert inferkit("render", *args).code == 0
    result = inferkit("render", "--kuberay-version", "1.5", *args)
    assert result.code == 2
    assert ("spec.deletionStrategy.deletionRules[1].condition.jobDeploymentStatus: KubeRay 1.5 matches deletion "
            "rules by jobStatus only (jobDeploymentStatus needs KubeRay 1.6 or later)") in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_condition_values_outside_the_crds_enums_are_refused(inferkit, version):
    """The v1.7.0 CRD allows jobDeploymentStatus Failed only (values.yaml's old example, Complete, rendered
    without a word and the API server refused it); jobStatus is SUCCEEDED or FAILED in every version."""
    result = inferkit("render", "--kuberay-version", version, *SHUTDOWN_OFF,
                      *rules({"jobStatus": "STOPPED"}, {"jobStatus": "FAILED"}))
    assert result.code == 2
    assert (f"deletionRules[0].condition.jobStatus: KubeRay {version} allows only SUCCEEDED, FAILED here, "
            "not 'STOPPED'") in result.stderr
    if version != "1.5":
        complete = inferkit("render", "--kuberay-version", version, *SHUTDOWN_OFF,
                            *rules({"jobDeploymentStatus": "Complete"}))
        assert complete.code == 2
        assert f"KubeRay {version} allows only Failed here, not 'Complete'" in complete.stderr


def test_1_5_warns_about_the_feature_gate_and_failures_no_rule_can_match(inferkit):
    result = inferkit("render", "--kuberay-version", "1.5", *SHUTDOWN_OFF,
                      *rules({"jobStatus": "SUCCEEDED"}, {"jobStatus": "FAILED", "ttlSeconds": 600}))
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if " warning: " in line]
    assert len(warnings) == 2, result.stderr
    assert "RayJobDeletionPolicy feature gate, which is off by default there" in warnings[1]
    assert "featureGates[0].name=RayJobDeletionPolicy,featureGates[0].enabled=true" in warnings[1]
    assert "KubeRay 1.5 matches deletion rules by jobStatus only" in warnings[0]
    quiet = inferkit("render", "--kuberay-version", "1.7", *SHUTDOWN_OFF,
                     *rules({"jobStatus": "SUCCEEDED"}, {"jobDeploymentStatus": "Failed"}))
    assert quiet.code == 0 and "warning" not in quiet.stderr


def test_the_version_comes_from_values_files_as_a_number_too(inferkit, tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text("kuberayVersion: 1.5\njob: {preRunningDeadlineSeconds: 60}\n")
    assert "KubeRay 1.5 has no such field" in inferkit("render", "-f", str(values)).stderr
    assert inferkit("render", "-f", str(values), "--kuberay-version", "1.6").code == 0
    bad = inferkit("render", "--set", "kuberayVersion=1.4")
    assert bad.code == 2 and "kuberayVersion: must be one of '1.5', '1.6', '1.7', not 1.4" in bad.stderr
    assert inferkit("render", "--kuberay-version", "1.8").code == 2


def test_every_deletion_rules_example_in_values_yaml_renders_on_the_versions_it_names(inferkit, crd_schemas):
    """The examples in values.yaml's comments: clean on 1.6 and 1.7 and valid against the v1.7.0 CRDs;
    refused on 1.5 (the comment says so) and clean there with jobStatus FAILED, as it says."""
    text = (chart.chart_dir() / "values.yaml").read_text()
    examples = re.findall(r"^  # (\[\{condition: .*\])\.?$", text, re.M)
    assert examples, "no deletionRules example found in values.yaml"
    for example in examples:
        args = [*SHUTDOWN_OFF, "--set", f"job.deletionRules={example}"]
        for version in ("1.6", "1.7"):
            result = inferkit("render", "--kuberay-version", version, *args)
            assert result.code == 0 and "warning" not in result.stderr, result.stderr
        from inferkit.validate import schema_problems

        assert schema_problems(yaml.safe_load(inferkit("render", *args).stdout), crd_schemas) == []
        assert inferkit("render", "--kuberay-version", "1.5", *args).code == 2
        on_1_5 = example.replace("jobDeploymentStatus: Failed", "jobStatus: FAILED")
        result = inferkit("render", "--kuberay-version", "1.5", *SHUTDOWN_OFF, "--set", f"job.deletionRules={on_1_5}")
        assert result.code == 0, result.stderr


def _without(crd: dict, *path: str) -> dict:
    crd = copy.deepcopy(crd)
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return crd


def test_the_operator_version_is_read_from_the_crds_schema(crd_dir):
    from pathlib import Path

    crd = yaml.safe_load((Path(crd_dir) / "ray.io_rayjobs.yaml").read_text())
    assert version_of_crd(crd) == "1.7"
    spec = ("properties", "spec", "properties")
    groups = (*spec, "rayClusterSpec", "properties", "workerGroupSpecs", "items", "properties")
    older = _without(crd, *groups, "priority")
    assert version_of_crd(older) == "1.6"
    assert version_of_crd(_without(older, *spec, "preRunningDeadlineSeconds")) == "1.5"
    assert version_of_crd({"spec": {"versions": [{"name": "v1", "served": True}]}}) is None
    assert installed_version(crd, lambda: ["quay.io/kuberay/operator:v1.5.0"]) == ("1.7", "by its RayJob CRD")


@pytest.mark.parametrize("image, version", [
    ("quay.io/kuberay/operator:v1.5.0", "1.5"), ("kuberay/operator:v1.6.2", "1.6"),
    ("registry.local:5000/mirror/kuberay/operator:v1.7.0", "1.7"), ("quay.io/kuberay/operator:latest", None),
    ("quay.io/kuberay/operator", None), ("quay.io/other/operator:v1.5.0", None), ("registry.local:5000/x", None),
])
def test_the_operator_version_is_read_from_its_image_tag(image, version):
    assert version_of_image(image) == version


def test_a_mismatch_names_the_installed_version_and_the_fix():
    assert mismatch("1.7", None) is None
    assert mismatch("1.5", ("1.5", "by its RayJob CRD")) is None
    assert mismatch("1.7", ("1.5", "by its RayJob CRD")) == (
        "the cluster runs KubeRay 1.5 (by its RayJob CRD), and this RayJob is rendered for KubeRay 1.7; pass "
        "--kuberay-version 1.5 (values key kuberayVersion)")
    old = installed_version(None, lambda: ["nginx:1", "quay.io/kuberay/operator:v1.3.2"])
    assert mismatch("1.7", old) == ("the cluster runs KubeRay 1.3 (by the operator image quay.io/kuberay/operator:"
                                    "v1.3.2); inferkit supports 1.5, 1.6, 1.7: upgrade the operator")
    newer = installed_version(None, lambda: ["quay.io/kuberay/operator:v1.10.0"])
    assert mismatch("1.7", newer) is None  # what 1.7 accepts, as near as inferkit knows
    assert mismatch("1.5", newer) == ("the cluster runs KubeRay 1.10 (by the operator image quay.io/kuberay/operator:"
                                      "v1.10.0), newer than inferkit knows; pass --kuberay-version 1.7, the newest "
                                      "it knows (values key kuberayVersion)")


def test_version_problems_ignore_rayclusters():
    obj = {"kind": "RayCluster", "spec": {"preRunningDeadlineSeconds": 1}}
    assert version_problems(obj, "1.5") == []
