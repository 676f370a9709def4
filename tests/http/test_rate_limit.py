"""Rate limits: token buckets (in-process and Redis), the client key, sign-in buckets, WebSocket limits."""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import SimpleNamespace

import httpx
import pytest
import websockets
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aicm.config import RateLimitConfig
from aicm.http.middleware.client_ip import ClientIPMiddleware, TrustedProxies
from aicm.http.middleware.rate_limit import RateLimitMiddleware
from aicm.metrics import RATE_LIMIT_EXCEEDED
from aicm.ratelimit import Limit, MemoryLimiter, RateLimits, RedisLimiter, client_key
from tests.conftest import require_services
from tests.factories import PASSWORD, make_user, token_for
from tests.graphql import assert_error
from tests.http.conftest import TIGHT
from tests.ws import GraphQLWS

LOGIN = "mutation($input: LoginInput!) { login(input: $input) { accessToken } }"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def exceeded(scope: str) -> float:
    return RATE_LIMIT_EXCEEDED.labels(scope=scope)._value.get()


# --------------------------------------------------------------------------- the bucket


async def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = Clock()
    limiter, limit = MemoryLimiter(clock=clock), Limit(rate=2.0, burst=3)
    assert [(await limiter.hit("k", limit)).allowed for _ in range(4)] == [True, True, True, False]
    refused = await limiter.hit("k", limit)
    assert refused.retry_after == pytest.approx(0.5) and refused.retry_after_header == "1"
    clock.now += 0.5
    assert (await limiter.hit("k", limit)).allowed
    assert not (await limiter.hit("k", limit)).allowed
    clock.now += 100  # never more than the burst
    assert [(await limiter.hit("k", limit)).allowed for _ in range(4)] == [True, True, True, False]


async def test_buckets_are_per_key_and_bounded_in_number() -> None:
    limiter, limit = MemoryLimiter(max_keys=2, clock=Clock()), Limit(rate=1.0, burst=1)
    assert (await limiter.hit("a", limit)).allowed and (await limiter.hit("b", limit)).allowed
    assert not (await limiter.hit("a", limit)).allowed
    await limiter.hit("c", limit)
    assert len(limiter) == 2


async def test_the_redis_bucket_is_atomic_across_concurrent_hits() -> None:
    _, redis_url = require_services()
    redis = Redis.from_url(redis_url)
    prefix = f"aicm-test-{uuid.uuid4().hex}:"
    try:
        limiter, limit = RedisLimiter(redis, prefix=prefix), Limit(rate=0.001, burst=10)
        decisions = await asyncio.gather(*(limiter.hit("k", limit) for _ in range(40)))
        assert sum(d.allowed for d in decisions) == 10
        refused = next(d for d in decisions if not d.allowed)
        assert refused.retry_after > 100
        assert 0 < await redis.pttl(f"{prefix}rl:k") <= 10_000_000  # the refill time, over the idle window
    finally:
        await redis.delete(f"{prefix}rl:k")
        await redis.aclose()


async def test_the_redis_limiter_allows_when_redis_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        decision = await RedisLimiter(redis).hit("k", Limit(rate=1.0, burst=1))
    finally:
        await redis.aclose()
    assert decision.allowed
    assert any(r.getMessage().startswith("rate limiter store unreachable") for r in caplog.records)


