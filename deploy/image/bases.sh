#!/usr/bin/env bash
# Makes the two local base images `make image` builds from, where no image registry can be
# reached: both come from the Debian mirror (mmdebstrap), imported into the root container
# storage that buildah and podman share. Each is made once and reused; remove one
# (`podman rmi IMAGE`) to remake it.
#
#   localhost/envbox-debian:bookworm          Debian 12's essential packages and apt, without
#                                             documentation (stands in for debian:bookworm-slim)
#   localhost/envbox-rust:<rustc>-bookworm    a minbase plus build-essential, pkg-config, protoc and
#                                             this machine's Rust toolchain (stands in for rust:*-bookworm)
#
# Prints the two names, one a line (runtime base first).
set -euo pipefail

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
toolchain=${RUST_TOOLCHAIN_DIR:-$(rustc --print sysroot)}
rust_version=$("$toolchain/bin/rustc" --version | awk '{print $2}')
runtime_base=localhost/envbox-debian:bookworm
builder_base=localhost/envbox-rust:$rust_version-bookworm

have() { podman image exists "$1"; }

work=$(mktemp -d /var/tmp/envbox-bases.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Security updates too, as the debian:bookworm-slim image has them.
sources() {
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror"
    printf 'deb %s-security bookworm-security main\n' "${mirror%/debian}/debian"
}

if ! have "$runtime_base"; then
    echo "bases.sh: making $runtime_base with mmdebstrap from $mirror" >&2
    # dpkg excludes like the slim image's: no documentation, manuals or translations.
    sources | mmdebstrap --quiet --variant=apt --format=tar \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$work/debian.tar" -
    podman import --quiet --change 'CMD ["bash"]' "$work/debian.tar" "$runtime_base" >/dev/null
fi

if ! have "$builder_base"; then
    echo "bases.sh: making $builder_base: minbase + build tools + Rust $rust_version from $toolchain" >&2
    # This machine's extra CAs (a TLS-intercepting proxy between it and crates.io), if any, for
    # cargo in the build stage; they never reach the runtime image.
    extra_cas="if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
        cp /usr/local/share/ca-certificates/*.crt \"\$1/usr/local/share/ca-certificates/\" &&
        chroot \"\$1\" update-ca-certificates >/dev/null; fi"
    # Only what `cargo build` needs of the toolchain: cargo, rustc and their libraries (not the
    # documentation, which is half its size).
    sources | mmdebstrap --quiet --variant=minbase --format=tar \
        --include=build-essential,pkg-config,protobuf-compiler,ca-certificates \
        --customize-hook="mkdir -p \"\$1/usr/local/rust/bin\"" \
        --customize-hook="cp -a '$toolchain/bin/cargo' '$toolchain/bin/rustc' \"\$1/usr/local/rust/bin/\"" \
        --customize-hook="cp -a '$toolchain/lib' \"\$1/usr/local/rust/\"" \
        --customize-hook="$extra_cas" \
        bookworm "$work/rust.tar" -
    podman import --quiet \
        --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'CMD ["bash"]' "$work/rust.tar" "$builder_base" >/dev/null
fi

echo "$runtime_base"
echo "$builder_base"
