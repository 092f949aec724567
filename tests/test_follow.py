"""The pure following logic (inferkit/follow.py): exit codes from RayJob states, state lines, why pods
wait, and the log cursor that makes resumed streams repeat and lose nothing."""

from __future__ import annotations

import pytest

from inferkit.follow import (AGAIN, DASHBOARD_LONGEST_WAIT, DASHBOARD_READ_RATE, FIRST_POD, LATE, NEW_RUN, SAME_POD,
                             TAKEOVER, DashboardLog, JobState, LogCursor, creation_problems, outcome, pod_problems,
                             stamp_key, state_change, submission_of)
from inferkit.validate import cluster_removal_ttl, kuberay_warnings


@pytest.mark.parametrize(("deployment", "job", "code"), [
    ("Complete", "SUCCEEDED", 0), ("Complete", "FAILED", 1), ("Failed", "FAILED", 1), ("Failed", "", 1),
    ("Complete", "STOPPED", 1), ("ValidationFailed", "", 1), ("Running", "RUNNING", None),
    ("Initializing", "", None), ("", "", None), ("Suspended", "", None),
])
def test_outcome_exit_codes(deployment, job, code):
    result = outcome(JobState(deployment=deployment, job=job))
    assert (result.code if result else None) == code


def test_failed_outcome_names_reason_and_message():
    result = outcome(JobState(deployment="Failed", job="FAILED", reason="AppFailed",
                              message="Job entrypoint command failed with exit code 1"))
    assert result.summary.endswith("AppFailed: Job entrypoint command failed with exit code 1")


