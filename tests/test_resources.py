"""What a node really offers, read from files shaped as the kernel and nvidia-smi write them
(tests/fixtures): cgroup v1 and v2 CPU quotas and memory limits, each folder laid out as a container's
/sys/fs/cgroup (v1-this-machine is copied from the machine these tests were written on); the cpuset
through the CPU affinity; and nvidia-smi's answers for one GPU, several, a MIG slice, unified memory,
an old driver and no GPU, run as a real `nvidia-smi` executable on PATH."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from inferkit.job import resources

FIXTURES = Path(__file__).parent / "fixtures"
GIB, MIB = 2**30, 2**20


@pytest.mark.parametrize(("folder", "affinity", "cpus", "memory"), [
    ("v1-this-machine", 2, 2, None),  # quota -1, and "no limit" written as 2**63 - 4096
    ("v1-pod-1500m-3Gi", 4, 1.5, 3 * GIB),
    ("v1-pod-1500m-3Gi", 1, 1, 3 * GIB),  # a one-CPU cpuset is below the quota
    ("v2-no-limit", 16, 16, None),  # "max 100000" and "max"
    ("v2-pod-2500m-4Gi", 8, 2.5, 4 * GIB),
    ("v2-pod-500m-512Mi", 4, 0.5, 512 * MIB),
])
def test_container_cpus_and_memory_from_cgroup_files(monkeypatch, folder, affinity, cpus, memory):
    monkeypatch.setattr(resources, "CGROUP", FIXTURES / "cgroup" / folder)
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    assert resources.container_cpus() == cpus
    assert resources.container_memory() == memory


def test_no_cgroup_files_means_the_cpuset_and_no_memory_limit(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "CGROUP", tmp_path)
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert (resources.container_cpus(), resources.container_memory()) == (3, None)


@pytest.mark.parametrize(("flags", "bf16"), [
    ("fpu sse sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni", True),  # AMD EPYC (Zen 4), Cooper Lake
    ("fpu sse sse2 avx2 avx512f amx_bf16 amx_tile amx_int8", True),  # Sapphire Rapids
    ("fpu sse sse2 avx2 avx512f avx512bw avx512_vnni", False),  # Skylake/Cascade Lake: emulated only
])
def test_cpu_bf16_from_cpuinfo_flags(flags, bf16):
    cpuinfo = f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert resources.cpu_has_bf16(cpuinfo) is bf16


@pytest.fixture
def nvidia_smi(tmp_path, monkeypatch):
    """Puts an `nvidia-smi` on PATH that answers like the real one from a fixture: its --query-gpu
    output (<case>.csv, exit 0 unless the case says otherwise) and its -L listing (<case>.L.txt)."""

    def install(case: str, exit_code: int = 0) -> None:
        folder = FIXTURES / "nvidia-smi"
        listing = folder / f"{case}.L.txt"
        script = tmp_path / "nvidia-smi"
        script.write_text(f'#!/bin/sh\nif [ "$1" = "-L" ]; then\n  cat "{listing}" 2>/dev/null\n  exit 0\nfi\n'
                          f'cat "{folder / (case + ".csv")}"\nexit {exit_code}\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{tmp_path}:{resources.os.environ['PATH']}")

    return install


@pytest.mark.parametrize(("case", "exit_code", "gpus"), [
    ("one-a100", 0, [("NVIDIA A100-SXM4-80GB", 81920 * MIB, True)]),
    ("eight-h100", 0, [("NVIDIA H100 80GB HBM3", 81559 * MIB, True)] * 8),
    ("four-t4", 0, [("Tesla T4", 15360 * MIB, False)] * 4),  # Turing: no bf16
    # A container given a 1g.5gb slice sees its parent's 40 GB in --query-gpu; the slice has 5 GB.
    ("mig-a100", 0, [("NVIDIA A100-SXM4-40GB", 5 * 10**9, True)]),
    # Unified memory: nvidia-smi cannot tell it; the GPU counts, its memory is unknown (0).
    ("gb10-unified-memory", 0, [("NVIDIA GB10", 0, True)]),
    ("no-gpu", 6, []),  # "No devices were found", exit 6
    ("old-driver", 2, []),  # drivers before compute_cap: the query fails, Ray's GPU count still holds
])
def test_gpus_from_nvidia_smi(nvidia_smi, case, exit_code, gpus):
    nvidia_smi(case, exit_code)
    assert resources.probe_node()["gpus"] == gpus


def test_no_nvidia_smi_means_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resources.probe_node()["gpus"] == []
