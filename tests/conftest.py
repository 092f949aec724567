"""Shared fixtures: the CLI in-process, the KubeRay CRD schemas from ../shared, tiny models."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO.parent / "shared" / "kuberay-crds" / "v1.7.0"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def inferkit(capsys, monkeypatch):
    """Run the CLI in this process, as a user would from a shell; returns exit code, stdout, stderr."""
    from inferkit.cli import main

    monkeypatch.delenv("INFERKIT_CRD_DIR", raising=False)

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


@pytest.fixture(scope="session")
def crd_dir() -> str:
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR}: this clone has no ../shared beside it (CI has)")
    return str(CRD_DIR)


@pytest.fixture(scope="session")
def crd_schemas(crd_dir):
    from inferkit.crds import load_crd_schemas

    return load_crd_schemas(crd_dir)


@pytest.fixture(scope="session")
def update_golden() -> bool:
    return os.environ.get("INFERKIT_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="session")
def ray_local():
    """One embedded 2-CPU Ray for the in-process job tests (`inferkit run` reuses a connected Ray)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    import tiny

    root = tmp_path_factory.mktemp("models")
    return {
        "classifier": tiny.bert(root / "classifier", classifier=True),
        "embedder": tiny.bert(root / "embedder", classifier=False, max_positions=16),
        "resnet": tiny.resnet(root / "resnet"),
        "vit": tiny.vit(root / "vit"),
    }
