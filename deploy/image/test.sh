#!/usr/bin/env bash
# `make image-test`: runs the image (`make image`) the way a workspace pod runs it, with podman:
# privileged, `/envbox docker`, the pod's volumes and deploy/image/test.env's environment (the
# manifest's variables plus ENVBOX_RUNTIME=runc and a loopback registry), host networking (the
# registry is on 127.0.0.1). Checks that the workspace comes up and its bootstrap runs, that
# `podman stop` (SIGTERM) ends it with status 0 well within the grace period, and that nothing
# is left on this machine: no process, mount, link or iptables rule. Root; leaves nothing behind.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
image=${IMAGE:-localhost/envbox:dev}
env_file=$repo/deploy/image/test.env
name=envbox-image-test
grace=120   # podman stop's timeout: above envbox's own stop timeout (ENVBOX_STOP_TIMEOUT, 90s)
port=$(sed -n 's/^ENVBOX_INSECURE_REGISTRIES=127\.0\.0\.1:\([0-9]*\)$/\1/p' "$env_file")
ref=$(sed -n 's/^CODER_INNER_IMAGE=//p' "$env_file")
token=$(sed -n 's/^CODER_AGENT_TOKEN=//p' "$env_file")

source "$repo/scripts/demo-image.sh"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf '\n\033[1;31mimage-test FAILED: %s\033[0m\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (podman --privileged)"
podman image exists "$image" || fail "no image $image: run make image first"
bash "$repo/scripts/deps.sh" demo   # docker-registry, skopeo, umoci, busybox-static

