"""Accounts and tokens through the gateway's public port: /auth/register, /auth/login,
/auth/token (OAuth2 password form), /auth/me, and the configured administrator."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import httpx
import jwt
import pytest

from tests.gateway.support import AUDIENCE, ISSUER, assert_error_envelope, client_from_new_address
from tests.harness import Stack

UTC_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def gw(stack: Stack) -> Iterator[httpx.Client]:
    """A client on the main gateway from an address of its own (its own auth rate-limit bucket)."""
    with client_from_new_address(stack.gateway_url) as client:
        yield client


def _credentials() -> dict[str, str]:
    suffix = secrets.token_hex(6)
    return {
        "email": f"auth-{suffix}@example.com",
        "password": f"Pw-{secrets.token_urlsafe(10)}-7b",
        "name": f"Auth {suffix}",
    }


def _register(gw: httpx.Client, body: dict[str, str]) -> dict:
    response = gw.post("/auth/register", json=body)
    assert response.status_code == 201, response.text
    envelope = response.json()
    assert envelope["success"] is True, envelope
    return envelope["data"]


# --- register --------------------------------------------------------------------------------


def test_register_answers_201_with_the_user_in_the_envelope(gw: httpx.Client) -> None:
    body = _credentials()
    response = gw.post("/auth/register", json=body)
    assert response.status_code == 201, response.text
    envelope = response.json()
    assert envelope["success"] is True
    assert isinstance(envelope["message"], str) and envelope["message"]
    user = envelope["data"]
    assert isinstance(user["id"], int) and user["id"] > 0
    assert user["email"] == body["email"]
    assert user["name"] == body["name"]
    assert user["role"] == "user"
    assert UTC_TIMESTAMP.match(user["created_at"]), user["created_at"]
    leaked = {"password", "password_hash"} & set(user)
    assert not leaked, f"the password must never be echoed: {user}"


def test_register_lowercases_the_email(gw: httpx.Client) -> None:
    body = _credentials()
    body["email"] = body["email"].replace("auth-", "Auth-MiXeD-")
    user = _register(gw, body)
    assert user["email"] == body["email"].lower()


def test_register_duplicate_email_differing_only_in_case_is_409(gw: httpx.Client) -> None:
    body = _credentials()
    _register(gw, body)
    again = {**body, "email": body["email"].upper(), "name": "Someone else"}
    assert_error_envelope(gw.post("/auth/register", json=again), 409, "conflict")
    # and the exact same address too
    assert_error_envelope(gw.post("/auth/register", json=body), 409, "conflict")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"email": ""}, "email"),
        ({"password": "short7!"}, "password"),  # 7 characters: minimum is 8
        ({"name": ""}, "name"),
        ({"role": "admin"}, "role"),  # unknown fields are refused, not ignored
        ({"is_admin": True}, "is_admin"),
    ],
    ids=["bad-email", "empty-email", "short-password", "empty-name", "extra-role", "extra-field"],
)
def test_register_invalid_body_is_422_envelope(
    gw: httpx.Client, change: dict[str, object], field: str
) -> None:
    body: dict[str, object] = {**_credentials(), **change}
    envelope = assert_error_envelope(gw.post("/auth/register", json=body), 422, "validation_error")
    details = envelope["error"]["details"]
    assert isinstance(details, list) and details, envelope
    assert any(field in entry["loc"] for entry in details), envelope


def test_register_missing_field_is_422_envelope(gw: httpx.Client) -> None:
    body = _credentials()
    del body["password"]
    assert_error_envelope(gw.post("/auth/register", json=body), 422, "validation_error")


def test_register_extra_role_field_never_creates_an_admin(gw: httpx.Client) -> None:
    body = {**_credentials(), "role": "admin"}
    gw.post("/auth/register", json=body)
    # The refused sign-up must not have created the account at all.
    login = gw.post("/auth/login", json={"email": body["email"], "password": body["password"]})
    assert_error_envelope(login, 401, "unauthorized")


# --- login -----------------------------------------------------------------------------------


def test_login_returns_a_bearer_token_with_the_registered_claims(
    gw: httpx.Client, stack: Stack
) -> None:
    body = _credentials()
    user = _register(gw, body)
    response = gw.post("/auth/login", json={"email": body["email"], "password": body["password"]})
    assert response.status_code == 200, response.text
    envelope = response.json()
    assert envelope["success"] is True
    data = envelope["data"]
    assert data["token_type"] == "bearer"
    assert isinstance(data["expires_in"], int) and data["expires_in"] > 0
    token = data["access_token"]
    assert isinstance(token, str) and token.count(".") == 2

    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(
        token, stack.jwt_secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER
    )
    assert claims["sub"] == str(user["id"])
    assert claims["role"] == "user"
    assert claims["exp"] - claims["iat"] == data["expires_in"]
    assert claims.get("jti"), claims


def test_login_email_is_case_insensitive(gw: httpx.Client) -> None:
    body = _credentials()
    _register(gw, body)
    response = gw.post(
        "/auth/login", json={"email": body["email"].upper(), "password": body["password"]}
    )
    assert response.status_code == 200, response.text


def test_each_login_issues_a_distinct_token_id(gw: httpx.Client) -> None:
    body = _credentials()
    _register(gw, body)
    credentials = {"email": body["email"], "password": body["password"]}
    first = gw.post("/auth/login", json=credentials).json()["data"]["access_token"]
    second = gw.post("/auth/login", json=credentials).json()["data"]["access_token"]
    jti = [jwt.decode(t, options={"verify_signature": False})["jti"] for t in (first, second)]
    assert jti[0] != jti[1]


def test_wrong_password_and_unknown_email_are_the_same_401(gw: httpx.Client) -> None:
    body = _credentials()
    _register(gw, body)
    wrong_password = gw.post(
        "/auth/login", json={"email": body["email"], "password": body["password"] + "x"}
    )
    unknown_email = gw.post(
        "/auth/login", json={"email": "nobody-" + body["email"], "password": body["password"]}
    )
    first = assert_error_envelope(wrong_password, 401, "unauthorized")
    second = assert_error_envelope(unknown_email, 401, "unauthorized")
    # Nothing in the answer tells which addresses have accounts.
    assert first["message"] == second["message"]
    assert first["error"] == second["error"]


def test_login_with_invalid_body_is_422_envelope(gw: httpx.Client) -> None:
    response = gw.post("/auth/login", json={"email": "someone@example.com"})
    assert_error_envelope(response, 422, "validation_error")


# --- /auth/token (OAuth2 password form) ------------------------------------------------------


def test_oauth2_token_endpoint_returns_a_bare_token_response(
    gw: httpx.Client, stack: Stack
) -> None:
    body = _credentials()
    user = _register(gw, body)
    response = gw.post(
        "/auth/token", data={"username": body["email"], "password": body["password"]}
    )
    assert response.status_code == 200, response.text
    payload = response.json()
    # RFC 6749 §5.1: the token response itself, not wrapped in the envelope.
    assert "success" not in payload and "data" not in payload, payload
    assert payload["token_type"] == "bearer"
    assert isinstance(payload["expires_in"], int) and payload["expires_in"] > 0
    assert "no-store" in response.headers.get("cache-control", "")
    claims = jwt.decode(
        payload["access_token"],
        stack.jwt_secret,
        algorithms=["HS256"],
        audience=AUDIENCE,
        issuer=ISSUER,
    )
    assert claims["sub"] == str(user["id"])
    me = gw.get("/auth/me", headers={"Authorization": f"Bearer {payload['access_token']}"})
    assert me.status_code == 200, me.text
    assert me.json()["data"]["id"] == user["id"]


@pytest.mark.parametrize("wrong", ["password", "username"])
def test_oauth2_token_endpoint_with_bad_credentials_is_401(gw: httpx.Client, wrong: str) -> None:
    body = _credentials()
    _register(gw, body)
    form = {"username": body["email"], "password": body["password"]}
    form[wrong] = "nobody-" + form[wrong] if wrong == "username" else form[wrong] + "x"
    response = gw.post("/auth/token", data=form)
    assert_error_envelope(response, 401, "unauthorized")


def test_oauth2_token_endpoint_without_the_form_is_422(gw: httpx.Client) -> None:
    assert_error_envelope(gw.post("/auth/token", data={}), 422, "validation_error")


# --- /auth/me --------------------------------------------------------------------------------


def test_me_returns_the_callers_own_profile(gw: httpx.Client) -> None:
    first_body, second_body = _credentials(), _credentials()
    first, second = _register(gw, first_body), _register(gw, second_body)
    for body, user in ((first_body, first), (second_body, second)):
        login = gw.post(
            "/auth/login", json={"email": body["email"], "password": body["password"]}
        ).json()["data"]
        response = gw.get("/auth/me", headers={"Authorization": f"Bearer {login['access_token']}"})
        assert response.status_code == 200, response.text
        envelope = response.json()
        assert envelope["success"] is True
        assert envelope["data"]["id"] == user["id"]
        assert envelope["data"]["email"] == body["email"]
        assert envelope["data"]["role"] == "user"
        assert "password_hash" not in envelope["data"]


def test_me_without_a_token_is_401_with_a_bearer_challenge(gw: httpx.Client) -> None:
    response = gw.get("/auth/me")
    assert_error_envelope(response, 401, "unauthorized")
    assert response.headers.get("www-authenticate", "").lower().startswith("bearer")


# --- administrator ---------------------------------------------------------------------------


def test_configured_admin_logs_in_with_the_admin_role(gw: httpx.Client, stack: Stack) -> None:
    response = gw.post(
        "/auth/login", json={"email": stack.admin_email, "password": stack.admin_password}
    )
    assert response.status_code == 200, response.text
    token = response.json()["data"]["access_token"]
    claims = jwt.decode(
        token, stack.jwt_secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER
    )
    assert claims["role"] == "admin"
    me = gw.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200, me.text
    assert me.json()["data"]["role"] == "admin"
    assert me.json()["data"]["email"] == stack.admin_email.lower()


def test_admin_with_a_wrong_password_is_401(gw: httpx.Client, stack: Stack) -> None:
    response = gw.post(
        "/auth/login", json={"email": stack.admin_email, "password": stack.admin_password + "x"}
    )
    assert_error_envelope(response, 401, "unauthorized")


def test_nobody_can_register_the_admins_address(gw: httpx.Client, stack: Stack) -> None:
    body = {**_credentials(), "email": stack.admin_email.upper()}
    assert_error_envelope(gw.post("/auth/register", json=body), 409, "conflict")
