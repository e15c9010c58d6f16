"""Request ids (echoed, validated, passed to the services and their logs), Prometheus metrics
labelled by route template, and the merged OpenAPI document."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.support import has_concrete_id, register_and_log_in, wait_for
from tests.harness import HTTP_TIMEOUT, Stack, User

GENERATED_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LOG_DEADLINE = 15.0


@pytest.fixture(scope="module")
def user(stack: Stack) -> User:
    return register_and_log_in(stack.gateway_url, "observability")


@pytest.fixture
def gw(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=HTTP_TIMEOUT, trust_env=False) as c:
        yield c


@pytest.fixture
def chat(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.chat_url, timeout=HTTP_TIMEOUT, trust_env=False) as c:
        yield c


# --- request id ------------------------------------------------------------------------------


def _log_lines(path: Path) -> list[dict]:
    lines = []
    if not path.exists():
        return lines
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
    return lines


def _wait_for_access_line(stack: Stack, service: str, request_id: str) -> dict:
    path = stack.log_dir / f"{service}.log"

    def find() -> dict | None:
        for line in _log_lines(path):
            if line.get("request_id") == request_id and line.get("msg") == "request":
                return line
        return None

    found: dict = wait_for(find, timeout=LOG_DEADLINE, what=f"{request_id} in {path}")
    return found


@pytest.mark.parametrize("path", ["/healthz", "/auth/me", "/chat/conversations", "/nope"])
def test_every_response_carries_a_request_id(gw: httpx.Client, user: User, path: str) -> None:
    first = gw.get(path, headers=user.headers)
    second = gw.get(path, headers=user.headers)
    ids = [r.headers.get("x-request-id") for r in (first, second)]
    assert all(ids), [dict(r.headers) for r in (first, second)]
    assert all(GENERATED_ID.match(i) for i in ids), ids
    assert ids[0] != ids[1], "each request gets its own id"


@pytest.mark.parametrize("path", ["/healthz", "/auth/me", "/chat/conversations", "/nope"])
def test_a_well_formed_request_id_is_echoed(gw: httpx.Client, user: User, path: str) -> None:
    request_id = f"client-{secrets.token_hex(8)}.retry:1_A"
    response = gw.get(path, headers={**user.headers, "X-Request-ID": request_id})
    assert response.headers.get("x-request-id") == request_id
    assert len(response.headers.get_list("x-request-id")) == 1, response.headers


@pytest.mark.parametrize(
    "bad_id",
    ["a" * 300, "has spaces in it", "semi;colon", "new\\nline", 'quote"d', "x" * 129],
    ids=["300-chars", "spaces", "semicolon", "backslash", "quote", "129-chars"],
)
def test_a_malformed_request_id_is_replaced(gw: httpx.Client, user: User, bad_id: str) -> None:
    response = gw.get("/chat/conversations", headers={**user.headers, "X-Request-ID": bad_id})
    assert response.status_code == 200, response.text
    replaced = response.headers.get("x-request-id")
    assert replaced and replaced != bad_id
    assert GENERATED_ID.match(replaced), replaced


def test_128_character_request_id_is_kept(gw: httpx.Client, user: User) -> None:
    request_id = "k" * 120 + secrets.token_hex(4)
    assert len(request_id) == 128
    response = gw.get("/auth/me", headers={**user.headers, "X-Request-ID": request_id})
    assert response.headers.get("x-request-id") == request_id


def test_request_id_reaches_the_chat_service_log(
    stack: Stack, gw: httpx.Client, user: User
) -> None:
    request_id = f"trace-{secrets.token_hex(12)}"
    response = gw.get("/chat/conversations", headers={**user.headers, "X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    chat_line = _wait_for_access_line(stack, "chat", request_id)
    assert chat_line["path"] == "/chat/conversations"
    assert chat_line["status"] == 200
    assert chat_line["service"] == "chat"
    gateway_line = _wait_for_access_line(stack, "gateway", request_id)
    assert gateway_line["status"] == 200


def test_replaced_request_id_is_the_one_the_chat_service_logs(
    stack: Stack, gw: httpx.Client, user: User
) -> None:
    bad_id = f"bad id {secrets.token_hex(6)}"
    response = gw.get("/chat/conversations", headers={**user.headers, "X-Request-ID": bad_id})
    assert response.status_code == 200, response.text
    replaced = response.headers["x-request-id"]
    assert replaced != bad_id
    chat_line = _wait_for_access_line(stack, "chat", replaced)
    assert chat_line["path"] == "/chat/conversations"
    assert bad_id not in (stack.log_dir / "chat.log").read_text(errors="replace")


def test_chat_service_echoes_a_request_id_itself(chat: httpx.Client, user: User) -> None:
    request_id = f"direct-{secrets.token_hex(8)}"
    response = chat.get("/chat/conversations", headers={**user.headers, "X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert response.headers.get("x-request-id") == request_id


# --- metrics ---------------------------------------------------------------------------------

HTTP_METRICS = (
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "http_requests_in_progress",
)


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.append((sample.name, dict(sample.labels), sample.value))
    return samples


def _scrape(base_url: str) -> tuple[httpx.Response, list[tuple[str, dict[str, str], float]]]:
    response = httpx.get(base_url + "/metrics", timeout=HTTP_TIMEOUT, trust_env=False)
    assert response.status_code == 200, response.text
    return response, _samples(response.text)


@pytest.mark.parametrize("service", ["gateway", "chat"])
def test_metrics_are_prometheus_text_with_http_golden_signals(stack: Stack, service: str) -> None:
    response, samples = _scrape(getattr(stack, f"{service}_url"))
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    names = {name for name, _, _ in samples}
    for metric in HTTP_METRICS:
        assert metric in names, f"{service}: no {metric} in /metrics"


def test_gateway_metrics_count_upstream_requests(
    stack: Stack, gw: httpx.Client, user: User
) -> None:
    assert gw.get("/chat/conversations", headers=user.headers).status_code == 200
    _, samples = _scrape(stack.gateway_url)
    upstream = [
        (labels, value)
        for name, labels, value in samples
        if name == "gateway_upstream_requests_total"
    ]
    assert any(
        labels.get("upstream") == "chat" and labels.get("outcome") == "200" and value >= 1
        for labels, value in upstream
    ), upstream


def _route_counts(samples: list, method: str, route: str) -> float:
    return sum(
        value
        for name, labels, value in samples
        if name == "http_requests_total"
        and labels.get("method") == method
        and labels.get("route") == route
    )


@pytest.mark.parametrize("service", ["gateway", "chat"])
def test_metrics_label_routes_by_template_never_by_id(
    stack: Stack, gw: httpx.Client, user: User, service: str
) -> None:
    # The gateway learns its route templates from the services' OpenAPI documents.
    assert gw.get("/openapi.json").status_code == 200
    template = "/chat/conversations/{conversation_id}"
    base_url = getattr(stack, f"{service}_url")
    _, before = _scrape(base_url)

    created = gw.post("/chat/conversations", json={"title": "metrics"}, headers=user.headers)
    assert created.status_code == 201, created.text
    own_id = created.json()["data"]["conversation_id"]
    unknown_id = 2_000_000_000 - own_id
    for conversation_id, status in ((own_id, 200), (unknown_id, 404)):
        response = gw.get(f"/chat/conversations/{conversation_id}", headers=user.headers)
        assert response.status_code == status, response.text
    # and an unrouted path holding an id
    gw.get(f"/chat/conversations/{own_id}/nothing-here/{unknown_id}", headers=user.headers)

    _, after = _scrape(base_url)
    assert _route_counts(after, "GET", template) - _route_counts(before, "GET", template) >= 2, (
        f"{service}: GET {template} not counted under its template"
    )
    for name, labels, _ in after:
        for label, value in labels.items():
            # Any path-like label value is a template: no concrete numeric segment in it.
            if "/" in value or label in ("route", "path"):
                assert not has_concrete_id(value), (
                    f"{service}: {name}{{{label}={value!r}}} carries a concrete id"
                )


# --- OpenAPI ---------------------------------------------------------------------------------

PUBLIC_PATHS = (
    "/auth/register",
    "/auth/login",
    "/auth/token",
    "/auth/me",
    "/chat/conversations",
    "/chat/conversations/{conversation_id}",
    "/chat/conversations/{conversation_id}/messages",
    "/chat/search",
    "/chat/agents",
)


def test_openapi_document_merges_every_public_route(gw: httpx.Client) -> None:
    response = gw.get("/openapi.json")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    missing = [p for p in PUBLIC_PATHS if p not in paths]
    assert not missing, f"missing from /openapi.json: {missing}; has {sorted(paths)}"
    private = [p for p in paths if p in ("/healthz", "/readyz", "/metrics", "/openapi.json")]
    assert not private, private


def test_openapi_declares_the_oauth2_password_flow(gw: httpx.Client) -> None:
    doc = gw.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    oauth2 = {
        name: scheme
        for name, scheme in schemes.items()
        if scheme.get("type") == "oauth2" and "password" in scheme.get("flows", {})
    }
    assert oauth2, schemes
    assert any(s["flows"]["password"]["tokenUrl"] == "/auth/token" for s in oauth2.values())
    # The proxied operations use it, so the docs page's Authorize button works for them.
    operation = doc["paths"]["/chat/conversations"]["get"]
    names = {name for requirement in operation.get("security", []) for name in requirement}
    assert names and names <= set(oauth2), operation.get("security")


def test_docs_page_is_html(gw: httpx.Client) -> None:
    response = gw.get("/docs")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text
    assert "swagger" in response.text.lower()
