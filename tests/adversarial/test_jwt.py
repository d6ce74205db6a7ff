"""JWT authentication against a real JWKS endpoint the test serves on loopback.

Every forged, stale or misdirected token must fail with UNAUTHENTICATED and leave the daemon
serving; the key set is fetched once per cooldown at most, however many unknown kids arrive.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from execgate.client import AuthenticationError, Client, PermissionDeniedError, RPCError
from tests.conftest import Daemon, start_daemon

ISSUER = "https://issuer.test/"
AUDIENCE = "execgate-test"


class Jwks:
    """A JWKS endpoint: serves ``keys``, counts fetches, can go down."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.down = False
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                if jwks.down:
                    self.send_error(503)
                    return
                body = json.dumps({"keys": jwks.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Signer:
    """An identity provider's key, published in the JWKS."""

    def __init__(self, kid: str, kind: str = "rsa") -> None:
        self.kid = kid
        if kind == "rsa":
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.algorithm = "RS256"
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.algorithm = "ES256"
        self.public = self.private.public_key()
        algo = jwt.algorithms.RSAAlgorithm if kind == "rsa" else jwt.algorithms.ECAlgorithm
        self.jwk = {**json.loads(algo.to_jwk(self.public)), "kid": kid, "use": "sig"}
        self.public_pem = self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now,
                  "exp": now + 300, **overrides}
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private, algorithm=self.algorithm,
                          headers={"kid": self.kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_token(secret: bytes, kid: str) -> str:
    """HS256 signed with ``secret``: the classic key-confusion forgery."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory",
                               "exp": now + 300}).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


POLICY = """\
version: "2"
tools:
  shell: {type: command, allowed_commands: [echo]}
agents:
  dev: {tools: [shell]}
  ops:
    tools: [shell]
    allow: [{claim: {roles: admin}}, {subject: ci}]
server:
  auth:
    enabled: true
    jwks_url: ${JWKS_URL}
    issuer: https://issuer.test/
    audience: execgate-test
    jwks_cooldown: ${COOLDOWN:-1h}
    api_keys: [{name: ci, key: "${TEST_API_KEY}"}]
    max_failed_attempts: 100000  # every test here fails on purpose, all from 127.0.0.1
sandbox: {cgroup: optional}
logger: {level: info, format: json}
"""


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[Jwks, Signer, Signer]]:
    jwks = Jwks()
    rsa_key, ec_key = Signer("rsa-1"), Signer("ec-1", "ec")
    jwks.keys = [rsa_key.jwk, ec_key.jwk]
    yield jwks, rsa_key, ec_key
    jwks.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory,
           idp: tuple[Jwks, Signer, Signer]) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("jwt"), POLICY, env={"JWKS_URL": idp[0].url})
    yield d
    d.stop()


def call(daemon: Daemon, token: str, agent: str = "dev") -> bytes:
    with daemon.client(token=token) as c:
        return c.run(["echo", "ok"], agent=agent).stdout


def refused(daemon: Daemon, token: str) -> str:
    with pytest.raises(AuthenticationError) as info:
        call(daemon, token)
    assert call(daemon, "test-key-0123456789") == b"ok\n"  # still serving
    return info.value.message


def test_a_valid_rsa_token_authenticates(daemon: Daemon, idp: tuple[Jwks, Signer, Signer]) -> None:
    assert call(daemon, idp[1].token()) == b"ok\n"


def test_a_valid_ec_token_authenticates(daemon: Daemon, idp: tuple[Jwks, Signer, Signer]) -> None:
    assert call(daemon, idp[2].token()) == b"ok\n"


def test_the_subject_is_the_tokens_sub(daemon: Daemon, idp: tuple[Jwks, Signer, Signer]) -> None:
    subject = "bob-" + uuid.uuid4().hex
    call(daemon, idp[1].token(sub=subject))
    assert daemon.audit("run.started", subject=subject)[0]["auth"] == "jwt"


def test_alg_none_is_refused(daemon: Daemon) -> None:
    now = int(time.time())
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60}, None,
                       algorithm="none", headers={"kid": "rsa-1"})
    assert "algorithm" in refused(daemon, token)


def test_hs256_signed_with_the_public_key_pem_is_refused(
        daemon: Daemon, idp: tuple[Jwks, Signer, Signer]) -> None:
    assert "algorithm" in refused(daemon, hmac_token(idp[1].public_pem, "rsa-1"))


def test_hs256_signed_with_the_public_jwk_json_is_refused(
        daemon: Daemon, idp: tuple[Jwks, Signer, Signer]) -> None:
    assert "algorithm" in refused(daemon, hmac_token(json.dumps(idp[1].jwk).encode(), "rsa-1"))


@pytest.mark.parametrize("issuer", ["https://issuer.test", "https://issuer.test/x",
                                    "https://evil.test/https://issuer.test/",
                                    "https://issuer.test/.evil", "HTTPS://ISSUER.TEST/"])
def test_a_wrong_prefixed_or_suffixed_issuer_is_refused(
        daemon: Daemon, idp: tuple[Jwks, Signer, Signer], issuer: str) -> None:
    assert "issuer" in refused(daemon, idp[1].token(iss=issuer))


@pytest.mark.parametrize("audience", [None, "other-api", ["other-api"], "execgate-test-x"])
def test_a_missing_or_foreign_audience_is_refused(
        daemon: Daemon, idp: tuple[Jwks, Signer, Signer], audience: object) -> None:
    refused(daemon, idp[1].token(aud=audience))


def test_a_token_without_exp_is_refused(daemon: Daemon,
                                        idp: tuple[Jwks, Signer, Signer]) -> None:
    assert "exp" in refused(daemon, idp[1].token(exp=None))


def test_a_token_expired_beyond_the_leeway_is_refused(
        daemon: Daemon, idp: tuple[Jwks, Signer, Signer]) -> None:
    assert "expired" in refused(daemon, idp[1].token(exp=int(time.time()) - 120))


def test_a_token_expired_within_the_leeway_is_accepted(
        daemon: Daemon, idp: tuple[Jwks, Signer, Signer]) -> None:
    assert call(daemon, idp[1].token(exp=int(time.time()) - 5)) == b"ok\n"


def test_a_token_not_yet_valid_is_refused(daemon: Daemon,
                                          idp: tuple[Jwks, Signer, Signer]) -> None:
    assert "nbf" in refused(daemon, idp[1].token(nbf=int(time.time()) + 600))


def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(daemon: Daemon) -> None:
    impostor = Signer("rsa-1")
    assert "invalid" in refused(daemon, impostor.token())


def test_a_flood_of_unknown_kids_fetches_the_jwks_at_most_once(
        daemon: Daemon, idp: tuple[Jwks, Signer, Signer]) -> None:
    before = idp[0].fetches
    threads = [threading.Thread(target=lambda: refused(daemon, Signer(f"x{uuid.uuid4().hex}")
                                                       .token())) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert idp[0].fetches - before <= 1


def test_a_64_kib_kid_is_refused_before_any_work(daemon: Daemon,
                                                 idp: tuple[Jwks, Signer, Signer]) -> None:
    before = idp[0].fetches
    token = jwt.encode({"sub": "x"}, idp[1].private, algorithm="RS256",
                       headers={"kid": "k" * 65536})
    with pytest.raises(RPCError) as info:
        call(daemon, token)
    assert info.value.status.name in ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "INTERNAL")
    assert idp[0].fetches == before
    assert call(daemon, "test-key-0123456789") == b"ok\n"


def test_a_megabyte_authorization_header_is_refused(daemon: Daemon) -> None:
    with pytest.raises(RPCError) as info:  # gRPC itself refuses metadata this large
        call(daemon, "a" * 1_000_000)
    assert info.value.status.name in ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "INTERNAL")
    assert call(daemon, "test-key-0123456789") == b"ok\n"


def test_other_metadata_cannot_claim_another_identity(daemon: Daemon) -> None:
    with Client(daemon.target, token="test-key-0123456789") as c:
        c._credentials = (*c._credentials, ("x-subject", "admin"), ("sub", "admin"))
        run_id = c.run(["echo", "x"], agent="dev").run_id
    assert daemon.audit("run.started", run_id=run_id)[0]["subject"] == "ci"


def test_an_agents_allow_rule_admits_a_matching_claim(
        daemon: Daemon, idp: tuple[Jwks, Signer, Signer]) -> None:
    assert call(daemon, idp[1].token(roles=["admin"]), agent="ops") == b"ok\n"


def test_an_agents_allow_rule_refuses_others_with_permission_denied(
        daemon: Daemon, idp: tuple[Jwks, Signer, Signer]) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        call(daemon, idp[1].token(roles=["dev"]), agent="ops")
    assert info.value.rule == "agents.ops.allow"
    assert daemon.audit("call.denied", rule="agents.ops.allow", subject="alice")


def test_an_agents_allow_rule_admits_a_named_api_key(daemon: Daemon) -> None:
    assert call(daemon, "test-key-0123456789", agent="ops") == b"ok\n"


def test_keys_survive_the_jwks_going_down_and_rotation_needs_no_restart(tmp_path: Path) -> None:
    jwks = Jwks()
    old, new = Signer("old"), Signer("new")
    jwks.keys = [old.jwk]
    d = start_daemon(tmp_path, POLICY, env={"JWKS_URL": jwks.url, "COOLDOWN": "1ms"})
    try:
        assert call(d, old.token()) == b"ok\n"
        jwks.down = True
        with pytest.raises(AuthenticationError):
            call(d, new.token())  # unknown kid, refetch fails: refused, old keys kept
        assert call(d, old.token()) == b"ok\n"
        jwks.down = False
        jwks.keys = [new.jwk]
        assert call(d, new.token()) == b"ok\n"
    finally:
        d.stop()
        jwks.close()
