"""Resuming (issue 15): what the ledger costs a run that is not interrupted, and what a resume saves.

  bookkeeping   one Ray Data pipeline (read tasks -> inference actors -> write) on the bundled
                all-MiniLM-L6-v2, written two ways into files of the size the planner picks (one
                actor): (a) `write_parquet`, as before the ledger, and (b) through the ledger, a file
                and its entry each; best of --repeats, rows per second of the whole execution.
  ledger alone  committing --blocks blocks of 100 rows and loading their entries (local disk).
  resume        `inferkit run` killed (SIGKILL of its process group) once half of the rows are written,
                then run again (it resumes) and, from the same unfinished run, with --restart.

    python benchmarks/bench_resume.py [--rows 3000] [--repeats 2] [--blocks 1000]

Prints the figures (markdown) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

ROWS_PER_GROUP = 100
BATCH = 32


def make_input(folder: Path, rows: int) -> Path:
    words = "the film was good bad long short and a plot with actors who did their best on a rainy day".split()
    texts = [" ".join(words[(i * 7 + k) % len(words)] for k in range(12 + i % 20)) for i in range(rows)]
    path = folder / "in.parquet"
    pq.write_table(pa.table({"id": list(range(rows)), "text": texts}), path, row_group_size=ROWS_PER_GROUP)
    return path


def pipeline_rows_per_second(source_path: Path, out: Path, with_ledger: bool) -> float:
    """The run's own stages, built as run.py builds them, timed from execution start to the last file."""
    import ray

    from inferkit.job import io
    from inferkit.job.ledger import Ledger, write_through
    from inferkit.job.plan import output_file_rows
    from inferkit.job.tasks import ModelSpec, Predictor, demo_model

    source = io.discover(str(source_path), "auto")
    schema = io.sample_schema(source)
    output_schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32())), ("error", pa.string())])
    spec = ModelSpec(task="embedding", models=(demo_model(),), ensemble="mean", device="cpu", precision="fp32",
                     threads=max(1, (os.cpu_count() or 2) - 1), batch_size=BATCH, channels_last=False,
                     trust_remote_code=False, text_column="text", passthrough=("id",), output_schema=output_schema)
    parts = [source.part_table(p) for p in range(source.parts)]
    dataset = ray.data.from_arrow(parts).map_batches(
        io.read_units, fn_kwargs={"filesystem": source.filesystem, "fmt": "parquet", "schema": schema},
        batch_format="pyarrow", batch_size=None, num_cpus=0.25).map_batches(
        Predictor, fn_constructor_kwargs={"spec": spec}, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1),
        num_cpus=max(0.75, (os.cpu_count() or 2) - 0.25), batch_size=BATCH, batch_format="pyarrow")
    file_rows, _ = output_file_rows(source.parts * ROWS_PER_GROUP, BATCH, actors=1)
    started = time.perf_counter()
    if with_ledger:
        ledger = Ledger(pafs.LocalFileSystem(), str(out))
        ledger.open({"benchmark": True}, restart=True, run_id="bench")
        write_through(dataset, ledger, file_rows, {"num_cpus": 0.25})
    else:
        dataset.drop_columns(list(io.KEYS)).write_parquet(str(out), min_rows_per_file=file_rows,
                                                          ray_remote_args={"num_cpus": 0.25})
    return source.parts * ROWS_PER_GROUP / (time.perf_counter() - started)


def bookkeeping(tmp: Path, rows: int, repeats: int) -> dict:
    import ray

    source = make_input(tmp, rows)
    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    try:
        figures: dict[str, list[float]] = {"without ledger": [], "with ledger": []}
        for repeat in range(repeats):
            for name, ledger in (("without ledger", False), ("with ledger", True)):
                out = tmp / f"out-{ledger}-{repeat}"
                figures[name].append(pipeline_rows_per_second(source, out, ledger))
    finally:
        ray.shutdown()
    return {name: max(values) for name, values in figures.items()}


