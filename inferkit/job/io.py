"""Inputs and outputs through pyarrow filesystems (local paths, s3://, gs://).

Inputs are listed on the driver and read by Ray tasks that ask for a fraction of a CPU, so reading
never waits behind inference actors. Outputs are written under a temporary prefix and published in
one step: a rename for local folders; for object stores, a copy, then the report, then `_SUCCESS`; for a
mount point (a volume at --output, staged inside it), hard links in, then the report, then `_SUCCESS`.
"""

from __future__ import annotations

import collections
import copyreg
import hashlib
import json
import os
import posixpath
import signal
import socket
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pafs
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from inferkit.console import say
from inferkit.errors import ConfigError, JobFailed, Terminated, one_line

T = TypeVar("T")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TABLE_EXTENSIONS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
SUCCESS = "_SUCCESS"
REPORT = "_inferkit_report.json"
ERROR = "error"
PATH = "path"
IMAGES_PER_READ_TASK = 64
# A parquet footer that cannot be read while listing (a transient 503, a file still being written) is read
# again after these waits (seconds); one that stays unreadable makes its file one unit, read whole.
FOOTER_RETRY_SECONDS = (0.5, 2.0)
WHOLE_FILE = -2  # the row group of a unit that is a whole parquet file
UNREADABLE = "cannot read "  # how an unreadable unit's error row starts
# An object store that has not answered for an outage's seconds (--store-outage-seconds; checked every
# STORE_CHECK_SECONDS, or a quarter of the outage if less) ends the run; a shorter outage is ridden out.
# A request is retried as long: GCS for the outage's seconds (google-cloud-cpp's default is 15 minutes),
# S3 for S3_ATTEMPTS with the AWS SDK's backoff (about a minute; its default 3 gave up within a ten-second
# outage). And the waits of the pre-flight checks (an endpoint's port, the metadata server).
STORE_OUTAGE_SECONDS = 60.0
STORE_CHECK_SECONDS = 15.0
S3_ATTEMPTS = 10
METADATA_TIMEOUT_SECONDS = CONNECT_TIMEOUT_SECONDS = 2.0
OBJECT_STORE_THREADS = 16  # requests at once: an object store answers many small ones in parallel
OBJECT_STORES = (pafs.S3FileSystem, pafs.GcsFileSystem)  # where a path begins with its bucket
# Every row carries where it came from until it is written: its part (one block of read units, the unit
# of resuming), its index in that part, and the part's row count. They never reach the output.
PART, ROW, PART_ROWS = "_inferkit_part", "_inferkit_row", "_inferkit_part_rows"
KEYS = (PART, ROW, PART_ROWS)


