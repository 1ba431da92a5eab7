"""gunicorn settings and hooks: ``gunicorn -c gunicorn.conf.py`` starts the gateway.

Flags (``--bind``, ``--workers``) and ``GUNICORN_CMD_ARGS`` override these as
usual; ``GATEWAY_BIND`` and ``GATEWAY_WORKERS`` set them from the environment.

Order in each worker (gevent): ``post_fork`` (before monkey-patching), then the
app is loaded (``create_app``: pools start connecting in greenlets), then
``post_worker_init``. Nothing connects in the master.
"""

import os
import shutil
import sys
import tempfile

# prometheus_client chooses where samples live when it is first imported. The
# master imports the app's modules (on_starting checks the config) and then
# forks the workers, so the multi-process directory must be in the
# environment before anything imports it: here, first thing.
_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

wsgi_app = "app.wsgi:app"
bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("GATEWAY_WORKERS", "2"))
worker_class = "gevent"
worker_connections = 1000
preload_app = False  # each worker builds its own pools after fork
timeout = 30
graceful_timeout = 20  # SIGTERM: requests in flight get this long to be answered
keepalive = 5
# gunicorn 27's control socket sits at one fixed path per user: two gateways on
# one host (or a test run beside a dev server) would fight over it.
control_socket_disable = True
# gunicorn logs every request once a logconfig_dict is set, and a log line
# costs more than a publish: access logs are off unless GATEWAY_ACCESS_LOG=true.
_access_log = os.environ.get("GATEWAY_ACCESS_LOG", "false").lower() in ("1", "true", "yes", "on")
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "app.logs.JsonFormatter"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["stderr"], "level": "INFO" if _access_log else "CRITICAL",
                            "propagate": False},
        "pika": {"level": "CRITICAL"},  # the pools log connection events themselves
    },
}


def on_starting(server):
    """Master: check the config before any worker boots."""
    from app.config import ConfigError, load_settings

    try:
        load_settings()
    except ConfigError as err:
        # One line, no traceback, never a password (ConfigError never holds one).
        sys.stderr.write(f"gateway: config error: {err}\n")
        sys.exit(1)


def post_fork(server, worker):
    """Worker, before gevent patches: make psycopg2 cooperative before any DB connection."""
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def worker_exit(server, worker):
    """Worker, after its last request: close AMQP connections cleanly."""
    from app import shutdown

    shutdown(worker.wsgi)


def child_exit(server, worker):
    """Master: forget a dead worker's live gauges."""
    from app import metrics

    metrics.mark_process_dead(worker.pid)


def on_exit(server):
    """Master: remove the metrics directory we made."""
    if _metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
