#!/usr/bin/env python3
"""Checks the deployment files: deploy/kubernetes/*.yaml and the Coder template deploy/coder/.

What it checks:
- every Kubernetes manifest against the Kubernetes OpenAPI schemas (kubernetes-validate, strict:
  an unknown field fails), for each version in KUBERNETES_VERSIONS;
- in every pod spec of the manifests and of the template (kubernetes_deployment/_pod resources,
  read with python-hcl2), what envbox needs of its pod: every CODER_*/ENVBOX_* variable set is
  one envbox reads (taken from `envbox docker --help` of the built binary: its `[env: NAME=]`
  markers and its "Read from the environment only" list), secrets come from Kubernetes secrets
  (secretKeyRef, never a literal), the grace period is above the stop timeout, CPU and memory
  limits reach CODER_CPUS/CODER_MEMORY in a form they read, the state on a persistent volume,
  /var/lib/sysbox on the node's disk, the run dir on a tmpfs, the node's kernel headers and
  modules read-only, ENVBOX_NODE_CACHE (when set) on a writable hostPath, a privileged container,
  one replica recreated (never rolled);
- that make image-test runs the image with the manifest's environment (deploy/image/test.env);
- in the template: the agent's token handed over through a secret the template makes from
  coder_agent.token, the agent's init script as CODER_BOOTSTRAP_SCRIPT, its URL, and the image
  and user as coder_parameters.

Usage: check.py --envbox target/debug/envbox [--repo DIR]. Exits 1 naming each problem.
Its own tests: test_check.py (bad files make it fail).
"""

import argparse
import glob
import os
import re
import subprocess
import sys

import hcl2
import kubernetes_validate
import yaml

# The oldest Kubernetes these files are for, and the newest the validator ships.
KUBERNETES_VERSIONS = ["1.31.0", kubernetes_validate.utils.latest_version()]

# Variables whose value is a secret: from a Kubernetes secret only.
SECRET_VARIABLES = ["CODER_AGENT_TOKEN", "CODER_IMAGE_PULL_SECRET"]

# What the grace period must leave after the stop timeout: envbox tears down the network and
# sends the last startup logs (3 s) after the workspace stopped.
GRACE_MARGIN_S = 10

# Kinds whose pods these checks apply to, and where their pod spec is.
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class Envbox:
    """What the built binary says it reads: variable names and defaults."""

    def __init__(self, help_text):
        flat = re.sub(r"\s+", " ", help_text)
        self.variables = set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", flat))
        section = help_text.split("Read from the environment only:", 1)
        if len(section) != 2:
            raise ValueError("envbox docker --help has no 'Read from the environment only' list")
        self.variables |= set(re.findall(r"^  ([A-Z][A-Z0-9_]+) ", section[1], re.M))
        self.defaults = {}
        for entry in re.split(r"\n(?=  -|      --)", help_text):
            flag = re.match(r"\s*(?:-\w, )?--([a-z0-9-]+)", entry)
            default = re.search(r"\[default: ([^\]]+)\]", re.sub(r"\s+", " ", entry))
            if flag and default:
                self.defaults[flag.group(1)] = default.group(1)
        for needed in ["stop-timeout", "state-dir", "run-dir"]:
            if needed not in self.defaults:
                raise ValueError(f"envbox docker --help gives no default for --{needed}")

    @staticmethod
    def from_binary(path):
        out = subprocess.run([path, "docker", "--help"], capture_output=True, text=True,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, check=True)
        return Envbox(out.stdout)


