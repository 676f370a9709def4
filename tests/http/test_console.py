"""The web console's shipped build (``aicm/web/static``): built from the sources in ``web/``, served at ``/``
with the server's public settings, and off with ``web.enabled: false``."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import httpx

from aicm.config import Settings
from aicm.http import console
from aicm.http.console import STATIC, sources_digest

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_build_was_made_from_these_sources() -> None:
    stamp = json.loads((STATIC / "BUILD.json").read_text())
    assert stamp["sources_sha256"] == sources_digest(ROOT / "web"), (
        "aicm/web/static is not the build of web/: run `make web` and commit the result"
    )


def test_the_build_loads_nothing_from_another_host() -> None:
    for path in STATIC.iterdir():
        if path.suffix in {".html", ".css"}:
            text = path.read_text()
            assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path
            assert not re.search(r"url\((['\"]?)(https?:)?//", text), path


async def test_the_console_page_says_which_sign_in_options_the_server_has(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    meta = re.search(r'<meta name="aicm-config" content="([^"]*)"', page.text)
    assert meta is not None
    config = json.loads(html.unescape(meta.group(1)))
    assert set(config) == {"oauthProviders", "refreshCookie", "allowRegistration"}
    assert isinstance(config["oauthProviders"], list)
    asset = re.search(r'src="/assets/([^"]+)"', page.text)
    assert asset is not None
    response = await client.get(f"/assets/{asset.group(1)}")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    for bad in ("/assets/index.html", "/assets/..%2F..%2Fconfig.py", "/assets/missing-abcdefgh.js"):
        assert (await client.get(bad)).status_code == 404, bad


def test_web_enabled_false_serves_no_console_but_graphiql_keeps_its_assets() -> None:
    off = Settings()
    off.web.enabled = False
    assert [route.path for route in console.routes(off)] == ["/assets/{name}"]
    off.graphql.graphiql = False
    assert console.routes(off) == []
    assert [route.path for route in console.routes(Settings())] == ["/assets/{name}", "/"]
