#!/usr/bin/env bash
# `make demo`: envbox's main job on this machine, end to end, with real parts.
#
# Installs the Debian packages it needs, builds envbox, starts a loopback registry (the CNCF
# distribution registry) holding a small busybox image, runs `envbox docker` with the runc
# runtime (sysbox cannot run here) and a bootstrap script that shows it runs inside the
# workspace (user, uid map, hostname, network), then stops it with SIGTERM as Kubernetes would.
# Needs root (it mounts, starts containerd, creates network interfaces). Leaves nothing behind.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
port=${DEMO_REGISTRY_PORT:-5099}
web_port=${DEMO_WEB_PORT:-8099}

source "$repo/scripts/demo-image.sh"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "make demo needs root: it mounts the rootfs, starts containerd and creates the workspace network" >&2
    exit 1
fi

bash "$repo/scripts/deps.sh" demo

say "Building envbox"
envbox=$(bash "$repo/scripts/build.sh")

work=$(mktemp -d /var/tmp/envbox-demo.XXXXXX)
# The workspace's root (uid 100000 outside) must be able to reach the rootfs under it.
chmod 755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}" ${registry_pid:-}; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${DEMO_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

say "Starting a registry on 127.0.0.1:$port"
start_registry "$work" "$port"

say "Building a busybox image with a 'coder' user and pushing it"
push_busybox_image "$work" "127.0.0.1:$port/envbox/demo:latest"

say "A web page on the outer side, for the workspace to fetch through the gateway"
mkdir -p "$work/www"
echo "hello from outside the workspace" > "$work/www/hello.txt"
busybox httpd -f -p "$web_port" -h "$work/www" &
pids+=($!)

bootstrap=$(cat <<EOF
echo "I am \$(id) in \$(pwd)"
echo "uid map: \$(cat /proc/self/uid_map | tr -s ' ')"
echo "hostname: \$(hostname)"
echo "address: \$(ip -4 -o addr show eth0 | awk '{print \$4}')"
gateway=\$(awk '\$2 == "host.docker.internal" { print \$1 }' /etc/hosts)
echo "host.docker.internal is \$gateway; from there: \$(printf 'GET /hello.txt HTTP/1.0\\r\\n\\r\\n' | nc -w 5 \$gateway $web_port | tail -n 1)"
trap 'echo "agent: SIGTERM received, shutting down cleanly"; exit 0' TERM
echo "agent: running"
while :; do sleep 1; done
EOF
)

link=$(ip route show default | awk '{print $5; exit}')
say "Running envbox docker (runtime runc; state in $work/state)"
log="$work/envbox.log"
env -i PATH="$PATH" \
    CODER_INNER_IMAGE="127.0.0.1:$port/envbox/demo:latest" \
    ENVBOX_INSECURE_REGISTRIES="127.0.0.1:$port" \
    CODER_INNER_USERNAME=coder \
    CODER_INNER_HOSTNAME=envbox-demo \
    CODER_BOOTSTRAP_SCRIPT="$bootstrap" \
    CODER_AGENT_TOKEN=demo-token-never-logged \
    ENVBOX_RUNTIME=runc \
    ENVBOX_STATE_DIR="$work/state" \
    ENVBOX_RUN_DIR=/run/envbox-demo \
    ENVBOX_ETHLINK="${link:-eth0}" \
    ENVBOX_STOP_TIMEOUT=20s \
    "$envbox" docker 2> >(tee "$log" >&2) &
envbox_pid=$!
pids+=("$envbox_pid")

for _ in $(seq 600); do
    grep -q '"agent: running"' "$log" 2>/dev/null && break
    kill -0 "$envbox_pid" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q '"agent: running"' "$log"; then
    echo "the workspace did not come up; see the lines above" >&2
    exit 1
fi

say "Stopping it as Kubernetes would (SIGTERM)"
kill -TERM "$envbox_pid"
status=0
wait "$envbox_pid" || status=$?
say "envbox exited with status $status"
if grep -q demo-token-never-logged "$log"; then
    echo "the agent token appeared in the log" >&2
    exit 1
fi
exit "$status"
