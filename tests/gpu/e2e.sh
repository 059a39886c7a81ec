#!/usr/bin/env bash
# GPU passthrough end to end, on a host with an NVIDIA GPU (issue 24): `envbox docker` with
# CODER_ADD_GPU=true and CODER_USR_LIB_DIR set as a pod would mount the host's /usr/lib, the
# runc runtime, a workspace image imported from a local OCI layout (`oci:`), and a bootstrap
# script that runs `nvidia-smi -L` inside: it must list a GPU. Then SIGTERM, a clean exit, and
# nothing left behind.
#
# Usage (root):
#   tests/gpu/e2e.sh [--tools TARBALL] [--rehearse]
#     --tools TARBALL  envbox, containerd, the shim, runc, the CNI plugins and busybox from
#                      tests/gpu/pack.sh, for a host that has none of them
#     --rehearse       the same flow without a GPU (no passthrough; the bootstrap only says it
#                      ran): checks the script and the tools on any machine
# Logs go to $OUT when it is set (the device tool's output folder), else to the work dir.
#
# The image: a static busybox, the host's os-release, and the host's glibc (what the driver's
# nvidia-smi links against; the driver tree itself comes in through the passthrough).
set -euo pipefail

tools=""
rehearse=false
while [ $# -gt 0 ]; do
    case "$1" in
        --tools) tools=${2:?--tools needs a tarball}; shift 2 ;;
        --rehearse) rehearse=true; shift ;;
        *) echo "usage: $0 [--tools TARBALL] [--rehearse]" >&2; exit 2 ;;
    esac
done

fail() { echo "e2e.sh: FAILED: $*" >&2; exit 1; }
say() { printf '\n== %s\n' "$*"; }

[ "$(id -u)" = 0 ] || fail "run as root: envbox mounts, starts containerd and makes the network"

nvidia_smi=""
if ! $rehearse; then
    ls /dev/nvidia[0-9]* >/dev/null 2>&1 && [ -e /dev/nvidiactl ] ||
        fail "no NVIDIA GPU on this host (/dev/nvidiactl and /dev/nvidia0.. absent): this script" \
             "proves passthrough on a GPU host; use --rehearse to check it elsewhere"
    for candidate in "$(command -v nvidia-smi || true)" /usr/local/nvidia/bin/nvidia-smi; do
        [ -n "$candidate" ] && [ -x "$candidate" ] && { nvidia_smi=$candidate; break; }
    done
    [ -n "$nvidia_smi" ] || fail "the GPU host has no nvidia-smi (PATH, /usr/local/nvidia/bin)"
fi

work=$(mktemp -d /var/tmp/envbox-gpu-e2e.XXXXXX)
chmod 755 "$work"
logs=${OUT:-$work}
mkdir -p "$logs"
usr_lib="$work/outer-usr-lib"
envbox_pid=""
cleanup() {
    [ -z "$envbox_pid" ] || kill -KILL "$envbox_pid" 2>/dev/null || true
    mountpoint -q "$usr_lib" 2>/dev/null && umount "$usr_lib"
    [ -n "${KEEP:-}" ] || rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

say "Tools"
cni=/usr/lib/cni
if [ -n "$tools" ]; then
    mkdir -p "$work/tools"
    tar -C "$work/tools" -xzf "$tools"
    export PATH="$work/tools/bin:$PATH"
    cni="$work/tools/cni"
fi
envbox=$(command -v envbox || true)
if [ -z "$envbox" ]; then
    repo=$(cd "$(dirname "$0")/../.." && pwd)
    for candidate in "$repo/target/release/envbox" "$repo/target/debug/envbox"; do
        [ -x "$candidate" ] && { envbox=$candidate; break; }
    done
fi
[ -n "$envbox" ] || fail "no envbox binary: build it, or pass --tools from tests/gpu/pack.sh"
for tool in containerd containerd-shim-runc-v2 runc iptables ip; do
    command -v "$tool" >/dev/null ||
        fail "no $tool on this host: pass --tools (tests/gpu/pack.sh packs all but iptables and ip)"
done
for plugin in bridge host-local portmap; do
    [ -x "$cni/$plugin" ] || fail "no CNI plugin $cni/$plugin: pass --tools"
done
busybox=$(command -v busybox || echo /bin/busybox)
[ -x "$busybox" ] || fail "no busybox for the workspace image: pass --tools"
echo "envbox: $envbox ($("$envbox" --version))"
echo "containerd: $(command -v containerd), runc: $(command -v runc), CNI: $cni"

say "Workspace image (OCI layout)"
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,etc,root,tmp,usr/local/nvidia}
cp "$busybox" "$rootfs/bin/busybox"
for applet in sh echo cat ls sleep id hostname; do ln -s busybox "$rootfs/bin/$applet"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\n' > "$rootfs/etc/group"
cp /etc/os-release "$rootfs/etc/os-release" 2>/dev/null || true
chmod 1777 "$rootfs/tmp"
if [ -n "$nvidia_smi" ]; then
    # nvidia-smi's own libraries but the driver's (those come with the passthrough).
    ldd "$nvidia_smi" | awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }' |
        grep -v -e libnvidia -e libcuda | while read -r lib; do
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
        done
