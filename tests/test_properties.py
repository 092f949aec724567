"""Property tests: random valid configurations render CRD-valid objects, and random strings in
free-text fields come back byte for byte (through YAML, JSON and the shell) or are rejected cleanly."""

from __future__ import annotations

import json
import shlex
import subprocess

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from inferkit import chart
from inferkit.cli import _run_flags, run as run_command
from inferkit.config import RAYCLUSTER, RAYJOB, Layer, build_config, flag_layer, free_text_problem
from inferkit.errors import ConfigError
from inferkit.render import dump

PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

dns_names = st.from_regex(r"[a-z]([-a-z0-9]{0,45}[a-z0-9])?", fullmatch=True)
node_counts = st.one_of(
    st.integers(0, 64).map(str),
    st.tuples(st.integers(0, 16), st.integers(0, 16)).map(lambda t: f"{min(t)}:{max(t)}"),
)
cpus = st.one_of(st.integers(1, 96).map(str), st.integers(100, 8000).map(lambda m: f"{m}m"))
memories = st.one_of(st.integers(1, 1024).map(lambda g: f"{g}Gi"), st.integers(256, 8192).map(lambda m: f"{m}Mi"))
label_keys = st.from_regex(
    r"([a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\.[a-z]{2,5}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,20}[A-Za-z0-9])?", fullmatch=True)
label_values = st.from_regex(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,20}[A-Za-z0-9])?)?", fullmatch=True)
tolerations = st.lists(st.fixed_dictionaries({
    "key": st.from_regex(r"[a-z]([a-z0-9.-]{0,10}[a-z0-9])?", fullmatch=True),
    "operator": st.sampled_from(["Exists", "Equal"]),
    "effect": st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"]),
}), max_size=2)


@st.composite
def configurations(draw):
    kind = draw(st.sampled_from([RAYJOB, RAYCLUSTER]))
    flags = {
        "name": draw(dns_names),
        "namespace": draw(dns_names),
        "cpu_nodes": draw(node_counts),
        "gpu_nodes": draw(node_counts),
        "gpus_per_node": draw(st.integers(1, 8)),
        "gpu_type": draw(st.sampled_from([None, "nvidia-l4", "NVIDIA-H100-80GB-HBM3", "a10g"])),
        "cpus_per_node": draw(cpus),
        "memory_per_node": draw(memories),
    }
    assume(any(int(n) for n in flags["cpu_nodes"].split(":") + flags["gpu_nodes"].split(":")))
    values = {
        "labels": draw(st.dictionaries(label_keys, label_values, max_size=3)),
        "annotations": draw(st.dictionaries(label_keys, st.text(max_size=20).filter(lambda t: not free_text_problem(t)),
                                            max_size=2)),
        "head": {"cpu": draw(cpus), "memory": draw(memories)},
        "cpuWorkers": {"tolerations": draw(tolerations), "nodeSelector": draw(st.dictionaries(label_keys, label_values,
                                                                                               max_size=2))},
        "gpuWorkers": {"tolerations": draw(tolerations)},
        "autoscaler": {"upscalingMode": draw(st.sampled_from(["Default", "Aggressive", "Conservative"]))},
        "scheduling": draw(st.sampled_from([{}, {"kueueQueue": "q"}, {"volcanoQueue": "q"}, {"yunikornQueue": "root.q"}]))
        | {"gangScheduling": draw(st.booleans())},
    }
    # Kueue refuses autoscaling RayJobs (validate.py): a valid configuration has fixed groups under Kueue.
    assume(not (values["scheduling"].get("kueueQueue") and ":" in flags["cpu_nodes"] + flags["gpu_nodes"]))
    if kind == RAYJOB:
        mode = draw(st.sampled_from(["K8sJobMode", "HTTPMode"]))  # InteractiveMode never runs the entrypoint
        values["job"] = {
            "submissionMode": mode,
            "ttlSecondsAfterFinished": draw(st.integers(0, 10**6)),
            "activeDeadlineSeconds": draw(st.one_of(st.none(), st.integers(1, 10**6))),
            "backoffLimit": draw(st.integers(0, 5)),
        }
    return kind, flags, values


