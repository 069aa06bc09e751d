#!/usr/bin/env python3
"""Checks the Helm chart helm/bulk-import/ with no cluster and no helm binary.

- `helm lint --strict` (Helm's Go SDK, through helm-python-sdk), against Kubernetes 1.30;
- values.schema.json refuses unknown keys at every level (its objects are closed);
- the chart renders as `helm install` would (schema validation, then templates) in several
  configurations, and every manifest validates against Kubernetes 1.30's schemas in strict
  mode (kubernetes-validate: an unknown field is an error); a ServiceMonitor, whose CRD is
  not in those schemas, is checked field by field instead;
- each rendering has the properties the chart promises (replicas, strategy, volume, probes,
  pod security, env, Service ports...), read from the parsed manifests;
- bad values are refused, by the schema or by the templates' `fail`, with a clear message.

Run with the interpreter that has both packages (.ci/run installs them into .ci/tools/venv):
    .ci/tools/venv/bin/python helm/check_chart.py
It prints a summary and exits 0, or lists every failure and exits 1 (2: packages missing).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

try:
    import helm_python as helm
    import kubernetes_validate
    import yaml
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
except ImportError as missing:
    print(
        f"check_chart.py: {missing}.\nInstall helm-python-sdk and kubernetes-validate "
        "(.ci/run puts them in .ci/tools/venv) and run this with that Python.",
        file=sys.stderr,
    )
    sys.exit(2)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "bulk-import"
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "bi", "imports"
FULLNAME = f"{RELEASE}-bulk-import"
# Kinds of CRDs, absent from Kubernetes' own schemas: checked by check_service_monitor.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

failures: list[str] = []


def check(condition: bool, case: str, what: str) -> bool:
    if not condition:
        failures.append(f"[{case}] {what}")
    return condition


# --- the chart as `helm install` sees it ----------------------------------------------------


def render(chart: helm.Chart, values: dict) -> tuple[list[dict], str]:
    """The manifests (parsed) and NOTES.txt of an install with `values`."""
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests, notes = [], ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = path.split("/", 1)[-1]
                manifests.append(doc)
    return manifests, notes


def lint(case: str, values: dict) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    # Severity: 1 info (e.g. "icon is recommended"), 2 warning, 3 error; --strict fails on 2+.
    for message in report["messages"]:
        check(message["severity"] < 2, case, f"helm lint --strict: {message['path']}: {message['error'].strip()}")
    for error in report["errors"]:
        check(False, case, f"helm lint --strict: {error.strip()}")


def validate(case: str, manifests: list[dict]) -> int:
    """Validates every manifest against Kubernetes' schemas (strict); returns how many."""
    for manifest in manifests:
        body = {k: v for k, v in manifest.items() if k != "__template"}
        where = f"{manifest['__template']}: {body.get('kind')}/{body.get('metadata', {}).get('name')}"
        if (body.get("apiVersion"), body.get("kind")) in CRD_KINDS:
            check_service_monitor(case, body)
            continue
        try:
            kubernetes_validate.validate(body, KUBE_VERSION, strict=True)
        except ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            check(False, case, f"{where} is not valid Kubernetes {KUBE_VERSION}: {path}: {error.message}")
        except SchemaNotFoundError as error:
            check(False, case, f"{where}: {error.message}")
    return len(manifests)


def validator_is_strict() -> None:
    """kubernetes-validate must refuse an unknown field, or the checks above prove little."""
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "x", "image": "x", "subpath": "/typo"}]},
            },
        },
    }
    try:
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
        check(False, "validator", "kubernetes-validate accepted an unknown field (not strict)")
    except ValidationError:
        pass


def schema_is_closed(schema: dict) -> None:
    """Every object of values.schema.json is closed: additionalProperties false, or a map of
    strings (annotations, labels, nodeSelector). `global` is Helm's, for a parent chart."""

    def walk(node: dict, at: str) -> None:
        if node.get("type") == "object" and at != "/global":
            extra = node.get("additionalProperties")
            check(
                extra is False or extra == {"type": "string"},
                "schema",
                f"values.schema.json at {at or '/'}: an object without additionalProperties: false",
            )
        for key, child in node.get("properties", {}).items():
            walk(child, f"{at}/{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{at}[]")

    check(schema.get("$schema", "").startswith("http://json-schema.org/draft-07/"), "schema", "not draft-07")
    walk(schema, "")


