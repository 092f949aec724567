"""`inferkit doctor`: what this machine and the current kube context offer, and what each workflow
still needs. Every probe is allowed to fail; a failed probe is a finding, not a crash."""

from __future__ import annotations

import functools
import json
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata

from inferkit import RAY_VERSION, __version__
from inferkit.config.encoding import parse_quantity
from inferkit.errors import EXIT_OK, ApiError
from inferkit.kuberay import version_of_crd
from inferkit.submit import PERMISSIONS, Connection

JOB_PACKAGES = ("ray", "torch", "transformers", "pyarrow", "pillow")
KIND_TOOLS = ("docker", "kind", "helm", "kubectl")
TORCH_INDEX = "https://download.pytorch.org/whl"
INSTALL_JOB = f"pip install 'inferkit[job]' torch==2.13.0 (on GPU machines with --extra-index-url {TORCH_INDEX}/cu128)"
# The oldest NVIDIA driver (Linux) each CUDA major version runs on, through CUDA's minor-version
# compatibility (CUDA's release notes, "CUDA Toolkit and Corresponding Driver Versions").
MIN_DRIVER_FOR_CUDA = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
NODES_SHOWN = 4  # nodes described one by one; beyond, a count


@dataclass(frozen=True)
class Finding:
    area: str
    what: str
    ok: bool
    detail: str


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def local_findings() -> list[Finding]:
    from inferkit.job.resources import probe_node

    found = [Finding("machine", "python", True, platform.python_version()),
             Finding("machine", "inferkit", True, __version__)]
    for package in JOB_PACKAGES:
        version = _version(package)
        ok = version is not None and (package != "ray" or version == RAY_VERSION)
        detail = version or "not installed"
        if package == "ray" and version and version != RAY_VERSION:
            detail += f" (the images and manifests use {RAY_VERSION}: mixing versions breaks clusters)"
        found.append(Finding("machine", package, ok, detail))
    facts = probe_node()
    memory = f", memory limit {facts['memory_limit'] / 2**30:.1f} GiB" if facts["memory_limit"] else ""
    found.append(Finding("machine", "cpus", True, f"{facts['real_cpus']:g} usable{memory}"))
    found.append(Finding("machine", "cpu bf16", facts["cpu_bf16"],
                         "AVX512-BF16/AMX: inferkit runs bf16 on CPU" if facts["cpu_bf16"] else
                         "no native bf16: CPU inference stays fp32"))
    gpus = facts["gpus"]
    found.append(Finding("machine", "gpus", bool(gpus), ", ".join(
        f"{name} ({memory_bytes / 2**30:.0f} GiB{', bf16' if bf16 else ''})" for name, memory_bytes, bf16 in gpus)
        or "none (nvidia-smi found none)"))
    if gpus and _version("torch"):
        import torch  # only when there are GPUs to ask about: this import is slow

        usable = torch.cuda.is_available()
        problem = None if usable else torch_gpu_problem(torch.__version__, torch.version.cuda, nvidia_driver())
        found.append(Finding("machine", "torch cuda", usable, f"CUDA {torch.version.cuda}" if usable else problem))
    for tool in KIND_TOOLS:
        path = shutil.which(tool)
        found.append(Finding("tools", tool, path is not None, path or "not on PATH"))
    if shutil.which("docker"):
        try:
            daemon = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                    text=True, timeout=20)
            answer = daemon.stdout.strip() if daemon.returncode == 0 else None
        except (subprocess.TimeoutExpired, OSError):
            answer = None
        found.append(Finding("tools", "docker engine", answer is not None, answer or "no Docker engine answers"))
    return found


