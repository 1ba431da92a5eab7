"""Running it like production: gunicorn with two workers, checked over HTTP.

* ``/metrics`` adds up both workers' samples (prometheus_client's
  multi-process mode) and forgets a killed worker's live gauges;
* ``/pools`` merges both workers' pools;
* every log line is JSON, the access log carries request and connection ids;
* no configured password or token appears in any log line, answer or header.
"""

import json
import os
import re
import signal
import time
import uuid

import gevent
import pytest

from app.config import parse_broker
from tests.support.rabbit import Rabbit, rabbitmqctl, unique
from tests.support.server import GatewayProcess, request

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

FAST = "HEALTH_INTERVAL,0.2\nCONNECT_TIMEOUT,1\nRECONNECT_BACKOFF_MAX,0.3\nPOOL_TIMEOUT,1\nPUBLISH_TIMEOUT,4\n"


def scrape(port: int, headers: dict[str, str] | None = None) -> dict[str, float]:
    """``/metrics`` as {'name{labels}': value}, labels in the order printed."""
    status, _, body = request(port, "GET", "/metrics", headers=headers)
    assert status == 200
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        sample_name, _, rest = key.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if sample_name == name and all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


def access_lines(gw: GatewayProcess) -> list[dict]:
    # events() skips a line a worker is still writing (it does not parse yet).
    return gw.events("access")


M_URI = "guest:guest@127.0.0.1:5672/"
M_ENDPOINT = parse_broker(M_URI).display  # the pool metrics' label: the endpoint as displayed, no password


@pytest.fixture
def gateway_2w(tmp_path, rabbit):
    """gunicorn, 2 workers, pool size 2, id ``m`` on the local broker; and a queue."""
    gw = GatewayProcess(tmp_path, FAST + f"NO_OF_CONNECTIOS,2\nRMQ_CONN_STR,m,{M_URI}\n",
                        workers=2, env={"GATEWAY_ACCESS_LOG": "true"})
    gw.start()
    yield gw, rabbit.queue("metrics")
    gw.stop()


def _publish_until_both_workers_answered(gw: GatewayProcess, body: bytes, limit: int = 400) -> tuple[int, set[int]]:
    sent = 0
    while sent < limit:
        jobs = [gevent.spawn(request, gw.port, "POST", "/publish", body) for _ in range(20)]
        gevent.joinall(jobs, raise_error=True)
        assert all(job.value[0] == 200 for job in jobs), [job.value for job in jobs if job.value[0] != 200]
        sent += len(jobs)
        pids = {entry["pid"] for entry in access_lines(gw) if entry["path"] == "/publish"}
        if len(pids) == 2:
            return sent, pids
    raise AssertionError(f"one worker took all {sent} requests")


def test_metrics_and_pools_add_up_over_two_workers(gateway_2w, rabbit):
    gw, queue = gateway_2w
    ok, pids = _publish_until_both_workers_answered(gw, f"m|{queue}|hello".encode())
    unroutable = 0
    for _ in range(6):
        status, _, _ = request(gw.port, "POST", "/publish", b"m|test.no.such.queue|x")
        assert status == 422
        unroutable += 1
    assert rabbit.count(queue) == ok

    samples = scrape(gw.port)
    assert metric(samples, "gateway_publish_total", conn_id="m", outcome="ok") == ok
    assert metric(samples, "gateway_publish_total", conn_id="m", outcome="unroutable") == unroutable
    assert metric(samples, "gateway_publish_duration_seconds_count", conn_id="m") == ok + unroutable
    # One confirm round trip per batch: concurrent publishes share one (group commit).
    batches = metric(samples, "gateway_confirm_duration_seconds_count", endpoint=M_ENDPOINT, role="primary")
    assert 1 <= batches <= ok + unroutable
    assert metric(samples, "gateway_pool_open_connections", endpoint=M_ENDPOINT) == 4  # 2 workers x 2
    assert metric(samples, "gateway_pool_size", endpoint=M_ENDPOINT) == 4
    assert metric(samples, "gateway_connection_events_total", endpoint=M_ENDPOINT, event="opened") >= 4
    assert metric(samples, "gateway_broker_up", endpoint=M_ENDPOINT) == 1

    gevent.sleep(1.1)  # the other worker's snapshot is up to a second old
    status, _, body = request(gw.port, "GET", "/pools")
    view = json.loads(body)
    assert status == 200 and set(view["workers"]) == {str(p) for p in pids}
    assert all(0 <= age < 1.5 for age in view["workers"].values())
    primary = view["connections"]["m"]["brokers"]["primary"]
    assert primary["open"] == 4 and primary["state"] == "up" and set(primary["workers"]) == {str(p) for p in pids}
    assert view["connections"]["m"]["active"] == "primary"

    # A killed worker: its counters stay counted, its live gauges and pool view go.
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        current = set(gw.worker_pids())
        if victim not in current and len(current) == 2:
            samples = scrape(gw.port)
            if metric(samples, "gateway_pool_open_connections", endpoint=M_ENDPOINT) == 4:
                break
        gevent.sleep(0.2)
    else:
        raise AssertionError(f"replacement worker not serving with a full pool:\n{gw.logs()[-2000:]}")
    assert metric(samples, "gateway_publish_total", conn_id="m", outcome="ok") == ok
    assert metric(samples, "gateway_pool_size", endpoint=M_ENDPOINT) == 4
    gevent.sleep(1.1)  # the new worker's snapshot is up to a second old
    view = json.loads(request(gw.port, "GET", "/pools")[2])
    assert str(victim) not in view["workers"] and set(view["workers"]) == {str(p) for p in current}
    assert view["connections"]["m"]["brokers"]["primary"]["open"] == 4


