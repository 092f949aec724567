#!/usr/bin/env bash
# The kind quick start, one step per subcommand (or `all`), for a laptop with Docker, kind, helm and
# kubectl: a CPU-only cluster, the KubeRay operator, the CPU image, the bundled sample as a RayJob,
# a check of its output on the laptop, and tear-down.
#   scripts/kind.sh up | image | load | submit | check | down | all
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${INFERKIT_KIND_CLUSTER:-inferkit}
KUBERAY_VERSION=1.7.0
VERSION=$(python3 -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
IMAGE=${INFERKIT_IMAGE:-ghcr.io/inferkit/inferkit:${VERSION}-cpu}
DATA=/tmp/inferkit-kind-data          # /inferkit-data on the kind node, /data in the pods (the kind preset)
OUT=kind-e2e-output
# The checkout's virtualenv (README's set-up commands) when there is one, else what is on PATH.
if [ -x .venv/bin/inferkit ]; then BIN=.venv/bin/; else BIN=; fi
INFERKIT=${INFERKIT:-${BIN}inferkit}
PYTHON=${PYTHON:-${BIN}python3}
CONTEXT=kind-${CLUSTER}

step() { printf '\n== %s\n' "$*" >&2; }

up() {
  step "kind cluster ${CLUSTER} and KubeRay ${KUBERAY_VERSION}"
  mkdir -p "$DATA" && chmod 0777 "$DATA"   # pods run as uid 1000 and write the output here
  kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --config manifests/kind/kind-cluster.yaml
  helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
  helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
    --kube-context "$CONTEXT" --wait --timeout 5m
}

image() {
  step "CPU image ${IMAGE}"
  docker build -f docker/Dockerfile --build-arg FLAVOR=cpu -t "$IMAGE" .
}

load() {
  step "loading ${IMAGE} into kind"
  kind load docker-image "$IMAGE" --name "$CLUSTER"
}

submit() {
  step "the bundled sample as a RayJob (inferkit submit --preset kind)"
  rm -rf "${DATA:?}/${OUT}"
  "$INFERKIT" submit --context "$CONTEXT" --preset kind --image "$IMAGE" --name inferkit-e2e --replace \
    --output "/data/${OUT}" --timeout 20m
}

check() {
  step "checking ${DATA}/${OUT}"
  test -f "${DATA}/${OUT}/_SUCCESS"
  "$PYTHON" - "${DATA}/${OUT}" <<'PY'
import json, sys
import pyarrow.parquet as pq
folder = sys.argv[1]
table = pq.read_table(folder)
report = json.load(open(f"{folder}/_inferkit_report.json"))
assert table.num_rows == 100 == report["rows"], (table.num_rows, report["rows"])
assert table.column("error").null_count == 100, "rows with errors"
print(f"ok: {table.num_rows} rows, plan {report['plan']['device']} x{report['plan']['actors_max']}, "
      f"{report['throughput_rows_per_second']} rows/s")
PY
}

down() {
  step "deleting the kind cluster ${CLUSTER}"
  kind delete cluster --name "$CLUSTER"
}

case "${1:-}" in
  up|image|load|submit|check|down) "$1" ;;
  all) up; image; load; submit; check ;;
  *) echo "usage: $0 up|image|load|submit|check|down|all" >&2; exit 2 ;;
esac