def nvidia_driver() -> str | None:
    """The NVIDIA driver version nvidia-smi reports, None when it cannot say."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else None


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def torch_gpu_problem(torch_version: str, torch_cuda: str | None, driver: str | None) -> str:
    """Why a torch that sees no GPU on a machine with GPUs cannot use them, and what to install."""
    if torch_cuda is None:
        return (f"torch {torch_version} is a CPU-only build: pip install torch=={torch_version.split('+')[0]} "
                f"--index-url {TORCH_INDEX}/cu128 (CUDA 12.8, driver R525 or newer)")
    cuda_major = _numbers(torch_cuda)[0]
    needed = MIN_DRIVER_FOR_CUDA.get(cuda_major)
    if driver and needed and _numbers(driver) < _numbers(needed):
        return (f"torch {torch_version} is built for CUDA {torch_cuda}, which needs an NVIDIA driver "
                f"{needed} or newer; this machine has {driver}: install torch for CUDA 12.8 "
                f"(--index-url {TORCH_INDEX}/cu128) or upgrade the driver")
    return (f"torch {torch_version} (CUDA {torch_cuda}) finds no usable GPU with driver {driver or 'unknown'}: "
            "check CUDA_VISIBLE_DEVICES and that the container was given the GPU (nvidia.com/gpu limits)")


def _describe_crd(installed: tuple[list[str], dict | None] | None) -> tuple[bool, str]:
    if installed is None:
        return False, "not installed"
    versions, crd = installed
    version = version_of_crd(crd) if crd else None
    shown = f"RayJob versions {', '.join(versions)}"
    return "v1" in versions, shown + (f"; its schema is KubeRay {version}'s" if version else "")


def _describe_nodes(nodes: list[dict]) -> tuple[bool, str]:
    """How many nodes are Ready, and each one's allocatable CPU and memory and container runtime (the
    first few; a big cluster's count alone)."""
    ready = [n for n in nodes if n["ready"]]
    if not nodes:
        return False, "none (a node autoscaler may still add some)"
    shown = "; ".join(f"{n['name']}: {n['cpu']} CPU, {_gib(n['memory'])} allocatable, {n['runtime'] or '?'}"
                      + ("" if n["ready"] else " (not ready)") for n in nodes[:NODES_SHOWN])
    more = f"; {len(nodes) - NODES_SHOWN} more" if len(nodes) > NODES_SHOWN else ""
    return bool(ready), f"{len(ready)} of {len(nodes)} ready: {shown}{more}"


def _gib(memory: str) -> str:
    try:
        return f"{parse_quantity(memory) / 2**30:.1f} GiB"
    except ValueError:
        return memory


def cluster_findings(connection: Connection) -> list[Finding]:
    try:
        kube = connection.open()
    except ApiError as e:
        return [Finding("cluster", "kube context", False, str(e))]
    found = [Finding("cluster", "kube context", True, f"{kube.context} ({kube.server}), namespace {kube.namespace}")]
    try:
        exists = kube.namespace_exists()
    except ApiError as e:
        return found + [Finding("cluster", "api server", False, str(e))]
    found.append(Finding("cluster", "namespace", exists, kube.namespace if exists else f"{kube.namespace} is missing"))
    nodes = functools.cache(kube.nodes)  # one listing for both node lines
    probes = [
        ("kuberay crds", kube.rayjob_crd, _describe_crd),
        ("kuberay operator", kube.operator_images,
         lambda images: (bool(images), ", ".join(images) or "no deployment labelled kuberay-operator")),
        ("nodes", nodes, _describe_nodes),
        ("gpu nodes", lambda: [n for n in nodes() if n["gpus"]],
         lambda gpu: (bool(gpu), "; ".join(f"{n['name']}: {n['gpus']} GPU {n['labels']} taints {n['taints']}"
                                           for n in gpu) or "none (a node autoscaler may still add some)")),
        ("permissions", lambda: kube.missing_permissions(PERMISSIONS),
         lambda missing: (not missing, "may submit and follow RayJobs" if not missing else
                          "may not " + ", ".join(missing))),
    ]
    for what, probe, judge in probes:
        try:
            ok, detail = judge(probe())
        except ApiError as e:
            ok, detail = False, str(e)
        found.append(Finding("cluster", what, ok, detail))
    return found


def workflow_findings(found: list[Finding]) -> list[Finding]:
    ok = {f.what: f.ok for f in found}
    local_missing = [p for p in ("ray", "torch", "transformers") if not ok.get(p)]
    cluster_missing = [w for w in ("kube context", "namespace", "kuberay crds", "permissions") if not ok.get(w, False)]
    kind_missing = [t for t in (*KIND_TOOLS, "docker engine") if not ok.get(t, False)]
    return [
        Finding("workflow", "inferkit render", True, "ready"),
        Finding("workflow", "inferkit run (local)", not local_missing,
                "ready" if not local_missing else f"missing {', '.join(local_missing)}: {INSTALL_JOB}"),
        Finding("workflow", "inferkit submit", not cluster_missing,
                "ready" if not cluster_missing else f"needs: {', '.join(cluster_missing)} (see above)"),
        Finding("workflow", "GPU jobs on the cluster", ok.get("gpu nodes", False),
                "GPU nodes present" if ok.get("gpu nodes") else "no GPU nodes seen (fine with a node autoscaler)"),
        Finding("workflow", "kind quick start", not kind_missing,
                "ready" if not kind_missing else f"missing {', '.join(kind_missing)}"),
    ]


def run_doctor(connection: Connection, output_format: str | None) -> int:
    found = local_findings() + cluster_findings(connection)
    found += workflow_findings(found)
    if output_format == "json":
        print(json.dumps([asdict(f) for f in found], indent=2))
        return EXIT_OK
    area = None
    for finding in found:
        if finding.area != area:
            area = finding.area
            print(f"{area}:")
        print(f"  [{'ok' if finding.ok else '--'}] {finding.what:<24} {finding.detail}")
    return EXIT_OK
