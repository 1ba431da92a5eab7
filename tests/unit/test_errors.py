"""app/core/errors.py: the error trees as drawn in its docstring, and no error changed once built."""

import ast
from pathlib import Path

import pytest
from flask import abort
from werkzeug.exceptions import ImATeapot

from app.amqp.pika_seam import PikaIncompatible
from app.config import ConfigError, settings_from_text
from app.core import errors
from app.core.errors import InvalidQueue, StartupError
from app.db.connection import DatabaseError
from app.http.batch import encode_batch, parse_batch
from app.http.factory import create_app
from app.zmq.relay import RelayError
from app.zmq.sockets import CurveError
from app.zmq.supervisor import RelayStartError

REPO = Path(__file__).resolve().parents[1]


def test_the_errors_that_stop_a_start_share_one_base():
    for cls in (ConfigError, DatabaseError, RelayError, RelayStartError, CurveError, PikaIncompatible):
        assert issubclass(cls, StartupError), cls
        assert not issubclass(cls, errors.GatewayError), cls  # never answered to a producer
        assert f"── {cls.__name__} " in (errors.__doc__ or ""), cls
    # Kept for the callers that catch them as such.
    assert issubclass(ConfigError, ValueError) and issubclass(PikaIncompatible, RuntimeError)


ERROR_CLASSES = {name for name, value in vars(errors).items()
                 if isinstance(value, type) and issubclass(value, Exception)}


def changed_errors(source: str) -> list[str]:
    """``name.attr = ...`` where ``name`` is an exception caught (``except ... as name``) or built just before."""
    found = []
    for func in ast.walk(ast.parse(source)):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        names = {node.name for node in ast.walk(func) if isinstance(node, ast.ExceptHandler) and node.name}
        for node in ast.walk(func):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                callee = node.value.func
                called = callee.id if isinstance(callee, ast.Name) else getattr(callee, "attr", "")
                if called in ERROR_CLASSES or called.endswith("Error"):
                    names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        for node in ast.walk(func):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
            found += [f"{func.name}: {target.value.id}.{target.attr}" for target in targets
                      if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                      and target.value.id in names]
    return found


def test_no_error_is_changed_once_built():
    # What the check finds: the two ways it was done before.
    assert changed_errors("def f():\n    error = GatewayError('x')\n    error.status = 418\n") == ["f: error.status"]
    assert changed_errors("def f():\n    try:\n        g()\n    except GatewayError as exc:\n"
                          "        exc.detail = 'more'\n        raise\n") == ["f: exc.detail"]
    changed = {str(path.relative_to(REPO)): found for path in sorted((REPO / "app").rglob("*.py"))
               if (found := changed_errors(path.read_text()))}
    assert not changed, changed


def test_another_http_error_keeps_its_status_and_code():
    app = create_app(settings_from_text("RMQ_CONN_STR,a,h:1/", "t", {}))
    app.add_url_rule("/teapot", "teapot", lambda: abort(418))
    answer = app.test_client().get("/teapot")
    assert answer.status_code == 418
    assert answer.get_json() == {"error": "i'm_a_teapot", "detail": ImATeapot.description}


def test_a_bad_record_is_named_by_a_new_error_of_its_kind():
    with pytest.raises(InvalidQueue) as info:
        parse_batch(encode_batch([b"a|q|x", b"a||x"]), 10, 100)
    assert info.value.detail == str(info.value) == "record 1: the queue name is empty"
    assert isinstance(info.value.__cause__, InvalidQueue) and info.value.__cause__.detail == "the queue name is empty"
