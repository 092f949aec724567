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
from inferkit.config import RAYCLUSTER, RAYJOB, run_fields
from inferkit.errors import EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_USAGE, InferkitError

EXIT_CODES = """\b
Exit codes:
  0    success (the job succeeded)
  1    the job failed (its reason and message are printed)
  2    bad usage or configuration
  3    pre-flight check or API error (cluster, permissions, CRDs)
  124  --timeout reached
  130  interrupted (Ctrl-C)"""

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


def _strip_optional(tp: Any) -> Any:
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if type(None) in get_args(tp) and len(args) == 1 else tp


def _run_option(name: str, tp: Any, help_text: str):
    flag = "--" + name.replace("_", "-")
    base = _strip_optional(tp)
    if base is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    if get_origin(base) is tuple:
        return click.option(flag, name, multiple=True, help=help_text)
    if get_origin(base) is Literal:
        return click.option(flag, name, type=click.Choice(get_args(base)), default=None, help=help_text)
    kind = {int: click.INT, float: click.FLOAT}.get(base, click.STRING)
    return click.option(flag, name, type=kind, default=None, help=help_text,
                         metavar="MIN:MAX" if name == "actors" else None)


def run_options(func):
    """The job's arguments, one flag per RunOptions field (see inferkit.config)."""
    for name, tp, help_text in reversed(run_fields()):
        func = _run_option(name, tp, help_text)(func)
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
    click.option("--crd-dir", envvar="INFERKIT_CRD_DIR", default=None, type=click.Path(exists=False),
                 help="Check against the KubeRay CRDs in this file or folder (env INFERKIT_CRD_DIR)."),
]

_FLAG_NAMES = ("name", "namespace", "cpu_nodes", "gpu_nodes", "gpus_per_node", "gpu_type", "cpus_per_node",
               "memory_per_node", "image")


def cluster_options(func):
    for option in reversed(CLUSTER_OPTIONS):
        func = option(func)
    return run_options(func)


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


@cli.command()
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

    kind = RAYCLUSTER if raycluster else RAYJOB
    cfg, schemas = _load(kwargs, kind)
    obj = chart.render_checked(cfg, kind, schemas)
    text = dump(obj, output_format)
    if out_dir:
        command = "inferkit " + shlex.join(_state["argv"])
        path = chart.write_manifest(out_dir, obj, text, command, output_format)
        click.echo(f"wrote {path}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command()
@run_options
def run(**kwargs: Any) -> int:
    """Run batch inference: on the Ray cluster in RAY_ADDRESS, or on an embedded Ray.

    With no --input it runs the bundled sample on the bundled model, offline.
    """
    from inferkit import chart

    options = chart.load_run_options(_run_flags(kwargs))
    from inferkit.job.run import run_job

    return run_job(options, verbose=_state["verbose"])


# ---------------------------------------------------------------------------------------------
# Entry point: one line per error, exit codes that tell the truth


def main(argv: list[str] | None = None) -> None:
    _state.update(verbose=False, argv=list(sys.argv[1:] if argv is None else argv))
    try:
        code = cli.main(args=argv, prog_name="inferkit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        click.echo(f"Error: {e.format_message()}", err=True)
        sys.exit(e.exit_code if e.exit_code else EXIT_USAGE)
    except InferkitError as e:
        if _state["verbose"]:
            traceback.print_exc()
        click.echo(f"Error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # a bug or an unforeseen failure: still one line unless -v
        if _state["verbose"]:
            traceback.print_exc()
        click.echo(f"Error: internal error: {type(e).__name__}: {e} (run with -v for the traceback)", err=True)
        sys.exit(EXIT_JOB_FAILED)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
