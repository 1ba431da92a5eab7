"""gunicorn settings and hooks: ``gunicorn -c gunicorn.conf.py`` starts the gateway.

Flags (``--bind``, ``--workers``) and ``GUNICORN_CMD_ARGS`` override these as
usual; ``GATEWAY_BIND`` and ``GATEWAY_WORKERS`` set them from the environment.

Order in each worker (gevent): ``post_fork`` (before monkey-patching), then the
app is loaded (``create_app``: pools start connecting in greenlets), then
``post_worker_init`` (the ZeroMQ ingress). Nothing connects in the master; with
``ZMQ_SOCK_ADDRESS`` set, the master starts and watches the ZeroMQ relay, a
process of its own (see docs/zmq.md).
"""

import atexit
import os
import resource
import shutil
import sys
import tempfile

# prometheus_client picks its multi-process mode once, when first imported, and
# the logging set-up below imports the app package (and with it
# prometheus_client) in the master before any hook runs: the shared metrics
# directory has to be named here, first. We make it unless one is given (then
# on_starting empties it) and on_exit removes the one we made.
# gunicorn calls on_exit only from a clean halt: a start-up that fails (a
# config error in on_starting, a port in use) exits without it, so the master
# also removes the directory when its interpreter exits, whichever way. Only
# the master: its forked workers inherit the atexit hook.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["GATEWAY_METRICS_TMPDIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    _master_pid = os.getpid()
    atexit.register(lambda: os.getpid() == _master_pid and _remove_metrics_dir())


def _remove_metrics_dir():
    """Remove the metrics directory this master made (not one it was given)."""
    path = os.environ.get("GATEWAY_METRICS_TMPDIR")
    if path and path == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(path, ignore_errors=True)

wsgi_app = "app.http.wsgi:app"
bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("GATEWAY_WORKERS", "2"))
# gunicorn's gevent worker, which near worker_connections sheds connections
# that have not delivered a complete request (idle keep-alive, slow headers or
# body) instead of leaving new ones, health probes included, in the listen
# backlog (app/http/worker.py).
worker_class = "app.http.worker.GatewayWorker"
# Client connections per worker. An idle gevent connection costs a file
# descriptor and a few kB, so the limit is high: a flood of idle or slow
# connections is held (and timed out) rather than left to fill the listen
# backlog, where a probe's connection would wait behind it. Like nginx's
# worker_rlimit_nofile, the soft limit on open files is raised for it (up to
# the hard limit), and the limit lowered to what the descriptors allow.
_FD_RESERVE = 256  # AMQP connections, the log, ZeroMQ, PostgreSQL, the metrics files
_soft_fds, _hard_fds = resource.getrlimit(resource.RLIMIT_NOFILE)
worker_connections = int(os.environ.get("GATEWAY_WORKER_CONNECTIONS", "10000"))
if _soft_fds != resource.RLIM_INFINITY and _soft_fds < worker_connections + _FD_RESERVE:
    _wanted_fds = worker_connections + _FD_RESERVE
    _soft_fds = _wanted_fds if _hard_fds == resource.RLIM_INFINITY else min(_wanted_fds, _hard_fds)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_soft_fds, _hard_fds))
    worker_connections = min(worker_connections, max(_soft_fds - _FD_RESERVE, 64))
preload_app = False  # each worker builds its own pools after fork
timeout = 30
graceful_timeout = 20  # SIGTERM: requests in flight get this long to be answered
# Connections the kernel queues for accept(); capped by net.core.somaxconn. A
# flood's connection burst beyond it is dropped (SYNs retried after 1 s), the
# probes' connections too.
backlog = 4096
# Seconds a client connection may wait for its next request and take to send
# its headers (gunicorn bounds both with one timer); the body then has
# CLIENT_BODY_TIMEOUT (app/config/settings.py).
keepalive = max(1, int(os.environ.get("GATEWAY_KEEPALIVE", "5")))  # 0 would leave headers unbounded
# gunicorn-h1c's C parser (pinned in pyproject.toml) when it is installed, else
# gunicorn's Python parser: the same requests, ~100 µs less CPU each.
http_parser = "auto"
# gunicorn 27's control socket sits at one fixed path per user: two gateways on
# one host (or a test run beside a dev server) would fight over it.
control_socket_disable = True
# One JSON line per request (app.http.accesslog). Off by default: at thousands of
# publishes a second a log line per request costs more than the publish;
# GATEWAY_ACCESS_LOG=true (or --access-logfile) turns it on.
_access_on = os.environ.get("GATEWAY_ACCESS_LOG", "false").lower() in ("1", "true", "yes", "on")
accesslog = "-" if _access_on else None
logger_class = "app.http.accesslog.JsonLogger"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "app.ops.logs.JsonFormatter"}},
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
    from app.config import ConfigError
    from app.config.check import error_line, validate
    from app.http.master import MASTER
    from app.ops import metrics

    try:
        # Workers are given these settings (post_fork), never read the file themselves.
        MASTER.settings = validate()
    except ConfigError as err:
        # One line, no traceback, never a password (ConfigError never holds one).
        sys.stderr.write(error_line(err) + "\n")
        sys.exit(1)
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if path != os.environ.get("GATEWAY_METRICS_TMPDIR"):
        # Given to us (a Kubernetes emptyDir survives a container restart):
        # a previous run's files would be counted again.
        os.makedirs(path, exist_ok=True)
        metrics.clear_dir(path)


