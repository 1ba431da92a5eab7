"""Test settings: short timings, a broker URI, a Settings object built from lines."""

from __future__ import annotations

from app.config import Settings, settings_from_text
from tests.support.rabbit import AMQP_HOST, AMQP_PORT

# Short timings so failure scenarios finish in seconds (the defaults are in app/config/settings.py).
FAST = """
NO_OF_CONNECTIOS,3
POOL_TIMEOUT,1
CONFIRM_TIMEOUT,2
PUBLISH_TIMEOUT,4
CONNECT_TIMEOUT,1
HEARTBEAT,2
HEALTH_INTERVAL,0.2
HEALTH_RISE,3
HEALTH_FALL,2
RECONNECT_BACKOFF_MAX,0.3
KEEPALIVE_INTERVAL,1
"""


def broker(port: int = AMQP_PORT, host: str = AMQP_HOST) -> str:
    return f"guest:guest@{host}:{port}/"


def make_settings(conns: dict[str, str], extra: str = "") -> Settings:
    lines = [FAST, extra] + [f"RMQ_CONN_STR,{cid},{value}" for cid, value in conns.items()]
    return settings_from_text("\n".join(lines), "<test>", {})
