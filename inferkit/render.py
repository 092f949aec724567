"""Pure rendering: config -> derived view -> Jinja templates -> object -> YAML or JSON.

Every decision is made here, in Python, before templating; the templates only print the view.
Values enter the templates as JSON (a subset of YAML), so no user string can break the YAML.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from typing import Any

import jinja2
import yaml

from inferkit import RAY_VERSION, __version__
from inferkit.config import RAYJOB, Config, RunOptions, parse_quantity, run_fields
from inferkit.job.plan import THREADS_PER_CPU_ACTOR_INPUT_UNSEEN, actors_by_memory, cpu_actor_shape

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
HEAD_PORTS = [
    {"name": "gcs-server", "containerPort": 6379},
    {"name": "dashboard", "containerPort": 8265},
    {"name": "client", "containerPort": 10001},
]


def _raw_in_yaml(char: str) -> bool:
    """Whether YAML reads this character back as itself inside a double-quoted scalar: printable,
    and not one of YAML's line breaks (NEL, LS, PS), which it would fold into a space."""
    code = ord(char)
    return (code == 0x09 or 0x20 <= code <= 0x7E or 0xA0 <= code <= 0x2027 or 0x202A <= code <= 0xD7FF
            or 0xE000 <= code <= 0xFFFD or code >= 0x10000)


def to_json_scalar(value: Any) -> str:
    """JSON text that YAML reads back as exactly `value` (characters YAML may not carry raw are escaped)."""
    text = json.dumps(value, ensure_ascii=False)
    return "".join(c if _raw_in_yaml(c) else f"\\u{ord(c):04x}" for c in text)


