"""Arbitrary bodies thrown at /publish: never a 500, a hang or a dead worker."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.rabbit import AMQP_PORT, Rabbit, unique
from tests.support.server import GatewayProcess, request
from tests.support.settings import FAST

pytestmark = pytest.mark.e2e

EXPECTED = {200, 400, 404, 413, 422}


@pytest.fixture(scope="module")
def target(tmp_path_factory, rabbit_available):
    rabbit = Rabbit()
    queue = unique("prop")
    rabbit.channel.queue_declare(queue, durable=True)
    rabbit.queues.append(queue)
    gw = GatewayProcess(tmp_path_factory.mktemp("prop"),
                        FAST + f"MAX_BODY_SIZE,2000\nRMQ_CONN_STR,ok,guest:guest@127.0.0.1:{AMQP_PORT}/\n", workers=1)
    gw.start()
    pids = gw.worker_pids()
    answered = {"ok": 0}
    yield gw, rabbit, queue, answered
    try:
        assert gw.worker_pids() == pids, "a worker died"
        assert request(gw.port, "GET", "/healthz")[0] == 200
        assert rabbit.count(queue) == answered["ok"], "a 200 is missing or a refused body was published"
    finally:
        gw.stop()
        rabbit.close()


ids = st.sampled_from([b"ok", b"nope", b"", b"bad id", b"\xff", b"x" * 65]) | st.binary(max_size=70)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_bodies(target, data):
    gw, _rabbit, queue, answered = target
    queues = st.sampled_from([queue.encode(), b"", b"q" * 256, b"\xfe\xff", b"test.no.such.queue"]) | st.binary(
        max_size=40)
    body = data.draw(st.one_of(
        st.binary(max_size=3000),
        st.builds(lambda i, q, m: i + b"|" + q + b"|" + m, ids, queues, st.binary(max_size=2500)),
    ))
    status, headers, raw = request(gw.port, "POST", "/publish", body, timeout=10)
    assert status in EXPECTED, (status, raw)
    answer = json.loads(raw)
    if status == 200:
        answered["ok"] += 1
        assert answer == {"status": "ok"}
    else:
        assert set(answer) == {"error", "detail"} and headers["content-type"] == "application/json"
