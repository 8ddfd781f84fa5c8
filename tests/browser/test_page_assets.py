"""The page and its assets are served from our own origin, with nothing fetched elsewhere."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from query_api import page

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "query_api" / "static"


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(page.router)
    return TestClient(app)


def test_page_is_served_at_root_with_a_strict_csp(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert '<script src="static/app.js" type="module">' in response.text


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/static/app.js", "text/javascript"),
        ("/static/format.js", "text/javascript"),
        ("/static/style.css", "text/css"),
        ("/static/vendor/chart.umd.min.js", "text/javascript"),
        ("/static/favicon.svg", "image/svg+xml"),
    ],
)
def test_assets_are_served_with_their_types(client: TestClient, path: str, media_type: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = response.headers["etag"]
    assert client.get(path, headers={"If-None-Match": etag}).status_code == 304


@pytest.mark.parametrize(
    "path", ["/static/../page.py", "/static/%2e%2e/page.py", "/static/nope.js", "/static/"]
)
def test_nothing_else_is_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_no_asset_is_loaded_from_another_origin() -> None:
    html = (STATIC / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not re.match(r"^(?:[a-z]+:)?//", ref), f"{ref} is not on our origin"
    for js in ("app.js", "format.js"):
        assert not re.search(r"https?://", (STATIC / js).read_text()), js


def test_vendored_chart_js_is_the_locked_version() -> None:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/chart.js"]["version"]
    header = (STATIC / "vendor" / "chart.umd.min.js").read_text()[:200]
    assert f"Chart.js v{locked}" in header, "run `make vendor` after changing package.json"
    assert "MIT" in header and (STATIC / "vendor" / "chart.js.LICENSE.md").is_file()


def test_formatters_under_node() -> None:
    """format.js (compact tokens, money, durations, relative time) under node's test runner."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the formatters' unit tests need node >= 18")
    result = subprocess.run(
        [node, "--test", str(Path(__file__).with_name("format.test.js"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^# fail 0$", result.stdout, re.M), result.stdout