# --- what the manifests must say ------------------------------------------------------------


def kinds(manifests: list[dict]) -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for manifest in manifests:
        by_kind.setdefault(manifest["kind"], []).append(manifest)
    return by_kind


def one(case: str, by_kind: dict, kind: str) -> dict:
    found = by_kind.get(kind, [])
    check(len(found) == 1, case, f"{len(found)} {kind} rendered, want 1")
    return found[0] if found else {}


def env_of(container: dict) -> dict[str, object]:
    """Env name -> its value, or its valueFrom."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def dockerfile_user() -> tuple[int, int] | None:
    """The uid and gid of the Dockerfile's last `USER uid:gid`."""
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    return (int(users[-1][0]), int(users[-1][1])) if users else None


def common(case: str, manifests: list[dict], notes: str, values: dict) -> tuple[dict, dict, dict]:
    """What every rendering must have; returns the Deployment, its pod spec and container."""
    by_kind = kinds(manifests)
    for manifest in manifests:
        labels = manifest["metadata"].get("labels", {})
        for label in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                      "app.kubernetes.io/version", "app.kubernetes.io/managed-by"):
            check(label in labels, case, f"{manifest['kind']} has no label {label}")
    deployment = one(case, by_kind, "Deployment")
    spec = deployment.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    pod_labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    containers = pod.get("containers", [{}])
    check(len(containers) == 1, case, "one container")
    container = containers[0]
    check(spec.get("selector", {}).get("matchLabels", {}).items() <= pod_labels.items(), case,
          "the Deployment's selector matches its pods")

    # The image, its entrypoint, the Dockerfile's user.
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    check(container.get("image") == f"bulk-import:{app_version}", case, f"image {container.get('image')}")
    check(container.get("args") == ["serve"], case, "args: [serve] (the binary is the ENTRYPOINT)")
    user = dockerfile_user()
    check(user is not None, case, "the Dockerfile's USER is uid:gid (numeric)")

    # Pod security.
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, case, "pod runAsNonRoot: true")
    if user:
        check((psc.get("runAsUser"), psc.get("runAsGroup")) == user, case,
              f"pod runAsUser/runAsGroup {psc.get('runAsUser')}/{psc.get('runAsGroup')}, the Dockerfile's are {user}")
        check(psc.get("fsGroup") == user[1], case, "pod fsGroup is the image's gid")
    check(psc.get("seccompProfile") == {"type": "RuntimeDefault"}, case, "pod seccompProfile RuntimeDefault")
    check(csc.get("readOnlyRootFilesystem") is True, case, "readOnlyRootFilesystem: true")
    check(csc.get("allowPrivilegeEscalation") is False, case, "allowPrivilegeEscalation: false")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], case, "capabilities drop ALL")
    check(pod.get("automountServiceAccountToken") is False, case, "the pod mounts no API token")

    # Volumes: /tmp, and Secrets as whole directories (never subPath: no live update then).
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    check("emptyDir" in volumes.get(mounts.get("/tmp", {}).get("name"), {}), case, "an emptyDir at /tmp")
    for mount in mounts.values():
        check("subPath" not in mount and "subPathExpr" not in mount, case, f"{mount['mountPath']} mounted with subPath")
        check(mount["name"] in volumes, case, f"the volume of {mount['mountPath']} exists")

    # The ServiceAccount.
    sa_values = values.get("serviceAccount", {})
    if sa_values.get("create", True):
        account = one(case, by_kind, "ServiceAccount")
        check(account.get("automountServiceAccountToken") is False, case, "ServiceAccount automountServiceAccountToken: false")
        check(pod.get("serviceAccountName") == account.get("metadata", {}).get("name"), case, "the pods run as the ServiceAccount")
    else:
        check("ServiceAccount" not in by_kind, case, "no ServiceAccount with serviceAccount.create: false")
        check(pod.get("serviceAccountName") == sa_values.get("name", "default"), case, "serviceAccountName")

    # The Service and the ports.
    service = one(case, by_kind, "Service")
    check(service.get("spec", {}).get("selector", {}).items() <= pod_labels.items(), case, "the Service selects the pods")
    service_ports = {p["name"]: p for p in service.get("spec", {}).get("ports", [])}
    container_ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    grpc = service_ports.get("grpc", {})
    check(grpc.get("appProtocol") == "grpc" and grpc.get("targetPort") == "grpc", case,
          "Service port grpc, appProtocol grpc, to the container's grpc port")
    check(container_ports.get("grpc") == 50051, case, "container port grpc 50051")
    env = env_of(container)
    check(env.get("BULK_IMPORT_LISTEN") == "0.0.0.0:50051", case, "BULK_IMPORT_LISTEN 0.0.0.0:50051")
    metrics = values.get("metrics", {})
    port = metrics.get("port", 9090)
    check(service_ports.get("metrics", {}).get("port") == port and service_ports["metrics"].get("targetPort") == "metrics",
          case, f"Service port metrics {port}")
    check(container_ports.get("metrics") == port, case, f"container port metrics {port}")
    check(env.get("BULK_IMPORT_METRICS_LISTEN") == f"0.0.0.0:{port}", case, "BULK_IMPORT_METRICS_LISTEN")
    annotations = spec.get("template", {}).get("metadata", {}).get("annotations", {})
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    monitored = metrics.get("serviceMonitor", {}).get("enabled", False)
    if metrics.get("podAnnotations", True) and not monitored:
        check(scrape.items() <= annotations.items(), case, f"pod annotations {scrape}, got {annotations}")
    else:
        check(not set(scrape) & set(annotations), case,
              "no prometheus.io annotations with metrics.podAnnotations: false or a ServiceMonitor (scraped twice)")

    # The server's settings.
    config = {
        "BULK_IMPORT_MAX_UPLOAD_BYTES": "209715200",
        "BULK_IMPORT_MAX_STORED_ROW_ERRORS": "100000",
        "BULK_IMPORT_SHUTDOWN_GRACE_SECONDS": "20",
        "BULK_IMPORT_MAX_CONCURRENT_UPLOADS": "8",
        "BULK_IMPORT_MAX_CONCURRENT_UPLOADS_PER_ACCOUNT": "4",
        "BULK_IMPORT_UPLOAD_IDLE_TIMEOUT": "60",
        "BULK_IMPORT_MAX_WATCHERS": "256",
        "BULK_IMPORT_MAX_WATCHERS_PER_ACCOUNT": "64",
        "BULK_IMPORT_MAX_CONNECTIONS": "512",
        "BULK_IMPORT_MAX_STREAMS_PER_CONNECTION": "128",
        "BULK_IMPORT_MAX_HEALTH_WATCHERS": "64",
        "BULK_IMPORT_MAX_PENDING_REQUESTS_PER_CONNECTION": "4",
        "BULK_IMPORT_MAX_PENDING_REQUESTS": "1024",
        "BULK_IMPORT_REQUEST_MESSAGE_TIMEOUT": "10s",
        "BULK_IMPORT_RETENTION": "90d",
        "BULK_IMPORT_DRY_RUN_RETENTION": "7d",
        "BULK_IMPORT_EVENT_RETENTION": "7d",
        "BULK_IMPORT_RESUME_WINDOW": "24h",
        "BULK_IMPORT_LOG_FORMAT": "json",
        "RUST_LOG": "info",
    }
    for name, default in config.items():
        check(env.get(name) == default, case, f"env {name}={env.get(name)!r}, want {default!r}")
    nats = values.get("config", {})
    if nats.get("eventsNatsUrlSecret"):
        want = {"secretKeyRef": {"name": nats["eventsNatsUrlSecret"],
                                 "key": nats.get("eventsNatsUrlSecretKey", "nats-url")}}
    else:
        want = nats.get("eventsNatsUrl") or None
    check(env.get("BULK_IMPORT_EVENTS_NATS_URL") == want, case,
          f"env BULK_IMPORT_EVENTS_NATS_URL={env.get('BULK_IMPORT_EVENTS_NATS_URL')!r}, want {want!r}")
    pre_stop = values.get("preStopSleepSeconds", 5)
    check(pod.get("terminationGracePeriodSeconds", 0) > pre_stop + int(config["BULK_IMPORT_SHUTDOWN_GRACE_SECONDS"]), case,
          "terminationGracePeriodSeconds above the preStop sleep and the shutdown grace")
    if pre_stop:
        check(container.get("lifecycle", {}).get("preStop") == {"sleep": {"seconds": pre_stop}}, case,
              f"a preStop sleep of {pre_stop} s, so the Service lets go of the pod before SIGTERM")
    else:
        check("lifecycle" not in container, case, "no preStop with preStopSleepSeconds: 0")
    check(("Ingress" in by_kind) == values.get("ingress", {}).get("enabled", False), case, "an Ingress only when enabled")

    # NOTES.txt: how to try it.
    check(f"port-forward service/{FULLNAME} 50051:" in notes, case, "NOTES: kubectl port-forward")
    for call in (" localhost:50051 list", "grpc.health.v1.Health/Check", "ImportService/GetImportTemplate"):
        check(call in notes, case, f"NOTES: grpcurl ...{call}")
    return deployment, pod, container


