#!/usr/bin/env bash
# `make image`: builds deploy/image/Dockerfile with buildah from local bases (bases.sh), where no
# image registry can be reached. Needs root, buildah, podman, mmdebstrap.
#
# IMAGE    the tag (default localhost/envbox:dev)
# SYSBOX_DEB, SYSBOX_SHA256   passed to the build when set (see the Dockerfile). Unset: a
#          sysbox-ce .deb in deploy/image/ if there is one, else the release URL if it answers,
#          else none: a runc-only image (said loudly).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
image=${IMAGE:-localhost/envbox:dev}
url=https://downloads.nestybox.com/sysbox/releases/v0.6.7/sysbox-ce_0.6.7-0.linux_amd64.deb

if [ "$(id -u)" != 0 ]; then
    echo "build.sh: run as root (buildah's root storage, shared with podman for make image-test)" >&2
    exit 1
fi
for tool in buildah podman mmdebstrap; do
    command -v "$tool" >/dev/null || { echo "build.sh: no $tool: apt-get install buildah podman mmdebstrap" >&2; exit 1; }
done

mapfile -t bases < <(bash "$repo/deploy/image/bases.sh")

args=(--build-arg "BASE_IMAGE=${bases[0]}" --build-arg "RUST_IMAGE=${bases[1]}")
if [ -n "${SYSBOX_DEB+set}" ]; then
    args+=(--build-arg "SYSBOX_DEB=$SYSBOX_DEB")
    [ -z "${SYSBOX_SHA256:-}" ] || args+=(--build-arg "SYSBOX_SHA256=$SYSBOX_SHA256")
else
    local_deb=$(cd "$repo/deploy/image" && ls sysbox-ce_*.deb 2>/dev/null | head -n 1 || true)
    if [ -n "$local_deb" ]; then
        echo "build.sh: sysbox from deploy/image/$local_deb" >&2
        args+=(--build-arg "SYSBOX_DEB=$local_deb")
        [ -z "${SYSBOX_SHA256:-}" ] || args+=(--build-arg "SYSBOX_SHA256=$SYSBOX_SHA256")
    elif curl -fsIL --max-time 10 -o /dev/null "$url" 2>/dev/null; then
        echo "build.sh: sysbox from $url" >&2
    else
        echo "build.sh: WARNING: $url cannot be reached and deploy/image/ holds no sysbox-ce .deb:" \
             "building a RUNC-ONLY image (it runs workspaces only with ENVBOX_RUNTIME=runc)" >&2
        args+=(--build-arg SYSBOX_DEB=)
    fi
fi

# --network host: RUN steps get this machine's network without a netns of their own (no
# firewall rules made and left behind). --layers: reuse unchanged steps.
cd "$repo"
buildah build --layers --network host -f deploy/image/Dockerfile "${args[@]}" -t "$image" .
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "build.sh: built $image ($((size / 1000000)) MB)" >&2