def open_filesystem(uri: str, outage_seconds: float = STORE_OUTAGE_SECONDS) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it; plain paths are local. s3:// takes its endpoint and
    credentials as the AWS SDK does (AWS_ENDPOINT_URL, AWS_* keys, profiles, the instance's role); gs://
    as Google's client libraries do (STORAGE_EMULATOR_HOST for an emulator or a compatible endpoint,
    anonymous there; else the default credentials, checked here so that none fails in seconds)."""
    if "://" in uri:
        try:
            if uri.startswith(("gs://", "gcs://")):
                return _gcs(uri, outage_seconds), uri.split("://", 1)[1]
            if uri.startswith("s3://"):
                return _s3(uri), uri.split("://", 1)[1]
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise ConfigError([f"{uri}: unsupported or unreachable filesystem ({e})"]) from e
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _s3(uri: str) -> pafs.S3FileSystem:
    """pyarrow's own S3 filesystem for the URI (it reads AWS_ENDPOINT_URL and finds the bucket's region), made
    again with more attempts: the AWS SDK's default three gave up within a ten-second outage, and the
    unit being read became an error row."""
    setting = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
    endpoint = os.environ.get(setting)
    if endpoint:  # many attempts would make a wrong endpoint take minutes to refuse
        _answers(endpoint, uri, setting)
    resolved, _ = pafs.FileSystem.from_uri(uri)
    # pyarrow's pickling drops retry_strategy: Ray's workers, where the reads and writes are, rebuild it
    copyreg.pickle(pafs.S3FileSystem, _reduce_with_attempts)
    return pafs.S3FileSystem(region=resolved.region, endpoint_override=endpoint or None,
                             retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS))


def _reduce_with_attempts(filesystem: pafs.S3FileSystem) -> tuple:
    return s3_with_attempts, (filesystem.__reduce__()[1][0],)


def s3_with_attempts(options: dict) -> pafs.S3FileSystem:
    """An S3 filesystem unpickled with S3_ATTEMPTS (see _s3)."""
    return pafs.S3FileSystem(**options, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS))


def _answers(url: str, uri: str, setting: str) -> None:
    endpoint = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        socket.create_connection((endpoint.hostname, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except (OSError, ValueError) as e:
        raise ConfigError([f"{uri}: {setting}={url} does not answer ({e})"]) from e


def _gcs(uri: str, outage_seconds: float) -> pafs.GcsFileSystem:
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or None
    retries = timedelta(seconds=outage_seconds)
    if emulator := os.environ.get("STORAGE_EMULATOR_HOST"):
        # google-cloud-storage and google-cloud-cpp take "host:port" or a URL, and go anonymous
        _answers(emulator, uri, "STORAGE_EMULATOR_HOST")
        endpoint = urlsplit(emulator if "://" in emulator else f"http://{emulator}")
        return pafs.GcsFileSystem(anonymous=True, scheme=endpoint.scheme, endpoint_override=endpoint.netloc,
                                  project_id=project, retry_time_limit=retries)
    if problem := gcs_credentials_problem():
        raise ConfigError([f"{uri}: {problem}"])
    return pafs.GcsFileSystem(project_id=project, retry_time_limit=retries)


def gcs_credentials_problem() -> str | None:
    """Why Google's default credentials (google.aip.dev/auth/4110: GOOGLE_APPLICATION_CREDENTIALS, gcloud's
    application-default file, the metadata server of GCE/GKE) cannot be had here, or None. Without this a
    gs:// run where none can be reached neither failed nor ran (google-cloud-cpp retries for many minutes)."""
    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if named:
        return None if os.path.isfile(named) else f"GOOGLE_APPLICATION_CREDENTIALS names {named}, which is not a file"
    gcloud = Path(os.environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud")
    if (gcloud / "application_default_credentials.json").is_file():
        return None
    # GCE_METADATA_ROOT is where google-cloud-cpp (pyarrow's GCS client) looks for the metadata server
    root = os.environ.get("GCE_METADATA_ROOT") or "metadata.google.internal"
    request = urllib.request.Request(f"http://{root}/computeMetadata/v1/", headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=METADATA_TIMEOUT_SECONDS):
            return None
    except (OSError, ValueError):
        return ("no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a key file, run "
                "`gcloud auth application-default login`, run on GCE/GKE (Workload Identity), or set "
                "STORAGE_EMULATOR_HOST for an emulator")


def _hidden(path: str, root: str) -> bool:
    """Hidden or bookkeeping (`.git/`, `_SUCCESS`, `_temporary/`) anywhere below the input root."""
    return any(part.startswith((".", "_")) for part in posixpath.relpath(path, root).split("/"))


@dataclass(frozen=True)
class Source:
    """The input, listed: what to read and what was left out."""

    uri: str
    filesystem: pafs.FileSystem
    format: str  # images, parquet, jsonl or csv
    units: tuple[tuple[str, int], ...]  # (file, parquet row group or -1)
    skipped: tuple[str, ...]  # files of other types found beside the input
    unit_rows: tuple[int | None, ...] = ()  # rows per unit where the listing tells (parquet footers, images)
    listing: str = ""  # digest of the chosen files with their sizes (see _listing_digest)

    @property
    def units_per_part(self) -> int:
        return IMAGES_PER_READ_TASK if self.format == "images" else 1

    @property
    def parts(self) -> int:
        """Parts are the blocks Ray Data reads (many small images, or one file or row group): the unit of
        resuming. They are numbered in listing order, so the same listing numbers them the same way."""
        return -(-len(self.units) // self.units_per_part)

    def part_rows(self, part: int) -> int | None:
        """The part's row count if the listing tells it, else None (text files are counted when read)."""
        sizes = self.unit_rows[part * self.units_per_part:(part + 1) * self.units_per_part]
        return sum(sizes) if sizes and None not in sizes else None

    def part_table(self, part: int, done: list[tuple[int, int]] = ()) -> pa.Table:
        """One read task's input: the part's units, its number, and the row ranges already written."""
        units = self.units[part * self.units_per_part:(part + 1) * self.units_per_part]
        return pa.table({"file": [u[0] for u in units], "row_group": [u[1] for u in units],
                         "part": pa.array([part] * len(units), pa.int64()),
                         "done": pa.array([[v for r in done for v in r]] * len(units), pa.list_(pa.int64()))})


def _format_of(path: str) -> str | None:
    suffix = Path(path).suffix.lower()
    return "images" if suffix in IMAGE_EXTENSIONS else TABLE_EXTENSIONS.get(suffix)


def discover(uri: str, input_format: str, outage_seconds: float = STORE_OUTAGE_SECONDS) -> Source:
    """List the input (recursively for folders) and decide its format."""
    filesystem, root = open_filesystem(uri, outage_seconds)
    try:
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            _check_bucket(filesystem, root, f"--input {uri}")
            raise ConfigError([f"--input {uri}: no such file or folder"])
        if info.type == pafs.FileType.File:
            infos = {root: info}
        else:
            selector = pafs.FileSelector(root, recursive=True)
            infos = {i.path: i for i in filesystem.get_file_info(selector)
                     if i.type == pafs.FileType.File and not _hidden(i.path, root)}
        files = sorted(infos)
    except OSError as e:
        raise ConfigError([f"--input {uri}: cannot list it ({e})"]) from e
    formats = {f: _format_of(f) for f in files}
    found = sorted({f for f in formats.values() if f})
    if input_format == "auto":
        if len(found) != 1:
            kinds = ", ".join(found) or "no images, parquet, jsonl or csv files"
            raise ConfigError([f"--input {uri}: found {kinds}; name one with --input-format"])
        input_format = found[0]
    chosen = [f for f in files if formats[f] == input_format or (len(files) == 1 and info.type == pafs.FileType.File)]
    if not chosen:
        raise ConfigError([f"--input {uri}: no {input_format} files in it"])
    chosen_set = set(chosen)
    skipped = tuple(f for f in files if f not in chosen_set)
    units: list[tuple[str, int]] = []
    unit_rows: list[int | None] = []
    for file in chosen:
        if input_format == "parquet":
            metadata = _footer(filesystem, file)
            if metadata is None:  # the read task reads the whole file, or reports it as an error row
                units.append((file, WHOLE_FILE))
                unit_rows.append(None)
            else:
                units += [(file, g) for g in range(metadata.num_row_groups)]
                unit_rows += [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        else:
            units.append((file, -1))
            unit_rows.append(1 if input_format == "images" else None)
    if not units:
        raise ConfigError([f"--input {uri}: its parquet files hold no rows"])
    return Source(uri=uri, filesystem=filesystem, format=input_format, units=tuple(units), skipped=skipped,
                  unit_rows=tuple(unit_rows), listing=_listing_digest(input_format, units, unit_rows, infos))


def _footer(filesystem: pafs.FileSystem, file: str) -> pq.FileMetaData | None:
    """The file's parquet footer, read again after FOOTER_RETRY_SECONDS while it fails; None if it never
    could be. (Taking an unreadable file for one row group lost every other row group, with no error, when
    the footer could be read again by the time the read task ran.)"""
    def read() -> pq.FileMetaData:
        with filesystem.open_input_file(file) as handle:
            return pq.ParquetFile(handle).metadata

    try:
        return with_retries(read, FOOTER_RETRY_SECONDS, (OSError, pa.ArrowInvalid))
    except (OSError, pa.ArrowInvalid):
        return None


# How pyarrow's S3 and GCS filesystems word a refused permission (S3's arrives as a plain OSError)
REFUSED = ("ACCESS_DENIED", "PERMISSION_DENIED", "AccessDenied")


def with_retries(action: Callable[[], T], waits: Sequence[float], retried: tuple[type[Exception], ...] = (OSError,),
                 before_retry: Callable[[Exception, float], None] | None = None) -> T:
    """action(), tried again after each of `waits` seconds while it raises one of `retried` (a store's 503, a
    file still being written); the last error is raised. Never retried: a missing file or a refused
    permission, which no wait changes."""
    for wait in waits:
        try:
            return action()
        except (FileNotFoundError, PermissionError):
            raise
        except retried as e:
            if any(word in str(e) for word in REFUSED):
                raise
            if before_retry is not None:
                before_retry(e, wait)
            time.sleep(wait)
    return action()


def _listing_digest(input_format: str, units: list[tuple[str, int]], unit_rows: list[int | None],
                    infos: dict) -> str:
    """What a resumed run must find unchanged: the units, each file's size and each row group's rows.
    Not modification times: an input copied or downloaded again for a retry (a KubeRay retry on a new
    pod fetching its data) is the same input, and its rows are kept."""
    digest = hashlib.sha256(input_format.encode())
    for (file, row_group), rows in zip(units, unit_rows, strict=True):
        info = infos.get(file)
        size = info.size if info is not None and info.size is not None else -1
        digest.update(f"\0{file}\0{row_group}\0{size}\0{rows}".encode())
    return digest.hexdigest()


def _read_table(filesystem: pafs.FileSystem, fmt: str, file: str, row_group: int) -> pa.Table:
    if fmt == "parquet":
        with filesystem.open_input_file(file) as handle:
            parquet = pq.ParquetFile(handle)
            return parquet.read() if row_group == WHOLE_FILE else parquet.read_row_group(row_group)
    if fmt == "jsonl":
        with filesystem.open_input_stream(file) as stream:
            return pa_json.read_json(stream)
    # CSV has no types: keep every column as the text it is (no "007" -> 7, no "1.10" -> 1.1).
    with filesystem.open_input_stream(file) as stream:
        names = pa_csv.open_csv(stream).schema.names
    with filesystem.open_input_stream(file) as stream:
        return pa_csv.read_csv(stream, convert_options=pa_csv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=False))


def conform(table: pa.Table, schema: pa.Schema, file: str) -> pa.Table:
    """Every block gets the input's schema (taken from its first unit), so every output file has the
    same columns; a file that adds columns or changes a type stops the run rather than losing data."""
    extra = [n for n in table.column_names if n not in schema.names]
    if extra:
        raise ValueError(f"{file} has columns the first input file lacks ({', '.join(extra)}); "
                         "all input files must have the same columns")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        try:
            columns.append(table.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"{file}: column {field.name!r} is {table.schema.field(field.name).type}, but "
                             f"{field.type} in the first input file ({e})") from e
    return pa.Table.from_arrays(columns, schema=schema)


def read_units(batch: pa.Table, *, filesystem: pafs.FileSystem, fmt: str, schema: pa.Schema) -> pa.Table:
    """Ray task: read the listed units of one part into the input schema plus `error` and the row keys,
    leaving out rows already written (`done`: flat [start, end) pairs). Images become (path, bytes). A unit
    that cannot be read becomes one row that names it in `error`."""
    tables = []
    for file, row_group in zip(batch.column("file").to_pylist(), batch.column("row_group").to_pylist(),
                               strict=True):
        try:
            if fmt == "images":
                with filesystem.open_input_file(file) as handle:
                    table = pa.table({PATH: [file], "bytes": pa.array([handle.readall()], pa.binary())})
            else:
                table = conform(_read_table(filesystem, fmt, file, row_group), schema, file)
            error = pa.nulls(table.num_rows, pa.string())
        except (OSError, pa.ArrowInvalid) as e:
            empty = {PATH: [file]} if fmt == "images" else {}
            table = pa.Table.from_pylist([empty], schema=schema)
            error = pa.array([f"{UNREADABLE}{file}: {one_line(e, 300)}"], pa.string())
        tables.append(table.append_column(ERROR, error))
    table = pa.concat_tables(tables)
    rows = table.num_rows
    table = (table.append_column(PART, pa.array(np.full(rows, batch.column("part")[0].as_py()), pa.int64()))
             .append_column(ROW, pa.array(np.arange(rows), pa.int64()))
             .append_column(PART_ROWS, pa.array(np.full(rows, rows), pa.int64())))
    done = batch.column("done")[0].values.to_numpy() if "done" in batch.column_names else np.array([], np.int64)
    if not len(done):
        return table
    keep = np.ones(rows, dtype=bool)
    for start, end in done.reshape(-1, 2):
        keep[start:end] = False
    return table.filter(pa.array(keep))


def sample_schema(source: Source) -> pa.Schema:
    """The input's columns from its first unit, on the driver: parquet's from its footer, CSV's from its
    header (all text), JSON lines' inferred from the whole first file; all-null columns become strings."""
    file, row_group = source.units[0]
    if source.format == "images":
        return pa.schema([(PATH, pa.string()), ("bytes", pa.binary())])
    try:
        if source.format == "parquet":
            with source.filesystem.open_input_file(file) as handle:
                schema = pq.ParquetFile(handle).schema_arrow
        elif source.format == "csv":
            with source.filesystem.open_input_stream(file) as stream:
                schema = pa.schema([(n, pa.string()) for n in pa_csv.open_csv(stream).schema.names])
        else:
            schema = _read_table(source.filesystem, source.format, file, row_group).schema
        # every column may be null in the output (a row of an unreadable unit, a column a later file lacks),
        # even where the input declared it required, as Spark does
        return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f.with_nullable(True)
                          for f in schema])
    except (OSError, pa.ArrowInvalid) as e:
        raise ConfigError([f"--input {source.uri}: cannot read {file} ({one_line(e, 300)})"]) from e


