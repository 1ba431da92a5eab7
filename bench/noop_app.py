"""The ceiling of the HTTP stack: the same gunicorn + gevent, routes that do nothing.

Run by ``bench/run.py`` as ``gunicorn -c gunicorn.conf.py bench.noop_app:app``
(or ``:bare``): each reads the body like /publish does and answers the same
200, without parsing, pooling or publishing.

* ``app``: a Flask route, the baseline the issue names ("the same gunicorn +
  gevent + Flask stack");
* ``bare``: a plain WSGI callable, the floor of gunicorn + gevent alone. The
  gateway answers ``POST /publish`` in plain WSGI in front of Flask
  (``app/http/publish_endpoint.py``), so this is the like-for-like comparison.
"""

from flask import Flask, Response, request

app = Flask(__name__)
_OK = b'{"status":"ok"}\n'
_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(_OK)))]


@app.post("/publish")
def publish() -> Response:
    request.stream.read(1024 * 1024 + 1)
    return Response(_OK, 200, content_type="application/json")


def bare(environ, start_response):
    """The same answer without Flask."""
    environ["wsgi.input"].read(1024 * 1024 + 1)
    start_response("200 OK", list(_HEADERS))
    return [_OK]
