"""`GET /metrics` (Prometheus), request timing by route, and the access log.

Request latency is recorded per endpoint name (the route, not the URL, so ids do not explode
the label set), method and status class. The access log line carries the request id, the
caller and the duration, and never the query string: WebSocket clients may send their token
there, and signed download URLs carry their signature there.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core import backlog, metrics
from core.services import Services, services
from domain.errors import Unauthorized
from web.http import doc

logger = logging.getLogger(__name__)
access = logging.getLogger("web.access")

bp = Blueprint("metrics", __name__)


class BacklogCollector(Collector):
    """Queue depths and lags, outbox backlog and dead letters, read when Prometheus scrapes."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[GaugeMetricFamily]:
        reading = backlog.broker(self.svc)
        depth = GaugeMetricFamily(
            "parley_queue_depth", "Messages waiting in each broker queue.", labels=["queue"]
        )
        lag = GaugeMetricFamily(
            "parley_queue_lag_seconds",
            "Age of the oldest message waiting in each queue (0 when empty).",
            labels=["queue"],
        )
        for q in reading.queues:
            if q.depth is not None:
                depth.add_metric([q.name], q.depth)
            if q.lag_s is not None:
                lag.add_metric([q.name], q.lag_s)
        yield depth
        yield lag
        if reading.unacked is not None:
            yield GaugeMetricFamily(
                "parley_queue_unacked",
                "Messages reserved by workers and not yet acknowledged (Redis broker).",
                value=reading.unacked,
            )
        yield GaugeMetricFamily(
            "parley_broker_up",
            "1 when the broker answered this scrape.",
            value=0 if reading.error else 1,
        )
        box = backlog.outbox(self.svc)
        if box.backlog is not None:
            yield GaugeMetricFamily(
                "parley_outbox_backlog",
                "Outbox rows not done yet: accepted work the pipeline still owes.",
                value=box.backlog,
            )
            yield GaugeMetricFamily(
                "parley_outbox_oldest_age_seconds",
                "Age of the oldest outbox row not done: end-to-end pipeline lag.",
                value=box.oldest_age_s or 0.0,
            )
        dead = backlog.dead_letters(self.svc)
        if dead is not None:
            yield GaugeMetricFamily(
                "parley_push_dead_letters", "Push deliveries given up on.", value=dead
            )


@bp.get("/metrics")
@doc(
    "Prometheus metrics of this node (text exposition format)",
    responses={200: None},
    auth=False,
    tag="ops",
)
def metrics_view() -> Response:
    """Every process of this node, merged; `Bearer PARLEY_METRICS_TOKEN` when one is set."""
    expected = services().settings.metrics_token
    if expected:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            raise Unauthorized("send 'Authorization: Bearer <PARLEY_METRICS_TOKEN>'")
    body, content_type = metrics.render([BacklogCollector(services())])
    return Response(body, content_type=content_type)


def init_app(app: Flask) -> None:
    metrics.configure(app.extensions["parley"].settings.data_dir / "metrics")
    log_access = app.extensions["parley"].settings.access_log

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(resp: Response) -> Response:
        started = g.pop("started", None)
        if started is None or request.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            return resp  # a socket's "duration" is its lifetime, not a latency
        seconds = time.perf_counter() - started
        endpoint = request.endpoint or "unmatched"
        metrics.observe_request(endpoint, request.method, resp.status_code, seconds)
        if log_access:
            _log(endpoint, resp.status_code, seconds)
        return resp


def _log(endpoint: str, status: int, seconds: float) -> None:
    who = g.get("principal")
    extra: dict[str, Any] = {"duration_ms": round(seconds * 1000, 2)}
    if who is not None:
        extra["user_id"] = who.user_id if who.user_id is not None else who.label
    access.info(
        "%s %s %s %s %.1fms",
        request.method,
        request.path,  # never the query string
        status,
        endpoint,
        extra["duration_ms"],
        extra=extra,
    )
