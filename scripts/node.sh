# A real node for the test control plane (sourced by scripts/controlplane.sh when INFERKIT_NODE=real):
# the kubelet and kube-proxy of the control plane's Kubernetes version, a containerd of its own (Debian's,
# apart from Docker's), Debian's CNI plugins, CoreDNS, and a pause image built here. Pods run in real
# containers from images loaded out of this machine's Docker engine.
#
# The network stays on this machine: pods get addresses in $NODE_POD_CIDR on a bridge of their own
# ($NODE_BRIDGE) and routes only to that subnet and the Service range, no default route, and a FORWARD
# rule drops whatever they send elsewhere. Cluster DNS is CoreDNS on the bridge's address, answering
# cluster.local only (no forwarding). Services are kube-proxy's iptables rules.
#
# One node per machine: the bridge, its subnet and the kubelet's port are fixed. It assumes no other
# Kubernetes node on this machine: kube-proxy's --cleanup and the KUBE-* chains `down` removes are
# machine-wide. The kernel settings the kubelet and kube-proxy change are put back by `down`.

NODE_NAME=inferkit-node
NODE_BRIDGE=inferkit0
NODE_POD_CIDR=10.244.0.0/24
NODE_GATEWAY=10.244.0.1
NODE_SERVICE_CIDR=10.96.0.0/16
COREDNS_VERSION=v1.15.0
COREDNS_MODULE=github.com/coredns/coredns
PAUSE_IMAGE=inferkit.local/pause:3.10
# containerd's own root; the images loaded into it are removed by `down` (loading the job image, several GB,
# is the slow part of `up`).
NODE_CACHE=${INFERKIT_NODE_CACHE:-${INFERKIT_TEST_CACHE:-$HOME/.cache/inferkit-tests}/node}

