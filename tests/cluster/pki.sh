#!/usr/bin/env bash
# Creates the cluster's CA, X.509 v3 certificates and kubeconfigs under
# $VC_STATE/pki. Kept across `down`/`up` so kubeconfigs stay valid; `reset`
# removes them.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PKI="$VC_STATE/pki"

# cert NAME CN ORG SANS EKU: key + certificate signed by the cluster CA.
cert() {
  local name=$1 cn=$2 org=$3 sans=$4 eku=$5
  [[ -f $PKI/$name.crt ]] && return
  local subj="/CN=$cn"
  [[ -n $org ]] && subj="/O=$org$subj"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n $sans ]] && echo "subjectAltName=$sans"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# kubeconfig FILE CERTNAME: a kubeconfig that authenticates with a client cert.
kubeconfig() {
  local file=$1 name=$2
  cat >"$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: voicecluster
  cluster:
    certificate-authority: $PKI/ca.crt
    server: https://$NODE_IP:$APISERVER_PORT
users:
- name: $name
  user:
    client-certificate: $PKI/$name.crt
    client-key: $PKI/$name.key
contexts:
- name: voicecluster
  context: {cluster: voicecluster, user: $name}
current-context: voicecluster
KC
}

mkdir -p "$PKI"
chmod 700 "$PKI"
if [[ ! -f $PKI/ca.crt ]]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=voicecluster-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$PKI/ca.crt" 2>/dev/null
fi
service_ip=${SERVICE_CIDR%.*}.1
cert apiserver kube-apiserver "" \
  "IP:127.0.0.1,IP:$NODE_IP,IP:$service_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
  serverAuth
cert admin admin system:masters "" clientAuth
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters "" clientAuth
cert controller-manager system:kube-controller-manager "" "" clientAuth
cert scheduler system:kube-scheduler "" "" clientAuth
cert kube-proxy system:kube-proxy "" "" clientAuth
cert kubelet "system:node:$NODE_NAME" system:nodes "" clientAuth
cert kubelet-serving "$NODE_NAME" "" "IP:$NODE_IP,DNS:$NODE_NAME" serverAuth
[[ -f $PKI/sa.key ]] || openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
[[ -f $PKI/sa.pub ]] || openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

for c in admin controller-manager scheduler kube-proxy kubelet; do
  kubeconfig "$VC_STATE/$c.kubeconfig" "$c"
done
cp "$VC_STATE/admin.kubeconfig" "$KUBECONFIG_PATH.tmp" && mv "$KUBECONFIG_PATH.tmp" "$KUBECONFIG_PATH"
log "pki ready in $PKI, kubeconfig at $KUBECONFIG_PATH"
