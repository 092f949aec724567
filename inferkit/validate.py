"""Pure checks on rendered objects: KubeRay's own rules (always) and the CRD's v1 schema (when given).

The schema check is stricter than the API server on purpose: the server silently prunes fields its
schema does not know, so a typo there becomes a setting that is quietly ignored. Here it is an error.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Iterator
from typing import Any

from inferkit.config import (DNS1123_SUBDOMAIN, INT32_MAX, INT32_MIN, MAX_NAME_LENGTH, check_name,
                             label_value_problem, qualified_name_problem)

RAY_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")
_INT_RANGES = {"int32": (INT32_MIN, INT32_MAX), "int64": (-(2**63), 2**63 - 1)}


# ---------------------------------------------------------------------------------------------
# KubeRay's own rules (ray-operator/controllers/ray/utils/validation.go), for what inferkit renders


def _groups(cluster_spec: dict, prefix: str) -> Iterator[tuple[str, str, dict]]:
    yield "head", f"{prefix}.headGroupSpec", cluster_spec.get("headGroupSpec") or {}
    for i, group in enumerate(cluster_spec.get("workerGroupSpecs") or []):
        yield group.get("groupName", f"#{i}"), f"{prefix}.workerGroupSpecs[{i}]", group


def _cluster_rules(spec: dict, prefix: str) -> list[str]:
    problems = []
    names = []
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    for name, path, group in _groups(spec, prefix):
        params = group.get("rayStartParams") or {}
        both = [k for k in RAY_RESOURCE_PARAMS if params.get(k)]
        if both and group.get("resources"):
            problems.append(f"{path}: {', '.join(both)} set in both rayStartParams and resources of group {name}; "
                            "KubeRay accepts only one")
        if "labels" in params:
            problems.append(f"{path}.rayStartParams.labels: not supported by KubeRay; use the group's labels field")
        containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            problems.append(f"{path}.template.spec.containers: group {name} needs at least one container")
        if path.endswith("headGroupSpec"):
            continue
        names.append(name)
        low, high, replicas = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1), group.get("replicas", 0)
        if not low <= high:
            problems.append(f"{path}: minReplicas {low} is above maxReplicas {high}")
        elif not autoscaling and not low <= replicas <= high:
            problems.append(f"{path}: replicas {replicas} is outside [{low}, {high}]")
        if autoscaling and group.get("suspend"):
            problems.append(f"{path}: a worker group cannot be suspended with the autoscaler enabled")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"{prefix}.workerGroupSpecs: group names must be unique ({', '.join(duplicates)})")
    head_env = _first_container(spec.get("headGroupSpec") or {}).get("env") or []
    v2 = [e for e in head_env if e.get("name") == "RAY_enable_autoscaler_v2" and e.get("value") in ("1", "true")]
    if v2 and not autoscaling:
        problems.append(f"{prefix}: RAY_enable_autoscaler_v2 is set but enableInTreeAutoscaling is false")
    return problems


def _first_container(group: dict) -> dict:
    containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    return containers[0]


def _deletion_rules(spec: dict) -> list[str]:
    strategy = spec.get("deletionStrategy")
    if strategy is None:
        return []
    if not isinstance(strategy, dict):
        return ["spec.deletionStrategy: must be a map"]
    problems = []
    legacy = "onSuccess" in strategy or "onFailure" in strategy
    rules = strategy.get("deletionRules") or []
    if not isinstance(rules, list):
        return ["spec.deletionStrategy.deletionRules: must be a list of rules"]
    if legacy and rules:
        problems.append("spec.deletionStrategy: onSuccess/onFailure and deletionRules cannot be used together")
    if not rules and not ("onSuccess" in strategy and "onFailure" in strategy):
        problems.append("spec.deletionStrategy: needs both onSuccess and onFailure, or deletionRules")
    if rules and spec.get("shutdownAfterJobFinishes"):
        problems.append("spec.deletionStrategy.deletionRules: set job.shutdownAfterJobFinishes to false to use "
                        "deletion rules (KubeRay treats them as mutually exclusive)")
    seen = set()
    autoscaling = (spec.get("rayClusterSpec") or {}).get("enableInTreeAutoscaling")
    for i, rule in enumerate(rules):
        path = f"spec.deletionStrategy.deletionRules[{i}]"
        condition = rule.get("condition") if isinstance(rule, dict) else None
        if not isinstance(condition, dict):
            problems.append(f"{path}: needs a `condition` map and a `policy`")
            continue
        if ("jobStatus" in condition) == ("jobDeploymentStatus" in condition):
            problems.append(f"{path}.condition: needs exactly one of jobStatus and jobDeploymentStatus")
        ttl = condition.get("ttlSeconds", 0)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
            problems.append(f"{path}.condition.ttlSeconds: must be a whole number of seconds, not {ttl!r}")
        key = (condition.get("jobStatus"), condition.get("jobDeploymentStatus"), rule.get("policy"))
        if key in seen:
            problems.append(f"{path}: duplicate rule for {key[2]} on {key[0] or key[1]}")
        seen.add(key)
        if rule.get("policy") == "DeleteWorkers" and autoscaling:
            problems.append(f"{path}: DeleteWorkers does not work with autoscaling")
    return problems


def _job_rules(spec: dict) -> list[str]:
    problems = []
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if spec.get("suspend") and not shutdown:
        problems.append("spec.suspend: a RayJob can be suspended (Kueue) only with shutdownAfterJobFinishes: true")
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if ttl < 0:
        problems.append("spec.ttlSecondsAfterFinished: must not be negative")
    elif ttl > 0 and not shutdown:
        problems.append("spec.ttlSecondsAfterFinished: needs shutdownAfterJobFinishes: true (set the TTL to 0 "
                        "or turn shutdown on)")
    if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
        problems.append("spec.activeDeadlineSeconds: must be greater than 0")
    if spec.get("backoffLimit") is not None and spec["backoffLimit"] < 0:
        problems.append("spec.backoffLimit: must not be negative")
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode == "InteractiveMode" and (spec.get("backoffLimit") or 0) > 0:
        problems.append("spec.backoffLimit: retries do not work with InteractiveMode")
    if mode == "SidecarMode" and ("submitterPodTemplate" in spec or "submitterConfig" in spec):
        problems.append("spec.submitterPodTemplate: SidecarMode takes no submitter pod template or config")
    if mode != "InteractiveMode" and not str(spec.get("entrypoint", "")).strip():
        problems.append("spec.entrypoint: must not be empty")
    if spec.get("rayClusterSpec") is None and not spec.get("clusterSelector"):
        problems.append("spec: needs rayClusterSpec or clusterSelector")
    return problems + _deletion_rules(spec)


def _label_rules(node: Any, path: str) -> Iterator[str]:
    """Every label, node selector and service account name anywhere in the object: the API server
    rejects a bad label, and a bad node selector value leaves pods that can never be scheduled."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _label_rules(item, f"{path}[{i}]")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        where = f"{path}.{key}" if path else key
        if key in ("labels", "nodeSelector") and isinstance(value, dict):
            for label, text in value.items():
                problem = qualified_name_problem(str(label)) or label_value_problem(str(text))
                if problem:
                    yield f"{where}.{label}: {str(text)!r}: {problem}"
        elif key == "serviceAccountName" and isinstance(value, str) and (
                len(value) > 253 or not DNS1123_SUBDOMAIN.match(value)):
            yield f"{where}: {value!r} is not a DNS subdomain (lowercase letters, digits, '-' and '.')"
        else:
            yield from _label_rules(value, where)


