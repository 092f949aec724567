"""Inputs and outputs through pyarrow filesystems (local paths, s3://, gs://).

Inputs are listed on the driver and read by Ray tasks that ask for a fraction of a CPU, so reading
never waits behind inference actors. Outputs are written under a temporary prefix and published in
one step: a rename for local folders; for object stores, a copy, then the report, then `_SUCCESS`.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.fs as pafs
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from inferkit.console import say
from inferkit.errors import ConfigError, JobFailed

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TABLE_EXTENSIONS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
SUCCESS = "_SUCCESS"
REPORT = "_inferkit_report.json"
ERROR = "error"
PATH = "path"
IMAGES_PER_READ_TASK = 64
UNREADABLE = "cannot read "  # how an unreadable unit's error row starts


def open_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it; plain paths are local."""
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise ConfigError([f"{uri}: unsupported or unreachable filesystem ({e})"]) from e
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


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

    def unit_table(self) -> list[pa.Table]:
        """Blocks of read units for Ray Data: many small images per task, one file or row group otherwise."""
        per_block = IMAGES_PER_READ_TASK if self.format == "images" else 1
        return [pa.table({"file": [u[0] for u in self.units[i:i + per_block]],
                          "row_group": [u[1] for u in self.units[i:i + per_block]]})
                for i in range(0, len(self.units), per_block)]


def _format_of(path: str) -> str | None:
    suffix = Path(path).suffix.lower()
    return "images" if suffix in IMAGE_EXTENSIONS else TABLE_EXTENSIONS.get(suffix)


def discover(uri: str, input_format: str) -> Source:
    """List the input (recursively for folders) and decide its format."""
    filesystem, root = open_filesystem(uri)
    try:
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise ConfigError([f"--input {uri}: no such file or folder"])
        if info.type == pafs.FileType.File:
            files = [root]
        else:
            selector = pafs.FileSelector(root, recursive=True)
            files = sorted(i.path for i in filesystem.get_file_info(selector)
                           if i.type == pafs.FileType.File and not _hidden(i.path, root))
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
    for file in chosen:
        if input_format == "parquet":
            try:
                units += [(file, g) for g in range(pq.ParquetFile(filesystem.open_input_file(file)).num_row_groups)]
            except (OSError, pa.ArrowInvalid):
                units.append((file, 0))  # unreadable: the read task reports it as an error row
        else:
            units.append((file, -1))
    if not units:
        raise ConfigError([f"--input {uri}: its parquet files hold no rows"])
    return Source(uri=uri, filesystem=filesystem, format=input_format, units=tuple(units), skipped=skipped)


def _read_table(filesystem: pafs.FileSystem, fmt: str, file: str, row_group: int) -> pa.Table:
    if fmt == "parquet":
        return pq.ParquetFile(filesystem.open_input_file(file)).read_row_group(max(row_group, 0))
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
    """Ray task: read the listed units into the input schema plus `error`. Images become (path, bytes).
    A unit that cannot be read becomes one row that names it in `error`."""
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
            error = pa.array([f"{UNREADABLE}{file}: {' '.join(str(e).split())[:300]}"], pa.string())
        tables.append(table.append_column(ERROR, error))
    return pa.concat_tables(tables)


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
        raise ConfigError([f"--input {source.uri}: cannot read {file} ({' '.join(str(e).split())[:300]})"]) from e


# ---------------------------------------------------------------------------------------------
# Output


@dataclass(frozen=True)
class Output:
    uri: str
    filesystem: pafs.FileSystem
    path: str  # the final folder
    staging: str  # where the run writes before publishing
    local: bool


def prepare_output(uri: str, overwrite: bool, run_id: str) -> Output:
    """Refuse an existing output unless --overwrite (checked before any work), and pick a staging folder."""
    filesystem, path = open_filesystem(uri)
    path = path.rstrip("/")
    try:
        info = filesystem.get_file_info(path)
        exists = info.type == pafs.FileType.File or (
            info.type == pafs.FileType.Directory
            and bool(filesystem.get_file_info(pafs.FileSelector(path, recursive=False))))
    except OSError as e:
        raise ConfigError([f"--output {uri}: cannot check it ({e})"]) from e
    if exists and not overwrite:
        raise ConfigError([f"--output {uri}: already exists; pass --overwrite to replace it"])
    staging = f"{path}.inferkit-{run_id}"
    local = isinstance(filesystem, pafs.LocalFileSystem)
    filesystem.create_dir(staging, recursive=True)
    return Output(uri=uri, filesystem=filesystem, path=path, staging=staging, local=local)


