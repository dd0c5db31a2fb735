"""The operations HTTP server under bad input: clear 4xx, nothing stored, and it keeps serving."""

from __future__ import annotations

import json
import os

import h11
import httpx
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xiaozhi_trio.pipeline.ops.h11server import (
    HttpLimits,
    Request,
    Response,
    error_response,
    serve,
    serve_connection,
)

from xiaozhi_trio.plugins.testing.fakes.firmware_ota import FirmwareOta
from xiaozhi_trio.plugins.testing.fakes.ops_server import running_ops

MAC = "a4:cf:12:34:56:78"


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XIAOZHI_TRIO_SECRET", raising=False)


def headers(**overrides: str) -> dict[str, str]:
    base = {"Device-Id": MAC, "Client-Id": "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5", "User-Agent": "bread-compact-wifi/2.0.3",
            "Activation-Version": "1", "Accept-Language": "en-US", "Content-Type": "application/json"}
    for key, value in overrides.items():
        name = key.replace("_", "-")
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base


async def raw_exchange(port: int, data: bytes, *, read_until_close: bool = True) -> bytes:
    """Send bytes on a fresh connection; return everything the server sends until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                received += chunk
                if not read_until_close and b"\r\n\r\n" in received:
                    break
        return received


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def body_of(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def assert_still_serving(client: httpx.AsyncClient, base: str) -> None:
    response = await client.get(f"{base}/healthz")
    assert response.status_code == 200 and response.json()["ok"] is True


@pytest.mark.parametrize(
    ("overrides", "body", "message"),
    [
        ({}, b'{"version": 2, "application": ', "not valid JSON"),
        ({}, b"\xff\xfe garbage", "not valid JSON"),
        ({}, b"[1, 2, 3]", "JSON object"),
        ({"Device-Id": None}, b"{}", "Device-Id header is missing"),
        ({"Device-Id": ""}, b"{}", "Device-Id header is missing"),
        ({"Device-Id": "a4 cf 12 34"}, b"{}", "Device-Id header is malformed"),
        ({"Device-Id": "a" * 65}, b"{}", "Device-Id header is malformed"),
        ({"Client-Id": None}, b"{}", "Client-Id header is missing"),
        ({"Client-Id": "<script>"}, b"{}", "Client-Id header is malformed"),
        ({"Activation-Version": "two"}, b"{}", "Activation-Version"),
        ({"Serial-Number": "S" * 65}, b"{}", "Serial-Number"),
    ],
)
async def test_bad_check_ins_get_400_and_store_nothing(tmp_path, overrides, body, message) -> None:
    async with running_ops(tmp_path) as (services, base), httpx.AsyncClient() as client:
        response = await client.post(f"{base}/xiaozhi/ota/", headers=headers(**overrides), content=body)
        assert response.status_code == 400
        assert message in response.json()["error"]
        assert await services.registry.list() == []
        assert services.metrics.http_requests.get(route="ota", status="400") == 1
        await assert_still_serving(client, base)


async def test_bad_activation_requests(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base), httpx.AsyncClient() as client:
        url = f"{base}/xiaozhi/ota/activate"
        assert (await client.post(url, headers=headers(Device_Id=None), content=b"{}")).status_code == 400
        assert (await client.post(url, headers=headers(), content=b"{nope")).status_code == 400
        unknown = await client.post(url, headers=headers(), content=b"{}")
        assert unknown.status_code == 404 and "check in" in unknown.json()["error"]
        await client.post(f"{base}/xiaozhi/ota/", headers=headers(), content=b"{}")
        wrong_algorithm = await client.post(url, headers=headers(), content=b'{"algorithm":"md5"}')
        assert wrong_algorithm.status_code == 400
        not_strings = await client.post(url, headers=headers(), content=b'{"algorithm":"hmac-sha256","hmac":1}')
        assert not_strings.status_code == 400
        other_client = await client.post(url, headers=headers(Client_Id="someone-else"), content=b"{}")
        assert other_client.status_code == 409
        assert (await services.registry.get(MAC)).state == "pending"
        await assert_still_serving(client, base)


async def test_huge_bodies_get_413_without_being_read(tmp_path) -> None:
    async with running_ops(tmp_path, {"ota": {"max_body_bytes": 4096}}) as (services, base):
        port = port_of(base)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers().items())
        # Announced size over the limit: refused before any body byte is sent.
        raw = await raw_exchange(port, f"POST /xiaozhi/ota/ HTTP/1.1\r\nHost: x\r\n{head}Content-Length: 10000000\r\n\r\n".encode())
        assert status_of(raw) == 413 and b"connection: close" in raw.lower()
        # Chunked, growing past the limit.
        chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
        raw = await raw_exchange(port, f"POST /xiaozhi/ota/ HTTP/1.1\r\nHost: x\r\n{head}Transfer-Encoding: chunked\r\n\r\n".encode() + chunk * 2)
        assert status_of(raw) == 413
        # Through a normal client too.
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{base}/xiaozhi/ota/", headers=headers(), content=b"{" + b" " * 5000 + b"}")
            assert response.status_code == 413 and "4096" in response.json()["error"]
            assert await services.registry.list() == []
            await assert_still_serving(client, base)


async def test_oversized_heads_get_431_and_garbage_gets_400(tmp_path) -> None:
    async with running_ops(tmp_path, {"ota": {"max_header_bytes": 2048}}) as (_services, base):
        port = port_of(base)
        raw = await raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
        assert status_of(raw) == 431
        for garbage in [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n",  # a TLS hello
                        b"GARBAGE\r\n\r\n", b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n",
                        b"POST /xiaozhi/ota/ HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"]:
            raw = await raw_exchange(port, garbage)
            assert status_of(raw) == 400, garbage
            assert "error" in body_of(raw)
        assert status_of(await raw_exchange(port, b"GET / HTTP/9.9\r\nHost: x\r\n\r\n")) == 505
        async with httpx.AsyncClient() as client:
            await assert_still_serving(client, base)


async def test_chunk_data_without_its_crlf_is_refused_not_smuggled(tmp_path) -> None:
    """CVE-2025-43859: h11 before 0.16 took any two bytes after chunk data for its CRLF, so a proxy
    and this server could disagree on where a request ends."""
    async with running_ops(tmp_path) as (_services, base):
        smuggled = (b"POST /xiaozhi/ota/ HTTP/1.1\r\nHost: x\r\nDevice-Id: " + MAC.encode() + b"\r\n"
                    b"Client-Id: c\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\n{}XX0\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = await raw_exchange(port_of(base), smuggled)
        assert status_of(raw) == 400 and raw.count(b"HTTP/1.1 ") == 1


async def test_wrong_methods_get_405_with_allow_and_unknown_paths_404(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base), httpx.AsyncClient() as client:
        for method, path, allow in [("PUT", "/xiaozhi/ota/", "GET, HEAD, POST"), ("DELETE", "/xiaozhi/ota", "GET, HEAD, POST"),
                                    ("GET", "/xiaozhi/ota/activate", "POST"), ("POST", "/healthz", "GET, HEAD"),
                                    ("POST", "/metrics", "GET, HEAD"), ("PATCH", "/xiaozhi/ota/firmware/b/1.bin", "GET, HEAD")]:
            response = await client.request(method, f"{base}{path}", headers=headers())
            assert response.status_code == 405, (method, path)
            assert response.headers["allow"] == allow and method in response.json()["error"]
        for path in ["/", "/xiaozhi/v1/", "/admin", "/healthz/extra", "/%00"]:
            response = await client.get(f"{base}{path}")
            assert response.status_code == 404 and "error" in response.json()
        assert await services.registry.list() == []


async def test_firmware_downloads_are_safe_against_path_traversal(tmp_path) -> None:
    firmware = tmp_path / "firmware"
    (firmware / "board").mkdir(parents=True)
    (firmware / "board" / "1.0.0.bin").write_bytes(b"GOOD IMAGE")
    (firmware / "board" / "notes.txt").write_bytes(b"SECRET")
    (firmware / "board" / ".hidden.bin").write_bytes(b"SECRET")
    (tmp_path / "outside.bin").write_bytes(b"SECRET")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "1.0.0.bin").write_bytes(b"SECRET")
    os.symlink(tmp_path / "outside.bin", firmware / "board" / "link.bin")
    os.symlink(tmp_path / "outside", firmware / "linked-board")
    os.symlink("/etc/passwd", firmware / "board" / "passwd.bin")
    async with running_ops(tmp_path) as (_services, base):
        port = port_of(base)
        targets = [
            "/xiaozhi/ota/firmware/board/../../outside.bin",
            "/xiaozhi/ota/firmware/../outside.bin",
            "/xiaozhi/ota/firmware/%2e%2e/outside.bin",
            "/xiaozhi/ota/firmware/board/%2e%2e%2f%2e%2e%2foutside.bin",
            "/xiaozhi/ota/firmware/board/..%2F..%2Foutside.bin",
            "/xiaozhi/ota/firmware/%2Ftmp/outside.bin",
            "/xiaozhi/ota/firmware/board/%2Fetc%2Fpasswd",
            "/xiaozhi/ota/firmware//etc/passwd",
            "/xiaozhi/ota/firmware/board/link.bin",
            "/xiaozhi/ota/firmware/linked-board/1.0.0.bin",
            "/xiaozhi/ota/firmware/board/passwd.bin",
            "/xiaozhi/ota/firmware/board/notes.txt",
            "/xiaozhi/ota/firmware/board/.hidden.bin",
            "/xiaozhi/ota/firmware/board/%00.bin",
            "/xiaozhi/ota/firmware/board/1.0.0.bin%00",
            "/xiaozhi/ota/firmware/board",
        ]
        for target in targets:
            raw = await raw_exchange(port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert status_of(raw) in (400, 404), target
            assert b"SECRET" not in raw and b"root:" not in raw, target
        async with httpx.AsyncClient() as client:
            good = await client.get(f"{base}/xiaozhi/ota/firmware/board/1.0.0.bin")
            assert good.status_code == 200 and good.content == b"GOOD IMAGE"
            assert good.headers["content-type"] == "application/octet-stream"
            head = await client.head(f"{base}/xiaozhi/ota/firmware/board/1.0.0.bin")
            assert head.status_code == 200 and head.headers["content-length"] == "10" and head.content == b""


async def test_keep_alive_serves_several_requests_on_one_connection(tmp_path) -> None:
    async with running_ops(tmp_path) as (_services, base):
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        raw = await raw_exchange(port_of(base), request * 3 + last)  # pipelined
        assert raw.count(b"HTTP/1.1 200 OK") == 4
        # HTTP/1.0 without keep-alive: one answer, then the server closes.
        raw = await raw_exchange(port_of(base), b"GET /healthz HTTP/1.0\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200") and raw.count(b"HTTP/1.1") == 1


async def test_a_full_firmware_session_after_abuse_still_works(tmp_path) -> None:
    async with running_ops(tmp_path, {"devices": {"activation": False}}) as (services, base):
        port = port_of(base)
        for junk in [b"\x00" * 100, b"POST /xiaozhi/ota/ HTTP/1.1\r\n" + b"A" * 50_000, b"GET /../../etc/passwd HTTP/1.1\r\n\r\n"]:
            await raw_exchange(port, junk)
        async with httpx.AsyncClient() as client:
            dev = FirmwareOta(client, f"{base}/xiaozhi/ota/")
            assert await dev.boot() == ["check:0", "done"]
            assert (await services.auth.check(dev.mac, dev.uuid, dev.settings["token"])).ok


# ---- the h11 core with in-memory streams: timeouts and crashes --------------------------------


async def echo_handler(request: Request) -> Response:
    return Response(200, request.body or b"ok", "text/plain")


async def test_slow_request_gets_408(autojump_clock) -> None:
    client, server = trio.testing.memory_stream_pair()
    limits = HttpLimits(request_timeout=10, keepalive_timeout=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server, echo_handler, limits)
        await client.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")  # then silence
        start = trio.current_time()
        received = b""
        while chunk := await client.receive_some(4096):
            received += chunk
        assert status_of(received) == 408
        assert trio.current_time() - start == pytest.approx(10)


async def test_slowloris_head_dribble_is_cut_off(autojump_clock) -> None:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server, echo_handler, HttpLimits(request_timeout=10))
        received = b""
        start = trio.current_time()
        try:
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                await client.send_all(bytes([byte]))
                await trio.sleep(1)
        except trio.BrokenResourceError:  # the server hung up on us
            pass
        assert trio.current_time() - start < 15
        while chunk := await client.receive_some(4096):
            received += chunk
        assert status_of(received) == 408


async def test_idle_keep_alive_connection_is_closed(autojump_clock) -> None:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server, echo_handler, HttpLimits(keepalive_timeout=30))
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        start = trio.current_time()
        received = b""
        while chunk := await client.receive_some(4096):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"ok")
        assert trio.current_time() - start == pytest.approx(30)


async def test_refusing_a_head_request_sends_no_body() -> None:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server, echo_handler, HttpLimits(max_body_bytes=1024))
        await client.send_all(b"HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n")
        received = b""
        while chunk := await client.receive_some(4096):
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert status_of(received) == 413 and b"content-length: " in head.lower() and body == b""


async def test_a_failing_handler_answers_500_and_the_connection_goes_on() -> None:
    calls = 0

    async def flaky(request: Request) -> Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug")
        return error_response(418, "teapot")

    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server, flaky, HttpLimits())
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := await client.receive_some(4096):
            received += chunk
        assert b"HTTP/1.1 500" in received and b"HTTP/1.1 418" in received


async def test_connections_over_the_cap_get_503() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, echo_handler, "127.0.0.1", 0, HttpLimits(max_connections=1))
        first = await trio.open_tcp_stream("127.0.0.1", port)
        await first.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await first.receive_some(4096)).startswith(b"HTTP/1.1 200")  # open and idle
        raw = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(raw) == 503 and body_of(raw) == {"error": "too many open connections"}
        await first.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while await first.receive_some(4096):  # until the server closes it
            pass
        await first.aclose()
        await trio.testing.wait_all_tasks_blocked()  # the server has finished with it
        raw = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(raw) == 200
        nursery.cancel_scope.cancel()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_any_bytes_end_cleanly(chunks: list[bytes]) -> None:
    """Whatever arrives, in whatever pieces, the connection ends with no exception escaping."""

    async def run() -> bytes:
        client, server = trio.testing.memory_stream_pair()
        received = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, server, echo_handler, HttpLimits(max_body_bytes=1024, max_header_bytes=1024))
            for chunk in chunks:
                await client.send_all(chunk)
            await client.send_eof()
            while chunk := await client.receive_some(4096):
                received += chunk
        return received

    received = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    if received:
        assert received.startswith(b"HTTP/1.1 ")


@given(st.integers(min_value=1, max_value=40))
def test_request_split_anywhere_gives_the_same_answer(split: int) -> None:
    """h11 reassembles a request whatever its chunking; the answer is the same."""
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world"

    async def run() -> bytes:
        client, server = trio.testing.memory_stream_pair()
        received = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, server, echo_handler, HttpLimits())
            for start in range(0, len(request), split):
                await client.send_all(request[start:start + split])
            while chunk := await client.receive_some(4096):
                received += chunk
        return received

    received = trio.run(run)
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"\r\n\r\nhello world")
    assert h11.__version__  # h11 is the parser under test
