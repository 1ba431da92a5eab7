"""Shedding the clients that have not delivered a complete request (app.http.client_guard)."""

import gevent
from gevent.event import Event

from app.http.client_guard import Pending


class Shed(Exception):
    pass


def test_the_oldest_waiting_are_shed_and_never_one_that_moved_on():
    pending = Pending()
    outcome: dict[int, str] = {}
    release = Event()

    def client(n: int) -> None:
        try:
            with pending.waiting(Shed(n)):
                if n != 1:
                    release.wait(timeout=5)
            outcome[n] = "served"
            gevent.sleep(0.05)  # busy with its request: must not be shed any more
            outcome[n] = "done"
        except Shed:
            outcome[n] = "shed"

    clients = [gevent.spawn(client, n) for n in range(5)]
    gevent.sleep(0.01)  # all waiting; 1 has already moved on (served)
    assert len(pending) == 4
    assert pending.shed(2) == 2  # the two oldest still waiting: 0 and 2
    gevent.sleep(0.01)
    release.set()
    gevent.joinall(clients, timeout=5)
    assert outcome == {0: "shed", 1: "done", 2: "shed", 3: "done", 4: "done"}
    assert pending.shed_total == 2 and len(pending) == 0


def test_a_greenlet_that_leaves_before_delivery_is_not_touched():
    pending = Pending()
    outcome: list[str] = []
    go = Event()

    def client() -> None:
        try:
            with pending.waiting(Shed()):
                go.wait(timeout=5)
            outcome.append("served")
            gevent.sleep(0.05)
            outcome.append("done")
        except Shed:
            outcome.append("shed")

    glet = gevent.spawn(client)
    gevent.sleep(0.01)
    go.set()  # its request arrives: it leaves waiting before the shed is delivered
    pending.shed(1)
    glet.join(timeout=5)
    assert outcome == ["served", "done"] and pending.shed_total == 0


def test_never_sheds_the_caller():
    pending = Pending()
    with pending.waiting(Shed()):
        assert pending.shed(1) == 0
