"""inferkit: batch inference from a laptop to Kubernetes with KubeRay."""

__version__ = "0.1.0"

# The one Ray version for the package extra, the job images and the rendered `rayVersion`;
# tests fail when pyproject.toml or docker/Dockerfile disagree with it.
RAY_VERSION = "2.60.0"
