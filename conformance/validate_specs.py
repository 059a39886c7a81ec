#!/usr/bin/env python3
"""Validate OCI runtime specs against the official runtime-spec JSON schema.

The schema comes from Debian's golang-github-opencontainers-specs-dev (config-schema.json and
the defs*.json files it references by relative path). Exits non-zero, naming the file and the
failing JSON path, when any spec does not validate, or when no spec was given.
"""
import argparse
import copy
import json
import pathlib
import sys
import warnings

try:
    import jsonschema
except ImportError:
    sys.exit(
        f"validate_specs.py: {sys.executable} has no jsonschema module: install Debian's "
        "python3-jsonschema (scripts/deps.sh test does) and run it with /usr/bin/python3"
    )

# Debian 12's jsonschema has RefResolver; newer ones deprecate it but keep it working.
warnings.filterwarnings("ignore", category=DeprecationWarning)

# Broken copies of the first spec that the schema must reject: proof the validator really
# follows the $refs into the Linux definitions (a validator that passes everything is useless).
BROKEN = {
    "namespace type": lambda s: s["linux"]["namespaces"][0].update(type="bogus"),
    "negative host id": lambda s: s["linux"]["uidMappings"][0].update(hostID=-1),
    "missing ociVersion": lambda s: s.pop("ociVersion"),
    "mount without destination": lambda s: s["mounts"][0].pop("destination"),
}


def validator_for(schema_dir: pathlib.Path):
    root = schema_dir / "config-schema.json"
    if not root.is_file():
        sys.exit(f"no OCI runtime-spec schema at {root}: install golang-github-opencontainers-specs-dev")
    schema = json.loads(root.read_text())
    store = {}
    for path in schema_dir.glob("*.json"):
        document = json.loads(path.read_text())
        store[path.resolve().as_uri()] = document
        if "id" in document:
            store[document["id"]] = document
    resolver = jsonschema.RefResolver(base_uri=root.resolve().as_uri(), referrer=schema, store=store)
    return jsonschema.Draft4Validator(schema, resolver=resolver)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schema-dir", required=True, type=pathlib.Path)
    parser.add_argument("specs", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    validator = validator_for(args.schema_dir)
    first = json.loads(args.specs[0].read_text())
    for name, breakage in BROKEN.items():
        broken = copy.deepcopy(first)
        breakage(broken)
        if validator.is_valid(broken):
            print(f"FAIL self-test: a spec with a broken {name} validated")
            return 1
    print(f"ok   self-test: {len(BROKEN)} broken specs rejected")
    failed = 0
    for spec_path in args.specs:
        spec = json.loads(spec_path.read_text())
        errors = sorted(validator.iter_errors(spec), key=lambda e: list(e.absolute_path))
        for error in errors:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            print(f"FAIL {spec_path}: at {where}: {error.message}")
        failed += bool(errors)
        if not errors:
            print(f"ok   {spec_path}")
    print(f"{len(args.specs) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
