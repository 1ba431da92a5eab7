"""deploy/ and the Dockerfile: valid Kubernetes objects that match the app they run.

Offline. The base and the production overlay are rendered as ``kubectl apply -k``
renders them (``kubectl kustomize``, from the tools venv), every object is
validated against the Kubernetes JSON schemas that ship with
``kubernetes-validate`` (strict: an unknown or misspelt field fails) and
reviewed by checkov, whose findings must be exactly the ones docs/deploy.md
lists with their reasons. Then the manifests are checked against the app
itself: probe paths are its routes, ports are the ones it binds, the config
path is where the ConfigMap is mounted and the file there parses with the
Secret's files, the grace period outlasts gunicorn's graceful timeout.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import load_settings, settings_from_text
from app.http.auth import parse_tokens
from app.http.factory import create_app
from tests.support.server import REPO
from tests.support.tls import make_pki

BASE = REPO / "deploy" / "base"
TARGETS = {"base": BASE, "production": REPO / "deploy" / "overlays" / "production"}
K8S_VERSION = kubernetes_validate.utils.latest_version()
TOOLS = REPO / ".venv" / "tools" / "bin"  # make's tools venv: kubectl and checkov, locked


def _tool(name: str) -> str:
    found = os.environ.get(name.upper()) or (str(TOOLS / name) if (TOOLS / name).exists() else shutil.which(name))
    assert found, f"{name} not found: run the tests through make (it installs requirements/tools.txt)"
    return found


@cache
def _rendered(target: str) -> str:
    done = subprocess.run([_tool("kubectl"), "kustomize", str(TARGETS[target])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _documents(target: str = "base") -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(_rendered(target)) if doc]


def _one(kind: str, target: str = "base") -> dict[str, Any]:
    found = [doc for doc in _documents(target) if doc["kind"] == kind]
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


@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schema(target):
    for doc in _documents(target):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in BASE.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")
    kinds = {doc["kind"] for doc in _documents()}
    assert kinds == {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler", "NetworkPolicy"}
    namespace = _one("Namespace")["metadata"]["name"]
    assert all(doc["metadata"].get("namespace") == namespace for doc in _documents() if doc["kind"] != "Namespace")
    assert _one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert _container()["image"] == "amqp-gateway:0.1.0"


def test_production_overlay_pins_the_image_by_digest_and_brings_no_secret_template():
    image = _container("production")["image"]
    assert re.fullmatch(r"[\w.\-/]+@sha256:[0-9a-f]{64}", image), image
    assert "Secret" not in {doc["kind"] for doc in _documents("production")}


def test_the_hpa_alone_owns_the_scale():
    # A replicas field would reset the HPA's scale on every kubectl apply.
    assert "replicas" not in _one("Deployment")["spec"]
    assert _one("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2


def test_network_policy_admits_only_the_service_ports_and_the_backends():
    policy = _one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= _pod_labels().items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {port["name"] for port in _container()["ports"]}
    for target in TARGETS:
        egress = _one("NetworkPolicy", target)["spec"]["egress"]
        assert {p["port"] for rule in egress for p in rule["ports"]} == {5671, 5672, 5432, 53}


def _accepted_findings() -> set[tuple[str, str]]:
    """(check id, target) pairs that docs/deploy.md's "Policy findings left" table accepts."""
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text.split("### Policy findings left", 1)[1].split("\n#", 1)[0]
    return {(check, target.strip("` "))
            for check, targets in re.findall(r"^\| `(CKV2?_K8S_\d+)` \| ([^|]+) \|", section, re.M)
            for target in targets.split(",")}


