"""A TCP proxy in front of a real broker, to break it for real in tests.

Runs as greenlets in the (gevent-patched) test process. Modes:

* ``cut()``: reset every open connection (RST), new ones still pass;
* ``blackhole()``: keep sockets open but forward nothing, answer nothing
  (a stalled broker or a dropped network: only timeouts notice);
* ``refuse()``: close the listener so new connections are refused, and cut;
* ``reset_on_accept()``: accept each new connection and reset it at once
  (a broker process that is up but dying, or a load balancer with no backend);
* ``delay(seconds)``: add latency to every chunk forwarded;
* ``restore()``: back to passing traffic.
"""

from __future__ import annotations

import socket
import struct

import gevent
from gevent.server import StreamServer


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass  # already closed by the other side


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0):
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.latency = 0.0
        self.reset_after = 0
        self.pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self.accepted = 0
        self._server = StreamServer(("127.0.0.1", port), self._handle)
        self._server.start()
        self.port = self._server.server_port

    # -- controls ----------------------------------------------------------------

    def cut(self) -> None:
        pairs, self.pairs = self.pairs, []
        for client, upstream in pairs:
            _reset(client)
            if upstream is not None:
                _reset(upstream)

    def cut_one(self) -> None:
        if self.pairs:
            client, upstream = self.pairs.pop(0)
            _reset(client)
            if upstream is not None:
                _reset(upstream)

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def mute(self) -> None:
        """Pass what clients send, drop every answer: the broker takes a publish, its confirm never comes."""
        self.mode = "mute"

    def reset_on_accept(self, after_bytes: int = 0) -> None:
        """Reset each new connection at once, or once the client sent ``after_bytes``."""
        self.mode = "reset"
        self.reset_after = after_bytes
        self.cut()

    def refuse(self) -> None:
        self.mode = "refuse"
        self._server.stop()
        self.cut()

    def delay(self, seconds: float) -> None:
        self.latency = seconds

    def restore(self) -> None:
        self.latency = 0.0
        if self.mode == "refuse":
            self._server = StreamServer(("127.0.0.1", self.port), self._handle)
            self._server.init_socket()
            self._server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._server.start()
        self.mode = "pass"

    def close(self) -> None:
        self._server.stop()
        self.cut()

    @property
    def url_hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- plumbing ------------------------------------------------------------------

    def _handle(self, client: socket.socket, _address: object) -> None:
        self.accepted += 1
        if self.mode == "reset":
            got = 0
            while got < self.reset_after:
                try:
                    chunk = client.recv(self.reset_after - got)
                except OSError:
                    break
                if not chunk:
                    break
                got += len(chunk)
            _reset(client)
            return
        if self.mode == "blackhole":
            self.pairs.append((client, None))
            self._swallow(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        pair = (client, upstream)
        self.pairs.append(pair)
        pumps = [gevent.spawn(self._pump, client, upstream), gevent.spawn(self._pump, upstream, client, True)]
        gevent.joinall(pumps, count=1)
        gevent.killall(pumps)
        if pair in self.pairs:
            self.pairs.remove(pair)
            _reset(client)
            _reset(upstream)

    def _swallow(self, sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass  # reset by cut() or by the peer

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool = False) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    return
                if self.mode == "blackhole" or (answers and self.mode == "mute"):
                    continue  # dropped on the floor, like a dead network
                if self.latency:
                    gevent.sleep(self.latency)
                sink.sendall(data)
        except OSError:
            return
