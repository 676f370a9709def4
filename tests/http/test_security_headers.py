"""Security headers on every response, the console's and GraphiQL's CSP, HSTS, and CORS from ``security.cors``."""

from __future__ import annotations

import dataclasses
import re

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aicm.app import build_app
from aicm.config import CORSConfig, HSTSConfig, Settings
from aicm.http.middleware.security_headers import API_CSP, SecurityHeadersMiddleware, cors_options, hsts_value
from tests.conftest import Backend

ALWAYS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/graphql", {"json": {"query": "{ __typename }"}}),
        ("POST", "/graphql", {"content": "x", "headers": {"Content-Type": "text/plain"}}),  # 415
        ("POST", "/graphql", {"json": [{"query": "{ __typename }"}]}),  # 400
        ("GET", "/graphql?query=mutation%20%7B%20logout%20%7D", {}),  # 405
        ("GET", "/health", {}),
        ("GET", "/no-such-page", {}),
    ],
)
async def test_every_response_carries_the_security_headers(
    client: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, object]
) -> None:
    response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
    for name, value in ALWAYS.items():
        assert response.headers[name] == value, (name, response.status_code)
    assert response.headers["content-security-policy"] == API_CSP
    assert "strict-transport-security" not in response.headers  # not configured for TLS here


async def test_graphiql_and_the_console_load_only_their_own_scripts(client: httpx.AsyncClient) -> None:
    for path in ("/graphql", "/"):
        page = await client.get(path, headers={"Accept": "text/html"})
        assert page.status_code == 200, path
        csp = page.headers["content-security-policy"]
        script_src = next(d for d in csp.split("; ") if d.startswith("script-src"))
        assert script_src == "script-src 'self'", path  # no inline script, no other host
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert "https:" not in csp and "unpkg" not in page.text
        scripts = re.findall(r"<script[^>]*>", page.text)
        assert scripts and all('src="/assets/' in tag for tag in scripts), scripts
        assert page.headers["cache-control"] == "no-cache"
        assert page.headers["x-frame-options"] == "DENY"


# --------------------------------------------------------------------------- HSTS


def _tiny(**options: object) -> httpx.AsyncClient:
    async def ok(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok", headers={"X-Frame-Options": "SAMEORIGIN"})

    app = Starlette(routes=[Route("/", ok)], middleware=[Middleware(SecurityHeadersMiddleware, **options)])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://t")


async def test_hsts_is_sent_when_configured_for_tls() -> None:
    value = hsts_value(HSTSConfig(enabled=True, max_age=63072000, include_subdomains=True, preload=True))
    assert value == "max-age=63072000; includeSubDomains; preload"
    async with _tiny(hsts=value) as http:
        response = await http.get("/")
    assert response.headers["strict-transport-security"] == value
    assert hsts_value(HSTSConfig()) is None


async def test_a_header_the_endpoint_set_itself_is_kept() -> None:
    async with _tiny() as http:
        response = await http.get("/")
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers["x-content-type-options"] == "nosniff"


# --------------------------------------------------------------------------- CORS


def _cors_app(backend: Backend, cors: CORSConfig) -> httpx.AsyncClient:
    settings = dataclasses.replace(
        backend.settings, security=dataclasses.replace(backend.settings.security, cors=cors)
    )
    app = build_app(settings)  # a preflight is answered by the middleware: no lifespan needed
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


async def test_cors_allows_only_the_configured_origins(backend: Backend) -> None:
    cors = CORSConfig(allowed_origins=["https://app.example.com"], allow_credentials=True)
    async with _cors_app(backend, cors) as http:
        allowed = await http.options("/graphql", headers=_preflight("https://app.example.com"))
        refused = await http.options("/graphql", headers=_preflight("https://evil.example.net"))
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert allowed.headers["x-content-type-options"] == "nosniff"
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


async def test_a_wildcard_origin_never_goes_with_credentials(backend: Backend) -> None:
    settings = Settings()
    settings.security.cors = CORSConfig(allowed_origins=["*"], allow_credentials=True)  # refused by config
    options = cors_options(settings)
    assert options is not None and options["allow_credentials"] is False
    async with _cors_app(backend, CORSConfig(allowed_origins=["*"], allow_credentials=True)) as http:
        response = await http.options("/graphql", headers=_preflight("https://evil.example.net"))
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


def test_without_allowed_origins_there_is_no_cors() -> None:
    assert cors_options(Settings()) is None


def test_the_csrf_header_is_allowed_cross_origin_in_refresh_cookie_mode() -> None:
    settings = Settings()
    settings.security.cors = CORSConfig(allowed_origins=["https://app.example.com"])
    settings.security.refresh_cookie.enabled = True
    options = cors_options(settings)
    assert options is not None and "X-CSRF-Token" in options["allow_headers"]
    assert "X-CSRF-Token" in options["expose_headers"]
