"""The OpenAPI schema at /api/schema/ describes every path the server answers for API clients,
each operation with a summary, and what it documents is what those paths send."""

import json
import re

import jsonschema
import pytest
from django.test import Client
from django.urls import URLPattern
from drf_spectacular.validation import validate_schema

from cozeproject import urls
from tests.conftest import auth

# Pages for people, not API operations.
NOT_IN_SCHEMA = {"chat-page", "favicon", "schema", "swagger-ui"}
COMPATIBILITY_PATHS = [
    "/chat",
    "/chat/stream",
    "/session/{session_id}/info",
    "/session/{session_id}/clear",
    "/api/coze-chat",
]


def load_schema() -> dict:
    response = Client().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = json.loads(response.content)
    validate_schema(schema)
    return schema


def openapi_path(route: str) -> str:
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def api_routes() -> set[str]:
    """Every route of the project's URLconf but the pages for people."""
    return {
        openapi_path(str(pattern.pattern))
        for pattern in urls.urlpatterns
        # Resolvers are admin/ and accounts/ (the sign-in pages).
        if isinstance(pattern, URLPattern) and pattern.name not in NOT_IN_SCHEMA
    }


def test_every_api_path_is_in_the_schema_and_every_operation_has_a_summary():
    schema = load_schema()
    assert api_routes() <= set(schema["paths"]), api_routes() - set(schema["paths"])
    assert {"/health", "/metrics", *COMPATIBILITY_PATHS} <= set(schema["paths"])
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
            assert operation.get("responses"), f"{method.upper()} {path} has no responses"
    assert schema["paths"]["/api/sessions"]["get"]["summary"] == "Your sessions, newest activity first"


def test_operations_and_compatibility_paths_are_described():
    paths = load_schema()["paths"]
    health = paths["/health"]["get"]
    assert health["security"] == [] and set(health["responses"]) == {"200", "503"}
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    for path in COMPATIBILITY_PATHS:
        (operation,) = paths[path].values()
        assert operation["tags"] == ["compatibility"], path
        assert operation["security"] == [{"apiKey": []}, {"browserSession": []}], path
    assert set(paths["/chat"]) == set(paths["/chat/stream"]) == {"post"}
    assert set(paths["/session/{session_id}/info"]) == {"get"}
    assert paths["/session/{session_id}/clear"]["post"]["parameters"][0]["name"] == "session_id"
    assert "text/event-stream" in paths["/chat/stream"]["post"]["responses"]["200"]["content"]
    assert "text/event-stream" in paths["/api/coze-chat"]["post"]["responses"]["200"]["content"]


# --- what the schema says is what the server sends ------------------------------------------


def validator_for(schema: dict, described: dict) -> jsonschema.Draft7Validator:
    """A validator for one schema of the document, its `#/components/...` references resolved."""
    return jsonschema.Draft7Validator({**described, "components": schema["components"]})


def response_schema(schema: dict, path: str, method: str, status: str, media_type: str) -> dict:
    return schema["paths"][path][method]["responses"][status]["content"][media_type]["schema"]


def data_lines(text: str) -> list[dict]:
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


@pytest.mark.django_db(transaction=True)
def test_the_described_bodies_and_events_are_what_the_server_sends(http, api_key):
    schema = load_schema()

    def check(path, method, status, media_type, body):
        validator_for(schema, response_schema(schema, path, method, status, media_type)).validate(body)

    check("/health", "get", "200", "application/json", http.get("/health").json())

    legacy_body = {"message": "hello", "session_id": "legacy", "user_id": "u1"}
    validator_for(schema, {"$ref": "#/components/schemas/LegacyChatRequest"}).validate(legacy_body)
    check(
        "/chat", "post", "200", "application/json", http.post("/chat", json=legacy_body, headers=auth(api_key)).json()
    )

    stream = http.post("/chat/stream", json={"message": "[sim:echo]one two"}, headers=auth(api_key))
    events = data_lines(stream.text)
    assert [event["type"] for event in events][-1] == "complete"
    for event in events:
        check("/chat/stream", "post", "200", "text/event-stream", event)
    failing = http.post("/chat/stream", json={"message": "[sim:error_event] oops"}, headers=auth(api_key))
    check("/chat/stream", "post", "200", "text/event-stream", data_lines(failing.text)[-1])

    check(
        "/session/{session_id}/info",
        "get",
        "200",
        "application/json",
        http.get("/session/legacy/info", headers=auth(api_key)).json(),
    )
    check(
        "/session/{session_id}/clear",
        "post",
        "200",
        "application/json",
        http.post("/session/legacy/clear", headers=auth(api_key)).json(),
    )
    missing = http.get("/session/nope/info", headers=auth(api_key))
    check("/session/{session_id}/info", "get", "404", "application/json", missing.json())

    coze_body = {
        "user_id": "u2",
        "additional_messages": [{"role": "user", "content": '[{"type":"text","text":"你好"}]'}],
    }
    validator_for(schema, {"$ref": "#/components/schemas/CozeChatRequest"}).validate(coze_body)
    coze_chat = http.post("/api/coze-chat", json=coze_body, headers=auth(api_key))
    coze_events = data_lines(coze_chat.text)
    assert coze_events[-1]["type"] == "completed" and coze_chat.text.rstrip().endswith("data: [DONE]")
    for event in coze_events:
        check("/api/coze-chat", "post", "200", "text/event-stream", event)


def test_the_token_endpoint_is_described_with_its_body_and_answer():
    schema = load_schema()
    operation = schema["paths"]["/api/tokens"]["post"]
    components = schema["components"]["schemas"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    answer = operation["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]

    assert components[request]["required"] == ["user_id"]
    assert (
        components[request]["properties"]["expires_in"] | {"minimum": 1, "maximum": 86400}
        == components[request]["properties"]["expires_in"]
    )
    assert set(components[answer]["properties"]) == {"token", "user_id", "expires_at"}
    assert {"401", "403", "400"} <= set(operation["responses"])
    assert "end-user token" in schema["components"]["securitySchemes"]["apiKey"]["description"]
