"""The job image of the `docker` tests: built once per session by scripts/images.sh (a stand-in for Ray's
base image made from package registries, then docker/Dockerfile on it), and run with the engine's client.
Docker keeps the images in its own store; the stand-in is tagged with a key of what it is made from and the
job image reuses Docker's build cache, so a second session on a machine rebuilds nothing unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "images.sh"
# A cold build (stand-in and CPU job image, torch from PyPI) took about 3 minutes here; warm, seconds.
BUILD_TIMEOUT = 1800


def docker_client() -> str | None:
    """The engine's own client where Debian's docker.io put one (newer clients need the buildx plugin to
    build), else whatever `docker` is on PATH."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")


def unavailable() -> str | None:
    """Why no image can be built or run here, or None."""
    client = docker_client()
    if client is None:
        return "no docker client on PATH"
    info = subprocess.run([client, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                          timeout=60)
    if info.returncode != 0:
        said = info.stderr.strip().splitlines()
        return f"no Docker engine answers ({said[-1] if said else 'docker info failed'})"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap (Debian package) is not installed: the stand-in base cannot be built"
    return None


def build_job_image(flavor: str = "cpu") -> tuple[str, float]:
    """The job image's tag and the seconds its build took."""
    started = time.monotonic()
    result = subprocess.run([str(SCRIPT), "job", flavor], capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                            env={**os.environ, "DOCKER": docker_client() or "docker"})
    if result.returncode != 0:
        raise AssertionError(f"scripts/images.sh job {flavor} failed:\n{result.stderr[-4000:]}")
    return result.stdout.strip().splitlines()[-1], time.monotonic() - started


def docker(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run([docker_client() or "docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr[-3000:]}")
    return result
