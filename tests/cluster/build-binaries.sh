#!/usr/bin/env bash
# Builds the Kubernetes, etcd and kwok binaries from the upstream Go modules
# into $BIN_DIR, once per version. Needs only the Go module proxy.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

BUILD_ROOT="$VC_CACHE/build"
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

stamp_file() { echo "$BIN_DIR/.$1-$2.built"; }

# k8s.io/kubernetes cannot be `go install`ed: its go.mod requires the staging
# modules at v0.0.0 and replaces them with ./staging paths. A wrapper module
# replaces each of them with its published tag instead.
build_kubernetes() {
  local stamp; stamp=$(stamp_file kubernetes "$K8S_VERSION")
  if [[ -f $stamp ]]; then log "kubernetes $K8S_VERSION: cached"; return; fi
  local dir="$BUILD_ROOT/kubernetes-$K8S_VERSION"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  go mod init vcbuild/kubernetes >/dev/null 2>&1
  local moddir
  moddir=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -n $moddir ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
  local staging
  staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$moddir/go.mod")
  [[ -n $staging ]] || die "no staging replaces found in $moddir/go.mod"
  local args=(-require="k8s.io/kubernetes@$K8S_VERSION")
  for m in $staging; do
    if go mod download "$m@$K8S_STAGING_VERSION" >/dev/null 2>&1; then
      args+=(-require="$m@$K8S_STAGING_VERSION" -replace="$m=$m@$K8S_STAGING_VERSION")
    else
      # Some staging modules (the samples) are not served by the proxy; no
      # binary we build imports them, so an empty local module stands in.
      log "  $m@$K8S_STAGING_VERSION not served; using an empty stand-in"
      mkdir -p "unserved/${m#k8s.io/}"
      echo "module $m" >"unserved/${m#k8s.io/}/go.mod"
      args+=(-replace="$m=./unserved/${m#k8s.io/}")
    fi
  done
  go mod edit "${args[@]}"
  local pkgs=()
  for b in "${K8S_BINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  for p in "${pkgs[@]}"; do go get "$p@$K8S_VERSION" >/dev/null; done
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  mkdir -p "$BIN_DIR"
  go build -trimpath -ldflags "$ld" -o "$BIN_DIR/" "${pkgs[@]}"
  touch "$stamp"
}

# etcd's server module has relative replaces as well; same treatment.
build_etcd() {
  local stamp; stamp=$(stamp_file etcd "$ETCD_VERSION")
  if [[ -f $stamp ]]; then log "etcd $ETCD_VERSION: cached"; return; fi
  local dir="$BUILD_ROOT/etcd-$ETCD_VERSION"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  go mod init vcbuild/etcd >/dev/null 2>&1
  local args=(-require="go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  for m in go.etcd.io/etcd/api/v3 go.etcd.io/etcd/client/pkg/v3 go.etcd.io/etcd/client/v3 go.etcd.io/etcd/pkg/v3; do
    args+=(-require="$m@$ETCD_VERSION" -replace="$m=$m@$ETCD_VERSION")
  done
  go mod edit "${args[@]}"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
  mkdir -p "$BIN_DIR"
  go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/etcd" go.etcd.io/etcd/server/v3
  touch "$stamp"
}

# kwok builds with plain `go install`; its default Stage definitions ship
# inside the module and are copied next to the binary.
build_kwok() {
  local stamp; stamp=$(stamp_file kwok "$KWOK_VERSION")
  if [[ -f $stamp ]]; then log "kwok $KWOK_VERSION: cached"; return; fi
  mkdir -p "$BIN_DIR"
  GOBIN="$BIN_DIR" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  local moddir
  moddir=$(cd /tmp && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  rm -rf "$BIN_DIR/kwok-stages" && mkdir -p "$BIN_DIR/kwok-stages"
  cp -r "$moddir/kustomize/stage/." "$BIN_DIR/kwok-stages/"
  chmod -R u+w "$BIN_DIR/kwok-stages"
  touch "$stamp"
}

what=${1:-all}
case $what in
  kubernetes) phase build-kubernetes build_kubernetes ;;
  etcd) phase build-etcd build_etcd ;;
  kwok) phase build-kwok build_kwok ;;
  all)
    phase build-etcd build_etcd
    phase build-kwok build_kwok
    phase build-kubernetes build_kubernetes
    ;;
  *) die "unknown target $what (kubernetes|etcd|kwok|all)" ;;
esac
