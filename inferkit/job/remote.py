"""`inferkit submit --ray-address`: the same `inferkit run ...` entrypoint, sent to an existing Ray
cluster through Ray's job-submission API, its log streamed, with the same exit codes as on Kubernetes."""

from __future__ import annotations

import asyncio
import time
import uuid

from inferkit.console import say
from inferkit.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT, ApiError, JobFailed

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}



def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - connection, auth and version errors all mean "cannot submit here"
        raise ApiError(f"cannot reach the Ray job API at {address}: {' '.join(str(e).split())[:300]}") from e


async def _tail(client, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        print(chunk, end="", flush=True)


def submit_to_ray(address: str, entrypoint: str, runtime_env: dict, *, detach: bool, timeout: float | None,
                  cancel_on_interrupt: bool) -> int:
    client = _client(address)
    job_id = f"inferkit-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    try:
        client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env or None, submission_id=job_id)
    except Exception as e:  # noqa: BLE001 - the dashboard answers in many ways; all are API errors here
        raise ApiError(f"the Ray job API at {address} refused the job: {' '.join(str(e).split())[:300]}") from e
    say(f"submitted Ray job {job_id} to {address}: {entrypoint}")
    hint = f"follow it: ray job logs --follow {job_id} --address {address}; stop it: ray job stop {job_id} " \
           f"--address {address}"
    if detach:
        say(f"detached; {hint}")
        return EXIT_OK
    try:
        asyncio.run(asyncio.wait_for(_tail(client, job_id), timeout))
    except asyncio.TimeoutError:
        say(f"--timeout reached; Ray job {job_id} is still {client.get_job_status(job_id)}. {hint}")
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        if cancel_on_interrupt:
            client.stop_job(job_id)
            say(f"interrupted: stopped Ray job {job_id}")
        else:
            say(f"interrupted: stopped following; Ray job {job_id} keeps running. {hint}")
        return EXIT_INTERRUPTED
    status = str(client.get_job_status(job_id))
    deadline = time.monotonic() + 30
    while status.rpartition(".")[2] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)  # the log stream can end a moment before the status is final
        status = str(client.get_job_status(job_id))
    status = status.rpartition(".")[2]
    if status == "SUCCEEDED":
        say(f"Ray job {job_id}: the job succeeded")
        return EXIT_OK
    info = client.get_job_info(job_id)
    raise JobFailed(f"Ray job {job_id} {status}: {info.message or 'no message'}")
