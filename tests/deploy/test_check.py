"""check.py's own tests: the real files pass, and each kind of bad file fails with its reason.

Needs ENVBOX (the built binary: the variables it reads come from its --help). Run by
tests/deploy.rs: ENVBOX=target/debug/envbox python -m unittest tests/deploy/test_check.py
"""

import copy
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import check  # noqa: E402

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
LATEST = [check.KUBERNETES_VERSIONS[-1]]


def envbox():
    path = os.environ.get("ENVBOX")
    if not path:
        raise RuntimeError("set ENVBOX to the built envbox binary")
    return check.Envbox.from_binary(path)


ENVBOX = envbox()
MANIFESTS = check.load_manifests(REPO)
with open(os.path.join(REPO, "deploy", "coder", "main.tf")) as f:
    TEMPLATE = f.read()


def workspace():
    """A copy of the manifests, and the workspace Deployment's envbox container in it."""
    docs = copy.deepcopy(MANIFESTS)
    deployment = next(d for _, d in docs if d and d.get("kind") == "Deployment")
    return docs, deployment, deployment["spec"]["template"]["spec"]["containers"][0]


def env(container, name):
    return next(e for e in container["env"] if e["name"] == name)


class Manifests(unittest.TestCase):
    def problems(self, docs, versions=LATEST):
        return "\n".join(check.check_manifests(docs, ENVBOX, versions))

    def assertFails(self, docs, *expected):
        problems = self.problems(docs)
        for text in expected:
            self.assertIn(text, problems)

    def test_the_real_manifests_pass_on_every_version(self):
        self.assertEqual(check.check_manifests(MANIFESTS, ENVBOX), [])

    def test_an_unknown_field_fails_the_strict_schema(self):
        docs, _, container = workspace()
        container["securityContext"]["privilidged"] = True
        self.assertFails(docs, "schema", "privilidged")

    def test_a_wrong_type_fails_the_schema(self):
        docs, deployment, _ = workspace()
        deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "120"
        self.assertFails(docs, "schema", "terminationGracePeriodSeconds")

    def test_a_literal_token_fails(self):
        docs, _, container = workspace()
        token = env(container, "CODER_AGENT_TOKEN")
        del token["valueFrom"]
        token["value"] = "not-a-secret"
        self.assertFails(docs, "CODER_AGENT_TOKEN must come from a Kubernetes secret")

    def test_a_literal_pull_secret_fails(self):
        docs, _, container = workspace()
        container["env"].append({"name": "CODER_IMAGE_PULL_SECRET", "value": "{}"})
        container["env"] = [e for e in container["env"]
                            if e["name"] != "CODER_IMAGE_PULL_SECRET" or "value" in e]
        self.assertFails(docs, "CODER_IMAGE_PULL_SECRET must come from a Kubernetes secret")

    def test_a_variable_envbox_does_not_read_fails_unless_passed_in(self):
        docs, _, container = workspace()
        container["env"].append({"name": "CODER_INNER_IMAGES", "value": "typo"})
        container["env"].append({"name": "ENVBOX_NOPE", "value": "x"})
        self.assertFails(docs, "sets CODER_INNER_IMAGES, which envbox does not read",
                         "sets ENVBOX_NOPE")
        # Passed into the workspace by CODER_INNER_ENVS: fine.
        docs, _, container = workspace()
        container["env"].append({"name": "CODER_TEAM", "value": "a"})
        container["env"].append({"name": "CODER_INNER_ENVS", "value": "CODER_TEAM*"})
        self.assertEqual(self.problems(docs), "")

    def test_a_divisor_envbox_would_misread_fails(self):
        docs, _, container = workspace()
        env(container, "CODER_CPUS")["valueFrom"]["resourceFieldRef"]["divisor"] = "1m"
        env(container, "CODER_MEMORY")["valueFrom"]["resourceFieldRef"]["divisor"] = "1Mi"
        self.assertFails(docs, "CODER_CPUS has divisor 1m", "CODER_MEMORY has divisor 1Mi")

    def test_limits_not_handed_over_fail(self):
        docs, _, container = workspace()
        container["env"] = [e for e in container["env"] if e["name"] != "CODER_MEMORY"]
        self.assertFails(docs, "CODER_MEMORY is not set")

    def test_a_grace_period_below_the_stop_timeout_fails(self):
        docs, deployment, _ = workspace()
        deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 60
        self.assertFails(docs, "terminationGracePeriodSeconds is 60")
        docs, _, container = workspace()
        env(container, "ENVBOX_STOP_TIMEOUT")["value"] = "2m"
        self.assertFails(docs, "terminationGracePeriodSeconds is 120")
        # Unset, the default the binary states (90s) applies.
        docs, _, container = workspace()
        container["env"] = [e for e in container["env"] if e["name"] != "ENVBOX_STOP_TIMEOUT"]
        self.assertEqual(self.problems(docs), "")

    def test_volumes_envbox_needs_fail_when_wrong(self):
        cases = [
            ("sysbox", {"emptyDir": {"medium": "Memory"}}, "/var/lib/sysbox must be an emptyDir"),
            ("run", {"emptyDir": {}}, "the run dir /run/envbox is not an emptyDir with medium"),
            ("workspace", {"emptyDir": {}}, "/var/lib/coder/envbox (envbox's state dir"),
            ("lib-modules", {"hostPath": {"path": "/lib"}}, "the node's /lib/modules"),
        ]
        for name, source, expected in cases:
            docs, deployment, _ = workspace()
            volumes = deployment["spec"]["template"]["spec"]["volumes"]
            volume = next(v for v in volumes if v["name"] == name)
            volume.clear()
            volume.update({"name": name, **source})
            with self.subTest(name=name):
                self.assertFails(docs, expected)

    def test_state_moved_off_the_volume_fails(self):
        docs, _, container = workspace()
        env(container, "ENVBOX_STATE_DIR")["value"] = "/tmp/envbox"
        self.assertFails(docs, "/tmp/envbox (envbox's state dir")

    def test_a_writable_host_path_fails(self):
        docs, _, container = workspace()
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/usr/src")
        del mount["readOnly"]
        self.assertFails(docs, "the node's /usr/src is not mounted read-only")

    def test_the_node_cache_turned_on_passes_and_must_be_a_writable_host_path(self):
        docs, deployment, container = workspace()
        env(container, "ENVBOX_NODE_CACHE")["value"] = "/var/lib/envbox/node-cache"
        self.assertEqual(self.problems(docs), "")
        mount = next(m for m in container["volumeMounts"] if m["name"] == "node-cache")
        mount["readOnly"] = True
        self.assertFails(docs, "ENVBOX_NODE_CACHE /var/lib/envbox/node-cache is mounted read-only")
        del mount["readOnly"]
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        volume = next(v for v in volumes if v["name"] == "node-cache")
        volume.clear()
        volume.update({"name": "node-cache", "emptyDir": {}})
        self.assertFails(docs, "ENVBOX_NODE_CACHE /var/lib/envbox/node-cache is not on a hostPath")

    def test_an_unprivileged_pod_fails(self):
        docs, _, container = workspace()
        container["securityContext"]["privileged"] = False
        self.assertFails(docs, "is not privileged")

    def test_a_rolling_update_or_replicas_fail(self):
        docs, deployment, _ = workspace()
        deployment["spec"]["strategy"] = {"type": "RollingUpdate"}
        deployment["spec"]["replicas"] = 2
        self.assertFails(docs, "strategy is not Recreate", "replicas 2")

    def test_a_secret_in_the_manifests_fails(self):
        docs, _, _ = workspace()
        docs.append(("secret.yaml#0", {"apiVersion": "v1", "kind": "Secret",
                                       "metadata": {"name": "coder-agent"},
                                       "stringData": {"token": "literal"}}))
        self.assertFails(docs, "a Secret in the manifests holds its values as literals")