def on_reload(server):
    """Master, on SIGHUP: check the file first; a bad one is refused and the old config stays (nginx's way).

    gunicorn replaces the workers either way; the new ones are given the
    settings validated here, so a bad file never reaches a worker (which
    would fail to boot and halt the gateway).
    """
    import logging

    from app.config import ConfigError
    from app.config.check import validate
    from app.http.master import MASTER

    log = logging.getLogger("app.config")
    try:
        settings = validate()
    except ConfigError as err:
        log.error("config reload refused, the running config stays: %s", err,
                  extra={"event": "config_reload_refused"})
        return
    MASTER.settings = settings
    log.info("config reloaded from %s", settings.source, extra={"event": "config_reloaded"})


def when_ready(server):
    """Master: bind ZMQ_SOCK_ADDRESS once, in the relay process, before any worker boots."""
    from app.http.master import MASTER

    settings = MASTER.settings
    if settings is None or not settings.zmq_address:
        return
    from app.zmq.supervisor import RelayStartError, RelaySupervisor

    relay = RelaySupervisor(settings)
    try:
        relay.start()
    except RelayStartError as err:
        sys.stderr.write(f"gateway: ZeroMQ relay: {err}\n")
        on_exit(server)
        sys.exit(1)
    MASTER.relay = relay


def post_fork(server, worker):
    """Worker, before gevent patches: the master's validated settings; psycopg2 cooperative before any DB use."""
    from psycogreen.gevent import patch_psycopg

    from app import config
    from app.http.master import MASTER

    config.adopt(MASTER.settings)
    patch_psycopg()
    if MASTER.relay is not None:
        MASTER.relay.forget_in_worker()


def post_worker_init(worker):
    """Worker, app loaded and gevent patched: errors as JSON lines; start the services (and ZeroMQ's ingress)."""
    from app.http.master import MASTER
    from app.ops import logs

    logs.route_process_errors()
    services = getattr(worker.wsgi, "extensions", {}).get("services")
    if services is None:
        return  # another WSGI app under this config (make bench runs its peers so): nothing of ours to start
    from app.amqp.server_cap import CAP

    CAP.workers = worker.cfg.workers  # each worker takes its share of MAX_CONNECTIONS_PER_SERVER
    if MASTER.zmq_backend:
        from app.zmq.ingress import ZmqIngress

        services.add_zmq(ZmqIngress(services.gateway, MASTER.zmq_backend, capacity=services.settings.zmq_max_in_flight,
                                    identity=b"%d" % os.getpid(), on_taken=worker.count_requests))
    worker.when_stopping(services.drain)
    services.start()


def worker_exit(server, worker):
    """Worker, after its last request: answer ZeroMQ messages taken, close AMQP connections."""
    from app.http.factory import shutdown

    app = getattr(worker, "wsgi", None)  # none if the worker failed to load the app
    if app is not None and "services" in getattr(app, "extensions", {}):  # not a peer app of make bench
        shutdown(app)


def child_exit(server, worker):
    """Master: forget a dead worker's live gauges and pool snapshot; tell the relay it is gone."""
    from app.ops import metrics, pool_status

    metrics.mark_process_dead(worker.pid)
    pool_status.remove_worker(metrics.multiprocess_dir(), worker.pid)
    from app.http.master import MASTER

    if MASTER.relay is not None:
        MASTER.relay.worker_exited(worker.pid)


def on_exit(server):
    """Master, workers gone: stop the ZeroMQ relay, remove its files and the metrics directory we made."""
    from app.http.master import MASTER

    if MASTER.relay is not None:
        MASTER.relay.stop()
    _remove_metrics_dir()
