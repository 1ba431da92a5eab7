"""The Flask app factory.

``create_app()`` is the one place the app is assembled: it reads the settings
(or takes the ones a test passes), sets up logging with secrets masked,
builds the worker's :class:`~app.http.services.WorkerServices` (the gateway,
its config source, ...) and registers the routes and the one error handler.
It only wires: nothing connects and no greenlet runs until the services are
started (gunicorn's ``post_worker_init``, after gevent's monkey-patching;
the pools then connect in the background, so the app answers ``/healthz`` at
once even with no broker reachable).
"""

from __future__ import annotations

import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from app.config import Settings, current_settings
from app.core.errors import GatewayError, HttpError, MethodNotAllowed, NotFound, http_answer, internal_error
from app.http import auth, request_id
from app.http.publish_endpoint import PublishEndpoint
from app.http.services import WorkerServices
from app.ops import logs

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app and its (unstarted) services: ``services_of(app).start()`` runs them."""
    settings = settings or current_settings()
    logs.configure(settings.log_level)
    logs.register_secrets(settings.secrets())
    log.info("configuration loaded", extra={"event": "config", "config": settings.describe()})

    app = Flask(__name__, static_folder=None)  # nothing static to serve: no /static route
    request_id.init_app(app)  # first: every later hook and log line has the request id
    access, tokens = auth.init_app(app, settings)
    logs.register_secrets(tokens)
    services = WorkerServices(settings, access)
    app.extensions["services"] = services

    from app.http import views

    app.register_blueprint(views.bp)
    app.wsgi_app = PublishEndpoint(app.wsgi_app, services.gateway, access)  # type: ignore[method-assign]
    app.register_error_handler(GatewayError, _error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    if settings.use_db and settings.connections:
        log.warning("USE_DB is true: the %d RMQ_CONN_STR line(s) of %s are ignored; "
                    "connection ids come from PostgreSQL", len(settings.connections), settings.source,
                    extra={"event": "config_lines_ignored"})
    return app


def services_of(app: Flask) -> WorkerServices:
    """The services ``create_app`` built for ``app`` (the hooks and tests reach them here)."""
    return app.extensions["services"]


def shutdown(app: Flask, timeout: float = 2.0) -> None:
    """Stop the worker's services, last to first (gunicorn's worker_exit)."""
    services_of(app).stop(timeout)
    log.info("connections closed", extra={"event": "shutdown"})


def _error_response(exc: GatewayError) -> Response:
    """The one JSON shape of every error answer (shared with the publish endpoint)."""
    from flask import current_app

    status, headers, body = http_answer(exc, services_of(current_app).settings.retry_after)
    return Response(body, status, headers=headers)


def _http_error(exc: HTTPException) -> Response:
    # Werkzeug's routing errors (404, 405, ...) in the same JSON shape.
    if exc.code == 404:
        return _error_response(NotFound("no such route"))
    if exc.code == 405:
        allow = tuple(exc.valid_methods or ()) if hasattr(exc, "valid_methods") else ()
        return _error_response(MethodNotAllowed("method not allowed for this route", allow=allow))
    return _error_response(HttpError(exc.description or exc.name, status=exc.code or 500,
                                     code=(exc.name or "error").lower().replace(" ", "_")))


def _unexpected_error(exc: Exception) -> Response:
    return _error_response(internal_error(log, "while answering a request"))
