"""Resuming a run that died: a ledger of written output files, kept beside the output.

A run writes into `<output>.inferkit-unfinished/` on the output's own filesystem or bucket (inside the
output where it is a mount point), never on a node's disk, so a new attempt on another cluster (a KubeRay
retry) finds it:

    part-<digest>.parquet              output rows, the files that are published
    _inferkit/job.json                 what job this is (its identity) and its attempts
    _inferkit/ledger/<digest>.json     one entry per data file, written after the file is complete:
                                       which input rows (part, row ranges) it holds, and its counts
    _inferkit/lease.json               the run writing it now (see Lease), renewed while it runs

An entry names its data file and that file's size; an entry whose file is missing or has another size
does not count (its rows are computed again). A data file that no entry names is a write that died
midway, or one still under way: it is never published, and deleted only just before publishing, when
no write of this attempt is left running. A data file's name is a digest of the rows it holds, so a
write task that Ray retries overwrites its own file. Rows are keyed
by inferkit's read units (io.Source parts: a file, a row group or a block of images) and their index in
the part, so no id column is needed, finished parts are not even read again, and the driver holds one
entry per output file rather than one id per row.

Why not `ray.data.checkpoint` (Ray 2.60): it needs a unique id column that every operator keeps (many
inputs have none), loads every checkpointed id into memory and ships them to filter actors (memory
grows with rows), still reads every input row to filter it out, only plans a Read-to-Write pipeline
(not the driver-side write inferkit uses for a local output on a growing cluster), and knows nothing of
the job's identity, so a changed model would silently mix two models' output.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from inferkit.console import say
from inferkit.errors import ConfigError, JobFailed, one_line
from inferkit.job import io

ENTRIES = "ledger"
LEASE = "lease.json"
# A commit that fails (a store's 503) is tried again after each of these waits: four tries in all.
WRITE_RETRY_SECONDS = (1.0, 2.0, 4.0)
# A run renews its lease every LEASE_RENEW_SECONDS; another run waits up to LEASE_STALE_SECONDS for a
# renewal before it takes over a lease whose run it cannot see (one on another node, or in another container).
LEASE_RENEW_SECONDS, LEASE_STALE_SECONDS = 10.0, 30.0


def identity(input_uri: str, source: io.Source, task: str, payload: str, models: list[str], ensemble: str,
             schema: pa.Schema) -> dict:
    """What must not change between attempts for their rows to belong in one output. `input_uri` is the
    input as resolved (absolute, no trailing slash), so `data` and `./data/` are one input; `models` name
    each model with its version (tasks.model_version). The partitioning is in it because the ledger counts
    rows by part number: a retry on an inferkit that cuts the input into other parts (another
    IMAGES_PER_READ_TASK) would take old entries for new parts, skipping or doubling rows."""
    return {"input": {"uri": input_uri, "format": source.format, "units": len(source.units),
                      "listing": source.listing, "units per part": source.units_per_part},
            "task": task, "input column": payload, "models": models, "ensemble": ensemble,
            "output columns": [f"{f.name}: {f.type}" for f in schema]}


def _as_today(job: Any) -> Any:
    """A job.json written before the partitioning was part of the identity, read as those versions cut the
    input (64 images or one file or row group a part), so their unfinished runs still resume."""
    listing = job.get("input") if isinstance(job, dict) else None
    if not isinstance(listing, dict) or "units per part" in listing:
        return job
    return {**job, "input": {**listing, "units per part": 64 if listing.get("format") == "images" else 1}}


def _changes(before: dict, now: dict) -> list[str]:
    changed = []
    for key in now:
        if before.get(key) == now[key]:
            continue
        if key == "input":
            was, now_input = before.get(key) or {}, now[key]
            what = (f"{was.get('units')} input unit(s) then, {now_input['units']} now"
                    if was.get("units") != now_input["units"] else
                    f"cut into parts of {was.get('units per part')} unit(s) then, {now_input['units per part']} now: "
                    "another inferkit version" if was.get("units per part") != now_input["units per part"] else
                    f"{was.get('uri')} then, {now_input['uri']} now" if was.get("uri") != now_input["uri"] else
                    "files renamed, added, removed or changed in size, or a parquet footer that could not be "
                    "read then")
            changed.append(f"the input listing ({what})")
        else:
            changed.append(f"{key} ({_show(before.get(key))} then, {_show(now[key])} now)")
    return changed


def _show(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


@dataclass
class Progress:
    """What the attempts so far have written: per part, the row ranges done and the part's size."""

    done: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # per part, the first row of a file that holds no error row: one a model computed (the rescue's check)
    computed: dict[int, int] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    rows: int = 0
    errors: int = 0
    unreadable: int = 0
    files: list[str] = field(default_factory=list)  # the data files the counted entries name
    overlaps: int = 0  # rows written twice: never expected; publishing refuses them

    def add(self, entry: dict) -> None:
        self.rows += entry["rows"]
        self.errors += entry["errors"]
        self.unreadable += entry["unreadable"]
        if entry.get("file"):
            self.files.append(entry["file"])
        for part, size in entry["sizes"].items():
            self.sizes[int(part)] = size
        for part, ranges in entry["ranges"].items():
            if not entry["errors"] and ranges:
                self.computed.setdefault(int(part), ranges[0][0])
            merged, overlap = _merge(self.done.get(int(part), []), [tuple(r) for r in ranges])
            self.done[int(part)] = merged
            self.overlaps += overlap

    def complete(self, part: int) -> bool:
        return part in self.sizes and _covered(self.done.get(part, []), self.sizes[part])


