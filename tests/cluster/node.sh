# The real node: its network, containerd, kubelet and kube-proxy. Sourced.

PKI="$VC_STATE/pki"
CONTAINERD_SOCK=/run/voicecluster/containerd.sock
POD_BRIDGE=vcpods0
# Addresses that only exist as data (kwok node and pod addresses): routed
# into a blackhole so that a bug can never send a packet towards them.
fake_ranges() {
  local entry name facing internal external
  echo "$KWOK_POD_CIDR"
  for entry in "${KWOK_NODES[@]}"; do
    read -r name facing internal external <<<"$entry"
    echo "$internal/32"
    [[ $external == - ]] || echo "$external/32"
  done
}

setup_network() {
  ip link show "$NODE_IFACE" >/dev/null 2>&1 || ip link add "$NODE_IFACE" type bridge
  ip addr replace "$NODE_IP/24" dev "$NODE_IFACE"
  ip link set "$NODE_IFACE" up
  # ClusterIPs without a kube-proxy rule stay on this machine.
  ip route replace "$SERVICE_CIDR" dev "$NODE_IFACE"
  for r in $(fake_ranges); do ip route replace blackhole "$r"; done
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
    net.bridge.bridge-nf-call-ip6tables=1
  # Pods may talk to each other and to this machine, never beyond it.
  iptables -C FORWARD -s "$POD_CIDR" ! -o "$POD_BRIDGE" -j REJECT -m comment --comment voicecluster-no-egress 2>/dev/null ||
    iptables -I FORWARD 1 -s "$POD_CIDR" ! -o "$POD_BRIDGE" -j REJECT -m comment --comment voicecluster-no-egress
}

write_node_configs() {
  local cfg="$VC_STATE/config"
  mkdir -p "$cfg" "$VC_STATE/cni/net.d" /run/voicecluster
  write_if_changed "$cfg/containerd.toml" <<TOML
version = 2
root = "$VC_STATE/containerd"
state = "/run/voicecluster/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  enable_unprivileged_ports = true
  # This machine refuses negative oom_score_adj values even to root; the
  # kubelet asks for them (-998 for sandboxes), so clamp to containerd's own.
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
    conf_dir = "$VC_STATE/cni/net.d"
TOML
  write_if_changed "$VC_STATE/cni/net.d/10-voicecluster.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "voicecluster",
  "plugins": [
    {"type": "bridge", "bridge": "$POD_BRIDGE", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$VC_STATE/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  # Pods never see the machine's own resolver, which is off this machine.
  echo "nameserver $CLUSTER_DNS_IP" | write_if_changed "$cfg/resolv.conf"
  write_if_changed "$cfg/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS_IP]
resolvConf: $cfg/resolv.conf
# Our images are imported, never pulled: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
maxPods: 110
YAML
  write_if_changed "$cfg/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $VC_STATE/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
conntrack: {maxPerCore: 0}
YAML
}

start_containerd() {
  start_daemon containerd containerd --config "$VC_STATE/config/containerd.toml"
  wait_daemon containerd 30 ctr --address "$CONTAINERD_SOCK" version
}

start_kubelet() {
  start_daemon kubelet kubelet --config "$VC_STATE/config/kubelet.yaml" \
    --kubeconfig "$VC_STATE/kubelet.kubeconfig" --root-dir "$VC_STATE/kubelet" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --node-labels "$INTERNET_FACING_LABEL=true,voicecluster.io/real-node=true" --v=1
  start_daemon kube-proxy kube-proxy --config "$VC_STATE/config/kube-proxy.yaml"
  wait_daemon kubelet 90 kubectl get node "$NODE_NAME"
  # The real node's public address is its address on the node interface.
  kubectl annotate --overwrite node "$NODE_NAME" "voicecluster.io/public-address=$NODE_IP" >/dev/null
  wait_daemon kubelet 120 kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
}
