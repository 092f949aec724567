"""What the cluster really has, read at run time: Ray's view of every node, corrected by a probe on
each node for what its container may use (cgroup CPU quota and cpuset, memory limit), the CPU's bf16
support and the GPU model and memory (nvidia-smi)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from inferkit.job.plan import ClusterResources, NodeResources

CGROUP = Path("/sys/fs/cgroup")
_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max` ("max 100000" or "200000 100000") -> CPUs, None when unlimited."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def parse_cpu_quota_v1(quota: str, period: str) -> float | None:
    value = int(quota.strip())
    return None if value <= 0 else value / int(period.strip())


def parse_memory_limit(text: str) -> int | None:
    text = text.strip()
    if text in ("", "max"):
        return None
    value = int(text)
    return None if value >= 2**60 else value  # v1 reports "no limit" as a huge number


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def container_cpus() -> float:
    """CPUs this process may really use: the smaller of its cpuset and its cgroup quota."""
    cpus: float = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    if (text := _read(CGROUP / "cpu.max")) is not None:
        quota = parse_cpu_max(text)
    elif (q := _read(CGROUP / "cpu" / "cpu.cfs_quota_us")) is not None:
        quota = parse_cpu_quota_v1(q, _read(CGROUP / "cpu" / "cpu.cfs_period_us") or "100000")
    return min(cpus, quota) if quota else cpus


def container_memory() -> int | None:
    for path in (CGROUP / "memory.max", CGROUP / "memory" / "memory.limit_in_bytes"):
        if (text := _read(path)) is not None:
            return parse_memory_limit(text)
    return None


def cpp_compiler_present() -> bool:
    """The C++ compiler inductor's CPU backend calls: $CXX, else g++ (torch/_inductor/config.py, cpp.cxx)."""
    return shutil.which(os.environ.get("CXX") or "g++") is not None


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Native bf16 on this CPU (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    text = cpuinfo if cpuinfo is not None else (_read(Path("/proc/cpuinfo")) or "")
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def parse_nvidia_smi(text: str) -> list[tuple[str, int, bool]]:
    """`nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits` ->
    [(name, bytes, bf16)]; bf16 needs compute capability 8.0 (Ampere) or newer. A memory nvidia-smi
    cannot tell ("[N/A]" on unified-memory GPUs such as the GB10) is 0, unknown: the GPU still counts."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            continue
        name, mib, capability = parts[0], parts[1], parts[2]
        try:
            major = int(capability.split(".")[0])
        except ValueError:
            continue
        try:
            memory = int(float(mib)) * 2**20
        except ValueError:
            memory = 0
        gpus.append((name, memory, major >= 8))
    return gpus


# `nvidia-smi -L` lists a MIG slice as "  MIG 1g.5gb  Device  0: (UUID: MIG-...)"; "1c.2g.10gb" for
# compute-instance profiles. The last figure is the slice's memory in GB.
_MIG_SLICE = re.compile(r"^\s*MIG\s+(?:\d+c\.)?\d+g\.(\d+)gb\s+Device\s+\d+:", re.MULTILINE)


def parse_mig_slices(listing: str) -> list[int]:
    """`nvidia-smi -L` -> the memory in bytes of each MIG slice listed. A container given a MIG slice
    sees its parent GPU in `--query-gpu`, whose memory.total is the whole GPU's, not the slice's."""
    return [int(gb) * 10**9 for gb in _MIG_SLICE.findall(listing)]


def _nvidia_smi(*args: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout if out.returncode == 0 else ""


def probe_node() -> dict:
    """Runs on each node (a zero-CPU task): what its container really offers."""
    gpus: list[tuple[str, int, bool]] = []
    if shutil.which("nvidia-smi"):
        gpus = parse_nvidia_smi(_nvidia_smi("--query-gpu=name,memory.total,compute_cap",
                                            "--format=csv,noheader,nounits"))
        if gpus and (slices := parse_mig_slices(_nvidia_smi("-L"))):
            gpus = [(name, min(slices), bf16) for name, _, bf16 in gpus]
    return {"real_cpus": container_cpus(), "memory_limit": container_memory(), "cpu_bf16": cpu_has_bf16(),
            "cpp_compiler": cpp_compiler_present(), "gpus": gpus}


def read_cluster() -> ClusterResources:
    """Every alive node as Ray sees it, corrected by `probe_node` run on that node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0)(probe_node)
    futures = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
               for n in alive]
    nodes = []
    for node, facts in zip(alive, ray.get(futures, timeout=120), strict=True):
        res = node.get("Resources", {})
        gpus = facts["gpus"]
        accelerator = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), "")
        memory = int(res.get("memory", 0))
        nodes.append(NodeResources(
            node_id=node["NodeID"],
            cpus=float(res.get("CPU", 0)),
            real_cpus=facts["real_cpus"],
            gpus=int(res.get("GPU", 0)),
            memory_bytes=min(memory, facts["memory_limit"]) if facts["memory_limit"] else memory,
            object_store_bytes=int(res.get("object_store_memory", 0)),
            gpu_type=gpus[0][0] if gpus else accelerator,
            gpu_memory_bytes=min(g[1] for g in gpus) if gpus else 0,
            gpu_bf16=all(g[2] for g in gpus) if gpus else False,
            cpu_bf16=facts["cpu_bf16"],
            cpp_compiler=facts["cpp_compiler"],
        ))
    return ClusterResources(tuple(nodes))
