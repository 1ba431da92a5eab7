"""ZeroMQ socket plumbing for the relay: fast multipart calls and the CURVE server.

Kept apart from :mod:`app.zmq.relay` (which decides where each message goes);
this module only moves frames and sets sockets up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from app.core.errors import StartupError
from app.ops import metrics

log = logging.getLogger("app.zmq.relay")

# pyzmq's send_multipart/recv_multipart spend more time in Python (option and
# flag enums) than libzmq spends moving the frames; the relay touches every
# frame of every message, so it calls the plain socket methods with int flags.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_SNDMORE, _NOBLOCK = int(zmq.SNDMORE), int(zmq.NOBLOCK)
_MORE = _SNDMORE | _NOBLOCK


def recv_frames(sock: zmq.Socket) -> list[bytes]:
    """One whole multipart message, without waiting (zmq.Again if none)."""
    frame = _recv(sock, _NOBLOCK, False)
    parts = [frame.bytes]
    while frame.more:
        frame = _recv(sock, _NOBLOCK, False)
        parts.append(frame.bytes)
    return parts


def send_frames(sock: zmq.Socket, parts: list[bytes]) -> None:
    """Send a multipart message without waiting; a ROUTER_MANDATORY failure raises on the first frame."""
    last = len(parts) - 1
    for index, part in enumerate(parts):
        _send(sock, part, _NOBLOCK if index == last else _MORE)


class CurveError(StartupError):
    """CURVE cannot be set up: one line naming the file and the problem."""


class AllowList:
    """CURVE client keys allowed in: a fixed list plus a directory re-read when it changes."""

    def __init__(self, keys: tuple[str, ...], directory: str):
        self.fixed = {key.encode() for key in keys}
        self.directory = directory
        self._mtime: float | None = None
        self._from_dir: set[bytes] = set()
        self._denied_logged: dict[bytes, float] = {}
        self.refresh()
        if not self.fixed and not self._from_dir:
            raise CurveError("no allowed CURVE client key: the client key list and directory are empty")

    def refresh(self) -> None:
        """Re-read the directory if it changed (a Kubernetes Secret update, a key added)."""
        if not self.directory:
            return
        try:
            mtime = os.stat(self.directory).st_mtime
        except OSError as exc:
            raise CurveError(f"CURVE client key directory {self.directory}: {exc.strerror}") from None
        if mtime != self._mtime:
            try:
                self._from_dir = set(zmq.auth.load_certificates(self.directory))
            except (OSError, ValueError) as exc:
                raise CurveError(f"CURVE client key directory {self.directory}: {exc}") from None
            self._mtime = mtime

    def callback(self, _domain: str, key: bytes) -> bool:
        """pyzmq's ZAP hook: is this client's public key (Z85) allowed?"""
        with contextlib.suppress(CurveError):
            self.refresh()  # keep the last good list if the directory is briefly unreadable
        if key in self.fixed or key in self._from_dir:
            return True
        metrics.ZMQ_RELAY_EVENTS.labels("auth_denied").inc()
        now = time.monotonic()
        if now - self._denied_logged.get(key, -60.0) >= 60.0:  # clients retry every 100 ms
            self._denied_logged[key] = now
            log.warning("refused a ZeroMQ producer with an unknown CURVE key %s", key.decode(),
                        extra={"event": "zmq_auth_denied", "ingress": "zmq"})
        return False


def curve_server(ctx: zmq.Context, sock: zmq.Socket, server_key_file: str, client_keys: tuple[str, ...],
                 client_keys_dir: str) -> ThreadAuthenticator:
    """Make ``sock`` a CURVE server that lets in only the allowed client keys; call before bind."""
    try:
        public, secret = zmq.auth.load_certificate(server_key_file)
    except (OSError, ValueError) as exc:
        raise CurveError(f"CURVE server key {server_key_file}: {exc}") from None
    if not secret:
        raise CurveError(f"CURVE server key {server_key_file} holds no secret key "
                         "(use the *.key_secret certificate)")
    allow = AllowList(client_keys, client_keys_dir)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("app.zmq.relay.zap"))
    auth.start()
    auth.configure_curve_callback("*", allow)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth
