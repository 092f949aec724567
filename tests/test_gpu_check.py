"""benchmarks/gpu_check.py stays runnable without a GPU: its wheels survive being cut into parts and put
back together (Ray's cp312 wheel is larger than one transfer), and its CPU mode runs every step."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def wheels(tmp_path) -> list[Path]:
    """A big 'wheel' (Ray's stands in) and a small one, of random bytes."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    big, small = folder / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl", folder / "rpds_py-0.1-cp312.whl"
    big.write_bytes(os.urandom(300_000))
    small.write_bytes(os.urandom(1_000))
    return [big, small]


def test_wheels_travel_in_parts_and_come_back_whole(gpu_check, wheels, tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "pack", "--wheels-from", str(wheels[0].parent), "--dest",
                             str(tmp_path / "carry"), "--part-mib", str(200_000 / 2**20)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    parts = sorted((tmp_path / "carry").iterdir())
    assert [p.name for p in parts] == ["part-1", "part-2"]  # the big wheel itself is cut in two
    assert all((p / "chunk").stat().st_size <= 200_000 for p in parts)
    assert "2 wheels in 2 parts" in result.stdout
    # each part arrives on its own (a transfer each): the wheels come back byte for byte
    arrived = tmp_path / "arrived"
    for part in parts:
        (arrived / part.name).parent.mkdir(parents=True, exist_ok=True)
        part.rename(arrived / part.name)
    back = gpu_check.unpack(arrived, tmp_path / "out")
    assert [w.name for w in back] == sorted(w.name for w in wheels)
    assert all((tmp_path / "out" / w.name).read_bytes() == w.read_bytes() for w in wheels)


def test_a_missing_or_damaged_part_is_named(gpu_check, wheels, tmp_path):
    carry = tmp_path / "carry"
    parts = gpu_check.pack(wheels, carry, 120_000)
    assert len(parts) == 3
    (parts[1] / "chunk").unlink()
    with pytest.raises(SystemExit, match=r"1 of 3 carried parts have not arrived: carry/part-2"):
        gpu_check.unpack(carry, tmp_path / "out")
    parts = gpu_check.pack(wheels, carry, 120_000)
    chunk = parts[1] / "chunk"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])  # one bit of the big wheel
    with pytest.raises(SystemExit, match="do not add up to what was packed"):
        gpu_check.unpack(carry, tmp_path / "out")
    with pytest.raises(SystemExit, match="no carried parts"):
        gpu_check.unpack(tmp_path / "nothing", tmp_path / "out")


def test_verdict_names_the_bounding_ceiling(gpu_check):
    model_bound = gpu_check.verdict(steady=950.0, model=1000.0, decode=4000.0, cpus=16)
    assert model_bound["bound_by"] == "model" and model_bound["target_met"]
    assert model_bound["steady_share_of_bound"] == 0.95 and "decode_shortfall" not in model_bound
    input_bound = gpu_check.verdict(steady=1500.0, model=8000.0, decode=2000.0, cpus=16)
    assert input_bound["bound_by"] == "input" and not input_bound["target_met"]
    assert input_bound["steady_share_of_bound"] == 0.75
    assert input_bound["decode_shortfall"] == 4.0  # decoding must get 4x faster to feed the model
    assert input_bound["cores_for_model_ceiling"] == 64  # at 125 images/s per core


@pytest.mark.slow
@pytest.mark.ray
def test_cpu_mode_runs_one_step_of_each_kind(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "run", "--cpu", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=1500, cwd=REPO)
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    failed = {name: step for name, step in report["steps"].items() if not step["ok"]}
    assert result.returncode == 0 and not failed, (failed, result.stdout[-3000:], result.stderr[-3000:])
    steps = report["steps"]
    assert set(steps) == {"install", "gpu_tests", "resnet-16", "minilm", "out_of_memory"}  # one run of each kind
    assert "skipped" in steps["gpu_tests"]["summary"] and "failed" not in steps["gpu_tests"]["summary"]
    for name in ("resnet-16", "minilm", "out_of_memory"):
        step = steps[name]
        assert step["rows"] == step["expected_rows"] and step["duplicates"] == step["missing"] == 0
        assert any(line.startswith("device: cpu") for line in step["plan"])
    assert steps["minilm"]["rows"] == 24
    # the micro-batch halved (16 -> 8 -> 4) and every row still came out once
    oom = steps["out_of_memory"]
    assert oom["injected"] and [16, 8] in oom["oom_retries"] and [8, 4] in oom["oom_retries"]
    ceilings = report["ceilings"]
    assert ceilings["model"]["images_per_second"] > 0 and ceilings["input"]["images_per_second"] > 0
    assert ceilings["input"]["images"] == 16 and ceilings["input"]["failed"] == 0
    assert ceilings["bound_by"] in ("model", "input") and "steady_share_of_bound" in ceilings
    assert ceilings["inferkit_steady_images_per_second"] is None  # one size: the steady state is the GPU run's
    assert ceilings["steady_note"] == "one size only (CPU mode): no steady state measured"
    assert report["machine"]["device"] == "cpu" and report["machine"]["cpus"] >= 1


def test_gpu_processes_are_sampled_while_a_run_goes(gpu_check, tmp_path, monkeypatch):
    """Two processes holding GPU memory at once (the actor and an idle worker) are what the sampler keeps."""
    import time

    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "101, ray::MapWorker, 2048 MiB"\necho "102, ray::IDLE, 900 MiB"\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with gpu_check.GpuProcesses() as processes:
        deadline = time.monotonic() + 60
        while not processes.peak and time.monotonic() < deadline:
            time.sleep(0.2)
    assert processes.peak == ["101, ray::MapWorker, 2048 MiB", "102, ray::IDLE, 900 MiB"]


def test_the_out_of_memory_lines_it_counts_are_the_predictors(gpu_check, tiny_models, capsys):
    """The check counts halvings from the actors' log lines: the pattern must match what the predictor prints."""
    import pyarrow as pa

    from inferkit.job.tasks import ModelSpec, Predictor

    schema = pa.schema([("embedding", pa.list_(pa.float32())), ("error", pa.string())])
    spec = ModelSpec(task="embedding", models=(tiny_models["embedder"],), ensemble="mean", device="cpu",
                     precision="fp32", threads=1, batch_size=8, channels_last=False, trust_remote_code=False,
                     text_column="text", passthrough=(), output_schema=schema, fault="oom-above:2")
    predictor = Predictor(spec)
    capsys.readouterr()
    predictor._predict({"text": ["the movie was good"] * 8}, list(range(8)))
    assert gpu_check.OOM_LINE.findall(capsys.readouterr().err) == [("8", "4"), ("4", "2")]