def test_a_failed_jobs_message_is_told_once_without_the_driver_log_ray_appends():
    """Ray's job supervisor appends the driver's last lines to the message: they were streamed already."""
    message = ("Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
               "Traceback (most recent call last):\nValueError: boom\n")
    obj = _rayjob({}, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", message=message)
    state = JobState.of({**obj, "metadata": {"name": "j", "namespace": "ml"}})
    assert outcome(state).summary == ("the job failed (deployment Failed, job FAILED): AppFailed: Job entrypoint "
                                      "command failed with exit code 1; the driver's log: inferkit logs j -n ml")
    assert state_change(None, state) == "deployment Failed, job FAILED, reason AppFailed"


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


def _feed(cursor: LogCursor, pod: str, lines: list[str], submission: str = "") -> list[str]:
    """One stream, as the follower reads it: resume, accept each line, flush at its end."""
    cursor.resume(pod, submission)
    return [text for raw in lines for text in cursor.accept(raw)] + cursor.flush()


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
    return [f"2026-01-01T00:{(second + i) // 60:02d}:{(second + i) % 60:02d}Z {text}" for i, text in enumerate(texts)]


SUBMIT_NOTES = ("Job submission server address: http://head:8265", "-" * 20, "Job 'j' submitted successfully",
                "-" * 20, "")
TRACEBACK = ("", "Traceback (most recent call last):", "ConnectionError: the dashboard went away")


def test_a_takeover_pod_of_the_same_submission_repeats_nothing_and_loses_nothing():
    cursor = LogCursor()
    assert cursor.resume("first", "job-a") == FIRST_POD
    shown = [t for raw in _stamped(*SUBMIT_NOTES, "x 1", "x 2", "same") for t in cursor.accept(raw)]
    assert shown == [*SUBMIT_NOTES, "x 1", "x 2", "same"]
    assert cursor.resume("first", "job-a") == SAME_POD
    assert cursor.resume("second", "job-a") == TAKEOVER
    # the retried submitter replays the driver's log without the submit notes, under a later clock, then
    # goes on; a note of its own and a line the driver repeats after the replay are shown
    replay = _stamped("a note", "x 1", "x 2", "same", "same", "x 3", second=30)
    assert [t for raw in replay for t in cursor.accept(raw)] == ["a note", "same", "x 3"]
    # a stream of the takeover pod that resumes with history repeats nothing either
    assert _feed(cursor, "second", replay, "job-a") == []


def test_new_lines_after_a_replay_are_shown_even_when_they_repeat_the_old_pods_last_lines():
    """The old pod died with a traceback of its own; the driver later prints one too."""
    cursor = LogCursor()
    assert _feed(cursor, "first", _stamped(*SUBMIT_NOTES, "d 1", "d 2", "d 3", *TRACEBACK), "job-a")
    new = ["d 4", "", "Traceback (most recent call last):", "ValueError: bad row"]
    assert _feed(cursor, "second", _stamped("d 1", "d 2", "d 3", *new, second=30), "job-a") == new
    # a replay shorter than CONFIRM_LINES followed by something else is a doubt: shown again, not lost
    cursor = LogCursor()
    _feed(cursor, "first", _stamped("d 1", "d 2", *TRACEBACK), "job-a")
    assert _feed(cursor, "second", _stamped("d 1", "d 2", "d 3", second=30), "job-a") == ["d 1", "d 2", "d 3"]


def test_a_second_takeover_matches_against_the_log_its_predecessor_showed():
    cursor = LogCursor()
    _feed(cursor, "a", _stamped(*SUBMIT_NOTES, "d 1", "d 2"), "job-a")
    waiting = "Waiting for the dashboard at http://head:8265"
    # two lines past the submit notes are too few to tell a replay: shown again rather than risk losing them
    assert _feed(cursor, "b", _stamped(waiting, "d 1", "d 2", "d 3", second=20), "job-a") == [waiting, "d 1", "d 2",
                                                                                             "d 3"]
    assert _feed(cursor, "c", _stamped(waiting, "d 1", "d 2", "d 3", "d 4", second=40), "job-a") == ["d 4"]


def test_a_takeover_that_dies_midway_leaves_the_rest_of_the_replay_to_the_next():
    cursor = LogCursor()
    lines = [f"d {i}" for i in range(8)]
    _feed(cursor, "a", _stamped(*lines), "job-a")
    assert _feed(cursor, "b", _stamped(*lines[:4], second=20), "job-a") == []
    assert _feed(cursor, "c", _stamped(*lines, "d 8", second=40), "job-a") == ["d 8"]


def test_a_short_match_far_ahead_in_the_old_log_is_shown_not_skipped():
    """One or two lines that happen to equal the end of the old pod's log, further on than its replay
    stands, are too few to tell a replay from new lines."""
    cursor = LogCursor()
    _feed(cursor, "a", _stamped("d 1", "d 2", "d 3", *TRACEBACK), "job-a")
    new = ["d 4", "ConnectionError: the dashboard went away"]
    assert _feed(cursor, "b", _stamped("d 1", "d 2", "d 3", *new, second=30), "job-a") == new
    cursor = LogCursor()
    _feed(cursor, "a", _stamped(*SUBMIT_NOTES), "job-a")  # the notes end with an empty line
    assert _feed(cursor, "b", _stamped("", "Loading model", second=30), "job-a") == ["", "Loading model"]
    # a replay that reaches the very end of the old log in step confirms with fewer lines
    cursor = LogCursor()
    _feed(cursor, "a", _stamped("d 1", "d 2", "d 3", "d 4"), "job-a")
    assert _feed(cursor, "b", _stamped("d 1", "d 2", "d 3", "d 4", "d 5", second=30), "job-a") == ["d 5"]


def test_a_line_stamped_out_of_order_is_shown_once_streaming_is_past_the_resume_point():
    """The runtime stamps stdout and stderr lines apart, so a later line can carry an earlier instant."""
    cursor = LogCursor()
    lines = ["2026-01-01T00:00:02.000002Z b", "2026-01-01T00:00:02.000001Z a", "2026-01-01T00:00:03Z c"]
    assert _feed(cursor, "p", lines) == ["b", "a", "c"]
    assert _feed(cursor, "p", [*lines, "2026-01-01T00:00:04Z d"]) == ["d"]


def test_lines_held_back_while_matching_are_shown_when_the_stream_ends():
    cursor = LogCursor()
    _feed(cursor, "a", _stamped("d 1", "d 2", "d 3", "d 4"), "job-a")
    # two lines that match in a row are not yet a replay: at the end of the stream they are shown
    assert _feed(cursor, "b", _stamped("d 2", "d 3", second=20), "job-a") == ["d 2", "d 3"]


def test_a_takeover_pod_that_submits_the_job_again_starts_a_new_run():
    cursor = LogCursor()
    _feed(cursor, "a", _stamped(*SUBMIT_NOTES, "rows/s 97"), "job-a")
    cursor.resume("b", "job-a")
    shown = [t for raw in _stamped(*SUBMIT_NOTES, "rows/s 97", second=30) for t in cursor.accept(raw)]
    assert shown == [*SUBMIT_NOTES, "rows/s 97"] and cursor.resubmitted == AGAIN


def test_a_takeover_pod_that_submits_first_is_no_resubmission():
    """The first submitter pod failed while it waited for the dashboard: the job was never submitted,
    so the next pod's submission is the first, not Ray losing the job."""
    waiting = "Waiting for Ray Dashboard GCS to become healthy at http://head:8265 ..."
    cursor = LogCursor()
    _feed(cursor, "a", _stamped(waiting, waiting), "job-a")
    cursor.resume("b", "job-a")
    shown = [t for raw in _stamped(waiting, *SUBMIT_NOTES, "rows/s 97", second=30) for t in cursor.accept(raw)]
    assert shown[-6:] == [*SUBMIT_NOTES, "rows/s 97"] and cursor.resubmitted == LATE


def test_a_pod_of_a_new_submission_shows_its_log_in_full():
    cursor = LogCursor()
    assert _feed(cursor, "first", _stamped("line 0", "line 1"), "job-a") == ["line 0", "line 1"]
    assert cursor.resume("second", "job-b") == NEW_RUN
    # the retry's clock may even be behind the first pod's
    assert [t for raw in _stamped("line 0", "line 1") for t in cursor.accept(raw)] == ["line 0", "line 1"]


def test_the_submission_is_the_owning_job():
    owned = {"metadata": {"ownerReferences": [{"kind": "Job", "uid": "u1"}], "labels": {"controller-uid": "u0"}}}
    assert submission_of(owned) == "u1"
    assert submission_of({"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u2"}}}) == "u2"
    assert submission_of({"metadata": {}}) == ""


