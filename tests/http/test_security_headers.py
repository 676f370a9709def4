"""Security headers on every response, GraphiQL's nonce-based CSP, HSTS, and CORS from ``security.cors``."""

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
from aicm.http.graphiql import template
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


def _script_nonces(html: str) -> set[str]:
    return set(re.findall(r'<script nonce="([^"]+)"', html))


async def test_graphiql_runs_under_a_nonce_based_csp(client: httpx.AsyncClient) -> None:
    first = await client.get("/graphql", headers={"Accept": "text/html"})
    second = await client.get("/graphql", headers={"Accept": "text/html"})
    assert first.status_code == 200 and "graphiql" in first.text.lower()
    csp = first.headers["content-security-policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce is not None
    script_src = next(d for d in csp.split("; ") if d.startswith("script-src"))
    assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    # every script of the page carries the nonce, and no script runs without one
    assert _script_nonces(first.text) == {nonce.group(1)}
    assert first.text.count("<script") == first.text.count(f'<script nonce="{nonce.group(1)}"')
    # a fresh nonce each time
    assert _script_nonces(second.text) != _script_nonces(first.text)
    assert first.headers["cache-control"] == "no-store"
    assert first.headers["x-frame-options"] == "DENY"


def test_graphiql_never_puts_request_headers_in_its_url_or_storage() -> None:
    html = template()
    assert "React.useState(parameters.headers)" not in html
    assert html.count("delete parameters.headers") == 2  # at load, and whenever the URL is rewritten
    assert "updateURL({ variables" not in html  # variables may carry passwords and tokens
    assert "shouldPersistHeaders: false" in html
    assert 'defaultHeaders["X-CSRF-Token"]' in html and 'Cookies.get("aicm_csrf")' in html


def test_graphiql_template_refuses_a_page_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="GraphiQL page changed"):
        template("<html><script></script></html>")


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
