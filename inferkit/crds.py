"""Reading KubeRay CRDs from files (the schemas behind `--crd-dir`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from inferkit.errors import ConfigError, one_line
from inferkit.validate import crd_schemas

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_crd_schemas(source: str) -> dict[str, dict]:
    """Strict v1 schemas by kind from a CRD file or a folder of them (e.g. the kuberay-operator
    chart's crds/ folder)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix in (".yaml", ".yml", ".json"))
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError([f"--crd-dir {source}: no such file or folder"])
    documents = []
    for file in files:
        try:
            documents += [d for d in yaml.load_all(file.read_text(encoding="utf-8"), Loader=_Loader) if d]
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError([f"--crd-dir: cannot read {file}: {one_line(e)}"]) from e
    try:
        schemas = crd_schemas(documents)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ConfigError([f"--crd-dir {source}: a ray.io CustomResourceDefinition in it is malformed (no "
                           f"{e} where a CRD has one)"]) from e
    if not schemas:
        raise ConfigError([f"--crd-dir {source}: no ray.io v1 CustomResourceDefinition found"])
    return schemas
