"""Runs that die and are run again: every row exactly once, only the missing rows computed again,
another job's leftovers refused; and rows that kill their worker process contained as error rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tiny

ROWS, ROWS_PER_GROUP = 480, 40
UNFINISHED = ".inferkit-unfinished"


def _parquet_input(folder: Path, rows: int = ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(rows)), "text": [f"the film {i} was good and the plot was fun" for i in range(rows)],
                      "title": [f"film {i}" for i in range(rows)]})
    pq.write_table(table, folder / "in.parquet", row_group_size=ROWS_PER_GROUP)
    return folder / "in.parquet"


def _command(model: str, source: Path | str, output: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "inferkit", "run", "--task", "text-classification", "--model", model, "--input",
            str(source), "--output", output, "--batch-size", "8", "--precision", "fp32", *extra]


def _env(**faults: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["INFERKIT_INJECT_FAULT"] = ",".join(f"{k.replace('_', '-')}:{v}" for k, v in faults.items())
    return env


def _ledger_rows(staging: Path) -> int:
    """Rows the ledger holds, read as the driver of another attempt would (compacted entries too)."""
    import pyarrow.fs as pafs

    from inferkit.job.ledger import Ledger

    return Ledger(pafs.LocalFileSystem(), str(staging)).load().rows


def _kill_midway(command: list[str], env: dict, staging: Path, at_rows: int, log: Path,
                 sig: signal.Signals = signal.SIGKILL, meanwhile: Callable[[], None] | None = None) -> None:
    """Start a run in a process group of its own (the driver and the Ray it starts) and, once the ledger
    holds `at_rows` rows, SIGKILL the whole group, as a node loss or an evicted pod would, or SIGTERM the
    driver alone, as `docker stop` or a pod's deletion does: then it must stop cleanly (exit 143, saying
    what it kept) and take its Ray with it. `meanwhile` is called once the run has written a row."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    if meanwhile:
        while _ledger_rows(staging) < 1:
            assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        meanwhile()
        assert process.poll() is None, f"the run ended during `meanwhile`:\n{log.read_text()[-3000:]}"
    while _ledger_rows(staging) < at_rows:
        assert process.poll() is None, f"the run ended before it could be killed:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    if sig == signal.SIGKILL:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        process.send_signal(sig)
        assert process.wait(timeout=30) == 143, log.read_text()[-3000:]
        assert "Terminated." in log.read_text() and "written so far are kept" in log.read_text()
    process.wait()
    for _ in range(100):  # the group's other processes (Ray's) go as the kernel reaps them
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"Ray's processes outlived the driver after {sig.name}")


def _computed(trace: Path) -> Counter:
    """(part, row) keys the inference actors computed, from the trace hook's files."""
    return Counter(line for f in trace.glob("*.txt") for line in f.read_text().split())


def _published(out: Path) -> tuple[pd.DataFrame, dict]:
    assert (out / "_SUCCESS").exists()
    assert not (out / "_inferkit").exists() and not Path(str(out) + UNFINISHED).exists()
    schemas = {pq.read_schema(f).to_string() for f in out.glob("*.parquet")}
    assert len(schemas) == 1, schemas
    return pd.read_parquet(out), json.loads((out / "_inferkit_report.json").read_text())