work=$(mktemp -d /var/tmp/envbox-image-test.XXXXXX)
chmod 755 "$work"
registry_pid=
cleanup() {
    status=$?
    if [ "$status" != 0 ] && podman container exists "$name"; then
        echo "--- podman logs $name (last 60 lines) ---" >&2
        podman logs --tail 60 "$name" >&2 || true
    fi
    # SIGTERM first, so that envbox removes its link and rules even when the test failed.
    podman stop -t 30 "$name" >/dev/null 2>&1 || true
    podman rm -f "$name" >/dev/null 2>&1 || true
    [ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# What this machine has before, of what the container could leave on it (host networking: its
# links and rules are this machine's): compared with what is left after. Only envbox's link
# and veths, the rules naming its chain or subnet and the mounts under this test's or podman's
# directories: other work on this machine may change the rest meanwhile.
subnet=172.19.0
snapshot() {
    ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^(envbox0|veth)' | sort || true
    for t in legacy nft; do
        { "iptables-$t-save" 2>/dev/null || true; "ip6tables-$t-save" 2>/dev/null || true; } |
            grep -e ENVBOX -e "$subnet\." -e CNI | sed "s/^/$t /; s/\[[0-9]*:[0-9]*\]//" || true
    done
    awk '{print "mount " $5}' /proc/self/mountinfo | grep -e "$work" -e /containers/storage/ | sort || true
}
# The container's processes as this machine sees them (envbox, pid 1 inside, and all its
# descendants: orphans inside are adopted by it or a containerd shim), with their start times,
# so that a reused pid is not mistaken for one left behind.
container_processes() {
    local pids=" $(podman inspect -f '{{.State.Pid}}' "$name") " grew=1 pid ppid
    while [ -n "$grew" ]; do
        grew=
        while read -r pid ppid; do
            if [[ "$pids" == *" $ppid "* && "$pids" != *" $pid "* ]]; then pids+="$pid "; grew=1; fi
        done < <(ps -e -o pid=,ppid=)
    done
    for pid in $pids; do
        echo "$pid $(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null) $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)"
    done
}
still_running() {
    while read -r pid start cmd; do
        [ "$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null)" != "$start" ] || echo "$pid $cmd"
    done <<<"$1"
}

say "Starting a registry on 127.0.0.1:$port"
start_registry "$work" "$port" || fail "the registry did not start"

say "Pushing a busybox image with a 'coder' user as $ref"
push_busybox_image "$work" "$ref"

# The pod's volumes (deploy/kubernetes/pod.yaml): the home and state volumes, sysbox's
# emptyDir, the node's /usr/src and /lib/modules read-only (where the node has them).
mkdir -p "$work"/{home,state,sysbox}
volumes=(-v "$work/home:/home/coder" -v "$work/state:/var/lib/coder" -v "$work/sysbox:/var/lib/sysbox")
for dir in /usr/src /lib/modules; do
    [ ! -d "$dir" ] || volumes+=(-v "$dir:$dir:ro")
done
# podman's default rlimits (nofile 1048576) need CAP_SYS_RESOURCE to raise, which a root in a
# sandbox may lack: ask for what this shell has.
ulimits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit "nproc=$(( $(ulimit -Hu) < 32768 ? $(ulimit -Hu) : 32768 )):$(( $(ulimit -Hu) < 32768 ? $(ulimit -Hu) : 32768 ))")

before=$(snapshot)
if grep -q -e '^envbox0$' -e 'ENVBOX' <<<"$before"; then
    grep -e '^envbox0$' -e 'ENVBOX' <<<"$before" >&2
    fail "an earlier envbox left the link or rules above on this machine (killed?): remove them" \
         "(ip link del envbox0; iptables -t nat -F/-X ENVBOX-MASQ after its POSTROUTING jump) or" \
         "run an envbox once and stop it with SIGTERM (it removes them)"
fi
say "Running $image (/envbox docker) privileged, host network, env from ${env_file#$repo/}"
started=$(date +%s.%N)
podman run -d --name "$name" --privileged --network host "${ulimits[@]}" "${volumes[@]}" \
    --env-file "$env_file" "$image" > /dev/null

up=
for _ in $(seq 1800); do
    if grep -q 'agent: running' <<<"$(podman logs "$name" 2>&1)"; then up=1; break; fi
    [ "$(podman inspect -f '{{.State.Running}}' "$name")" = true ] || break
    sleep 0.1
done
[ -n "$up" ] || fail "the workspace did not come up (no 'agent: running' from the bootstrap)"
ready=$(date +%s.%N)
# (Whole logs in a variable: `podman logs | grep -q` fails under pipefail when grep exits early.)
logs=$(podman logs "$name" 2>&1)
sed 's/^/  | /' <<<"$logs"
grep -q 'bootstrap: I am coder (1000)' <<<"$logs" || fail "the bootstrap did not run as coder (uid 1000)"
grep -q 'KUBERNETES_SERVICE_HOST=10.96.0.1' <<<"$logs" \
    || fail "CODER_INNER_ENVS=KUBERNETES_* did not pass KUBERNETES_SERVICE_HOST in"
printf 'up in %.1f s from podman run\n' "$(echo "$ready - $started" | bc)"
during=$(snapshot)
grep -q '^envbox0$' <<<"$during" && grep -q ENVBOX <<<"$during" \
    || fail "no envbox0 link or ENVBOX rule seen while the workspace runs: the leftover check would be blind"
echo "iptables backend: $(podman exec "$name" update-alternatives --query iptables | sed -n 's/^Value: //p')" \
     "($(grep -c ENVBOX <<<"$during") ENVBOX rules while it runs)"
processes=$(container_processes)
echo "$(wc -l <<<"$processes") processes in the container, among them:"
grep -e containerd -e 'sleep infinity' -e runc <<<"$processes" | cut -c1-150 | sed 's/^/  /' || true

say "podman stop -t $grace (SIGTERM, as Kubernetes stops a pod)"
stop_start=$(date +%s.%N)
podman stop -t "$grace" "$name" > /dev/null
stop_end=$(date +%s.%N)
stop_s=$(echo "$stop_end - $stop_start" | bc)
code=$(podman inspect -f '{{.State.ExitCode}}' "$name")
podman logs --since "$(date -d @"${stop_start%.*}" --iso-8601=seconds)" "$name" 2>&1 | sed 's/^/  | /'
printf 'envbox exited with status %s after %.1f s\n' "$code" "$stop_s"
[ "$code" = 0 ] || fail "envbox exited with status $code on SIGTERM (want 0)"
[ "$(echo "$stop_s < 60" | bc)" = 1 ] || fail "the stop took ${stop_s}s (want well within the ${grace}s grace period)"
if grep -qF "$token" <<<"$(podman logs "$name" 2>&1)"; then fail "the agent token appeared in the log"; fi
podman rm "$name" > /dev/null

say "Nothing left behind"
after=$(snapshot)
if [ "$before" != "$after" ]; then
    diff <(echo "$before") <(echo "$after") >&2 || true
    fail "links, iptables rules or mounts changed on this machine (above: < before, > after)"
fi
left=$(still_running "$processes")
[ -z "$left" ] || fail "processes left: $left"
echo "no link, iptables rule, mount or process left"
say "image-test passed"
