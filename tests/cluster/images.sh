# Images of our binaries, built from the workspace and imported into the
# node's containerd: no pod ever pulls from a registry. Sourced.

# binary name → image name
OUR_IMAGES=(
  "voicecluster-operator operator"
  "signal-node signal-node"
  "media-node media-node"
)

ctr_k8s() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

import_image() {
  local tar=$1
  ctr_k8s images import "$tar" >/dev/null
}

load_images() {
  local out="$VC_STATE/images" entry bin image
  mkdir -p "$out"
  build_pause
  python3 "$CLUSTER_DIR/images/mkimage.py" --ref "$PAUSE_IMAGE" --entrypoint /pause \
    --user 65535:65535 --out "$out/pause.tar" "$BIN_DIR/pause:/pause"
  import_image "$out/pause.tar"
  log "building the workspace binaries (cargo build --release)"
  (cd "$REPO_ROOT" && cargo build --release --locked --bins -q)
  for entry in "${OUR_IMAGES[@]}"; do
    read -r bin image <<<"$entry"
    python3 "$CLUSTER_DIR/images/mkimage.py" --ref "voicecluster.local/$image:$IMAGE_TAG" \
      --entrypoint "/usr/local/bin/$bin" --with-libs --out "$out/$image.tar" \
      "$REPO_ROOT/target/release/$bin:/usr/local/bin/$bin"
    import_image "$out/$image.tar"
    # The same image under a second name: changing a VoiceCluster to it is
    # an image change, which the rolling upgrade tests make.
    ctr_k8s images tag --force "voicecluster.local/$image:$IMAGE_TAG" \
      "voicecluster.local/$image:$IMAGE_TAG-next" >/dev/null
    log "image voicecluster.local/$image:$IMAGE_TAG (and :$IMAGE_TAG-next) imported"
  done
}
