"""Prometheus metrics of the chat path, served at /metrics.

Each worker process keeps its own counters. With several workers, set PROMETHEUS_MULTIPROC_DIR
(an empty directory shared by the workers) and /metrics reports the sum over all of them.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_REQUESTS = Counter(
    "cozeproject_http_requests_total", "HTTP requests by route and status", ["route", "method", "status"]
)
REPLIES = Counter("cozeproject_replies_total", "Finished replies by how they ended", ["status", "transport"])
OPEN_STREAMS = Gauge("cozeproject_open_streams", "Replies streaming now", ["transport"], multiprocess_mode="livesum")
TIME_TO_FIRST_TOKEN = Histogram(
    "cozeproject_time_to_first_token_seconds",
    "From the request to the first token",
    ["transport"],
    buckets=LATENCY_BUCKETS,
)
REPLY_DURATION = Histogram(
    "cozeproject_reply_duration_seconds",
    "From the request to the end of the reply",
    ["transport"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter("cozeproject_tokens_total", "Coze tokens used, by bot and direction", ["bot_id", "direction"])
UPSTREAM_ERRORS = Counter("cozeproject_upstream_errors_total", "Failures talking to Coze, by our code", ["code"])
AUTH_FAILURES = Counter(
    "cozeproject_auth_failures_total",
    "Wrong API keys: looked up and answered 401 (unauthenticated), or refused unlooked-up with 429 "
    "because their address made too many failures (blocked)",
    ["outcome"],
)


def turn_started(transport: str) -> None:
    OPEN_STREAMS.labels(transport).inc()


def turn_paused(transport: str) -> None:
    """A reply paused for the client's local tools: not streaming until their outputs come."""
    OPEN_STREAMS.labels(transport).dec()


def turn_resumed(transport: str) -> None:
    OPEN_STREAMS.labels(transport).inc()


def turn_finished(
    *,
    transport: str,
    status: str,
    bot_id: str,
    input_tokens: int,
    output_tokens: int,
    time_to_first_token: float | None,
    duration: float,
    error_code: str | None,
    upstream_error: bool,
) -> None:
    OPEN_STREAMS.labels(transport).dec()
    REPLIES.labels(status, transport).inc()
    REPLY_DURATION.labels(transport).observe(duration)
    if time_to_first_token is not None:
        TIME_TO_FIRST_TOKEN.labels(transport).observe(time_to_first_token)
    if input_tokens:
        TOKENS.labels(bot_id, "input").inc(input_tokens)
    if output_tokens:
        TOKENS.labels(bot_id, "output").inc(output_tokens)
    if upstream_error and error_code:
        UPSTREAM_ERRORS.labels(error_code).inc()


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
