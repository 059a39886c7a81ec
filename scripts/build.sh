#!/usr/bin/env bash
# Builds envbox (debug profile) and prints the path of the binary as cargo reports it, so that
# CARGO_TARGET_DIR or a cargo config's build.target-dir is honoured. Build output goes to stderr.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
envbox=$(cargo build --locked --manifest-path "$repo/Cargo.toml" --bin envbox \
    --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
if [ ! -x "$envbox" ]; then
    echo "build.sh: cargo build reported no envbox executable" >&2
    exit 1
fi
echo "$envbox"
