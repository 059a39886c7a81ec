# envbox: build, test, lint. `make test` is what CI runs (through .ci/run).
CARGO ?= cargo
SCHEMA_DIR ?= /usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema

.PHONY: build release test unit conformance fmt lint specs bench clean

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release

# Unit and integration tests (the runc ones need root, and say so), then the conformance suite.
test: build
	$(CARGO) test --locked --lib --bins --tests
	$(MAKE) conformance

unit:
	$(CARGO) test --locked --lib

# Conformance: the golden specs against the official OCI runtime-spec JSON schema, and unpacked
# images against umoci raw unpack (root, umoci, debootstrap; see conformance/unpack/main.rs).
conformance:
	python3 conformance/validate_specs.py --schema-dir $(SCHEMA_DIR) specs/*.json
	$(CARGO) test --locked --test conformance_unpack

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# Regenerate specs/* from the scenarios in src/spec/golden.rs; review the diff before committing.
specs:
	ENVBOX_UPDATE_GOLDEN=1 $(CARGO) test --locked --lib spec::golden

# Benchmarks (not tests): envbox beside other tools on the same image in the same run.
bench:
	$(CARGO) bench --locked --bench pull
	$(CARGO) bench --locked --bench image

clean:
	$(CARGO) clean
