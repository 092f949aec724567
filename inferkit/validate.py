"""Pure checks on rendered objects: KubeRay's own rules (always) and the CRD's v1 schema (when given).

The schema check is stricter than the API server on purpose: the server silently prunes fields its
schema does not know, so a typo there becomes a setting that is quietly ignored. Here it is an error.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

from inferkit.config import (DNS1123_SUBDOMAIN, INT32_MAX, INT32_MIN, MAX_NAME_LENGTH, check_name,
                             label_value_problem, qualified_name_problem)

RAY_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")
DELETION_ORDER = ("DeleteWorkers", "DeleteCluster", "DeleteSelf")
CLUSTER_REMOVING = DELETION_ORDER[1:]  # the deletion policies that delete the RayCluster
FT_ANNOTATION = "ray.io/ft-enabled"
EXTERNAL_STORAGE_ANNOTATION = "ray.io/external-storage-namespace"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SHELL_EXPANDED = "$`"
# Labels KubeRay puts on every Ray pod and selects the RayJob's head Service by (common/service.go).
KUBERAY_POD_LABELS = {"app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
_INT_RANGES = {"int32": (INT32_MIN, INT32_MAX), "int64": (-(2**63), 2**63 - 1)}


# ---------------------------------------------------------------------------------------------
# KubeRay's own rules (ray-operator/controllers/ray/utils/validation.go), for what inferkit renders


def _groups(cluster_spec: dict, prefix: str) -> Iterator[tuple[str, str, dict]]:
    yield "head", f"{prefix}.headGroupSpec", cluster_spec.get("headGroupSpec") or {}
    for i, group in enumerate(cluster_spec.get("workerGroupSpecs") or []):
        yield group.get("groupName", f"#{i}"), f"{prefix}.workerGroupSpecs[{i}]", group


def _cluster_rules(spec: dict, prefix: str, annotations: dict) -> list[str]:
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
        if not autoscaling and ("minReplicas" not in group or "maxReplicas" not in group):
            problems.append(f"{path}: set both minReplicas and maxReplicas when autoscaling is off")
        low, high, replicas = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1), group.get("replicas", 0)
        if low < 0 or high < 0:
            problems.append(f"{path}: minReplicas and maxReplicas must not be negative")
        elif not low <= high:
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
    idle = (spec.get("autoscalerOptions") or {}).get("idleTimeoutSeconds")
    if isinstance(idle, int) and idle < 0:
        problems.append(f"{prefix}.autoscalerOptions.idleTimeoutSeconds: must not be negative")
    return problems + _redis_rules(spec, prefix, annotations)


def _redis_rules(spec: dict, prefix: str, annotations: dict) -> list[str]:
    """Redis settings ValidateRayClusterSpec (utils/validation.go) refuses. GCS fault tolerance is on with
    the `ray.io/ft-enabled: "true"` annotation or with gcsFaultToleranceOptions (utils/util.go,
    IsGCSFaultToleranceEnabled); inferkit renders no gcsFaultToleranceOptions, so the annotation is the fix
    it can offer. A Redis user name is refused with or without fault tolerance."""
    head = spec.get("headGroupSpec") or {}
    env = {e.get("name") for e in _first_container(head).get("env") or [] if isinstance(e, dict)}
    params = head.get("rayStartParams") or {}
    options = spec.get("gcsFaultToleranceOptions")
    where = f"{prefix}.headGroupSpec"
    problems = []
    if annotations.get(FT_ANNOTATION) and options is not None:
        problems.append(f"{prefix}.gcsFaultToleranceOptions: KubeRay refuses it together with the {FT_ANNOTATION} "
                        "annotation; use only one of them")
    ft = str(annotations.get(FT_ANNOTATION, "")).lower() == "true" or options is not None
    if "RAY_REDIS_ADDRESS" in env and not ft:
        problems.append(f"{where}: env RAY_REDIS_ADDRESS turns on GCS fault tolerance, which KubeRay refuses "
                        f"unless it is enabled: add the annotation {FT_ANNOTATION}: \"true\" (annotations value)")
    if options is not None:
        refused = [f"env {name}" for name in ("RAY_REDIS_ADDRESS", "REDIS_PASSWORD") if name in env]
        refused += ["rayStartParams redis-password"] if params.get("redis-password") else []
        refused += [f"annotation {EXTERNAL_STORAGE_ANNOTATION}"] if annotations.get(EXTERNAL_STORAGE_ANNOTATION) \
            else []
        if refused:
            problems.append(f"{where}: KubeRay refuses {', '.join(refused)} together with gcsFaultToleranceOptions "
                            "(set them in gcsFaultToleranceOptions instead)")
    if "REDIS_USERNAME" in env or params.get("redis-username"):
        problems.append(f"{where}: KubeRay refuses a Redis user name in env (REDIS_USERNAME) or rayStartParams "
                        "(redis-username), with or without GCS fault tolerance (it takes one only from "
                        "gcsFaultToleranceOptions.redisUsername, which inferkit does not render); remove it")
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
    ttls: dict[tuple, dict[str, tuple[int, int]]] = {}
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
        elif isinstance(ttl, int) and not isinstance(ttl, bool):
            ttls.setdefault(key[:2], {}).setdefault(rule.get("policy"), (i, ttl))
    return problems + _ttl_order(ttls)


def _ttl_order(ttls: dict[tuple, dict[str, tuple[int, int]]]) -> list[str]:
    """Per condition, the TTLs must not fall along DeleteWorkers <= DeleteCluster <= DeleteSelf: a
    later step cannot come before an earlier one (validateTTLConsistency in utils/validation.go)."""
    problems = []
    for condition, policies in ttls.items():
        previous = None
        for policy in DELETION_ORDER:
            if policy not in policies:
                continue
            index, ttl = policies[policy]
            if previous is not None and ttl < previous[2]:
                problems.append(f"spec.deletionStrategy.deletionRules[{index}].condition.ttlSeconds: {policy} on "
                                f"{condition[0] or condition[1]} after {ttl} s comes before {previous[0]} after "
                                f"{previous[2]} s (rule {previous[1]}); KubeRay needs DeleteWorkers <= DeleteCluster "
                                "<= DeleteSelf")
            previous = (policy, index, ttl)
    return problems


def _job_rules(spec: dict, metadata: dict) -> list[str]:
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
    if spec.get("preRunningDeadlineSeconds") is not None and spec["preRunningDeadlineSeconds"] <= 0:
        problems.append("spec.preRunningDeadlineSeconds: must be greater than 0")
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode == "InteractiveMode":
        # rayjob_controller.go: an InteractiveMode RayJob stays `Waiting` until someone submits the job
        # by hand and sets spec.jobId; the entrypoint is never run.
        problems.append("spec.submissionMode: InteractiveMode never runs the entrypoint (KubeRay waits until you "
                        "submit a job by hand and set spec.jobId, for notebooks); inferkit submits batch jobs, so "
                        "set job.submissionMode to K8sJobMode or HTTPMode")
        if (spec.get("backoffLimit") or 0) > 0:
            problems.append("spec.backoffLimit: retries do not work with InteractiveMode")
    if mode == "SidecarMode" and ("submitterPodTemplate" in spec or "submitterConfig" in spec):
        problems.append("spec.submitterPodTemplate: SidecarMode takes no submitter pod template or config")
    if mode != "InteractiveMode" and not str(spec.get("entrypoint", "")).strip():
        problems.append("spec.entrypoint: must not be empty")
    if spec.get("rayClusterSpec") is None and not spec.get("clusterSelector"):
        problems.append("spec: needs rayClusterSpec or clusterSelector")
    cluster = spec.get("rayClusterSpec") or {}
    if (metadata.get("labels") or {}).get(KUEUE_QUEUE_LABEL) and cluster.get("enableInTreeAutoscaling"):
        # Kueue's RayJob webhook refuses a managed job with autoscaling (it admits a fixed size).
        problems.append(f"metadata.labels.{KUEUE_QUEUE_LABEL}: Kueue refuses a RayJob with autoscaling "
                        "(enableInTreeAutoscaling); give the worker groups a fixed size (--gpu-nodes N, not MIN:MAX)")
    if mode == "K8sJobMode":
        problems += _runtime_env_shell_rules(spec.get("runtimeEnvYAML") or "")
    problems += _head_service_rules(cluster)
    return problems + _deletion_rules(spec)


def _runtime_env_shell_rules(text: str) -> list[str]:
    """In K8sJobMode the submitter runs `ray job submit ... --runtime-env-json "<JSON>"` under `bash -ce`
    (common/job.go, BuildJobSubmitCommand, quotes the JSON with Go's strconv.Quote), so `$` and backticks
    in it are expanded by the shell: the job would get other values than the ones written. Quotes and
    backslashes arrive unchanged."""
    try:
        runtime_env = yaml.safe_load(text) if text else None
    except yaml.YAMLError as e:
        return [f"spec.runtimeEnvYAML: not valid YAML ({e})"]
    problems = []
    for path, item in _strings(runtime_env, "job.runtimeEnv"):
        bad = "".join(sorted({c for c in item if c in SHELL_EXPANDED}))
        if bad:
            problems.append(f"{path}: {item!r} holds {' and '.join(repr(c) for c in bad)}, which the K8sJobMode "
                            "submitter's shell would expand (KubeRay passes runtimeEnv through `bash -c`); remove "
                            "them or use submissionMode HTTPMode")
    return problems


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every key and string value in a YAML tree, with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path} (key)", str(key)
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _strings(item, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _head_service_rules(cluster: dict) -> list[str]:
    """The RayJob's own `<rayjob>-head-svc` selects the head by KubeRay's default pod labels, whatever the
    template says (common/job.go, BuildHeadServiceForRayJob with no label overrides); a template label that
    overrides one leaves that Service without endpoints."""
    labels = (((cluster.get("headGroupSpec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
    return [f"spec.rayClusterSpec.headGroupSpec.template.metadata.labels.{key}: {labels[key]!r} overrides KubeRay's "
            f"{value!r}, which the RayJob's <name>-head-svc selects on (it would have no endpoints); use another key"
            for key, value in KUBERAY_POD_LABELS.items() if key in labels and labels[key] != value]


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
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    if kind == "RayJob":
        problems += _job_rules(spec, metadata)
        if spec.get("rayClusterSpec") is not None:
            problems += _cluster_rules(spec["rayClusterSpec"], "spec.rayClusterSpec", annotations)
    else:
        problems += _cluster_rules(spec, "spec", annotations)
    return problems + list(_label_rules(obj, ""))


def cluster_removal_ttl(spec: dict, deployment: str, job_status: str) -> int | None:
    """Seconds after a job's end, with this jobDeploymentStatus and jobStatus, until the operator deletes its
    RayCluster, or None when it keeps the cluster until the RayJob is deleted. With deletion rules: the
    shortest TTL of the DeleteCluster and DeleteSelf rules that match (a rule's jobStatus, else its
    jobDeploymentStatus; rayjob_controller.go, handleDeletionRules and isDeletionRuleMatched); without
    them: shutdownAfterJobFinishes after ttlSecondsAfterFinished."""
    strategy = spec.get("deletionStrategy")
    rules = strategy.get("deletionRules") if isinstance(strategy, dict) else None
    if isinstance(rules, list) and rules:
        ttls = []
        for rule in rules:
            condition = (rule.get("condition") if isinstance(rule, dict) else None) or {}
            matches = (condition["jobStatus"] == job_status if condition.get("jobStatus") is not None
                       else condition.get("jobDeploymentStatus") == deployment)
            ttl = condition.get("ttlSeconds", 0)
            if matches and rule.get("policy") in CLUSTER_REMOVING:
                ttls.append(ttl if isinstance(ttl, int) else 0)
        return min(ttls, default=None)
    if spec.get("shutdownAfterJobFinishes"):
        return int(spec.get("ttlSecondsAfterFinished") or 0)
    return None


def kuberay_warnings(obj: dict, version: str) -> list[str]:
    """What the operator accepts but a user rarely wants: deletion rules (with shutdown off) that leave a
    finished job's RayCluster, GPUs included, running until the RayJob is deleted. A DeadlineExceeded
    failure keeps jobStatus as it was, so only a jobDeploymentStatus Failed rule covers every failure, and
    KubeRay 1.5 has none (its rules match jobStatus only)."""
    spec = obj.get("spec") or {}
    rules = (spec.get("deletionStrategy") or {}).get("deletionRules") if obj.get("kind") == "RayJob" else None
    if not rules or spec.get("shutdownAfterJobFinishes") or not isinstance(rules, list):
        return []
    warnings = []
    if cluster_removal_ttl(spec, "Complete", "SUCCEEDED") is None:
        warnings.append("job.deletionRules: no DeleteCluster or DeleteSelf rule covers a job that succeeds "
                        "(jobStatus SUCCEEDED), and shutdownAfterJobFinishes is off: "
                        "the RayCluster and its GPUs stay until the RayJob is deleted")
    if version == "1.5":
        warnings.append("job.deletionRules: KubeRay 1.5 matches deletion rules by jobStatus only, so a job that fails "
                        "by DeadlineExceeded or at submission keeps its RayCluster until the RayJob is deleted (KubeRay "
                        "1.6 and later match jobDeploymentStatus Failed too)")
    elif cluster_removal_ttl(spec, "Failed", "") is None:
        warnings.append("job.deletionRules: no DeleteCluster or DeleteSelf rule covers jobDeploymentStatus Failed "
                        "(a jobStatus FAILED rule misses DeadlineExceeded and submission failures): a failed job's "
                        "RayCluster stays until the RayJob is deleted")
    return warnings


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
