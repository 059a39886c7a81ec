# envbox: build, test, lint. `make test` is what CI runs (through .ci/run).
CARGO ?= cargo
SCHEMA_DIR ?= /usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema
# Debian's Python, which sees the python3-jsonschema package (a python3 earlier on PATH, from
# pyenv say, may not).
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)

.PHONY: demo deps build release test unit conformance fmt lint specs bench fuzz clean image image-test

# envbox's main job on this machine (root): installs the Debian packages it needs, builds
# envbox, starts a loopback registry with a small image, runs `envbox docker` with runc and a
# bootstrap script that shows it is inside the workspace, then stops it with SIGTERM.
demo:
	bash deploy/demo/demo.sh

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release

# The Debian packages and Rust components `make test` and `make lint` need (scripts/deps.sh:
# installed as root, named otherwise). `make demo` runs `scripts/deps.sh demo` itself.
deps:
	bash scripts/deps.sh test

# Unit and integration tests (the runc ones need root, and say so), then the conformance suite.
test: deps build
	$(CARGO) test --locked --lib --bins --tests
	$(MAKE) conformance

unit:
	$(CARGO) test --locked --lib

# Conformance: the golden specs against the official OCI runtime-spec JSON schema, and unpacked
# images against umoci raw unpack (root, umoci, debootstrap; see conformance/unpack/main.rs).
conformance: deps
	$(PYTHON) conformance/validate_specs.py --schema-dir $(SCHEMA_DIR) specs/*.json
	$(CARGO) test --locked --test conformance_unpack

fmt:
	$(CARGO) fmt --all

# `--all-targets` leaves out test targets with `test = false`: the conformance suite is named.
# src/fuzzing.rs exists only with `--cfg fuzzing` (as cargo fuzz builds it): checked in a target
# dir of its own, which keeps the normal build's cache.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked --test conformance_unpack -- -D warnings
	RUSTFLAGS="--cfg fuzzing" CARGO_TARGET_DIR=target/lint-fuzzing \
		$(CARGO) clippy --locked --lib -- -D warnings

# Regenerate specs/* from the scenarios in src/spec/golden.rs; review the diff before committing.
specs:
	ENVBOX_UPDATE_GOLDEN=1 $(CARGO) test --locked --lib spec::golden

# Benchmarks (not tests): envbox beside other tools on the same image in the same run.
bench:
	$(CARGO) bench --locked --bench pull
	$(CARGO) bench --locked --bench image
	$(CARGO) bench --locked --bench daemons
	$(CARGO) bench --locked --bench warmstart

# Fuzzing (fuzz/: libFuzzer through cargo-fuzz, nightly Rust; `scripts/deps.sh test` installs
# cargo-fuzz): every target in turn for FUZZ_TIME seconds (`make fuzz FUZZ_TIME=5`), from its
# committed seeds (fuzz/seeds/<target>/) and what earlier runs found (fuzz/corpus/<target>/, not
# committed). A crash stops it; the input is left in fuzz/artifacts/<target>/. FUZZ_FLAGS go to
# `cargo fuzz build` and `run`: CI's `--dev` builds in a third of the CPU time of the default
# (optimised) build, and 5 seconds need no speed.
FUZZ_TIME ?= 600
FUZZ_FLAGS ?=
FUZZ_CARGO ?= cargo +nightly
FUZZ_TARGETS ?= $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs)))
fuzz:
	cd fuzz && $(FUZZ_CARGO) fuzz build $(FUZZ_FLAGS)
	set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		(cd fuzz && LSAN_OPTIONS=suppressions=$(CURDIR)/fuzz/lsan.supp \
			$(FUZZ_CARGO) fuzz run $(FUZZ_FLAGS) $$t corpus/$$t seeds/$$t -- \
			-max_total_time=$(FUZZ_TIME) -timeout=30 -print_final_stats=1); \
	done

# The pod image (deploy/image/Dockerfile) built with buildah from local Debian bases (no image
# registry needed; root, buildah, podman, mmdebstrap), then run with podman as the pod would run
# it, against a loopback registry (runc, as sysbox cannot run here). Not part of `make test`.
image:
	bash scripts/deps.sh image
	bash deploy/image/build.sh

image-test: image
	bash deploy/image/test.sh

clean:
	$(CARGO) clean