def seconds(duration):
    """envbox's duration forms: 90, 90s, 2m, 1m30s (ENVBOX_STOP_TIMEOUT)."""
    text = str(duration).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    parts = re.findall(r"(\d+)(h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def literal(value):
    """The value if it is a plain string (not a Terraform expression), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and "${" not in value:
        return value
    return None


def check_pod(spec, envbox, where):
    """The problems of one pod spec (Kubernetes field names) as strings."""
    problems = []

    def problem(text):
        problems.append(f"{where}: {text}")

    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    containers = [c for c in spec.get("containers") or []
                  if any(e.get("name") == "CODER_INNER_IMAGE" for e in c.get("env") or [])]
    if not containers:
        problem("no container sets CODER_INNER_IMAGE: no envbox container found")
        return problems
    for container in containers:
        cname = f"container {container.get('name')}"
        env = {e.get("name"): e for e in container.get("env") or []}
        patterns = [p.strip() for p in (literal(env.get("CODER_INNER_ENVS", {}).get("value"))
                                        or "").split(",") if p.strip()]

        def passed_in(name):
            return any(name == p or (p.endswith("*") and name.startswith(p[:-1]))
                       for p in patterns)

        for name in env:
            if (name.startswith(("CODER_", "ENVBOX_")) and name not in envbox.variables
                    and not passed_in(name)):
                problem(f"{cname} sets {name}, which envbox does not read")
        for name in SECRET_VARIABLES:
            if name not in env:
                continue
            var = env[name]
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if "value" in var or not ref or not ref.get("name") or not ref.get("key"):
                problem(f"{cname}: {name} must come from a Kubernetes secret "
                        "(valueFrom.secretKeyRef), never a literal value")
        for name, resource in [("CODER_CPUS", "limits.cpu"), ("CODER_MEMORY", "limits.memory")]:
            var = env.get(name)
            if var is None:
                problem(f"{cname}: {name} is not set: the workspace gets no {resource} "
                        "(hand it over with the Downward API)")
                continue
            ref = (var.get("valueFrom") or {}).get("resourceFieldRef")
            if ref is None:
                continue
            if ref.get("resource") != resource:
                problem(f"{cname}: {name} comes from {ref.get('resource')}, not {resource}")
            if str(ref.get("divisor", "1")) != "1":
                problem(f"{cname}: {name} has divisor {ref.get('divisor')}: the Downward API "
                        f"then gives a number envbox reads as whole "
                        f"{'CPUs' if name == 'CODER_CPUS' else 'bytes'}; use divisor 1")
        if not (container.get("securityContext") or {}).get("privileged") is True:
            problem(f"{cname} is not privileged: envbox sets up the workspace's container")

        mounts = container.get("volumeMounts") or []

        def mount_of(path):
            """The mount `path` is on (the longest mount path above or at it)."""
            best = None
            for m in mounts:
                mp = m.get("mountPath", "").rstrip("/") or "/"
                if path == mp or path.startswith(mp.rstrip("/") + "/"):
                    if best is None or len(mp) > len(best.get("mountPath", "")):
                        best = m
            return best

        def setting(name, flag):
            value = env.get(name, {}).get("value") if name in env else envbox.defaults[flag]
            return literal(value)

        state_dir = setting("ENVBOX_STATE_DIR", "state-dir")
        for path, what in [(state_dir, "envbox's state dir (image cache, workspace root)"),
                           ("/var/lib/coder/docker", "the workspace's /var/lib/docker"),
                           ("/var/lib/coder/containers", "the workspace's /var/lib/containers")]:
            mount = mount_of(path) if path else None
            if mount is None or "persistentVolumeClaim" not in volumes.get(mount.get("name"), {}):
                problem(f"{cname}: {path} ({what}) is not on a persistent volume claim")
        sysbox = mount_of("/var/lib/sysbox")
        volume = volumes.get(sysbox.get("name"), {}) if sysbox else {}
        if sysbox is None or sysbox.get("mountPath").rstrip("/") != "/var/lib/sysbox":
            problem(f"{cname}: /var/lib/sysbox is not a volume: on the container's overlayfs "
                    "sysbox cannot use it")
        elif not ("persistentVolumeClaim" in volume or (
                "emptyDir" in volume and (volume["emptyDir"] or {}).get("medium") != "Memory")):
            problem(f"{cname}: /var/lib/sysbox must be an emptyDir on the node's disk (not "
                    "medium Memory) or a persistent volume")
        run_dir = setting("ENVBOX_RUN_DIR", "run-dir")
        run = mount_of(run_dir) if run_dir else None
        volume = volumes.get(run.get("name"), {}) if run else {}
        if run is None or (volume.get("emptyDir") or {}).get("medium") != "Memory":
            problem(f"{cname}: the run dir {run_dir} is not an emptyDir with medium Memory")
        for path in ["/usr/src", "/lib/modules"]:
            mount = next((m for m in mounts if m.get("mountPath") == path), None)
            host = (volumes.get(mount.get("name"), {}).get("hostPath") or {}) if mount else {}
            if mount is None or host.get("path") != path or mount.get("readOnly") is not True:
                problem(f"{cname}: the node's {path} is not mounted read-only at {path}")
        node_cache = literal((env.get("ENVBOX_NODE_CACHE") or {}).get("value"))
        if node_cache:
            mount = mount_of(node_cache)
            volume = volumes.get(mount.get("name"), {}) if mount else {}
            if mount is None or "hostPath" not in volume:
                problem(f"{cname}: ENVBOX_NODE_CACHE {node_cache} is not on a hostPath: the node "
                        "cache is shared by the workspaces of a node")
            elif mount.get("readOnly") is True:
                problem(f"{cname}: ENVBOX_NODE_CACHE {node_cache} is mounted read-only: envbox "
                        "publishes verified layers there")

        stop = setting("ENVBOX_STOP_TIMEOUT", "stop-timeout")
        grace = spec.get("terminationGracePeriodSeconds")
        try:
            stop_s = seconds(stop)
        except ValueError as e:
            problem(f"ENVBOX_STOP_TIMEOUT: {e}")
            stop_s = 0
        if not isinstance(grace, int) or grace < stop_s + GRACE_MARGIN_S:
            problem(f"terminationGracePeriodSeconds is {grace}: it must be at least the stop "
                    f"timeout ({stop}) + {GRACE_MARGIN_S} s, or the kubelet kills envbox while "
                    "it stops the workspace")
    return problems


def check_controller(doc, where):
    """One replica, recreated: two envboxes must never share the volume and state dir."""
    problems = []
    spec = doc.get("spec") or {}
    if doc.get("kind") in ("Deployment", "StatefulSet", "ReplicaSet"):
        replicas = spec.get("replicas", 1)
        if isinstance(replicas, int) and replicas > 1:
            problems.append(f"{where}: replicas {replicas}: a workspace is one pod")
    if doc.get("kind") == "Deployment" and (spec.get("strategy") or {}).get("type") != "Recreate":
        problems.append(f"{where}: strategy is not Recreate: a rolling update starts a second "
                        "envbox on the same volume")
    return problems


def check_manifests(docs, envbox, versions=KUBERNETES_VERSIONS):
    """`docs`: (where, document) pairs. Schema validation, then the pod checks."""
    problems = []
    pods = 0
    for where, doc in docs:
        if doc is None:
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{where}: Kubernetes {version} schema: {path}: {e.message}")
            except (kubernetes_validate.SchemaNotFoundError,
                    kubernetes_validate.utils.SchemaNotFoundError) as e:
                problems.append(f"{where}: {e.message}")
        kind = doc.get("kind")
        if kind == "Secret":
            problems.append(f"{where}: a Secret in the manifests holds its values as literals: "
                            "create secrets outside them (kubectl create secret)")
        elif kind == "Pod":
            pods += 1
            problems += check_pod(doc.get("spec") or {}, envbox, where)
        elif kind in POD_TEMPLATE_KINDS:
            pods += 1
            problems += check_controller(doc, where)
            pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
            problems += check_pod(pod, envbox, where)
    if pods == 0:
        problems.append("the manifests hold no workspace pod")
    return problems


# make image-test's own variables, beside the manifest's (deploy/image/test.env's last block).
IMAGE_TEST_ONLY = {"ENVBOX_RUNTIME", "ENVBOX_INSECURE_REGISTRIES", "CODER_INNER_ENVS",
                   "KUBERNETES_SERVICE_HOST"}
# What every site sets for itself: the test's values differ from the manifest's examples.
SITE_VALUES = {"CODER_INNER_IMAGE", "CODER_AGENT_URL"}


def parse_env_file(text):
    """NAME=value lines (podman --env-file), comments and blank lines skipped."""
    values = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def check_image_test_env(docs, env_file, where="deploy/image/test.env"):
    """make image-test runs the image with the workspace pod's environment: every variable the
    manifest's envbox container sets (a literal with the manifest's value; from a secret or the
    Downward API with a test value; an optional secret may be left out), and of its own only
    IMAGE_TEST_ONLY."""
    problems = []
    container = None
    for _, doc in docs:
        if doc and doc.get("kind") in POD_TEMPLATE_KINDS:
            pod = doc["spec"]["template"]["spec"]
            container = pod["containers"][0]
    if container is None:
        return [f"{where}: no workspace pod in the manifests to compare with"]
    manifest = {e["name"]: e for e in container.get("env", [])}
    for name, entry in manifest.items():
        if name not in env_file:
            optional = ((entry.get("valueFrom") or {}).get("secretKeyRef") or {}).get("optional")
            if not optional:
                problems.append(f"{where}: {name} is in the manifest but not in the image test")
        elif "value" in entry and name not in SITE_VALUES and env_file[name] != str(entry["value"]):
            problems.append(f"{where}: {name}={env_file[name]!r}, the manifest sets "
                            f"{entry['value']!r}")
    for name in env_file:
        if name not in manifest and name not in IMAGE_TEST_ONLY:
            problems.append(f"{where}: {name} is not in the manifest (nor one of the test's own: "
                            f"{', '.join(sorted(IMAGE_TEST_ONLY))})")
    return problems


def load_manifests(repo):
    docs = []
    for path in sorted(glob.glob(os.path.join(repo, "deploy", "kubernetes", "*.yaml"))):
        with open(path) as f:
            for i, doc in enumerate(yaml.safe_load_all(f)):
                docs.append((f"{os.path.relpath(path, repo)}#{i}", doc))
    return docs


# --- the Coder template ---------------------------------------------------------------------

# Terraform blocks of the kubernetes provider that Kubernetes lists under another name.
TF_LISTS = {"container": "containers", "init_container": "initContainers", "volume": "volumes",
            "volume_mount": "volumeMounts", "env": "env", "env_from": "envFrom", "port": "ports",
            "toleration": "tolerations", "image_pull_secrets": "imagePullSecrets"}


def camel(name):
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def kubernetes_shape(value, key=None):
    """A kubernetes provider block as the Kubernetes object it makes: snake_case names in
    camelCase, repeated blocks as lists, single blocks as objects."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in TF_LISTS:
                out[TF_LISTS[k]] = [kubernetes_shape(x, k) for x in v]
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                out[camel(k)] = kubernetes_shape(v[0], k)
            elif isinstance(v, dict) and key is not None and k not in ("labels", "annotations"):
                out[camel(k)] = kubernetes_shape(v, k)
            else:
                out[camel(k)] = v
        return out
    return value


