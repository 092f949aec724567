"""The typed config classes: one frozen dataclass per section of values.yaml, camelCase keys there."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

from inferkit.config.encoding import Quantity
from inferkit.kuberay import VERSIONS

RAYJOB = "RayJob"
RAYCLUSTER = "RayCluster"
# KubeRay derives Service and Pod names from these, hence limits below the 63 of a DNS label.
MAX_NAME_LENGTH = {RAYJOB: 47, RAYCLUSTER: 53}

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

TASKS = ("embedding", "image-classification", "text-classification")
KubeRayVersion = Literal[VERSIONS]  # the operator versions render and submit know

def _help(text: str) -> Any:
    return field(metadata={"help": text})


@dataclass(frozen=True)
class Image:
    cpu: str
    gpu: str
    pull_policy: Literal["Always", "IfNotPresent", "Never"]
    pull_secrets: tuple[str, ...]


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True)
class ModelCache:
    claim_name: str
    mount_path: str


@dataclass(frozen=True)
class Head:
    cpu: Quantity
    memory: Quantity
    node_selector: dict[str, str]
    tolerations: tuple[dict, ...]
    affinity: dict
    ray_start_params: dict[str, str]


@dataclass(frozen=True)
class Workers:
    replicas: int
    min_replicas: int | None
    max_replicas: int | None
    cpu: Quantity
    memory: Quantity
    node_selector: dict[str, str]
    tolerations: tuple[dict, ...]
    affinity: dict
    ray_start_params: dict[str, str]
    ray_resources: dict[str, str]

    @property
    def bounds(self) -> tuple[int, int]:
        """(min, max) replicas; unset bounds equal `replicas`."""
        low = self.replicas if self.min_replicas is None else self.min_replicas
        high = self.replicas if self.max_replicas is None else self.max_replicas
        return low, high

    @property
    def enabled(self) -> bool:
        return max(self.replicas, self.bounds[1]) > 0


@dataclass(frozen=True)
class GpuWorkers(Workers):
    gpus_per_node: int
    gpu_type: str
    accelerator_label: str


@dataclass(frozen=True)
class Autoscaler:
    idle_timeout_seconds: int
    upscaling_mode: Literal["Default", "Aggressive", "Conservative"]
    cpu: Quantity
    memory: Quantity


@dataclass(frozen=True)
class Submitter:
    cpu: Quantity
    memory: Quantity


@dataclass(frozen=True)
class Job:
    shutdown_after_job_finishes: bool
    ttl_seconds_after_finished: int
    active_deadline_seconds: int | None
    pre_running_deadline_seconds: int | None
    backoff_limit: int
    submission_mode: Literal["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]
    suspend: bool
    deletion_rules: tuple[dict, ...]
    runtime_env: dict
    submitter: Submitter


@dataclass(frozen=True)
class Scheduling:
    kueue_queue: str
    volcano_queue: str
    yunikorn_queue: str
    gang_scheduling: bool


@dataclass(frozen=True)
class RunOptions:
    """The job's own arguments: flags of `inferkit run`, and of `render`/`submit` for the entrypoint."""

    task: Literal["embedding", "image-classification", "text-classification"] = _help(
        "What to compute: embeddings, or class labels for images or texts.")
    model: tuple[str, ...] = _help(
        "Hugging Face model id or local directory; repeat for an ensemble. Default: the bundled demo model.")
    ensemble: Literal["max-confidence", "mean"] = _help(
        "How several --model values combine: the most confident model's label, or the mean of probabilities.")
    input: str = _help(
        "Folder of images, or parquet/jsonl/csv files; local, s3:// or gs://. Default: the bundled sample.")
    output: str = _help(
        "Output parquet folder (local, s3:// or gs://). Default: ./inferkit-output/<run id>.")
    input_format: Literal["auto", "images", "parquet", "jsonl", "csv"] = _help(
        "Input format; auto looks at the file extensions.")
    id_column: str = _help("Column that identifies a row in the output (default: path for images, else 'id' if present).")
    text_column: str = _help("Column holding the text for text tasks.")
    image_column: str = _help("Column holding encoded image bytes in tabular inputs.")
    device: Literal["auto", "cpu", "gpu"] = _help("Run the model on GPUs, CPUs, or whatever the cluster has.")
    batch_size: int | None = _help("Rows per model call (default: planned from device memory or cores).")
    actors: str | None = _help("Inference actor pool size, N or MIN:MAX (default: planned); without "
                                "--num-cpus-per-actor, CPU actors share each node's CPUs among MAX.")
    num_cpus_per_actor: float | None = _help("CPUs each inference actor holds (default: planned).")
    num_gpus_per_actor: float | None = _help("GPUs each inference actor holds (default: planned).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _help(
        "auto picks bf16 where the hardware has it and the first batch agrees with fp32 on >= 99% of rows.")
    compile: Literal["auto", "on", "off"] = _help(
        "torch.compile the model(s) (inductor); auto does for inputs with enough rows to repay compiling "
        "(on CPUs, the smaller a text model the more rows). "
        "Kept only if the first batch agrees with eager fp32, else eager.")
    max_error_fraction: float = _help(
        "Exit non-zero when more than this fraction of rows failed, or when an input file could not be read "
        "at all (its rows are missing); the output is written either way.")
    store_outage_seconds: float = _help(
        "How long an s3:// or gs:// store may stop answering before the run fails (its rows kept for a resume). "
        "GCS requests are retried as long; S3 requests ten times with the AWS SDK's backoff (about a minute).")
    overwrite: bool = _help("Replace an existing output folder.")
    restart: bool = _help(
        "Throw away an unfinished earlier run of this output and start over (without it, running the same "
        "job again resumes it).")
    trust_remote_code: bool = _help("Allow models that ship their own Python code (off: only built-in classes).")


@dataclass(frozen=True)
class Config:
    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    pod_annotations: dict[str, str]
    kuberay_version: KubeRayVersion
    image: Image
    service_account_name: str
    priority_class_name: str
    pod_security_context: dict
    container_security_context: dict
    env: tuple[dict, ...]
    env_from: tuple[dict, ...]
    volumes: tuple[dict, ...]
    volume_mounts: tuple[dict, ...]
    hf_token_secret: SecretKey
    model_cache: ModelCache
    head: Head
    cpu_workers: Workers
    gpu_workers: GpuWorkers
    autoscaler: Autoscaler
    job: Job
    scheduling: Scheduling
    run: RunOptions

    @property
    def autoscaling(self) -> bool:
        return any(g.enabled and g.bounds[0] < g.bounds[1] for g in (self.cpu_workers, self.gpu_workers))


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def run_flag(name: str) -> str:
    """The command-line flag of a RunOptions field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def field_types(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {camel(f.name): hints[f.name] for f in dataclasses.fields(cls)}
