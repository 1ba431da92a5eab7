"""A steady publisher that records every outcome, for counting after a fault."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gevent

from app.errors import GatewayError


@dataclass
class Burst:
    """Publishes b"<seq>" every ``interval`` from ``concurrency`` greenlets until stopped."""

    publish: object  # callable(body: bytes) -> None, raises GatewayError
    interval: float = 0.01
    concurrency: int = 4
    limit: int = 100_000
    ok: dict[int, float] = field(default_factory=dict)  # seq -> time answered OK
    errors: dict[int, tuple[float, str]] = field(default_factory=dict)
    sent: int = 0

    def start(self) -> Burst:
        self._stop = False
        self._seq = 0
        self._greenlets = [gevent.spawn(self._run) for _ in range(self.concurrency)]
        return self

    def _run(self) -> None:
        while not self._stop and self._seq < self.limit:
            self._seq += 1
            seq = self._seq
            self.sent += 1
            try:
                self.publish(b"%d" % seq)
            except GatewayError as exc:
                self.errors[seq] = (time.monotonic(), exc.code)
            else:
                self.ok[seq] = time.monotonic()
            gevent.sleep(self.interval)

    def stop(self, timeout: float = 30) -> None:
        self._stop = True
        gevent.joinall(self._greenlets, timeout=timeout)
        assert all(g.dead for g in self._greenlets), "a publisher hung"


def account(burst: Burst, *queues: list[bytes]) -> dict[str, int]:
    """Count: every OK must be found; report lost, duplicated and falsely refused."""
    found: dict[int, int] = {}
    for bodies in queues:
        for body in bodies:
            seq = int(body)
            found[seq] = found.get(seq, 0) + 1
    lost = [seq for seq in burst.ok if seq not in found]
    return {
        "sent": burst.sent,
        "acknowledged": len(burst.ok),
        "found": len(found),
        "lost": len(lost),
        "duplicated": sum(n - 1 for n in found.values() if n > 1),
        # Refused but delivered: allowed only for errors that mean "cannot know".
        "refused_but_delivered": sum(1 for seq, (_, code) in burst.errors.items()
                                     if seq in found and code not in ("confirm_timeout", "connection_lost")),
    }
