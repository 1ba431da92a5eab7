"""ZeroMQ frame shapes, the relay's packing and the ZeroMQ config keys (no broker needed)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.config import ConfigError, settings_from_text
from app.core.errors import MalformedFrames, PayloadTooLarge, Unavailable, WorkerLost
from app.zmq.frames import error_reply, pack, split_request, unpack

ID = b"\x00peer"  # what a ROUTER puts first


@pytest.mark.parametrize(("frames", "head", "body"), [
    ([ID, b"a|q|m"], [ID], b"a|q|m"),  # DEALER, one frame
    ([ID, b"c7", b"a|q|m"], [ID, b"c7"], b"a|q|m"),  # DEALER, correlation id
    ([ID, b"", b"a|q|m"], [ID, b""], b"a|q|m"),  # REQ envelope kept
    ([ID, b"", b"c7", b"a|q|m"], [ID, b"", b"c7"], b"a|q|m"),  # REQ with correlation id
    ([ID, b"c7", b""], [ID, b"c7"], b""),  # an empty body is the body parser's to refuse
])
def test_good_shapes_split_into_reply_head_and_body(frames, head, body):
    assert split_request(frames, 100) == (head, body, None)


@pytest.mark.parametrize(("frames", "head"), [
    ([ID, b""], [ID, b""]),  # envelope and nothing after it
    ([ID], [ID]),
    ([ID, b"x", b"y", b"z"], [ID, b"x"]),  # too many: the first is echoed as correlation id
    ([ID, b"", b"x", b"y", b"z"], [ID, b"", b"x"]),
])
def test_bad_shapes_are_400_malformed_frames(frames, head):
    got_head, body, error = split_request(frames, 100)
    assert isinstance(error, MalformedFrames) and error.status == 400
    assert got_head == head and body == b""


def test_body_over_the_limit_is_413():
    head, _, error = split_request([ID, b"c", b"x" * 101], 100)
    assert isinstance(error, PayloadTooLarge) and head == [ID, b"c"]
    assert split_request([ID, b"c", b"x" * 100], 100)[2] is None


def test_error_reply_carries_http_status_and_code():
    assert error_reply(MalformedFrames()) == b"ERR 400 malformed_frames"
    assert error_reply(WorkerLost()) == b"ERR 503 worker_lost"
    assert error_reply(Unavailable()) == b"ERR 503 unavailable"


@given(st.lists(st.tuples(st.binary(min_size=8, max_size=8), st.binary(max_size=300)), max_size=50))
def test_pack_round_trips_any_bytes(items):
    assert unpack(pack(items)) == items


KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
BASE = "RMQ_CONN_STR,a,guest:guest@127.0.0.1:5672/\n"


def test_zmq_keys_parse():
    s = settings_from_text(BASE + "ZMQ_SOCK_ADDRESS,tcp://127.0.0.1:5555\nZMQ_MAX_IN_FLIGHT,500\n"
                           "ZMQ_CURVE_SERVER_KEY,/etc/gw/server.key_secret\n"
                           f"ZMQ_CURVE_CLIENT_KEYS,{KEY} {KEY}\n", "<t>", {})
    assert s.zmq_address == "tcp://127.0.0.1:5555" and s.zmq_max_in_flight == 500
    assert s.zmq_curve_client_keys == (KEY, KEY)
    env = settings_from_text(BASE, "<t>", {"GATEWAY_ZMQ_SOCK_ADDRESS": "ipc:///tmp/feeds/0"})
    assert env.zmq_address == "ipc:///tmp/feeds/0" and env.zmq_max_in_flight == 2000


@pytest.mark.parametrize(("line", "problem"), [
    ("ZMQ_SOCK_ADDRESS,udp://x:1", "expected ipc://"),
    ("ZMQ_SOCK_ADDRESS,ipc://relative/path", "must be absolute"),
    ("ZMQ_SOCK_ADDRESS,tcp://host", "port number"),
    ("ZMQ_SOCK_ADDRESS,ipc:///" + "x" * 120, "longer than"),
    ("ZMQ_MAX_IN_FLIGHT,0", "ZMQ_MAX_IN_FLIGHT"),
    ("ZMQ_CURVE_CLIENT_KEYS,short", "Z85"),
    ("ZMQ_CURVE_SERVER_KEY,/k", "needs ZMQ_CURVE_CLIENT_KEYS_DIR or ZMQ_CURVE_CLIENT_KEYS"),
])
def test_bad_zmq_keys_fail_with_one_line(line, problem):
    with pytest.raises(ConfigError) as info:
        settings_from_text(BASE + line + "\n", "pool.cfg", {})
    assert problem in str(info.value) and "\n" not in str(info.value)
