"""app/core/errors.py: the error trees as drawn in its docstring."""

from app.amqp.pika_seam import PikaIncompatible
from app.config import ConfigError
from app.core import errors
from app.core.errors import StartupError
from app.db.connection import DatabaseError
from app.zmq.relay import RelayError
from app.zmq.sockets import CurveError
from app.zmq.supervisor import RelayStartError


def test_the_errors_that_stop_a_start_share_one_base():
    for cls in (ConfigError, DatabaseError, RelayError, RelayStartError, CurveError, PikaIncompatible):
        assert issubclass(cls, StartupError), cls
        assert not issubclass(cls, errors.GatewayError), cls  # never answered to a producer
        assert f"── {cls.__name__} " in (errors.__doc__ or ""), cls
    # Kept for the callers that catch them as such.
    assert issubclass(ConfigError, ValueError) and issubclass(PikaIncompatible, RuntimeError)