def test_timestamps_with_short_fractions_sort_in_time_order():
    assert stamp_key("2026-01-01T00:00:00.1Z") < stamp_key("2026-01-01T00:00:00.12Z")
    assert stamp_key("2026-01-01T00:00:00Z") < stamp_key("2026-01-01T00:00:00.000000001Z")
    assert stamp_key("2026-01-01T00:00:00.5Z") == stamp_key("2026-01-01T00:00:00.500000000Z")


def test_why_pods_were_never_created_comes_from_the_rayclusters_and_the_jobs_events():
    def event(kind, name, reason, message, type_="Warning"):
        return {"type": type_, "reason": reason, "message": message, "involvedObject": {"kind": kind, "name": name}}

    quota = ('Failed to create worker Pod for the cluster ml/c, pods "c-gpu-workers-x" is forbidden: exceeded quota: '
             'gpus, requested: requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: '
             'requests.nvidia.com/gpu=4')
    events = [
        event("RayCluster", "c", "FailedToCreateWorkerPod", quota),
        event("RayCluster", "c", "FailedToCreateHeadPod", 'Failed to create head Pod ml/c-head, pods "c-head" is '
              'forbidden: no PriorityClass with name batch-high was found'),
        event("RayCluster", "c", "AutoscalerServiceAccountNotFound", "Failed to reconcile RayCluster ml/c. ... "
              "ServiceAccount c is not found. Please create one."),
        event("Job", "j", "FailedCreate", 'Error creating: pods "j-x" is forbidden: error looking up service account '
              'ml/runner: serviceaccount "runner" not found'),
        event("Job", "j", "FailedCreate", 'Error creating: pods "j-y" is forbidden: violates PodSecurity '
              '"restricted:latest": runAsNonRoot != true'),
        event("RayCluster", "other", "FailedToCreateWorkerPod", quota),  # another cluster
        event("RayJob", "j", "FailedCreate", "not the Job"),  # the RayJob shares the Job's name
        event("RayCluster", "c", "CreatedWorkerPod", "Created worker Pod ml/c-x", "Normal"),
    ]
    assert [line for _, line in creation_problems(events, "c", "j", "")] == [
        f"RayCluster c: FailedToCreateWorkerPod: {quota} (a ResourceQuota of the namespace is used up: free or raise "
        "the quota, or ask for fewer or smaller pods)",
        'RayCluster c: FailedToCreateHeadPod: Failed to create head Pod ml/c-head, pods "c-head" is forbidden: no '
        "PriorityClass with name batch-high was found (the PriorityClass does not exist: create it or fix "
        "priorityClassName)",
        "RayCluster c: AutoscalerServiceAccountNotFound: Failed to reconcile RayCluster ml/c. ... ServiceAccount c is "
        "not found. Please create one. (the ServiceAccount does not exist: create it or fix serviceAccountName)",
        'submitter Job j: FailedCreate: Error creating: pods "j-x" is forbidden: error looking up service account '
        'ml/runner: serviceaccount "runner" not found (the ServiceAccount does not exist: create it or fix '
        "serviceAccountName)",
        'submitter Job j: FailedCreate: Error creating: pods "j-y" is forbidden: violates PodSecurity '
        '"restricted:latest": runAsNonRoot != true (the namespace\'s Pod Security level refuses the pod: relax the '
        "namespace's pod-security.kubernetes.io/enforce label or tighten the pod's securityContext)",
    ]
    # pod events name pods only: a Job's FailedCreate is not blamed on a pod of the same name
    assert pod_problems([{"metadata": {"name": "j"}, "status": {}}], events) == []


