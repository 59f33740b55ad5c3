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
    """The SFU workload and its container (not the coturn Deployment)."""
    workload = next(
        d
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
        and d["spec"]["template"]["spec"]["containers"][0]["name"] == "sfu-server"
    )
    return workload, workload["spec"]["template"]["spec"]["containers"][0]


def coturn(docs):
    """The coturn Deployment and its container."""
    workload = next(
        d
        for d in docs
        if d["kind"] == "Deployment"
        and d["spec"]["template"]["spec"]["containers"][0]["name"] == "coturn"
    )
    return workload, workload["spec"]["template"]["spec"]["containers"][0]


def config_map(docs):
    """The server's settings ConfigMap (not the Grafana dashboard's)."""
    found = [d for d in by_kind(docs, "ConfigMap") if not d["metadata"]["name"].endswith("-dashboard")]
    assert len(found) == 1, f"expected one settings ConfigMap, got {len(found)}"
    return found[0]


def env(c):
    return {e["name"]: e for e in c.get("env", [])}


def secret_value(docs, key):
    import base64

    return base64.b64decode(one(docs, "Secret")["data"][key]).decode()


# Variants rendered (and validated) on top of the default values.
TLS_FROM_SECRET = {"tls": {"enabled": True, "secretName": "sfu-cert"}}
TLS_SELF_SIGNED = {"tls": {"enabled": True, "selfSigned": True}}
COTURN = {"turn": {"coturn": {"enabled": True, "host": "turn.example.com"}}}
EXTERNAL_TURN = {
    "turn": {
        "servers": [
            "turn:relay.example.net:3478?transport=udp",
            "turns:relay.example.net:5349?transport=tcp",
        ],
        "secret": "shared-secret-of-the-relay",
    }
}
CLUSTER = {
    "kind": "StatefulSet",
    "replicaCount": 3,
    "cluster": {"enabled": True, "publicUrl": "https://$(POD_NAME).sfu.example.com"},
    "grafanaDashboard": {"enabled": True},
}
CLUSTER_EXTERNAL_REDIS = {
    "replicaCount": 2,
    "cluster": {"enabled": True, "redis": {"url": "redis://redis.infra:6379/2"}},
}
CLUSTER_REDIS_SECRET = {
    "cluster": {"enabled": True, "redis": {"existingSecret": "redis-url"}},
}
VARIANTS = (TLS_FROM_SECRET, TLS_SELF_SIGNED, COTURN, EXTERNAL_TURN, CLUSTER,
            CLUSTER_EXTERNAL_REDIS, CLUSTER_REDIS_SECRET)


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

    def test_tls_turn_and_cluster_variants_lint_strictly(self):
        for values in VARIANTS:
            with self.subTest(values=values):
                self.lint(values)


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
        self.assertEqual(monitor["spec"]["endpoints"][0]["scheme"], "https")

    def test_tls_turn_and_cluster_variants_are_valid_kubernetes(self):
        for values in VARIANTS:
            with self.subTest(values=values):
                self.validate(render(values))


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
        config = config_map(self.docs)["data"]
        self.assertEqual(config["SFU_MEDIA_IP"], "0.0.0.0")
        self.assertEqual(config["SFU_WORKERS"], "2")

    def test_probes_and_a_grace_period_covering_the_drain(self):
        workload, c = container(self.docs)
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        drain = int(config_map(self.docs)["data"]["SFU_DRAIN_TIMEOUT"])
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

    def test_ice_tcp_on_and_rooms_not_created_on_join(self):
        config = config_map(self.docs)["data"]
        self.assertEqual(config["SFU_ICE_TCP_PORT"], "7881")
        self.assertEqual(config["SFU_AUTO_CREATE_ROOMS"], "false")
        _, c = container(self.docs)
        tcp = [(p["name"], p["containerPort"]) for p in c["ports"] if p["protocol"] == "TCP"]
        self.assertEqual(tcp, [("http", 7880), ("ice-tcp", 7881)])

    def test_no_tls_no_turn_by_default(self):
        config = config_map(self.docs)["data"]
        for key in ("SFU_TLS_CERT", "SFU_TLS_KEY", "SFU_TLS_SELF_SIGNED", "SFU_TRUSTED_PROXIES",
                    "SFU_TURN_SERVERS", "SFU_DEV"):
            self.assertNotIn(key, config)
        _, c = container(self.docs)
        self.assertNotIn("SFU_TURN_SECRET", env(c))
        self.assertNotIn("volumeMounts", c)
        self.assertEqual(c["livenessProbe"]["httpGet"].get("scheme"), "HTTP")
        self.assertEqual(c["readinessProbe"]["httpGet"].get("scheme"), "HTTP")
        self.assertEqual(list(one(self.docs, "Secret")["data"]), ["SFU_API_KEYS"])

    def test_notes_tell_how_to_reach_it(self):
        text = notes()
        self.assertIn("port-forward svc/media-sfu 7880:7880", text)
        self.assertIn("UDP ports 7882-7883", text)
        self.assertIn("TCP port 7881", text)
        self.assertIn("get secret media-sfu", text)
        self.assertIn("HTTPS", text)
        self.assertIn("tls.enabled", text)
        self.assertIn("POST /api/rooms", text)


