"""A steady publisher that records every outcome, for counting after a fault."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent

from app.core.errors import GatewayError

# publish(body) -> None when acknowledged, else the error code it was answered
PublishFn = Callable[[bytes], "str | None"]


def in_process(gateway, conn_id: str, queue: str) -> PublishFn:
    """Publish through a Gateway object."""

    def publish(body: bytes) -> str | None:
        try:
            gateway.publish(conn_id, queue, body)
        except GatewayError as exc:
            return exc.code
        return None

    return publish


def over_http(port: int, conn_id: str, queue: str, timeout: float = 30) -> PublishFn:
    """Publish through the gateway's HTTP route (one connection per request)."""
    from tests.support.server import publish as http_publish

    prefix = f"{conn_id}|{queue}|".encode()

    def publish(body: bytes) -> str | None:
        try:
            status, answer = http_publish(port, prefix + body, timeout=timeout)
        except OSError as exc:
            return f"io:{type(exc).__name__}"
        return None if status == 200 else answer.get("error", str(status))

    return publish


def over_zmq(address: str, conn_id: str, queue: str, timeout: float = 30, tag: bytes = b"") -> PublishFn:
    """Publish over the gateway's ZeroMQ socket: a DEALER per publishing greenlet, one message at a time.

    ``tag`` goes before each body, to tell this publisher's messages from another's in one queue.
    """
    from gevent.local import local

    from tests.support.producer import Producer

    prefix = f"{conn_id}|{queue}|".encode() + tag
    mine = local()

    def publish(body: bytes) -> str | None:
        if not hasattr(mine, "producer"):
            mine.producer = Producer(address)
        reply = mine.producer.ask(body, prefix + body, timeout=timeout)  # [correlation id, answer]
        if reply is None:
            mine.producer.close()  # a late reply must not be read as the next message's
            del mine.producer
            return "io:timeout"
        answer = reply[-1].decode()
        return None if answer == "OK" else answer.split(" ")[-1]

    return publish


@dataclass
class Burst:
    """Publishes b"<seq>" every ``interval`` from ``concurrency`` greenlets until stopped."""

    publish: PublishFn
    interval: float = 0.01
    concurrency: int = 4
    limit: int = 100_000
    ok: dict[int, float] = field(default_factory=dict)  # seq -> time answered OK
    errors: dict[int, tuple[float, str]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    sent: int = 0

    def start(self) -> Burst:
        self._stop = False
        self._seq = 0
        self.started = time.monotonic()
        self._greenlets = [gevent.spawn(self._run) for _ in range(self.concurrency)]
        return self

    def _run(self) -> None:
        while not self._stop and self._seq < self.limit:
            self._seq += 1
            seq = self._seq
            self.sent += 1
            began = time.monotonic()
            code = self.publish(b"%d" % seq)
            now = time.monotonic()
            self.latencies.append(now - began)
            if code is None:
                self.ok[seq] = now
            else:
                self.errors[seq] = (now, code)
            if self.interval:
                gevent.sleep(self.interval)

    def stop(self, timeout: float = 30) -> None:
        self._stop = True
        gevent.joinall(self._greenlets, timeout=timeout)
        assert all(g.dead for g in self._greenlets), "a publisher hung"

    def longest_gap(self) -> float:
        """The longest time without a 200, from the start to the last answer."""
        answered = [t for t, _ in self.errors.values()] + list(self.ok.values())
        moments = [self.started, *sorted(self.ok.values()), max(answered, default=self.started)]
        return max(b - a for a, b in itertools.pairwise(moments))

    def refused_codes(self) -> dict[str, int]:
        codes: dict[str, int] = {}
        for _, code in self.errors.values():
            codes[code] = codes.get(code, 0) + 1
        return dict(sorted(codes.items()))

    def first_ok_after(self, moment: float, seqs: set[int] | None = None) -> float | None:
        """Seconds from ``moment`` to the first OK after it (among ``seqs``), or None."""
        times = [t for seq, t in self.ok.items() if t >= moment and (seqs is None or seq in seqs)]
        return min(times) - moment if times else None


# The answers that mean "cannot know": sent, and then the connection died (or
# the confirm never came). Such a message may be in the queue.
CANNOT_KNOW = frozenset({"confirm_timeout", "connection_lost"})


def account(burst: Burst, *queues: list[bytes], cannot_know: frozenset[str] = CANNOT_KNOW) -> dict:
    """Count: every OK must be found; report lost, duplicated and falsely refused.

    ``refused_but_delivered`` counts the messages found in a queue whose answer
    was neither an OK nor one of ``cannot_know`` (nor a client-side ``io:``
    error); ``delivered_by_code`` breaks every refused-but-found message down by
    its answer, allowed or not, for the failure message.
    """
    found: dict[int, int] = {}
    for bodies in queues:
        for body in bodies:
            seq = int(body)
            found[seq] = found.get(seq, 0) + 1
    lost = [seq for seq in burst.ok if seq not in found]
    delivered_by_code: dict[str, int] = {}
    for seq, (_, code) in burst.errors.items():
        if seq in found:
            delivered_by_code[code] = delivered_by_code.get(code, 0) + 1
    return {
        "sent": burst.sent,
        "acknowledged": len(burst.ok),
        "found": len(found),
        "lost": len(lost),
        "duplicated": sum(n - 1 for n in found.values() if n > 1),
        # Refused but delivered: allowed only for answers that mean "cannot know".
        "refused_but_delivered": sum(n for code, n in delivered_by_code.items()
                                     if code not in cannot_know and not code.startswith("io:")),
        "delivered_by_code": delivered_by_code,
    }
