#!/usr/bin/env python3
"""Builds a single-layer container image as a docker-archive tarball.

No Docker engine or registry exists here, so images of our binaries are
assembled from files on this machine and imported into containerd with
`ctr images import`. With --with-libs the binary's shared libraries (as
`ldd` reports them) go in too, so a glibc-linked binary runs from scratch.
"""

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile


def shared_libraries(binary):
    """Absolute paths of the libraries the dynamic loader maps for binary."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        # Static binaries make ldd fail: they need nothing.
        return []
    libs = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.append(target)
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def add_dir(tar, path, seen):
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d and d not in seen:
            seen.add(d)
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)


def add_file(tar, src, dst, seen):
    dst = dst.strip("/")
    add_dir(tar, dst.rsplit("/", 1)[0] if "/" in dst else "", seen)
    with open(src, "rb") as f:
        data = f.read()
    info = tarfile.TarInfo(dst)
    info.size = len(data)
    info.mode = 0o755
    tar.addfile(info, io.BytesIO(data))


def build_layer(files, with_libs):
    buf = io.BytesIO()
    seen = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # Writable scratch space for programs that expect /tmp.
        add_dir(tar, "tmp", seen)
        added = set()
        for src, dst in files:
            add_file(tar, src, dst, seen)
            if with_libs:
                for lib in shared_libraries(src):
                    if lib not in added:
                        added.add(lib)
                        add_file(tar, lib, lib, seen)
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ref", required=True, help="image reference, e.g. voicecluster.local/operator:dev")
    p.add_argument("--entrypoint", required=True, help="path of the program inside the image")
    p.add_argument("--user", default="65532:65532")
    p.add_argument("--with-libs", action="store_true", help="add the shared libraries ldd reports")
    p.add_argument("--out", required=True)
    p.add_argument("files", nargs="+", help="SRC:DST pairs")
    a = p.parse_args()

    files = []
    for spec in a.files:
        src, sep, dst = spec.partition(":")
        if not sep:
            sys.exit(f"mkimage: expected SRC:DST, got {spec!r}")
        files.append((src, dst))

    layer = build_layer(files, a.with_libs)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [a.entrypoint],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "User": a.user,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [a.ref], "Layers": [layer_name]}]

    with tarfile.open(a.out, "w") as out:
        for name, data in (
            (layer_name, layer),
            (config_name, config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            out.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
