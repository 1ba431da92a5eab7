"""The ceiling of the HTTP stack: the same gunicorn + gevent + Flask, a route that does nothing.

Run by ``bench/run.py`` as ``gunicorn -c gunicorn.conf.py bench.noop_app:app``:
it reads the body like /publish does and answers the same 200, without
parsing, pooling or publishing.
"""

from flask import Flask, Response, request

app = Flask(__name__)


@app.post("/publish")
def publish() -> Response:
    request.stream.read(1024 * 1024 + 1)
    return Response(b'{"status":"ok"}\n', 200, content_type="application/json")
