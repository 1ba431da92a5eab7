"""Bearer tokens: the token file format, 401/403 answers, the operator token.

The HTTP checks use Flask's test client on an app whose pools are not
started (no broker needed: every answer here comes before a publish would).
Publishing with a valid token end to end is in tests/e2e/test_ops_e2e.py.
"""

import json

import pytest
from prometheus_client import REGISTRY

from app.config import ConfigError
from app.http.auth import TokenTable, load_tokens, parse_tokens
from app.http.batch import encode_batch
from app.http.factory import create_app
from tests.support.settings import broker, make_settings

PUB = "publisher-token-0123456789abcdef"
NARROW = "narrow-token-0123456789abcdef"
ANY = "anything-token-0123456789abcdef"
OPS = "ops-token-0123456789abcdef"
TOKENS = f"""
# name   token   ids   queue patterns
pub    {PUB}    a,b
narrow {NARROW} a     orders.*,audit.events
any    {ANY}    *
"""


def test_token_lines_parse_into_rules():
    rules = {rule.name: rule for rule, _ in parse_tokens(TOKENS, "tokens")}
    assert rules["pub"].conn_ids == frozenset({"a", "b"}) and rules["pub"].queues == ()
    assert rules["narrow"].may_use("a") and not rules["narrow"].may_use("b")
    assert rules["narrow"].may_publish_to("orders.eu") and rules["narrow"].may_publish_to("audit.events")
    assert not rules["narrow"].may_publish_to("audit.other")
    assert rules["any"].conn_ids is None and rules["any"].may_use("whatever")
    table = TokenTable(rule for rule, _ in parse_tokens(TOKENS, "tokens"))
    assert table.identify(PUB).name == "pub"
    assert table.identify(PUB + "x") is None and table.identify("") is None and table.identify(None) is None


@pytest.mark.parametrize("line, problem", [
    ("pub short a", "at least 16"),
    ("pub", "expected `name token ids"),
    (f"pub {PUB} a q extra", "expected `name token ids"),
    (f"bad/name {PUB} a", "invalid token name"),
    (f"pub {PUB} a,b/c", "ids must be"),
    (f"pub {PUB} a\npub {ANY} b", "used twice"),
    (f"pub {PUB} a\nother {PUB} b", "repeats another token"),
])
def test_bad_token_lines_fail_with_the_line_and_never_the_token(line, problem):
    with pytest.raises(ConfigError) as info:
        parse_tokens(line, "tokens.txt")
    assert problem in str(info.value)
    assert str(info.value).startswith("tokens.txt:")
    for token in (PUB, ANY, "short"):
        assert token not in str(info.value)


def test_tokens_from_file_and_environment(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"pub {PUB} a\n")
    settings = make_settings({"a": broker()}, f"AUTH_TOKENS_FILE,{path}").replace(
        auth_tokens=f"any {ANY} *; narrow {NARROW} a orders.*")
    table, raw = load_tokens(settings)
    assert table is not None and {rule.name for rule in table.rules} == {"pub", "any", "narrow"}
    assert set(raw) == {PUB, ANY, NARROW}
    with pytest.raises(ConfigError, match="file not found"):
        load_tokens(settings.replace(auth_tokens_file=str(tmp_path / "missing")))
    assert load_tokens(make_settings({"a": broker()})) == (None, [])


@pytest.fixture
def client():
    settings = make_settings({"a": broker(), "b": broker()}).replace(auth_tokens=TOKENS, ops_token=OPS)
    return create_app(settings).test_client()


def _post(client, body: bytes, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/publish", data=body, headers=headers)


def _count(outcome: str, conn_id: str = "_unknown") -> float:
    labels = {"ingress": "http", "conn_id": conn_id, "outcome": outcome}
    return REGISTRY.get_sample_value("gateway_publish_total", labels) or 0.0


def test_no_token_is_401_with_a_challenge(client):
    before = _count("unauthorized")
    resp = _post(client, b"a|orders.x|m")
    assert resp.status_code == 401
    assert _count("unauthorized") == before + 1  # counted, under no id: the body was never read
    assert resp.json == {"error": "unauthorized", "detail": resp.json["detail"]}
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="amqp-gateway"'
    assert resp.headers["Connection"] == "close"
    for header in ("Basic " + PUB, "Bearer", "Bearer  ", PUB):
        assert client.post("/publish", data=b"a|q|m", headers={"Authorization": header}).status_code == 401


def test_wrong_token_is_401_invalid_token(client):
    resp = _post(client, b"a|orders.x|m", PUB[:-1] + "X")
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


def test_id_or_queue_not_allowed_is_403(client):
    before = _count("forbidden")
    resp = _post(client, b"b|orders.x|m", NARROW)
    assert resp.status_code == 403 and resp.json["error"] == "forbidden"
    assert _post(client, b"a|payments|m", NARROW).status_code == 403
    # 403 before 404: a token learns nothing about ids it may not use.
    assert _post(client, b"secret-id|orders.x|m", NARROW).status_code == 403
    assert _count("forbidden") == before + 3  # the pools are not started here: every id counts as unknown
    # Allowed everywhere, but no such id: past the checks, the gateway's own 404.
    assert _post(client, b"zzz|q|m", ANY).status_code == 404


def test_bad_body_with_a_valid_token_is_still_400(client):
    assert _post(client, b"no separators", PUB).status_code == 400


def test_ops_token_guards_metrics_and_pools_not_health(client):
    for path in ("/metrics", "/pools"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {PUB}"}).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {OPS}"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503  # open, just not ready: nothing started
    # The ops token is not a publish token.
    assert _post(client, b"a|orders.x|m", OPS).status_code == 401


def test_ops_token_can_guard_health_too():
    settings = make_settings({"a": broker()}).replace(ops_token=OPS, ops_token_health=True)
    client = create_app(settings).test_client()
    assert client.get("/healthz").status_code == 401
    assert client.get("/readyz").status_code == 401
    assert client.get("/healthz", headers={"Authorization": f"Bearer {OPS}"}).status_code == 200
    # No publish tokens configured: /publish stays open (auth is per concern).
    assert client.post("/publish", data=b"nope|q|m").status_code == 404


def test_without_tokens_publish_is_open():
    client = create_app(make_settings({"a": broker()})).test_client()
    resp = client.post("/publish", data=b"nope|q|m")
    assert resp.status_code == 404 and json.loads(resp.data)["error"] == "unknown_connection_id"
    assert client.get("/metrics").status_code == 200 and client.get("/pools").status_code == 200


def test_batch_records_in_the_envelope_form_are_checked_against_exchange_scopes():
    router = "router-token-0123456789abcdef"
    settings = make_settings({"a": broker()}).replace(auth_tokens=f"router {router} a @events/order.*,plain.*")
    client = create_app(settings).test_client()

    def batch(*records: bytes) -> int:
        return client.post("/publish/batch", data=encode_batch(list(records)),
                           headers={"Authorization": f"Bearer {router}"}).status_code

    allowed = b'{"connection_id": "a", "exchange": "events", "routing_key": "order.created"}\nm'
    to_queue = b'{"connection_id": "a", "exchange": "amq.default", "routing_key": "plain.q"}\nm'
    assert batch(b"a|plain.q|m", allowed, to_queue) == 404  # past every check: the pools are not started here
    assert batch(allowed, b'{"connection_id": "a", "exchange": "events", "routing_key": "invoice.x"}\nm') == 403
    assert batch(b'{"connection_id": "a", "exchange": "amq.default", "routing_key": "secret"}\nm') == 403
    assert batch(b'{"connection_id": "b", "exchange": "events", "routing_key": "order.x"}\nm') == 403