def grpc_probes(case: str, container: dict) -> None:
    for probe, service in (("startupProbe", ""), ("livenessProbe", ""), ("readinessProbe", "bulkimport.v1.ImportService")):
        check(container.get(probe, {}).get("grpc") == {"port": 50051, "service": service}, case,
              f"{probe}: gRPC on 50051, service {service!r}")


def data_volume(pod: dict, container: dict) -> dict:
    """The volume mounted at /data."""
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == "/data"), {})
    return next((v for v in pod.get("volumes", []) if v["name"] == mount.get("name")), {})


def sqlite(case: str, manifests: list[dict], notes: str, values: dict, deployment: dict, pod: dict, container: dict,
           claim: bool = True) -> None:
    by_kind = kinds(manifests)
    check(deployment["spec"].get("replicas") == 1, case, "1 replica")
    check(deployment["spec"].get("strategy", {}).get("type") == "Recreate", case, "strategy Recreate")
    check(env_of(container).get("DATABASE_URL") == "sqlite:///data/bulk-import.db", case, "DATABASE_URL sqlite:///data/bulk-import.db")
    if claim:
        made = one(case, by_kind, "PersistentVolumeClaim")
        check(data_volume(pod, container).get("persistentVolumeClaim", {}).get("claimName")
              == made.get("metadata", {}).get("name"), case, "the PersistentVolumeClaim is mounted at /data")
        kept = made.get("metadata", {}).get("annotations", {}).get("helm.sh/resource-policy") == "keep"
        keep = values.get("persistence", {}).get("keep", True)
        check(kept == keep, case, f"helm.sh/resource-policy: keep on the claim is {kept}, want {keep}")
        check((f"delete pvc {FULLNAME}" in notes) == keep, case, "NOTES: how to delete a kept claim")
    for kind in ("Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        check(kind not in by_kind, case, f"no {kind} on SQLite")


def postgres(case: str, manifests: list[dict], deployment: dict, pod: dict, container: dict, secret: str) -> None:
    by_kind = kinds(manifests)
    check(deployment["spec"].get("strategy", {}).get("type") == "RollingUpdate", case, "strategy RollingUpdate")
    check("PersistentVolumeClaim" not in by_kind, case, "no PersistentVolumeClaim on PostgreSQL")
    check(all(m["mountPath"] != "/data" for m in container.get("volumeMounts", [])), case, "no /data on PostgreSQL")
    check(env_of(container).get("DATABASE_URL") == {"secretKeyRef": {"name": secret, "key": "DATABASE_URL"}}, case,
          f"DATABASE_URL from the Secret {secret}")
    pdb = one(case, by_kind, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    check(pdb.get("spec", {}).get("selector", {}).get("matchLabels", {}).items() <= pod_labels.items(), case,
          "the PodDisruptionBudget selects the pods")


def check_service_monitor(case: str, monitor: dict) -> None:
    """Structural check of a ServiceMonitor (its CRD's schema is not in kubernetes-validate)."""
    check(set(monitor) == {"apiVersion", "kind", "metadata", "spec"}, case, f"ServiceMonitor keys {sorted(monitor)}")
    spec = monitor.get("spec", {})
    check(set(spec) == {"selector", "endpoints"}, case, f"ServiceMonitor spec keys {sorted(spec)}")
    check(isinstance(spec.get("selector", {}).get("matchLabels"), dict), case, "ServiceMonitor selector.matchLabels")
    endpoints = spec.get("endpoints", [])
    check(len(endpoints) == 1 and set(endpoints[0]) <= {"port", "path", "scheme", "interval"}, case,
          f"ServiceMonitor endpoints {endpoints}")
    if endpoints:
        e = endpoints[0]
        check((e.get("port"), e.get("path"), e.get("scheme")) == ("metrics", "/metrics", "http"), case,
              "ServiceMonitor scrapes port metrics at /metrics")
        check(re.fullmatch(r"([0-9]+(ms|s|m|h))+", str(e.get("interval", ""))) is not None, case,
              "ServiceMonitor interval is a duration")
    check(all(isinstance(v, str) for v in monitor.get("metadata", {}).get("labels", {}).values()), case,
          "ServiceMonitor labels are strings")


# --- the cases ------------------------------------------------------------------------------

POSTGRES_URL = "postgres://u:p@db:5432/bulk"


def case_defaults(case, manifests, notes, values):
    deployment, pod, container = common(case, manifests, notes, values)
    sqlite(case, manifests, notes, values, deployment, pod, container)
    grpc_probes(case, container)
    env = env_of(container)
    for name in ("BULK_IMPORT_AUTH_TOKENS_FILE", "BULK_IMPORT_TLS_CERT", "BULK_IMPORT_TLS_KEY", "BULK_IMPORT_TLS_CLIENT_CA"):
        check(name not in env, case, f"no {name} by default")
    check(" -plaintext " in notes and "WARNING" in notes, case, "NOTES: plaintext, and a warning about an open server")
    check("ServiceMonitor" not in kinds(manifests), case, "no ServiceMonitor by default")
    check(env.get("BULK_IMPORT_CONSOLE_LISTEN") == "off", case, "no web console by default")
    ports = [p["name"] for p in one(case, kinds(manifests), "Service")["spec"]["ports"]]
    check("http" not in ports, case, f"no console port on the Service by default: {ports}")


def case_console(case, manifests, notes, values):
    deployment, pod, container = common(case, manifests, notes, values)
    postgres(case, manifests, deployment, pod, container, FULLNAME)
    env = env_of(container)
    check(env.get("BULK_IMPORT_CONSOLE_LISTEN") == "0.0.0.0:8088", case, f"the console on 8088: {env}")
    check(env.get("BULK_IMPORT_CONSOLE_SESSION_TTL") == "2h", case, "the session TTL")
    ports = {p["name"]: p for p in container.get("ports", [])}
    check(ports.get("http", {}).get("containerPort") == 8088, case, "the container port http")
    service = one(case, kinds(manifests), "Service")["spec"]
    by_name = {p["name"]: p for p in service["ports"]}
    check(by_name.get("http", {}).get("targetPort") == "http" and by_name["http"].get("port") == 8088, case,
          "the Service port http")
    check(service.get("sessionAffinity") == "ClientIP", case, "several replicas: browsers stay on their pod")
    check(f"port-forward service/{FULLNAME} 8088:8088" in notes and "WARNING: open" not in notes, case,
          "NOTES: how to open the console, signed in with tokens")


def case_postgres(case, manifests, notes, values):
    deployment, pod, container = common(case, manifests, notes, values)
    postgres(case, manifests, deployment, pod, container, FULLNAME)
    check(deployment["spec"].get("replicas") == 3, case, "3 replicas")
    secret = one(case, kinds(manifests), "Secret")
    check(secret.get("stringData") == {"DATABASE_URL": POSTGRES_URL}, case, "the Secret holds the URL")
    check("checksum/database-url" in deployment["spec"]["template"]["metadata"].get("annotations", {}), case,
          "a new URL rolls the pods (checksum annotation)")
    grpc_probes(case, container)


def case_tls(case, manifests, notes, values):
    deployment, pod, container = common(case, manifests, notes, values)
    sqlite(case, manifests, notes, values, deployment, pod, container)
    for probe, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        check(container.get(probe, {}).get("httpGet") == {"path": path, "port": "metrics"}, case,
              f"{probe}: httpGet {path} on the metrics port (gRPC probes cannot speak TLS)")
        check("grpc" not in container.get(probe, {}), case, f"{probe}: no gRPC probe on a TLS port")
    env = env_of(container)
    expected = {
        "BULK_IMPORT_AUTH_TOKENS_FILE": "/etc/bulk-import/auth/tokens.toml",
        "BULK_IMPORT_TLS_CERT": "/etc/bulk-import/tls/tls.crt",
        "BULK_IMPORT_TLS_KEY": "/etc/bulk-import/tls/tls.key",
        "BULK_IMPORT_TLS_CLIENT_CA": "/etc/bulk-import/tls/ca.crt",
    }
    for name, path in expected.items():
        check(env.get(name) == path, case, f"env {name}={env.get(name)!r}, want {path}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    for directory, secret in (("/etc/bulk-import/auth", "bulk-import-tokens"), ("/etc/bulk-import/tls", "bulk-import-tls")):
        mount = mounts.get(directory, {})
        check(mount.get("readOnly") is True, case, f"{directory} mounted read-only")
        volume = volumes.get(mount.get("name"), {})
        check(volume.get("secret", {}).get("secretName") == secret, case, f"the Secret {secret} at {directory}")
        check("items" not in volume.get("secret", {}), case, f"{directory}: the whole Secret, as a directory")
    for flag in ("-cacert ca.crt", "-cert client.crt -key client.key", 'authorization: Bearer $TOKEN'):
        check(flag in notes, case, f"NOTES: grpcurl with {flag}")
    check("-plaintext" not in notes and "WARNING" not in notes, case, "NOTES: no plaintext, no open-server warning")


def case_autoscaling(case, manifests, notes, values):
    deployment, pod, container = common(case, manifests, notes, values)
    postgres(case, manifests, deployment, pod, container, "bulk-import-db")
    by_kind = kinds(manifests)
    check("Secret" not in by_kind, case, "no Secret made with database.existingSecret")
    check("replicas" not in deployment["spec"], case, "no replicas in the Deployment: the autoscaler decides")
    hpa = one(case, by_kind, "HorizontalPodAutoscaler").get("spec", {})
    check(hpa.get("scaleTargetRef") == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}, case,
          "the autoscaler scales the Deployment")
    check((hpa.get("minReplicas"), hpa.get("maxReplicas")) == (2, 6), case, "autoscaler 2 to 6 pods")
    check(hpa.get("metrics", [{}])[0].get("resource", {}).get("target", {}).get("averageUtilization") == 70, case,
          "autoscaler on 70% CPU")
    monitor = one(case, by_kind, "ServiceMonitor")
    check(monitor.get("metadata", {}).get("labels", {}).get("release") == "prometheus", case, "ServiceMonitor labels")
    service = one(case, by_kind, "Service")
    check(monitor.get("spec", {}).get("selector", {}).get("matchLabels", {}).items()
          <= service["metadata"]["labels"].items(), case, "the ServiceMonitor selects the Service")
    grpc_probes(case, container)


def case_extras(case, manifests, notes, values):
    deployment, pod, container = common(case, manifests, notes, values)
    sqlite(case, manifests, notes, values, deployment, pod, container, claim=False)
    check("PersistentVolumeClaim" not in kinds(manifests), case, "no claim made with persistence.existingClaim")
    check(data_volume(pod, container).get("persistentVolumeClaim") == {"claimName": "bulk-import-data"}, case,
          "the existing claim at /data")
    check(pod.get("imagePullSecrets") == [{"name": "regcred"}], case, "imagePullSecrets")
    check(pod.get("nodeSelector") == {"disk": "ssd"}, case, "nodeSelector")
    check(deployment["spec"]["template"]["metadata"].get("annotations", {}).get("team") == "hr", case, "podAnnotations")
    service = one(case, kinds(manifests), "Service")
    check(service.get("spec", {}).get("type") == "NodePort", case, "service.type NodePort")
    ingress = one(case, kinds(manifests), "Ingress").get("spec", {})
    check(ingress.get("ingressClassName") == "nginx", case, "the Ingress's class")
    check(ingress.get("tls") == [{"hosts": ["imports.example.com"], "secretName": "imports-tls"}], case, "the Ingress's TLS")
    rule = ingress.get("rules", [{}])[0]
    check(rule.get("host") == "imports.example.com", case, "the Ingress's host")
    backend = rule.get("http", {}).get("paths", [{}])[0].get("backend", {}).get("service", {})
    check(backend == {"name": FULLNAME, "port": {"name": "grpc"}}, case, f"the Ingress sends to the gRPC port: {backend}")
    check("grpcurl imports.example.com:443 list" in notes, case, "NOTES: grpcurl through the Ingress")


def case_ephemeral(case, manifests, notes, values):
    deployment, pod, container = common(case, manifests, notes, values)
    sqlite(case, manifests, notes, values, deployment, pod, container, claim=False)
    check("PersistentVolumeClaim" not in kinds(manifests), case, "no claim with persistence.enabled: false")
    check("emptyDir" in data_volume(pod, container), case, "an emptyDir at /data")
    check("LOST WITH THE POD" in notes, case, "NOTES: the database is lost with the pod")


CASES = [
    ("defaults", {}, case_defaults),
    ("postgres, 3 replicas", {"database": {"url": POSTGRES_URL}, "replicaCount": 3}, case_postgres),
    (
        "TLS, client CA, tokens",
        {"tls": {"enabled": True, "existingSecret": "bulk-import-tls", "clientCA": True},
         "auth": {"existingSecret": "bulk-import-tokens"}, "persistence": {"keep": False},
         "metrics": {"podAnnotations": False}, "preStopSleepSeconds": 0},
        case_tls,
    ),
    (
        "existing Secret, autoscaling, ServiceMonitor",
        {"database": {"existingSecret": "bulk-import-db"}, "autoscaling": {"enabled": True},
         "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
         "serviceAccount": {"create": False, "name": "importer"}},
        case_autoscaling,
    ),
    (
        "existing claim, extras",
        {"persistence": {"existingClaim": "bulk-import-data"}, "metrics": {"port": 9100},
         "imagePullSecrets": [{"name": "regcred"}], "nodeSelector": {"disk": "ssd"},
         "podAnnotations": {"team": "hr"}, "service": {"type": "NodePort"},
         "ingress": {"enabled": True, "className": "nginx", "host": "imports.example.com", "tlsSecret": "imports-tls",
                     "annotations": {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}}},
        case_extras,
    ),
    ("SQLite without persistence", {"persistence": {"enabled": False}}, case_ephemeral),
    ("the web console, 3 replicas, tokens",
     {"database": {"url": POSTGRES_URL}, "replicaCount": 3, "auth": {"existingSecret": "bulk-import-tokens"},
      "console": {"enabled": True, "port": 8088, "sessionTtl": "2h"}},
     case_console),
    ("the feed to NATS", {"config": {"eventsNatsUrl": "nats://nats:4222"}}, case_defaults),
    ("the feed to NATS, URL from a Secret",
     {"database": {"url": POSTGRES_URL}, "replicaCount": 3,
      "config": {"eventsNatsUrl": "nats://ignored:4222", "eventsNatsUrlSecret": "nats-creds"}},
     case_postgres),
]

# Values `helm install` must refuse: by values.schema.json (which `helm lint` reports too) or
# by a template's `fail` (which `helm lint` only logs, by Helm's design), with a piece of the
# reason it must give.
REFUSED = [
    ("an unknown key", "schema", {"replicas": 1}, "additional properties 'replicas' not allowed"),
    ("an unknown nested key", "schema", {"metrics": {"serviceMonitor": {"intervall": "1m"}}},
     "additional properties 'intervall' not allowed"),
    ("a wrong type", "schema", {"replicaCount": "3"}, "want integer"),
    ("a wrong nested type", "schema", {"tls": {"enabled": "yes"}}, "want boolean"),
    ("a database that is not SQLite or PostgreSQL", "schema", {"database": {"url": "mysql://db/x"}}, "/database/url"),
    ("2 replicas on SQLite", "fail", {"replicaCount": 2}, "several replicas need PostgreSQL"),
    ("2 replicas on an explicit SQLite URL", "fail", {"replicaCount": 2, "database": {"url": "sqlite:///data/x.db"}},
     "several replicas need PostgreSQL"),
    ("autoscaling on SQLite", "fail", {"autoscaling": {"enabled": True}}, "autoscaling needs PostgreSQL"),
    ("TLS without metrics", "fail", {"tls": {"enabled": True, "existingSecret": "t"}, "metrics": {"enabled": False}},
     "tls.enabled needs metrics.enabled"),
    ("TLS without a Secret", "fail", {"tls": {"enabled": True}}, "tls.enabled needs tls.existingSecret"),
    ("a grace period shorter than the shutdown's", "fail", {"terminationGracePeriodSeconds": 10},
     "terminationGracePeriodSeconds must exceed"),
    ("a grace period shorter than the preStop sleep and the shutdown's", "fail", {"preStopSleepSeconds": 10},
     "terminationGracePeriodSeconds must exceed preStopSleepSeconds + config.shutdownGraceSeconds"),
    ("a SQLite file off the data volume", "fail", {"database": {"url": "sqlite:///var/lib/bulk-import.db"}},
     "use sqlite:///data/NAME.db"),
    ("a relative SQLite path", "fail", {"database": {"url": "sqlite://bulk-import.db"}}, "off the data volume"),
    ("an Ingress without a host", "fail", {"ingress": {"enabled": True}}, "ingress.enabled needs ingress.host"),
    ("a limit of 0", "schema", {"config": {"maxConnections": 0}}, "/config/maxConnections"),
    ("a retention that is not a duration", "schema", {"config": {"retention": "ninety days"}}, "/config/retention"),
    ("a NATS URL that is not one", "schema", {"config": {"eventsNatsUrl": "http://nats:4222"}},
     "/config/eventsNatsUrl"),
    ("a resume window of off", "schema", {"config": {"resumeWindow": "off"}}, "/config/resumeWindow"),
    ("a console session of ever", "schema", {"console": {"sessionTtl": "ever"}}, "/console/sessionTtl"),
]


def refused(chart: helm.Chart, what: str, by: str, values: dict, reason: str) -> None:
    case = f"refuses {what}"
    try:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        check(False, case, f"{values} rendered")
    except helm.HelmError as error:
        expected = helm.HelmValuesError if by == "schema" else helm.HelmRenderError
        check(isinstance(error, expected), case, f"refused by {type(error).__name__}, want {expected.__name__}")
        check(reason in str(error), case, f"refused, but the message lacks {reason!r}: {error}")
    if by == "schema":
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
        check(any(reason in e for e in report["errors"]), case, f"helm lint does not report {reason!r}: {report['errors']}")


def readme_builds_the_charts_image() -> None:
    """The README's `docker build` tags the image the chart installs by default, so that its
    two lines work together as written."""
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    repository = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    builds = re.findall(r"^docker build -t (\S+) \.", (ROOT / "README.md").read_text(), re.M)
    check(builds == [f"{repository}:{app_version}"], "README",
          f"docker build tags {builds}, the chart installs {repository}:{app_version}")


def main() -> int:
    started = time.monotonic()
    chart = helm.Chart.load(CHART)
    readme_builds_the_charts_image()
    validator_is_strict()
    schema_is_closed(chart.schema or {})
    manifests_checked = 0
    for name, values, properties in CASES:
        lint(name, values)
        try:
            manifests, notes = render(chart, values)
        except helm.HelmError as error:
            check(False, name, f"does not render: {error}")
            continue
        manifests_checked += validate(name, manifests)
        before = len(failures)
        try:
            properties(name, manifests, notes, values)
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            if len(failures) == before:
                check(False, name, f"a manifest lacks a field the checks read: {error!r}")
    for what, by, values, reason in REFUSED:
        refused(chart, what, by, values, reason)

    elapsed = time.monotonic() - started
    if failures:
        print(f"helm/bulk-import: {len(failures)} problem(s):", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print(
        f"helm/bulk-import {chart.version}: helm lint --strict passes ({len(CASES)} value sets); "
        f"{len(CASES)} renderings, {manifests_checked} manifests valid for Kubernetes {KUBE_VERSION} (strict); "
        f"{len(REFUSED)} bad value sets refused; {elapsed:.1f} s"
    )
    for name, _, _ in CASES:
        print(f"  ok: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
