"""gunicorn's access log as JSON lines: one object per request, with its request id.

gunicorn formats access lines with a printf template; an operator's log
pipeline wants fields. :class:`JsonLogger` (``logger_class`` in
``gunicorn.conf.py``) hands the fields to the ``gunicorn.access`` logger as
``extra``, and :class:`app.ops.logs.JsonFormatter` writes them like every other
line. No request header is logged but the user agent: ``Authorization``
never reaches the log.
"""

from __future__ import annotations

import traceback
from typing import Any

from gunicorn.glogging import Logger

from app.http.request_id import ENVIRON_KEY

CONN_ID_KEY = "gateway.conn_id"  # set by the publish route once the body is parsed


class JsonLogger(Logger):
    """gunicorn's logger with a structured access log."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """Log one finished request as fields (``--access-logfile`` or ``GATEWAY_ACCESS_LOG`` turn it on)."""
        if not self.cfg.accesslog:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        fields = {
            "event": "access",
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": int(status) if str(status).isdigit() else status,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "bytes": getattr(resp, "sent", None),
            "remote": environ.get("REMOTE_ADDR"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "request_id": environ.get(ENVIRON_KEY),
        }
        if environ.get(CONN_ID_KEY):
            fields["conn_id"] = environ[CONN_ID_KEY]
        try:
            self.access_log.info("%s %s %s", fields["method"], fields["path"], fields["status"], extra=fields)
        except Exception:
            # gunicorn's own policy for a failing access log: report, never break the request.
            self.error(traceback.format_exc())
