#!/usr/bin/env bash
# A real Kubernetes control plane for inferkit's tests, without Docker or a kubelet:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (fake nodes whose pods "run"
# without containers) and the KubeRay operator, on loopback ports of this machine.
#
#   scripts/controlplane.sh build          build the binaries once (cached outside the repository)
#   scripts/controlplane.sh up   [DIR]     start everything; DIR holds state, logs and the admin kubeconfig
#   scripts/controlplane.sh env  [DIR]     print `export KUBECONFIG=...` (and the other addresses) for a shell
#   scripts/controlplane.sh down [DIR]     stop what `up` started there and remove DIR
#   scripts/controlplane.sh restart-operator DIR [GATES]   the operator again with --feature-gates=GATES
#                                          (e.g. RayJobDeletionPolicy=true; INFERKIT_KUBERAY_FEATURE_GATES for `up`)
#
# INFERKIT_NODE=real (for `build` and `up`): one real node instead of the kwok nodes (scripts/node.sh):
# pods run in containers, from the Docker images named in INFERKIT_NODE_IMAGES (space-separated), loaded into
# the node's containerd. Head Services are then real, and the operator resolves them through the node's
# cluster DNS.
#
# Versions: Kubernetes, etcd and kwok are pinned by the wrapper module scripts/controlplane/go.mod (read
# from there); the KubeRay operator here. Binaries go to $INFERKIT_CONTROLPLANE_CACHE (default
# ~/.cache/inferkit-tests/controlplane)/<component>-<version>/ and are reused when present. Builds run under
# `nice -n 19` (INFERKIT_CONTROLPLANE_GOFLAGS, default -p=2: niced, the builds only take idle cycles).
#
# The pod network: every pod IP the API server dials (its service and pod proxy, kubelet calls) goes through
# an HTTP CONNECT proxy on a unix socket (the API server's egress selector, scripts/controlplane/pod_network.py)
# that only ever connects to $POD_HOST (a loopback address), keeping the port: a `ray start --head` whose
# dashboard listens on $POD_HOST:8265 stands in for every head pod. The operator reaches a head at
# <service>.<namespace>.svc.$CLUSTER_DOMAIN:8265 (utils.FetchHeadServiceURL in ray-operator/controllers/ray/
# utils/util.go); no such name resolves to loopback without editing /etc/hosts (Go's resolver reads
# /etc/hosts and DNS only; *.localhost is special only through libc's nss-myhostname), so CLUSTER_DOMAIN
# ends in "@$POD_HOST": the operator's http://<name>@$POD_HOST:8265 sends the name as a user name and dials
# the loopback head.
set -euo pipefail
NODE_MODE=${INFERKIT_NODE:-kwok}
case "$NODE_MODE" in kwok|real) ;; *) echo "controlplane: INFERKIT_NODE must be kwok or real, not '$NODE_MODE'" >&2; exit 2 ;; esac

# The newest operator the Go module proxy serves (v1.5.0 today; take v1.7.0 the day it is served). Its CRDs
# come from the same module (config/crd/bases), so the API server holds the schema that operator knows.
KUBERAY_VERSION=v1.5.0
KUBERAY_MODULE=github.com/ray-project/kuberay/ray-operator
POD_HOST=${INFERKIT_POD_HOST:-127.0.0.2}
# Every pod address is dialled at POD_HOST (pod_network.py) and the operator's head URL ends in it: it must be
# this machine's loopback, never an address elsewhere.
if ! [[ $POD_HOST =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]]; then
    echo "controlplane: INFERKIT_POD_HOST must be a loopback address (127.x.y.z), not '$POD_HOST'" >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODULE=$HERE/controlplane
# shellcheck source=node.sh
source "$HERE/node.sh"
REPO=$(dirname "$HERE")
# The tests' one cache root (INFERKIT_TEST_CACHE, README "Running the tests"), keyed by component and version.
CACHE=${INFERKIT_CONTROLPLANE_CACHE:-${INFERKIT_TEST_CACHE:-$HOME/.cache/inferkit-tests}/controlplane}
export GOFLAGS="-buildvcs=false ${INFERKIT_CONTROLPLANE_GOFLAGS:--p=2}"

die() { echo "controlplane: $*" >&2; exit 1; }
# Exit 3: something to build from cannot be had here (no Go, no module proxy, no operator source); the
# tests skip on it with this line as the reason.
unavailable() { echo "controlplane: $*" >&2; exit 3; }
note() { echo "controlplane: $*" >&2; }