# ---------------------------------------------------------------------------------------------
# Output


@dataclass(frozen=True)
class Output:
    uri: str
    filesystem: pafs.FileSystem
    path: str  # the final folder
    staging: str  # where the run writes before publishing
    local: bool
    # The output folder is a mount point (a volume mounted at --output): it cannot be renamed, and beside it
    # is another filesystem (the container's own disk), so the run is staged inside it and linked in file by file.
    staged_inside: bool = False
    # A published output whose clean-up was cut off (a kill after the rename or the last copy): the folder
    # whose bookkeeping (job.json) still names the run, the output itself after a rename, else the staged run.
    # The same job finishes the clean-up (`finish_cleanup`); another is refused without --overwrite.
    leftover_run: str | None = None

    @property
    def shown(self) -> str:
        """How the output is named to the user: the URI on a store, the resolved folder on disk."""
        return self.uri if "://" in self.uri else self.path

    @property
    def renames(self) -> bool:
        """Published by renaming the staged run into place (a local folder that is not a mount point)."""
        return self.local and not self.staged_inside


UNFINISHED = ".inferkit-unfinished"  # beside the output (inside a mount point): the run being written
BOOKKEEPING = "_inferkit"  # inside it: what lets a later attempt resume (see inferkit.job.ledger)
JOB = "job.json"  # in BOOKKEEPING: which job the run is, and its attempts
PUBLISHING = "publishing"  # in BOOKKEEPING: a copying publish began (one cut off is finished by the same command)
LOST_FOUND = "lost+found"  # a volume's own folder at its root: never the output's, never touched
REPLACED = ".inferkit-old"  # beside the output: the output an --overwrite replaces, until the new one is in place
TAKEN_OUT = ".inferkit-cleanup"  # beside the output: its bookkeeping, taken out in one rename, being removed


