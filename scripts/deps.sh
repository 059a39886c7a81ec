#!/usr/bin/env bash
# The one install step: the Debian packages that `make demo` (`deps.sh demo`), `make test` and
# CI (`deps.sh test`) or `make image` and `make image-test` (`deps.sh image`) need, installed
# when missing. As root it installs them with apt-get; as
# another user it names what is missing and exits 1. It also checks the Rust toolchain, which
# it does not install (nor the nightly toolchain `make fuzz` needs; it installs cargo-fuzz as
# root). For `test`, also the pinned PyPI packages of the deployment checks
# (tests/deploy/requirements.txt) in a venv, target/deploy-venv (or $ENVBOX_DEPLOY_VENV): made by
# root, named otherwise. Quiet when nothing is missing.
set -euo pipefail

demo=(containerd runc busybox-static docker-registry skopeo umoci containernetworking-plugins
      iptables iproute2 protobuf-compiler ca-certificates curl)
# The tests also build a Debian minbase (debootstrap), check specs against the OCI schema
# (golang-github-opencontainers-specs-dev, python3-jsonschema), make loop ext4 filesystems and
# build a static syscall probe for the runc test (gcc, libc6-dev: cargo's linker needs them too),
# and check the deployment files in a Python venv (python3-venv; see the end).
test=("${demo[@]}" debootstrap golang-github-opencontainers-specs-dev python3 python3-jsonschema
      python3-venv util-linux e2fsprogs make gcc libc6-dev)

# cargo-fuzz for `make fuzz` (test only; a cargo tool, not a Debian package).
cargo_fuzz=0.13.2

# The pod image: built with buildah from local Debian bases (mmdebstrap), run with podman
# beside a loopback registry (the demo's packages).
image=("${demo[@]}" buildah podman mmdebstrap fuse-overlayfs uidmap)

case "${1:-}" in
    demo) wanted=("${demo[@]}") ;;
    test) wanted=("${test[@]}") ;;
    image) wanted=("${image[@]}") ;;
    *) echo "usage: $0 demo|test|image" >&2; exit 2 ;;
esac

if ! command -v dpkg-query >/dev/null; then
    echo "deps.sh: no dpkg-query: envbox's demo and tests are set up for Debian 12; install the" \
         "equivalents of these Debian packages by hand: ${wanted[*]}" >&2
    exit 1
fi

missing=()
for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "deps.sh: missing Debian packages: ${missing[*]}" >&2
        echo "deps.sh: install them as root: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "deps.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "deps.sh: no cargo on PATH: install Rust 1.88 or later (https://rustup.rs), then run" \
         "this again" >&2
    exit 1
fi
if [ "$1" = test ]; then
    # `make lint` (run by CI beside `make test`) needs both components.
    for pair in fmt:rustfmt clippy:clippy; do
        if ! cargo "${pair%%:*}" --version >/dev/null 2>&1; then
            echo "deps.sh: cargo ${pair%%:*} is missing: rustup component add ${pair##*:}" >&2
            exit 1
        fi
    done
    # `make fuzz` (run by CI for a few seconds per target): nightly Rust, which it does not
    # install either, and cargo-fuzz, pinned, installed as root when missing.
    if ! cargo +nightly --version >/dev/null 2>&1; then
        echo "deps.sh: no nightly Rust toolchain (make fuzz): rustup toolchain install nightly" >&2
        exit 1
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        if [ "$(id -u)" != 0 ]; then
            echo "deps.sh: cargo-fuzz is missing (make fuzz): cargo install cargo-fuzz --locked" \
                 "--version $cargo_fuzz" >&2
            exit 1
        fi
        echo "deps.sh: installing cargo-fuzz $cargo_fuzz" >&2
        cargo install --quiet cargo-fuzz --locked --version "$cargo_fuzz"
    fi
fi

if [ "$1" = test ]; then
    # The deployment checks (tests/deploy/check.py, run by tests/deploy.rs): kubernetes-validate
    # and python-hcl2 from PyPI (Debian has neither), pinned, in a venv of Debian's Python. The
    # venv keeps a copy of the requirements it was made from: a change makes it again.
    repo=$(cd "$(dirname "$0")/.." && pwd)
    requirements="$repo/tests/deploy/requirements.txt"
    venv="${ENVBOX_DEPLOY_VENV:-$repo/target/deploy-venv}"
    if ! cmp -s "$requirements" "$venv/requirements.txt" || ! [ -x "$venv/bin/python" ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "deps.sh: the deployment checks' Python packages are missing ($venv)" >&2
            echo "deps.sh: make them as root, or: /usr/bin/python3 -m venv $venv &&" \
                 "$venv/bin/pip install -r $requirements && cp $requirements $venv/" >&2
            exit 1
        fi
        echo "deps.sh: installing the deployment checks' Python packages into $venv" >&2
        rm -rf "$venv"
        /usr/bin/python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$requirements"
        cp "$requirements" "$venv/requirements.txt"
    fi
fi