module_version() { (cd "$MODULE" && go list -m -f '{{.Version}}' "$1"); }

# component name, version, binary -> its cached path
cached() { echo "$CACHE/$1-$2/$3"; }

build_tool() {  # component version package: go build a tool of the wrapper module
    local out; out=$(cached "$1" "$2" "$1")
    [ -x "$out" ] && return 0
    note "building $1 $2 ($3)"
    local start=$SECONDS
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    (cd "$MODULE" && nice -n 19 go build -trimpath -ldflags='-s -w' -o "$out.tmp/$1" "$3")
    mv "$out.tmp/$1" "$out" && rmdir "$out.tmp"
    note "built $1 in $((SECONDS - start)) s"
}

kwok_stages() {  # kwok's own stages (a node is Ready at once, a pod Running and Ready at once, a Job's pod
    # then Succeeded, a deleted pod goes), kept beside its binary: kwok has no default stages
    local out; out=$(cached kwok "$KWOK" stages.yaml)
    [ -f "$out" ] && return 0
    local dir; dir=$(cd "$MODULE" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage
    for stage in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready pod/fast/pod-complete \
                 pod/fast/pod-delete; do
        echo "---"; cat "$dir/$stage.yaml"
    done > "$out.tmp"
    mv "$out.tmp" "$out"
}

kuberay_source() {  # the operator module's source folder at $KUBERAY_VERSION, from the Go module proxy
    local dir log
    log=$(cd "$MODULE" && GOFLAGS=-mod=mod go mod download -json "$KUBERAY_MODULE@$KUBERAY_VERSION" 2>&1) \
        || unavailable "the Go module proxy does not serve $KUBERAY_MODULE@$KUBERAY_VERSION:" \
                       "$(sed -n 's/^[[:space:]]*"Error": "\(.*\)",\{0,1\}$/\1/p' <<< "$log" | head -n 1)"
    dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<< "$log")
    [ -f "$dir/go.mod" ] || unavailable "no source folder for $KUBERAY_MODULE@$KUBERAY_VERSION in the Go module cache"
    echo "$dir"
}

build_operator() {  # built as its own module (its go.mod has no replace directives), with its own go.sum
    local out; out=$(cached kuberay-operator "$KUBERAY_VERSION" kuberay-operator)
    local crds; crds=$(dirname "$out")/crds
    [ -x "$out" ] && [ -f "$crds/ray.io_rayservices.yaml" ] && return 0
    local source; source=$(kuberay_source)
    note "building kuberay-operator $KUBERAY_VERSION from $source"
    local start=$SECONDS
    mkdir -p "$(dirname "$out")"
    (cd "$source" && nice -n 19 go build -trimpath -ldflags='-s -w' -o "$out.tmp" .)
    # Its CRDs (RayJob, RayCluster and RayService: the manager will not start without all three), from the
    # same module, so the API server validates against the schema this operator was built with.
    rm -rf "$crds.tmp" && mkdir -p "$crds.tmp"
    cp "$source"/config/crd/bases/ray.io_{rayjobs,rayclusters,rayservices}.yaml "$crds.tmp/"
    rm -rf "$crds" && mv "$crds.tmp" "$crds"
    mv "$out.tmp" "$out"
    note "built kuberay-operator in $((SECONDS - start)) s"
}

