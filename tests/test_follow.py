"""The pure following logic (inferkit/follow.py): exit codes from RayJob states, state lines, why pods
wait, and the log cursor that makes resumed streams repeat and lose nothing."""

from __future__ import annotations

import pytest

from inferkit.follow import (FIRST_POD, NEW_RUN, SAME_POD, TAKEOVER, JobState, LogCursor, outcome, pod_problems,
                             stamp_key, state_change, submission_of)


@pytest.mark.parametrize(("deployment", "job", "code"), [
    ("Complete", "SUCCEEDED", 0), ("Complete", "FAILED", 1), ("Failed", "FAILED", 1), ("Failed", "", 1),
    ("Complete", "STOPPED", 1), ("ValidationFailed", "", 1), ("Running", "RUNNING", None),
    ("Initializing", "", None), ("", "", None), ("Suspended", "", None),
])
def test_outcome_exit_codes(deployment, job, code):
    result = outcome(JobState(deployment=deployment, job=job))
    assert (result.code if result else None) == code


def test_failed_outcome_names_reason_and_message():
    result = outcome(JobState(deployment="Failed", job="FAILED", reason="DeadlineExceeded",
                              message="activeDeadlineSeconds reached"))
    assert result.summary.endswith("DeadlineExceeded: activeDeadlineSeconds reached")


def test_state_change_only_on_a_new_phase():
    running = JobState(deployment="Running", job="RUNNING")
    assert state_change(None, running) == "deployment Running, job RUNNING"
    assert state_change(running, JobState(deployment="Running", job="RUNNING", dashboard="x")) is None
    suspended = JobState(deployment="Suspended", suspended=True, queue="gpu-queue")
    assert "waiting for Kueue to admit it from queue gpu-queue" in state_change(running, suspended)


def test_pod_problems_explain_scheduling_images_and_oom():
    pods = [
        {"metadata": {"name": "w1"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "message": "0/3 nodes: 3 Insufficient nvidia.com/gpu."}]}},
        {"metadata": {"name": "h"}, "status": {"phase": "Pending", "containerStatuses": [
            {"name": "ray-head", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]}},
        {"metadata": {"name": "w2"}, "status": {"phase": "Running", "containerStatuses": [
            {"name": "ray-worker", "state": {"running": {}}, "lastState": {"terminated": {"reason": "OOMKilled"}}}]}},
    ]
    events = [{"type": "Warning", "reason": "FailedMount", "message": "pvc data not found ",
               "involvedObject": {"name": "w1"}},
              {"type": "Warning", "reason": "FailedMount", "message": "elsewhere", "involvedObject": {"name": "zz"}}]
    assert pod_problems(pods, events) == [
        "pod w1 cannot be scheduled: 0/3 nodes: 3 Insufficient nvidia.com/gpu.",
        "pod h, container ray-head: ImagePullBackOff: not found",
        "pod w2, container ray-worker: OOMKilled (give it more memory)",
        "pod w1: FailedMount: pvc data not found",
    ]


def _feed(cursor: LogCursor, pod: str, lines: list[str]) -> list[str]:
    cursor.resume(pod)
    return [text for raw in lines if (text := cursor.accept(raw)) is not None]


def test_resumed_stream_of_the_same_pod_skips_what_was_shown():
    lines = ["2026-01-01T00:00:01.000000000Z a", "2026-01-01T00:00:02.000000000Z b",
             "2026-01-01T00:00:02.000000000Z b", "2026-01-01T00:00:03.000000000Z c"]
    cursor = LogCursor()
    assert _feed(cursor, "p", lines[:3]) == ["a", "b", "b"]
    # the stream resumes with history (since_seconds + margin): the two lines of the same instant that
    # were shown are skipped, the rest follows once
    assert _feed(cursor, "p", lines) == ["c"]
    assert _feed(cursor, "p", lines) == []


def test_identical_lines_at_the_same_instant_are_all_shown():
    same = ["2026-01-01T00:00:01.5Z x"] * 3
    cursor = LogCursor()
    assert _feed(cursor, "p", same[:1]) == ["x"]
    assert _feed(cursor, "p", same) == ["x", "x"]


def _stamped(*texts: str, second: int = 0) -> list[str]:
    return [f"2026-01-01T00:00:{second + i:02d}Z {text}" for i, text in enumerate(texts)]


def test_a_takeover_pod_of_the_same_submission_repeats_nothing_and_loses_nothing():
    cursor = LogCursor()
    assert cursor.resume("first", "job-a") == FIRST_POD
    shown = [cursor.accept(raw) for raw in _stamped("submitted", "x 1", "x 2", "same")]
    assert shown == ["submitted", "x 1", "x 2", "same"]
    assert cursor.resume("first", "job-a") == SAME_POD
    assert cursor.resume("second", "job-a") == TAKEOVER
    # the retried submitter replays the driver's log without the submit notes, under a later clock, then
    # goes on; a line it adds and a line the driver repeats after the replay are shown
    replay = _stamped("a note", "x 1", "x 2", "same", "same", "x 3", second=30)
    assert [t for raw in replay if (t := cursor.accept(raw)) is not None] == ["a note", "same", "x 3"]
    # a stream of the takeover pod that resumes with history repeats nothing either
    assert cursor.resume("second", "job-a") == SAME_POD
    assert [t for raw in replay if (t := cursor.accept(raw)) is not None] == []


def test_a_pod_of_a_new_submission_shows_its_log_in_full():
    cursor = LogCursor()
    cursor.resume("first", "job-a")
    assert [cursor.accept(raw) for raw in _stamped("line 0", "line 1")] == ["line 0", "line 1"]
    assert cursor.resume("second", "job-b") == NEW_RUN
    # the retry's clock may even be behind the first pod's
    assert [cursor.accept(raw) for raw in _stamped("line 0", "line 1")] == ["line 0", "line 1"]


def test_the_submission_is_the_owning_job():
    owned = {"metadata": {"ownerReferences": [{"kind": "Job", "uid": "u1"}], "labels": {"controller-uid": "u0"}}}
    assert submission_of(owned) == "u1"
    assert submission_of({"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u2"}}}) == "u2"
    assert submission_of({"metadata": {}}) == ""


def test_timestamps_with_short_fractions_sort_in_time_order():
    assert stamp_key("2026-01-01T00:00:00.1Z") < stamp_key("2026-01-01T00:00:00.12Z")
    assert stamp_key("2026-01-01T00:00:00Z") < stamp_key("2026-01-01T00:00:00.000000001Z")
    assert stamp_key("2026-01-01T00:00:00.5Z") == stamp_key("2026-01-01T00:00:00.500000000Z")