@PROFILE
@given(configurations())
def test_random_valid_configurations_render_crd_valid_objects(crd_schemas, case):
    kind, flags, values = case
    cfg = build_config(chart.default_values(), [Layer("generated", values), flag_layer(**flags)[0]], kind)
    obj = chart.render_checked(cfg, kind, crd_schemas)  # raises with every problem, if any
    spec = obj["spec"].get("rayClusterSpec", obj["spec"])
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec.get("workerGroupSpecs", [])}
    assert ("gpu-workers" in groups) == cfg.gpu_workers.enabled
    assert ("nvidia.com/gpu" in dump(obj, "yaml")) == cfg.gpu_workers.enabled
    for group in groups.values():
        limits = group["template"]["spec"]["containers"][0]["resources"]
        assert limits["requests"] == limits["limits"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


free_text = st.text(max_size=30)


@PROFILE
@given(inp=free_text, out=free_text, models=st.lists(free_text, max_size=3), id_column=free_text,
       text_column=free_text, output_format=st.sampled_from(["yaml", "json"]))
def test_free_text_round_trips_or_is_rejected(inp, out, models, id_column, text_column, output_format):
    flags = {"cpu_nodes": "1", "run": {"input": "s3://b/" + inp, "output": "gs://b/" + out, "model": tuple(models),
                                       "id_column": id_column, "text_column": text_column}}
    strings = [inp, out, id_column, text_column, *models]
    try:
        cfg = chart.load_config(flags=flags)
        obj = chart.render_checked(cfg)
    except ConfigError as e:
        # Rejected: only for a reason a string really has, and said about the job's arguments.
        assert (any(free_text_problem(s) for s in strings) or any(not m.strip() for m in models)
                or any(c in inp + out for c in "?#"))  # options in a store's URI are refused
        assert all(p.startswith("--") for p in e.problems), e.problems
        return
    text = dump(obj, output_format)
    back = json.loads(text) if output_format == "json" else yaml.safe_load(text)
    argv = shlex.split(back["spec"]["entrypoint"])
    assert argv[:2] == ["inferkit", "run"]
    parsed = run_command.make_context("run", argv[2:])
    assert chart.load_run_options(_run_flags(dict(parsed.params))) == cfg.run


@settings(max_examples=40, deadline=None)
@given(strings=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=4))
def test_entrypoint_survives_a_real_shell(strings):
    """KubeRay runs the entrypoint through bash, Ray through sh: both must hand the same argv to inferkit."""
    assume(not any(free_text_problem(s) or not s.strip() for s in strings))
    cfg = chart.load_config(flags={"cpu_nodes": "1", "run": {"model": tuple(strings)}})
    command = chart.render_checked(cfg)["spec"]["entrypoint"]
    assert command.startswith("inferkit run ")
    echo = "printf '%s\\0' " + command[len("inferkit "):]
    for shell in ("bash", "sh"):
        out = subprocess.run([shell, "-c", echo], capture_output=True, check=True).stdout
        assert out.split(b"\0")[:-1] == [a.encode() for a in ["run", *sum((["--model", s] for s in strings), [])]]


AWKWARD = ["a b", "it's", 'say "hi"', "#not a comment", "$(rm -rf /)", "`id`", "{{ .Values }}", "{% raw %}",
           "ünïcødé ✓ 🚀", "line\nbreak", "tab\there", "nel\x85x", "ls\u2028ps\u2029", "del\x7f", "back\\slash",
           "--flag", "-", "*", "~/x", "a;b|c&d", "null", "true", "0x1F", "  padded  ", ": colon", "- dash"]


def test_awkward_strings_round_trip_through_yaml_and_shell(tmp_path):
    cfg = chart.load_config(flags={"cpu_nodes": "1", "run": {"model": tuple(AWKWARD), "input": "s3://b/" + AWKWARD[4],
                                                             "output": "s3://b/x y"}})
    back = yaml.safe_load(dump(chart.render_checked(cfg), "yaml"))
    argv = shlex.split(back["spec"]["entrypoint"])
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--model"] == AWKWARD
    out = subprocess.run(["bash", "-c", "printf '%s\\0' " + back["spec"]["entrypoint"][len("inferkit "):]],
                         capture_output=True, check=True).stdout
    assert out.split(b"\0")[:-1] == [a.encode() for a in argv[1:]]


def test_a_unicode_line_break_alone_survives_yaml():
    """Without a newline beside it PyYAML would write NEL into a single-quoted scalar, read back as a space."""
    for text in ("nel\x85x", "\x85", "ls\u2028ps"):
        cfg = chart.load_config(flags={"cpu_nodes": "1", "run": {"text_column": text}})
        back = yaml.safe_load(dump(chart.render_checked(cfg), "yaml"))
        assert shlex.split(back["spec"]["entrypoint"])[-1] == text