build() {
    command -v go >/dev/null || unavailable "no Go toolchain on PATH (go 1.26 or newer builds the control plane)"
    local log
    K8S=$(module_version k8s.io/kubernetes 2>/dev/null) && ETCD=$(module_version go.etcd.io/etcd/server/v3) \
        && KWOK=$(module_version sigs.k8s.io/kwok) \
        || { log=$(cd "$MODULE" && go mod download 2>&1) \
             || unavailable "cannot download the Go modules of $MODULE (is the Go module proxy reachable?): ${log%%$'\n'*}"
             K8S=$(module_version k8s.io/kubernetes) ETCD=$(module_version go.etcd.io/etcd/server/v3)
             KWOK=$(module_version sigs.k8s.io/kwok); }
    local wanted=(etcd-$ETCD/etcd kube-apiserver-$K8S/kube-apiserver kube-controller-manager-$K8S/kube-controller-manager
                  kube-scheduler-$K8S/kube-scheduler kubectl-$K8S/kubectl kwok-$KWOK/kwok kwok-$KWOK/stages.yaml
                  kuberay-operator-$KUBERAY_VERSION/kuberay-operator kuberay-operator-$KUBERAY_VERSION/crds/ray.io_rayservices.yaml)
    [ "$NODE_MODE" = kwok ] || wanted+=(kubelet-$K8S/kubelet kube-proxy-$K8S/kube-proxy
                                        coredns-$COREDNS_VERSION/coredns pause-$K8S/pause)
    local have=0 path
    for path in "${wanted[@]}"; do [ -e "$CACHE/$path" ] && have=$((have + 1)); done
    [ "$have" -eq "${#wanted[@]}" ] && return 0  # all cached: no module proxy needed
    log=$(cd "$MODULE" && go mod download 2>&1) \
        || unavailable "cannot download the Go modules of $MODULE (is the Go module proxy reachable?): ${log%%$'\n'*}"
    build_tool etcd "$ETCD" go.etcd.io/etcd/server/v3
    build_tool kube-apiserver "$K8S" k8s.io/kubernetes/cmd/kube-apiserver
    build_tool kube-controller-manager "$K8S" k8s.io/kubernetes/cmd/kube-controller-manager
    build_tool kube-scheduler "$K8S" k8s.io/kubernetes/cmd/kube-scheduler
    build_tool kubectl "$K8S" k8s.io/kubernetes/cmd/kubectl
    build_tool kwok "$KWOK" sigs.k8s.io/kwok/cmd/kwok
    kwok_stages
    build_operator
    if [ "$NODE_MODE" = real ]; then node_build; fi
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() {  # name command...: run in its own process group, log to $STATE/name.log, remember its pid
    local name=$1; shift
    setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &
    echo "$! $name" >> "$STATE/pids"
}

wait_for() {  # what seconds command...: poll until the command succeeds
    local what=$1 limit=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || { tail -n 30 "$STATE"/*.log >&2 || true; stop_processes
                                        die "$what did not come up in $limit s (logs in $STATE)"; }
        sleep 0.5
    done
}

kubectl_() { "$(cached kubectl "$K8S" kubectl)" --kubeconfig "$STATE/kubeconfig" "$@"; }

write_files() {
    mkdir -p "$STATE/pki"
    openssl genrsa -out "$STATE/pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$STATE/pki/sa.key" -pubout -out "$STATE/pki/sa.pub" 2>/dev/null
    TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    echo "$TOKEN,inferkit-admin,inferkit-admin,system:masters" > "$STATE/pki/tokens.csv"
    cat > "$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: controlplane
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$STATE/pki/apiserver.crt"}
users:
- name: admin
  user: {token: "$TOKEN"}
contexts:
- name: controlplane
  context: {cluster: controlplane, user: admin, namespace: default}
current-context: controlplane
EOF
    chmod 600 "$STATE/kubeconfig"  # apiserver.crt: the self-signed serving certificate and its CA, which
    # kube-apiserver writes into --cert-dir as it starts (for 127.0.0.1)
    cat > "$STATE/egress.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds: {udsName: "$STATE/pod-network.sock"}
EOF
}

nodes() {  # the kwok node pools: 2 CPU nodes, 2 GPU nodes of one GPU each (nvidia.com/gpu, the GPU taint, an
    # accelerator label). No node lifecycle controller runs, so no not-ready taint is added (nor would be lifted)
    local name pool cpu memory gpu
    for spec in cpu-1:cpu:16:64Gi:0 cpu-2:cpu:16:64Gi:0 gpu-1:gpu:16:64Gi:1 gpu-2:gpu:16:64Gi:1; do
        IFS=: read -r name pool cpu memory gpu <<< "$spec"
        local capacity="{cpu: \"$cpu\", memory: $memory, pods: \"110\"}" labels="inferkit.io/pool: $pool" taints="[]"
        if [ "$gpu" != 0 ]; then
            capacity="{cpu: \"$cpu\", memory: $memory, pods: \"110\", nvidia.com/gpu: \"$gpu\"}"
            labels="$labels, cloud.google.com/gke-accelerator: nvidia-l4, nvidia.com/gpu.product: NVIDIA-L4"
            taints="[{key: nvidia.com/gpu, value: present, effect: NoSchedule}]"
        fi
        cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-$name
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {type: kwok, kubernetes.io/hostname: kwok-$name, kubernetes.io/os: linux, kubernetes.io/arch: amd64, $labels}
spec:
  taints: $taints
status:
  capacity: $capacity
  allocatable: $capacity
EOF
    done
}

up() {
    [ ! -f "$STATE/pids" ] || die "$STATE already holds a control plane; run: $0 down $STATE"
    build
    local began=$SECONDS
    # What a failed `up` left (an etcd folder holding a half-made cluster, old certificates) starts over.
    rm -rf "$STATE/etcd" "$STATE/pki" && mkdir -p "$STATE"
    # A failed `up` leaves nothing running; cleared once everything is up.
    trap 'stop_processes; if [ "$NODE_MODE" = real ]; then node_down; fi' EXIT
    echo "$POD_HOST" > "$STATE/pod-host"
    echo "$NODE_MODE" > "$STATE/node-mode"
    echo "$K8S" > "$STATE/k8s-version"  # for `down`, which then needs no Go
    local etcd_port etcd_peer
    etcd_port=$(free_port) etcd_peer=$(free_port) API_PORT=$(free_port)
    write_files
    local pods=""; [ "$NODE_MODE" = kwok ] || pods=$NODE_POD_CIDR
    start pod-network python3 "$MODULE/pod_network.py" "$STATE/pod-network.sock" "$POD_HOST" $pods
    start etcd "$(cached etcd "$ETCD" etcd)" --data-dir "$STATE/etcd" --unsafe-no-fsync \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-cluster "default=http://127.0.0.1:$etcd_peer" --listen-metrics-urls ""
    start kube-apiserver "$(cached kube-apiserver "$K8S" kube-apiserver)" \
        --etcd-servers "http://127.0.0.1:$etcd_port" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
        --secure-port "$API_PORT" --cert-dir "$STATE/pki" --token-auth-file "$STATE/pki/tokens.csv" \
        --authorization-mode RBAC --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$STATE/pki/sa.pub" --service-account-signing-key-file "$STATE/pki/sa.key" \
        --service-cluster-ip-range "$NODE_SERVICE_CIDR" --endpoint-reconciler-type none \
        --egress-selector-config-file "$STATE/egress.yaml" --profiling=false \
        --disable-admission-plugins TaintNodesByCondition
    wait_for kube-apiserver 180 kubectl_ get --raw /readyz
    start kube-controller-manager "$(cached kube-controller-manager "$K8S" kube-controller-manager)" \
        --kubeconfig "$STATE/kubeconfig" --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 \
        --service-account-private-key-file "$STATE/pki/sa.key" --use-service-account-credentials=false \
        --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-persistentvolume-binder'
    start kube-scheduler "$(cached kube-scheduler "$K8S" kube-scheduler)" \
        --kubeconfig "$STATE/kubeconfig" --leader-elect=false --bind-address 127.0.0.1 --secure-port 0
    if [ "$NODE_MODE" = kwok ]; then
        start kwok "$(cached kwok "$KWOK" kwok)" --kubeconfig "$STATE/kubeconfig" \
            --config "$(cached kwok "$KWOK" stages.yaml)" \
            --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake --server-address "127.0.0.1:$(free_port)"
    fi
    kubectl_ apply --server-side -f "$(cached kuberay-operator "$KUBERAY_VERSION" crds)" >/dev/null
    wait_for "the KubeRay CRDs" 180 kubectl_ wait --for condition=Established --timeout 10s \
        crd/rayjobs.ray.io crd/rayclusters.ray.io crd/rayservices.ray.io
    if [ "$NODE_MODE" = kwok ]; then nodes | kubectl_ apply -f - >/dev/null; else node_up; fi
    start_operator "${INFERKIT_KUBERAY_FEATURE_GATES:-}"
    wait_for "the default service account" 180 kubectl_ get serviceaccount default
    wait_for "the nodes" 180 kubectl_ wait --for condition=Ready --timeout 10s node --all
    wait_for_operator
    trap - EXIT
    note "up in $((SECONDS - began)) s: $STATE/kubeconfig"
}

start_operator() {  # feature gates (e.g. RayJobDeletionPolicy=true; "" = the version's defaults)
    local domain="cluster.local@$POD_HOST" resolver=()
    if [ "$NODE_MODE" = real ]; then  # real head Services, named through the node's DNS: the operator runs in a
        # mount namespace of its own whose /etc/resolv.conf names CoreDNS (Go's resolver reads only that file)
        domain=cluster.local
        resolver=(unshare --mount --propagation private sh -c \
                  'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$STATE/node/operator-resolv.conf")
        printf 'nameserver %s\nsearch svc.cluster.local cluster.local\n' "$NODE_GATEWAY" > "$STATE/node/operator-resolv.conf"
    fi
    CLUSTER_DOMAIN=$domain KUBECONFIG="$STATE/kubeconfig" \
        start kuberay-operator "${resolver[@]}" "$(cached kuberay-operator "$KUBERAY_VERSION" kuberay-operator)" \
        --metrics-addr "127.0.0.1:$(free_port)" --health-probe-bind-address "127.0.0.1:$(free_port)" \
        --enable-leader-election=false ${1:+--feature-gates="$1"}
}

wait_for_operator() { wait_for "the KubeRay operator" 180 grep -q "Starting workers" "$STATE/kuberay-operator.log"; }

restart_operator() {  # the operator again, with other feature gates, in a running control plane
    [ -f "$STATE/pids" ] && [ -f "$STATE/pod-host" ] || die "no control plane in $STATE (run: $0 up $STATE)"
    POD_HOST=$(cat "$STATE/pod-host") NODE_MODE=$(cat "$STATE/node-mode" 2>/dev/null || echo kwok)
    grep -q ' kuberay-operator$' "$STATE/pids" || die "no operator in $STATE/pids"
    stop_named kuberay-operator
    # The old log aside, so that its "Starting workers" is not taken for the new operator's.
    mv "$STATE/kuberay-operator.log" "$STATE/kuberay-operator.log.$(date +%s%N)"
    start_operator "$1"
    local deadline=$((SECONDS + 180))  # a failure here leaves the rest of the control plane running
    until grep -q "Starting workers" "$STATE/kuberay-operator.log" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || die "the KubeRay operator did not come up again in 180 s (log:" \
                                          "$STATE/kuberay-operator.log)"
        sleep 0.5
    done
    note "operator restarted${1:+ with --feature-gates=$1}"
}

stop_named() {  # name: stop that one process group of $STATE/pids and forget it
    local pid name
    read -r pid name < <(grep " $1\$" "$STATE/pids") || return 0
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    grep -v " $1\$" "$STATE/pids" > "$STATE/pids.tmp" || true
    mv "$STATE/pids.tmp" "$STATE/pids"
}

stop_processes() {
    [ -f "$STATE/pids" ] || return 0
    local pid name
    # The operator and controllers first, then the API server, then etcd: the reverse of the start.
    tac "$STATE/pids" | while read -r pid name; do
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    rm -f "$STATE/pids"
}

down() {
    if [ "$(cat "$STATE/node-mode" 2>/dev/null)" = real ] && [ -f "$STATE/pids" ]; then
        K8S=$(cat "$STATE/k8s-version")
        # Nothing may make pods again (the operator, the Job controller), then the kubelet stops its pods while
        # it runs (their network namespaces and iptables rules go with them); what it has not stopped in time,
        # containerd kills.
        stop_named kuberay-operator
        stop_named kube-controller-manager
        kubectl_ delete pods --all --all-namespaces --grace-period 1 --timeout 60s >/dev/null 2>&1 || true
        node_leftovers
        node_forget_images
        stop_processes
        node_down
    fi
    stop_processes
    rm -rf "$STATE"
}

env_() {
    [ -f "$STATE/kubeconfig" ] || die "no control plane in $STATE (run: $0 up $STATE)"
    POD_HOST=$(cat "$STATE/pod-host")
    echo "export KUBECONFIG=$STATE/kubeconfig"
    echo "export INFERKIT_POD_HOST=$POD_HOST"
    echo "export PATH=$CACHE/kubectl-$K8S:\$PATH"
}

command=${1:-}
STATE=${2:-${INFERKIT_CONTROLPLANE_DIR:-/tmp/inferkit-controlplane}}
case "$command" in
    build) build ;;
    up) up ;;
    down) down ;;
    env) K8S=$(module_version k8s.io/kubernetes); env_ ;;
    restart-operator) restart_operator "${3:-}" ;;
    *) die "usage: $0 build|up|down|env [STATE_DIR] | restart-operator STATE_DIR [FEATURE_GATES]" ;;
esac
