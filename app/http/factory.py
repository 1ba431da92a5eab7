"""AMQP publishing gateway: the Flask app factory.

``create_app()`` is the one place the app is assembled: it reads the settings
(or takes the ones a test passes), sets up logging with secrets masked,
builds the worker's :class:`~app.core.gateway.Gateway` and registers the routes
and the one error handler. It runs inside a gunicorn worker, after gevent's
monkey-patching; the pools connect in background greenlets, so the app
answers ``/healthz`` at once even with no broker reachable. With ``USE_DB``
the connection ids come from :class:`~app.db.live_source.DbSource` instead of the
file, read in a background greenlet too.
"""

from __future__ import annotations

import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from app.config import Settings, current_settings
from app.core.errors import GatewayError, MethodNotAllowed, NotFound, http_answer
from app.core.gateway import Gateway
from app.http import auth, request_id
from app.http.publish_endpoint import PublishEndpoint
from app.ops import logs
from app.ops.pool_status import PoolStatus

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, start: bool = True) -> Flask:
    """Build the WSGI app; ``start=False`` leaves the pools unopened (tests)."""
    settings = settings or current_settings()
    logs.configure(settings.log_level)
    logs.register_secrets(settings.secrets())
    log.info("configuration loaded", extra={"event": "config", "config": settings.describe()})

    app = Flask(__name__, static_folder=None)  # nothing static to serve: no /static route
    request_id.init_app(app)  # first: every later hook and log line has the request id
    logs.register_secrets(auth.init_app(app, settings))
    gateway = Gateway(settings)
    app.extensions["gateway"] = gateway
    app.extensions["pool_status"] = PoolStatus(gateway)

    from app.http import routes

    app.register_blueprint(routes.bp)
    app.wsgi_app = PublishEndpoint(app.wsgi_app, gateway, app.extensions["access"])  # type: ignore[method-assign]
    app.register_error_handler(GatewayError, _error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    if settings.use_db and settings.connections:
        log.warning("USE_DB is true: the %d RMQ_CONN_STR line(s) of %s are ignored; "
                    "connection ids come from PostgreSQL", len(settings.connections), settings.source,
                    extra={"event": "config_lines_ignored"})
    if start:
        if settings.use_db:
            from app.db.live_source import DbSource

            gateway.start(specs=())  # routes arrive from the database
            source = DbSource(settings, gateway)
            app.extensions["dbsource"] = source
            source.start()
        else:
            gateway.start()
        app.extensions["pool_status"].start()
    return app


def shutdown(app: Flask, timeout: float = 2.0) -> None:
    """Answer the ZeroMQ messages taken, then close the AMQP connections (gunicorn's worker_exit)."""
    ingress = app.extensions.get("zmq_ingress")
    if ingress is not None:
        # Before the connections go: what it holds still needs them.
        ingress.close(ingress.gateway.settings.publish_timeout + 2)
    source = app.extensions.pop("dbsource", None)
    if source is not None:
        source.stop(timeout)  # so no config change lands while closing
    status = app.extensions.get("pool_status")
    if status is not None:
        status.stop()
    gateway = app.extensions.get("gateway")
    if gateway is not None:
        gateway.close(timeout)
        log.info("connections closed", extra={"event": "shutdown"})


def _error_response(exc: GatewayError) -> Response:
    """The one JSON shape of every error answer (shared with the publish endpoint)."""
    from flask import current_app

    status, headers, body = http_answer(exc, current_app.extensions["gateway"].settings.retry_after)
    return Response(body, status, headers=headers)


def _http_error(exc: HTTPException) -> Response:
    # Werkzeug's routing errors (404, 405, ...) in the same JSON shape.
    if exc.code == 404:
        return _error_response(NotFound("no such route"))
    if exc.code == 405:
        allow = tuple(exc.valid_methods or ()) if hasattr(exc, "valid_methods") else ()
        return _error_response(MethodNotAllowed("method not allowed for this route", allow=allow))
    error = GatewayError(exc.description or exc.name)
    error.status = exc.code or 500
    error.code = (exc.name or "error").lower().replace(" ", "_")
    return _error_response(error)


def _unexpected_error(exc: Exception) -> Response:
    log.exception("unexpected error while answering a request", extra={"event": "internal_error"})
    return _error_response(GatewayError("internal error; see the gateway's log"))
