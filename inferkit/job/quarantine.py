"""Containing rows that kill their worker process.

Ray Data retries a task whose process died, without limit by default; one image that segfaults its
decoder or one text that makes the model's native code abort would hang a run for ever. `inferkit run`
bounds those retries (see run.py's `_contain_crashes`) and lets Ray Data drop a block that still fails;
the ledger then shows which input rows are missing, and this module finishes them: their parts are read
again, and their rows go through a child process in chunks. A chunk whose process dies is split in two,
down to single rows; a row that kills a fresh process twice becomes an error row naming how it died
(the child's exit code or signal, which Ray does not report), once some process here has computed a row
(before that it is a suspect: a broken node kills whatever it runs; with three suspects, another row is
tried, one computed before where there is one, and the rows are blamed only if it computes). The rest are
written as usual.

The child is a plain subprocess of a Ray actor that holds an inference actor's CPUs and GPUs, so it runs
where inference runs, and its death is seen exactly (a Ray actor's death only says "connection error").
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from typing import Any, NoReturn

import pyarrow as pa

from inferkit.console import say
from inferkit.errors import JobFailed, one_line
from inferkit.job import io
from inferkit.job.ledger import Ledger, Progress
from inferkit.job.tasks import ModelSpec, decode_images, output_table

DIED = "the worker process died on this row: "
DEATHS_PER_ROW = 2  # a row that kills this many fresh processes is an error row, not a victim of chance
# Rows that killed their processes before any process of the rescue computed a row are only suspects: a
# node or device that kills every process would have every row split down and blamed. At this many
# suspects another row is tried here: if it computes, the suspects are the rows at fault (a run of bad rows
# side by side); if it dies too, or there is none, the run fails, its rows kept.
SUSPECTS_BEFORE_BLAMING_THE_NODE = 3
SUPERVISOR_RESTARTS = 3  # the actor itself (not its child) lost, as with a lost node
MEMORY_MONITOR = "killed by Ray's memory monitor, the node running low on memory"


def how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class TaskFailed(JobFailed):
    """A read, decode or inference task raised (it did not die): the same rows would fail the same way
    again until its cause is fixed, so the run stops; the rows written so far are kept for resuming."""

    @classmethod
    def of(cls, error: str) -> TaskFailed:
        return cls(f"the run failed: {error}. The rows written so far are kept: fix the cause and run the same "
                   "command to resume (--restart throws them away)")


class Quarantine:
    """A Ray actor that runs reading, decoding and inference in a child process and reports the child's
    death instead of dying with it."""

    def __init__(self, setup: dict):
        self.setup = setup
        self.child: subprocess.Popen | None = None

    def call(self, command: str, table: pa.Table) -> tuple[str, Any]:
        """("ok", table), ("error", text) for an exception, or ("died", how) when the child died."""
        if self.child is None:
            self.child = subprocess.Popen([sys.executable, "-m", "inferkit.job.quarantine", str(os.getpid())],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            pickle.dump(self.setup, self.child.stdin)
        try:
            pickle.dump((command, table), self.child.stdin)
            self.child.stdin.flush()
            return pickle.load(self.child.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError):
            child, self.child = self.child, None
            child.kill()  # nothing if it is gone; a child that broke the protocol is not trusted again
            return "died", how_it_ended(child.wait())


def _die_with_parent(parent: int) -> None:
    """The child is killed when its actor's process dies. Ray's memory monitor SIGKILLs the worker, which
    leaves its children running (Ray kills them only on a worker's clean exit): a child taking memory would
    outlive its actor and hold that memory while the monitor killed the node's other workers. Set in the
    child itself (a preexec_fn can deadlock a forked child of a process with threads, as an actor is)."""
    if not sys.platform.startswith("linux"):  # prctl(2) is Linux's; elsewhere the child may outlive its actor
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the actor died before that was set
        os._exit(1)


def _serve() -> None:
    """The child: the setup, then (command, table) requests until its parent closes the pipe."""
    from inferkit.job.tasks import Predictor

    _die_with_parent(int(sys.argv[1]))
    inbox = sys.stdin.buffer
    outbox = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what libraries print goes to stderr, never into the replies
    setup = pickle.load(inbox)
    predictor = None
    while True:
        try:
            command, table = pickle.load(inbox)
        except EOFError:
            return
        try:
            if command == "read":
                result = io.read_units(table, **setup["read"])
            else:
                if predictor is None:
                    predictor = Predictor(setup["spec"])
                if setup["decode"]:
                    table = decode_images(table, **setup["decode"])
                result = predictor(table)
            reply: tuple[str, Any] = ("ok", result)
        except Exception as e:  # noqa: BLE001 - reported to the driver, which fails the run with it
            reply = ("error", f"{type(e).__name__}: {one_line(e, 500)}")
        pickle.dump(reply, outbox)
        outbox.flush()


class Rescue:
    """The driver's side: finish the parts the pipeline left incomplete, one chunk at a time (so the
    driver holds at most one part's remaining rows)."""

    def __init__(self, ledger: Ledger, source: io.Source, spec: ModelSpec, setup: dict, chunk_rows: int,
                 actor_options: dict):
        self.ledger, self.source, self.spec, self.chunk_rows = ledger, source, spec, chunk_rows
        self.setup, self.actor_options = setup, actor_options
        self.actor: Any = None
        self.crashed_rows = 0
        self.computed = False  # a process of this rescue computed rows: the node can run the model
        self.suspects: list[tuple[int, pa.Table, str]] = []  # (part, row, how it died) held until then

    def finish(self, progress: Progress) -> int:
        """Completes every incomplete part; returns the rows written."""
        incomplete = [p for p in range(self.source.parts) if not progress.complete(p)]
        if not incomplete:
            return 0
        say(f"finishing {len(incomplete)} input part(s) that the pipeline did not complete, one chunk at a time")
        written = 0
        try:
            for part in incomplete:
                written += self._part(part, progress)
            # suspects still held, too few to blame the node, and no row left to try: the rows are what kills
            written += self._blame_suspects()
        finally:
            if self.actor is not None:
                import ray

                ray.kill(self.actor)
        return written

    def _call(self, command: str, table: pa.Table) -> tuple[str, Any]:
        import ray
        from ray.exceptions import OutOfMemoryError, RayActorError

        for _ in range(SUPERVISOR_RESTARTS):
            if self.actor is None:
                self.actor = ray.remote(Quarantine).options(max_restarts=0, **self.actor_options).remote(self.setup)
            try:
                return ray.get(self.actor.call.remote(command, table))
            except OutOfMemoryError:  # the monitor killed the actor for what its child took: a death too
                ray.kill(self.actor)
                self.actor = None
                return "died", MEMORY_MONITOR
            except RayActorError:
                self.actor = None
        raise JobFailed(f"the actor that finishes crashed rows was lost {SUPERVISOR_RESTARTS} times in a row")

    def _part(self, part: int, progress: Progress) -> int:
        state, result = self._call("read", self.source.part_table(part, progress.done.get(part, [])))
        if state == "error":
            raise TaskFailed.of(result)
        if state == "died":
            result = self._unreadable(part, progress, f"the worker process died reading it ({result})")
            self.ledger.commit(result)
            return result.num_rows
        if result.num_rows == 0:
            if part not in progress.sizes:
                self.ledger.mark_empty(part)
            return 0
        pending = [result.slice(i, self.chunk_rows) for i in range(0, result.num_rows, self.chunk_rows)][::-1]
        deaths: dict[int, int] = {}
        written = 0
        while pending:
            chunk = pending.pop()
            state, out = self._call("run", chunk)
            if state == "error":
                raise TaskFailed.of(out)
            if state == "ok":
                self.ledger.commit(out)
                written += out.num_rows
                self.computed = True
                written += self._blame_suspects()
                continue
            if chunk.num_rows > 1:
                half = chunk.num_rows // 2
                pending += [chunk.slice(half), chunk.slice(0, half)]
                continue
            row = chunk.column(io.ROW)[0].as_py()
            deaths[row] = deaths.get(row, 0) + 1
            if deaths[row] < DEATHS_PER_ROW:
                pending.append(chunk)
            elif self.computed:
                written += self._blame(part, chunk, out)
            else:
                self.suspects.append((part, chunk, out))
                if len(self.suspects) >= SUSPECTS_BEFORE_BLAMING_THE_NODE:
                    computes = self._computes_another_row(progress)
                    if not computes:
                        self._blame_the_node(tried=computes is not None)
                    self.computed = True
                    written += self._blame_suspects()
        return written

    def _computes_another_row(self, progress: Progress) -> bool | None:
        """Whether this rescue's process computes a row other than the suspects (not written): first one a
        model computed before (the ledger's), else the first still to do of a part that holds no suspect.
        If it computes, the suspects are the rows at fault; a death on it is the node's. None where no such
        row can be read and computed."""
        held = {part for part, _, _ in self.suspects}
        candidates = [(part, row) for part, row in progress.computed.items()]
        candidates += [(part, None) for part in range(self.source.parts)
                       if part not in held and not progress.complete(part) and progress.sizes.get(part, 1)]
        for part, row in candidates:
            skip = progress.done.get(part, []) if row is None else [(0, row), (row + 1, progress.sizes[part])]
            state, rows = self._call("read", self.source.part_table(part, [(a, b) for a, b in skip if a < b]))
            if state != "ok" or rows.num_rows == 0:
                continue  # a part that cannot be read says nothing of the node
            state, out = self._call("run", rows.slice(0, 1))
            if state == "error":
                raise TaskFailed.of(out)
            if state == "died":
                return False
            if out.column(io.ERROR)[0].as_py() is None:  # the model ran (an empty text, say, is not computed)
                return True
        return None

    def _blame(self, part: int, row: pa.Table, how: str) -> int:
        """Write a row that killed DEATHS_PER_ROW processes as an error row."""
        say(f"input part {part} row {row.column(io.ROW)[0].as_py()} killed its worker process {DEATHS_PER_ROW} "
            f"times ({how}): written as an error row")
        self.crashed_rows += 1
        self.ledger.commit(output_table(self.spec, row, [], [], [DIED + how]))
        return 1

    def _blame_suspects(self) -> int:
        """Write every suspect held so far as an error row."""
        written = sum(self._blame(*suspect) for suspect in self.suspects)
        self.suspects.clear()
        return written

    def _blame_the_node(self, tried: bool) -> NoReturn:
        also = ", not even another row" if tried else ""
        raise JobFailed(f"the processes that finish crashed rows died on {len(self.suspects)} different row(s), "
                        f"{DEATHS_PER_ROW} times each, and none computed a row{also} (last: {self.suspects[-1][2]}): the "
                        "node or its device is more likely at fault than the rows. The rows written so far are "
                        "kept: run the same command again (on a healthy node) to resume")

    def _unreadable(self, part: int, progress: Progress, why: str) -> pa.Table:
        """Error rows for a part whose reading kills its process: one per missing row where its size is
        known, else one for the part, as for a file that cannot be read."""
        files = sorted({u for u in self.source.part_table(part).column("file").to_pylist()})
        size = progress.sizes.get(part, 1)
        missing = [r for r in range(size) if not any(a <= r < b for a, b in progress.done.get(part, []))]
        message = f"{io.UNREADABLE}{', '.join(files)[:300]}: {why}"
        columns = {name: pa.nulls(len(missing), self.spec.output_schema.field(name).type)
                   for name in self.spec.output_schema.names}
        columns[io.ERROR] = pa.array([message] * len(missing), pa.string())
        table = pa.table(columns, schema=self.spec.output_schema)
        return (table.append_column(io.PART, pa.array([part] * len(missing), pa.int64()))
                .append_column(io.ROW, pa.array(missing, pa.int64()))
                .append_column(io.PART_ROWS, pa.array([size] * len(missing), pa.int64())))


if __name__ == "__main__":
    _serve()
