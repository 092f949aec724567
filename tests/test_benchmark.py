"""The benchmark script runs end to end (tiny sizes: figures come from real runs, see BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_inference.py"


def test_benchmark_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("psutil")
    result = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "4", "12", "--configs", "bare-fp32", "inferkit",
                             "--repeats", "1", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "cpu.json").read_text())
    rows = {r["config"]: r for r in results["configs"]}
    assert set(rows) == {"bare-fp32", "inferkit"}
    for row in rows.values():
        assert row["outcome"] == "ok" and len(row["seconds"]) == 2 and all(p > 0 for p in row["peak_bytes"])
    # inferkit's own preprocessing and precision give the same labels as the plain fp32 loop (bf16 may
    # flip a near tie among 12 images; wrong preprocessing agrees on next to none)
    assert results["top1_agreement_inferkit_vs_bare_fp32"] >= 0.75
    assert [p["cluster"] for p in results["planner"]][-1] == "1000 nodes, 8 GPUs"
    assert (tmp_path / "cpu-throughput.png").stat().st_size > 1000
    assert "| inferkit |" in result.stdout