fi
layout="$work/layout"
mkdir -p "$layout/blobs/sha256"
tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf "$work/layer.tar" .
layer_digest=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar")
mv "$work/layer.tar" "$layout/blobs/sha256/$layer_digest"
# Moves file $1 into the layout's blobs; sets blob_digest and blob_size.
blob() {
    blob_digest=$(sha256sum "$1" | cut -d' ' -f1)
    blob_size=$(stat -c %s "$1")
    mv "$1" "$layout/blobs/sha256/$blob_digest"
}
printf '%s' "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Env\":[\"PATH=/usr/local/nvidia/bin:/bin\"]},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$layer_digest\"]}}" > "$work/config.json"
blob "$work/config.json"
config_digest=$blob_digest config_size=$blob_size
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$layer_digest\",\"size\":$layer_size}]}" > "$work/manifest.json"
blob "$work/manifest.json"
manifest_digest=$blob_digest manifest_size=$blob_size
printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
printf '%s' "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_digest\",\"size\":$manifest_size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"gpu-e2e\"}}]}" > "$layout/index.json"
echo "oci:$layout:gpu-e2e, $(du -sh "$layout" | cut -f1)"

say "The host's /usr/lib where a pod mounts it"
mkdir -p "$usr_lib"
mount --bind -o ro /usr/lib "$usr_lib"

if $rehearse; then
    check='echo "e2e: rehearsal, no GPU asked for"'
    gpu=false
else
    check='echo "e2e: nvidia-smi -L:"; nvidia-smi -L 2>&1 || echo "e2e: nvidia-smi failed ($?)"'
    gpu=true
fi
bootstrap="$check
trap 'echo \"e2e: agent got SIGTERM\"; exit 0' TERM
echo 'e2e: bootstrap done'
while :; do sleep 1; done"

say "envbox docker (runtime runc, CODER_ADD_GPU=$gpu)"
link=$(ip route show default | awk '{print $5; exit}')
log="$logs/envbox.log"
env -i PATH="$PATH" \
    CODER_INNER_IMAGE="oci:$layout:gpu-e2e" \
    CODER_INNER_USERNAME=root \
    CODER_ADD_GPU="$gpu" \
    CODER_USR_LIB_DIR="$usr_lib" \
    CODER_BOOTSTRAP_SCRIPT="$bootstrap" \
    ENVBOX_RUNTIME=runc \
    ENVBOX_STATE_DIR="$work/state" \
    ENVBOX_RUN_DIR="$work/run" \
    ENVBOX_CNI_PATH="$cni" \
    ENVBOX_ETHLINK="${link:-eth0}" \
    ENVBOX_STOP_TIMEOUT=20s \
    "$envbox" docker 2> "$log" &
envbox_pid=$!
for _ in $(seq 1800); do
    grep -q 'e2e: bootstrap done' "$log" && break
    kill -0 "$envbox_pid" 2>/dev/null || break
    sleep 0.1
done
cat "$log"
grep -q 'e2e: bootstrap done' "$log" || fail "the workspace did not come up (log above: $log)"
if ! $rehearse; then
    grep -q '"GPU [0-9]*: ' "$log" || fail "nvidia-smi -L inside listed no GPU (log above)"
fi

say "SIGTERM"
kill -TERM "$envbox_pid"
status=0
wait "$envbox_pid" || status=$?
envbox_pid=""
tail -n 5 "$log"
[ "$status" = 0 ] || fail "envbox exited with status $status"
grep -q 'e2e: agent got SIGTERM' "$log" || fail "the agent's trap did not run"
left=""
for f in /proc/[0-9]*/cmdline; do
    cmd=$(tr '\0' ' ' < "$f" 2>/dev/null || true)
    [[ "$cmd" == *"$work/"* ]] && left+="${f%/cmdline}: $cmd"$'\n'
done
[ -z "$left" ] || fail "processes left: $left"
mounts=$(grep " $work/" /proc/self/mountinfo | grep -v " $usr_lib " || true)
[ -z "$mounts" ] || fail "mounts left under $work: $mounts"
if $rehearse; then
    say "PASSED (rehearsal: the flow works here; run it without --rehearse on a GPU host)"
else
    say "PASSED: $(grep -o 'GPU [0-9]*: [^"]*' "$log" | head -n 1)"
fi