@pytest.mark.parametrize("target", TARGETS)
def test_checkov_finds_only_what_docs_deploy_md_accepts(target, tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(_rendered(target))
    done = subprocess.run([_tool("checkov"), "--quiet", "--skip-download", "--framework", "kubernetes",
                           "--output", "json", "-f", str(rendered)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "LOG_LEVEL": "ERROR"})
    report = json.loads(done.stdout)
    failed = {(check["check_id"], target) for check in report["results"]["failed_checks"]}
    accepted = {pair for pair in _accepted_findings() if pair[1] == target}
    assert report["summary"]["passed"] > 50, report["summary"]  # it really reviewed the objects
    assert failed == accepted, f"new findings: {failed - accepted}; listed but gone: {accepted - failed}"


def _container(target: str = "base") -> dict[str, Any]:
    return _one("Deployment", target)["spec"]["template"]["spec"]["containers"][0]


def _pod_labels() -> dict[str, str]:
    return _one("Deployment")["spec"]["template"]["metadata"]["labels"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_probes_are_the_app_routes_on_the_bound_port():
    container = _container()
    routes = {rule.rule for rule in create_app(settings_from_text("RMQ_CONN_STR,a,h:1/", "t", {})).url_map.iter_rules()}
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


def test_config_map_is_mounted_where_the_app_reads_it_and_parses(tmp_path):
    container = _container()
    pod = _one("Deployment")["spec"]["template"]["spec"]
    config_path = Path(_env(container)["GATEWAY_CONFIG"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = _one("ConfigMap")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    text = config_map["data"][config_path.name]
    # What the pod will see: the file plus the Secret's keys as files in GATEWAY_SECRETS_DIR
    # (here in a directory of the test's, and the paths that name it moved there: TLS files are checked).
    secret_mount = next(m for m in container["volumeMounts"] if m["name"] == "secret-files")["mountPath"]
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (tmp_path / config_path.name).write_text(text.replace(secret_mount, str(secret_dir)))
    for key, value in _one("Secret")["stringData"].items():
        (secret_dir / key).write_text(value.replace(secret_mount, str(secret_dir)))
    # The template's CA is a placeholder, and the config check loads it: a real one stands in.
    assert "CHANGE-ME" in (secret_dir / "ca.crt").read_text()
    (tmp_path / "pki").mkdir()
    (secret_dir / "ca.crt").write_bytes(make_pki(tmp_path / "pki").ca.read_bytes())
    settings = load_settings(str(tmp_path / config_path.name), {"GATEWAY_SECRETS_DIR": str(secret_dir)})
    assert settings.connections and settings.connections[0].primary[0].tls
    assert "CHANGE-ME" not in text  # no password in the ConfigMap
    # ZeroMQ listens on the container's "zmq" port.
    zmq_port = int(re.search(r":(\d+)$", settings.zmq_address).group(1))
    assert zmq_port == {p["name"]: p["containerPort"] for p in container["ports"]}["zmq"]
    # Files the config names (tokens, CA) are in the mounted Secret.
    secret = _one("Secret")["stringData"]
    for path in (settings.auth_tokens_file, settings.connections[0].primary[0].cacertfile):
        assert path.startswith(str(secret_dir) + "/")  # i.e. under the mount in the pod
        assert path.rpartition("/")[2] in secret
    assert parse_tokens(secret["tokens"], "tokens") == []  # the template holds no usable token


def test_secrets_are_files_not_environment_variables():
    container = _container()
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert not any(isinstance(value, dict) for value in _env(container).values())  # no secretKeyRef
    secret_mount = next(m for m in container["volumeMounts"] if m["name"] == "secret-files")
    assert _env(container)["GATEWAY_SECRETS_DIR"] == secret_mount["mountPath"]
    volume = next(v for v in pod["volumes"] if v["name"] == "secret-files")["secret"]
    assert volume["secretName"] == _one("Secret")["metadata"]["name"]
    assert "items" not in volume  # every key is a file, the GATEWAY_* ones included
    assert _secret_env() and all("CHANGE-ME" in value for value in _secret_env().values())  # a template


def test_shutdown_outlasts_gunicorns_graceful_timeout(gunicorn_conf):
    pod = _one("Deployment")["spec"]["template"]["spec"]
    pre_stop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pause = int(pre_stop[1])
    assert pause > 0
    # SIGTERM comes after the pause; then gunicorn gives requests graceful_timeout, then closes AMQP.
    assert pod["terminationGracePeriodSeconds"] > pause + gunicorn_conf["graceful_timeout"] + 5
    from gunicorn.util import load_class
    from gunicorn.workers.ggevent import GeventWorker

    assert issubclass(load_class(gunicorn_conf["worker_class"]), GeventWorker)


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
    # The base is a build argument (a stand-in in make image-test); users get python:3.x-slim.
    assert re.search(r"^ARG BASE=python:3\.\d+-slim$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]
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
