"""Chart tests: strict lint, offline render with the default values and with every option on,
validation of the rendered manifests against the Kubernetes schemas, and checks of what the
chart promises (probes, drain grace period, generated keys, media ports...).

Run by the project's test command in a venv with helm-python-sdk (the Helm library, no helm
binary) and kubernetes-validate:  python -m unittest discover -s helm/tests
"""

import pathlib
import unittest

import helm_python as helm
import kubernetes_validate
import yaml

CHART = pathlib.Path(__file__).resolve().parent.parent / "sfu"
ALL_ON = yaml.safe_load((CHART / "ci" / "all-on-values.yaml").read_text())
KUBE_VERSION = "1.30.0"
# Custom resources have no schema in kubernetes-validate; their shape is checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor"}


def render(values=None):
    """Renders the chart offline; returns the manifests as a list of objects."""
    chart = helm.Chart.load(CHART)
    rendered = chart.render(values or {}, name="media", namespace="rtc", is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def notes(values=None):
    chart = helm.Chart.load(CHART)
    rendered = chart.render(values or {}, name="media", namespace="rtc", is_install=True)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs):
    workload = next(d for d in docs if d["kind"] in ("Deployment", "DaemonSet"))
    return workload, workload["spec"]["template"]["spec"]["containers"][0]


class Lint(unittest.TestCase):
    def lint(self, values):
        report = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE_VERSION)
        problems = [m for m in report.get("messages", []) if m["severity"] >= 2]
        self.assertEqual(report.get("errors") or [], [])
        self.assertEqual(problems, [], f"lint findings: {problems}")

    def test_default_values_lint_strictly(self):
        self.lint({})

    def test_all_on_values_lint_strictly(self):
        self.lint(ALL_ON)


class Validate(unittest.TestCase):
    def validate(self, docs):
        for doc in docs:
            if doc["kind"] in CUSTOM_KINDS:
                continue
            with self.subTest(kind=doc["kind"], name=doc["metadata"]["name"]):
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)

    def test_default_render_is_valid_kubernetes(self):
        self.validate(render())

    def test_all_on_render_is_valid_kubernetes(self):
        docs = render(ALL_ON)
        self.validate(docs)
        monitor = one(docs, "ServiceMonitor")
        self.assertEqual(monitor["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(monitor["spec"]["endpoints"][0]["path"], "/metrics")
        self.assertEqual(monitor["metadata"]["labels"]["release"], "prometheus")


class Defaults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs = render()

    def test_resources(self):
        kinds = sorted(d["kind"] for d in self.docs)
        self.assertEqual(
            kinds, ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service"]
        )

    def test_media_on_the_node_network_with_one_udp_port_per_worker(self):
        workload, c = container(self.docs)
        spec = workload["spec"]["template"]["spec"]
        self.assertTrue(spec["hostNetwork"])
        udp = [p["containerPort"] for p in c["ports"] if p["protocol"] == "UDP"]
        self.assertEqual(udp, [7882, 7883])
        env = {e["name"]: e for e in c["env"]}
        self.assertEqual(env["SFU_ADVERTISE_IPS"]["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP")
        config = one(self.docs, "ConfigMap")["data"]
        self.assertEqual(config["SFU_MEDIA_IP"], "0.0.0.0")
        self.assertEqual(config["SFU_WORKERS"], "2")

    def test_probes_and_a_grace_period_covering_the_drain(self):
        workload, c = container(self.docs)
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        drain = int(one(self.docs, "ConfigMap")["data"]["SFU_DRAIN_TIMEOUT"])
        self.assertGreater(grace, drain)

    def test_generated_api_key_never_the_development_one(self):
        import base64

        secret = one(self.docs, "Secret")
        keys = base64.b64decode(secret["data"]["SFU_API_KEYS"]).decode()
        key, value = keys.split(":")
        self.assertEqual(key, "sfu")
        self.assertGreaterEqual(len(value), 32)
        self.assertNotIn("devsecret", value)
        _, c = container(self.docs)
        ref = {e["name"]: e for e in c["env"]}["SFU_API_KEYS"]["valueFrom"]["secretKeyRef"]
        self.assertEqual(ref["name"], secret["metadata"]["name"])

    def test_runs_as_non_root_with_a_read_only_filesystem(self):
        workload, c = container(self.docs)
        self.assertTrue(workload["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"])
        self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        self.assertEqual(c["image"], "ghcr.io/example/sfu-server:0.1.0")

    def test_notes_tell_how_to_reach_it(self):
        text = notes()
        self.assertIn("port-forward svc/media-sfu 7880:7880", text)
        self.assertIn("UDP ports 7882-7883", text)
        self.assertIn("get secret media-sfu", text)


class AllOn(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs = render(ALL_ON)

    def test_every_optional_resource_is_rendered(self):
        kinds = sorted(d["kind"] for d in self.docs)
        self.assertEqual(
            kinds,
            ["ConfigMap", "DaemonSet", "Ingress", "PodDisruptionBudget", "Service", "Service", "ServiceMonitor"],
        )

    def test_existing_secret_and_media_service(self):
        _, c = container(self.docs)
        ref = {e["name"]: e for e in c["env"]}["SFU_API_KEYS"]["valueFrom"]["secretKeyRef"]
        self.assertEqual((ref["name"], ref["key"]), ("sfu-api-keys", "keys"))
        self.assertEqual({e["name"]: e for e in c["env"]}["SFU_ADVERTISE_IPS"]["value"], "203.0.113.10")
        media = next(s for s in by_kind(self.docs, "Service") if s["metadata"]["name"].endswith("-media"))
        self.assertEqual([p["port"] for p in media["spec"]["ports"]], [40000, 40001, 40002, 40003])
        self.assertTrue(all(p["protocol"] == "UDP" for p in media["spec"]["ports"]))

    def test_workload_settings(self):
        workload, c = container(self.docs)
        spec = workload["spec"]["template"]["spec"]
        self.assertFalse(spec["hostNetwork"])
        self.assertEqual(spec["terminationGracePeriodSeconds"], 150)
        self.assertEqual(spec["priorityClassName"], "media-critical")
        self.assertEqual(c["image"], "registry.example.com/media/sfu-server:1.2.3")


class BadValues(unittest.TestCase):
    def test_short_secret_is_refused(self):
        with self.assertRaises(helm.HelmError) as e:
            render({"apiKeys": {"keys": {"k": "short"}}})
        self.assertIn("at least 16 characters", str(e.exception))

    def test_unknown_kind_is_refused(self):
        with self.assertRaises(helm.HelmError):
            render({"kind": "StatefulSet"})


if __name__ == "__main__":
    unittest.main()
