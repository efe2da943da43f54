# etcd, kube-apiserver, kube-controller-manager and kube-scheduler. Sourced.

PKI="$VC_STATE/pki"

start_etcd() {
  mkdir -p "$ETCD_DATA"
  mountpoint -q "$ETCD_DATA" || mount -t tmpfs -o size=2g tmpfs "$ETCD_DATA"
  start_daemon etcd etcd --name vc --data-dir "$ETCD_DATA/data" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster vc=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
    --quota-backend-bytes 1073741824 --log-level warn
  wait_daemon etcd 60 curl -sf http://127.0.0.1:2381/health
}

start_apiserver() {
  start_daemon kube-apiserver kube-apiserver \
    --etcd-servers http://127.0.0.1:2379 \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --allow-privileged=true --profiling=false --v=1
  wait_daemon kube-apiserver 120 kubectl get --raw /readyz
}

start_controllers() {
  start_daemon kube-controller-manager kube-controller-manager \
    --kubeconfig "$VC_STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$VC_STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$VC_STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
    --use-service-account-credentials=true --allocate-node-cidrs=false \
    --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false --v=1
  start_daemon kube-scheduler kube-scheduler \
    --kubeconfig "$VC_STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$VC_STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$VC_STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false --v=1
  wait_daemon kube-controller-manager 60 curl -skf https://127.0.0.1:10257/healthz
  wait_daemon kube-scheduler 60 curl -skf https://127.0.0.1:10259/healthz
}
