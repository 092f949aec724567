"""The command line: parse flags, build the config, make one library call, print.

Kept light on purpose: nothing here imports ray, torch, transformers or kubernetes at import time,
so `inferkit render` starts instantly; each command imports what it needs when it runs.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from typing import Any, Literal, get_args, get_origin

import click

from inferkit import __version__
from inferkit.config import RAYCLUSTER, RAYJOB, run_fields, strip_optional
from inferkit.errors import (EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, ApiError, InferkitError,
                             Terminated, stop_on_sigterm)
from inferkit.kuberay import VERSIONS

EXIT_CODES = """\b
Exit codes:
  0    success (the job succeeded)
  1    the job failed (its reason and message are printed)
  2    bad usage or configuration
  3    pre-flight check or API error (cluster, permissions, CRDs)
  70   internal error in inferkit (a bug; the job's outcome is unknown)
  124  --timeout reached
  130  interrupted (Ctrl-C)
  143  inferkit run terminated (SIGTERM: docker stop, the pod deleted)"""

_state: dict[str, Any] = {"verbose": False, "argv": []}


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and debug output.")
@click.version_option(__version__, prog_name="inferkit")
def cli(verbose: bool) -> None:
    """Batch inference from a laptop to Kubernetes with KubeRay.

    \b
      inferkit run                                    the bundled demo on an embedded Ray
      inferkit render --gpu-nodes 4 | kubectl apply -f -
      inferkit submit --preset kind --output /data/out
    """
    _state["verbose"] = verbose


# ---------------------------------------------------------------------------------------------
# Options shared by several commands


def _run_option(name: str, tp: Any, help_text: str, default: Any):
    flag = "--" + name.replace("_", "-")
    base = strip_optional(tp)
    if default not in (None, "", [], False):
        help_text = f"{help_text}  [default: {default}]"
    if base is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    if get_origin(base) is tuple:
        return click.option(flag, name, multiple=True, help=help_text)
    if get_origin(base) is Literal:
        return click.option(flag, name, type=click.Choice(get_args(base)), default=None, help=help_text)
    kind = {int: click.INT, float: click.FLOAT}.get(base, click.STRING)
    return click.option(flag, name, type=kind, default=None, help=help_text,
                        metavar="N|MIN:MAX" if name == "actors" else None)


def run_options(func):
    """The job's arguments, one flag per RunOptions field (see inferkit.config), defaults shown from
    the chart's values.yaml, where they are defined."""
    from inferkit.chart import default_values
    from inferkit.config import camel

    defaults = default_values()["run"]
    for name, tp, help_text in reversed(run_fields()):
        func = _run_option(name, tp, help_text, defaults.get(camel(name)))(func)
    return func


def _run_flags(kwargs: dict) -> dict:
    """Pop the job's arguments out of a command's kwargs; unset ones (None, or () for --model) are dropped."""
    flags = {}
    for name, _tp, _help in run_fields():
        value = kwargs.pop(name)
        if value is not None and value != ():
            flags[name] = value
    return flags


CLUSTER_OPTIONS = [
    click.option("--name", default=None, help="Name of the RayJob/RayCluster (DNS-1035; <= 47/53 characters)."),
    click.option("-n", "--namespace", default=None, help="Kubernetes namespace."),
    click.option("--preset", default=None, help="Start from a preset: kind, gke-gpu, eks-gpu."),
    click.option("--cpu-nodes", default=None, metavar="N|MIN:MAX",
                 help="CPU worker pods; MIN:MAX turns on the Ray autoscaler between the bounds."),
    click.option("--gpu-nodes", default=None, metavar="N|MIN:MAX",
                 help="GPU worker pods; MIN:MAX turns on the Ray autoscaler between the bounds."),
    click.option("--gpus-per-node", type=int, default=None, help="GPUs per GPU worker pod (default 1)."),
    click.option("--gpu-type", default=None,
                 help="GPU model to land on, matched against gpuWorkers.acceleratorLabel (e.g. nvidia-l4)."),
    click.option("--cpus-per-node", default=None, metavar="QUANTITY", help="CPU of each worker pod (e.g. 8)."),
    click.option("--memory-per-node", default=None, metavar="QUANTITY", help="Memory of each worker pod (e.g. 32Gi)."),
    click.option("--image", default=None, help="Image for every pod (both the CPU and the GPU image)."),
    click.option("-f", "--values", "values_files", multiple=True, type=click.Path(dir_okay=False),
                 help="Values file laid over the chart defaults and preset (repeatable; later wins)."),
    click.option("--set", "sets", multiple=True, metavar="KEY.PATH=VALUE",
                 help="Set one value, e.g. --set gpuWorkers.memory=64Gi (repeatable; escape dots in keys as \\.)."),
    click.option("--kuberay-version", type=click.Choice(VERSIONS), default=None,
                 help=f"KubeRay operator version of the cluster (default {VERSIONS[-1]}): refuses what it lacks."),
    click.option("--crd-dir", envvar="INFERKIT_CRD_DIR", default=None, type=click.Path(exists=False),
                 help="Check against the KubeRay CRDs in this file or folder (env INFERKIT_CRD_DIR)."),
]

_FLAG_NAMES = ("name", "namespace", "cpu_nodes", "gpu_nodes", "gpus_per_node", "gpu_type", "cpus_per_node",
               "memory_per_node", "image", "kuberay_version")


def cluster_options(func):
    for option in reversed(CLUSTER_OPTIONS):
        func = option(func)
    return run_options(func)


class SectionedCommand(click.Command):
    """Help lists the command's own flags first, then the cluster's shape, then the job's arguments."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        job = {name for name, _tp, _help in run_fields()}
        cluster = {*_FLAG_NAMES, "preset", "values_files", "sets", "crd_dir"}
        sections: dict[str, list] = {"Options": [], "Cluster options": [], "Job options (those of `inferkit run`)": []}
        titles = list(sections)
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record:
                sections[titles[2] if param.name in job else titles[1] if param.name in cluster else titles[0]].append(
                    record)
        for title, records in sections.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


def _load(kwargs: dict, kind: str):
    """Config and (optional) CRD schemas from a command's cluster options."""
    from inferkit import chart

    flags = {name: kwargs.pop(name) for name in _FLAG_NAMES}
    flags["run"] = _run_flags(kwargs)
    cfg = chart.load_config(kind=kind, preset=kwargs.pop("preset"), values_files=kwargs.pop("values_files"),
                            sets=kwargs.pop("sets"), flags=flags)
    crd_dir = kwargs.pop("crd_dir")
    schemas = None
    if crd_dir:
        from inferkit.crds import load_crd_schemas

        schemas = load_crd_schemas(crd_dir)
    return cfg, schemas


# ---------------------------------------------------------------------------------------------
# Commands


@cli.command(cls=SectionedCommand)
@cluster_options
@click.option("--raycluster", is_flag=True, help="Render a standalone RayCluster instead of a RayJob.")
@click.option("-o", "--format", "output_format", type=click.Choice(["yaml", "json"]), default="yaml",
              help="Output format.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Write the manifest into this folder (headed by the command that made it) instead of stdout.")
def render(raycluster: bool, output_format: str, out_dir: str | None, **kwargs: Any) -> None:
    """Print a KubeRay RayJob (or RayCluster) for `kubectl apply -f -`."""
    from inferkit import chart
    from inferkit.render import dump

    if out_dir is not None and not out_dir.strip():
        raise click.BadParameter("must name a folder", param_hint="--out-dir")
    kind = RAYCLUSTER if raycluster else RAYJOB
    cfg, schemas = _load(kwargs, kind)
    obj = chart.render_checked(cfg, kind, schemas)
    if kind == RAYJOB and not cfg.run.output:
        from inferkit.console import say

        say("note: no --output: the job runs the bundled demo and its results stay inside the head pod, "
            "which goes away with the cluster; pass --output s3://..., gs://... or a path on a volume")
    text = dump(obj, output_format)
    if out_dir is not None:
        command = "inferkit " + shlex.join(_state["argv"])
        path = chart.write_manifest(out_dir, obj, text, command, output_format)
        click.echo(f"wrote {path}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command(short_help="Run batch inference on the Ray in RAY_ADDRESS or an embedded Ray.")
@run_options
@click.option("--dry-run", is_flag=True, help="List the input, read the models' configs and the cluster (or this "
              "machine), print the plan; load no weights, write nothing.")
def run(dry_run: bool, **kwargs: Any) -> int:
    """Run batch inference: on the Ray cluster in RAY_ADDRESS, or on an embedded Ray.

    With no --input it runs the bundled sample on the bundled model, offline.
    """
    from inferkit import chart

    options = chart.load_run_options(_run_flags(kwargs))
    from inferkit.job.run import run_job

    return run_job(options, verbose=_state["verbose"], dry_run=dry_run)


class Duration(click.ParamType):
    """Seconds, or a number with s, m or h: 90, 90s, 15m, 2h."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
        try:
            seconds = float(text[:-1] if scale else text) * (scale or 1)
        except ValueError:
            self.fail(f"{value!r} is not a duration such as 90, 90s, 15m or 2h", param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return seconds


CONNECTION_OPTIONS = [
    click.option("--kubeconfig", envvar="KUBECONFIG", default=None, type=click.Path(dir_okay=False),
                 help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)."),
    click.option("--context", default=None, help="kubeconfig context (default: the current one)."),
]
FOLLOW_OPTIONS = [
    click.option("--timeout", type=Duration(), default=None,
                 help="Stop following after this long (90, 15m, 2h) and exit 124; the job keeps running."),
    click.option("--cancel-on-interrupt", is_flag=True, help="On Ctrl-C, delete the RayJob (stop the Ray job) "
                 "before exiting 130; without it, Ctrl-C only stops following."),
]


def _options(options: list):
    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


def _connection(kubeconfig: str | None, context: str | None, namespace: str | None):
    from inferkit.submit import Connection

    return Connection(kubeconfig=kubeconfig, context=context, namespace=namespace or None)


@cli.command(cls=SectionedCommand)
@cluster_options
@_options(CONNECTION_OPTIONS + FOLLOW_OPTIONS)
@click.option("--ray-address", default=None, metavar="URL",
              help="Submit to this existing Ray cluster's job API (e.g. http://127.0.0.1:8265) instead of "
                   "creating a RayJob; only job arguments apply.")
@click.option("--dry-run", is_flag=True, help="Run every check and the server-side dry run, print the RayJob, "
              "create nothing.")
@click.option("--detach", is_flag=True, help="Return right after creating the RayJob.")
@click.option("--replace", is_flag=True, help="Delete an existing RayJob of the same name first.")
@click.option("--strict-capacity", is_flag=True, help="Fail, rather than warn, when the GPU nodes that match "
              "cannot hold the GPU workers.")
def submit(kubeconfig: str | None, context: str | None, timeout: float | None, cancel_on_interrupt: bool,
           ray_address: str | None, dry_run: bool, detach: bool, replace: bool, strict_capacity: bool,
           **kwargs: Any) -> int:
    """Create the RayJob `render` would print and follow it to its end.

    State changes and why pods wait go to stderr, the driver's log to stdout. Dropped watches and
    log streams are resumed without losing or repeating lines. The exit code tells the outcome.
    """
    from inferkit.submit import FollowOptions

    follow = FollowOptions(timeout=timeout, cancel_on_interrupt=cancel_on_interrupt)
    if ray_address:
        return _submit_to_ray(ray_address, kwargs, follow, dry_run=dry_run, detach=detach)
    from inferkit import chart
    from inferkit.submit import submit as submit_rayjob

    namespace = kwargs.get("namespace")
    cfg, schemas = _load(kwargs, RAYJOB)
    obj = chart.render_checked(cfg, RAYJOB, schemas)
    connection = _connection(kubeconfig, context, namespace or cfg.namespace)
    try:
        return submit_rayjob(connection, cfg, obj, dry_run=dry_run, detach=detach, replace=replace,
                             strict_capacity=strict_capacity, follow=follow)
    except ApiError as e:
        if not dry_run:
            raise
        raise ApiError(f"{e} (`inferkit render` with the same flags shows what would be created, no cluster "
                       "needed)") from e


_CLUSTER_ONLY = (*_FLAG_NAMES, "preset", "values_files", "sets", "crd_dir", "kubeconfig", "context", "replace",
                 "strict_capacity")


def _submit_to_ray(address: str, kwargs: dict, follow: Any, *, dry_run: bool, detach: bool) -> int:
    """--ray-address: only the job's arguments apply; cluster-shape and Kubernetes flags typed on the
    command line are refused (values that came from the environment, like KUBECONFIG, are not)."""
    from click.core import ParameterSource

    from inferkit import chart
    from inferkit.config import is_remote_uri
    from inferkit.console import say
    from inferkit.errors import ConfigError
    from inferkit.render import entrypoint

    context = click.get_current_context()
    given = [next(o for o in context.command.params if o.name == name).opts[-1] for name in _CLUSTER_ONLY
             if context.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        raise ConfigError([f"{flag}: has no effect with --ray-address (the Ray cluster exists already; only job "
                           "arguments apply)" for flag in given])
    options = chart.load_run_options(_run_flags(kwargs))
    command = entrypoint(options, chart.default_run_options())
    if not is_remote_uri(options.output):
        say(f"note: the cluster writes {options.output or 'inferkit-output/<run id> (its working directory)'} on "
            "its own nodes; give a folder they share, or s3:// or gs://")
    if dry_run:
        click.echo(command)
        return 0
    from inferkit.job.remote import submit_to_ray

    return submit_to_ray(address, command, {}, detach=detach, timeout=follow.timeout,
                         cancel_on_interrupt=follow.cancel_on_interrupt)


def _kube_command(func):
    func = click.option("-n", "--namespace", default=None, help="Namespace (default: the context's).")(func)
    return _options(CONNECTION_OPTIONS)(func)


DATA_FORMAT = click.option("-o", "--format", "output_format", type=click.Choice(["yaml", "json"]), default=None,
                           help="Print data as YAML or JSON instead of a table.")


@cli.command(short_help="A RayJob's state, reason, message, cluster, dashboard URL and times.")
@click.argument("name")
@_kube_command
@DATA_FORMAT
def status(name: str, kubeconfig: str | None, context: str | None, namespace: str | None,
           output_format: str | None) -> int:
    """State, reason, message, cluster, dashboard URL and times of a RayJob."""
    from inferkit.submit import status as show_status

    return show_status(_connection(kubeconfig, context, namespace), name, output_format)


@cli.command(short_help="The driver's log: the submitter pod's, or in HTTPMode the head's.")
@click.argument("name")
@_kube_command
@click.option("-f", "--follow", is_flag=True, help="Follow until the job ends; exit with its outcome.")
@_options(FOLLOW_OPTIONS)
def logs(name: str, kubeconfig: str | None, context: str | None, namespace: str | None, follow: bool,
         timeout: float | None, cancel_on_interrupt: bool) -> int:
    """The driver's log of a RayJob: its submitter pod's log (K8sJobMode), or in HTTPMode the Ray job's log on
    the head's dashboard, read through the API server's service proxy."""
    from inferkit.submit import FollowOptions
    from inferkit.submit import logs as show_logs

    return show_logs(_connection(kubeconfig, context, namespace), name, follow,
                     FollowOptions(timeout=timeout, cancel_on_interrupt=cancel_on_interrupt))


@cli.command(name="list")
@_kube_command
@DATA_FORMAT
def list_command(kubeconfig: str | None, context: str | None, namespace: str | None,
                 output_format: str | None) -> int:
    """RayJobs in the namespace with their states."""
    from inferkit.submit import list_jobs

    return list_jobs(_connection(kubeconfig, context, namespace), output_format)


@cli.command()
@click.argument("name")
@_kube_command
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, kubeconfig: str | None, context: str | None, namespace: str | None, yes: bool) -> int:
    """Delete a RayJob (and with it its RayCluster and pods)."""
    from inferkit.errors import ConfigError
    from inferkit.submit import delete as delete_rayjob

    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError([f"delete {name}: pass -y to delete without a terminal to confirm on"])
        if not click.confirm(f"Delete RayJob {name}?", err=True):
            click.echo("Nothing deleted.", err=True)
            return 0
    return delete_rayjob(_connection(kubeconfig, context, namespace), name)


@cli.command(short_help="What this machine and kube context offer; what each workflow needs.")
@_kube_command
@click.option("-o", "--format", "output_format", type=click.Choice(["json"]), default=None,
              help="Print the findings as JSON.")
def doctor(kubeconfig: str | None, context: str | None, namespace: str | None, output_format: str | None) -> int:
    """What this machine and the current kube context offer, and what each workflow still needs."""
    from inferkit.doctor import run_doctor

    return run_doctor(_connection(kubeconfig, context, namespace), output_format)


# ---------------------------------------------------------------------------------------------
# Entry point: one line per error, exit codes that tell the truth


def main(argv: list[str] | None = None) -> None:
    _state.update(verbose=False, argv=list(sys.argv[1:] if argv is None else argv))
    stop_on_sigterm()
    try:
        code = cli.main(args=argv, prog_name="inferkit", standalone_mode=False)
    except click.exceptions.Abort as e:  # click's word for a KeyboardInterrupt it caught
        _stop_interrupted(e.__cause__)
    except click.ClickException as e:
        click.echo(f"Error: {e.format_message()}", err=True)
        sys.exit(e.exit_code if e.exit_code else EXIT_USAGE)
    except InferkitError as e:
        if _state["verbose"]:
            traceback.print_exc()
        click.echo(f"Error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        _stop_interrupted(e)
    except Exception as e:  # a bug or an unforeseen failure: still one line unless -v
        if _state["verbose"]:
            traceback.print_exc()
        click.echo(f"Error: internal error: {type(e).__name__}: {e} (run with -v for the traceback)", err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)


def _stop_interrupted(cause: BaseException | None) -> None:
    if isinstance(cause, Terminated):
        click.echo("Terminated.", err=True)
        sys.exit(EXIT_TERMINATED)
    click.echo("Interrupted.", err=True)
    sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    main()
