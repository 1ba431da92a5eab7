"""The pika seam's import-time check, and that no other module uses pika's private names (no broker needed)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pika
import pytest
from pika import connection as pika_connection
from pika.adapters import base_connection
from pika.adapters.utils import io_services_utils

from app.amqp import pika_seam
from app.amqp.pika_seam import PikaIncompatible, check_pika

ROOT = Path(__file__).resolve().parents[2]
SEAM = ROOT / "app" / "amqp" / "pika_seam.py"


def test_the_installed_pika_passes():
    check_pika()


def test_the_pinned_pika_is_a_verified_one():
    # Bumping the pin without re-reading the internals fails here, not in production.
    runtime = re.search(r"^pika==(\S+)", (ROOT / "requirements" / "runtime.txt").read_text(), re.M)
    declared = re.search(r'"pika==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert runtime and declared
    assert runtime[1] == declared[1] == pika.__version__
    assert runtime[1] in pika_seam.VERIFIED_PIKA


def test_another_version_is_refused_naming_both():
    with pytest.raises(PikaIncompatible, match=r"pika 1\.5\.0 is installed, .*verified with pika 1\.4\.4"):
        check_pika("1.5.0")


@pytest.mark.parametrize(("owner", "name", "named"), [
    (base_connection.BaseConnection, "_proto_data_received", "BaseConnection._proto_data_received"),
    (pika_connection.Connection, "_terminate_stream", "Connection._terminate_stream"),
    (io_services_utils, "_AsyncPlaintextTransport", "io_services_utils._AsyncPlaintextTransport"),
    (base_connection, "_StreamingProtocolShim", "base_connection._StreamingProtocolShim"),
])
def test_a_missing_method_or_class_is_named(monkeypatch, owner, name, named):
    monkeypatch.delattr(owner, name)
    with pytest.raises(PikaIncompatible, match=re.escape(named)) as info:
        check_pika()
    assert "lacks what app/amqp/pika_seam.py relies on" in str(info.value)


def test_an_instance_attribute_no_constructor_sets_is_named(monkeypatch):
    def init(self, *args, **kwargs):  # a pika whose Connection keeps its frames elsewhere
        self._frames = b""

    monkeypatch.setattr(pika_connection.Connection, "__init__", init)
    with pytest.raises(PikaIncompatible) as info:
        check_pika()
    message = str(info.value)
    assert "GeventConnection.__init__ using _frame_buffer" in message
    assert "GeventConnection.__init__ using _body_max_length" in message
    assert "_transport" not in message  # BaseConnection's own __init__ still sets that one


def test_a_shim_that_no_longer_calls_the_hook_is_named(monkeypatch):
    def init(self, conn):
        self.conn = conn
        self.data_received = conn.on_data

    monkeypatch.setattr(base_connection._StreamingProtocolShim, "__init__", init)
    with pytest.raises(PikaIncompatible, match=re.escape("_StreamingProtocolShim.__init__ using _proto_data_received")):
        check_pika()


def test_importing_the_seam_under_another_pika_fails_loudly():
    code = "import pika; pika.__version__ = '9.9.9'; import app.amqp.pika_seam"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "PikaIncompatible: pika 9.9.9 is installed" in run.stderr


def _pika_private_names() -> set[str]:
    """Every underscore name pika's own source defines or uses (attributes, functions, classes, globals)."""
    names = set()
    for path in Path(pika.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name):
                names.add(node.id)
    return {n for n in names if n.startswith("_") and n != "_" and not n.startswith("__")}


PIKA_PRIVATE = _pika_private_names()


def pika_private_uses(source: str) -> list[str]:
    """Where source uses a private name of pika: imported from pika, or read off an object not its own.

    ``self._x`` is the module's own attribute (only the seam subclasses pika);
    any other ``obj._x``, or a ``"_x"`` string (getattr), with a name pika
    uses privately counts.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pika":
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr in PIKA_PRIVATE and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and node.value in PIKA_PRIVATE:
            found.append(f"{node.lineno}: {node.value!r}")
    return found


def test_the_check_finds_what_the_seam_replaced():
    old = (
        "from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport\n"
        "conn._on_data_available = feed\n"
        "sent = self._plain_transport._sock.send(data)\n"
        "conn._terminate_stream(error)\n"
        "size = getattr(conn, '_body_max_length')\n"
    )
    found = pika_private_uses(old)
    assert sorted(line.split(":")[0] for line in found) == ["1", "2", "3", "4", "5"], found
    assert pika_private_uses("self._frame_buffer = b''\npool._waiters.clear()\n") == []


def test_no_module_but_the_seam_uses_pikas_private_names():
    offenders = {str(path.relative_to(ROOT)): uses for path in sorted((ROOT / "app").rglob("*.py"))
                 if path != SEAM and (uses := pika_private_uses(path.read_text()))}
    assert offenders == {}, "pika's private names belong in app/amqp/pika_seam.py only"