@pytest.fixture
def secret_user(vhosts):
    """A RabbitMQ user of this test's own with a password worth searching for."""
    name = unique("user")
    password = "Pw-" + uuid.uuid4().hex
    rabbitmqctl("add_user", name, password)
    rabbitmqctl("set_permissions", "-p", vhosts["primary"].name, name, ".*", ".*", ".*")
    yield name, password
    rabbitmqctl("delete_user", name)


def test_no_secret_in_any_log_answer_or_metric(tmp_path, secret_user, vhosts):
    user, password = secret_user
    vhost = vhosts["primary"].name
    wrong_password = "WrongPw-" + uuid.uuid4().hex
    db_password = "DbPw-" + uuid.uuid4().hex
    token = "tok-" + uuid.uuid4().hex
    ops_token = "ops-" + uuid.uuid4().hex
    secrets = [password, wrong_password, db_password, token, ops_token]
    cfg = (FAST + "NO_OF_CONNECTIOS,1\nLOG_LEVEL,DEBUG\n"
           f"DB_PASSWORD,{db_password}\n"
           # good primary, dead backup: connect errors with the password in the address
           f"RMQ_CONN_STR,good,{user}:{password}@127.0.0.1:5672/{vhost},{user}:{password}@127.0.0.1:1/{vhost}\n"
           # login refused: the broker's error, with the wrong password configured
           f"RMQ_CONN_STR,badpw,amqp://{user}:{wrong_password}@127.0.0.1:5672/{vhost}\n")
    gw = GatewayProcess(tmp_path, cfg, workers=2, env={
        "GATEWAY_ACCESS_LOG": "true",
        "GATEWAY_AUTH_TOKENS": f"producer {token} good,badpw",
        "GATEWAY_OPS_TOKEN": ops_token,
    })
    rabbit = Rabbit(vhost=vhost)
    queue = rabbit.queue("secrets")
    answers: list[bytes] = []
    try:
        gw.start(wait_ready=False)
        auth = {"Authorization": f"Bearer {token}"}
        ops = {"Authorization": f"Bearer {ops_token}"}
        deadline = time.monotonic() + 15
        while request(gw.port, "POST", "/publish", f"good|{queue}|first".encode(), auth)[0] != 200:
            assert time.monotonic() < deadline, gw.logs()[-2000:]
            gevent.sleep(0.2)
        calls = [
            ("POST", "/publish", f"good|{queue}|m".encode(), {**auth, "X-Request-ID": "trace-ok-1"}),
            ("POST", "/publish", b"badpw|q|m", auth),  # 503: login refused
            ("POST", "/publish", b"good|test.no.such.queue|m", auth),  # 422
            ("POST", "/publish", b"good|q|m", {}),  # 401
            ("POST", "/publish", b"good|q|m", {"Authorization": f"Bearer {token}x"}),  # 401
            ("POST", "/publish", b"other|q|m", auth),  # 403
            ("POST", "/publish", b"bad body", auth),  # 400
            # 413: over MAX_BODY_SIZE (1 MiB); the gateway answers at the header and closes with a
            # linger, so that the client's send completes (test_abuse: far over the limit).
            ("POST", "/publish", b"x" * 1_100_000, auth),
            ("GET", "/readyz", None, {}),
            ("GET", "/pools", None, ops),
            ("GET", "/metrics", None, ops),
            ("GET", "/metrics", None, {}),  # 401
            ("GET", "/nope", None, {}),
        ]
        statuses = []
        for method, path, body, headers in calls:
            status, resp_headers, data = request(gw.port, method, path, body, headers)
            statuses.append(status)
            answers.append(data + json.dumps(resp_headers).encode())
        assert statuses == [200, 503, 422, 401, 401, 403, 400, 413, 503, 200, 200, 401, 404]
        assert b"gateway_publish_total" in answers[10] and b'"badpw"' in answers[9]
        assert rabbit.bodies(queue) == [b"first", b"m"]  # the two 200s, and nothing else
        gevent.sleep(0.5)  # let the failing connects log a few more times
    finally:
        gw.stop()
        rabbit.close()
    log = gw.logs()
    entries = [json.loads(line) for line in log.splitlines()]  # every line is one JSON object
    assert any(entry.get("event") == "connect_failed" and "badpw" in entry.get("conn_ids", []) for entry in entries)
    traced = [entry for entry in entries if entry.get("request_id") == "trace-ok-1"]
    assert traced and traced[-1]["event"] == "access" and traced[-1]["conn_id"] == "good"
    assert traced[-1]["status"] == 200 and traced[-1]["method"] == "POST"
    everything = log.encode() + b"".join(answers)
    for secret in secrets:
        assert secret.encode() not in everything, f"a configured secret leaked ({secrets.index(secret)})"


def test_a_given_metrics_dir_is_emptied_at_start_and_kept(tmp_path, rabbit):
    # Kubernetes: an emptyDir survives a container restart, so the last run's samples are still there.
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_99999.db").write_bytes(b"stale")
    (metrics_dir / "pools_99999.json").write_text("{}")
    (metrics_dir / "keep.txt").write_text("not ours")
    gw = GatewayProcess(tmp_path, FAST + "RMQ_CONN_STR,k,guest:guest@127.0.0.1:5672/\n", workers=1,
                        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        gw.start()
        queue = rabbit.queue("kept")
        assert request(gw.port, "POST", "/publish", f"k|{queue}|x".encode())[0] == 200
        samples = scrape(gw.port)
        assert metric(samples, "gateway_publish_total", conn_id="k", outcome="ok") == 1
        assert not (metrics_dir / "counter_99999.db").exists() and not (metrics_dir / "pools_99999.json").exists()
    finally:
        gw.stop()
    assert (metrics_dir / "keep.txt").exists()  # only the gateway's own files are removed, the dir stays
