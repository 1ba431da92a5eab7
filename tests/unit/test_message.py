"""The publish body parser: pipes, newlines and any bytes in the message; every 400."""

import pytest

from app.core.errors import InvalidConnectionId, InvalidQueue, MalformedBody
from app.core.message import parse_body


@pytest.mark.parametrize("body, expected", [
    (b"14|queue_123|test-message", ("14", "queue_123", b"test-message")),
    (b"a|q|", ("a", "q", b"")),
    (b"a|q|x|y||z", ("a", "q", b"x|y||z")),
    (b"a|q|line1\nline2\r\n", ("a", "q", b"line1\nline2\r\n")),
    (b"a|q|\x00\xff\xfe|\x80", ("a", "q", b"\x00\xff\xfe|\x80")),
    (b"A-z_0.9|q|m", ("A-z_0.9", "q", b"m")),
    ("a|caf\u00e9 q|m".encode(), ("a", "caf\u00e9 q", b"m")),
    (b"a|" + b"q" * 255 + b"|m", ("a", "q" * 255, b"m")),
])
def test_valid_bodies(body, expected):
    assert tuple(parse_body(body)) == (*expected, None)  # no envelope: the seed's form


@pytest.mark.parametrize("body, error", [
    (b"", MalformedBody),
    (b"no pipes", MalformedBody),
    (b"a|q", MalformedBody),
    (b"|q|m", InvalidConnectionId),
    (b"bad id|q|m", InvalidConnectionId),
    (b"a" * 65 + b"|q|m", InvalidConnectionId),
    (b"\xff|q|m", InvalidConnectionId),
    (b"t\n|q|m", InvalidConnectionId),  # a regex "$" matches before a final newline: fullmatch
    (b"a\r\n|q|m", InvalidConnectionId),
    (b"a||m", InvalidQueue),
    (b"a|" + b"q" * 256 + b"|m", InvalidQueue),
    (b"a|\xff\xfe|m", InvalidQueue),
    (b"a|amq.rabbitmq.reply-to|m", InvalidQueue),  # RabbitMQ's direct reply-to: never a queue
    (b"a|amq.rabbitmq.reply-to.x.y|m", InvalidQueue),  # this one makes RabbitMQ close the connection
])
def test_bad_bodies_are_400(body, error):
    with pytest.raises(error) as info:
        parse_body(body)
    assert info.value.status == 400