def test_the_client_is_the_user_when_signed_in_else_the_ip() -> None:
    assert client_key(user_id=7, ip="203.0.113.1") == "user:7"
    assert client_key(user_id=None, ip="203.0.113.1") == "ip:203.0.113.1"


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        ([], "203.0.113.5", "198.51.100.1", "203.0.113.5"),  # nobody trusted: the header is ignored
        (["10.0.0.0/8"], "203.0.113.5", "198.51.100.1", "203.0.113.5"),  # an untrusted peer may not claim
        (["10.0.0.0/8"], "10.0.0.2", "198.51.100.1", "198.51.100.1"),
        (["10.0.0.0/8"], "10.0.0.2", "198.51.100.9, 198.51.100.1, 10.0.0.7", "198.51.100.1"),  # spoofed left
        (["10.0.0.0/8"], "10.0.0.2", "garbage, 198.51.100.1", "198.51.100.1"),
        (["10.0.0.0/8"], "10.0.0.2", "10.0.0.3, 10.0.0.4", "10.0.0.3"),
        (["*"], "192.0.2.1", "2001:db8::1", "2001:db8::1"),
        (["::1"], "::1", "[2001:db8::2]:443", "2001:db8::2"),
        (["10.0.0.0/8"], "10.0.0.2", "198.51.100.1:5555", "198.51.100.1"),
    ],
)
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    trusted: list[str], peer: str, forwarded: str, client: str
) -> None:
    assert TrustedProxies(trusted).client_ip(peer, forwarded) == client


# --------------------------------------------------------------------------- a tiny app: the middleware alone


def tiny_app(limits: RateLimits, trusted: list[str]) -> Starlette:
    async def ok(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/", ok), Route("/health", ok)],
        middleware=[
            Middleware(ClientIPMiddleware, trusted_proxies=trusted),
            Middleware(RateLimitMiddleware, exempt_paths={"/health"}),
        ],
    )
    app.state.runtime = SimpleNamespace(rate_limits=limits, tokens=None)
    return app


