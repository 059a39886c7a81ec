# Sourced by deploy/demo/demo.sh and deploy/image/test.sh: a loopback registry and the small
# busybox image with a 'coder' user that both run. Needs docker-registry, umoci, skopeo and
# busybox-static (scripts/deps.sh demo). Defines functions only.

# start_registry WORK PORT: serves the CNCF distribution registry on 127.0.0.1:PORT, its
# storage and log under WORK, in the background; sets registry_pid. Fails when it does not
# answer within 5 s.
start_registry() {
    local work=$1 port=$2
    cat > "$work/registry.yml" <<YML
version: 0.1
log: { level: warn }
storage: { filesystem: { rootdirectory: $work/registry } }
http: { addr: "127.0.0.1:$port" }
YML
    docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 50); do
        curl -fs "http://127.0.0.1:$port/v2/" > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the registry on 127.0.0.1:$port did not start: $(cat "$work/registry.log")" >&2
    return 1
}

# push_busybox_image WORK REF: builds a one-layer busybox image (every applet, a 'coder' user
# with uid and gid 1000 and a home, PATH=/bin) with umoci under WORK and pushes it to REF
# (HOST:PORT/REPO:TAG, plain HTTP).
push_busybox_image() {
    local work=$1 ref=$2 rootfs=$1/image-rootfs applet
    mkdir -p "$rootfs"/{bin,etc,root,tmp,home/coder}
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\ncoder:x:1000:1000:coder:/home/coder:/bin/sh\n' > "$rootfs/etc/passwd"
    printf 'root:x:0:\ncoder:x:1000:\n' > "$rootfs/etc/group"
    chown 1000:1000 "$rootfs/home/coder"
    chmod 1777 "$rootfs/tmp"
    umoci init --layout "$work/layout"
    umoci new --image "$work/layout:image"
    umoci insert --image "$work/layout:image" "$rootfs" / > /dev/null
    umoci config --image "$work/layout:image" --config.env PATH=/bin
    skopeo copy -q --dest-tls-verify=false "oci:$work/layout:image" "docker://$ref"
}