def ledger_alone(tmp: Path, blocks: int) -> dict:
    from inferkit.job import io
    from inferkit.job.ledger import Ledger

    ledger = Ledger(pafs.LocalFileSystem(), str(tmp / "ledger-out"))
    ledger.open({"benchmark": True}, restart=True, run_id="bench")
    started = time.perf_counter()
    for b in range(blocks):
        ledger.commit(pa.table({"id": list(range(b * 100, b * 100 + 100)), "error": pa.nulls(100, pa.string()),
                                io.PART: [b] * 100, io.ROW: list(range(100)), io.PART_ROWS: [100] * 100}))
    commit = (time.perf_counter() - started) / blocks
    started = time.perf_counter()
    ledger.load(compact=True)
    load = time.perf_counter() - started
    started = time.perf_counter()
    progress = ledger.load()
    compacted = time.perf_counter() - started
    assert progress.rows == blocks * 100
    return {"blocks": blocks, "commit_ms_per_block": commit * 1000, "load_s": load, "load_compacted_s": compacted}


def _inferkit(args: list[str], **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "inferkit", "run", *args], env=env, **popen)


def _ledger_rows(staging: Path) -> int:
    rows = 0
    for entry in (staging / "_inferkit" / "ledger").glob("*.json"):
        try:
            rows += json.loads(entry.read_text())["rows"]
        except (ValueError, KeyError):
            pass
    return rows


def resume_against_restart(tmp: Path, rows: int) -> dict:
    (tmp / "resume-in").mkdir()
    source = make_input(tmp / "resume-in", rows)
    out = tmp / "resume-out"
    staging = Path(str(out) + ".inferkit-unfinished")
    args = ["--input", str(source), "--output", str(out), "--precision", "fp32", "--batch-size", str(BATCH)]
    first = _inferkit(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started = time.perf_counter()
    while _ledger_rows(staging) < rows // 2:
        if first.poll() is not None:
            raise SystemExit("the first run ended before half its rows were written")
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_after = time.perf_counter() - started
    kept = _ledger_rows(staging)
    shutil.copytree(staging, tmp / "kept")
    figures = {"rows": rows, "killed_after_s": killed_after, "rows_kept": kept}
    for name, extra in (("resume", []), ("restart", ["--restart"])):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(tmp / "kept", staging)
        started = time.perf_counter()
        run = _inferkit(args + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = run.communicate()
        if run.returncode:
            raise SystemExit(f"{name} failed:\n{err[-3000:]}")
        report = json.loads((out / "_inferkit_report.json").read_text())
        figures[name] = {"wall_s": time.perf_counter() - started, "rows_resumed": report["rows_resumed"]}
    return figures


def main() -> None:
    from inferkit.job.plan import output_file_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=1000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        alone = ledger_alone(tmp, options.blocks)
        throughput = bookkeeping(tmp, options.rows, options.repeats)
        resume = resume_against_restart(tmp, options.rows)
    overhead = 1 - throughput["with ledger"] / throughput["without ledger"]
    print(f"## Resuming: {options.rows} texts, all-MiniLM-L6-v2 fp32, batch {BATCH}, {os.cpu_count()} CPUs\n")
    print("| figure | value |\n| --- | ---: |")
    file_rows, _ = output_file_rows(options.rows, BATCH, actors=1)
    print(f"| throughput without the ledger (write_parquet, {file_rows}-row files) | "
          f"{throughput['without ledger']:.1f} rows/s |")
    print(f"| throughput with the ledger (the same files, each with its entry) | {throughput['with ledger']:.1f} rows/s |")
    print(f"| bookkeeping overhead | {overhead:.1%} |")
    print(f"| ledger alone: commit one 100-row block (file + entry) | {alone['commit_ms_per_block']:.2f} ms |")
    print(f"| ledger alone: load {alone['blocks']} entries / once compacted | {alone['load_s']:.2f} s / "
          f"{alone['load_compacted_s']:.3f} s |")
    print(f"| first run killed at | {resume['rows_kept']} of {resume['rows']} rows written, "
          f"{resume['killed_after_s']:.1f} s |")
    print(f"| resume (same command) | {resume['resume']['wall_s']:.1f} s, {resume['resume']['rows_resumed']} rows "
          "resumed |")
    print(f"| restart (--restart) | {resume['restart']['wall_s']:.1f} s |")
    print(f"| resume / restart | {resume['resume']['wall_s'] / resume['restart']['wall_s']:.2f} |")


if __name__ == "__main__":
    main()