async def _statuses(app: Starlette, peer: str, headers: list[dict[str, str]], path: str = "/") -> list[int]:
    transport = httpx.ASGITransport(app=app, client=(peer, 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return [(await http.get(path, headers=h)).status_code for h in headers]


async def test_a_spoofed_forwarded_for_cannot_buy_a_fresh_bucket() -> None:
    limits = RateLimits(TIGHT, MemoryLimiter())
    spoofed = [{"X-Forwarded-For": f"198.51.100.{i}"} for i in range(5)]
    assert await _statuses(tiny_app(limits, ["10.0.0.0/8"]), "203.0.113.5", spoofed) == [
        200,
        200,
        200,
        429,
        429,
    ]
    # behind a trusted proxy each client has its own bucket
    assert await _statuses(tiny_app(limits, ["10.0.0.0/8"]), "10.0.0.1", spoofed) == [200] * 5


async def test_exempt_paths_and_disabled_limits_are_not_counted() -> None:
    limits = RateLimits(TIGHT, MemoryLimiter())
    assert await _statuses(tiny_app(limits, []), "203.0.113.6", [{}] * 5, "/health") == [200] * 5
    off = RateLimits(RateLimitConfig(enabled=False, requests_per_second=0.01, burst_size=1), MemoryLimiter())
    assert await _statuses(tiny_app(off, []), "203.0.113.6", [{}] * 5) == [200] * 5


# --------------------------------------------------------------------------- the app, with tight limits


def client_from(app: Starlette, ip: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(ip, 40100)), base_url="http://testserver"
    )


async def test_over_the_limit_answers_429_with_retry_after(
    app: Starlette, tight: RateLimits, caplog: pytest.LogCaptureFixture
) -> None:
    before = exceeded("http")
    async with client_from(app, "192.0.2.10") as http:
        statuses = [
            (await http.post("/graphql", json={"query": "{ __typename }"})).status_code for _ in range(3)
        ]
        response = await http.post("/graphql", json={"query": "{ __typename }"})
    assert statuses == [200, 200, 200]
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    error = assert_error(response.json(), "RATE_LIMITED")
    assert error["extensions"]["retryAfter"] >= 1
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # the security headers are outside
    assert exceeded("http") == before + 1
    lines = [r for r in caplog.records if getattr(r, "event", None) == "rate_limit_exceeded"]
    assert lines and lines[-1].levelno == logging.WARNING and getattr(lines[-1], "bucket", None) == "client"


async def test_a_signed_in_user_has_a_bucket_of_their_own(app: Starlette, tight: RateLimits) -> None:
    token = await token_for(app, await make_user())
    headers = {"Authorization": f"Bearer {token}"}
    async with client_from(app, "192.0.2.11") as http:
        signed_in = [
            (await http.post("/graphql", json={"query": "{ me { id } }"}, headers=headers)).status_code
            for _ in range(4)
        ]
        anonymous = (await http.post("/graphql", json={"query": "{ __typename }"})).status_code
    assert signed_in == [200, 200, 200, 429]
    assert anonymous == 200  # the same IP, another bucket


async def test_login_attempts_have_a_stricter_bucket_per_ip(app: Starlette, tight: RateLimits) -> None:
    user = await make_user()
    variables = {"input": {"email": user.email, "password": PASSWORD}}
    before = exceeded("auth")
    async with client_from(app, "192.0.2.12") as http:
        first = [await http.post("/graphql", json={"query": LOGIN, "variables": variables}) for _ in range(2)]
        refused = await http.post("/graphql", json={"query": LOGIN, "variables": variables})
    assert [r.status_code for r in first] == [200, 200] and all("errors" not in r.json() for r in first)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert assert_error(refused.json(), "RATE_LIMITED")["extensions"]["retryAfter"] >= 1
    assert exceeded("auth") == before + 1


async def test_login_attempts_for_one_email_are_limited_across_ips(app: Starlette, tight: RateLimits) -> None:
    variables = {"input": {"email": "Target@Example.com", "password": "wrong-password-123"}}
    codes = []
    for i in range(3):
        async with client_from(app, f"192.0.2.{20 + i}") as http:
            response = await http.post("/graphql", json={"query": LOGIN, "variables": variables})
            codes.append(response.json()["errors"][0]["extensions"]["code"])
    assert codes == ["UNAUTHENTICATED", "UNAUTHENTICATED", "RATE_LIMITED"]


async def test_aliases_cannot_multiply_sign_in_attempts(app: Starlette, tight: RateLimits) -> None:
    document = (
        "mutation { "
        + " ".join(
            f'a{i}: login(input: {{email: "x{i}@example.com", password: "guess-{i}-password"}}) {{ accessToken }}'
            for i in range(3)
        )
        + " }"
    )
    async with client_from(app, "192.0.2.30") as http:
        response = await http.post("/graphql", json={"query": document})
    assert response.status_code == 429
    assert assert_error(response.json(), "RATE_LIMITED")


async def test_oauth_routes_draw_from_the_sign_in_bucket(app: Starlette, tight: RateLimits) -> None:
    async with client_from(app, "192.0.2.31") as http:
        statuses = [(await http.get("/auth/oauth/nope/login")).status_code for _ in range(3)]
    assert 429 not in statuses[:2] and statuses[2] == 429


async def test_websocket_connects_are_limited(app: Starlette, tight: RateLimits, server_url: str) -> None:
    before = exceeded("websocket")
    opened = []
    try:
        for _ in range(3):
            opened.append(await GraphQLWS.open(server_url, init=False))
        with pytest.raises(websockets.InvalidStatus) as refused:
            await GraphQLWS.open(server_url, init=False)
    finally:
        for ws in opened:
            await ws.close()
    assert refused.value.response.status_code == 429
    assert refused.value.response.headers["Retry-After"]
    assert exceeded("websocket") == before + 1


async def test_subscribe_messages_are_limited(app: Starlette, tight: RateLimits, server_url: str) -> None:
    token = await token_for(app, await make_user())
    ws = await (await GraphQLWS.open(server_url, token)).acked()
    limited = None
    try:
        query = 'subscription { taskUpdates(taskId: "VGFzazox") { id } }'
        for op_id in ("1", "2", "3", "4"):  # the user's bucket holds 3
            await ws.subscribe(op_id, query)
        for _ in range(8):
            message = await ws.receive()
            if message.get("id") == "4":
                limited = message
                break
    finally:
        await ws.close()
    assert limited is not None and limited["type"] == "error"
    assert limited["payload"][0]["extensions"]["code"] == "RATE_LIMITED"
