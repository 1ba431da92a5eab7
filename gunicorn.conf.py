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

# prometheus_client picks its multi-process mode once, when first imported, and
# the logging set-up below imports the app package (and with it
# prometheus_client) in the master before any hook runs: the shared metrics
# directory has to be named here, first. We make it unless one is given (then
# on_starting empties it) and on_exit removes the one we made.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["GATEWAY_METRICS_TMPDIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]

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
# One JSON line per request (app.accesslog). Off by default: at thousands of
# publishes a second a log line per request costs more than the publish;
# GATEWAY_ACCESS_LOG=true (or --access-logfile) turns it on.
_access_on = os.environ.get("GATEWAY_ACCESS_LOG", "false").lower() in ("1", "true", "yes", "on")
accesslog = "-" if _access_on else None
logger_class = "app.accesslog.JsonLogger"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "app.logs.JsonFormatter"}},
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
    },
    "root": {"level": "INFO", "handlers": ["stdout"]},
    "loggers": {
        "gunicorn.error": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        "gunicorn.access": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        "pika": {"level": "CRITICAL"},  # the pools log connection events themselves
    },
}


def on_starting(server):
    """Master: check the config before any worker boots; empty a metrics directory we were given."""
    from app import metrics
    from app.auth import load_tokens
    from app.config import ConfigError, load_settings

    try:
        load_tokens(load_settings())  # a bad tokens file fails here too, not in each worker
    except ConfigError as err:
        # One line, no traceback, never a password (ConfigError never holds one).
        sys.stderr.write(f"gateway: config error: {err}\n")
        sys.exit(1)
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if path != os.environ.get("GATEWAY_METRICS_TMPDIR"):
        # Given to us (a Kubernetes emptyDir survives a container restart):
        # a previous run's files would be counted again.
        os.makedirs(path, exist_ok=True)
        metrics.clear_dir(path)


def post_fork(server, worker):
    """Worker, before gevent patches: make psycopg2 cooperative before any DB connection."""
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def worker_exit(server, worker):
    """Worker, after its last request: close AMQP connections cleanly."""
    from app import shutdown

    shutdown(worker.wsgi)


def child_exit(server, worker):
    """Master: forget a dead worker's live gauges and pool snapshot."""
    from app import metrics, pool_status

    metrics.mark_process_dead(worker.pid)
    pool_status.remove_worker(metrics.multiprocess_dir(), worker.pid)


def on_exit(server):
    """Master: remove the metrics directory we made."""
    path = os.environ.get("GATEWAY_METRICS_TMPDIR")
    if path and path == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(path, ignore_errors=True)