def _merge(ranges: list[tuple[int, int]], more: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], int]:
    """Sorted, coalesced [start, end) ranges, and how many rows of `more` were already in `ranges`."""
    merged: list[tuple[int, int]] = []
    overlap = 0
    for start, end in sorted(ranges + more):
        if merged and start < merged[-1][1]:
            overlap += min(end, merged[-1][1]) - start
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged, overlap


def _covered(ranges: list[tuple[int, int]], size: int) -> bool:
    return size == 0 or ranges == [(0, size)]


def row_ranges(table: pa.Table) -> tuple[dict[str, list[list[int]]], dict[str, int]]:
    """The (part -> [start, end) ranges) of a block's rows, and each part's size, from its keys."""
    parts = table.column(io.PART).to_numpy()
    rows = table.column(io.ROW).to_numpy()
    sizes = table.column(io.PART_ROWS).to_numpy()
    order = np.lexsort((rows, parts))
    parts, rows, sizes = parts[order], rows[order], sizes[order]
    breaks = np.flatnonzero((np.diff(parts) != 0) | (np.diff(rows) != 1)) + 1
    ranges: dict[str, list[list[int]]] = {}
    part_sizes: dict[str, int] = {}
    for start, end in zip(np.r_[0, breaks], np.r_[breaks, len(parts)], strict=True):
        if start == end:
            continue
        part = str(int(parts[start]))
        ranges.setdefault(part, []).append([int(rows[start]), int(rows[end - 1]) + 1])
        part_sizes[part] = int(sizes[start])
    return ranges, part_sizes


def _write_json(filesystem: pafs.FileSystem, path: str, value: dict) -> None:
    with filesystem.open_output_stream(path) as stream:
        stream.write(json.dumps(value, separators=(",", ":")).encode())


def _write_whole(filesystem: pafs.FileSystem, path: str, value: dict) -> None:
    """Write a JSON file whole or not at all: a new file moved over the old one, never a torn one."""
    temporary = f"{path}.{uuid.uuid4().hex[:12]}.tmp"
    _write_json(filesystem, temporary, value)
    filesystem.move(temporary, path)