class Template(unittest.TestCase):
    def problems(self, text):
        return "\n".join(check.check_template(text, ENVBOX, "main.tf"))

    def edit(self, old, new):
        self.assertIn(old, TEMPLATE)
        return TEMPLATE.replace(old, new, 1)

    def test_the_real_template_passes(self):
        self.assertEqual(check.check_template(TEMPLATE, ENVBOX, "main.tf"), [])

    def test_a_token_in_the_pod_env_fails(self):
        text = self.edit('''            name = "CODER_AGENT_TOKEN"
            value_from {
              secret_key_ref {
                name = kubernetes_secret.agent[0].metadata[0].name
                key  = "token"
              }
            }''', '''            name  = "CODER_AGENT_TOKEN"
            value = coder_agent.main.token''')
        problems = self.problems(text)
        self.assertIn("CODER_AGENT_TOKEN must come from a Kubernetes secret", problems)
        self.assertIn("kubernetes_secret of this template", problems)

    def test_a_secret_not_holding_the_agent_token_fails(self):
        text = self.edit("token = coder_agent.main.token", 'token = "literal"')
        self.assertIn("holding coder_agent.<name>.token", self.problems(text))

    def test_a_variable_envbox_does_not_read_fails(self):
        text = self.edit('''          env {
            name  = "ENVBOX_RUN_DIR"''', '''          env {
            name  = "CODER_NO_SUCH_SETTING"
            value = "1"
          }
          env {
            name  = "ENVBOX_RUN_DIR"''')
        self.assertIn("sets CODER_NO_SUCH_SETTING, which envbox does not read",
                      self.problems(text))

    def test_a_bootstrap_script_that_is_not_the_init_script_fails(self):
        text = self.edit("value = coder_agent.main.init_script", 'value = "echo hi"')
        self.assertIn("CODER_BOOTSTRAP_SCRIPT is not the agent's init_script",
                      self.problems(text))

    def test_an_image_that_is_not_a_parameter_fails(self):
        text = self.edit("value = data.coder_parameter.image.value", 'value = "ubuntu"')
        self.assertIn("CODER_INNER_IMAGE is not a coder_parameter", self.problems(text))

    def test_pod_settings_are_checked_as_in_the_manifests(self):
        text = self.edit("termination_grace_period_seconds = 120",
                         "termination_grace_period_seconds = 30")
        text = text.replace('''                resource       = "limits.cpu"
                divisor        = "1"''', '''                resource       = "limits.cpu"
                divisor        = "1m"''')
        text = text.replace('medium     = "Memory"', 'medium     = ""')
        problems = self.problems(text)
        for expected in ["terminationGracePeriodSeconds is 30", "CODER_CPUS has divisor 1m",
                         "the run dir /run/envbox is not an emptyDir with medium Memory"]:
            self.assertIn(expected, problems)

    def test_invalid_hcl_fails(self):
        self.assertIn("not valid HCL", self.problems(TEMPLATE + "\nresource {"))


