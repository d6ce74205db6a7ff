"""What JWT verification adds per call over an API key (run by hand, never in the tests).

    .venv/bin/python bench/bench_auth.py

Measures the authenticator itself, RS256 with a cached JWKS key against a named API key,
2000 calls each after a warm-up; the gRPC round trip around it is the same for both.
"""

from __future__ import annotations

import asyncio
import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from execgate.daemon.auth import Authenticator, JwksCache, JwtVerifier
from execgate.daemon.config import AuthConfig

CALLS = 2000


async def main() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "k"}
    config = AuthConfig.model_validate({
        "enabled": True, "jwks_url": "https://idp.example/jwks", "issuer": "https://idp/",
        "audience": "execgate", "api_keys": [{"name": "ci", "key": "k" * 32}]})
    cache = JwksCache("https://idp.example/jwks", 900, 30, fetch=lambda url: {"keys": [jwk]})
    await cache.refresh()
    auth = Authenticator(config, JwtVerifier(config, cache))
    token = jwt.encode({"iss": "https://idp/", "aud": "execgate", "sub": "s",
                        "exp": int(time.time()) + 600}, key, algorithm="RS256",
                       headers={"kid": "k"})
    p50 = {}
    for name, value in (("API key", "k" * 32), ("JWT RS256", token)):
        metadata = [("authorization", f"Bearer {value}")]
        for _ in range(100):
            await auth.authenticate("/execgate.v1.ExecService/Execute", metadata)
        samples = []
        for _ in range(CALLS):
            t = time.perf_counter()
            await auth.authenticate("/execgate.v1.ExecService/Execute", metadata)
            samples.append(time.perf_counter() - t)
        samples.sort()
        p50[name] = samples[CALLS // 2]
        print(f"{name:10s}: p50 {p50[name] * 1e3:.3f} ms  p99 "
              f"{samples[int(CALLS * 0.99)] * 1e3:.3f} ms")
    print(f"JWT adds p50 {(p50['JWT RS256'] - p50['API key']) * 1e3:.3f} ms over an API key")


if __name__ == "__main__":
    asyncio.run(main())
