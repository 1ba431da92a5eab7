"""The one place that touches pika's private names.

The hot path (:mod:`app.amqp.wire`) writes publish frames straight to the
socket and reads the broker's acks before pika's parser does; pika's public
API offers neither. So pika is extended here, as its own adapters are, through
a subclass of its gevent connection that overrides pika's data hook, and the
rest of the code calls the few public methods below. At import the installed
pika is checked against the version this module was verified with, and for
every internal it uses: an upgrade that moves one fails at start-up, naming
it, instead of breaking the gateway or quietly taking its fast path away.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FunctionType

import gevent
import pika
from pika import connection as pika_connection
from pika.adapters import base_connection, gevent_connection
from pika.adapters.gevent_connection import GeventConnection
from pika.adapters.utils import io_services_utils
from pika.adapters.utils.selector_ioloop_adapter import SelectorIOServicesAdapter

from app.core.errors import StartupError

# Versions whose internals were read against this module (requirements/runtime.txt pins one).
VERIFIED_PIKA = ("1.4.4",)

# What the seam relies on, by the pika object that holds it.
MODULE_NAMES = (
    (gevent_connection, ("_GeventSelectorIOLoop", "_GeventSelectorIOServicesAdapter")),
    (io_services_utils, ("_AsyncPlaintextTransport",)),
    (base_connection, ("_StreamingProtocolShim",)),
)
METHODS = (
    (base_connection.BaseConnection, ("_proto_data_received",)),  # the transport's data hook, overridden below
    (pika_connection.Connection, ("_on_data_available", "_terminate_stream")),
)
# Names a class's constructors (the __init__s along its MRO) must use: the
# instance attributes they set, which hasattr on a class cannot see, and the
# hook the transport's protocol shim binds (else the override is never called).
INIT_NAMES = (
    (gevent_connection, "GeventConnection", ("_frame_buffer", "_body_max_length", "_transport")),
    (io_services_utils, "_AsyncPlaintextTransport", ("_sock",)),
    (base_connection, "_StreamingProtocolShim", ("_proto_data_received",)),
)


class PikaIncompatible(StartupError, RuntimeError):
    """The installed pika is not the one the seam was verified with, or lacks an internal it uses."""


def _used_by_init(cls: type, name: str) -> bool:
    return any(isinstance(init, FunctionType) and name in init.__code__.co_names
               for init in (vars(klass).get("__init__") for klass in cls.__mro__))


def check_pika(version: str | None = None) -> None:
    """Raise PikaIncompatible unless pika is a verified version with every internal the seam uses."""
    version = pika.__version__ if version is None else version
    missing = [f"{module.__name__}.{name}" for module, names in MODULE_NAMES
               for name in names if not hasattr(module, name)]
    missing += [f"{cls.__module__}.{cls.__qualname__}.{name}" for cls, names in METHODS
                for name in names if not callable(getattr(cls, name, None))]
    for module, class_name, names in INIT_NAMES:
        cls = getattr(module, class_name, None)  # if missing, named above
        if cls is not None:
            missing += [f"{module.__name__}.{class_name}.__init__ using {name}" for name in names
                        if not _used_by_init(cls, name)]
    problems = []
    if version not in VERIFIED_PIKA:
        problems.append(f"pika {version} is installed, but app/amqp/pika_seam.py was verified with pika "
                        f"{', '.join(VERIFIED_PIKA)} only (check its internals, then add the version to "
                        "VERIFIED_PIKA)")
    if missing:
        problems.append(f"pika {version} lacks what app/amqp/pika_seam.py relies on: {', '.join(missing)}")
    if problems:
        raise PikaIncompatible("; ".join(problems))


check_pika()

_PLAIN_TRANSPORT = io_services_utils._AsyncPlaintextTransport
_io_services: tuple[object, SelectorIOServicesAdapter] | None = None


def io_services() -> SelectorIOServicesAdapter:
    """This worker's one pika I/O loop on the gevent hub, shared by all its connections.

    A ``GeventConnection`` made without one builds a loop of its own, and each
    loop opens an ``os.pipe()`` (for pika's cross-thread callbacks) that
    nothing ever closes: two descriptors leaked per connection attempt
    (issue 14). One loop per hub holds one pipe for the worker's lifetime;
    pika's connections are made to share a loop (its ``create_connection``
    does so for its attempts).
    """
    global _io_services
    hub = gevent.get_hub()
    if _io_services is None or _io_services[0] is not hub:
        loop = gevent_connection._GeventSelectorIOLoop(hub)
        _io_services = (hub, gevent_connection._GeventSelectorIOServicesAdapter(loop))
    return _io_services[1]


class PikaConnection(GeventConnection):
    """pika's gevent connection, with raw writes and the broker's bytes offered to a reader before pika."""

    _gw_read_first: Callable[[bytes], None] | None = None

    def read_first(self, feed: Callable[[bytes], None]) -> None:
        """From now on, hand the broker's bytes to ``feed`` while pika's own buffer holds no part of a frame.

        ``feed`` hands pika what it does not take, through :attr:`pika_feed`,
        in whole frames; until pika's buffer is empty (only possible for the
        read that carried the frame this is called from) pika keeps it all.
        """
        self._gw_read_first = feed

    @property
    def reads_first(self) -> bool:
        """Whether a reader takes the broker's bytes before pika."""
        return self._gw_read_first is not None

    def _proto_data_received(self, data: bytes) -> None:
        # pika's transport calls this for every read off the socket.
        feed = self._gw_read_first
        if feed is None or self._frame_buffer:
            self._on_data_available(data)
        else:
            feed(data)

    @property
    def pika_feed(self) -> Callable[[bytes], None]:
        """pika's own parser of incoming bytes (whole frames only, once a reader reads first)."""
        return self._on_data_available

    def count_received(self, size: int) -> None:
        """Count one frame the reader took as received (pika's heartbeat checker reads these counters)."""
        self.bytes_received += size
        self.frames_received += 1

    @property
    def body_max(self) -> int:
        """The largest body frame payload the broker's frame_max allows."""
        return self._body_max_length

    @property
    def writes_direct(self) -> bool:
        """Whether write_now can go straight to the socket (a plaintext stream; TLS goes through pika)."""
        return type(self._transport) is _PLAIN_TRANSPORT

    def write_now(self, data: bytes) -> bool:
        """Send data in order with pika's writes; False, sending nothing, when the stream is gone.

        Straight to the socket when pika has nothing queued before it, else
        behind what pika has queued: pika's transport writes only on the hub's
        next turn, one watcher change and one loop iteration per batch, which
        cost more than the send itself.
        """
        self.bytes_sent += len(data)
        transport = self._transport
        if transport is None:
            return False
        if type(transport) is _PLAIN_TRANSPORT and not transport.get_write_buffer_size():
            try:
                sent = transport._sock.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return True
            data = data[sent:]
        transport.write(data)
        return True

    def abort_stream(self, error: Exception) -> None:
        """Drop the socket without the close handshake; the close callback gets ``error``.

        pika has no public abort. This is what its own heartbeat checker does
        on a silent peer: record the reason, drop the socket, fire the close
        callback.
        """
        self._terminate_stream(error)