def faults(spec: str) -> dict[str, str]:
    """INFERKIT_INJECT_FAULT's items (test hooks, listed in inferkit.job.tasks) by name."""
    return dict(item.partition(":")[::2] for item in spec.split(",") if item)


def prepare_output(uri: str, overwrite: bool, outage_seconds: float = STORE_OUTAGE_SECONDS) -> Output:
    """Refuse an existing output unless --overwrite (checked before any work; one whose clean-up was cut off
    is left to the caller, who knows the job). The run is written to a folder beside the output, on the same
    filesystem, so that a run that dies can be resumed from there; into the output itself where it is a mount
    point (a pod's volume), whose parent is another filesystem."""
    filesystem, path = open_filesystem(uri, outage_seconds)
    path = path.rstrip("/") or "/"
    local = isinstance(filesystem, pafs.LocalFileSystem)
    inside = local and os.path.ismount(path)
    staging = posixpath.join(path, UNFINISHED) if inside else path + UNFINISHED
    try:
        info = filesystem.get_file_info(path)
        exists = info.type == pafs.FileType.File or (
            info.type == pafs.FileType.Directory
            and any(i.path.rstrip("/") != staging and posixpath.basename(i.path) != LOST_FOUND
                    for i in filesystem.get_file_info(pafs.FileSelector(path, recursive=False))))
        # A copying publish cut off midway (an object store's copies, a pod killed while linking files into a
        # mount) left files and no _SUCCESS, and the whole staged run marked as publishing: the same command
        # takes the run up again and finishes it. Nothing else there is ever replaced without --overwrite.
        finished = exists and _exists(filesystem, posixpath.join(path, SUCCESS))
        unfinished_publish = exists and not finished and _exists(
            filesystem, posixpath.join(staging, BOOKKEEPING, PUBLISHING))
        # After a rename the run's bookkeeping is inside the output; after copies, the staged run marked as
        # publishing is left (a run staged but never published, beside an older output, is not marked).
        leftover, mark = (path, JOB) if local and not inside else (staging, PUBLISHING)
        leftover_run = leftover if finished and _exists(filesystem, posixpath.join(leftover, BOOKKEEPING, mark)) else None
    except OSError as e:
        raise ConfigError([f"--output {uri}: cannot check it ({e})"]) from e
    if exists and not overwrite and not unfinished_publish and not leftover_run:
        raise already_exists(uri)
    if isinstance(filesystem, OBJECT_STORES):
        try:
            _check_bucket(filesystem, path, f"--output {uri}")
        except OSError as e:
            raise ConfigError([f"--output {uri}: cannot check it ({one_line(e, 300)})"]) from e
        _check_writable(filesystem, staging, f"--output {uri}")
    return Output(uri=uri, filesystem=filesystem, path=path, staging=staging, local=local, staged_inside=inside,
                  leftover_run=leftover_run)


