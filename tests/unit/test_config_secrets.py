"""No config error shows any piece of a password, however the line around it is broken.

Passwords hold every character that is a delimiter somewhere in a broker
address (``, ; : @ / ? # %``...), and the line around the password is
corrupted at random (a delimiter dropped, doubled or inserted, a field
removed). Whatever the parser makes of it, an error never contains a
4-character piece of the password.
"""

import string
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import app.config
from app.config import ConfigError, settings_from_text

SPECIALS = ",;:@/?#%&=+ !$'()*[]\\^`{|}~\"<>."
# The parser's own wording may share a 4-character piece with a password
# ("port", "%2F)"): that is its text, not the password's (the package's modules but the check command).
WORDING = "".join(path.read_text() for path in sorted(Path(app.config.__file__).parent.glob("*.py"))
                  if path.name != "check.py")

FORMS = [
    "{user}:{pw}@127.0.0.1:5672/vh",
    "amqp://{user}:{pw}@127.0.0.1:5672/vh",
    "amqps://{user}:{pw}@rabbit-a:5671/vh?verify=verify_none",
    "amqp://{user}:{pw}@127.0.0.1/vh?heartbeat=5",
]
LINES = [
    "RMQ_CONN_STR,cid,{server}",
    "RMQ_CONN_STR,cid,{server},guest:guest@127.0.0.2:5672/",
    "RMQ_CONN_STR,cid,guest:guest@127.0.0.2:5672/,{server}",
    "RMQ_CONN_STR,cid,guest:guest@127.0.0.2:5672/;{server}",
]

passwords = st.builds(
    lambda head, special, tail: head + special + tail,
    st.text(string.ascii_letters + string.digits + SPECIALS, min_size=2, max_size=10),
    st.text(SPECIALS, min_size=1, max_size=3),
    st.text(string.ascii_letters + string.digits + SPECIALS, min_size=2, max_size=10),
)
# One corruption: (where, 0 before the password / 1 after it), (offset), (what).
corruptions = st.lists(
    st.tuples(st.integers(0, 1), st.integers(0, 40), st.sampled_from(
        ["delete", "double", *",;:@/?#%="])),
    max_size=3,
)


def corrupt(before: str, after: str, edits: list[tuple[int, int, str]]) -> tuple[str, str]:
    """Apply each edit to the text before or after the password, never inside it."""
    parts = [before, after]
    for side, offset, what in edits:
        text = parts[side]
        if not text:
            continue
        at = offset % len(text)
        if what == "delete":
            text = text[:at] + text[at + 1:]
        elif what == "double":
            text = text[:at] + text[at] + text[at:]
        else:
            text = text[:at] + what + text[at:]
        parts[side] = text
    return parts[0], parts[1]


def leaked(password: str, output: str) -> list[str]:
    """The 4-character pieces of the password found in the output (and not in the parser's wording)."""
    pieces = {password[i:i + 4] for i in range(len(password) - 3)}
    return sorted(p for p in pieces if p in output and p not in WORDING)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=passwords, user=st.sampled_from(["app", "u"]), form=st.sampled_from(FORMS),
       line=st.sampled_from(LINES), edits=corruptions)
@example(password="ab,SECRET9", user="app", form=FORMS[0], line=LINES[0], edits=[])
@example(password="PA?SSWORD9", user="app", form=FORMS[1], line=LINES[0], edits=[])
@example(password="12#SECRET9", user="app", form=FORMS[1], line=LINES[0], edits=[])
def test_no_error_shows_a_piece_of_the_password(password, user, form, line, edits):
    server = form.format(user=user, pw=password)
    text = line.format(server=server)
    start = text.index(password)
    before, after = corrupt(text[:start], text[start + len(password):], edits)
    text = before + password + after
    try:
        settings_from_text(text, "pool.cfg", {})
    except ConfigError as err:
        output = str(err)
        assert not leaked(password, output), (text, output)
        assert "\n" not in output
    for source, environ in [("pool.cfg", {"GATEWAY_RMQ_CONN_STR_x": after.partition(",")[2] or server})]:
        try:
            settings_from_text("NO_OF_CONNECTIOS,1\n", source, environ)
        except ConfigError as err:
            assert not leaked(password, str(err)), (environ, str(err))


@given(password=passwords)
@settings(max_examples=200, deadline=None)
def test_a_percent_encoded_password_always_parses_back(password):
    from urllib.parse import quote

    spec = settings_from_text(f"RMQ_CONN_STR,cid,amqp://app:{quote(password, safe='')}@h:5672/vh", "x", {})
    assert spec.connections[0].primary[0].password == password