def _largest_reads(entries: dict[str, dict]) -> dict[str, dict]:
    """The entries that number each of their parts' rows as the part's largest read does. A unit whose read
    failed (a 503; a part whose reading killed its process) is one error row where its rows belong, so
    entries of that read number the part otherwise: theirs are not counted (their files are not published,
    their rows are computed again), never combined with the whole read's."""
    largest: dict[str, int] = {}
    for entry in entries.values():
        for part, size in entry["sizes"].items():
            largest[part] = max(size, largest.get(part, size))
    return {k: e for k, e in entries.items() if all(size == largest[p] for p, size in e["sizes"].items())}


@dataclass(frozen=True)
class Ledger:
    """The unfinished run of one output; picklable, so write tasks commit their own files."""

    filesystem: pafs.FileSystem
    staging: str

    @property
    def folder(self) -> str:
        return posixpath.join(self.staging, io.BOOKKEEPING)

    def commit(self, table: pa.Table) -> dict:
        """Write rows as one output file, then its entry, tried again when the store fails (a 503): the
        commit is safe to repeat, its name coming from its row ranges and the entry written last. A write
        task that raised would send its rows one chunk at a time through the rescue, and a rescue that raised
        would end the run. Returns the entry (counts, no ranges)."""
        def warn(e: Exception, wait: float) -> None:
            say(f"warning: writing {table.num_rows} rows failed ({one_line(e)}); trying again in {wait:g} s")

        return io.with_retries(lambda: self._commit(table), WRITE_RETRY_SECONDS, before_retry=warn)

    def _commit(self, table: pa.Table) -> dict:
        ranges, sizes = row_ranges(table)
        name = "part-" + hashlib.sha256(json.dumps(ranges, sort_keys=True).encode()).hexdigest()[:24]
        data = table.drop_columns([k for k in io.KEYS if k in table.column_names])
        errors = data.column(io.ERROR)
        unreadable = sum(1 for e in errors.to_pylist() if e is not None and e.startswith(io.UNREADABLE))
        entry = {"file": name + ".parquet", "rows": data.num_rows, "errors": data.num_rows - errors.null_count,
                 "unreadable": unreadable, "ranges": ranges, "sizes": sizes}
        if data.num_rows:
            path = posixpath.join(self.staging, entry["file"])
            pq.write_table(data, path, filesystem=self.filesystem)
            entry["bytes"] = self.filesystem.get_file_info(path).size
        else:
            entry["file"] = None  # a part with no rows at all: only its entry says it is done
        self._write(posixpath.join(self.folder, ENTRIES, name + ".json"), entry)
        return {k: entry[k] for k in ("rows", "errors", "unreadable")}

    def mark_empty(self, part: int) -> None:
        """A part that was read and holds no row."""
        self._write(posixpath.join(self.folder, ENTRIES, f"empty-{part}.json"),
                    {"file": None, "rows": 0, "errors": 0, "unreadable": 0, "ranges": {}, "sizes": {str(part): 0}})

    def _write(self, path: str, value: dict) -> None:
        _write_json(self.filesystem, path, value)

    # -- the driver's side -----------------------------------------------------------------------

    def open(self, job: dict, restart: bool, run_id: str) -> list[dict]:
        """Start an attempt: take over an unfinished run of the same job, or refuse a different one
        (unless `restart`, which throws it away). Returns the attempts so far, this one last."""
        fs = self.filesystem
        previous = self._read_json(posixpath.join(self.folder, io.JOB))
        if previous is None and not restart and self._entry_paths():
            raise ConfigError([f"the unfinished run at {self.staging} has written rows, but its "
                               f"{io.BOOKKEEPING}/{io.JOB} cannot be read, so it is not known which job they belong "
                               "to; they are kept. Pass --restart to throw them away and start over"])
        before = _as_today(previous.get("job")) if previous is not None else None
        if previous is not None and not restart and before != job:
            changed = _changes(before or {}, job)
            raise ConfigError([f"an unfinished run of another job is kept at {self.staging}: "
                               f"{'; '.join(changed) or 'its description'} changed. Run the same job again to "
                               "resume it, or pass --restart to throw it away and start over"])
        if previous is None or restart:
            fs.delete_dir_contents(self.staging, missing_dir_ok=True)
            previous = {"attempts": []}
        attempts = previous["attempts"] + [{"run_id": run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime())}]
        fs.create_dir(posixpath.join(self.folder, ENTRIES), recursive=True)
        self.note_attempt(job, attempts)
        return attempts

    def holds(self, job: dict) -> bool:
        """Whether the run kept here is `job`'s (read only: a published output's leftover bookkeeping)."""
        previous = self._read_json(posixpath.join(self.folder, io.JOB))
        return previous is not None and _as_today(previous.get("job")) == job

    def note_attempt(self, job: dict, attempts: list[dict]) -> None:
        """Rewrite job.json whole or not at all (a new file renamed over it): a torn job.json would leave
        the rows written so far without a job."""
        _write_whole(self.filesystem, posixpath.join(self.folder, io.JOB), {"job": job, "attempts": attempts})

    def _entry_paths(self) -> list[str]:
        selector = pafs.FileSelector(posixpath.join(self.folder, ENTRIES), allow_not_found=True)
        return [i.path for i in self.filesystem.get_file_info(selector) if i.type == pafs.FileType.File]

    def load(self, compact: bool = False) -> Progress:
        """Read every entry (in parallel); count those whose data file is there with the size they name.
        Deletes no data file: a write of this attempt may be under way. With `compact`, the counted entries
        are rewritten as one, so the next attempt reads one object instead of thousands."""
        fs = self.filesystem
        paths = self._entry_paths()
        with ThreadPoolExecutor(io.OBJECT_STORE_THREADS) as pool:
            loaded = list(pool.map(self._read_json, paths))
        entries: dict[str, dict] = {}
        for path, value in zip(paths, loaded, strict=True):
            for entry in (value or {}).get("entries", [value] if value else []):
                key = entry["file"] or json.dumps(entry["sizes"], sort_keys=True)
                entries[key] = entry  # a compacted entry and the entries it replaced may both exist
        # Listed after the entries were read: a file is complete before its entry is written, so an entry
        # read above whose file is not here now (or is another size) has lost its file.
        sizes = self._data_files()
        entries = {k: e for k, e in entries.items() if not e["file"] or sizes.get(e["file"]) == e.get("bytes")}
        entries = _largest_reads(entries)
        progress = Progress()
        for entry in entries.values():
            progress.add(entry)
        if compact and len(paths) > 1:
            self._write(posixpath.join(self.folder, ENTRIES, f"compacted-{uuid.uuid4().hex[:12]}.json"),
                        {"entries": list(entries.values())})
            for path in paths:
                fs.delete_file(path)
        return progress

    def _data_files(self) -> dict[str, int]:
        """The data files in the staging folder, by name, with their sizes."""
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.staging, allow_not_found=True))
        return {posixpath.basename(i.path): i.size for i in infos
                if i.type == pafs.FileType.File and i.path.endswith(".parquet")}

    def _read_json(self, path: str) -> dict | None:
        """An entry, or None where there is none or its write died midway (its rows are then computed again)."""
        try:
            with self.filesystem.open_input_stream(path) as stream:
                return json.loads(stream.read())
        except (FileNotFoundError, ValueError):
            return None
        except OSError as e:
            if self.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            raise JobFailed(f"cannot read {path} of the unfinished run ({e})") from e

    def check_complete(self, progress: Progress, parts: int) -> None:
        """Exactly once, checked before publishing: every part written in full, no row twice."""
        missing = [p for p in range(parts) if not progress.complete(p)]
        if missing or progress.overlaps:
            self._inconsistent(f"{len(missing)} part(s) incomplete, {progress.overlaps} row(s) written twice")

    def files_to_publish(self, parts: int) -> list[str]:
        """Call only once no write of this attempt is left running. Checks exactly once (every part in
        full, no row twice, the named files hold the ledger's rows), deletes the data files no entry names
        (writes that died midway) and returns the paths of the files to publish."""
        progress = self.load()
        self.check_complete(progress, parts)
        named = set(progress.files)
        for name in self._data_files().keys() - named:
            self.filesystem.delete_file(posixpath.join(self.staging, name))
        files = sorted(posixpath.join(self.staging, name) for name in named)
        held = sum(pq.read_metadata(f, filesystem=self.filesystem).num_rows for f in files)
        if held != progress.rows:
            self._inconsistent(f"its files hold {held} row(s), its ledger {progress.rows}")
        return files

    def _inconsistent(self, what: str) -> None:
        raise JobFailed(f"the unfinished run at {self.staging} is inconsistent ({what}); it is kept. Was another "
                        "run writing the same output? Run again with --restart to start over")


