"""Limits: body size, queue name length, number of connection ids; each a clear error."""

import subprocess
import sys

import pytest

from app.config import ConfigError, ConnectionSpec, parse_broker, settings_from_text
from app.core.gateway import Gateway
from app.http.factory import create_app
from tests.support.server import REPO
from tests.support.settings import broker, make_settings

THREE_IDS = "\n".join(f"RMQ_CONN_STR,id{i},guest:guest@127.0.0.1:5672/" for i in range(3))


def test_too_many_connection_ids_fail_start_up_with_one_line():
    with pytest.raises(ConfigError) as info:
        settings_from_text("MAX_CONNECTION_IDS,2\n" + THREE_IDS, "pool.cfg", {})
    assert str(info.value) == ("pool.cfg: 3 connection ids configured, more than MAX_CONNECTION_IDS=2 "
                               "(raise the limit if they are all meant)")
    assert len(settings_from_text(THREE_IDS, "pool.cfg", {"GATEWAY_MAX_CONNECTION_IDS": "3"}).connections) == 3
    with pytest.raises(ConfigError, match="MAX_CONNECTION_IDS: must be between 1 and 10000"):
        settings_from_text(THREE_IDS + "\nMAX_CONNECTION_IDS,0", "pool.cfg", {})


def test_a_connection_list_over_the_limit_changes_nothing():
    gw = Gateway(make_settings({"a": broker()}, "MAX_CONNECTION_IDS,2"))
    specs = [ConnectionSpec(f"id{i}", parse_broker(broker(1))) for i in range(3)]
    with pytest.raises(ConfigError, match="3 connection ids configured, more than MAX_CONNECTION_IDS=2"):
        gw.set_connections(specs)
    assert gw.routes == {}


def _gunicorn(tmp_path, cfg: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "pool.cfg"
    path.write_text(cfg)
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0"],
                          cwd=REPO, env={"PATH": "/usr/bin:/bin", "GATEWAY_CONFIG": str(path), **(env or {})},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.e2e
def test_gunicorn_refuses_to_start_over_the_limit(tmp_path):
    done = _gunicorn(tmp_path, "MAX_CONNECTION_IDS,2\n" + THREE_IDS)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].endswith("more than MAX_CONNECTION_IDS=2 (raise the limit if they "
                                                         "are all meant)")
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.e2e
def test_gunicorn_refuses_a_bad_token_file_without_showing_tokens(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("ok 0123456789abcdef0123 a\nweak tooshort-secret a\n")
    done = _gunicorn(tmp_path, "RMQ_CONN_STR,a,guest:guest@127.0.0.1:5672/\n",
                     {"GATEWAY_AUTH_TOKENS_FILE": str(tokens)})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gateway: config error: {tokens}:2: token 'weak' must be at least 16")
    assert "tooshort-secret" not in done.stderr + done.stdout and "0123456789abcdef0123" not in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_body_over_the_limit_is_413_and_long_queue_name_400():
    client = create_app(make_settings({"a": broker()}, "MAX_BODY_SIZE,300")).test_client()
    resp = client.post("/publish", data=b"a|q|" + b"x" * 297)
    assert resp.status_code == 413 and resp.json["error"] == "body_too_large"
    resp = client.post("/publish", data=b"a|" + b"q" * 256 + b"|m")
    assert resp.status_code == 400 and resp.json["error"] == "invalid_queue" and "at most 255" in resp.json["detail"]
