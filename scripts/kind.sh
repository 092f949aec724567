#!/usr/bin/env bash
# The kind quick start, one step per subcommand (or `all`), for a laptop with Docker, kind, helm and
# kubectl: a CPU-only cluster, the KubeRay operator, the CPU image, the bundled sample as a RayJob,
# a check of its output on the laptop, and tear-down. Run from anywhere; it works in the checkout.
usage() {
  cat <<EOF
usage: scripts/kind.sh [-n|--dry-run] COMMAND

  up              kind cluster + KubeRay operator; checks Docker's CPUs and memory and the data folder
  image [cpu|gpu] build the job image for this machine's architecture ($(uname -m))
  load            put the CPU image on the kind node (docker save + kind load image-archive)
  submit          the bundled sample as a RayJob (inferkit submit --preset kind), followed to the end
  check           the output on the laptop: 100 rows, _SUCCESS, the run report
  down            delete the kind cluster
  all             up, image, load, submit, check
  versions        what this script pins and uses
  help            this text

-n, --dry-run     print the commands instead of running them (needs no Docker)
EOF
}
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${INFERKIT_KIND_CLUSTER:-inferkit}
CONTEXT=kind-${CLUSTER}
# The kuberay-operator Helm chart (operator 1.7.0; its container asks 100m CPU and 512Mi).
KUBERAY_CHART_VERSION=1.7.0
# manifests/kind/kind-cluster.yaml pins the node image of this kind release, by digest.
KIND_RELEASE=v0.32.0
NODE_IMAGE=$(sed -n 's/^ *image: *\(kindest\/node:[^ ]*\).*$/\1/p' manifests/kind/kind-cluster.yaml | head -n 1)
# Plain text reads, so any python3 (3.10, macOS's) or none will do.
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
RAY_VERSION=$(sed -n 's/^ARG RAY_VERSION=//p' docker/Dockerfile)
# Ray publishes arm64 images under tags ending in -aarch64; build for this machine's architecture only
# (a multi-platform image cannot be loaded into kind with Docker's containerd image store, kind#3795).
case "$(uname -m)" in
  arm64|aarch64) PLATFORM=linux/arm64 ARCH_SUFFIX=-aarch64 ;;
  *) PLATFORM=linux/amd64 ARCH_SUFFIX= ;;
esac
IMAGE=${INFERKIT_IMAGE:-ghcr.io/inferkit/inferkit:${VERSION}-cpu}
# Under the checkout (git-ignored): Docker Desktop, colima and Rancher Desktop all share $HOME with their
# VM, and it survives a reboot. kind-cluster.yaml mounts it at /inferkit-data on the node; the kind preset
# mounts that at /data in every pod.
DATA=.kind-data
OUT=kind-e2e-output
MIN_CPUS=4
MIN_MEMORY_GIB=6   # what to give Docker; its VM then reports a little less, so 5.5 GiB passes
# The checkout's virtualenv (README's set-up commands) when there is one, else what is on PATH.
if [ -x .venv/bin/inferkit ]; then BIN=.venv/bin/; else BIN=; fi
INFERKIT=${INFERKIT:-${BIN}inferkit}
PYTHON=${PYTHON:-${BIN}python3}
DRY_RUN=${INFERKIT_KIND_DRY_RUN:-}

step() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'Error: %s\n' "$*" >&2; exit 1; }
# Every command that changes something goes through run: printed instead under --dry-run.
run() {
  if [ -n "$DRY_RUN" ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

versions() {
  local kind_here
  kind_here=$( (kind version 2>/dev/null || echo "kind not on PATH") | head -n 1)
  cat <<EOF
inferkit         ${VERSION}
ray              ${RAY_VERSION}
image            ${IMAGE} (for ${PLATFORM}, on rayproject/ray:${RAY_VERSION}-py311-cpu${ARCH_SUFFIX})
kind node image  ${NODE_IMAGE}
kind             ${KIND_RELEASE} made that node image; here: ${kind_here}
kuberay chart    kuberay-operator ${KUBERAY_CHART_VERSION}
data folder      ${PWD}/${DATA} (/inferkit-data on the node, /data in the pods)
EOF
}

check_docker_resources() {
  if [ -n "$DRY_RUN" ] || [ -n "${INFERKIT_KIND_SKIP_RESOURCE_CHECK:-}" ]; then return; fi
  local cpus bytes
  read -r cpus bytes < <(docker info --format '{{.NCPU}} {{.MemTotal}}') || die "no Docker engine answers \`docker info\`"
  if [ "$cpus" -lt "$MIN_CPUS" ] || [ "$bytes" -lt $((11 * 2**30 / 2)) ]; then
    die "Docker gives its containers ${cpus} CPUs and $((bytes / 2**20)) MiB; the kind quick start needs at least \
${MIN_CPUS} CPUs and ${MIN_MEMORY_GIB} GiB (the job's pods, the operator and kind's control plane). Raise them \
(Docker Desktop: Settings > Resources; colima start --cpu ${MIN_CPUS} --memory ${MIN_MEMORY_GIB}), or set INFERKIT_KIND_SKIP_RESOURCE_CHECK=1 to try anyway"
  fi
}

check_kind_release() {
  if [ -n "$DRY_RUN" ]; then return; fi
  local here
  here=$(kind version | sed -n 's/^kind \(v[0-9.]*\).*/\1/p')
  if [ "$(printf '%s\n%s\n' "$KIND_RELEASE" "$here" | sort -V | head -n 1)" != "$KIND_RELEASE" ]; then
    printf 'Warning: kind %s is older than %s, which made the node image %s; upgrade kind if the cluster fails\n' \
      "$here" "$KIND_RELEASE" "${NODE_IMAGE%%@*}" >&2
  fi
}

# The node must see the laptop's folder (colima and Rancher Desktop share only $HOME with their VM), and
# the pods' user (uid 1000, group 100) must be able to write there: checked on the node, through the
# same bind mount the pods' hostPath volume uses.
check_data_folder() {
  local node=${CLUSTER}-control-plane probe=${DATA}/.probe-$$
  run touch "$probe"
  run docker exec "$node" test -f "/inferkit-data/${probe##*/}" \
    || data_folder_fails "the kind node does not see ${PWD}/${DATA}: Docker's VM does not share this folder (colima \
and Rancher Desktop share only \$HOME: keep the checkout under \$HOME), or the cluster was made from another checkout \
(make kind-down, then make kind-up here)"
  run docker exec -u 1000:100 "$node" touch "/inferkit-data/${probe##*/}.pod" \
    || data_folder_fails "pods (uid 1000) cannot write to ${PWD}/${DATA}: chmod 0777 it"
  run test -f "${probe}.pod" || data_folder_fails "a file the node wrote did not reach ${PWD}/${DATA}"
  run rm -f "$probe" "${probe}.pod"
}
data_folder_fails() { rm -f "${DATA}"/.probe-*; die "$@"; }

up() {
  step "kind cluster ${CLUSTER} on ${NODE_IMAGE%%@*}, KubeRay operator chart ${KUBERAY_CHART_VERSION}"
  check_docker_resources
  check_kind_release
  run mkdir -p "$DATA"
  run chmod 0777 "$DATA"   # pods run as uid 1000 and write the output here
  if [ -n "$DRY_RUN" ] || ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    run kind create cluster --name "$CLUSTER" --config manifests/kind/kind-cluster.yaml
  fi
  check_data_folder
  run helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
  run helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_CHART_VERSION" \
    --kube-context "$CONTEXT" --wait --timeout 5m
}

image() {
  local flavor=${1:-cpu} tag=$IMAGE
  case "$flavor" in
    cpu) ;;
    gpu) tag=${INFERKIT_IMAGE:-ghcr.io/inferkit/inferkit:${VERSION}-gpu} ;;
    *) usage >&2; exit 2 ;;
  esac
  step "${flavor} image ${tag} for ${PLATFORM}"
  run docker build -f docker/Dockerfile --platform "$PLATFORM" --build-arg FLAVOR="$flavor" \
    --build-arg ARCH_SUFFIX="$ARCH_SUFFIX" -t "$tag" .
}

load() {
  local archive=${TMPDIR:-/tmp}/inferkit-image-$$.tar
  step "loading ${IMAGE} into kind"
  run docker save -o "$archive" "$IMAGE"
  run kind load image-archive "$archive" --name "$CLUSTER"
  run rm -f "$archive"
}

submit() {
  step "the bundled sample as a RayJob (inferkit submit --preset kind)"
  run "$INFERKIT" submit --context "$CONTEXT" --preset kind --image "$IMAGE" --name inferkit-e2e --replace \
    --output "/data/${OUT}" --overwrite --timeout 20m
}

check() {
  step "checking ${DATA}/${OUT}"
  run test -f "${DATA}/${OUT}/_SUCCESS"
  run "$PYTHON" - "${DATA}/${OUT}" <<'PY'
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
  run kind delete cluster --name "$CLUSTER"
}

case "${1:-}" in
  -n|--dry-run) DRY_RUN=1; shift ;;
esac
case "${1:-}" in
  up|load|submit|check|down|versions) "$1" ;;
  image) image "${2:-cpu}" ;;
  all) versions >&2; up; image cpu; load; submit; check ;;
  help|-h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac
