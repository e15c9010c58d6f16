"""Agents: everyone lists and reads active agents; administrators create, update and retire."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.chat.factories import create_agent, create_conversation, get_conversation, unique_word
from tests.chat.helpers import assert_error, ok_data, ts
from tests.harness import User

MISSING_ID = 2**31 - 1

AGENT_FIELDS = {
    "id",
    "name",
    "description",
    "model",
    "system_prompt",
    "temperature",
    "max_tokens",
    "input_price_per_1k",
    "output_price_per_1k",
    "is_active",
    "is_default",
    "created_at",
    "updated_at",
}


def _all_agents(http: httpx.Client, user: User, **params: Any) -> list[dict[str, Any]]:
    agents: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = ok_data(
            http.get(
                "/chat/agents",
                params={"limit": 100, "offset": offset, **params},
                headers=user.headers,
            )
        )
        agents.extend(page["agents"])
        offset += 100
        if offset >= page["total"]:
            return agents


def test_admin_creates_an_agent_with_defaults(http: httpx.Client, admin: User) -> None:
    name = f"Support {unique_word()}"
    response = http.post(
        "/chat/agents", json={"name": name, "model": "gpt-4o-mini"}, headers=admin.headers
    )
    agent = ok_data(response, 201)
    assert response.json()["message"] == "Agent created successfully"
    assert set(agent) >= AGENT_FIELDS
    assert isinstance(agent["id"], int) and agent["id"] > 0
    assert (agent["name"], agent["model"]) == (name, "gpt-4o-mini")
    assert (agent["description"], agent["system_prompt"]) == ("", "")
    assert agent["temperature"] == pytest.approx(0.7)
    assert agent["max_tokens"] == 512
    assert agent["input_price_per_1k"] == agent["output_price_per_1k"] == 0
    assert agent["is_active"] is True
    assert agent["is_default"] is False
    ts(agent["created_at"])


def test_admin_creates_an_agent_with_every_field(http: httpx.Client, admin: User) -> None:
    fields: dict[str, Any] = {
        "description": "Answers orders",
        "system_prompt": "You are helpful.",
        "temperature": 1.25,
        "max_tokens": 2048,
        "input_price_per_1k": 0.0015,
        "output_price_per_1k": 0.002,
    }
    agent = create_agent(http, admin, model="m-1", **fields)
    for name, value in fields.items():
        if isinstance(value, float):
            assert agent[name] == pytest.approx(value), name
        else:
            assert agent[name] == value, name


def test_users_list_and_get_active_agents(http: httpx.Client, alice: User, admin: User) -> None:
    agent = create_agent(http, admin)
    response = http.get("/chat/agents", headers=alice.headers)
    data = ok_data(response)
    assert (data["limit"], data["offset"]) == (20, 0)
    assert data["total"] >= 1
    listed = {a["id"]: a for a in _all_agents(http, alice)}
    assert listed[agent["id"]] == agent
    assert all(a["is_active"] for a in listed.values())
    ids = [a["id"] for a in _all_agents(http, alice)]
    assert ids == sorted(ids)
    got = http.get(f"/chat/agents/{agent['id']}", headers=alice.headers)
    assert ok_data(got) == agent
    assert got.json()["message"] == "Agent found"


def test_agent_list_offset_paging(http: httpx.Client, alice: User, admin: User) -> None:
    for _ in range(3):
        create_agent(http, admin)
    everything = _all_agents(http, alice)
    page = ok_data(
        http.get("/chat/agents", params={"limit": 2, "offset": 1}, headers=alice.headers)
    )
    assert (page["limit"], page["offset"], page["total"]) == (2, 1, len(everything))
    assert page["agents"] == everything[1:3]


def test_admin_updates_an_agent(http: httpx.Client, admin: User) -> None:
    agent = create_agent(http, admin, temperature=0.2)
    changes = {"name": "Renamed", "temperature": 1.5, "max_tokens": 64, "description": "new"}
    response = http.put(f"/chat/agents/{agent['id']}", json=changes, headers=admin.headers)
    updated = ok_data(response)
    assert response.json()["message"] == "Agent updated successfully"
    assert (updated["name"], updated["max_tokens"], updated["description"]) == (
        "Renamed",
        64,
        "new",
    )
    assert updated["temperature"] == pytest.approx(1.5)
    assert updated["model"] == agent["model"]
    assert ok_data(http.get(f"/chat/agents/{agent['id']}", headers=admin.headers)) == updated


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="empty"),
        pytest.param({"name": None}, id="null-name"),
        pytest.param({"name": ""}, id="empty-name"),
        pytest.param({"temperature": 3}, id="temperature-too-high"),
        pytest.param({"temperature": -0.1}, id="temperature-negative"),
        pytest.param({"max_tokens": 0}, id="max_tokens-0"),
        pytest.param({"input_price_per_1k": -1}, id="negative-price"),
        pytest.param({"is_default": True}, id="is_default-not-settable"),
        pytest.param({"id": 5}, id="id"),
        pytest.param({"created_at": "2020-01-01T00:00:00Z"}, id="created_at"),
        pytest.param({"colour": "red"}, id="unknown"),
    ],
)
def test_agent_update_rejects_bad_bodies(
    http: httpx.Client, admin: User, body: dict[str, Any]
) -> None:
    agent = create_agent(http, admin)
    response = http.put(f"/chat/agents/{agent['id']}", json=body, headers=admin.headers)
    assert_error(response, 422, "validation_error")
    assert ok_data(http.get(f"/chat/agents/{agent['id']}", headers=admin.headers)) == agent


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"model": "m"}, id="missing-name"),
        pytest.param({"name": "n"}, id="missing-model"),
        pytest.param({"name": " ", "model": "m"}, id="blank-name"),
        pytest.param({"name": "n" * 256, "model": "m"}, id="long-name"),
        pytest.param({"name": "n", "model": "m", "temperature": "hot"}, id="str-temperature"),
        pytest.param({"name": "n", "model": "m", "max_tokens": 200_001}, id="max_tokens-too-big"),
        pytest.param({"name": "n", "model": "m", "output_price_per_1k": 1001}, id="price-too-big"),
        pytest.param({"name": "n", "model": "m", "is_default": True}, id="is_default"),
        pytest.param({"name": "n", "model": "m", "id": 1}, id="id"),
    ],
)
def test_agent_create_rejects_bad_bodies(
    http: httpx.Client, admin: User, body: dict[str, Any]
) -> None:
    before = len(_all_agents(http, admin, include_inactive="true"))
    assert_error(
        http.post("/chat/agents", json=body, headers=admin.headers), 422, "validation_error"
    )
    assert len(_all_agents(http, admin, include_inactive="true")) == before


def test_retiring_an_agent(http: httpx.Client, alice: User, admin: User) -> None:
    agent = create_agent(http, admin)
    conversation = create_conversation(http, alice, agent_id=agent["id"])
    response = http.delete(f"/chat/agents/{agent['id']}", headers=admin.headers)
    assert ok_data(response) == {"agent_id": agent["id"]}
    assert response.json()["message"] == "Agent deleted successfully"

    # Gone for users: not listed, not readable, not usable.
    assert agent["id"] not in {a["id"] for a in _all_agents(http, alice)}
    assert_error(http.get(f"/chat/agents/{agent['id']}", headers=alice.headers), 404, "not_found")
    assert_error(
        http.post(
            "/chat/conversations",
            json={"title": "x", "agent_id": agent["id"]},
            headers=alice.headers,
        ),
        422,
    )
    # Administrators still see it, retired.
    retired = ok_data(http.get(f"/chat/agents/{agent['id']}", headers=admin.headers))
    assert (retired["is_active"], retired["is_default"]) == (False, False)
    inactive = {a["id"]: a for a in _all_agents(http, admin, include_inactive="true")}
    assert inactive[agent["id"]]["is_active"] is False
    assert agent["id"] not in {a["id"] for a in _all_agents(http, admin)}
    # Conversations keep pointing at it.
    assert get_conversation(http, alice, conversation["id"])["agent_id"] == agent["id"]
    # Retiring twice: nothing active to retire.
    assert_error(http.delete(f"/chat/agents/{agent['id']}", headers=admin.headers), 404)


def test_reactivating_a_retired_agent(http: httpx.Client, alice: User, admin: User) -> None:
    agent = create_agent(http, admin)
    ok_data(http.delete(f"/chat/agents/{agent['id']}", headers=admin.headers))
    ok_data(
        http.put(f"/chat/agents/{agent['id']}", json={"is_active": True}, headers=admin.headers)
    )
    assert (
        ok_data(http.get(f"/chat/agents/{agent['id']}", headers=alice.headers))["is_active"] is True
    )
    create_conversation(http, alice, agent_id=agent["id"])


@pytest.mark.parametrize(
    ("method", "body"), [("GET", None), ("PUT", {"name": "x"}), ("DELETE", None)]
)
def test_missing_agent_is_404(http: httpx.Client, admin: User, method: str, body: Any) -> None:
    response = http.request(method, f"/chat/agents/{MISSING_ID}", json=body, headers=admin.headers)
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize("bad_id", ["0", "abc", str(2**31)])
def test_malformed_agent_id_is_422(http: httpx.Client, alice: User, bad_id: str) -> None:
    assert_error(http.get(f"/chat/agents/{bad_id}", headers=alice.headers), 422)


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "x"}])
def test_agent_list_rejects_bad_paging(
    http: httpx.Client, alice: User, params: dict[str, Any]
) -> None:
    assert_error(http.get("/chat/agents", params=params, headers=alice.headers), 422)