def output_files(output: Output, folder: str) -> list[str]:
    infos = output.filesystem.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def count_rows(output: Output, files: list[str]) -> tuple[int, int, int]:
    """(rows, rows with an error, rows that stand for a unit that could not be read) in the written files."""
    rows = errors = unreadable = 0
    for file in files:
        column = pq.read_table(file, columns=[ERROR], filesystem=output.filesystem).column(ERROR)
        rows += len(column)
        errors += len(column) - column.null_count
        unreadable += pc.sum(pc.starts_with(column.fill_null(""), UNREADABLE)).as_py() or 0
    return rows, errors, unreadable


def write_table_file(output: Output, table: pa.Table, index: int) -> str:
    """One parquet file in staging, for writes that go through the driver."""
    path = posixpath.join(output.staging, f"part-{index:05d}.parquet")
    pq.write_table(table, path, filesystem=output.filesystem)
    return path


class PublishInterrupted(JobFailed):
    """Publishing stopped midway; the staged run is kept so that nothing computed is lost."""


def publish(output: Output, report: dict[str, Any]) -> None:
    """Make the staged run the output: all files, then the report, then `_SUCCESS`, at once where the
    filesystem can rename a folder. A failure keeps the staged run and says where it is."""
    fs = output.filesystem
    try:
        _write_text(fs, posixpath.join(output.staging, REPORT), json.dumps(report, indent=2, default=str) + "\n")
        leftover = _swap_folder(fs, output) if output.local else _copy_over(fs, output)
    except OSError as e:
        state = "is as it was" if output.local else f"has no {SUCCESS}"
        raise PublishInterrupted(f"publishing the output to {output.uri} failed ({' '.join(str(e).split())}); "
                                 f"the complete run is kept at {output.staging} and the output {state}") from e
    try:
        if leftover:
            fs.delete_dir(leftover)
    except OSError as e:
        say(f"warning: the output is published, but {leftover} could not be removed ({e})")


def _swap_folder(fs: pafs.FileSystem, output: Output) -> str | None:
    """Rename the staged run into place, the old output aside first; returns what is left to remove."""
    _write_text(fs, posixpath.join(output.staging, SUCCESS), "")
    if not _exists(fs, output.path):
        fs.move(output.staging, output.path)
        return None
    old = f"{output.path}.inferkit-old-{uuid.uuid4().hex[:8]}"
    fs.move(output.path, old)
    try:
        fs.move(output.staging, output.path)
    except BaseException:
        fs.move(old, output.path)
        raise
    return old


def _copy_over(fs: pafs.FileSystem, output: Output) -> str:
    """Object stores cannot rename a folder. Readers wait for `_SUCCESS`: take it away first, copy the
    new files over, remove what the old output had beyond them, and put `_SUCCESS` back last. A failure
    midway leaves no `_SUCCESS` and the staged run in place, never a half-deleted output that looks
    complete. Returns the staged run, to remove."""
    marker = posixpath.join(output.path, SUCCESS)
    if _exists(fs, marker):
        fs.delete_file(marker)
    written = set()
    for info in fs.get_file_info(pafs.FileSelector(output.staging, recursive=True)):
        if info.type == pafs.FileType.File:
            target = posixpath.join(output.path, posixpath.relpath(info.path, output.staging))
            fs.create_dir(posixpath.dirname(target), recursive=True)
            fs.copy_file(info.path, target)
            written.add(target)
    for info in fs.get_file_info(pafs.FileSelector(output.path, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.path not in written:
            fs.delete_file(info.path)
    _write_text(fs, marker, "")
    return output.staging


def discard(output: Output) -> None:
    """Remove the staging folder of a run that did not finish."""
    try:
        output.filesystem.delete_dir(output.staging)
    except OSError:
        pass


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode("utf-8"))