def entrypoint(run: RunOptions, defaults: RunOptions) -> str:
    """The `inferkit run ...` command line: only arguments that differ from the packaged defaults,
    each shell-quoted so that `shlex.split` gives back every string byte for byte."""
    args = ["inferkit", "run"]
    for name, _type, _help in run_fields():
        value = getattr(run, name)
        if value == getattr(defaults, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            for item in value:
                args += [flag, item]
        else:
            args += [flag, _format_number(value) if isinstance(value, float) else str(value)]
    return shlex.join(args)


def job_run_options(cfg: Config) -> RunOptions:
    """The job's arguments as the cluster needs them. With an autoscaling group the job must know how
    far it may grow: its actor pool spans the group's bounds (one actor per GPU, or the planner's actors
    per CPU node), so Ray Data asks for more actors and the Ray autoscaler adds pods; a group that starts
    at zero has no node to read sizes from at the start."""
    run = cfg.run
    if not cfg.autoscaling or run.actors:
        return run
    gpu, cpu = cfg.gpu_workers, cfg.cpu_workers
    if gpu.enabled and run.device != "cpu":
        per_node = max(1, int(gpu.gpus_per_node / (run.num_gpus_per_actor or 1)))
        low, high = gpu.bounds
        return dataclasses.replace(run, device="gpu", actors=f"{max(1, low * per_node)}:{max(1, high * per_node)}")
    if cpu.enabled:
        # Neither the input nor the model's size is known here: several threads an actor, so one big input
        # part is not left to one thread, and no more actors a pod than half its memory holds workers
        # (1 GiB each, weights not counted; Ray places them by these CPUs whatever the model's size).
        per_node, num_cpus, _ = cpu_actor_shape(float(parse_quantity(cpu.cpu)),
                                                actors_by_memory(int(parse_quantity(cpu.memory)), 0),
                                                THREADS_PER_CPU_ACTOR_INPUT_UNSEEN)
        low, high = cpu.bounds
        return dataclasses.replace(run, actors=f"{max(1, low * per_node)}:{max(1, high * per_node)}",
                                   num_cpus_per_actor=run.num_cpus_per_actor or num_cpus)
    return run


def _format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _requests_equal_limits(cpu: str, memory: str, gpus: int = 0) -> dict:
    limits = {"cpu": str(cpu), "memory": str(memory)}
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    return {"requests": dict(limits), "limits": limits}


JOB_LABEL = "inferkit.dev/job"


def _common_labels(cfg: Config) -> dict[str, str]:
    """inferkit's identity on every object and pod. Not `app.kubernetes.io/name`: KubeRay sets it to
    `kuberay` on each pod, and the RayJob's `<rayjob>-head-svc` selects on that value (see
    ray-operator/controllers/ray/common/job.go, BuildHeadServiceForRayJob, and common/service.go,
    HeadServiceLabels); overriding it leaves that Service without endpoints."""
    return {
        "app.kubernetes.io/part-of": "inferkit",
        "app.kubernetes.io/instance": cfg.name,
        "app.kubernetes.io/managed-by": "inferkit",
        "app.kubernetes.io/version": __version__,
        JOB_LABEL: cfg.name,
        **cfg.labels,
    }


def _scheduling_labels(cfg: Config) -> dict[str, str]:
    """Queue labels the batch scheduler plugins read from the RayJob/RayCluster. KubeRay 1.7 picks the
    batch scheduler for the whole operator (`--batch-scheduler`) and reads no per-job scheduler label
    (ray-operator/controllers/ray/batchscheduler/schedulermanager.go). YuniKorn groups one job's pods
    into one gang by `yunikorn.apache.org/app-id`, which the operator copies from the RayCluster (whose
    labels come from the RayJob) to every pod (batchscheduler/yunikorn/yunikorn_scheduler.go)."""
    sched = cfg.scheduling
    labels = {}
    if sched.kueue_queue:
        labels["kueue.x-k8s.io/queue-name"] = sched.kueue_queue
    if sched.volcano_queue:
        labels["volcano.sh/queue-name"] = sched.volcano_queue
    if sched.yunikorn_queue:
        labels |= {"yunikorn.apache.org/queue": sched.yunikorn_queue, "yunikorn.apache.org/app-id": cfg.name}
    if sched.gang_scheduling:
        labels["ray.io/gang-scheduling-enabled"] = "true"
    return labels


def _container_env(cfg: Config) -> tuple[list, list]:
    env = list(cfg.env)
    volume_mounts = list(cfg.volume_mounts)
    if cfg.hf_token_secret.name:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": cfg.hf_token_secret.name, "key": cfg.hf_token_secret.key}}})
    if cfg.model_cache.claim_name:
        env.append({"name": "HF_HOME", "value": cfg.model_cache.mount_path})
        volume_mounts.append({"name": "model-cache", "mountPath": cfg.model_cache.mount_path})
    return env, volume_mounts


def _pod_volumes(cfg: Config) -> list:
    volumes = list(cfg.volumes)
    if cfg.model_cache.claim_name:
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": cfg.model_cache.claim_name}})
    return volumes


def _group_view(cfg: Config, *, name: str, group: Any, image: str, gpus: int, env: list, mounts: list) -> dict:
    tolerations = list(group.tolerations)
    node_selector = dict(group.node_selector)
    if gpus:
        if GPU_TOLERATION not in tolerations:
            tolerations.append(GPU_TOLERATION)
        if group.gpu_type:
            node_selector[group.accelerator_label] = group.gpu_type
    low, high = group.bounds
    return {
        "group_name": name,
        "replicas": group.replicas,
        "min_replicas": low,
        "max_replicas": high,
        "ray_start_params": dict(group.ray_start_params),
        "ray_resources": dict(group.ray_resources),
        "pod": _pod_view(cfg, node_selector, tolerations, group.affinity),
        "container": _container_view(cfg, "ray-worker", image, _requests_equal_limits(group.cpu, group.memory, gpus),
                                     env, mounts),
    }


def _pod_view(cfg: Config, node_selector: dict, tolerations: list, affinity: dict,
              volumes: list | None = None) -> dict:
    return {
        "labels": _common_labels(cfg),
        "annotations": dict(cfg.pod_annotations),
        "service_account_name": cfg.service_account_name,
        "priority_class_name": cfg.priority_class_name,
        "image_pull_secrets": [{"name": s} for s in cfg.image.pull_secrets],
        "security_context": cfg.pod_security_context,
        "node_selector": node_selector,
        "tolerations": tolerations,
        "affinity": affinity,
        "volumes": _pod_volumes(cfg) if volumes is None else volumes,
    }


def _container_view(cfg: Config, name: str, image: str, resources: dict, env: list, mounts: list,
                    ports: list | None = None, env_from: list | None = None) -> dict:
    return {
        "name": name,
        "image": image,
        "image_pull_policy": cfg.image.pull_policy,
        "resources": resources,
        "security_context": cfg.container_security_context,
        "env": env,
        "env_from": list(cfg.env_from) if env_from is None else env_from,
        "volume_mounts": mounts,
        "ports": ports or [],
    }


def build_view(cfg: Config, kind: str, default_run: RunOptions) -> dict:
    """Everything the templates print, computed here."""
    env, mounts = _container_env(cfg)
    head = cfg.head
    worker_groups = []
    if cfg.cpu_workers.enabled:
        worker_groups.append(_group_view(cfg, name="cpu-workers", group=cfg.cpu_workers, image=cfg.image.cpu,
                                         gpus=0, env=env, mounts=mounts))
    if cfg.gpu_workers.enabled:
        worker_groups.append(_group_view(cfg, name="gpu-workers", group=cfg.gpu_workers, image=cfg.image.gpu,
                                         gpus=cfg.gpu_workers.gpus_per_node, env=env, mounts=mounts))
    autoscaling = cfg.autoscaling
    view = {
        "kind": kind,
        "name": cfg.name,
        "namespace": cfg.namespace,
        "labels": _common_labels(cfg) | _scheduling_labels(cfg),
        "annotations": dict(cfg.annotations),
        "ray_version": RAY_VERSION,
        "autoscaling": autoscaling,
        "autoscaler": {
            "idle_timeout_seconds": cfg.autoscaler.idle_timeout_seconds,
            "upscaling_mode": cfg.autoscaler.upscaling_mode,
            "image_pull_policy": cfg.image.pull_policy,
            "resources": _requests_equal_limits(cfg.autoscaler.cpu, cfg.autoscaler.memory),
            "security_context": cfg.container_security_context,
        },
        "head": {
            "ray_start_params": {**head.ray_start_params, "num-cpus": "0"},
            "pod": _pod_view(cfg, dict(head.node_selector), list(head.tolerations), head.affinity),
            "container": _container_view(cfg, "ray-head", cfg.image.cpu, _requests_equal_limits(head.cpu, head.memory),
                                         env, mounts, HEAD_PORTS),
        },
        "worker_groups": worker_groups,
    }
    if kind == RAYJOB:
        job = cfg.job
        view["job"] = {
            "entrypoint": entrypoint(job_run_options(cfg), default_run),
            "shutdown_after_job_finishes": job.shutdown_after_job_finishes,
            "ttl_seconds_after_finished": job.ttl_seconds_after_finished,
            "active_deadline_seconds": job.active_deadline_seconds,
            "pre_running_deadline_seconds": job.pre_running_deadline_seconds,
            "backoff_limit": job.backoff_limit,
            "submission_mode": job.submission_mode,
            "suspend": job.suspend or bool(cfg.scheduling.kueue_queue),
            "deletion_rules": list(job.deletion_rules),
            "runtime_env_yaml": to_yaml(job.runtime_env) if job.runtime_env else "",
            # Only K8sJobMode runs a submitter pod; the other modes submit from the operator or the head.
            "submitter": None if job.submission_mode != "K8sJobMode" else {
                "pod": _pod_view(cfg, dict(head.node_selector), list(head.tolerations), head.affinity, volumes=[]),
                "container": _container_view(
                    cfg, "ray-job-submitter", cfg.image.cpu,
                    _requests_equal_limits(job.submitter.cpu, job.submitter.memory), [], [], env_from=[]),
            },
        }
    return view


def template_environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters["json"] = to_json_scalar
    return env


def render_object(cfg: Config, kind: str, default_run: RunOptions, env: jinja2.Environment) -> dict:
    """The RayJob or RayCluster as a dict, ready for validation and output."""
    template = env.get_template("rayjob.yaml.j2" if kind == RAYJOB else "raycluster.yaml.j2")
    text = template.render(build_view(cfg, kind, default_run))
    return yaml.safe_load(text)


class _Dumper(yaml.SafeDumper):
    """PyYAML writes U+0085 (NEL) unescaped into a single-quoted scalar, where a reader folds it into a
    space; strings with a Unicode line break are written double-quoted, where it is escaped."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = '"' if any(c in text for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_text)


def to_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=10**9)


def dump(obj: dict, output_format: str) -> str:
    if output_format == "json":
        return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    return to_yaml(obj)