class Variables(unittest.TestCase):
    def test_taken_from_the_binary_with_the_environment_only_ones(self):
        for name in ["CODER_INNER_IMAGE", "CODER_AGENT_TOKEN", "CODER_DEBUG", "ENVBOX_RUN_DIR",
                     "CODER_AGENT_SUBSYSTEM", "ENVBOX_LOG"]:
            self.assertIn(name, ENVBOX.variables)
        self.assertEqual(ENVBOX.defaults["stop-timeout"], "90s")

    def test_durations(self):
        self.assertEqual([check.seconds(d) for d in ["90", "90s", "2m", "1m30s"]],
                         [90, 90, 120, 90])
        with self.assertRaises(ValueError):
            check.seconds("soon")


with open(os.path.join(REPO, "deploy", "image", "test.env")) as f:
    IMAGE_TEST_ENV = check.parse_env_file(f.read())


class ImageTestEnv(unittest.TestCase):
    def problems(self, docs, env_file):
        return "\n".join(check.check_image_test_env(docs, env_file))

    def test_the_image_test_runs_with_the_manifests_environment(self):
        self.assertEqual(self.problems(MANIFESTS, IMAGE_TEST_ENV), "")

    def test_a_variable_the_manifest_sets_must_be_in_the_test(self):
        env_file = dict(IMAGE_TEST_ENV)
        del env_file["ENVBOX_STOP_TIMEOUT"]
        self.assertIn("ENVBOX_STOP_TIMEOUT is in the manifest but not in the image test",
                      self.problems(MANIFESTS, env_file))

    def test_a_literal_must_have_the_manifests_value(self):
        docs, _, container = workspace()
        env(container, "CODER_ADD_FUSE")["value"] = "true"
        self.assertIn("CODER_ADD_FUSE='false', the manifest sets 'true'",
                      self.problems(docs, IMAGE_TEST_ENV))

    def test_the_test_sets_nothing_else_of_its_own(self):
        env_file = dict(IMAGE_TEST_ENV, CODER_ADD_GPU="true")
        self.assertIn("CODER_ADD_GPU is not in the manifest", self.problems(MANIFESTS, env_file))


if __name__ == "__main__":
    unittest.main()
