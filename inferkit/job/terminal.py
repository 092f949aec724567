"""What a user sees of a run: progress in rows of the input, and none of Ray's own log lines unless -v.

Ray Data's bars count blocks per internal operator; a user counts rows. The progress here follows the
inference operator through a Ray Data execution callback (ray/data/_internal/execution/
execution_callback.py), so it covers the main pass only and not the precision check's sample.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from ray.data._internal.execution.execution_callback import ExecutionCallback

from inferkit.console import say

# Off a terminal (a log file, a pod's log), one progress line this often (INFERKIT_PROGRESS_SECONDS).
LOG_EVERY_SECONDS = float(os.environ.get("INFERKIT_PROGRESS_SECONDS") or 30)
# On a terminal, the line is redrawn at most this often.
REDRAW_SECONDS = 0.5
# Substrings of Ray's C++ log lines that are kept off the terminal (they stay in the driver's log file,
# python-core-driver-*.log in the Ray session's logs folder):
# - Ray Data puts every actor pool's map transformer and DataContext in the object store and passes them
#   by reference (ray.put in ray/data/_internal/execution/operators/map_operator.py, used by
#   actor_pool_map_operator.py), and its actors restart by default, so core_worker.cc says so for every
#   pool (ray-project/ray#53727). inferkit's own constructor argument is small; nothing to act on.
HARMLESS_NATIVE_LINES = ("has constructor arguments in the object store and max_restarts > 0",)
# Substrings of the GCS's error lines that Ray forwards to the driver (its log monitor tails
# gcs_server*.err: ray/_private/log_monitor.py) and that are kept off the terminal: when a failed run ends,
# Ray Data kills its actors, and for an actor whose worker has already exited the GCS logs the failed
# KillActor call (gcs_actor_scheduler.cc). They stay in the session's gcs_server.err.
HARMLESS_GCS_LINES = ("KillActor RPC failed for actor",)


# ---------------------------------------------------------------------------------------------
# Progress in rows


class RowProgress:
    """Rows done out of the total (when the listing tells it), their rate and the time left."""

    def __init__(self, total: int | None, done_before: int, stream: Any, now: float):
        self.total = total
        self.done_before = done_before
        self.stream = stream
        self.tty = _is_tty(stream)
        self.started = now
        self.shown_at = now if not self.tty else 0.0
        self.rows = 0
        self.drawn = False

    def line(self, now: float) -> str:
        done = self.done_before + self.rows
        rate = self.rows / (now - self.started) if now > self.started else 0.0
        text = f"{done:,} / {self.total:,} rows" if self.total is not None else f"{done:,} rows"
        text += f", {rate:,.0f} rows/s" if rate >= 10 else f", {rate:,.1f} rows/s"
        if self.total is not None and rate > 0 and done < self.total:
            text += f", ETA {_duration((self.total - done) / rate)}"
        return text

    def update(self, rows: int, now: float) -> None:
        self.rows = max(self.rows, rows)
        if self.tty and now - self.shown_at >= REDRAW_SECONDS:
            self.stream.write(f"\r\x1b[K{self.line(now)}")
            self.stream.flush()
            self.shown_at, self.drawn = now, True
        elif not self.tty and now - self.shown_at >= LOG_EVERY_SECONDS:
            say(f"progress: {self.line(now)}")
            self.shown_at = now

    def close(self, now: float) -> None:
        """The last count stays on screen; off a terminal the summary line says it."""
        if self.tty:
            self.stream.write(f"\r\x1b[K{self.line(now)}\n" if self.drawn or self.rows else "")
            self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _is_tty(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_shown: list[RowProgress] = []  # the display of the execution now running, if any


class RowsInferred(ExecutionCallback):
    """Feeds the display with the inference operator's output rows at each step of an execution.

    Defined at module level so that cloudpickle ships it to workers by reference with the DataContext:
    a class made inside a function travels by value, with `_shown` and the stream it holds.
    """

    def on_execution_step(self, executor: Any) -> None:
        if not _shown:
            return
        try:
            _shown[-1].update(_rows_inferred(executor), time.monotonic())
        except Exception:  # noqa: BLE001 - the display must never fail the run: it goes, the run goes on
            _shown.clear()

    def after_execution_succeeds(self, executor: Any) -> None:
        self.on_execution_step(executor)


def install_progress(context: Any) -> None:
    """Register the callback on Ray Data's context; datasets made afterwards report to `row_progress`."""
    if RowsInferred not in context.custom_execution_callback_classes:
        context.custom_execution_callback_classes.append(RowsInferred)


