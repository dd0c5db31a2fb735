"""Browsers calling the public device endpoints from another origin (CORS), over real HTTP."""

from __future__ import annotations

import httpx
import pytest
from xiaozhi_trio.pipeline.backends import ConfigError

from xiaozhi_trio.plugins.testing.fakes.ops_server import make_services, running_ops

PAGE = "http://192.168.1.20:8080"
MAC = "a4:cf:12:34:56:78"
BROWSER_HEADERS = {
    "Device-Id": MAC,
    "Client-Id": "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5",
    "Content-Type": "application/json",
    "Origin": PAGE,
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36",
}


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XIAOZHI_TRIO_SECRET", raising=False)


def preflight_headers(method: str = "POST", origin: str = PAGE) -> dict[str, str]:
    """What Chromium sends before a POST with the firmware's custom headers."""
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "client-id,content-type,device-id"}


async def test_browser_check_in_passes_the_preflight_and_reads_the_answer(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base), httpx.AsyncClient() as client:
        for path, methods in (("/xiaozhi/ota/", "GET, HEAD, OPTIONS, POST"), ("/xiaozhi/ota/activate", "OPTIONS, POST")):
            answer = await client.options(f"{base}{path}", headers=preflight_headers())
            assert answer.status_code == 204, path
            assert answer.headers["access-control-allow-origin"] == "*"
            assert answer.headers["access-control-allow-methods"] == methods
            allowed = {h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")}
            assert {"device-id", "client-id", "content-type", "authorization"} <= allowed
            assert "content-length" not in answer.headers and answer.content == b""
        check_in = await client.post(f"{base}/xiaozhi/ota/", headers=BROWSER_HEADERS, content=b"{}")
        assert check_in.status_code == 200 and "websocket" in check_in.json()
        assert check_in.headers["access-control-allow-origin"] == "*"
        activate = await client.post(f"{base}/xiaozhi/ota/activate", headers=BROWSER_HEADERS, content=b"{}")
        assert activate.status_code == 202 and activate.headers["access-control-allow-origin"] == "*"
        # Errors are readable by the page too (it can show why).
        refused = await client.post(f"{base}/xiaozhi/ota/", headers={**BROWSER_HEADERS, "Device-Id": ""}, content=b"{}")
        assert refused.status_code == 400 and refused.headers["access-control-allow-origin"] == "*"
        health = await client.get(f"{base}/healthz", headers={"Origin": PAGE})
        assert health.status_code == 200 and health.headers["access-control-allow-origin"] == "*"
        assert services.metrics.http_requests.get(route="ota", status="204") == 1


async def test_requests_without_an_origin_carry_no_cors_headers(tmp_path) -> None:
    async with running_ops(tmp_path) as (_services, base), httpx.AsyncClient() as client:
        firmware_like = {k: v for k, v in BROWSER_HEADERS.items() if k != "Origin"}
        answer = await client.post(f"{base}/xiaozhi/ota/", headers=firmware_like, content=b"{}")
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
        plain = await client.options(f"{base}/xiaozhi/ota/")
        assert plain.status_code == 204 and plain.headers["allow"] == "GET, HEAD, OPTIONS, POST"
        assert "access-control-allow-origin" not in plain.headers


async def test_private_endpoints_are_not_opened_to_other_origins(tmp_path) -> None:
    async with running_ops(tmp_path) as (_services, base), httpx.AsyncClient() as client:
        for path in ("/metrics", "/xiaozhi/ota/firmware/board/1.0.0.bin"):
            answer = await client.options(f"{base}{path}", headers=preflight_headers("GET"))
            assert answer.status_code == 405, path
            assert "access-control-allow-origin" not in answer.headers
        metrics = await client.get(f"{base}/metrics", headers={"Origin": PAGE})
        assert metrics.status_code == 200 and "access-control-allow-origin" not in metrics.headers


async def test_configured_origins_are_echoed_and_others_refused(tmp_path) -> None:
    tables = {"ota": {"cors_origins": [PAGE, "https://owner.example.org/"]}}
    async with running_ops(tmp_path, tables) as (_services, base), httpx.AsyncClient() as client:
        answer = await client.options(f"{base}/xiaozhi/ota/", headers=preflight_headers(origin="https://Owner.example.org"))
        assert answer.status_code == 204
        assert answer.headers["access-control-allow-origin"] == "https://Owner.example.org"
        assert answer.headers["vary"] == "Origin"
        check_in = await client.post(f"{base}/xiaozhi/ota/", headers=BROWSER_HEADERS, content=b"{}")
        assert check_in.headers["access-control-allow-origin"] == PAGE and check_in.headers["vary"] == "Origin"

        stranger = "http://evil.example"
        refused = await client.options(f"{base}/xiaozhi/ota/", headers=preflight_headers(origin=stranger))
        assert refused.status_code == 403 and "cors_origins" in refused.json()["error"]
        assert "access-control-allow-origin" not in refused.headers
        # A simple request still reaches the server, but the browser may not read the answer.
        answer = await client.post(f"{base}/xiaozhi/ota/", headers={**BROWSER_HEADERS, "Origin": stranger}, content=b"{}")
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


async def test_cors_switched_off_answers_options_as_before(tmp_path) -> None:
    async with running_ops(tmp_path, {"ota": {"cors_origins": []}}) as (_services, base), httpx.AsyncClient() as client:
        answer = await client.options(f"{base}/xiaozhi/ota/", headers=preflight_headers())
        assert answer.status_code == 405 and "access-control-allow-origin" not in answer.headers
        check_in = await client.post(f"{base}/xiaozhi/ota/", headers=BROWSER_HEADERS, content=b"{}")
        assert "access-control-allow-origin" not in check_in.headers


@pytest.mark.parametrize("origin", ["192.168.1.5", "http://host/path", "ftp://host", ""])
def test_bad_origins_are_config_errors(tmp_path, origin: str) -> None:
    with pytest.raises(ConfigError, match="cors_origins"):
        make_services(tmp_path, {"ota": {"cors_origins": [origin]}})
