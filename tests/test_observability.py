"""Prometheus metrics and log context."""

import logging
import os
import subprocess
import sys

import pytest

from tests.conftest import auth, stream_chat

pytestmark = pytest.mark.django_db(transaction=True)


def metric_value(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{wanted}}} not in metrics")


def test_metrics_count_replies_tokens_latency_and_errors(http, api_key, settings):
    settings.CHAT_METRICS_PUBLIC = True
    before = http.get("/metrics").text
    completed_before = (
        metric_value(before, "cozeproject_replies_total", status="completed", transport="sse")
        if ('status="completed",transport="sse"' in before)
        else 0.0
    )

    stream_chat(http, api_key, {"message": "count me"})
    http.post("/api/chat", json={"message": "[sim:error_event] x"}, headers=auth(api_key))

    text = http.get("/metrics").text
    assert metric_value(text, "cozeproject_replies_total", status="completed", transport="sse") == completed_before + 1
    assert metric_value(text, "cozeproject_replies_total", status="failed", transport="sync") >= 1
    assert metric_value(text, "cozeproject_upstream_errors_total", code="upstream_error") >= 1
    assert metric_value(text, "cozeproject_tokens_total", direction="output") > 0
    assert metric_value(text, "cozeproject_time_to_first_token_seconds_count", transport="sse") >= 1
    assert metric_value(text, "cozeproject_reply_duration_seconds_count", transport="sync") >= 1
    assert metric_value(text, "cozeproject_open_streams", transport="sse") == 0
    assert metric_value(text, "cozeproject_http_requests_total", route="api/chat", method="POST", status="502") >= 1


def test_metrics_can_require_a_token(http, settings):
    settings.CHAT_METRICS_TOKEN = "scrape-secret"
    settings.CHAT_METRICS_PUBLIC = False

    refused = http.get("/metrics")
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthenticated"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # Any byte in the header is a wrong token, never a server error.
    assert http.get("/metrics", headers={"Authorization": "Bearer sécret".encode("latin-1")}).status_code == 401
    opened = http.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert opened.status_code == 200
    assert "cozeproject_http_requests_total" in opened.text


def test_metrics_are_closed_without_a_token_unless_opened(http, settings):
    settings.CHAT_METRICS_TOKEN = ""
    settings.CHAT_METRICS_PUBLIC = False

    closed = http.get("/metrics")
    assert closed.status_code == 403
    assert closed.headers["content-type"] == "application/json"
    body = closed.json()
    assert body["code"] == "forbidden"
    assert "CHAT_METRICS_TOKEN" in body["detail"] and "CHAT_METRICS_PUBLIC" in body["detail"]
    assert "cozeproject_" not in closed.text

    settings.CHAT_METRICS_PUBLIC = True
    opened = http.get("/metrics")
    assert opened.status_code == 200
    assert "cozeproject_http_requests_total" in opened.text


def metrics_settings(env: dict) -> subprocess.CompletedProcess:
    """Load the settings in a fresh process with `env` as the only configuration."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "COZE_", "CHAT_"))}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings as s; "
            "print(s.CHAT_METRICS_PUBLIC, repr(s.CHAT_METRICS_TOKEN))",
        ],
        env={**base, "DJANGO_SETTINGS_MODULE": "cozeproject.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_metrics_default_to_closed_outside_debug():
    production = {
        "DJANGO_SECRET_KEY": "production-secret-key-" + "0123456789abcdef" * 3,
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        "CHAT_DEMO": "1",
    }

    # A Procfile deployment sets no metrics variable: closed.
    assert metrics_settings(production).stdout.split() == ["False", "''"]
    assert metrics_settings({**production, "CHAT_METRICS_PUBLIC": "1"}).stdout.split() == ["True", "''"]
    assert metrics_settings({**production, "CHAT_METRICS_TOKEN": "t"}).stdout.split() == ["False", "'t'"]
    # Development (scripts/serve sets DJANGO_DEBUG=1): open, unless switched off.
    assert metrics_settings({"DJANGO_DEBUG": "1"}).stdout.split() == ["True", "''"]
    assert metrics_settings({"DJANGO_DEBUG": "1", "CHAT_METRICS_PUBLIC": "0"}).stdout.split() == ["False", "''"]

    both = metrics_settings({**production, "CHAT_METRICS_TOKEN": "t", "CHAT_METRICS_PUBLIC": "1"})
    assert both.returncode != 0
    assert "CHAT_METRICS_PUBLIC=1 with CHAT_METRICS_TOKEN" in both.stderr


def test_every_response_has_a_request_id_and_keeps_a_clients_own(http, api_key):
    generated = http.get("/health").headers["x-request-id"]
    assert len(generated) == 32

    kept = http.get("/health", headers={"X-Request-ID": "client-trace-1234"})
    assert kept.headers["x-request-id"] == "client-trace-1234"
    replaced = http.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert replaced.headers["x-request-id"] != "bad id with spaces"


def test_turn_log_lines_carry_the_request_id_and_the_coze_logid(http, api_key, caplog):
    caplog.set_level(logging.INFO, logger="chat.turn")

    response = http.post(
        "/api/chat", json={"message": "log me"}, headers={**auth(api_key), "X-Request-ID": "trace-abcdef12"}
    )

    assert response.status_code == 200
    records = [r for r in caplog.records if r.name.startswith("chat.turn.")]
    ended = next(r for r in records if r.getMessage().startswith("Turn ended"))
    started = next(r for r in records if r.getMessage().startswith("Turn started"))
    assert started.request_id == ended.request_id == "trace-abcdef12"
    assert ended.coze_logid not in ("", "-")