def already_exists(uri: str) -> ConfigError:
    return ConfigError([f"--output {uri}: already exists; pass --overwrite to replace it"])


def _check_bucket(filesystem: pafs.FileSystem, path: str, what: str) -> None:
    """An object store's missing bucket, said as such (else it surfaces as a missing file, or mid-run)."""
    if not isinstance(filesystem, OBJECT_STORES):
        return
    bucket = path.split("/", 1)[0]
    if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
        raise ConfigError([f"{what}: no bucket {bucket!r} (or these credentials cannot see it)"])


def _check_writable(filesystem: pafs.FileSystem, staging: str, what: str) -> None:
    """Write and remove one empty object where the run will write, before any work: a key that may read but
    not write (or a read-only bucket) is refused here, not after the first batch is computed."""
    probe = posixpath.join(staging, BOOKKEEPING, f"write-check-{uuid.uuid4().hex[:8]}")
    try:
        _write_text(filesystem, probe, "")
        filesystem.delete_file(probe)
    except OSError as e:
        raise ConfigError([f"{what}: cannot write there ({one_line(e, 300)})"]) from e


def count_rows(output: Output, files: list[str]) -> tuple[int, collections.Counter[str]]:
    """The written files' rows, and how many of them carry each error message (one read of the column)."""
    rows = 0
    errors: collections.Counter[str] = collections.Counter()
    for file in files:
        column = pq.read_table(file, columns=[ERROR], filesystem=output.filesystem).column(ERROR)
        rows += len(column)
        errors.update(column.drop_null().to_pylist())
    return rows, errors