@pytest.mark.ray
@pytest.mark.slow
def test_a_run_killed_twice_resumes_with_every_row_once(tiny_models, tmp_path):
    """Killed at a quarter or later, resumed and stopped by SIGTERM halfway through the rest, then run to the
    end: exactly once. While the first attempt runs, a second run of the same output is refused (its lease)."""
    source = _parquet_input(tmp_path / "in")
    out = tmp_path / "out"
    staging = Path(str(out) + UNFINISHED)
    traces = [tmp_path / f"trace{i}" for i in range(3)]
    for trace in traces:
        trace.mkdir()
    # The fault setting (slow, trace) is not part of the job, so it never stands in the way of a resume.
    command = _command(tiny_models["classifier"], source.parent, str(out))

    def second_run_is_refused() -> None:
        refused = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert refused.stderr.strip().splitlines()[-1].endswith("is writing this output now (" + str(
            staging / "_inferkit" / "lease.json") + " is being renewed): wait for it to end, or stop it first")

    _kill_midway(command, _env(slow="1.0", trace=str(traces[0])), staging, ROWS // 4, tmp_path / "first.log",
                 meanwhile=second_run_is_refused)
    first_kept = _ledger_rows(staging)
    second_target = first_kept + (ROWS - first_kept) // 2
    _kill_midway(command, _env(slow="0.1", trace=str(traces[1])), staging, second_target, tmp_path / "second.log",
                 signal.SIGTERM)
    assert "resuming: " in (tmp_path / "second.log").read_text()
    assert not out.exists()

    # The input copied again (new modification times) and spelled another way is the same job.
    os.utime(source, (0, 0))
    again = _command(tiny_models["classifier"], f"{source.parent}/", str(out))
    third = subprocess.run(again, env=_env(trace=str(traces[2])), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    frame, report = _published(out)
    assert Counter(frame.id) == Counter(range(ROWS)) and frame.error.isna().all()  # exactly once
    resumed = report["rows_resumed"]
    assert resumed >= second_target and report["attempts"] == 3
    assert f"resuming: {resumed} of {ROWS} rows already done" in third.stderr
    # Each attempt computed only rows no earlier attempt had written, each once; the last exactly the rest.
    second_computed, third_computed = _computed(traces[1]), _computed(traces[2])
    assert sum(second_computed.values()) <= ROWS - first_kept and set(second_computed.values()) == {1}
    assert sum(third_computed.values()) == ROWS - resumed and set(third_computed.values()) <= {1}


@pytest.mark.ray
@pytest.mark.slow
def test_a_publish_killed_between_its_rename_and_its_cleanup_is_finished_by_the_same_command(
        inferkit, tiny_models, tmp_path):
    """The renaming publish moves the run into place, then removes its bookkeeping and the output it replaced:
    a kill in between left a complete output that the same command (every KubeRay retry) refused for ever
    ("already exists"). Now the same job finishes the clean-up, computing nothing; another job is refused."""
    source = _parquet_input(tmp_path / "in", 40)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("the output --overwrite replaces")
    command = _command(tiny_models["classifier"], source, str(out), "--overwrite")
    killed = subprocess.run(command, env=_env(kill_before_cleanup=""), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    replaced = Path(str(out) + ".inferkit-old")
    assert (out / "_SUCCESS").exists() and (out / "_inferkit").is_dir() and (replaced / "old.txt").exists()

    args = ["--input", str(source), "--output", str(out), "--batch-size", "8", "--precision", "fp32"]
    other = inferkit("run", "--task", "text-classification", "--model", tiny_models["classifier_other_vocabulary"],
                     *args)
    assert other.code == 2 and f"--output {out}: already exists; pass --overwrite" in other.stderr
    assert (out / "_inferkit").is_dir() and replaced.exists()  # refusing touched nothing
    report = out / "_inferkit_report.json"
    kept = report.read_text()
    report.write_text("{")  # a report that cannot be read: the exit code could not tell the truth
    unreadable = inferkit("run", "--task", "text-classification", "--model", tiny_models["classifier"], *args)
    assert unreadable.code == 1 and f"remove {out / '_inferkit'} and pass --overwrite" in unreadable.stderr
    report.write_text(kept)

    finished = inferkit("run", "--task", "text-classification", "--model", tiny_models["classifier"], *args,
                        "--overwrite")
    assert finished.code == 0, finished.stderr
    assert "stopped before its clean-up: done now" in finished.stderr and "plan:" not in finished.stderr
    assert not replaced.exists()
    frame, report = _published(out)
    assert Counter(frame.id) == Counter(range(40)) and report["attempts"] == 1


@pytest.mark.ray
@pytest.mark.slow
def test_a_copying_publish_killed_before_its_cleanup_is_finished_by_the_same_command(inferkit, tiny_models,
                                                                                     tmp_path, mounted_output):
    """The same where the output is a mount point (a pod's volume; an object store publishes the same way):
    files linked in, `_SUCCESS` last, then the staged run inside it removed; a kill before that removal left
    the output complete and the same command refused it."""
    source = _parquet_input(tmp_path / "in", 40)
    killed = subprocess.run(_command(tiny_models["classifier"], source, str(mounted_output)),
                            env=_env(kill_before_cleanup=""), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    staging = mounted_output / UNFINISHED
    assert (mounted_output / "_SUCCESS").exists() and (staging / "_inferkit" / "publishing").exists()
    finished = inferkit("run", "--task", "text-classification", "--model", tiny_models["classifier"], "--input",
                        str(source), "--output", str(mounted_output), "--batch-size", "8", "--precision", "fp32")
    assert finished.code == 0, finished.stderr
    assert "stopped before its clean-up: done now" in finished.stderr and "plan:" not in finished.stderr
    assert not staging.exists()
    assert Counter(_published(mounted_output)[0].id) == Counter(range(40))


def test_another_job_is_refused_restart_starts_over_and_a_finished_output_needs_overwrite(
        inferkit, ray_local, tiny_models, tmp_path):
    source = _parquet_input(tmp_path / "in")
    out = tmp_path / "out"
    staging = Path(str(out) + UNFINISHED)
    args = ["--input", str(source), "--output", str(out), "--batch-size", "8", "--precision", "fp32"]
    _kill_midway(_command(tiny_models["classifier"], source, str(out)), _env(slow="0.1"), staging, 1,
                 tmp_path / "first.log")
    kept = sorted(p.name for p in staging.glob("*.parquet"))
    assert kept

    other_model = inferkit("run", "--task", "text-classification", "--model",
                           tiny_models["classifier_other_vocabulary"], *args)
    assert other_model.code == 2 and "Traceback" not in other_model.stderr
    assert f"an unfinished run of another job is kept at {staging}: models (" in other_model.stderr
    assert "pass --restart to throw it away and start over" in other_model.stderr
    other_task = inferkit("run", "--task", "embedding", "--model", tiny_models["classifier"], *args)
    assert other_task.code == 2 and "task (text-classification then, embedding now)" in other_task.stderr
    other_column = inferkit("run", "--task", "text-classification", "--model", tiny_models["classifier"], *args,
                            "--text-column", "title")
    assert other_column.code == 2 and "input column (text then, title now)" in other_column.stderr
    assert sorted(p.name for p in staging.glob("*.parquet")) == kept  # refusing touched nothing

    restarted = inferkit("run", "--task", "text-classification", "--model", tiny_models["classifier"], *args,
                         "--restart")
    assert restarted.code == 0, restarted.stderr
    assert "resuming" not in restarted.stderr
    frame, report = _published(out)
    assert Counter(frame.id) == Counter(range(ROWS))
    assert (report["rows_resumed"], report["attempts"]) == (0, 1)
    # Blocks of 8 rows are gathered into files of the plan's size, not written one file each.
    per_file = report["plan"]["rows_per_file"]
    assert per_file > 8 and len(report["output"]["files"]) <= ROWS // per_file + 2

    again = inferkit("run", "--task", "text-classification", "--model", tiny_models["classifier"], *args)
    assert again.code == 2 and "already exists; pass --overwrite to replace it" in again.stderr
    replaced = inferkit("run", "--task", "text-classification", "--model", tiny_models["classifier"], *args,
                        "--overwrite")
    assert replaced.code == 0, replaced.stderr
    assert Counter(_published(out)[0].id) == Counter(range(ROWS))


def test_a_row_that_kills_its_worker_every_time_becomes_an_error_row(inferkit, ray_local, tiny_models, tmp_path,
                                                                       monkeypatch):
    rows = 3000
    source = _parquet_input(tmp_path / "in", rows)
    monkeypatch.setenv("INFERKIT_INJECT_FAULT", "crash-on:1234")
    out = tmp_path / "out"
    result = inferkit("run", "--task", "text-classification", "--model", tiny_models["classifier"], "--input",
                      str(source), "--output", str(out), "--precision", "fp32", "--max-error-fraction", "0.001")
    assert result.code == 0, result.stderr
    frame, report = _published(out)
    assert Counter(frame.id) == Counter(range(rows))
    frame = frame.set_index("id")
    assert frame.loc[1234, "error"] == "the worker process died on this row: exit code 86"
    assert frame.drop(index=1234).error.isna().all() and frame.drop(index=1234).label.notna().all()
    assert report["rows_that_killed_their_worker"] == 1 and report["errors"] == 1


def test_a_node_that_kills_every_process_fails_the_run_and_bad_rows_side_by_side_are_blamed(
        inferkit, ray_local, tiny_models, tmp_path, monkeypatch):
    """Every inference process dies, whatever rows it gets (crash-on:*, as on a broken node): the rescue holds
    rows that killed two processes as suspects while nothing has been computed, and after three fails the run,
    instead of splitting every chunk down and writing every row as "died on this row". On the way, the rescue's
    actor must find room: the pipeline's last actor, restarted as the pipeline ended, held the CPUs (a hang).
    Then the same command on a healthy node whose input has three bad rows side by side, first in their part:
    three suspects again, but another row (one the pipeline computed, or the other part's first) computes in
    the rescue's process, so the three are the rows at fault: three error rows, every other row computed,
    exit 0."""
    source = _parquet_input(tmp_path / "in", ROWS_PER_GROUP + 8)  # two parts: 40 rows and 8
    monkeypatch.setenv("INFERKIT_INJECT_FAULT", "crash-on:*")
    out = tmp_path / "out"
    command = ("run", "--task", "text-classification", "--model", tiny_models["classifier"], "--input", str(source),
               "--output", str(out), "--precision", "fp32", "--batch-size", "4", "--max-error-fraction", "0.1")
    result = inferkit(*command)
    assert result.code == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "Error: the processes that finish crashed rows died on 3 different row(s), 2 times each, and none "
        "computed a row, not even another row (last: exit code 86)")
    assert "written as an error row" not in result.stderr and not out.exists()

    monkeypatch.setenv("INFERKIT_INJECT_FAULT", "crash-on:0|1|2")
    result = inferkit(*command)
    assert result.code == 0, result.stderr
    frame, report = _published(out)
    assert Counter(frame.id) == Counter(range(ROWS_PER_GROUP + 8))
    errors = frame.set_index("id").error.dropna()
    assert sorted(errors.index) == [0, 1, 2] and set(errors) == {"the worker process died on this row: exit code 86"}
    assert report["rows_that_killed_their_worker"] == 3


@pytest.mark.ray
@pytest.mark.slow
def test_images_that_kill_their_decoder_or_take_all_memory_become_error_rows(tiny_models, tmp_path):
    """One image crashes its decoding process, one (in another read task) takes memory until Ray's memory
    monitor kills it, whose retries Ray 2.60 does not bound: the run hung. Both become error rows; every
    other image is computed. An embedded Ray of its own, its monitor's threshold 2.5 GB above what this
    machine uses now."""
    from inferkit.job.io import IMAGES_PER_READ_TASK

    images = tmp_path / "images"
    images.mkdir()
    for i in range(IMAGES_PER_READ_TASK + 6):
        (images / f"{i:02d}.png").write_bytes(tiny.image_bytes("RGB", "PNG", seed=i))
    crasher, hog = str(images / "03.png"), str(images / f"{IMAGES_PER_READ_TASK + 2}.png")
    meminfo = dict(line.split(":") for line in Path("/proc/meminfo").read_text().splitlines())
    total, available = (int(meminfo[k].split()[0]) * 1024 for k in ("MemTotal", "MemAvailable"))
    threshold = min(0.9, (total - available + 2.5 * 2**30) / total)
    env = {**_env(crash_decode_on=crasher, hog_memory_decode_on=hog), "RAY_memory_usage_threshold": f"{threshold:.3f}"}
    env.pop("RAY_task_oom_retries", None)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "inferkit", "run", "--task", "image-classification", "--model",
                             tiny_models["resnet"], "--input", str(images), "--output", str(out), "--batch-size", "1",
                             "--max-error-fraction", "0.05"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    frame, report = _published(out)
    assert Counter(frame.path) == Counter(str(p) for p in images.glob("*.png"))
    frame = frame.set_index("path")
    assert frame.loc[crasher, "error"] == "the worker process died on this row: exit code 86"
    assert frame.loc[hog, "error"] == ("the worker process died on this row: killed by Ray's memory monitor, the "
                                       "node running low on memory")
    assert frame.drop(index=[crasher, hog]).error.isna().all()
    assert report["rows_that_killed_their_worker"] == 2


# ---------------------------------------------------------------------------------------------
# The ledger itself, without Ray


def _block(part: int, rows: list[int], size: int, error: str | None = None) -> pa.Table:
    from inferkit.job import io

    return pa.table({"id": [f"{part}-{r}" for r in rows], "label": ["x"] * len(rows),
                     io.ERROR: pa.array([error] * len(rows), pa.string()),
                     io.PART: pa.array([part] * len(rows), pa.int64()), io.ROW: pa.array(rows, pa.int64()),
                     io.PART_ROWS: pa.array([size] * len(rows), pa.int64())})


def _ledger(tmp_path):
    import pyarrow.fs as pafs

    from inferkit.job.ledger import Ledger

    ledger = Ledger(pafs.LocalFileSystem(), str(tmp_path / f"out{UNFINISHED}"))
    ledger.open({"task": "t"}, restart=False, run_id="one")
    return ledger


def test_row_ranges_are_coalesced_per_part_whatever_the_order():
    from inferkit.job.ledger import row_ranges

    table = pa.concat_tables([_block(3, [5, 1, 2], 9), _block(0, [0, 1], 2), _block(3, [3, 8], 9)])
    assert row_ranges(table) == ({"0": [[0, 2]], "3": [[1, 4], [5, 6], [8, 9]]}, {"0": 2, "3": 9})


def test_the_ledger_keeps_committed_blocks_and_forgets_torn_writes(tmp_path):
    ledger = _ledger(tmp_path)
    staging = Path(ledger.staging)
    ledger.commit(_block(0, [0, 1, 2], 5))
    ledger.commit(_block(0, [0, 1, 2], 5))  # a retried write task: the same file again, not a second copy
    ledger.commit(_block(1, [0], 1, error="cannot read x: broken"))
    (staging / "part-torn.parquet").write_bytes(b"PAR1 half a file")  # its entry was never written
    (staging / "_inferkit" / "ledger" / "torn.json").write_text('{"file": "part-')  # killed mid-entry
    progress = ledger.load(compact=True)
    assert (progress.rows, progress.errors, progress.unreadable, progress.overlaps) == (4, 1, 1, 0)
    assert progress.done == {0: [(0, 3)], 1: [(0, 1)]} and progress.sizes == {0: 5, 1: 1}
    assert not progress.complete(0) and progress.complete(1)
    assert (staging / "part-torn.parquet").exists()  # it may be a write under way: only publishing removes it
    assert [p.name[:10] for p in (staging / "_inferkit" / "ledger").iterdir()] == ["compacted-"]
    ledger.commit(_block(0, [3, 4], 5))
    again = ledger.load()
    assert again.complete(0) and again.rows == 6
    files = ledger.files_to_publish(parts=2)
    assert sorted(files) == sorted(str(f) for f in staging.glob("*.parquet")) and len(files) == 3
    assert not (staging / "part-torn.parquet").exists()
    ledger.commit(_block(0, [4], 5))  # the same row in another file: exactly once is broken
    from inferkit.errors import JobFailed

    with pytest.raises(JobFailed, match=r"1 row\(s\) written twice"):
        ledger.check_complete(ledger.load(), parts=2)
    with pytest.raises(JobFailed, match=r"1 part\(s\) incomplete"):
        ledger.check_complete(ledger.load(), parts=3)


def test_a_file_that_fails_to_be_written_is_tried_again_and_a_huge_block_is_cut_into_files(tmp_path, monkeypatch):
    """A store's 503 on a write is tried again by the commit (a write task that raised sent its rows one chunk
    at a time through the rescue), once after each of WRITE_RETRY_SECONDS; a refused permission is not (no
    wait changes it). A block of 1,000 rows, where files hold 100, becomes ten
    files, each with its entry, not one file that a kill loses whole."""
    from inferkit.job import ledger as ledger_module

    ledger = _ledger(tmp_path)
    monkeypatch.setattr(ledger_module, "WRITE_RETRY_SECONDS", (0.01, 0.01, 0.01))
    write_table, tries = pq.write_table, []

    def store_answers_503(table, path, fail_first=2, **kwargs):
        tries.append(path)
        if len(tries) <= fail_first:
            raise OSError("When uploading part for key 'x': AWS Error SLOW_DOWN during UploadPart (HTTP status 503)")
        return write_table(table, path, **kwargs)

    monkeypatch.setattr(pq, "write_table", store_answers_503)
    ledger_module.write_blocks(ledger, [_block(0, list(range(1000)), 1000), _block(1, [0, 1, 2], 3)], 100)
    files = list(Path(ledger.staging).glob("*.parquet"))
    rows = [pq.read_metadata(f).num_rows for f in files]
    assert len(files) == 10 and sum(rows) == 1003 and all(100 <= n < 200 for n in rows)
    assert ledger.load().rows == 1003 and len(tries) == 12  # two failed, then one write per file

    tries.clear()
    monkeypatch.setattr(pq, "write_table", lambda table, path, **kwargs: store_answers_503(table, path, 99))
    with pytest.raises(OSError, match="HTTP status 503"):
        ledger_module.write_blocks(ledger, [_block(2, [0], 1)], 100)
    assert len(tries) == 4

    def refused(table, path, **kwargs):  # as pyarrow's S3 filesystem says it: a plain OSError
        tries.append(path)
        raise OSError("When creating key 'x': AWS Error ACCESS_DENIED during PutObject operation: Access Denied")

    tries.clear()
    monkeypatch.setattr(pq, "write_table", refused)
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        ledger.commit(_block(3, [0], 1))
    assert len(tries) == 1


def test_another_job_is_refused_by_name_and_restart_empties_the_run(tmp_path):
    from inferkit.errors import ConfigError

    ledger = _ledger(tmp_path)
    ledger.commit(_block(0, [0], 1))
    with pytest.raises(ConfigError, match=r"task \(t then, u now\) changed.*pass --restart"):
        ledger.open({"task": "u"}, restart=False, run_id="two")
    assert ledger.load().rows == 1
    attempts = ledger.open({"task": "t"}, restart=False, run_id="three")
    assert [a["run_id"] for a in attempts] == ["one", "three"]
    assert [a["run_id"] for a in ledger.open({"task": "u"}, restart=True, run_id="four")] == ["four"]
    assert ledger.load().rows == 0 and not list(Path(ledger.staging).glob("*.parquet"))


def test_reading_a_part_again_leaves_out_the_rows_already_written(tmp_path):
    import pyarrow.fs as pafs

    from inferkit.job import io

    source = io.discover(str(_parquet_input(tmp_path / "in")), "auto")
    assert (source.parts, source.part_rows(2)) == (ROWS // ROWS_PER_GROUP, ROWS_PER_GROUP)
    table = io.read_units(source.part_table(2, [(0, 10), (30, 35)]), filesystem=pafs.LocalFileSystem(),
                          fmt="parquet", schema=io.sample_schema(source))
    assert table.column("id").to_pylist() == [80 + r for r in range(10, 30)] + [80 + r for r in range(35, 40)]
    assert table.column(io.ROW).to_pylist() == list(range(10, 30)) + list(range(35, 40))
    assert set(table.column(io.PART).to_pylist()) == {2} and set(table.column(io.PART_ROWS).to_pylist()) == {40}


def test_entries_that_number_a_part_otherwise_do_not_count_and_are_not_published(tmp_path):
    """A unit whose read failed once (a 503) becomes one error row where its rows belong, so that attempt
    numbers the part's rows otherwise than a whole read does. Its entries are not combined with the whole
    read's (the last entry's size used to win: a false "cannot read" row published, or rows "written twice"
    and every attempt refused); the largest read of a part counts, the others' rows are computed again."""
    import pyarrow.parquet as pq

    ledger = _ledger(tmp_path)
    staging = Path(ledger.staging)
    ledger.commit(_block(0, [0], 2, error="cannot read in.parquet: 503"))  # attempt 1: its unit 0 failed
    ledger.commit(_block(1, [0, 1], 2))
    (placeholder,) = [f for f in ledger.load().files if pq.read_table(staging / f).column("error")[0].is_valid]
    ledger.commit(_block(0, [1, 2, 3], 4))  # attempt 2 read the part whole: rows 1..3, row 0 was "done"
    progress = ledger.load()
    assert progress.done[0] == [(1, 4)] and progress.sizes[0] == 4 and not progress.complete(0)
    assert placeholder not in progress.files and progress.rows == 5 and progress.unreadable == 0
    ledger.commit(_block(0, [0], 4))  # the rescue or the next attempt computes row 0 again
    published = pq.read_table(ledger.files_to_publish(parts=2))
    assert sorted(published.column("id").to_pylist()) == ["0-0", "0-1", "0-2", "0-3", "1-0", "1-1"]
    assert published.column("error").null_count == 6

    ledger = _ledger(tmp_path / "other")  # a one-row part (its size unknown when it failed) beside a whole read
    ledger.commit(_block(0, [0], 1, error="cannot read in.parquet: the worker process died reading it"))
    ledger.commit(_block(0, [0, 1, 2], 3))
    progress = ledger.load()
    assert progress.overlaps == 0 and progress.complete(0) and progress.rows == 3
    assert len(ledger.files_to_publish(parts=1)) == 1


HOLD_LEASE = """
import sys, time, pyarrow.fs as pafs
from inferkit.job.ledger import Lease
lease = Lease(pafs.LocalFileSystem(), sys.argv[1], "holder", renew_seconds=float(sys.argv[2]))
lease.take()
print("held", flush=True)
time.sleep(float(sys.argv[3]))
if len(sys.argv) > 4:  # the holder's run publishes its output as it ends
    pafs.LocalFileSystem().create_dir(sys.argv[4])
    open(sys.argv[4] + "/_SUCCESS", "w").close()
lease.release()
time.sleep(120)
"""


def test_a_live_runs_lease_keeps_others_off_the_output_and_a_dead_ones_is_taken_over(tmp_path):
    import pyarrow.fs as pafs

    from inferkit.errors import ConfigError, JobFailed
    from inferkit.job.ledger import Lease

    fs, staging = pafs.LocalFileSystem(), str(tmp_path / f"out{UNFINISHED}")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, staging, "0.2", "120"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        started = time.monotonic()
        with pytest.raises(ConfigError, match=r"run holder \(pid \d+ on .*\) is writing this output now"):
            Lease(fs, staging, "second", stale_seconds=30).wait_for_others()
        assert time.monotonic() - started < 10  # refused at the first renewal seen, not after the wait
    finally:
        holder.kill()
        holder.wait()
    second = Lease(fs, staging, "second", renew_seconds=0.2, stale_seconds=30)
    started = time.monotonic()
    assert not second.wait_for_others()  # its holder is a dead process of this host: taken over at once
    assert time.monotonic() - started < 5
    second.take()
    lease = Path(staging) / "_inferkit" / "lease.json"
    deadline = time.monotonic() + 30
    while second.lost_to is None:  # a run on another node took it over while `second` was stalled
        assert time.monotonic() < deadline
        lease.write_text(json.dumps({"run_id": "elsewhere", "host": "another-node", "pid": 1, "renewals": 7}))
        time.sleep(0.3)
    assert second.lost_to["run_id"] == "elsewhere"  # and `second` stopped renewing: it never writes it back
    third = Lease(fs, staging, "third", stale_seconds=1.0)
    assert third.wait_for_others()  # another node's lease, not renewed for stale_seconds: taken over, after a wait
    third.take()
    time.sleep(1)
    assert json.loads(lease.read_text())["run_id"] == "third"
    with pytest.raises(JobFailed, match="held by run elsewhere .*, not by this run second"):
        second.check_held()
    second.release()  # not its lease any more: left alone
    assert json.loads(lease.read_text())["run_id"] == "third"
    third.check_held()
    third.release()
    assert not lease.exists()
    # A holder that ends (publishes) while another run waits for a renewal: the waiter is told it waited,
    # and looks at the output again (it may be published now) instead of computing the job a second time.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, staging, "60", "2"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert Lease(fs, staging, "fourth", stale_seconds=30).wait_for_others()
        assert not lease.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_run_that_waited_for_the_lease_looks_at_the_output_again(inferkit, tiny_models, tmp_path):
    """Seen in CI: a second run waited for the first's lease, the first published and ended, and the second
    took the output over and computed the whole job again. Now it finds the output published."""
    source = _parquet_input(tmp_path / "in", 8)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, str(out) + UNFINISHED, "60", "2", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        second = inferkit("run", "--task", "text-classification", "--model", tiny_models["classifier"], "--input",
                          str(source), "--output", str(out))
    finally:
        holder.kill()
        holder.wait()
    assert second.code == 2 and "waiting up to 30 s" in second.stderr, second.stderr
    assert f"--output {out}: already exists; pass --overwrite" in second.stderr


def test_an_entry_whose_file_is_gone_or_another_size_does_not_count_and_is_not_published(tmp_path):
    """A write that finishes its file, then its entry, while an attempt loads the ledger must keep its file:
    load deletes nothing, and an entry without its whole file leaves its rows to be computed again."""
    from inferkit.errors import JobFailed

    ledger = _ledger(tmp_path)
    staging = Path(ledger.staging)
    ledger.commit(_block(0, [0, 1], 2))
    (first,) = ledger.load().files
    ledger.commit(_block(1, [0, 1, 2], 3))
    (second,) = set(ledger.load().files) - {first}
    under_way = staging / "part-under-way.parquet"
    under_way.write_bytes(b"PAR1 a write whose entry is not written yet")
    assert ledger.load(compact=True).rows == 5 and under_way.exists()

    (staging / first).unlink()
    progress = ledger.load()
    assert progress.rows == 3 and not progress.complete(0) and progress.files == [second]
    with pytest.raises(JobFailed, match=r"1 part\(s\) incomplete"):
        ledger.files_to_publish(parts=2)
    ledger.commit(_block(0, [0, 1], 2))  # computed again

    pq.write_table(pa.table({"other": [1]}), staging / second)  # the same name, another file
    progress = ledger.load()
    assert progress.rows == 2 and not progress.complete(1)
    ledger.commit(_block(1, [0, 1, 2], 3))
    assert sorted(Path(f).name for f in ledger.files_to_publish(parts=2)) == sorted([first, second])
    assert not under_way.exists() and len(list(staging.glob("*.parquet"))) == 2


def test_a_task_that_raises_keeps_the_rows_written_for_resuming(inferkit, tmp_path, monkeypatch):
    """The rescue meets a row whose task raises (max_errored_blocks=-1 dropped its block): the run fails,
    but what other blocks wrote is kept for the same command to resume once the cause is fixed."""
    import pyarrow.fs as pafs

    from inferkit.job import run
    from inferkit.job.ledger import Ledger
    from inferkit.job.quarantine import TaskFailed

    def write_a_block_then_raise(*args):
        ledger = next(a for a in args if isinstance(a, Ledger))
        ledger.commit(_block(0, [0, 1], ROWS_PER_GROUP))
        raise TaskFailed.of("ValueError: a bad row")

    monkeypatch.setattr(run, "_run", write_a_block_then_raise)
    out = tmp_path / "out"
    result = inferkit(*_command(tiny.bert(tmp_path / "model", classifier=True), _parquet_input(tmp_path / "in"),
                                str(out))[3:])
    assert result.code == 1, result.stderr
    assert "ValueError: a bad row" in result.stderr and "fix the cause and run the same command" in result.stderr
    assert Ledger(pafs.LocalFileSystem(), str(out) + UNFINISHED).load().rows == 2


def test_a_job_json_torn_or_unreadable_never_costs_the_rows_written(tmp_path, monkeypatch):
    """job.json is replaced whole (a write killed midway leaves the old one); one that cannot be read
    beside written rows is refused rather than taken for "no earlier run", which would empty the folder."""
    from inferkit.errors import ConfigError
    from inferkit.job import ledger as ledger_module

    ledger = _ledger(tmp_path)
    ledger.commit(_block(0, [0], 1))
    job = Path(ledger.staging) / "_inferkit" / "job.json"

    def killed_midway(filesystem, path, value):
        with filesystem.open_output_stream(path) as stream:
            stream.write(json.dumps(value).encode()[:10])
        raise OSError("killed while writing")

    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "_write_json", killed_midway)
        with pytest.raises(OSError):
            ledger.note_attempt({"task": "t"}, [{"run_id": "two"}])
    assert [a["run_id"] for a in json.loads(job.read_text())["attempts"]] == ["one"]

    job.write_text('{"job": {"ta')
    with pytest.raises(ConfigError, match=r"job.json cannot be read.*they are kept\. Pass --restart"):
        ledger.open({"task": "t"}, restart=False, run_id="three")
    assert ledger.load().rows == 1
    assert [a["run_id"] for a in ledger.open({"task": "t"}, restart=True, run_id="four")] == ["four"]
    assert ledger.load().rows == 0


def test_a_model_is_known_by_its_files_or_its_hub_revision_not_by_when_it_was_copied(tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    from inferkit.job.tasks import WHOLE_FILE_BYTES, model_version

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}')
    weights = model / "model.safetensors"
    weights.write_bytes(os.urandom(3 * WHOLE_FILE_BYTES))
    (model / ".cache").mkdir()
    (model / ".cache" / "lock").write_text("hidden: not part of the model")
    version = model_version(str(model))
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    os.utime(copy / "model.safetensors", (0, 0))
    (copy / ".cache" / "lock").write_text("another lock")
    assert model_version(str(copy)) == version  # copied, touched: the same weights
    for offset in (10, 3 * WHOLE_FILE_BYTES - 10):  # a retrained head or embedding, same size
        data = bytearray(weights.read_bytes())
        data[offset] ^= 0xFF
        (copy / "model.safetensors").write_bytes(bytes(data))
        assert model_version(str(copy)) != version
    (copy / "model.safetensors").write_bytes(weights.read_bytes())
    (copy / "config.json").write_text('{"model_type": "bert", "num_labels": 3}')
    assert model_version(str(copy)) != version

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_version("org/tiny") == f"revision {commit}"
    assert model_version("org/other") == "revision unknown"


def test_an_input_copied_again_is_the_same_input_but_a_changed_file_is_not(tmp_path):
    """A KubeRay retry on a new pod may download its input again: new modification times, same files."""
    from inferkit.job import io

    source = _parquet_input(tmp_path / "in")
    listing = io.discover(str(source.parent), "auto").listing
    os.utime(source, (0, 0))
    assert io.discover(str(source.parent) + "/", "auto").listing == listing
    pq.write_table(pq.read_table(source).slice(1), source, row_group_size=ROWS_PER_GROUP)
    assert io.discover(str(source.parent), "auto").listing != listing


def test_a_retry_that_cuts_the_input_into_other_parts_is_refused(tmp_path, monkeypatch):
    """Part numbers are what the ledger counts rows by: an attempt on an inferkit that cuts the same images
    into parts of another size (IMAGES_PER_READ_TASK) is another job, refused with the reason, not resumed
    onto renumbered parts (which skipped or doubled rows while the exactly-once check still passed)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    from inferkit.errors import ConfigError
    from inferkit.job import io
    from inferkit.job.ledger import Ledger, identity

    source = io.Source(uri="/in", filesystem=pafs.LocalFileSystem(), format="images",
                       units=tuple((f"/in/{i}.png", -1) for i in range(200)), skipped=(), listing="digest")
    job = lambda: identity("/in", source, "image-classification", "image", ["m (1)"], "mean",  # noqa: E731
                           pa.schema([("path", pa.string())]))
    ledger = Ledger(pafs.LocalFileSystem(), str(tmp_path / f"out{UNFINISHED}"))
    ledger.open(job(), restart=False, run_id="one")
    assert ledger.open(job(), restart=False, run_id="two")[-1]["run_id"] == "two"  # the same cut resumes
    monkeypatch.setattr(io, "IMAGES_PER_READ_TASK", 32)
    with pytest.raises(ConfigError, match=r"the input listing \(cut into parts of 64 unit\(s\) then, 32 now: "
                                          r"another inferkit version\) changed.*pass --restart"):
        ledger.open(job(), restart=False, run_id="three")