def parse_template(text):
    options = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False,
                                        strip_string_quotes=True, preserve_heredocs=False)
    return hcl2.loads(text, serialization_options=options)


def blocks(parsed, section, kind=None):
    """(type, name, body) of each `section` block ("resource", "data"), of type `kind`."""
    for entry in parsed.get(section) or []:
        for type_, named in entry.items():
            for name, body in named.items():
                if kind is None or type_ == kind:
                    yield type_, name, body


def resolve_locals(expression, parsed):
    """`${local.x}` replaced by the local's own expression (one level)."""
    local = {}
    for entry in parsed.get("locals") or []:
        local.update(entry)
    return re.sub(r"\$\{local\.(\w+)\}", lambda m: str(local.get(m.group(1), m.group(0))),
                  str(expression))


def check_template(text, envbox, where):
    problems = []
    try:
        parsed = parse_template(text)
    except Exception as e:  # python-hcl2 raises lark's errors, of many types
        return [f"{where}: not valid HCL: {e}"]
    agents = [name for _, name, _ in blocks(parsed, "resource", "coder_agent")]
    if not agents:
        problems.append(f"{where}: no coder_agent")
    parameters = {name for _, name, _ in blocks(parsed, "data", "coder_parameter")}
    secrets = {name: body for _, name, body in blocks(parsed, "resource", "kubernetes_secret")}
    secrets.update({name: body for _, name, body in blocks(parsed, "resource",
                                                            "kubernetes_secret_v1")})
    pods = 0
    for type_, name, body in blocks(parsed, "resource"):
        if type_ not in ("kubernetes_deployment", "kubernetes_deployment_v1", "kubernetes_pod",
                         "kubernetes_pod_v1"):
            continue
        pods += 1
        here = f"{where}: {type_}.{name}"
        shaped = kubernetes_shape(body)
        spec = shaped.get("spec") or {}
        if type_.startswith("kubernetes_deployment"):
            problems += check_controller({"kind": "Deployment", "spec": spec}, here)
            spec = (spec.get("template") or {}).get("spec") or {}
        problems += check_pod(spec, envbox, here)
        for container in spec.get("containers") or []:
            env = {e.get("name"): e for e in container.get("env") or []}
            token = (((env.get("CODER_AGENT_TOKEN") or {}).get("valueFrom") or {})
                     .get("secretKeyRef") or {})
            made = re.search(r"kubernetes_secret(?:_v1)?\.(\w+)", str(token.get("name", "")))
            data = (secrets.get(made.group(1)) or {}).get("data") if made else None
            key_value = (data or {}).get(token.get("key")) if isinstance(data, dict) else None
            if not made or not re.search(r"coder_agent\.\w+\.token", str(key_value)):
                problems.append(f"{here}: CODER_AGENT_TOKEN must come from a kubernetes_secret "
                                "of this template holding coder_agent.<name>.token")
            checks = [("CODER_BOOTSTRAP_SCRIPT", r"coder_agent\.\w+\.init_script",
                       "the agent's init_script"),
                      ("CODER_AGENT_URL", r"data\.coder_workspace\.\w+\.access_url",
                       "the workspace's access_url"),
                      ("CODER_INNER_IMAGE", r"data\.coder_parameter\.\w+\.value",
                       "a coder_parameter"),
                      ("CODER_INNER_USERNAME", r"data\.coder_parameter\.\w+\.value",
                       "a coder_parameter")]
            for variable, pattern, what in checks:
                value = resolve_locals((env.get(variable) or {}).get("value", ""), parsed)
                if not re.search(pattern, value):
                    problems.append(f"{here}: {variable} is not {what}")
    if pods == 0:
        problems.append(f"{where}: no kubernetes_deployment or kubernetes_pod")
    if not {"image", "username"} <= parameters:
        problems.append(f"{where}: the image and the user are not coder_parameters "
                        f"(found: {sorted(parameters)})")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--envbox", required=True, help="the built envbox binary")
    parser.add_argument("--repo", default=os.path.join(os.path.dirname(__file__), "..", ".."))
    args = parser.parse_args(argv)
    envbox = Envbox.from_binary(args.envbox)
    docs = load_manifests(args.repo)
    problems = check_manifests(docs, envbox)
    with open(os.path.join(args.repo, "deploy", "image", "test.env")) as f:
        problems += check_image_test_env(docs, parse_env_file(f.read()))
    templates = sorted(glob.glob(os.path.join(args.repo, "deploy", "coder", "*.tf")))
    if not templates:
        problems.append("no Coder template in deploy/coder")
    for path in templates:
        with open(path) as f:
            problems += check_template(f.read(), envbox, os.path.relpath(path, args.repo))
    for p in problems:
        print(f"check.py: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"check.py: deploy/kubernetes (Kubernetes {', '.join(KUBERNETES_VERSIONS)}) and "
          f"deploy/coder are as envbox needs them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