def _rows_inferred(executor: Any) -> int:
    """Rows out of the inference actors (a fused operator's name still names Predictor)."""
    topology = getattr(executor, "_topology", None) or {}
    return sum(op.metrics.rows_task_outputs_generated for op in topology if "Predictor" in op.name)


@contextlib.contextmanager
def row_progress(total: int | None, done_before: int) -> Iterator[RowProgress]:
    """Show progress while the main pass runs (Ray Data executions outside it show nothing)."""
    shown = RowProgress(total, done_before, sys.stderr, time.monotonic())
    _shown.append(shown)
    try:
        yield shown
    finally:
        _shown.remove(shown)
        shown.close(time.monotonic())


def error_kinds(counts: dict[str, int]) -> str:
    """`3 empty text, 1 cannot decode image` from error messages and their counts: the kind is the text
    before the first colon, so row-specific details do not split a kind."""
    kinds: dict[str, int] = {}
    for message, count in counts.items():
        kind = message.split(":", 1)[0].strip() or message
        kinds[kind] = kinds.get(kind, 0) + count
    return ", ".join(f"{n:,} {kind}" for kind, n in sorted(kinds.items(), key=lambda item: -item[1]))


# ---------------------------------------------------------------------------------------------
# Ray's own log lines


def quiet_native_stderr() -> None:
    """Ray's C++ core writes its error lines to this process's stderr (fd 2) as well as to its log file.
    Lines known to be harmless are dropped from the terminal; everything else passes unchanged. Python's
    own stderr is moved to a copy of the real one, so it keeps its terminal (isatty) and its order."""
    if _filter_started or not _is_fd2(sys.stderr):
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    sys.stderr = os.fdopen(os.dup(real), "w", buffering=1, encoding=sys.stderr.encoding,
                           errors=sys.stderr.errors)
    thread = threading.Thread(target=_forward, args=(read_end, real), name="inferkit-stderr", daemon=True)
    thread.start()
    _filter_started.append(thread)

    def restore() -> None:
        """Put fd 2 back and let the thread pass on what is still in the pipe (it ends at end of file)."""
        sys.stderr.flush()
        os.dup2(real, 2)
        os.close(write_end)
        thread.join(timeout=2)

    atexit.register(restore)


_filter_started: list[threading.Thread] = []


def quiet_forwarded_gcs_lines() -> None:
    """Drops HARMLESS_GCS_LINES from what Ray's driver prints of the GCS's log; the rest passes. The lines
    reach the terminal through the dispatcher's "ray_print_logs" handler (ray/_private/worker.py)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    def dropping(handle: Any) -> Any:
        def handler(data: dict) -> None:
            if data.get("pid") == "gcs_server":
                lines = [line for line in data.get("lines", ()) if not any(h in line for h in HARMLESS_GCS_LINES)]
                if not lines:
                    return
                data = {**data, "lines": lines}
            handle(data)
        handler.inferkit_quiet = True
        return handler

    dispatcher.handlers = [(name, dropping(handle) if name == "ray_print_logs"
                            and not getattr(handle, "inferkit_quiet", False) else handle)
                           for name, handle in dispatcher.handlers]


def _is_fd2(stream: Any) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, ValueError, OSError):
        return False  # a test's capture, a notebook: not the process's stderr


def _forward(read_end: int, real: int) -> None:
    pending = b""
    while chunk := os.read(read_end, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = [line for line in lines if not any(h.encode() in line for h in HARMLESS_NATIVE_LINES)]
        out = b"".join(line + b"\n" for line in kept)
        if pending and not pending.startswith(b"["):  # not a C++ log line: no need to wait for its end
            out, pending = out + pending, b""
        _write_all(real, out)
    _write_all(real, pending)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
