#!/usr/bin/env bash
# The job images built where no image registry answers (this project's CI): a stand-in for Ray's base
# image made from package registries only, then docker/Dockerfile built on it, as a user builds it.
#
#   scripts/images.sh standin      the stand-in for rayproject/ray:${RAY_VERSION}-py311-cpu
#   scripts/images.sh job FLAVOR   docker/Dockerfile on the stand-in (cpu; gpu stops at its CUDA base)
#
# Each prints the built image's tag as its last line. The stand-in is tagged with a key of what it is
# made from and is not rebuilt while the key holds; the job image relies on Docker's build cache (its
# layers put the dependencies before the project's code). Needs a running Docker engine, mmdebstrap and
# the machine's CA bundle at $CA_BUNDLE (copied into the stand-in, so that pip inside reaches PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

RAY_VERSION=$(sed -n 's/^ARG RAY_VERSION=//p' docker/Dockerfile)
STANDIN_REPO=inferkit-standin/ray
STANDIN=${STANDIN_REPO}:${RAY_VERSION}-py311-cpu
ROOTFS=inferkit-standin/bookworm-rootfs
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
# Where mmdebstrap takes Debian's packages from.
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3.11-dev: the headers Ray's conda Python carries (inductor's C++ kernels include them).
PACKAGES=python3.11,python3.11-venv,python3.11-dev,ca-certificates,wget,sudo,tzdata,bash,procps
export DOCKER_BUILDKIT=1
# A Docker client that builds with BuildKit: without the buildx plugin, clients from 23.0 refuse to, while
# the engine's own 20.10 client (Debian's docker.io, /usr/bin/docker) has BuildKit built in.
DOCKER=${DOCKER:-docker}
if ! "$DOCKER" buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; fi
docker() { command "$DOCKER" "$@"; }

say() { printf '== %s\n' "$*" >&2; }
# What a stand-in build leaves on the way, removed however the script ends: the root filesystem's tar and
# its imported image.
TAR= ROOTFS_TAG=
cleanup() {
  rm -f "$TAR"
  if [ -n "$ROOTFS_TAG" ]; then docker image rm "$ROOTFS_TAG" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# The images a rebuild left untagged (several GB each): only this script's. And BuildKit's cache beyond
# about two builds' layers (each holds a 5 GB torch layer; with the disk 95% full Ray warned on every run).
prune() {
  docker image prune -f --filter label=inferkit.built-by=scripts/images.sh >/dev/null
  docker builder prune -f --keep-storage 16GB >/dev/null
}

standin_key() {
  { cat docker/standin/Dockerfile "$CA_BUNDLE" "$0"; echo "$DEBIAN_MIRROR"; } \
    | sha256sum | cut -c1-16
}

standin() {
  local key
  key=$(standin_key)
  if [ "$(docker image inspect -f '{{index .Config.Labels "inferkit.standin.key"}}' "$STANDIN" 2>/dev/null)" = "$key" ]; then
    say "stand-in ${STANDIN} is up to date (key ${key})"
    echo "$STANDIN"
    return
  fi
  TAR=$(mktemp --suffix=.tar)
  say "Debian bookworm root filesystem (mmdebstrap: ${PACKAGES})"
  # The CA bundle and a pip.conf naming it: pip inside the images then trusts what this machine trusts.
  mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
    --customize-hook="copy-in $CA_BUNDLE /usr/local/share/" \
    --customize-hook='chroot "$1" sh -c "cat /usr/local/share/$(basename '"$CA_BUNDLE"') > /etc/ssl/certs/ca-certificates.crt && printf \"[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n\" > /etc/pip.conf"' \
    bookworm "$TAR" "$DEBIAN_MIRROR" >&2
  ROOTFS_TAG=${ROOTFS}:${key}
  docker import "$TAR" "$ROOTFS_TAG" >/dev/null
  say "stand-in ${STANDIN} (Ray ${RAY_VERSION} from PyPI)"
  docker build -f docker/standin/Dockerfile --build-arg ROOTFS="$ROOTFS_TAG" \
    --build-arg RAY_VERSION="$RAY_VERSION" --label inferkit.standin.key="$key" \
    --label inferkit.built-by=scripts/images.sh -t "$STANDIN" docker/standin >&2
  prune
  echo "$STANDIN"
}

job() {
  local flavor=${1:-cpu} tag
  case "$flavor" in cpu|gpu) ;; *) echo "usage: scripts/images.sh job cpu|gpu" >&2; exit 2 ;; esac
  standin >/dev/null
  tag=inferkit-standin/inferkit:${flavor}
  say "job image ${tag} (docker/Dockerfile, FLAVOR=${flavor}, on ${STANDIN_REPO}, torch from PyPI)"
  docker build -f docker/Dockerfile --build-arg FLAVOR="$flavor" --build-arg RAY_IMAGE="$STANDIN_REPO" \
    --build-arg WHEEL_BUILDER="$STANDIN" --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
    --label inferkit.built-by=scripts/images.sh -t "$tag" . >&2
  prune
  echo "$tag"
}

case "${1:-}" in
  standin) standin ;;
  job) job "${2:-cpu}" ;;
  *) sed -n '2,11p' "$0" >&2; exit 2 ;;
esac
