# `down`: stop everything `up` started and leave no process, mount, network
# namespace, interface or iptables rule behind. Sourced.

# Pods are removed through the kubelet first, so the CNI plugin releases each
# pod's network namespace and address the normal way.
remove_pods_gracefully() {
  daemon_pid kube-apiserver >/dev/null && daemon_pid kubelet >/dev/null || return 0
  stop_daemon kube-controller-manager
  stop_daemon kube-scheduler
  kubectl delete pods -A --field-selector "spec.nodeName=$NODE_NAME" \
    --grace-period=1 --wait=false >/dev/null 2>&1 || true
  # Stopped sandboxes have had their network torn down; the kubelet removes
  # their containers later, remove_leftover_containers does it now.
  wait_for "pods on $NODE_NAME to stop" 60 \
    bash -c "! ctr --address $CONTAINERD_SOCK -n k8s.io tasks ls 2>/dev/null | grep -q RUNNING" || true
}

# Whatever the kubelet could not remove (it may have died) is removed here.
remove_leftover_containers() {
  daemon_pid containerd >/dev/null || return 0
  local c
  for c in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
  done
  sleep 1
  for c in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io containers ls -q 2>/dev/null); do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
    ctr --address "$CONTAINERD_SOCK" -n k8s.io containers rm "$c" >/dev/null 2>&1 || true
  done
}

kill_shims() {
  local pid
  for pid in $(pgrep -f "containerd-shim.*-address $CONTAINERD_SOCK" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

unmount_state() {
  local m
  # Deepest mounts first.
  for m in $(awk '{print $2}' /proc/mounts | grep -E "^($VC_STATE|/run/voicecluster|$ETCD_DATA)" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
}

remove_netns() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-' || true); do
    ip netns delete "$ns" 2>/dev/null || true
  done
}

remove_network() {
  ip link delete "$POD_BRIDGE" 2>/dev/null || true
  ip link delete "$NODE_IFACE" 2>/dev/null || true
  local r
  for r in $(fake_ranges); do ip route delete blackhole "$r" 2>/dev/null || true; done
  while iptables -D FORWARD -s "$POD_CIDR" ! -o "$POD_BRIDGE" -j REJECT -m comment --comment voicecluster-no-egress 2>/dev/null; do :; done
  remove_chains
  rm -rf "$VC_STATE/cni/ipam"
}

# kube-proxy and kubelet chains (KUBE-*) and the CNI plugins' (CNI-*): only
# ours are touched, the rest of the machine's rules stay as they were.
remove_chains() {
  local ipt table chain
  for ipt in iptables ip6tables; do
    for table in filter nat mangle; do
      { "$ipt-save" -t "$table" 2>/dev/null || true; } | { grep -E -- '^-A .* -j (KUBE|CNI)-' || true; } |
        sed 's/^-A/-D/' | while read -r rule; do
          eval "$ipt -t $table $rule" 2>/dev/null || true
        done
      for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\).*/\1/p'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\).*/\1/p'); do
        "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

# Empty pod cgroups left by killed containers.
remove_pod_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods; do
    [[ -d $d ]] || continue
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

cluster_down() {
  remove_pods_gracefully
  stop_daemon kwok
  stop_daemon kubelet
  stop_daemon kube-proxy
  remove_leftover_containers
  stop_daemon containerd
  kill_shims
  stop_daemon kube-controller-manager
  stop_daemon kube-scheduler
  stop_daemon kube-apiserver
  stop_daemon etcd
  unmount_state
  remove_netns
  remove_network
  remove_pod_cgroups
  rm -rf "$ETCD_DATA" /run/voicecluster
}
