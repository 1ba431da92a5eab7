"""schemathesis against the live gateway (gunicorn, two workers): every answer matches the OpenAPI document.

schemathesis reads ``/openapi.json`` from the running gateway and sends the
documented examples, then generated requests, to every operation. Checks: never a
5xx other than the documented ``501``/``503``, and every status, content type,
header and body as documented. Then the queue is counted: the only routable
target is the examples' ``local|my_queue`` (``/`` on the management API's
path names the id ``local``), in a vhost of the test's own, and it
must hold exactly the messages that were answered 200 (or counted as published
in a 207), so nothing answered 4xx was published.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.support.rabbit import AMQP_PORT, Vhost
from tests.support.server import GatewayProcess
from tests.support.settings import FAST

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")


def _routes_to_my_queue(url: str) -> bool:
    """An exchange-form URL that the broker routes to my_queue (only the default exchange does: nothing is bound)."""
    path = urlsplit(url).path
    if not path.startswith("/publish/"):
        return False
    parts = [unquote(part) for part in path[len("/publish/"):].split("/", 2)]
    return len(parts) == 3 and parts[0] == "local" and parts[1] in ("amq.default", "") and parts[2] == "my_queue"


def _published_per_har(har: dict) -> int:
    """Messages the gateway said it published to local|my_queue, from schemathesis's HAR log."""
    total = 0
    for entry in har["log"]["entries"]:
        request, response = entry["request"], entry["response"]
        if request["method"] != "POST":
            continue
        body = (request.get("postData") or {}).get("text", "")
        seed_form = request["url"].endswith("/publish") and body.startswith("local|my_queue|")
        if response["status"] == 200 and (seed_form or _routes_to_my_queue(request["url"])):
            total += 1
        elif "/api/exchanges/" in request["url"] and response["status"] == 200:
            total += json.loads(response["content"]["text"])["routed"]  # my_queue is the only queue there
        elif request["url"].endswith("/publish/batch") and response["status"] in (200, 207):
            answer = json.loads(response["content"]["text"])
            total += answer["published"]
    return total


def test_the_live_api_matches_its_openapi_document(tmp_path: Path, rabbit_available):
    vhost = Vhost("openapi")
    try:
        rabbit = vhost.rabbit()
        rabbit.channel.queue_declare("my_queue", durable=True)
        gw = GatewayProcess(tmp_path, FAST + f"RMQ_CONN_STR,local,guest:guest@127.0.0.1:{AMQP_PORT}/{vhost.name}\n"
                            "MANAGEMENT_VHOSTS,/=local\n")
        gw.start()
        try:
            har_path = tmp_path / "run.har"
            done = subprocess.run(
                [str(Path(sys.executable).parent / "schemathesis"), "run", f"http://127.0.0.1:{gw.port}/openapi.json",
                 "--checks", CHECKS, "--phases", "examples,coverage,fuzzing", "--max-examples", "40",
                 "--workers", "2", "--seed", "1", "--generation-database", "none", "--no-color",
                 "--report", "har", "--report-har-path", str(har_path)],
                capture_output=True, text=True, timeout=600, cwd=tmp_path)
            assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
            assert gw.proc is not None and gw.proc.poll() is None  # the gateway outlived it
        finally:
            gw.stop()
        har = json.loads(har_path.read_text())
        assert len(har["log"]["entries"]) > 100, "schemathesis sent almost nothing"
        found = rabbit.drain("my_queue")
        twice = [mid for mid, n in Counter(props.message_id for _, props in found).items() if n > 1 and mid]
        assert len(found) == _published_per_har(har) > 0, f"published twice (message ids): {twice}"
        rabbit.close()
    finally:
        vhost.delete()
