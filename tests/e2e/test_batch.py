"""POST /publish/batch: framing, all-or-nothing validation, one result per message."""

import json

import pytest

from app.core.errors import InvalidQueue, MalformedBody, PayloadTooLarge
from app.http.batch import encode_batch, parse_batch
from tests.support.rabbit import AMQP_PORT
from tests.support.server import GatewayProcess, request
from tests.support.settings import FAST


def test_framing_round_trips_any_bytes():
    records = [b"a|q|", b"a|q|x\ny\n", b"b|q2|" + bytes(range(256)), b"a|q|12\n34\n"]
    parsed = parse_batch(encode_batch(records), 10, 1000)
    assert [(r.conn_id, r.queue, r.body) for r in parsed] == [
        ("a", "q", b""), ("a", "q", b"x\ny\n"), ("b", "q2", bytes(range(256))), ("a", "q", b"12\n34\n")]


@pytest.mark.parametrize("body, error, fragment", [
    (b"", MalformedBody, "empty"),
    (b"5\na|q|x", MalformedBody, "record 0"),            # no newline after the record
    (b"9\na|q|x\n", MalformedBody, "record 0"),          # length longer than the data
    (b"x\na|q|x\n", MalformedBody, "record 0"),          # not a length
    (b"5\na|q|x\n3\nabc\n", MalformedBody, "record 1"),  # second record has no pipes
    (b"5\na||xy\n", InvalidQueue, "record 0"),
    (encode_batch([b"a|q|x"] * 4), PayloadTooLarge, "more than 3"),
    (encode_batch([b"a|q|" + b"x" * 100]), PayloadTooLarge, "record 0"),
])
def test_bad_batches_are_refused_whole(body, error, fragment):
    with pytest.raises(error) as info:
        parse_batch(body, 3, 50)
    assert fragment in info.value.detail


@pytest.mark.e2e
def test_batch_over_http_counts(tmp_path, rabbit):
    queue = rabbit.queue()
    gw = GatewayProcess(tmp_path, FAST + f"RMQ_CONN_STR,a,guest:guest@127.0.0.1:{AMQP_PORT}/\n"
                        f"RMQ_CONN_STR,b,guest:guest@127.0.0.1:{AMQP_PORT}/\n", workers=2).start()
    try:
        records = [f"{'ab'[i % 2]}|{queue}|m{i}".encode() for i in range(500)]
        status, _h, body = request(gw.port, "POST", "/publish/batch", encode_batch(records))
        assert (status, json.loads(body)) == (200, {"status": "ok", "published": 500})
        assert sorted(rabbit.bodies(queue)) == sorted(f"m{i}".encode() for i in range(500))

        mixed = [f"a|{queue}|ok1".encode(), b"a|test.no.such.queue|lost", f"b|{queue}|ok2".encode()]
        status, _h, body = request(gw.port, "POST", "/publish/batch", encode_batch(mixed))
        answer = json.loads(body)
        assert status == 207 and answer["published"] == 2 and answer["failed"] == 1
        assert [r["status"] for r in answer["results"]] == [200, 422, 200]
        assert answer["results"][1]["error"] == "unroutable"
        assert sorted(rabbit.bodies(queue)) == [b"ok1", b"ok2"]

        # A bad record or an unknown id refuses the whole batch: nothing is published.
        for bad, code in ((encode_batch([f"a|{queue}|x".encode(), b"zz|q|x"]), 404),
                          (encode_batch([f"a|{queue}|x".encode()]) + b"junk", 400)):
            status, _h, body = request(gw.port, "POST", "/publish/batch", bad)
            assert status == code, body
        assert rabbit.bodies(queue) == []
    finally:
        gw.stop()
