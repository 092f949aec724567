"""The benchmark script runs end to end (tiny sizes: figures come from real runs, see BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inferkit.job.plan import AGREEMENT_THRESHOLD

pytestmark = [pytest.mark.slow, pytest.mark.ray]
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_inference.py"
TRAINED = ("tiny CNN trained on coloured stripes", "tiny BERT trained on sentiment texts")


def test_benchmark_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("psutil")
    # Generous hang limits: on a loaded 2-core machine one `inferkit run` can take minutes to start.
    result = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "4", "12", "--configs", "bare-fp32", "inferkit",
                             "--repeats", "1", "--hang-seconds", "600", "--out", str(tmp_path)], capture_output=True,
                            text=True, timeout=2400)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "cpu.json").read_text())
    rows = {r["config"]: r for r in results["configs"]}
    assert set(rows) == {"bare-fp32", "inferkit"}
    for row in rows.values():
        assert row["outcome"] == "ok" and len(row["seconds"]) == 2 and all(p > 0 for p in row["peak_bytes"])
    # On models whose labels follow the input, inferkit's preprocessing and precision give the labels of
    # the plain fp32 loop, and wrong preprocessing does not; random ResNet-50 is listed with how few
    # labels it gives, so its agreement is not taken for evidence.
    agreement = {row["model"]: row for row in results["agreement_with_bare_fp32"]}
    assert set(agreement) == {"ResNet-50, random weights", *TRAINED}
    assert agreement["ResNet-50, random weights"]["rows"] == 12
    for model in TRAINED:
        row = agreement[model]
        assert row["distinct_reference_labels"] >= 3 and row["inferkit"] >= AGREEMENT_THRESHOLD, row
        assert row["wrong_preprocessing"] and max(row["wrong_preprocessing"].values()) < AGREEMENT_THRESHOLD, row
        assert f"| {model} | 64 |" in result.stdout
    assert [p["cluster"] for p in results["planner"]][-1] == "1000 nodes, 8 GPUs"
    assert (tmp_path / "cpu-throughput.png").stat().st_size > 1000
    assert "| inferkit |" in result.stdout


def test_planner_benchmark_writes_its_table(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "planner", "--out", str(tmp_path)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "planner.json").read_text())["planner"]
    assert [r["cluster"] for r in rows] == ["1 node, 1 CPU", "10 nodes, 16 CPUs", "100 nodes, 8 GPUs",
                                           "1000 nodes, 8 GPUs"]
    assert all(r["microseconds"] > 0 and f"| {r['cluster']} |" in result.stdout for r in rows)
    assert rows[1]["plan"].startswith("cpu, pool 140..140")  # 14 one-thread actors on each of 10 nodes
