"""Checks on the typed config: what the type system cannot say."""

from __future__ import annotations

import dataclasses
import posixpath
import re
from decimal import Decimal

from inferkit.config.convert import describe
from inferkit.config.encoding import parse_quantity, parse_range
from inferkit.config.schema import MAX_NAME_LENGTH, RAYCLUSTER, RAYJOB, Config, RunOptions, Workers, camel


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


def _path_parts(path: str) -> tuple[str, tuple[str, ...]]:
    """(scheme, or "/" or "." for absolute or relative local paths; the path's parts, normalised)."""
    scheme, sep, rest = path.partition("://")
    if sep and is_remote_uri(path):
        return scheme.lower(), tuple(p for p in rest.split("/") if p)
    normal = posixpath.normpath(path)
    return ("/" if normal.startswith("/") else "."), tuple(p for p in normal.split("/") if p not in ("", "."))


def nesting_problem(input_path: str, output_path: str) -> str | None:
    """An output inside the input would be read as input by the next run on it (or fail it); an input
    inside the output is replaced with it. Paths compare as written: callers resolve local ones first."""
    if not input_path or not output_path:
        return None
    (in_root, inner), (out_root, outer) = _path_parts(input_path), _path_parts(output_path)
    if in_root != out_root:
        return None
    if outer[:len(inner)] == inner:
        where = "is the input" if outer == inner else f"is inside the input {input_path!r}"
        return f"{output_path!r} {where}; a later run on that input would read it: write it elsewhere"
    if inner[:len(outer)] == outer:
        return f"{output_path!r} holds the input {input_path!r}, which writing the output would replace: " \
               "write it elsewhere"
    return None


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
    for name in ("input", "output"):
        uri = getattr(run, name)
        if uri.lower().startswith(("s3://", "gs://", "gcs://")) and ("?" in uri or "#" in uri):
            problems.append(f"run.{name}: {uri!r}: options in a store's URI are not taken (and would be read as part "
                            "of the path); set them in the environment, as the SDKs read them: AWS_ENDPOINT_URL, "
                            "AWS_REGION, AWS_PROFILE; STORAGE_EMULATOR_HOST, GOOGLE_CLOUD_PROJECT")
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
    if not run.store_outage_seconds > 0:
        problems.append(f"run.storeOutageSeconds: must be greater than 0, not {run.store_outage_seconds}")
    if run.device == "cpu" and run.num_gpus_per_actor:
        problems.append("run.numGpusPerActor: conflicts with device 'cpu'")
    nesting = nesting_problem(run.input, run.output)
    if nesting:
        problems.append(f"run.output: {nesting}")
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
            problems.append(f"env[{i}] ({name}): value must be a string, not {describe(var['value'])} (quote it)")
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
