# Fake nodes managed by kwok. Sourced.
# Their addresses come from documentation ranges and are routed into a
# blackhole by setup_network: they are data for placement tests, nothing more.

write_kwok_config() {
  local stages="$BIN_DIR/kwok-stages" f
  {
    cat <<YAML
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  manageAllNodes: false
  manageNodesWithAnnotationSelector: kwok.x-k8s.io/node=fake
  cidr: $KWOK_POD_CIDR
  nodeLeaseDurationSeconds: 40
  # A config file replaces kwok's defaults, zero parallelism included.
  nodeLeaseParallelism: 4
  nodePlayStageParallelism: 4
  podPlayStageParallelism: 4
  podsOnNodeSyncParallelism: 4
YAML
    # kwok exits with "no stages found" unless it is given its Stage objects.
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
      pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      echo "---"
      cat "$stages/$f"
    done
  } | write_if_changed "$VC_STATE/config/kwok.yaml"
}

start_kwok() {
  write_kwok_config
  start_daemon kwok kwok --kubeconfig "$VC_STATE/admin.kubeconfig" --config "$VC_STATE/config/kwok.yaml"
  local entry name facing internal external
  for entry in "${KWOK_NODES[@]}"; do
    read -r name facing internal external <<<"$entry"
    {
      cat <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
YAML
      # Like the real node, internet-facing nodes name their public
      # address in an annotation too (publicAddress.source NodeAnnotation).
      if [[ $external != - ]]; then echo "    voicecluster.io/public-address: \"$external\""; fi
      cat <<YAML
  labels:
    type: kwok
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    $INTERNET_FACING_LABEL: "$facing"
# kwok's node-initialize stage rewrites the addresses unless both an
# InternalIP and a Hostname are present.
status:
  addresses:
  - {type: InternalIP, address: $internal}
  - {type: Hostname, address: $name}
YAML
      if [[ $external != - ]]; then echo "  - {type: ExternalIP, address: $external}"; fi
    } | kubectl apply -f - >/dev/null
  done
  wait_daemon kwok 60 kubectl wait --for=condition=Ready node -l type=kwok --timeout=2s
}
