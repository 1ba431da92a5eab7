"""deploy/ and the Dockerfile: valid Kubernetes objects that match the app they run.

Offline: every manifest is validated against the Kubernetes JSON schemas that
ship with ``kubernetes-validate`` (strict: an unknown or misspelt field
fails), then checked against the app itself: probe paths are its routes,
ports are the ones it binds, the config path is where the ConfigMap is
mounted and the file there parses, the grace period outlasts gunicorn's
graceful timeout.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app import create_app
from app.auth import parse_tokens
from app.config import settings_from_text
from tests.support.server import REPO

BASE = REPO / "deploy" / "base"
K8S_VERSION = kubernetes_validate.utils.latest_version()


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in _documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def gunicorn_conf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """gunicorn.conf.py's settings, read the way gunicorn reads them (a metrics dir given: none made)."""
    import os

    saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path_factory.mktemp("metrics"))
    try:
        return runpy.run_path(str(REPO / "gunicorn.conf.py"))
    finally:
        if saved is None:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved


@pytest.mark.parametrize("name, doc", _documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_manifest_is_valid_against_the_kubernetes_schema(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in BASE.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")
    kinds = {doc["kind"] for _, doc in _documents()}
    assert kinds == {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler"}
    image = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image in {entry["name"] for entry in kustomization["images"]}


def _container() -> dict[str, Any]:
    return _one("Deployment")["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_probes_are_the_app_routes_on_the_bound_port():
    container = _container()
    routes = {rule.rule for rule in create_app(settings_from_text("RMQ_CONN_STR,a,h:1/", "t", {}),
                                               start=False).url_map.iter_rules()}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["port"] == container["readinessProbe"]["httpGet"]["port"] == "http"
    bind = _env(container)["GATEWAY_BIND"]
    assert bind.startswith("0.0.0.0:") and int(bind.rpartition(":")[2]) == ports["http"]
    # The liveness probe must never wait on a broker: /healthz answers within 0.5 s (the contract).
    assert container["livenessProbe"]["timeoutSeconds"] >= 1


def test_service_ports_and_selectors_match_the_pods():
    pod_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = _one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {port["name"] for port in _container()["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} == container_ports == {"http", "zmq"}
    assert _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", _one("Deployment")["metadata"]["name"])


def _secret_env() -> dict[str, str]:
    secret = _one("Secret")["stringData"]
    return {key: value for key, value in secret.items() if key.startswith("GATEWAY_")}


def test_config_map_is_mounted_where_the_app_reads_it_and_parses():
    container = _container()
    pod = _one("Deployment")["spec"]["template"]["spec"]
    config_path = Path(_env(container)["GATEWAY_CONFIG"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = _one("ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    text = config_map["data"][config_path.name]
    # What the pod will see: the file plus the Secret's GATEWAY_* variables.
    settings = settings_from_text(text, str(config_path), _secret_env())
    assert settings.connections and settings.connections[0].primary[0].tls
    assert "CHANGE-ME" not in text  # no password in the ConfigMap
    # ZeroMQ listens on the container's "zmq" port.
    zmq_port = int(re.search(r":(\d+)$", settings.zmq_address).group(1))
    assert zmq_port == {p["name"]: p["containerPort"] for p in container["ports"]}["zmq"]
    # Files the config names (tokens, CA) are in the mounted Secret.
    secret_mount = next(m for m in container["volumeMounts"] if m["name"] == "secret-files")
    items = {item["path"]: item["key"]
             for item in next(v for v in pod["volumes"] if v["name"] == "secret-files")["secret"]["items"]}
    secret = _one("Secret")["stringData"]
    for path in (settings.auth_tokens_file, settings.connections[0].primary[0].cacertfile):
        assert path.startswith(secret_mount["mountPath"] + "/")
        assert items[path.rpartition("/")[2]] in secret
    assert parse_tokens(secret["tokens"], "tokens") == []  # the template holds no usable token


def test_every_secret_reference_exists():
    secret = _one("Secret")
    for value in _env(_container()).values():
        if isinstance(value, dict) and "secretKeyRef" in value:
            ref = value["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert all("CHANGE-ME" in value for value in _secret_env().values())  # a template, not real secrets


def test_shutdown_outlasts_gunicorns_graceful_timeout(gunicorn_conf):
    pod = _one("Deployment")["spec"]["template"]["spec"]
    pre_stop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pause = int(pre_stop[1])
    assert pause > 0
    # SIGTERM comes after the pause; then gunicorn gives requests graceful_timeout, then closes AMQP.
    assert pod["terminationGracePeriodSeconds"] > pause + gunicorn_conf["graceful_timeout"] + 5
    from gunicorn.workers.ggevent import GeventWorker

    from app.worker import GatewayWorker

    # gunicorn's gevent worker (subclassed: app/worker.py), whose graceful stop the numbers above assume.
    assert gunicorn_conf["worker_class"] == "app.worker.GatewayWorker" and issubclass(GatewayWorker, GeventWorker)


def test_runs_non_root_on_a_read_only_root_filesystem():
    pod = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    # Everything the process writes is on an emptyDir: /tmp (gunicorn's worker heartbeats) and the metrics dir.
    writable = {m["mountPath"] for m in container["volumeMounts"]
                if any(v["name"] == m["name"] and "emptyDir" in v for v in pod["volumes"])}
    assert writable == {"/tmp", _env(container)["PROMETHEUS_MULTIPROC_DIR"]}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


def test_dockerfile_matches_the_manifests():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim\b", text, re.M)
    user = re.search(r"^USER (\d+)(?::(\d+))?$", text, re.M)
    assert user and int(user.group(1)) == _one("Deployment")["spec"]["template"]["spec"]["securityContext"][
        "runAsUser"]
    assert 'CMD ["gunicorn", "-c", "gunicorn.conf.py"]' in text
    assert "GATEWAY_BIND=0.0.0.0:8080" in text and re.search(r"^EXPOSE 8080 5555$", text, re.M)
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M)
    for sources in copied:
        for source in sources.split():
            assert (REPO / source).exists(), source
            assert source not in ignored, source
