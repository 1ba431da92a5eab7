"""The real Dockerfile, built and run the way deploy/base/deployment.yaml runs it (make image-test).

A Docker engine comes from ``scripts/ensure-docker.sh`` (Debian's docker.io and a dockerd
of the project's own when none answers; stopped again at the end if we started it). No
image registry is reachable here, so the Dockerfile's ``BASE`` is a stand-in built once
with debootstrap (``scripts/standin-base.sh``) and kept in that engine. Our dockerd makes
no bridge network: the containers share the host's, and reach the test's RabbitMQ on
loopback.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.server import REPO, free_port, request

# The first test builds the image (a changed dependency layer reinstalls the lock): more than the suite's 120 s.
pytestmark = [pytest.mark.image, pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(1500)]

IMAGE = "amqp-gateway:0.1.0"  # the tag the README's `docker build` line makes
STANDIN_BASE = "amqp-gateway-base:bookworm"
TOKEN = "image-test-token-" + "x" * 16
OPS_TOKEN = "image-test-ops-token-" + "y" * 16


class Docker:
    def __init__(self, host: str):
        self.env = {"DOCKER_HOST": host, "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=self.env)

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        done = self.run(*args, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout.strip()

    def logs(self, name: str) -> str:
        done = self.run("logs", name)
        return done.stdout + done.stderr


def _script(*args: str, timeout: float, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run([str(REPO / "scripts" / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        # One clear line, and a failure: never a silent skip.
        pytest.fail(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"{args[0]} failed",
                    pytrace=False)
    return done.stdout.split()


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    out = _script("ensure-docker.sh", "start", timeout=600)
    yield Docker(out[0])
    if "started" in out[1:]:
        _script("ensure-docker.sh", "stop", timeout=60)


@pytest.fixture(scope="session")
def image(docker: Docker, request: pytest.FixtureRequest) -> str:
    env_host = {"DOCKER_HOST": docker.env["DOCKER_HOST"]}
    base = _script("standin-base.sh", STANDIN_BASE, timeout=1200, env=env_host)[0]  # built once, then kept
    started = time.monotonic()
    docker("build", "--quiet", "--network", "host", "--build-arg", f"BASE={base}", "-t", IMAGE, str(REPO),
           timeout=1200)
    size = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nimage {IMAGE}: {size / 2**20:.0f} MiB on base {base} "
                                f"(built in {time.monotonic() - started:.0f} s)")
    return IMAGE


def _deployment() -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy" / "base" / "deployment.yaml").read_text())


def _configmap_text(name: str) -> str:
    return yaml.safe_load((REPO / "deploy" / "base" / "configmap.yaml").read_text())["data"][name]


def _wait(port: int, path: str, timeout: float, docker: Docker, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", path, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    logs = docker.logs(name)[-4000:]
    raise AssertionError(f"{path} not 200 within {timeout} s; container log:\n{logs}")


def _publish(port: int, body: bytes, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return request(port, "POST", "/publish", body, headers=headers)[0]


def test_image_runs_under_the_deployments_security_settings(docker, image, tmp_path, rabbit):
    """read-only root, uid 10001, no capabilities, no-new-privileges, emptyDirs as tmpfs, secrets as files."""
    pod = _deployment()["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ctx, pod_ctx = container["securityContext"], pod["securityContext"]
    assert ctx["readOnlyRootFilesystem"] and ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["allowPrivilegeEscalation"] is False
    user = f"{pod_ctx['runAsUser']}:{pod_ctx['runAsGroup']}"

    # The ConfigMap's file and the Secret's files, mounted read-only where the Deployment mounts them.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_dir, secret_dir = tmp_path / "config", tmp_path / "secret"
    config_dir.mkdir()
    secret_dir.mkdir()
    config_name = next(iter(yaml.safe_load((REPO / "deploy" / "base" / "configmap.yaml").read_text())["data"]))
    (config_dir / config_name).write_text(_configmap_text(config_name))
    queue = rabbit.queue("image")
    secrets = {
        "GATEWAY_RMQ_CONN_STR_main": "amqp://guest:guest@127.0.0.1:5672/%2F",
        "GATEWAY_OPS_TOKEN": OPS_TOKEN,
        "GATEWAY_DB_PASSWORD": "unused",
        "tokens": f"producer {TOKEN} main\n",
        "ca.crt": "",
    }
    for key, value in secrets.items():
        (secret_dir / key).write_text(value)
        (secret_dir / key).chmod(0o444)
    args = ["--read-only", "--user", user, "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "-v", f"{config_dir}:{mounts['config']}:ro", "-v", f"{secret_dir}:{mounts['secret-files']}:ro"]
    for name, path in mounts.items():
        if "emptyDir" in volumes[name]:
            size = volumes[name]["emptyDir"]["sizeLimit"].replace("Mi", "m")
            args += ["--tmpfs", f"{path}:rw,size={size},uid={pod_ctx['runAsUser']},gid={pod_ctx['fsGroup']},mode=1770"]
    env = {item["name"]: item["value"] for item in container["env"]}
    port, zmq_port = free_port(), free_port()
    env["GATEWAY_BIND"] = f"127.0.0.1:{port}"  # the host's network: a free port, not 8080
    env["GATEWAY_ZMQ_SOCK_ADDRESS"] = f"tcp://127.0.0.1:{zmq_port}"
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    name = f"gateway-image-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "--network", "host", *args, image)
    try:
        _wait(port, "/healthz", 60, docker, name)
        _wait(port, "/readyz", 60, docker, name)
        assert _publish(port, f"main|{queue}|no token".encode(), None) == 401
        assert _publish(port, f"main|{queue}|from the image".encode(), TOKEN) == 200
        assert request(port, "GET", "/metrics", headers={"Authorization": f"Bearer {OPS_TOKEN}"})[0] == 200
        grace = pod["terminationGracePeriodSeconds"]
        started = time.monotonic()
        docker("stop", "-t", str(grace), name, timeout=grace + 30)
        stopped_in = time.monotonic() - started
        state = json.loads(docker("inspect", "--format", "{{json .State}}", name))
        assert state["ExitCode"] == 0 and stopped_in < grace, (state, stopped_in)
        # Nothing written outside the mounts: the only changes are the mount points docker made.
        allowed = {str(parent) for path in mounts.values() for parent in (Path(path), *Path(path).parents)}
        changed = [line.split(" ", 1)[1] for line in docker("diff", name).splitlines()]
        assert [path for path in changed if path not in allowed] == []
        logs = docker.logs(name)
        assert OPS_TOKEN not in logs and TOKEN not in logs and "guest:guest" not in logs
    finally:
        docker("rm", "-f", name, check=False)
    assert rabbit.bodies(queue) == [b"from the image"]


def _documented_run_command() -> list[str]:
    """The `docker run` line of the README's Deploy section, as a user would paste it."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Deploy", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("docker run ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def test_the_documented_docker_run_command_is_ready_and_publishes(docker, image, rabbit):
    argv = _documented_run_command()
    assert argv[-1] == image and "-p" in argv
    # Our engine has no bridge: the host's network stands in for -p, and "rabbitmq" is this host.
    at = argv.index("-p")
    port = free_port()
    argv[at:at + 2] = ["--network", "host", "--add-host", "rabbitmq:127.0.0.1", "-e", f"GATEWAY_BIND=127.0.0.1:{port}"]
    argv = [re.sub(r"//[^:@/]+:[^@/]+@", "//guest:guest@", arg) for arg in argv]  # the local broker's user
    name = f"gateway-doc-{uuid.uuid4().hex[:8]}"
    argv[argv.index("run") + 1:argv.index("run") + 1] = ["-d", "--name", name]
    queue = rabbit.queue("documented")
    docker(*argv[1:])
    try:
        _wait(port, "/readyz", 60, docker, name)
        # /readyz is one worker's answer; the publish may reach another still opening its
        # pool, answered 503 broker_unavailable (nothing sent): a producer retries that.
        deadline = time.monotonic() + 10
        while True:
            status, _, answer = request(port, "POST", "/publish", f"main|{queue}|documented".encode())
            if status != 503 or b"broker_unavailable" not in answer or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200, answer
    finally:
        docker("rm", "-f", name, check=False)
    assert rabbit.bodies(queue) == [b"documented"]


def test_without_a_connection_id_the_image_says_what_to_set(docker, image):
    done = docker.run("run", "--rm", "--network", "none", image, timeout=60)
    assert done.returncode != 0
    assert "GATEWAY_RMQ_CONN_STR_<id>" in done.stdout + done.stderr
