"""Structured logs: request ids, per-request fields, masking, isolation between greenlets."""

import io
import json
import logging
import re

import gevent
import pytest

from app.http.factory import create_app
from app.http.request_id import HEADER
from app.ops import logs
from tests.support.settings import broker, make_settings


@pytest.fixture
def captured():
    """Lines the ``app`` loggers write, through the real formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("app")
    logger.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


@pytest.fixture
def app():
    flask_app = create_app(make_settings({"a": broker()}))

    @flask_app.get("/test-log")
    def test_log():
        gevent.sleep(0.05)  # let concurrent requests interleave
        logging.getLogger("app.test").warning("inside the request", extra={"event": "test_line"})
        return "ok"

    return flask_app


def test_given_request_id_is_returned_and_logged(app, captured):
    resp = app.test_client().get("/test-log", headers={HEADER: "req-42.abc:DEF"})
    assert resp.headers[HEADER] == "req-42.abc:DEF"
    line = next(entry for entry in captured() if entry["event"] == "test_line")
    assert line["request_id"] == "req-42.abc:DEF"
    assert {"time", "level", "pid", "logger", "message"} <= set(line)


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 129, "tab\there", "caf\u00e9", '{"json":1}'])
def test_missing_or_unsafe_request_id_is_replaced(app, given):
    headers = {HEADER: given} if given is not None else {}
    resp = app.test_client().get("/healthz", headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers[HEADER])


def test_error_answers_carry_the_request_id_too(app):
    client = app.test_client()
    for method, path in (("POST", "/publish"), ("GET", "/nope"), ("PUT", "/healthz")):
        resp = client.open(path, method=method, data=b"bad", headers={HEADER: "err-1"})
        assert resp.status_code >= 400 and resp.headers[HEADER] == "err-1"


def test_concurrent_requests_keep_their_own_ids(app, captured):
    client_ids = [f"concurrent-{i}" for i in range(20)]

    def call(request_id: str) -> None:
        app.test_client().get("/test-log", headers={HEADER: request_id})

    gevent.joinall([gevent.spawn(call, rid) for rid in client_ids], raise_error=True)
    seen = [entry["request_id"] for entry in captured() if entry["event"] == "test_line"]
    assert sorted(seen) == sorted(client_ids)
    assert logs.bound("request_id") is None  # nothing leaks into the test's own greenlet


def test_secrets_are_masked_in_every_line(captured):
    logs.register_secrets(["s3cret-passw0rd"])
    logging.getLogger("app.test").error("failed with s3cret-passw0rd",
                                        extra={"event": "x", "url": "u:s3cret-passw0rd@h"})
    line = captured()[-1]
    assert "s3cret-passw0rd" not in json.dumps(line)
    assert line["url"] == "u:***@h"
