"""Prometheus metrics and ``GET /metrics``.

Under Gunicorn every worker is its own process: with
``PROMETHEUS_MULTIPROC_DIR`` set (``gunicorn.conf.py`` sets it and empties it
at start) each worker writes its numbers to files there and ``/metrics``
adds them up, whichever worker answers.  Without it (``flask run``, tests)
the numbers live in the one process.  Every metric has labels, so none
writes a file before a worker first counts something.

Storage counts here too (messages stored, waiting slots), so Flask is
imported by ``init_app`` only.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from .operations import describe

REQUESTS = Counter(
    "sessions_http_requests",
    "HTTP requests answered, by method, route and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "sessions_http_request_duration_seconds",
    "Time from the start of a request to its response, by method and route.",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REQUESTS_BY_TOKEN = Counter(
    "sessions_http_requests_by_token",
    "HTTP requests answered, by the name of their token ('(none)': no token the service knows).",
    ["token"],
)
DATABASE_ERRORS = Counter(
    "sessions_database_errors",
    "Requests answered 503 because the database could not be reached or was busy.",
    ["error"],
)
MESSAGES_STORED = Counter(
    "sessions_messages_stored",
    "Messages stored (committed), by role.",
    ["role"],
)

PRUNED = Counter(
    "sessions_pruned",
    "Rows deleted by the prune command (flask --app sessions_app prune), by kind.",
    ["what"],
)
PRUNE_RUNS = Counter(
    "sessions_prune_runs",
    "Runs of the prune command, by outcome: ok, dry-run or error.",
    ["outcome"],
)
WAITING = Gauge(
    "sessions_waiting_requests",
    "Requests holding a waiting slot, by kind (poll or stream), in all workers.",
    ["kind"],
    multiprocess_mode="livesum",
)
WAITING_REFUSED = Counter(
    "sessions_waiting_refused",
    "Long polls and streams refused (503) because every waiting slot was taken, by kind.",
    ["kind"],
)

# A client chooses the method; only these become label values, so a client
# cannot grow the number of series without bound (unmatched paths likewise
# share one route label).
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_UNMATCHED = "(unmatched)"
_NO_TOKEN = "(none)"


def _registry():
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def init_app(app):
    """Count and time every request, and serve ``/metrics``."""
    from flask import Blueprint, Response, g, request

    from . import requestlog

    # (method, route, status, token) -> the series a request of them counts in:
    # ``labels()`` checks and looks up its values on every call, and every
    # request counts, so each combination's series are looked up once.
    series = {}

    def _count(response):
        req = request._get_current_object()
        method = req.method if req.method in _METHODS else "OTHER"
        rule = req.url_rule
        route = rule.rule if rule is not None else _UNMATCHED
        # Names come from the configuration (auth sets them), never from the client.
        token = g.get("token_name") or _NO_TOKEN
        key = (method, route, response.status_code, token)
        counted = series.get(key)
        if counted is None:
            counted = series[key] = (
                REQUESTS.labels(method, route, str(response.status_code)),
                REQUESTS_BY_TOKEN.labels(token),
                LATENCY.labels(method, route),
            )
        requests, by_token, latency = counted
        requests.inc()
        by_token.inc()
        latency.observe(requestlog.elapsed())
        return response

    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    @describe(
        "Service metrics for Prometheus",
        "Request counts and latencies by route and status, in Prometheus' text format.",
        operation_id="metrics",
        errors=(503,),
        tag="service",
        media_type="text/plain",
    )
    def scrape():
        return Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST)

    app.after_request(_count)
    app.register_blueprint(bp)