class PublishInterrupted(JobFailed):
    """Publishing stopped midway; the staged run is kept so that nothing computed is lost."""


def publish(output: Output, report: dict[str, Any]) -> None:
    """Make the staged run the output: all files, then the report, then `_SUCCESS`, at once where the
    filesystem can rename a folder. A failure keeps the staged run and says where it is."""
    fs = output.filesystem
    try:
        _write_text(fs, posixpath.join(output.staging, REPORT), json.dumps(report, indent=2, default=str) + "\n")
        if output.renames:
            _swap_folder(fs, output)
        else:
            _copy_over(fs, output)
    except OSError as e:
        state = "is as it was" if output.renames else f"has no {SUCCESS} (the same command finishes publishing it)"
        raise PublishInterrupted(f"publishing the output to {output.uri} failed ({one_line(e)}); "
                                 f"the complete run is kept at {output.staging} and the output {state}") from e
    if "kill-before-cleanup" in faults(os.environ.get("INFERKIT_INJECT_FAULT", "")):
        os.kill(os.getpid(), signal.SIGKILL)
    finish_cleanup(output)


def finish_cleanup(output: Output) -> None:
    """After a publish, remove what is left of the run: after a copying one the staged run; after a renaming
    one the output it replaced, then the bookkeeping, taken out of the output in one rename first (a kill
    while it is deleted would leave an output whose bookkeeping names no job: refused for ever). Also what
    the same command does when a publish was stopped before this."""
    fs = output.filesystem
    if not output.renames:
        _remove(fs, output.staging)
        return
    taken_out = output.path + TAKEN_OUT
    _remove(fs, output.path + REPLACED)
    _remove(fs, taken_out)
    try:
        if _exists(fs, posixpath.join(output.path, BOOKKEEPING)):
            fs.move(posixpath.join(output.path, BOOKKEEPING), taken_out)
    except OSError as e:
        say(f"warning: the output is published, but its {BOOKKEEPING} folder could not be moved out ({one_line(e)})")
    _remove(fs, taken_out)