def _rayjob(spec: dict, **status) -> dict:
    return {"metadata": {"name": "j"}, "spec": spec, "status": status}


def test_deadline_exceeded_says_the_cluster_and_driver_may_still_run_and_for_how_long():
    deadline = {"jobDeploymentStatus": "Failed", "jobStatus": "RUNNING", "reason": "DeadlineExceeded",
                "message": "The RayJob has passed the activeDeadlineSeconds."}
    shutdown = outcome(JobState.of(_rayjob({"shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 600},
                                           **deadline)))
    assert shutdown.code == 1
    assert shutdown.summary.endswith("KubeRay does not stop the Ray job at the deadline: the cluster and the driver "
                                     "may still run for up to 600 s more, until the RayCluster is deleted")
    kept = outcome(JobState.of(_rayjob({"shutdownAfterJobFinishes": False}, **deadline)))
    assert kept.summary.endswith("may still run until the RayJob is deleted (shutdownAfterJobFinishes is off and no "
                                 "deletion rule removes the cluster)")
    app_failed = outcome(JobState(deployment="Failed", job="FAILED", reason="AppFailed"))
    assert "KubeRay does not stop" not in app_failed.summary


def test_retries_of_one_refusal_are_one_problem_and_an_earlier_namesakes_events_none():
    """The API server names the pod it refused, and every retry creates another (generateName); an event
    last seen before this RayJob was created belongs to an earlier RayJob of the same name (--replace)."""
    def refused(pod, why, **times):
        return {"type": "Warning", "reason": "FailedCreate", "involvedObject": {"kind": "Job", "name": "j"},
                "message": f'Error creating: pods "{pod}" is forbidden: {why}', **times}

    quota = "exceeded quota: q, requested: pods=1, used: pods=4, limited: pods=4"
    events = [refused("j-abcde", quota, lastTimestamp="2026-03-01T10:00:05Z"),
              refused("j-fghij", quota, lastTimestamp="2026-03-01T10:00:09Z"),
              refused("j-old00", quota, lastTimestamp="2026-03-01T09:59:59Z"),  # the namesake's
              # as events.k8s.io events read back: eventTime (and series.lastObservedTime), no lastTimestamp
              refused("j-klmno", "violates PodSecurity", eventTime="2026-03-01T10:00:00.250000Z"),
              refused("j-pqrst", "violates PodSecurity", eventTime="2026-03-01T09:00:00.000000Z",
                      series={"count": 3, "lastObservedTime": "2026-03-01T10:00:01.000000Z"})]
    problems = creation_problems(events, "c", "j", "2026-03-01T10:00:00Z")
    assert [line.split('"')[1] for _, line in problems] == ["j-abcde", "j-fghij", "j-klmno", "j-pqrst"]
    assert problems[0][0] == problems[1][0] != problems[2][0] == problems[3][0]


def test_the_rayjobs_own_refusals_are_explained_with_an_object_count_quota():
    """rayjob_controller.go records FailedToCreateRayCluster, FailedToCreateRayJobSubmitter and
    FailedToCreateService on the RayJob; an object-count quota names what it counts."""
    def event(reason, message):
        return {"type": "Warning", "reason": reason, "message": message, "involvedObject": {"kind": "RayJob",
                                                                                             "name": "j"}}

    clusters = ('Failed to create RayCluster ml/j-abcde: rayclusters.ray.io "j-abcde" is forbidden: exceeded quota: '
                "objects, requested: count/rayclusters.ray.io=1, used: count/rayclusters.ray.io=3, limited: "
                "count/rayclusters.ray.io=3")
    jobs = ('Failed to create new Kubernetes Job ml/j: jobs.batch "j" is forbidden: exceeded quota: objects, '
            "requested: count/jobs.batch=1, used: count/jobs.batch=9, limited: count/jobs.batch=9")
    service = 'Failed to create the service ml/j-head-svc, services "j-head-svc" already exists'
    lines = [line for _, line in creation_problems([
        event("FailedToCreateRayCluster", clusters), event("FailedToCreateRayJobSubmitter", jobs),
        event("FailedToCreateService", service), event("CreatedRayCluster", "not a refusal")], "c", "j", "")]
    assert lines == [
        f"RayJob j: FailedToCreateRayCluster: {clusters} (a ResourceQuota caps how many rayclusters.ray.io the "
        "namespace may hold: delete those no longer needed (inferkit delete removes a finished RayJob with its "
        "RayCluster and submitter Job) or raise its count/rayclusters.ray.io)",
        f"RayJob j: FailedToCreateRayJobSubmitter: {jobs} (a ResourceQuota caps how many jobs.batch the namespace "
        "may hold: delete those no longer needed (inferkit delete removes a finished RayJob with its RayCluster "
        "and submitter Job) or raise its count/jobs.batch)",
        f"RayJob j: FailedToCreateService: {service}",
    ]


@pytest.mark.parametrize(("rules", "deployment", "job", "lifetime"), [
    ([{"condition": {"jobDeploymentStatus": "Failed", "ttlSeconds": 60}, "policy": "DeleteCluster"},
      {"condition": {"jobDeploymentStatus": "Failed", "ttlSeconds": 90}, "policy": "DeleteSelf"}], "Failed", "RUNNING",
     60),
    ([{"condition": {"jobStatus": "FAILED", "ttlSeconds": 60}, "policy": "DeleteCluster"}], "Failed", "RUNNING", None),
    ([{"condition": {"jobStatus": "RUNNING", "ttlSeconds": 5}, "policy": "DeleteSelf"}], "Failed", "RUNNING", 5),
    ([{"condition": {"jobDeploymentStatus": "Failed", "ttlSeconds": 5}, "policy": "DeleteWorkers"}], "Failed",
     "RUNNING", None),
    ([{"condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 7}, "policy": "DeleteCluster"}], "Complete",
     "SUCCEEDED", 7),
    ([{"condition": {"jobDeploymentStatus": "Failed"}, "policy": "DeleteCluster"}], "Complete", "SUCCEEDED", None),
])
def test_a_finished_clusters_lifetime_follows_the_matching_deletion_rule(rules, deployment, job, lifetime):
    spec = {"shutdownAfterJobFinishes": False, "deletionStrategy": {"deletionRules": rules}}
    assert cluster_removal_ttl(spec, deployment, job) == lifetime
    assert JobState.of(_rayjob(spec, jobDeploymentStatus=deployment, jobStatus=job)).cluster_kept_for == lifetime
    # render's warning and the follower's lifetime agree on what a rule covers
    warns = " ".join(kuberay_warnings({"kind": "RayJob", "spec": spec}, "1.7"))
    if deployment == "Complete":
        assert ("covers a job that succeeds" in warns) == (lifetime is None)


def test_validation_failed_says_nothing_ran():
    result = outcome(JobState.of(_rayjob({}, jobDeploymentStatus="ValidationFailed", reason="ValidationFailed",
                                          message="The RayJob spec is invalid: x")))
    assert result.code == 1
    assert result.summary == ("the operator refused the RayJob, so nothing ran: The RayJob spec is invalid: x; the "
                              "RayJob stays until you delete it or submit again with --replace")


def test_a_longer_dashboard_log_is_read_less_often_within_bounds():
    """Ray's job API answers the whole log each time: the wait grows with it, between 2 s and the longest."""
    log = DashboardLog()
    assert log.next_read_in(2.0) == 2.0
    log.accept("j1", "x\n" * (DASHBOARD_READ_RATE * 5 // 2))  # 5 s worth of reading
    assert log.next_read_in(2.0) == 5.0
    log.accept("j1", "x\n" * (DASHBOARD_READ_RATE * int(DASHBOARD_LONGEST_WAIT)))  # twice the longest wait's worth
    assert log.next_read_in(2.0) == DASHBOARD_LONGEST_WAIT


def test_a_dashboard_log_read_whole_each_time_shows_each_line_once():
    log = DashboardLog()
    assert log.accept("j1", "") == []
    assert log.accept("j1", "a\nb") == ["a"]  # b is still being written
    assert log.accept("j1", "a\nb and more\n\nc") == ["b and more", ""]
    assert log.accept("j1", "a\nb and more\n\nc") == []
    assert log.flush() == ["c"] and log.flush() == []
    assert log.accept("j2", "x\n") == ["x"]  # a retry's new Ray job: from the start
