"""What each KubeRay operator version accepts of what inferkit renders, and how to tell which one a cluster
runs. Pure facts, read from ray-operator at v1.5.0, v1.6.2 and v1.7.0: config/crd/bases/ray.io_rayjobs.yaml
(fields, enums), pkg/features/features.go (feature gates) and controllers/ray/utils/validation.go
(validateDeletionConfiguration). The spec inferkit renders is the same in 1.6 and 1.7 (its RayCluster
fields exist in all three versions); they differ only in what inferkit does not render."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

VERSIONS = ("1.5", "1.6", "1.7")
# The operator image of the official helm chart and kustomize install: quay.io/kuberay/operator:v1.5.0.
OPERATOR_IMAGE = "kuberay/operator"
# RayJob spec fields that not every supported version has: field -> the first version that has it.
RAYJOB_FIELD_SINCE = {"preRunningDeadlineSeconds": "1.6"}
# A deletion rule's condition: its keys and the values each version's CRD allows (enums). In 1.5 jobStatus
# is required and the only key; from 1.6 on exactly one of the two (CEL rules on the condition).
JOB_STATUS_VALUES = ("SUCCEEDED", "FAILED")
DELETION_CONDITIONS = {
    "1.5": {"jobStatus": JOB_STATUS_VALUES},
    "1.6": {"jobStatus": JOB_STATUS_VALUES, "jobDeploymentStatus": ("Failed",)},
    "1.7": {"jobStatus": JOB_STATUS_VALUES, "jobDeploymentStatus": ("Failed",)},
}
DELETION_POLICIES = ("DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone")
# The RayJobDeletionPolicy feature gate: Alpha and off by default in 1.5, Beta and on from 1.6. With it off,
# any deletionStrategy makes the RayJob ValidationFailed.
DELETION_GATE = "RayJobDeletionPolicy"
DELETION_GATE_ON_BY_DEFAULT = {"1.5": False, "1.6": True, "1.7": True}


def _later(version: str) -> list[str]:
    return [v for v in VERSIONS if _key(v) > _key(version)]


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def version_problems(obj: dict, version: str) -> list[str]:
    """What the named operator version's RayJob CRD would refuse in a rendered object, each naming the
    field and the version that has it."""
    if obj.get("kind") != "RayJob":
        return []
    spec = obj.get("spec") or {}
    problems = []
    for field, since in RAYJOB_FIELD_SINCE.items():
        if field in spec and _key(version) < _key(since):
            problems.append(f"spec.{field}: KubeRay {version} has no such field (KubeRay {since} and later have "
                            f"it); drop it or render for a newer operator with --kuberay-version")
    rules = (spec.get("deletionStrategy") or {}).get("deletionRules") or []
    allowed = DELETION_CONDITIONS[version]
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        path = f"spec.deletionStrategy.deletionRules[{i}]"
        policy = rule.get("policy")
        if policy not in DELETION_POLICIES:
            problems.append(f"{path}.policy: must be one of {', '.join(DELETION_POLICIES)}, not {policy!r}")
        condition = rule.get("condition")
        if not isinstance(condition, dict):
            continue
        for key, value in condition.items():
            if key == "ttlSeconds":
                continue
            if key not in allowed:
                having = [v for v in _later(version) if key in DELETION_CONDITIONS[v]]
                problems.append(f"{path}.condition.{key}: KubeRay {version} matches deletion rules by "
                                f"{' and '.join(allowed)} only" + (f" ({key} needs KubeRay {having[0]} or later)"
                                                                  if having else ""))
            elif value not in allowed[key]:
                problems.append(f"{path}.condition.{key}: KubeRay {version} allows only "
                                f"{', '.join(allowed[key])} here, not {value!r}")
    return problems


def version_warnings(obj: dict, version: str) -> list[str]:
    """What the named version accepts but will not do as meant unless the operator is set up for it."""
    spec = obj.get("spec") or {}
    if obj.get("kind") != "RayJob" or "deletionStrategy" not in spec or DELETION_GATE_ON_BY_DEFAULT[version]:
        return []
    return [f"job.deletionRules: KubeRay {version} runs them only with the operator's {DELETION_GATE} feature gate, "
            f"which is off by default there (helm: --set 'featureGates[0].name={DELETION_GATE},featureGates[0]."
            f"enabled=true'); without it the operator refuses the RayJob (ValidationFailed)"]


def version_of_crd(crd: dict) -> str | None:
    """The operator version a RayJob CustomResourceDefinition comes from, by the fields its v1 schema has
    (the oldest supported version for a schema older than all of them), or None when it has no v1 schema."""
    for served in (crd.get("spec") or {}).get("versions") or []:
        if served.get("name") != "v1":
            continue
        spec = _properties(served.get("schema", {}).get("openAPIV3Schema"), "spec")
        if spec is None:
            return None
        groups = _properties(_properties(spec, "rayClusterSpec"), "workerGroupSpecs")
        if groups is not None and "priority" in ((groups.get("items") or {}).get("properties") or {}):
            return "1.7"  # workerGroupSpecs[].priority: new in 1.7
        return "1.6" if "preRunningDeadlineSeconds" in (spec.get("properties") or {}) else "1.5"
    return None


def _properties(schema: Any, name: str) -> dict | None:
    if not isinstance(schema, dict):
        return None
    found = (schema.get("properties") or {}).get(name)
    return found if isinstance(found, dict) else None


def version_of_image(image: str) -> str | None:
    """The minor version of an operator image such as quay.io/kuberay/operator:v1.5.0, when its tag says."""
    name, _, tag = image.rpartition(":")
    if "/" in tag or not name.endswith(OPERATOR_IMAGE):
        return None
    parts = tag.removeprefix("v").split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]) else None


def installed_version(crd: dict | None, images: Callable[[], list[str] | None]) -> tuple[str, str] | None:
    """(the cluster's operator version, how it was told) from what the API let the caller read: the RayJob
    CRD's schema (which decides what the API server accepts), else the operator deployments' image tags
    (`images` is asked only then); None when neither tells."""
    version = version_of_crd(crd) if crd else None
    if version:
        return version, "by its RayJob CRD"
    for image in images() or ():
        version = version_of_image(image)
        if version:
            return version, f"by the operator image {image}"
    return None


def mismatch(rendered_for: str, installed: tuple[str, str] | None) -> str | None:
    """The pre-flight's refusal when the cluster runs another operator version than the RayJob was rendered
    for (a newer one may accept what an older one lacks and do other things with it: say the version)."""
    if installed is None or installed[0] == rendered_for:
        return None
    version, how = installed
    newest = VERSIONS[-1]
    if _key(version) > _key(newest):  # newer than inferkit knows: it renders what the newest it knows accepts
        return None if rendered_for == newest else (
            f"the cluster runs KubeRay {version} ({how}), newer than inferkit knows; pass --kuberay-version "
            f"{newest}, the newest it knows (values key kuberayVersion)")
    if version not in VERSIONS:  # older than every supported version, judged by an image tag
        return (f"the cluster runs KubeRay {version} ({how}); inferkit supports {', '.join(VERSIONS)}: upgrade the "
                "operator")
    return (f"the cluster runs KubeRay {version} ({how}), and this RayJob is rendered for KubeRay {rendered_for}; "
            f"pass --kuberay-version {version} (values key kuberayVersion)")
