"""scripts/kind.sh where no Docker is: its help, the versions it pins, and a dry run of the whole path
that prints each command, on an x86_64 and an arm64 machine, with a python3 that has no tomllib."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from inferkit import RAY_VERSION, __version__

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "kind.sh"
NODE_IMAGE = re.compile(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}")


@pytest.fixture
def fake_bin(tmp_path) -> Path:
    """A PATH folder that shadows `uname` (the machine) and `python3` (Ubuntu 22.04's 3.10, no tomllib)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    python3 = folder / "python3"
    python3.write_text('#!/bin/sh\ncase "$*" in *tomllib*) echo "ModuleNotFoundError: tomllib" >&2; exit 1;; esac\n'
                       'echo "python3 must not be needed" >&2; exit 1\n')
    python3.chmod(0o755)
    return folder


def _run(fake_bin: Path, *args: str, machine: str = "x86_64") -> subprocess.CompletedProcess:
    uname = fake_bin / "uname"
    uname.write_text(f'#!/bin/sh\n[ "$1" = "-m" ] && echo {machine} && exit 0\nexec /bin/uname "$@"\n')
    uname.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    for name in ("INFERKIT_IMAGE", "INFERKIT_KIND_CLUSTER", "INFERKIT_KIND_DRY_RUN", "INFERKIT", "PYTHON"):
        env.pop(name, None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60,
                          cwd="/")


def test_help_lists_every_subcommand(fake_bin):
    result = _run(fake_bin, "help")
    assert result.returncode == 0, result.stderr
    for command in ("up", "image", "load", "submit", "check", "down", "all", "versions", "--dry-run"):
        assert re.search(rf"^\s+(-n, )?{re.escape(command)}\b", result.stdout, re.MULTILINE), command
    wrong = _run(fake_bin, "deploy")
    assert wrong.returncode == 2 and "usage: scripts/kind.sh" in wrong.stderr


def test_versions_names_what_it_pins(fake_bin):
    result = _run(fake_bin, "versions")
    assert result.returncode == 0, result.stderr
    lines = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in result.stdout.splitlines())
    assert lines["inferkit"] == __version__ and lines["ray"] == RAY_VERSION
    assert NODE_IMAGE.fullmatch(lines["kind node image"])
    assert lines["kuberay chart"] == "kuberay-operator 1.7.0"
    assert lines["image"].startswith(f"ghcr.io/inferkit/inferkit:{__version__}-cpu (for linux/amd64")
    assert lines["data folder"].startswith(f"{REPO}/.kind-data ")


def test_dry_run_prints_the_whole_path(fake_bin):
    result = _run(fake_bin, "--dry-run", "all")
    assert result.returncode == 0, result.stderr
    commands = [line.removeprefix("+ ") for line in result.stdout.splitlines() if line.startswith("+ ")]
    expected = [
        "mkdir -p .kind-data",
        "chmod 0777 .kind-data",
        "kind create cluster --name inferkit --config manifests/kind/kind-cluster.yaml",
        "helm upgrade --install kuberay-operator kuberay/kuberay-operator --version 1.7.0 --kube-context "
        "kind-inferkit --wait --timeout 5m",
        f"docker build -f docker/Dockerfile --platform linux/amd64 --build-arg FLAVOR=cpu --build-arg ARCH_SUFFIX= "
        f"-t ghcr.io/inferkit/inferkit:{__version__}-cpu .",
        "kind load image-archive",
        "submit --context kind-inferkit --preset kind",
        "test -f .kind-data/kind-e2e-output/_SUCCESS",
    ]
    position = 0
    for want in expected:  # in this order
        hits = [i for i, line in enumerate(commands) if want in line and i >= position]
        assert hits, f"{want!r} not printed after command {position}:\n" + "\n".join(commands)
        position = hits[0]
    # the pods' uid writes to the data folder, checked on the node; an old output is replaced, not rm -rf'd
    assert any(line.startswith("docker exec -u 1000:100 inferkit-control-plane touch /inferkit-data/")
               for line in commands)
    submit = next(line for line in commands if " submit " in line)
    assert "--output /data/kind-e2e-output --overwrite" in submit
    assert not any(line.startswith("rm -rf") for line in commands)