def kuberay_rules(obj: dict) -> list[str]:
    """KubeRay's admission rules for a RayJob or RayCluster: what the operator would reject."""
    kind = obj.get("kind")
    if kind not in MAX_NAME_LENGTH:
        return [f"kind: expected RayJob or RayCluster, not {kind!r}"]
    name = (obj.get("metadata") or {}).get("name", "")
    problems = [f"metadata.{p}" for p in check_name(name, kind)]
    spec = obj.get("spec") or {}
    if kind == "RayJob":
        problems += _job_rules(spec)
        if spec.get("rayClusterSpec") is not None:
            problems += _cluster_rules(spec["rayClusterSpec"], "spec.rayClusterSpec")
    else:
        problems += _cluster_rules(spec, "spec")
    return problems + list(_label_rules(obj, ""))


# ---------------------------------------------------------------------------------------------
# The CRD's structural schema, made strict


def strict_schema(schema: Any) -> Any:
    """An OpenAPI v3 structural schema as JSON Schema that rejects unknown fields and out-of-range
    integers, where the API server would prune the former and reject the latter."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if schema.get("type") == "integer" and schema.get("format") in _INT_RANGES:
        low, high = _INT_RANGES[schema["format"]]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    out.pop("format", None)
    return out


def crd_schemas(documents: Iterable[dict]) -> dict[str, dict]:
    """kind -> strict v1 schema, from CustomResourceDefinition documents (others are ignored)."""
    schemas = {}
    for doc in documents:
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc.get("spec") or {}
        if spec.get("group") != "ray.io":
            continue
        for version in spec.get("versions") or []:
            if version.get("name") == "v1":
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                schema.get("properties", {}).pop("status", None)
                schemas[spec["names"]["kind"]] = strict_schema(schema)
    return schemas


def schema_problems(obj: dict, schemas: dict[str, dict]) -> list[str]:
    """Every place where `obj` breaks its kind's schema, with a readable path."""
    import jsonschema  # only when a CRD source is given: keeps `render` fast

    kind = obj.get("kind")
    if kind not in schemas:
        return [f"no CRD schema for kind {kind!r} (have: {', '.join(sorted(schemas)) or 'none'})"]
    validator = _validator(kind, schemas[kind], jsonschema)
    problems = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        problems.append(_describe_error(error))
    return problems


_VALIDATORS: dict[tuple[str, int], Any] = {}


def _validator(kind: str, schema: dict, jsonschema: Any) -> Any:
    key = (kind, id(schema))
    if key not in _VALIDATORS:
        _VALIDATORS[key] = jsonschema.Draft7Validator(schema)
    return _VALIDATORS[key]


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe_error(error: Any) -> str:
    path = _path(error.absolute_path)
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        notes = []
        for field in sorted(set(error.instance) - set(known)):
            match = difflib.get_close_matches(field, known, n=1)
            notes.append(f"{field!r}" + (f" (did you mean {match[0]!r}?)" if match else ""))
        return f"{path}: unknown field {', '.join(notes)}; the API server would silently drop it"
    return f"{path}: {error.message}"