node_missing() {  # what this machine lacks for a real node, one line; nothing when all is there
    local need=() tool
    for tool in containerd containerd-shim-runc-v2 runc ctr iptables conntrack unshare gcc docker; do
        command -v "$tool" >/dev/null || need+=("$tool")
    done
    [ -x /usr/lib/cni/bridge ] || need+=("/usr/lib/cni/bridge (containernetworking-plugins)")
    [ "$(id -u)" = 0 ] || need+=("root")
    [ ${#need[@]} -eq 0 ] || echo "a real node needs ${need[*]}"
    [ ${#need[@]} -gt 0 ] || docker info >/dev/null 2>&1 || echo "a real node needs a running Docker engine (its images)"
}

# What the kubelet (kernel.panic, panic_on_oops, vm.overcommit_memory) and kube-proxy (conntrack limits)
# set on the machine: saved by `up`, put back by `down`.
NODE_SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.conf.all.route_localnet
              net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
              net.netfilter.nf_conntrack_tcp_timeout_close_wait)

node_build() {  # the kubelet and kube-proxy from the wrapper module, CoreDNS as its own module, the pause binary
    local missing; missing=$(node_missing)
    [ -z "$missing" ] || unavailable "$missing"
    build_tool kubelet "$K8S" k8s.io/kubernetes/cmd/kubelet
    build_tool kube-proxy "$K8S" k8s.io/kubernetes/cmd/kube-proxy
    local out; out=$(cached coredns "$COREDNS_VERSION" coredns)
    if [ ! -x "$out" ]; then
        local log dir
        log=$(cd "$MODULE" && GOFLAGS=-mod=mod go mod download -json "$COREDNS_MODULE@$COREDNS_VERSION" 2>&1) \
            || unavailable "the Go module proxy does not serve $COREDNS_MODULE@$COREDNS_VERSION"
        dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<< "$log")
        note "building coredns $COREDNS_VERSION"
        local start=$SECONDS
        mkdir -p "$(dirname "$out")"
        (cd "$dir" && nice -n 19 go build -trimpath -ldflags='-s -w' -o "$out.tmp" .)
        mv "$out.tmp" "$out"
        note "built coredns in $((SECONDS - start)) s"
    fi
    # Kubernetes' own pause (build/pause/linux/pause.c in the k8s.io/kubernetes module), static.
    out=$(cached pause "$K8S" pause)
    if [ ! -x "$out" ]; then
        local source; source=$(cd "$MODULE" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
        mkdir -p "$(dirname "$out")"
        gcc -Os -static -DVERSION="$K8S" -o "$out.tmp" "$source" && strip "$out.tmp" && mv "$out.tmp" "$out"
    fi
}

ctr_() { ctr --address "$STATE/node/containerd.sock" --namespace k8s.io "$@"; }

ctr_ref() {  # an image name as containerd spells it: docker.io/library/x:t, docker.io/a/x:t, host.tld/a/x:t
    local first=${1%%/*}
    if [ "$first" = "$1" ]; then echo "docker.io/library/$1"
    elif [[ $first == *.* || $first == *:* || $first == localhost ]]; then echo "$1"
    else echo "docker.io/$1"; fi
}

node_images() {  # docker image[=alias]...: into containerd's k8s.io namespace, unless already there at the
    # same ID; an alias is another name for it there (the name a ready manifest gives, e.g.)
    local entry image alias id mark
    for entry in "$@"; do
        image=${entry%%=*} alias=${entry#*=}
        [ "$alias" != "$entry" ] || alias=""
        id=$(docker image inspect -f '{{.Id}}' "$image") || die "no image $image in the Docker engine"
        mark="$NODE_CACHE/loaded/$(tr '/:' '__' <<< "$image")"
        if [ "$(cat "$mark" 2>/dev/null)" != "$id" ] || ! ctr_ images ls -q | grep -qxF "$(ctr_ref "$image")"; then
            node_load "$image" "$id" "$mark"
        fi
        [ -z "$alias" ] || ctr_ images tag --force "$(ctr_ref "$image")" "$(ctr_ref "$alias")" >/dev/null
    done
}

node_load() {  # image, its ID, the file that records the ID loaded
    local image=$1 id=$2 mark=$3
    note "loading $image into the node's containerd"
    local start=$SECONDS old manifest
    # The version loaded before goes (the CRI keeps a reference by ID beside the name).
    old=$(cat "$mark" 2>/dev/null || true)
    [ -z "$old" ] || ctr_ images rm "$old" >/dev/null 2>&1 || true
    docker save "$image" | ctr_ images import --all-platforms - >/dev/null
    # Containers start from the unpacked snapshots: the layers' blobs would hold the image's size again.
    manifest=$(ctr_ images ls "name==$(ctr_ref "$image")" | awk 'NR == 2 {print $3}')
    ctr_ content rm $(ctr_ content get "$manifest" \
                      | python3 -c 'import json, sys; print(*(l["digest"] for l in json.load(sys.stdin)["layers"]))') \
        >/dev/null 2>&1 || true
    mkdir -p "$(dirname "$mark")" && echo "$id" > "$mark"
    note "loaded $image in $((SECONDS - start)) s"
}

node_pause_image() {  # the pause binary as an image of its own (docker import of a one-file tar)
    docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 && return 0
    local dir; dir=$(mktemp -d)
    cp "$(cached pause "$K8S" pause)" "$dir/pause"
    tar -C "$dir" -c pause | docker import --change 'ENTRYPOINT ["/pause"]' - "$PAUSE_IMAGE" >/dev/null
    rm -rf "$dir"
}

node_files() {
    local dir=$STATE/node
    mkdir -p "$dir/cni" "$dir/static" "$NODE_CACHE/containerd"
    cat > "$dir/containerd.toml" <<EOF
version = 2
root = "$NODE_CACHE/containerd"
state = "$dir/containerd-state"
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This VM refuses the negative oom_score_adj the CRI asks for: without this, every sandbox fails
  # ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF
    # bridge + host-local: routes to the pod subnet and the Service range only; firewall: accept rules for
    # each pod's traffic in FORWARD (Docker's policy there is DROP); portmap for hostPort.
    cat > "$dir/cni/10-inferkit.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "inferkit", "plugins": [
  {"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$dir/ipam", "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_GATEWAY"}]],
            "routes": [{"dst": "$NODE_SERVICE_CIDR"}]}},
  {"type": "firewall", "backend": "iptables"},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
    cat > "$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# No systemd here: cgroupfs on both sides. This VM has cgroup v1.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$dir/containerd.sock
# Only the API server (through the pod network proxy, on loopback) calls the kubelet.
address: $POD_HOST
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
clusterDNS: [$NODE_GATEWAY]
clusterDomain: cluster.local
resolvConf: $dir/resolv.conf
staticPodPath: $dir/static
# The open-files hard limit here is 20000; the kubelet's default asks for more and fails.
maxOpenFiles: 10000
# This disk is shared with the rest of the machine: no eviction or image GC for its fill level.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
    # The resolv.conf of pods that ask for the node's DNS (dnsPolicy Default): nothing outside answers.
    echo "nameserver $NODE_GATEWAY" > "$dir/resolv.conf"
    cat > "$dir/Corefile" <<EOF
.:53 {
    bind $NODE_GATEWAY
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $STATE/kubeconfig controlplane
        pods insecure
    }
    cache 5
}
EOF
}

node_network() {  # the bridge with its gateway address (CoreDNS binds to it before any pod exists), and the
    # rule that drops what pods send outside their subnet (besides their routes, which lead nowhere else). In
    # mangle: the CNI firewall plugin puts its per-pod ACCEPTs first in filter's FORWARD.
    if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
        ip link add "$NODE_BRIDGE" type bridge
    fi
    ip addr replace "$NODE_GATEWAY/${NODE_POD_CIDR#*/}" dev "$NODE_BRIDGE"
    ip link set "$NODE_BRIDGE" up
    iptables -t mangle -N INFERKIT-NODE 2>/dev/null || iptables -t mangle -F INFERKIT-NODE
    iptables -t mangle -A INFERKIT-NODE -s "$NODE_POD_CIDR" -d "$NODE_POD_CIDR" -j RETURN
    iptables -t mangle -A INFERKIT-NODE -s "$NODE_POD_CIDR" -j DROP
    iptables -t mangle -C FORWARD -j INFERKIT-NODE 2>/dev/null || iptables -t mangle -I FORWARD -j INFERKIT-NODE
}

node_claim() {  # one node per machine: refuse while another control plane's node runs, take over a dead one's
    mkdir -p "$NODE_CACHE"
    exec {lock}>"$NODE_CACHE/owner.lock"
    flock "$lock"
    local owner pid
    owner=$(cat "$NODE_CACHE/owner" 2>/dev/null || true)
    if [ -n "$owner" ] && [ "$owner" != "$STATE" ] && [ -f "$owner/pids" ]; then
        pid=$(awk 'NR == 1 {print $1}' "$owner/pids")
        [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null \
            || die "a real node of $owner runs on this machine (one at a time): $0 down $owner"
    fi
    echo "$STATE" > "$NODE_CACHE/owner"
    flock -u "$lock"
}

node_up() {
    local missing; missing=$(node_missing)
    [ -z "$missing" ] || unavailable "$missing"
    node_claim
    node_files
    [ -f "$STATE/node/sysctls" ] || sysctl -e "${NODE_SYSCTLS[@]}" 2>/dev/null | tr -d ' ' > "$STATE/node/sysctls"
    node_network
    node_pause_image
    start containerd containerd --config "$STATE/node/containerd.toml"
    wait_for containerd 60 ctr_ version
    node_leftovers
    node_images "$PAUSE_IMAGE" ${INFERKIT_NODE_IMAGES:-}
    start coredns "$(cached coredns "$COREDNS_VERSION" coredns)" -conf "$STATE/node/Corefile"
    start kube-proxy "$(cached kube-proxy "$K8S" kube-proxy)" --kubeconfig "$STATE/kubeconfig" \
        --hostname-override "$NODE_NAME" --cluster-cidr "$NODE_POD_CIDR" --proxy-mode iptables \
        --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
        --iptables-localhost-nodeports=false --metrics-bind-address "127.0.0.1:$(free_port)" \
        --healthz-bind-address "127.0.0.1:$(free_port)"
    start kubelet "$(cached kubelet "$K8S" kubelet)" --config "$STATE/node/kubelet.yaml" \
        --kubeconfig "$STATE/kubeconfig" --root-dir "$STATE/node/kubelet" --cert-dir "$STATE/node/kubelet-pki" \
        --hostname-override "$NODE_NAME" --node-labels "inferkit.io/pool=cpu" --v=1
    wait_for "the real node" 180 kubectl_ wait --for condition=Ready --timeout 10s "node/$NODE_NAME"
}

node_leftovers() {  # sandboxes and containers a killed run left in the cached containerd root
    local id
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$id" >/dev/null 2>&1 || true; done
    sleep 0.5
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
    for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
}

node_forget_images() {  # while containerd runs: the loaded images go (several GB; the disk is shared, and Ray
    # warns on every line below 5% free), the pause image stays
    local ref
    for ref in $(ctr_ images ls -q 2>/dev/null | grep -vF "$PAUSE_IMAGE" || true); do
        ctr_ images rm --sync "$ref" >/dev/null 2>&1 || true
    done
    rm -rf "$NODE_CACHE/loaded"
}

node_down() {  # after the processes have stopped: containers, mounts, network namespaces, iptables, bridge
    # Only the node this control plane started (a refused `up` must not tear down another's).
    [ -d "$STATE/node" ] && [ "$(cat "$NODE_CACHE/owner" 2>/dev/null)" = "$STATE" ] || return 0
    # containerd is gone by now; its shims (and the containers of pods not deleted before) are not.
    local pid
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $STATE/node/containerd.sock" || true); do
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    done
    local mount
    for mount in $(awk -v a="$STATE/node/" -v b="$NODE_CACHE/containerd/" \
                       'index($2, a) == 1 || index($2, b) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$mount" 2>/dev/null || true
    done
    "$(cached kube-proxy "$K8S" kube-proxy)" --cleanup >/dev/null 2>&1 || true
    # The kubelet's own chains (the firewall that drops outside traffic to 127/8, its canaries) and
    # kube-proxy's hint, which its --cleanup leaves.
    iptables -D INPUT -j KUBE-FIREWALL 2>/dev/null || true
    iptables -D OUTPUT -j KUBE-FIREWALL 2>/dev/null || true
    local table chain
    for table in filter nat mangle; do
        for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
            iptables -t "$table" -F "$chain" 2>/dev/null && iptables -t "$table" -X "$chain" 2>/dev/null || true
        done
    done
    # The CNI firewall plugin's rules for this node's pods (and admin rules a test put on its subnet), then
    # its chains once they hold no other's.
    local rule rules
    for chain in CNI-FORWARD CNI-ADMIN; do
        rules=$( (iptables -S "$chain" 2>/dev/null || true) | grep -F -- " ${NODE_POD_CIDR%.*}." || true)
        while read -r rule; do
            [ -z "$rule" ] || eval "iptables ${rule/#-A /-D }" 2>/dev/null || true
        done <<< "$rules"
    done
    if iptables -S CNI-FORWARD >/dev/null 2>&1 \
            && [ "$(iptables -S CNI-FORWARD | grep -- '^-A' | grep -vc 'admin overrides' || true)" = 0 ]; then
        while iptables -D FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD 2>/dev/null; do :; done
        iptables -F CNI-FORWARD && iptables -X CNI-FORWARD && iptables -X CNI-ADMIN 2>/dev/null || true
    fi
    # Network namespaces of pods the kubelet did not stop in time: made by this node's containerd.
    local netns
    for netns in $(find /var/run/netns -maxdepth 1 -name 'cni-*' -newer "$STATE/node/containerd.toml" 2>/dev/null); do
        ip netns delete "$(basename "$netns")" 2>/dev/null || true
    done
    iptables -t mangle -D FORWARD -j INFERKIT-NODE 2>/dev/null || true
    iptables -t mangle -F INFERKIT-NODE 2>/dev/null && iptables -t mangle -X INFERKIT-NODE 2>/dev/null || true
    ip link del "$NODE_BRIDGE" 2>/dev/null || true
    # The kernel settings as they were before `up`.
    local setting
    if [ -f "$STATE/node/sysctls" ]; then
        while read -r setting; do sysctl -q -w "$setting" 2>/dev/null || true; done < "$STATE/node/sysctls"
    fi
    rm -f "$NODE_CACHE/owner"
}