def _remove(fs: pafs.FileSystem, folder: str) -> None:
    try:
        if _exists(fs, folder):
            fs.delete_dir(folder)
    except OSError as e:
        say(f"warning: the output is published, but {folder} could not be removed ({one_line(e)})")


def _swap_folder(fs: pafs.FileSystem, output: Output) -> None:
    """Rename the staged run into place, the old output aside first (see `finish_cleanup`)."""
    _write_text(fs, posixpath.join(output.staging, SUCCESS), "")
    if not _exists(fs, output.path):
        fs.move(output.staging, output.path)
        return
    old = output.path + REPLACED
    if _exists(fs, old):  # left by a publish stopped before its clean-up: --overwrite replaced it then
        fs.delete_dir(old)
    fs.move(output.path, old)
    try:
        fs.move(output.staging, output.path)
    except BaseException:
        fs.move(old, output.path)
        raise


def _copy_over(fs: pafs.FileSystem, output: Output) -> None:
    """Object stores cannot rename a folder, nor can a mount point be renamed. Readers wait for `_SUCCESS`:
    take it away first, copy the new files over (within a mount point: hard-link them, the same filesystem),
    remove what the old output had beyond them, and put `_SUCCESS` back last. A failure midway leaves no
    `_SUCCESS` and the whole staged run in place, marked as publishing, never a half-deleted output that
    looks complete. The staged run is removed afterwards."""
    marker = posixpath.join(output.path, SUCCESS)
    if _exists(fs, marker):  # first: a publishing mark beside an old output's _SUCCESS would read as published
        fs.delete_file(marker)
    fs.create_dir(posixpath.join(output.staging, BOOKKEEPING), recursive=True)
    _write_text(fs, posixpath.join(output.staging, BOOKKEEPING, PUBLISHING), "")
    bookkeeping = posixpath.join(output.staging, BOOKKEEPING) + "/"
    copies = {posixpath.join(output.path, posixpath.relpath(info.path, output.staging)): info.path
              for info in fs.get_file_info(pafs.FileSelector(output.staging, recursive=True))
              if info.type == pafs.FileType.File and not info.path.startswith(bookkeeping)}
    for folder in {posixpath.dirname(target) for target in copies}:
        fs.create_dir(folder, recursive=True)
    if output.staged_inside:
        for target, source in copies.items():
            _link_or_copy(fs, source, target)
    else:
        with ThreadPoolExecutor(OBJECT_STORE_THREADS) as pool:
            list(pool.map(lambda target: fs.copy_file(copies[target], target), copies))
    written = set(copies)
    for path in _files_beside_the_run(fs, output):
        if path not in written:
            fs.delete_file(path)
    _write_text(fs, marker, "")


