"""`inferkit submit --ray-address`: the same `inferkit run ...` entrypoint, sent to an existing Ray
cluster through Ray's job-submission API, its log streamed, with the same exit codes as on Kubernetes."""

from __future__ import annotations

import asyncio
import time
import uuid

from inferkit.console import say
from inferkit.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT, ApiError, JobFailed

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# A cluster that has just started answers 500 "No available agent" until its job agent registers.
AGENT_WAIT_SECONDS = 120
# The log stream can end a moment before the status is final; after this long it was a dropped stream.
SETTLE_SECONDS = 10
# How long the dashboard may fail to answer a status query (a head restart, a network blip).
STATUS_RETRY_SECONDS = 30


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300]


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - connection, auth and version errors all mean "cannot submit here"
        raise ApiError(f"cannot reach the Ray job API at {address}: {_one_line(e)}") from e


def _submit(client, address: str, entrypoint: str, runtime_env: dict, job_id: str) -> None:
    deadline = time.monotonic() + AGENT_WAIT_SECONDS
    waiting = False
    while True:
        try:
            client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env or None, submission_id=job_id)
            return
        except Exception as e:  # noqa: BLE001 - the dashboard answers in many ways; all are API errors here
            if "no available agent" not in str(e).lower():
                raise ApiError(f"the Ray job API at {address} refused the job: {_one_line(e)}") from e
            if time.monotonic() > deadline:
                raise ApiError(f"the Ray cluster at {address} has had no job agent for {AGENT_WAIT_SECONDS} s; "
                               "its dashboard_agent.log (in the head's Ray session logs) says why") from e
            if not waiting:
                say(f"the Ray cluster at {address} has no job agent ready yet; waiting up to "
                    f"{AGENT_WAIT_SECONDS} s")
                waiting = True
            time.sleep(2)


def _status(client, job_id: str, address: str) -> str:
    """The job's status; a dashboard that stops answering for STATUS_RETRY_SECONDS is an API error."""
    deadline = time.monotonic() + STATUS_RETRY_SECONDS
    while True:
        try:
            return str(client.get_job_status(job_id)).rpartition(".")[2]
        except Exception as e:  # noqa: BLE001 - connection and HTTP errors alike
            if time.monotonic() > deadline:
                raise ApiError(f"the Ray job API at {address} stopped answering about job {job_id}: "
                               f"{_one_line(e)}") from e
            time.sleep(2)


async def _tail(client, job_id: str, printed: list[int]) -> None:
    """Streams the job's log from its start, skipping what an earlier, dropped stream already printed."""
    skip = printed[0]
    async for chunk in client.tail_job_logs(job_id):
        if skip:
            dropped = min(skip, len(chunk))
            chunk, skip = chunk[dropped:], skip - dropped
        if chunk:
            print(chunk, end="", flush=True)
            printed[0] += len(chunk)


def _print_rest(client, job_id: str, address: str, printed: int) -> None:
    """What a dropped stream did not deliver of a finished job's log."""
    try:
        rest = client.get_job_logs(job_id)[printed:]
    except Exception as e:  # noqa: BLE001
        say(f"could not read the end of Ray job {job_id}'s log from {address}: {_one_line(e)}")
        return
    if rest:
        print(rest, end="", flush=True)


async def follow_ray_job(client, job_id: str, address: str) -> str:
    """Follows the log until the job is terminal, reconnecting when the stream drops early; returns the status."""
    printed = [0]
    while True:
        broke = False
        try:
            await _tail(client, job_id, printed)
        except Exception as e:  # noqa: BLE001 - websocket and HTTP errors alike mean "the stream dropped"
            broke = True
            say(f"log stream from {address} broke ({_one_line(e)}); reconnecting")
        settle = time.monotonic() + SETTLE_SECONDS
        while (status := await asyncio.to_thread(_status, client, job_id, address)) not in TERMINAL \
                and time.monotonic() < settle:
            await asyncio.sleep(0.5)
        if status in TERMINAL:
            if broke:
                _print_rest(client, job_id, address, printed[0])
            return status
        say(f"log stream from {address} ended while Ray job {job_id} is {status}; reconnecting")


def submit_to_ray(address: str, entrypoint: str, runtime_env: dict, *, detach: bool, timeout: float | None,
                  cancel_on_interrupt: bool) -> int:
    client = _client(address)
    job_id = f"inferkit-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    hint = f"follow it: ray job logs --follow {job_id} --address {address}; stop it: ray job stop {job_id} " \
           f"--address {address}"
    submitted = False
    # The follower's event loop exists before the job does: a Ctrl-C while a loop is being built would
    # surface from inside asyncio, past the handling below. asyncio.Runner turns a Ctrl-C while it runs
    # into a cancelled follower and one KeyboardInterrupt, as asyncio.run does.
    runner = asyncio.Runner()
    runner.get_loop()
    try:
        _submit(client, address, entrypoint, runtime_env, job_id)
        submitted = True
        say(f"submitted Ray job {job_id} to {address}: {entrypoint}")
        if detach:
            say(f"detached; {hint}")
            return EXIT_OK
        status = runner.run(asyncio.wait_for(follow_ray_job(client, job_id, address), timeout))
    except asyncio.TimeoutError:
        try:
            state = f"is still {_status(client, job_id, address)}"
        except ApiError:
            state = "may still run (its dashboard does not answer)"
        say(f"--timeout reached; Ray job {job_id} {state}. {hint}")
        return EXIT_TIMEOUT
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Nothing else cancels the follower: a Ctrl-C that lands in Runner.run between installing its SIGINT
        # handler and zeroing its interrupt count (CPython's asyncio/runners.py, 3.11) comes out as a bare
        # CancelledError instead of a KeyboardInterrupt.
        return _interrupted(client, job_id, submitted, cancel_on_interrupt, hint)
    finally:
        _close(runner)
    if status == "SUCCEEDED":
        say(f"Ray job {job_id}: the job succeeded")
        return EXIT_OK
    try:
        message = client.get_job_info(job_id).message
    except Exception as e:  # noqa: BLE001 - the failure is reported either way
        message = f"its reason could not be read: {_one_line(e)}"
    raise JobFailed(f"Ray job {job_id} {status}: {message or 'no message'}")


def _close(runner: asyncio.Runner) -> None:
    """Close the follower's loop (its tasks cancelled); a second Ctrl-C meanwhile changes nothing."""
    try:
        runner.close()
    except KeyboardInterrupt:
        pass


def _interrupted(client, job_id: str, submitted: bool, cancel: bool, hint: str) -> int:
    """Ctrl-C: stop following (and the job, with --cancel-on-interrupt); one interrupted mid-submit may
    have reached the cluster all the same."""
    where = "" if submitted else " while submitting it (it may have been submitted)"
    if not cancel:
        say(f"interrupted{where}: stopped following; Ray job {job_id} keeps running. {hint}")
        return EXIT_INTERRUPTED
    try:
        stopped = client.stop_job(job_id)
    except Exception as e:  # noqa: BLE001 - not submitted after all, or the dashboard does not answer
        say(f"interrupted{where}: could not stop Ray job {job_id}: {_one_line(e)}. {hint}")
        return EXIT_INTERRUPTED
    say(f"interrupted: Ray job {job_id} {'stopped' if stopped else 'had already ended'}")
    return EXIT_INTERRUPTED