def write_through(dataset: Any, ledger: Ledger, rows_per_file: int, ray_remote_args: dict) -> None:
    """Write a dataset with Ray Data, blocks gathered into files of about `rows_per_file` rows, each with
    its ledger entry, so a run killed at any moment loses at most the files being gathered or written."""
    from ray.data.datasource import Datasink

    class LedgerDatasink(Datasink[None]):
        @property
        def min_rows_per_write(self) -> int:
            return rows_per_file

        def write(self, blocks: Any, ctx: Any) -> None:
            write_blocks(ledger, list(blocks), rows_per_file)

    dataset.write_datasink(LedgerDatasink(), ray_remote_args=ray_remote_args)


def write_blocks(ledger: Ledger, blocks: list[pa.Table], rows_per_file: int) -> None:
    """One write task's blocks as files of `rows_per_file` to twice that: a block larger than that (a whole
    1M-row row group) is cut, so no file, and no kill, holds more."""
    tables = [block for block in blocks if block.num_rows]
    if not tables:
        return
    table = pa.concat_tables(tables)
    pieces = max(1, table.num_rows // rows_per_file)
    bounds = [i * table.num_rows // pieces for i in range(pieces + 1)]
    for start, end in zip(bounds, bounds[1:]):
        ledger.commit(table.slice(start, end - start))


class Lease:
    """Which run is writing an unfinished output: a second run (or a second copy of a RayJob) on the same
    output would add files between the exactly-once check and the publish, or throw away the first's rows
    with --restart. A run takes the lease before it touches the folder and renews it while it runs; another
    run refuses to start while the lease is renewed, and takes over one that is not: at once where it can
    see the holder is gone (the same host, its process dead), else after LEASE_STALE_SECONDS without a
    renewal (a KubeRay retry on a new cluster waits that long). Renewals are compared by their count, not
    by clocks, so nodes need not agree on the time. A lease, not a lock: two runs that start within a
    moment of each other are not kept apart (object stores have no create-if-absent here)."""

    def __init__(self, filesystem: pafs.FileSystem, staging: str, run_id: str,
                 renew_seconds: float = LEASE_RENEW_SECONDS, stale_seconds: float = LEASE_STALE_SECONDS):
        self.filesystem, self.run_id = filesystem, run_id
        self.path = posixpath.join(staging, io.BOOKKEEPING, LEASE)
        self.renew_seconds, self.stale_seconds = renew_seconds, stale_seconds
        self.holder = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "renewals": 0}
        self.lost_to: dict | None = None  # the lease of the run that took this one's over, once seen
        self._released = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wait_for_others(self) -> bool:
        """Returns once no other live run holds the lease; raises ConfigError while one does. True where it
        waited: the run that held it may have published the output meanwhile (the caller looks again)."""
        first = self._read()
        if first is None or first.get("run_id") == self.run_id or self._gone(first):
            return False
        say(f"the output's lease is held by run {first.get('run_id')} on {first.get('host')}: waiting up to "
            f"{self.stale_seconds:.0f} s for it to be renewed before taking it over")
        deadline = time.monotonic() + self.stale_seconds
        while time.monotonic() < deadline:
            time.sleep(min(1.0, self.renew_seconds / 4))
            now = self._read()
            if now is None:
                return True
            if now.get("renewals") != first.get("renewals") or now.get("run_id") != first.get("run_id"):
                raise ConfigError([f"run {now.get('run_id')} (pid {now.get('pid')} on {now.get('host')}) is "
                                   f"writing this output now ({self.path} is being renewed): wait for it to end, or "
                                   "stop it first"])
        say(f"the lease of run {first.get('run_id')} was not renewed in {self.stale_seconds:.0f} s: taking it over")
        return True

    def take(self) -> None:
        """Write the lease and renew it in a thread until `stop`."""
        self.filesystem.create_dir(posixpath.dirname(self.path), recursive=True)
        self._write()
        self._thread = threading.Thread(target=self._renew, name="inferkit-lease", daemon=True)
        self._thread.start()

    def held(self) -> bool:
        """Whether the lease is still this run's: no other run took it over while this one was stalled."""
        if self.lost_to is None:
            try:
                now = self._read()
            except OSError:  # the store does not answer: not known to be lost
                return True
            if now is None or now.get("run_id") != self.run_id:
                self.lost_to = now or {}
        return self.lost_to is None

    def check_held(self) -> None:
        """Before publishing: the lease is still this run's."""
        if not self.held():
            holder = f"run {self.lost_to.get('run_id')} on {self.lost_to.get('host')}" if self.lost_to else "no run"
            raise JobFailed(f"the output's lease is held by {holder}, not by this run {self.run_id}: another run "
                            "took this output over while this one was stalled; nothing is published")

    def stop(self, wait: float | None = None) -> None:
        """Stop renewing: before publishing, until the renewal under way is done (`wait` None), so none
        writes into a published folder; on the way out after a failure, waiting at most `wait` seconds for
        a renewal stuck in a store that stopped answering (the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=wait)

    def release(self, store_answers: bool = True) -> None:
        """Stop renewing and remove the lease if it is still this run's (a published output took it along).
        A store that stopped answering is not asked again: the lease is left to be taken over. Only the
        first call does anything."""
        if self._released:
            return
        self._released = True
        self.stop(wait=self.renew_seconds if store_answers else 1.0)
        if not store_answers or self.lost_to is not None:
            return
        try:
            now = self._read()
            if now is not None and now.get("run_id") == self.run_id:
                self.filesystem.delete_file(self.path)
        except OSError:  # a lease left behind is taken over later
            pass

    def _renew(self) -> None:
        """Renew until stopped, or until another run is seen holding the lease (then this run has lost it and
        must never write it back)."""
        while not self._stop.wait(self.renew_seconds):
            try:
                if not self.held():
                    return
                self._write()
            except OSError:  # an outage: the store watch ends the run if it lasts
                pass

    def _write(self) -> None:
        """Whole or not at all (a new file moved over it), so a reader never takes a torn lease for none."""
        self.holder["renewals"] += 1
        _write_whole(self.filesystem, self.path, self.holder)

    def _read(self) -> dict | None:
        try:
            with self.filesystem.open_input_stream(self.path) as stream:
                return json.loads(stream.read())
        except FileNotFoundError:
            return None
        except ValueError:  # not this code's writing: a lease all the same, of no known run
            return {}
        except OSError:
            if self.filesystem.get_file_info(self.path).type == pafs.FileType.NotFound:
                return None
            raise

    def _gone(self, holder: dict) -> bool:
        """Whether the holder is seen to be gone: a process of this host that no longer exists."""
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's process: alive
            return False
        return holder["pid"] == os.getpid()  # this very process: a lease left by an earlier run in it

