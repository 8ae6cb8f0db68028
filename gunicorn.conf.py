"""gunicorn settings the Procfile's command line does not carry (gunicorn reads this file from
the working directory on its own; flags on the command line win over it).

- The access log, if enabled with `--access-logfile`, shows the path without the query string:
  WebSocket clients may put their token there (`/v1/ws?token=`) and signed download URLs
  their signature. The app writes its own access line with the request id and caller too.
- A worker that exits drops its live gauges (open WebSockets) from /metrics (core/metrics.py).
"""

from __future__ import annotations

from typing import Any

access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'


def child_exit(server: Any, worker: Any) -> None:
    from core import metrics

    metrics.mark_dead(worker.pid)
