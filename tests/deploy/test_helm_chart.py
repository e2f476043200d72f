"""The Helm chart helm/icae, offline: helm lint, every value set under ci/ rendered and each
object validated against the Kubernetes 1.37 schemas, and what matters asserted on the
rendered objects (binaries, autoscalers, probes, GPUs, the Redis password, security)."""

import json
import re

import pytest
from deploy_support import (
    BINARIES,
    CHART_DIR,
    CI_VALUES_DIR,
    COMPONENTS,
    CRD_KINDS,
    GRPC_SERVICES,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    ROOT,
    chart,
    ci_value_files,
    component_name,
    documents,
    effective_values,
    env_of,
    load_values,
    named,
    of_kind,
    pod_templates,
    render,
    require_module,
    secret_strings,
    strip_meta,
)

VALUE_SETS = {"values.yaml (defaults)": None} | {p.name: p for p in ci_value_files()}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def case(request):
    """(name, effective values, rendered manifests, objects) of one value set."""
    path = VALUE_SETS[request.param]
    overrides = load_values(path) if path else {}
    manifests = render(overrides)
    return request.param, effective_values(overrides), manifests, documents(manifests)


def test_ci_value_sets_cover_the_deployments_we_support():
    names = {p.name for p in ci_value_files()}
    for expected in (
        "default-values.yaml",
        "gpu-values.yaml",
        "keda-values.yaml",
        "external-redis-cluster-tls-values.yaml",
        "autoscaling-off-values.yaml",
        "tls-auth-values.yaml",
    ):
        assert expected in names, f"{CI_VALUES_DIR}/{expected} is missing"


@pytest.mark.parametrize(
    "values_file", [None, *ci_value_files()], ids=lambda p: getattr(p, "name", "defaults")
)
def test_helm_lint_strict(values_file):
    helm = require_module("helm_python", "helm-python-sdk==0.2.2")
    values = load_values(values_file) if values_file else None
    report = helm.lint(str(CHART_DIR), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, json.dumps(report, indent=2)
    assert report["total_charts_linted"] == 1


def test_every_object_validates_against_kubernetes_schemas(case):
    kv = require_module("kubernetes_validate", "kubernetes-validate==1.37.0")
    name, _, _, docs = case
    assert docs, f"{name}: nothing rendered"
    for doc in docs:
        obj = strip_meta(doc)
        kind = (obj.get("apiVersion"), obj.get("kind"))
        if kind in CRD_KINDS:
            continue  # checked field by field in test_custom_resources
        try:
            kv.validate(obj, KUBE_VERSION, strict=True)
        except Exception as exc:  # ValidationError, SchemaNotFoundError
            pytest.fail(f"{name}: {doc['__template__']} {kind[1]} {obj['metadata']['name']}: {exc}")


def test_standard_labels_and_namespace_on_every_object(case):
    name, _, _, docs = case
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert key in labels, f"{name}: {doc['kind']} {doc['metadata']['name']} lacks {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert doc["metadata"]["namespace"] == NAMESPACE


def test_two_deployments_run_the_two_binaries(case):
    name, values, _, docs = case
    deployments = of_kind(docs, "Deployment")
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(
        component_name(c) for c in COMPONENTS
    )
    for component in COMPONENTS:
        cv = values[component]
        pod = named(docs, "Deployment", component_name(component))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        binary = BINARIES[component]
        assert container["name"] == binary
        # The image's ENTRYPOINT (the binary, see test_dockerfiles.py) is not overridden;
        # only flags are appended.
        assert "command" not in container, f"{name}: {binary} overrides the entrypoint"
        assert all(a.startswith("--") or not a.startswith("-") for a in container.get("args", []))
        assert container.get("args", []) == cv["extraArgs"]
        repository, _, tag = container["image"].rpartition(":")
        expected_repo = cv["image"]["repository"]
        if cv["gpu"]["enabled"] and cv["gpu"]["image"]["repository"]:
            expected_repo = cv["gpu"]["image"]["repository"]
        assert repository == expected_repo, container["image"]
        assert binary in repository, f"{name}: {component} runs image {container['image']}"
        assert tag, container["image"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        ports.pop("health", None)  # with TLS (test_tls_and_tokens_come_from_mounted_secrets)
        assert ports == {"grpc": cv["port"], "metrics": cv["metricsPort"]}
        env = env_of(container)
        assert env["ICAE_PORT"]["value"] == str(cv["port"])
        assert env["ICAE_METRICS_PORT"]["value"] == str(cv["metricsPort"])
        assert env["ICAE_HOST"]["value"] == "0.0.0.0"
        assert env["ICAE_METRICS_HOST"]["value"] == "0.0.0.0"
        assert env["ICAE_JSON_OUTPUT"]["value"] == str(values["logging"]["json"]).lower()
        assert env["ICAE_MAX_CONCURRENT_REQUESTS"]["value"] == str(cv["maxConcurrentRequests"])
        assert env["ICAE_SLOT_TTL_SECONDS"]["value"] == str(cv["slotTtlSeconds"])
        if values["otlp"]["endpoint"]:
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == values["otlp"]["endpoint"]
        else:
            assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
        for extra in cv["extraEnv"]:
            assert env[extra["name"]] == extra


def test_each_component_has_its_own_autoscaler(case):
    name, values, _, docs = case
    hpas = {d["metadata"]["name"]: d for d in of_kind(docs, "HorizontalPodAutoscaler")}
    scaled = {d["metadata"]["name"]: d for d in of_kind(docs, "ScaledObject")}
    for component in COMPONENTS:
        cname = component_name(component)
        autoscaling = values[component]["autoscaling"]
        deployment = named(docs, "Deployment", cname)
        if not autoscaling["enabled"]:
            assert cname not in hpas and cname not in scaled, f"{name}: {component}"
            assert deployment["spec"]["replicas"] == values[component]["replicaCount"]
            continue
        # The autoscaler owns the replica count: the Deployment must not fight it.
        assert "replicas" not in deployment["spec"], f"{name}: {cname} sets replicas"
        metric = autoscaling["metric"]["name"]
        target = str(autoscaling["metric"]["targetAverageValue"])
        if autoscaling["kind"] == "hpa":
            assert cname not in scaled
            spec = hpas[cname]["spec"]
            assert spec["scaleTargetRef"] == {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": cname,
            }
            assert spec["minReplicas"] == autoscaling["minReplicas"]
            assert spec["maxReplicas"] == autoscaling["maxReplicas"]
            pods = [m["pods"] for m in spec["metrics"] if m["type"] == "Pods"]
            if autoscaling["metric"]["enabled"]:
                assert len(pods) == 1, spec["metrics"]
                assert pods[0]["metric"]["name"] == metric
                assert pods[0]["target"] == {"type": "AverageValue", "averageValue": target}
            else:
                # Without prometheus-adapter a custom metric would never be read.
                assert pods == [], spec["metrics"]
            resources = {m["resource"]["name"] for m in spec["metrics"] if m["type"] == "Resource"}
            if autoscaling["targetCPUUtilizationPercentage"] is not None:
                assert "cpu" in resources
            assert spec["metrics"], f"{name}: {cname} scales on nothing"
        else:
            assert cname not in hpas
            spec = scaled[cname]["spec"]
            assert spec["scaleTargetRef"]["name"] == cname
            assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
            assert spec["minReplicaCount"] == autoscaling["minReplicas"]
            assert spec["maxReplicaCount"] == autoscaling["maxReplicas"]
            (trigger,) = spec["triggers"]
            assert trigger["type"] == "prometheus"
            assert trigger["metadata"]["serverAddress"] == autoscaling["keda"]["serverAddress"]
            assert trigger["metadata"]["threshold"] == target
            query = trigger["metadata"]["query"]
            assert metric in query, query
            fallback = autoscaling["keda"]["fallback"]
            assert spec["fallback"] == fallback, spec.get("fallback")
            if not autoscaling["keda"]["query"]:
                # The default query reads this component's pods only.
                assert f'pod=~"{cname}-' in query and f'namespace="{NAMESPACE}"' in query
    # The defaults: an HPA on CPU, which works on any cluster; each component's own gauge
    # is one flag away.
    defaults = chart().values
    for component in COMPONENTS:
        autoscaling = defaults[component]["autoscaling"]
        assert autoscaling["kind"] == "hpa" and not autoscaling["metric"]["enabled"]
        assert autoscaling["targetCPUUtilizationPercentage"] is not None
    assert defaults["encoder"]["autoscaling"]["metric"]["name"] == "icae_queue_size"
    assert defaults["decoder"]["autoscaling"]["metric"]["name"] == "icae_active_sequences"


def test_custom_resources(case):
    """ScaledObject and ServiceMonitor are not in kubernetes-validate: check their shape."""
    name, values, _, docs = case
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) not in CRD_KINDS:
            continue
        assert set(doc) - {"__template__"} == {"apiVersion", "kind", "metadata", "spec"}, doc
        spec = doc["spec"]
        if doc["kind"] == "ScaledObject":
            assert set(spec) <= {
                "scaleTargetRef",
                "minReplicaCount",
                "maxReplicaCount",
                "pollingInterval",
                "cooldownPeriod",
                "advanced",
                "triggers",
                "fallback",
                "idleReplicaCount",
            }, spec
            for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
                assert isinstance(spec[key], int), key
            for trigger in spec["triggers"]:
                assert set(trigger) <= {"type", "metadata", "metricType", "authenticationRef"}
                assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger
                assert trigger.get("metricType", "AverageValue") in ("AverageValue", "Value")
        else:
            component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
            assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
            (endpoint,) = spec["endpoints"]
            assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
            # The Service it selects has that port.
            service = named(docs, "Service", component_name(component))
            assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    monitors = {d["metadata"]["name"] for d in of_kind(docs, "ServiceMonitor")}
    for component in COMPONENTS:
        enabled = values[component]["serviceMonitor"]["enabled"]
        assert (component_name(component) in monitors) == enabled, f"{name}: {component}"


def test_grpc_probes_on_the_right_services_and_ports(case):
    name, values, _, docs = case
    for component in COMPONENTS:
        pod = named(docs, "Deployment", component_name(component))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        # The kubelet's gRPC probes cannot speak TLS: with TLS they use the plaintext port.
        tls = values["security"]["tls"]["existingSecret"]
        port = values["security"]["healthPort"] if tls else values[component]["port"]
        readiness = GRPC_SERVICES[component]
        for probe_key, service in (
            ("startupProbe", readiness),
            ("livenessProbe", ""),
            ("readinessProbe", readiness),
        ):
            probe = container[probe_key]
            assert probe["grpc"] == {"port": port, "service": service}, f"{name}: {probe_key}"
        startup = container["startupProbe"]
        # Model loading can take minutes: the startup probe waits at least 5 of them.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, startup


def test_termination_grace_outlasts_the_drain(case):
    name, values, _, docs = case
    for component in COMPONENTS:
        pod = named(docs, "Deployment", component_name(component))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        grace = int(env_of(container)["ICAE_SHUTDOWN_GRACE_SECONDS"]["value"])
        assert grace == values[component]["shutdownGraceSeconds"]
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
        assert pod["terminationGracePeriodSeconds"] > grace + pre_stop.get("seconds", 0), name


def test_gpu_limits_only_when_enabled(case):
    name, values, _, docs = case
    for component in COMPONENTS:
        gpu = values[component]["gpu"]
        pod = named(docs, "Deployment", component_name(component))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        limits = container.get("resources", {}).get("limits", {})
        requests = container.get("resources", {}).get("requests", {})
        device = env_of(container)["ICAE_DEVICE"]["value"]
        if gpu["enabled"]:
            assert limits.get(gpu["resourceName"]) == gpu["count"], f"{name}: {limits}"
            assert device == "cuda"
            tag = container["image"].rpartition(":")[2]
            assert tag == (gpu["image"]["tag"] or f"{chart().metadata['appVersion']}-cuda")
        else:
            assert not any("gpu" in k for k in list(limits) + list(requests)), f"{name}: {limits}"
            assert device == "cpu"
            assert not container["image"].endswith("-cuda")


def test_both_services_run_one_explicit_dtype(case):
    """`auto` resolves per node (AMX or not): the chart always sets one dtype for both."""
    name, values, _, docs = case
    dtypes = set()
    for component in COMPONENTS:
        pod = named(docs, "Deployment", component_name(component))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = env_of(container)
        expected = values["model"]["dtype"] or (
            "bf16" if values[component]["gpu"]["enabled"] else "f32"
        )
        assert env["ICAE_DTYPE"]["value"] == expected, name
        dtypes.add(env["ICAE_DTYPE"]["value"])
        slot_dtype = env.get("ICAE_SLOT_DTYPE", {}).get("value")
        assert slot_dtype == (values["model"]["slotDtype"] if component == "encoder" else None)
    assert len(dtypes) == 1, f"{name}: {dtypes}"


def test_redis_password_only_through_a_secret(case):
    name, values, manifests, docs = case
    passwords = [s for s in secret_strings(docs) if len(s) >= 16]
    if values["redis"]["enabled"] and not values["redis"]["auth"]["existingSecret"]:
        assert passwords, f"{name}: the chart's Redis has no generated password"
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(strip_meta(doc))
        for password in passwords:
            assert password not in text, f"{name}: the password is in {doc['kind']}"
    for cm in of_kind(docs, "ConfigMap"):
        assert not re.search(r"pass(word)?", json.dumps(cm.get("data", {})), re.I), cm
    for obj_name, template in pod_templates(docs):
        spec = template["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            for env in container.get("env", []):
                if re.search(r"PASSWORD|REDISCLI_AUTH", env["name"]):
                    assert "value" not in env, f"{name}: {obj_name} {env['name']} is a plain value"
                    assert "secretKeyRef" in env["valueFrom"], f"{obj_name} {env['name']}"
                if env["name"].endswith("_URL") and "value" in env:
                    assert not re.search(r"://[^/]*@", env["value"]), f"{obj_name}: {env}"
            assert not any("requirepass" in a for a in container.get("command", []))
    url_sources = []
    for component in COMPONENTS:
        pod = named(docs, "Deployment", component_name(component))["spec"]["template"]["spec"]
        env = env_of(pod["containers"][0])
        url = env["ICAE_REDIS_URL"]["value"]
        assert "@" not in url, url
        url_sources.append(url)
        password = env.get("ICAE_REDIS_PASSWORD")
        if values["redis"]["enabled"]:
            redis = values["redis"]
            assert url == f"redis://{RELEASE}-redis:{redis['port']}/{redis['database']}"
            ref = password["valueFrom"]["secretKeyRef"]
            secret = redis["auth"]["existingSecret"] or f"{RELEASE}-redis"
            assert ref == {"name": secret, "key": redis["auth"]["existingSecretPasswordKey"]}
        else:
            ext = values["externalRedis"]
            assert url == ext["url"]
            if ext["existingSecret"]:
                ref = password["valueFrom"]["secretKeyRef"]
                assert ref == {
                    "name": ext["existingSecret"],
                    "key": ext["existingSecretPasswordKey"],
                }
            else:
                assert password is None
    assert len(set(url_sources)) == 1, "encoder and decoder must share one Redis"
    if values["redis"]["enabled"]:
        redis = named(docs, "StatefulSet", f"{RELEASE}-redis")["spec"]["template"]["spec"]
        (container,) = redis["containers"]
        args = container["args"]
        assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
        assert "REDIS_PASSWORD" in env_of(container)


def test_redis_statefulset_only_when_enabled(case):
    name, values, _, docs = case
    statefulsets = of_kind(docs, "StatefulSet")
    if not values["redis"]["enabled"]:
        assert not statefulsets, f"{name}: Redis deployed although redis.enabled is false"
        assert not [s for s in of_kind(docs, "Service") if "redis" in s["metadata"]["name"]]
        assert not of_kind(docs, "Secret"), "no generated Secret for an external Redis"
        return
    (sts,) = statefulsets
    assert sts["metadata"]["name"] == f"{RELEASE}-redis"
    assert sts["spec"]["replicas"] == 1
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "volatile-lru"
    assert args[args.index("--maxmemory") + 1] == values["redis"]["maxmemory"]
    service = named(docs, "Service", f"{RELEASE}-redis")
    assert service["spec"]["ports"][0]["port"] == values["redis"]["port"]
    named(docs, "Service", sts["spec"]["serviceName"])
    secrets = of_kind(docs, "Secret")
    if values["redis"]["auth"]["existingSecret"]:
        assert not secrets, "an existing Secret is used as is"
    else:
        (secret,) = secrets
        assert secret["metadata"]["name"] == f"{RELEASE}-redis"
        assert values["redis"]["auth"]["existingSecretPasswordKey"] in secret["data"]
    volumes = {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}
    claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
    assert "data" in (claims if values["redis"]["persistence"]["enabled"] else volumes)


def test_external_redis_tls_ca_is_mounted(case):
    name, values, _, docs = case
    ca = values["externalRedis"]["caCert"]
    wanted = not values["redis"]["enabled"] and (ca["existingSecret"] or ca["existingConfigMap"])
    for component in COMPONENTS:
        pod = named(docs, "Deployment", component_name(component))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = env_of(container)
        if not wanted:
            assert "ICAE_REDIS_CA_CERT" not in env
            continue
        path = env["ICAE_REDIS_CA_CERT"]["value"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        mount = mounts["redis-ca"]
        assert mount["readOnly"] is True and path.startswith(mount["mountPath"] + "/")
        volume = {v["name"]: v for v in pod["volumes"]}["redis-ca"]
        source = volume.get("secret") or volume.get("configMap")
        assert source["items"] == [{"key": ca["key"], "path": path.rsplit("/", 1)[1]}]


def test_tls_and_tokens_come_from_mounted_secrets(case):
    name, values, _, docs = case
    security = values["security"]
    tls, tokens = security["tls"], security["authTokens"]
    for component in COMPONENTS:
        pod = named(docs, "Deployment", component_name(component))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = env_of(container)
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert env["ICAE_REFLECTION"]["value"] == str(security["reflection"]).lower(), name
        if tls["existingSecret"]:
            for var, file in (("ICAE_TLS_CERT", "tls.crt"), ("ICAE_TLS_KEY", "tls.key")):
                assert env[var]["value"] == f"{mounts['tls']['mountPath']}/{file}", name
            assert mounts["tls"]["readOnly"] is True and "subPath" not in mounts["tls"]
            assert volumes["tls"]["secret"]["secretName"] == tls["existingSecret"]
            assert ("ICAE_TLS_CLIENT_CA" in env) == tls["clientAuth"], name
            assert env["ICAE_HEALTH_PORT"]["value"] == str(security["healthPort"])
            assert ports["health"] == security["healthPort"]
        else:
            assert not {"ICAE_TLS_CERT", "ICAE_TLS_KEY", "ICAE_HEALTH_PORT"} & set(env), name
            assert "tls" not in volumes and "health" not in ports, name
        if tokens["existingSecret"]:
            path = env["ICAE_AUTH_TOKENS_FILE"]["value"]
            assert path.startswith(mounts["auth-tokens"]["mountPath"] + "/"), name
            secret = volumes["auth-tokens"]["secret"]
            assert secret["secretName"] == tokens["existingSecret"]
            assert secret["items"] == [{"key": tokens["key"], "path": path.rsplit("/", 1)[1]}]
        else:
            assert "ICAE_AUTH_TOKENS_FILE" not in env and "auth-tokens" not in volumes, name


def test_pod_disruption_budgets(case):
    name, values, _, docs = case
    pdbs = {d["metadata"]["name"]: d for d in of_kind(docs, "PodDisruptionBudget")}
    for component in COMPONENTS:
        cname = component_name(component)
        if not values[component]["podDisruptionBudget"]["enabled"]:
            continue
        spec = pdbs[cname]["spec"]
        labels = named(docs, "Deployment", cname)["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec)


def test_headless_services_for_client_side_balancing(case):
    name, values, _, docs = case
    for component in COMPONENTS:
        cname = component_name(component)
        labels = named(docs, "Deployment", cname)["spec"]["template"]["metadata"]["labels"]
        headless = named(docs, "Service", f"{cname}-headless")["spec"]
        assert headless["clusterIP"] == "None"
        assert headless["selector"].items() <= labels.items()
        assert headless.get("publishNotReadyAddresses", False) is False
        assert [(p["name"], p["port"]) for p in headless["ports"]] == [
            ("grpc", values[component]["port"])
        ]
        service = named(docs, "Service", cname)["spec"]
        assert service["selector"] == headless["selector"]
        ports = {p["name"]: p for p in service["ports"]}
        assert ports["grpc"]["port"] == values[component]["port"]
        assert ports["metrics"]["port"] == values[component]["metricsPort"]


def _effective(pod_sc: dict, sc: dict, key: str):
    return sc.get(key, pod_sc.get(key))


def test_security_context_on_every_pod_and_container(case):
    name, _, _, docs = case
    for sa in of_kind(docs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False
    templates = pod_templates(docs)
    assert templates
    for obj_name, template in templates:
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False, obj_name
        pod_sc = spec.get("securityContext", {})
        containers = spec.get("initContainers", []) + spec["containers"]
        for c in containers:
            sc = c.get("securityContext", {})
            where = f"{name}: {obj_name}/{c['name']}"
            assert _effective(pod_sc, sc, "runAsNonRoot") is True, where
            assert (_effective(pod_sc, sc, "runAsUser") or 0) > 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert sc.get("privileged", False) is False, where
            seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", where
        # A read-only root filesystem needs a writable /tmp.
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{obj_name}: no /tmp"
            assert not tmp[0].get("readOnly", False)


def test_model_and_adapter_volume_is_shared_and_read_only(case):
    name, values, _, docs = case
    model = values["model"]
    seen = set()
    for component in COMPONENTS:
        pod = named(docs, "Deployment", component_name(component))["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = env_of(container)
        mount = next(m for m in container["volumeMounts"] if m["name"] == "model")
        assert mount["readOnly"] is True and mount["mountPath"] == model["mountPath"]
        assert env["ICAE_MODEL"]["value"] == f"{model['mountPath']}/{model['baseDir']}"
        assert env["ICAE_ADAPTER"]["value"] == f"{model['mountPath']}/{model['adapterDir']}"
        volume = {v["name"]: v for v in pod["volumes"]}["model"]
        seen.add(json.dumps(volume, sort_keys=True))
        init = pod.get("initContainers", [])
        if model["source"] == "pvc":
            assert volume["persistentVolumeClaim"] == {
                "claimName": model["existingClaim"],
                "readOnly": True,
            }
            assert mount.get("subPath", "") == model["subPath"]
            assert not init
        elif model["source"] == "hostPath":
            assert volume["hostPath"]["path"] == model["hostPath"]["path"]
            assert not init
        else:
            assert "emptyDir" in volume
            (copy,) = init
            image = model["image"]
            assert copy["image"] == f"{image['repository']}:{image['tag']}"
            assert copy["command"][-1] == "/icae-model/"
            assert copy["command"][-2] == f"{image['path'].rstrip('/')}/."
            assert [m["mountPath"] for m in copy["volumeMounts"] if m["name"] == "model"]
    assert len(seen) == 1, f"{name}: encoder and decoder mount different model volumes"


def test_notes_say_how_to_call_both_services(case):
    name, _, manifests, _ = case
    notes = next(v for k, v in manifests.items() if k.endswith("NOTES.txt"))
    for needle in (
        "port-forward svc/icae-encoder",
        "port-forward svc/icae-decoder",
        "icae client info --encoder http://127.0.0.1:50051",
        "icae client info --decoder http://127.0.0.1:50052",
        "grpcurl",
        "dns:///icae-encoder-headless.ml.svc:50051",
    ):
        assert needle in notes, f"{name}: NOTES.txt lacks {needle!r}"


# ------------------------------------------------------------------- values the chart refuses


def _rejects(values: dict, message: str):
    helm = require_module("helm_python", "helm-python-sdk==0.2.2")
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as err:
        render(values)
    assert message in str(err.value), str(err.value)


def test_an_hpa_without_any_signal_is_refused():
    for component in COMPONENTS:
        autoscaling = {"metric": {"enabled": False}, "targetCPUUtilizationPercentage": None}
        _rejects(
            {component: {"autoscaling": autoscaling}},
            f"{component}.autoscaling: the HPA needs a signal",
        )


def test_schema_rejects_a_wrong_type():
    _rejects({"encoder": {"replicaCount": "three"}}, "replicaCount")


def test_schema_rejects_an_unknown_top_level_key():
    _rejects({"replicaCount": 3}, "replicaCount")
    _rejects({"encoders": {}}, "encoders")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"decoder": {"autoscaling": {"kind": "vpa"}}}, "kind"),
        ({"decoder": {"gpu": {"enabled": "yes"}}}, "enabled"),
        ({"encoder": {"port": 70000}}, "port"),
        ({"encoder": {"imagee": {}}}, "imagee"),
        ({"model": {"source": "s3"}}, "source"),
        ({"model": {"dtype": "auto"}}, "dtype"),
        ({"model": {"slotDtype": "f16"}}, "slotDtype"),
        ({"redis": {"maxmemoryPolicy": "allkeys-everything"}}, "maxmemoryPolicy"),
        ({"redis": {"enabled": False}, "externalRedis": {"url": "redis://:pw@redis:6379"}}, "url"),
    ],
)
def test_schema_rejects_wrong_values(values, message):
    _rejects(values, message)


def test_templates_refuse_incomplete_values():
    _rejects({"redis": {"enabled": False}}, "externalRedis.url")
    # Same dtype on both sides, or every slot has a foreign fingerprint.
    _rejects({"encoder": {"gpu": {"enabled": True}}}, "decoder.gpu.enabled")
    _rejects({"model": {"source": "image"}}, "model.image.repository")
    _rejects({"model": {"source": "hostPath"}}, "model.hostPath.path")


def test_values_schema_is_draft_07_and_closed_at_the_top():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    # Every default value is described by the schema (no key slips through unvalidated).
    assert set(chart().values) - {"global"} <= set(schema["properties"])


def test_grafana_dashboard_only_when_enabled_and_on_documented_metrics():
    assert not of_kind(documents(render()), "ConfigMap")
    docs = documents(render({"grafanaDashboard": {"enabled": True}}))
    (config_map,) = of_kind(docs, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["icae-serve.json"])
    assert dashboard["uid"] == "icae-serve"
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(expressions) >= 10
    # Every metric a panel queries is one the services export and docs/metrics.md lists.
    documented = (ROOT / "docs" / "metrics.md").read_text()
    defined = (ROOT / "serving" / "src" / "metrics.rs").read_text()
    queried = {
        re.sub(r"_bucket$", "", name)
        for expr in expressions
        for name in re.findall(r"\bicae_[a-z_]+", expr)
    }
    assert len(queried) >= 10, queried
    for name in queried:
        assert f"`{name}`" in documented, f"{name} is not in docs/metrics.md"
        assert f'"{name}"' in defined, f"{name} is not defined in serving/src/metrics.rs"
    # Requests by canonical code names, per component.
    assert any('code!="OK"' in e for e in expressions)
    assert all("service=" not in e for e in expressions)


def value_examples_in_deploy_md() -> list[dict]:
    """The YAML blocks of docs/deploy.md that are values of this chart (not of another)."""
    yaml = require_module("yaml", "PyYAML")
    text = (ROOT / "docs" / "deploy.md").read_text()
    keys = set(chart().values)
    examples = []
    for block in re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M):
        data = yaml.safe_load(block)
        if isinstance(data, dict) and set(data) <= keys:
            examples.append(data)
    return examples


def test_the_value_examples_in_the_deploy_guide_do_what_they_say():
    """Each values example of docs/deploy.md renders, and an HPA example that names a gauge
    scales on it (naming it without `metric.enabled` would leave the HPA on CPU alone)."""
    examples = value_examples_in_deploy_md()
    assert len(examples) >= 3, "the GPU, KEDA and external Redis examples"
    for overrides in examples:
        docs = documents(render(overrides))
        for component in COMPONENTS:
            autoscaling = overrides.get(component, {}).get("autoscaling", {})
            metric = autoscaling.get("metric", {}).get("name")
            if not metric or autoscaling.get("kind", "hpa") != "hpa":
                continue
            hpa = named(docs, "HorizontalPodAutoscaler", component_name(component))
            metrics = hpa["spec"]["metrics"]
            gauges = [m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"]
            assert gauges == [metric], f"{component}: the example names {metric}: {metrics}"
