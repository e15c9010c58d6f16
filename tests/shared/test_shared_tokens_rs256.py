"""RS256 mode: tokens of an external identity provider, checked against its JWKS document."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from shared.errors import Unauthorized
from shared.settings import JWTSettings
from shared.tokens import TokenVerifier

ISSUER = "https://id.example.com"
AUDIENCE = "chat-platform-api"


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(signing_key: rsa.RSAPrivateKey) -> Iterator[str]:
    public_jwk = json.loads(RSAAlgorithm.to_jwk(signing_key.public_key()))
    body = json.dumps({"keys": [{**public_jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()
    thread.join(timeout=5)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "42",
        "role": "user",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return claims


def _verifier(jwks_url: str) -> TokenVerifier:
    return TokenVerifier(
        JWTSettings(algorithm="RS256", jwks_url=jwks_url, issuer=ISSUER, audience=AUDIENCE)
    )


def test_rs256_token_from_the_provider_is_accepted(
    jwks_url: str, signing_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(_claims(), signing_key, algorithm="RS256", headers={"kid": "k1"})
    principal = _verifier(jwks_url).verify(token)
    assert principal.user_id == 42 and principal.role == "user"


def test_rs256_token_signed_by_another_key_is_refused(jwks_url: str) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(_claims(), other, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(Unauthorized):
        _verifier(jwks_url).verify(token)


def test_hs256_token_is_refused_in_rs256_mode(jwks_url: str) -> None:
    # The classic algorithm-confusion attack: an HMAC "signed" with the public key material.
    token = jwt.encode(_claims(), "x" * 64, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(Unauthorized):
        _verifier(jwks_url).verify(token)


def test_rs256_mode_requires_a_jwks_url() -> None:
    with pytest.raises(ValueError, match="JWT_JWKS_URL"):
        JWTSettings(algorithm="RS256", jwks_url=None)