def test_arm64_builds_on_rays_aarch64_image(fake_bin):
    for machine in ("arm64", "aarch64"):  # macOS and Linux say it differently
        result = _run(fake_bin, "--dry-run", "image", "gpu", machine=machine)
        assert result.returncode == 0, result.stderr
        assert (f"docker build -f docker/Dockerfile --platform linux/arm64 --build-arg FLAVOR=gpu "
                f"--build-arg ARCH_SUFFIX=-aarch64 -t ghcr.io/inferkit/inferkit:{__version__}-gpu .") in result.stdout
    versions = _run(fake_bin, "versions", machine="arm64").stdout
    assert f"on rayproject/ray:{RAY_VERSION}-py311-cpu-aarch64" in versions


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_builds_images_through_the_script(fake_bin):
    """The Makefile reads no version with Python; its image targets are the script's."""
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["make", "-n", "image-cpu", "image-gpu", "kind-e2e"], capture_output=True, text=True,
                            env=env, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["scripts/kind.sh image cpu", "scripts/kind.sh image gpu",
                                          "scripts/kind.sh all"]


def _fake_tools(fake_bin: Path, *, cpus: int, memory: int, node_sees: bool = True, kind: str = "v0.32.0") -> Path:
    """docker, kind and helm stand-ins that log their calls: Docker's VM has `cpus` and `memory`; the kind
    node sees the data folder or not; the cluster exists already."""
    calls = fake_bin / "calls.log"
    tools = {
        "docker": f'case "$1" in info) echo "{cpus} {memory}";; '
                  f'exec) {"true" if node_sees else "false"};; *) true;; esac',
        "kind": f'case "$1" in version) echo "kind {kind} go1.26 linux/amd64";; get) echo inferkit;; esac',
        "helm": "true",
    }
    for name, body in tools.items():
        tool = fake_bin / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n{body}\n')
        tool.chmod(0o755)
    return calls


@pytest.mark.parametrize("cpus, mib", [(2, 8192), (4, 5120)])
def test_up_refuses_a_docker_vm_too_small_for_the_job(fake_bin, cpus, mib):
    calls = _fake_tools(fake_bin, cpus=cpus, memory=mib * 2**20)
    result = _run(fake_bin, "up")
    assert result.returncode == 1
    assert (f"Error: Docker gives its containers {cpus} CPUs and {mib} MiB; the kind quick start needs at least "
            "4 CPUs and 6 GiB") in result.stderr
    assert "helm" not in calls.read_text() and "kind create" not in calls.read_text()


def test_up_checks_the_node_sees_the_data_folder(fake_bin):
    calls = _fake_tools(fake_bin, cpus=4, memory=int(5.8 * 2**30), node_sees=False, kind="v0.29.0")
    result = _run(fake_bin, "up")
    assert result.returncode == 1, result.stderr
    assert "Warning: kind v0.29.0 is older than v0.32.0" in result.stderr
    assert f"Error: the kind node does not see {REPO}/.kind-data: Docker's VM does not share" in result.stderr
    assert "docker exec inferkit-control-plane test -f /inferkit-data/.probe-" in calls.read_text()
    assert "helm" not in calls.read_text()
    assert not list((REPO / ".kind-data").glob(".probe-*"))  # the probe is cleaned up


def test_up_checks_that_what_the_node_writes_reaches_the_laptop(fake_bin):
    calls = _fake_tools(fake_bin, cpus=4, memory=int(5.8 * 2**30))
    result = _run(fake_bin, "up")
    # the fake node cannot really write into the folder: the last check fails, after the first two passed
    assert result.returncode == 1 and "a file the node wrote did not reach" in result.stderr
    assert "docker exec -u 1000:100 inferkit-control-plane touch /inferkit-data/.probe-" in calls.read_text()
