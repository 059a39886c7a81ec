#!/usr/bin/env bash
# Packs what a GPU host lacks for tests/gpu/e2e.sh into one tarball: envbox (release build),
# containerd, its runc shim, runc, the CNI plugins envbox uses and a static busybox, all from
# this machine (Debian 12, the packages scripts/deps.sh installs).
#
# Usage: tests/gpu/pack.sh OUT_DIR      writes OUT_DIR/envbox-gpu-tools.tar.gz
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: $0 OUT_DIR}
mkdir -p "$out"

envbox=$(cargo build --locked --release --manifest-path "$repo/Cargo.toml" --bin envbox \
    --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/cni"
for tool in containerd containerd-shim-runc-v2 runc; do
    path=$(command -v "$tool") || { echo "pack.sh: no $tool here (scripts/deps.sh demo)" >&2; exit 1; }
    cp "$path" "$stage/bin/"
done
cp "$envbox" "$stage/bin/envbox"
cp /bin/busybox "$stage/bin/busybox"
for plugin in bridge host-local portmap; do
    cp "/usr/lib/cni/$plugin" "$stage/cni/"
done
tar -C "$stage" -czf "$out/envbox-gpu-tools.tar.gz" bin cni
ls -l "$out/envbox-gpu-tools.tar.gz"