class AllOn(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs = render(ALL_ON)

    def test_every_optional_resource_is_rendered(self):
        kinds = sorted(d["kind"] for d in self.docs)
        self.assertEqual(
            kinds,
            [
                "ConfigMap",
                "ConfigMap",
                "DaemonSet",
                "Deployment",
                "Ingress",
                "PodDisruptionBudget",
                "Service",
                "Service",
                "ServiceMonitor",
            ],
        )

    def test_existing_secret_and_media_service(self):
        _, c = container(self.docs)
        ref = {e["name"]: e for e in c["env"]}["SFU_API_KEYS"]["valueFrom"]["secretKeyRef"]
        self.assertEqual((ref["name"], ref["key"]), ("sfu-api-keys", "keys"))
        self.assertEqual({e["name"]: e for e in c["env"]}["SFU_ADVERTISE_IPS"]["value"], "203.0.113.10")
        media = next(s for s in by_kind(self.docs, "Service") if s["metadata"]["name"].endswith("-media"))
        ports = [(p["port"], p["protocol"]) for p in media["spec"]["ports"]]
        self.assertEqual(
            ports,
            [(40000, "UDP"), (40001, "UDP"), (40002, "UDP"), (40003, "UDP"), (40443, "TCP")],
        )
        self.assertIn({"name": "ice-tcp", "containerPort": 40443, "protocol": "TCP"}, c["ports"])

    def test_tls_trusted_proxies_and_turn(self):
        workload, c = container(self.docs)
        config = config_map(self.docs)["data"]
        self.assertEqual(config["SFU_TLS_CERT"], "/etc/sfu/tls/tls.crt")
        self.assertEqual(config["SFU_TRUSTED_PROXIES"], "10.244.0.0/16,10.96.0.10")
        self.assertEqual(config["SFU_AUTO_CREATE_ROOMS"], "true")
        self.assertEqual(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS")
        volumes = workload["spec"]["template"]["spec"]["volumes"]
        self.assertEqual(volumes, [{"name": "tls", "secret": {"secretName": "sfu-server-tls"}}])
        self.assertEqual(
            config["SFU_TURN_SERVERS"],
            "turn:turn.example.com:3479?transport=udp,turn:turn.example.com:3479?transport=tcp",
        )
        self.assertEqual(config["SFU_TURN_TTL"], "3600")
        ref = env(c)["SFU_TURN_SECRET"]["valueFrom"]["secretKeyRef"]
        self.assertEqual((ref["name"], ref["key"]), ("sfu-turn", "static-auth-secret"))
        _, relay = coturn(self.docs)
        self.assertEqual(env(relay)["TURN_SECRET"]["valueFrom"]["secretKeyRef"], ref)
        self.assertIn("--external-ip=203.0.113.20/10.0.0.20", relay["args"])
        self.assertIn("--denied-peer-ip=10.0.0.0-10.255.255.255", relay["args"])
        self.assertEqual(relay["args"][-1], "--verbose")

    def test_workload_settings(self):
        workload, c = container(self.docs)
        spec = workload["spec"]["template"]["spec"]
        self.assertFalse(spec["hostNetwork"])
        self.assertEqual(spec["terminationGracePeriodSeconds"], 150)
        self.assertEqual(spec["priorityClassName"], "media-critical")
        self.assertEqual(c["image"], "registry.example.com/media/sfu-server:1.2.3")


class Tls(unittest.TestCase):
    def test_certificate_from_a_secret(self):
        docs = render(TLS_FROM_SECRET)
        workload, c = container(docs)
        config = config_map(docs)["data"]
        self.assertEqual(config["SFU_TLS_CERT"], "/etc/sfu/tls/tls.crt")
        self.assertEqual(config["SFU_TLS_KEY"], "/etc/sfu/tls/tls.key")
        self.assertNotIn("SFU_TLS_SELF_SIGNED", config)
        self.assertEqual(
            c["volumeMounts"], [{"name": "tls", "mountPath": "/etc/sfu/tls", "readOnly": True}]
        )
        volumes = workload["spec"]["template"]["spec"]["volumes"]
        self.assertEqual(volumes, [{"name": "tls", "secret": {"secretName": "sfu-cert"}}])
        self.assertEqual(c["livenessProbe"]["httpGet"]["scheme"], "HTTPS")
        self.assertEqual(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS")
        http = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "media-sfu")
        self.assertEqual(http["spec"]["ports"][0]["appProtocol"], "https")
        text = notes(TLS_FROM_SECRET)
        self.assertIn("https://127.0.0.1:7880/", text)
        self.assertIn("Secret sfu-cert", text)

    def test_self_signed(self):
        docs = render(TLS_SELF_SIGNED)
        _, c = container(docs)
        config = config_map(docs)["data"]
        self.assertEqual(config["SFU_TLS_SELF_SIGNED"], "true")
        self.assertNotIn("SFU_TLS_CERT", config)
        self.assertNotIn("volumeMounts", c)
        self.assertEqual(c["livenessProbe"]["httpGet"]["scheme"], "HTTPS")
        self.assertEqual(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS")

    def test_trusted_proxies(self):
        docs = render({"config": {"trustedProxies": ["10.244.0.0/16", "192.0.2.7"]}})
        self.assertEqual(
            config_map(docs)["data"]["SFU_TRUSTED_PROXIES"], "10.244.0.0/16,192.0.2.7"
        )


class Turn(unittest.TestCase):
    def test_bundled_coturn(self):
        docs = render(COTURN)
        relay_workload, relay = coturn(docs)
        spec = relay_workload["spec"]["template"]["spec"]
        self.assertTrue(spec["hostNetwork"])
        self.assertEqual(relay_workload["spec"]["replicas"], 1)
        self.assertEqual(relay["image"], "coturn/coturn:4.6")
        self.assertEqual(relay["command"], ["turnserver"])
        args = relay["args"]
        for arg in (
            "-n",
            "--use-auth-secret",
            "--static-auth-secret=$(TURN_SECRET)",
            "--realm=sfu",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--fingerprint",
            "--no-multicast-peers",
            "--listening-port=3478",
            "--min-port=49152",
            "--max-port=49999",
        ):
            self.assertIn(arg, args)
        self.assertFalse(any(a.startswith("--external-ip") for a in args))
        # The relay reaches the SFU and nothing else: every peer denied, the node allowed.
        self.assertIn("--denied-peer-ip=0.0.0.0-255.255.255.255", args)
        self.assertIn("--allowed-peer-ip=$(NODE_IP)", args)
        node_ip = {e["name"]: e for e in relay["env"]}["NODE_IP"]
        self.assertEqual(node_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP")
        ports = {(p["containerPort"], p["protocol"]) for p in relay["ports"]}
        self.assertEqual(ports, {(3478, "UDP"), (3478, "TCP")})
        # The relay pod must not be selected by the SFU's Services or PodDisruptionBudget.
        sfu_selector = one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
        labels = relay_workload["spec"]["template"]["metadata"]["labels"]
        self.assertFalse(all(labels.get(k) == v for k, v in sfu_selector.items()))

        _, c = container(docs)
        config = config_map(docs)["data"]
        self.assertEqual(
            config["SFU_TURN_SERVERS"],
            "turn:turn.example.com:3478?transport=udp,turn:turn.example.com:3478?transport=tcp",
        )
        self.assertEqual(config["SFU_TURN_TTL"], "14400")
        self.assertNotIn("SFU_TURN_SECRET", config)
        secret = one(docs, "Secret")
        ref = env(c)["SFU_TURN_SECRET"]["valueFrom"]["secretKeyRef"]
        self.assertEqual(ref, {"name": secret["metadata"]["name"], "key": "SFU_TURN_SECRET"})
        self.assertEqual(env(relay)["TURN_SECRET"]["valueFrom"]["secretKeyRef"], ref)
        generated = secret_value(docs, "SFU_TURN_SECRET")
        self.assertGreaterEqual(len(generated), 32)
        self.assertIn(":", secret_value(docs, "SFU_API_KEYS"))

        text = notes(COTURN)
        self.assertIn("turn:turn.example.com:3478?transport=udp", text)
        self.assertIn("49152-49999", text)

    def test_external_ip(self):
        coturn_values = {"enabled": True, "host": "198.51.100.4", "externalIp": "198.51.100.4"}
        values = {"turn": {"coturn": coturn_values}}
        _, relay = coturn(render(values))
        self.assertIn("--external-ip=198.51.100.4", relay["args"])

    def test_external_relay_passed_through(self):
        docs = render(EXTERNAL_TURN)
        self.assertEqual([d["kind"] for d in docs if d["kind"] == "Deployment"], ["Deployment"])
        container(docs)  # the one Deployment is the SFU's
        config = config_map(docs)["data"]
        self.assertEqual(config["SFU_TURN_SERVERS"], ",".join(EXTERNAL_TURN["turn"]["servers"]))
        self.assertEqual(secret_value(docs, "SFU_TURN_SECRET"), "shared-secret-of-the-relay")
        _, c = container(docs)
        ref = env(c)["SFU_TURN_SECRET"]["valueFrom"]["secretKeyRef"]
        self.assertEqual(ref["key"], "SFU_TURN_SECRET")

    def test_existing_turn_secret_with_existing_api_keys_creates_no_secret(self):
        docs = render(
            {
                "apiKeys": {"existingSecret": "keys"},
                "turn": {
                    "servers": ["turn:relay.example.net:3478"],
                    "existingSecret": "relay",
                    "existingSecretKey": "s",
                },
            }
        )
        self.assertEqual(by_kind(docs, "Secret"), [])
        _, c = container(docs)
        ref = env(c)["SFU_TURN_SECRET"]["valueFrom"]["secretKeyRef"]
        self.assertEqual(ref, {"name": "relay", "key": "s"})

    def test_ice_tcp_off(self):
        media_values = {"iceTcpPort": 0, "hostNetwork": False, "service": {"enabled": True}}
        docs = render({"media": media_values})
        self.assertEqual(config_map(docs)["data"]["SFU_ICE_TCP_PORT"], "0")
        _, c = container(docs)
        self.assertFalse(any(p["name"] == "ice-tcp" for p in c["ports"]))
        media = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"] == "media-sfu-media")
        self.assertTrue(all(p["protocol"] == "UDP" for p in media["spec"]["ports"]))


class ClusterMode(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs = render(CLUSTER)

    def test_pods_have_stable_names_that_are_their_node_ids(self):
        workload, c = container(self.docs)
        self.assertEqual(workload["kind"], "StatefulSet")
        self.assertEqual(workload["spec"]["replicas"], 3)
        names = [e["name"] for e in c["env"]]
        # $(POD_NAME) expands only if POD_NAME is defined before it.
        self.assertLess(names.index("POD_NAME"), names.index("SFU_NODE_ID"))
        self.assertLess(names.index("POD_NAME"), names.index("SFU_PUBLIC_URL"))
        e = env(c)
        self.assertEqual(e["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name")
        self.assertEqual(e["SFU_NODE_ID"]["value"], "$(POD_NAME)")
        self.assertEqual(e["SFU_PUBLIC_URL"]["value"], "https://$(POD_NAME).sfu.example.com")
        governing = next(s for s in by_kind(self.docs, "Service")
                         if s["metadata"]["name"] == workload["spec"]["serviceName"])
        self.assertEqual(governing["spec"]["clusterIP"], "None")
        self.assertEqual(config_map(self.docs)["data"]["SFU_NODE_TTL"], "5")

    def test_the_pods_relay_media_on_their_own_address_with_a_generated_secret(self):
        _, c = container(self.docs)
        names = [e["name"] for e in c["env"]]
        self.assertLess(names.index("POD_IP"), names.index("SFU_RELAY_ADDR"))
        e = env(c)
        self.assertEqual(e["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP")
        self.assertEqual(e["SFU_RELAY_ADDR"]["value"], "$(POD_IP):7890")
        ref = e["SFU_CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"]
        self.assertEqual(ref["key"], "SFU_CLUSTER_SECRET")
        self.assertGreaterEqual(len(secret_value(self.docs, "SFU_CLUSTER_SECRET")), 32)
        udp = [(p["name"], p["containerPort"]) for p in c["ports"] if p["protocol"] == "UDP"]
        self.assertIn(("relay", 7890), udp)
        # Off with port 0; from an existing Secret when given.
        _, c = container(render({"cluster": {"enabled": True, "relay": {"port": 0}}}))
        self.assertNotIn("SFU_RELAY_ADDR", env(c))
        docs = render({"cluster": {"enabled": True, "relay": {"existingSecret": "cluster"}}})
        _, c = container(docs)
        self.assertEqual(env(c)["SFU_CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"]["name"], "cluster")
        self.assertNotIn("SFU_CLUSTER_SECRET", one(docs, "Secret")["data"])

    def test_the_chart_runs_its_own_redis_when_none_is_given(self):
        _, c = container(self.docs)
        redis = next(d for d in by_kind(self.docs, "Deployment") if d["metadata"]["name"].endswith("-redis"))
        service = next(s for s in by_kind(self.docs, "Service") if s["metadata"]["name"].endswith("-redis"))
        self.assertEqual(env(c)["SFU_REDIS_URL"]["value"], f"redis://{service['metadata']['name']}:6379")
        self.assertEqual(redis["spec"]["template"]["metadata"]["labels"], service["spec"]["selector"])
        # The SFU's own selector (and its PodDisruptionBudget) does not pick the Redis pod.
        workload, _ = container(self.docs)
        sfu_selector = workload["spec"]["selector"]["matchLabels"]
        redis_labels = redis["spec"]["template"]["metadata"]["labels"]
        self.assertFalse(all(redis_labels.get(k) == v for k, v in sfu_selector.items()))
        args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        self.assertEqual(args[:2], ["--save", ""], "nothing persisted: heartbeats rebuild it")

    def test_an_external_redis_replaces_the_bundled_one(self):
        docs = render(CLUSTER_EXTERNAL_REDIS)
        _, c = container(docs)
        self.assertEqual(env(c)["SFU_REDIS_URL"]["value"], "redis://redis.infra:6379/2")
        self.assertFalse(any(d["metadata"]["name"].endswith("-redis") for d in docs))
        docs = render(CLUSTER_REDIS_SECRET)
        _, c = container(docs)
        ref = env(c)["SFU_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        self.assertEqual((ref["name"], ref["key"]), ("redis-url", "SFU_REDIS_URL"))

    def test_single_node_by_default(self):
        _, c = container(render())
        self.assertNotIn("SFU_REDIS_URL", env(c))
        self.assertNotIn("SFU_NODE_TTL", config_map(render())["data"])

    def test_the_dashboard_charts_metrics_the_server_exports(self):
        import json
        import re

        dashboard = next(d for d in by_kind(self.docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
        self.assertEqual(dashboard["metadata"]["labels"]["grafana_dashboard"], "1")
        board = json.loads(dashboard["data"]["sfu.json"])
        exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
        self.assertGreaterEqual(len(board["panels"]), 10)
        root = CHART.parent.parent
        sources = "".join(
            (root / f).read_text()
            for f in ("control-api/src/metrics.rs", "sfu/src/counters.rs")
        )
        names = {n for e in exprs for n in re.findall(r"\b((?:sfu|process)_[a-z_]+)\{", e)}
        self.assertIn("sfu_cluster_redis_up", names)
        for name in names:
            # Counters are exported as sfu_<field>_total, histograms with _bucket.
            base = re.sub(r"_(total|bucket)$", "", name)
            field = base.removeprefix("sfu_")
            with self.subTest(metric=name):
                self.assertTrue(base in sources or re.search(rf"\b{field},", sources), name)


class BadValues(unittest.TestCase):
    def test_short_secret_is_refused(self):
        with self.assertRaises(helm.HelmError) as e:
            render({"apiKeys": {"keys": {"k": "short"}}})
        self.assertIn("at least 16 characters", str(e.exception))

    def test_no_api_key_is_refused_never_the_development_key(self):
        with self.assertRaises(helm.HelmError) as e:
            render({"apiKeys": {"generate": False}})
        message = str(e.exception)
        self.assertIn("no API key configured", message)
        for value in ("apiKeys.generate", "apiKeys.keys", "apiKeys.existingSecret"):
            self.assertIn(value, message)

    def test_explicit_keys_without_generate_are_fine(self):
        docs = render({"apiKeys": {"generate": False, "keys": {"app": "0123456789abcdef0123"}}})
        self.assertEqual(secret_value(docs, "SFU_API_KEYS"), "app:0123456789abcdef0123")

    def test_tls_without_a_certificate_is_refused(self):
        with self.assertRaises(helm.HelmError) as e:
            render({"tls": {"enabled": True}})
        self.assertIn("tls.secretName", str(e.exception))
        self.assertIn("tls.selfSigned", str(e.exception))

    def test_tls_with_both_sources_is_refused(self):
        with self.assertRaises(helm.HelmError) as e:
            render({"tls": {"enabled": True, "secretName": "c", "selfSigned": True}})
        self.assertIn("not both", str(e.exception))

    def test_coturn_without_host_is_refused(self):
        with self.assertRaises(helm.HelmError) as e:
            render({"turn": {"coturn": {"enabled": True}}})
        self.assertIn("turn.coturn.host", str(e.exception))

    def test_ice_tcp_port_on_the_http_port_is_refused(self):
        with self.assertRaises(helm.HelmError) as e:
            render({"media": {"iceTcpPort": 7880}})
        self.assertIn("media.iceTcpPort", str(e.exception))

    def test_unknown_kind_is_refused(self):
        with self.assertRaises(helm.HelmError):
            render({"kind": "ReplicaSet"})

    def test_redis_url_and_secret_together_are_refused(self):
        with self.assertRaises(helm.HelmError) as e:
            render({"cluster": {"enabled": True, "redis": {"url": "redis://r:6379", "existingSecret": "s"}}})
        self.assertIn("not both", str(e.exception))

    def test_a_short_cluster_secret_is_refused(self):
        with self.assertRaises(helm.HelmError) as e:
            render({"cluster": {"enabled": True, "relay": {"secret": "short"}}})
        self.assertIn("at least 16", str(e.exception))

    def test_a_redis_url_must_be_one(self):
        with self.assertRaises(helm.HelmError) as e:
            render({"cluster": {"enabled": True, "redis": {"url": "r:6379"}}})
        self.assertIn("redis://", str(e.exception))


if __name__ == "__main__":
    unittest.main()