def _link_or_copy(fs: pafs.FileSystem, source: str, target: str) -> None:
    """A staged file into the output on the same local filesystem, the staged one kept until the end."""
    if os.path.lexists(target):
        os.unlink(target)
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links
        fs.copy_file(source, target)


def _files_beside_the_run(fs: pafs.FileSystem, output: Output) -> list[str]:
    """The output's files, leaving out the staged run inside it and a volume's lost+found (never listed:
    a pod may not be allowed to read it)."""
    top = fs.get_file_info(pafs.FileSelector(output.path, recursive=False, allow_not_found=True))
    files = []
    for info in top:
        if info.path.rstrip("/") == output.staging.rstrip("/") or posixpath.basename(info.path) == LOST_FOUND:
            continue
        if info.type == pafs.FileType.File:
            files.append(info.path)
        elif info.type == pafs.FileType.Directory:
            files += [i.path for i in fs.get_file_info(pafs.FileSelector(info.path, recursive=True))
                      if i.type == pafs.FileType.File]
    return files


def discard(output: Output) -> None:
    """Remove the staging folder of a run that did not finish and wrote nothing worth resuming."""
    try:
        output.filesystem.delete_dir(output.staging)
    except OSError:
        pass


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode("utf-8"))


class StoreLost(JobFailed):
    """An object store stopped answering mid-run; what was written stays there (nothing to read back now)."""


class StoreWatch:
    """While a run computes, a thread checks that its object stores still answer, and ends the run once one
    has not for `outage_seconds`: it signals the main thread (SIGUSR2, whose handler raises StoreLost
    there; not SIGINT, which a process started in the background ignores). Without it a store gone for good
    hung the run: Ray Data drops every block whose write fails (max_errored_blocks, kept for rows that kill
    their worker) and the rescue of dropped parts then failed each one again, slowly."""

    def __init__(self, stores: list[tuple[str, pafs.FileSystem, str]], outage_seconds: float = STORE_OUTAGE_SECONDS):
        self.stores = [s for s in stores if isinstance(s[1], OBJECT_STORES)]
        self.outage_seconds = outage_seconds
        self.check_seconds = min(STORE_CHECK_SECONDS, outage_seconds / 4)
        self.failure: str | None = None
        self._done = False
        self._lock = threading.Lock()  # the signal is sent only while the block runs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="inferkit-store-watch", daemon=True)
        self._previous: Any = None

    def __enter__(self) -> StoreWatch:
        if self.stores and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR2, self._raise)
            self._thread.start()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> None:
        with self._lock:
            self._done = True
            self._stop.set()
        if self._previous is not None:
            signal.signal(signal.SIGUSR2, self._previous)
        if self.failure and not isinstance(error, (Terminated, StoreLost)):
            raise StoreLost(self.failure) from error

    def _raise(self, signum: int, frame: Any) -> None:
        raise StoreLost(self.failure or "an object store stopped answering")

    def _watch(self) -> None:
        failing_since = None
        while not self._stop.wait(self.check_seconds):
            for what, filesystem, path in self.stores:
                asked = time.monotonic()
                try:
                    filesystem.get_file_info(path)
                except OSError as e:
                    failing_since = failing_since or asked
                    if time.monotonic() - failing_since >= self.outage_seconds:
                        with self._lock:
                            if not self._done:
                                self.failure = (f"the {what} stopped answering for "
                                                f"{time.monotonic() - failing_since:.0f} s "
                                                f"({one_line(e, 200)}); what was written is kept "
                                                "there, and the same command resumes once it is back")
                                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR2)
                        return
                    break
            else:
                failing_since = None
