"""OTA check-ins per second on one core.

The operations HTTP server runs in its own process pinned to one core (``os.sched_setaffinity``);
the load comes from another process pinned to another core, over loopback only, with a bounded
number of requests. Requests are what the firmware sends (headers and system-info body of
``main/ota.cc``), from a pool of simulated devices that are already bound, so every reply carries a
freshly signed token and every check-in is a SQLite write.

Scenarios:

* ``check-in, new connection``: one TCP connection per request, as the firmware does;
* ``check-in, keep-alive``: the same over persistent connections (the HTTP layer's share shrinks);
* ``new device, activation``: first check-ins of never-seen devices (insert plus a new code);
* ``GET /healthz``: the HTTP server alone with one trivial query, for comparison.

A second table times a device's WebSocket handshake plus hello (TCP connect → server hello
received), one device at a time, against the real WebSocket server with test-double speech
backends, with auth on (token verified, registry read) and off: the cost of auth per connection.

Besides the rate, the table shows how busy the server's core was (from its CPU time) and the
requests per second of server CPU: when the core is not saturated (the load generator, also Python,
may be the limit), that last figure is the capacity of one fully used core.

Run: ``python -m bench.ota [--requests 3000] [--concurrency 16] [--handshakes 500]``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import trio

from xiaozhi_trio.plugins.testing.fakes.firmware_ota import FirmwareOta

DEVICES = 200


def _pin(core: int) -> int:
    cores = sorted(os.sched_getaffinity(0))
    chosen = cores[core % len(cores)]
    os.sched_setaffinity(0, {chosen})
    return chosen


def run_server(data_dir: str, ready: multiprocessing.Queue, core: int) -> None:
    """The server process: pinned, quiet, serving until terminated."""
    _pin(core)
    logging.disable(logging.WARNING)
    from xiaozhi_trio.pipeline.config import parse_config
    from xiaozhi_trio.pipeline.ops.http import build_ops_services, serve_http
    from xiaozhi_trio.pipeline.store.devices import CheckIn

    config = parse_config({"server": {"data_dir": data_dir}, "ota": {"max_connections": 1024}})
    services = build_ops_services(config)

    async def main() -> None:
        for i in range(DEVICES):  # the pool of bound devices
            await services.registry.bind_device(_mac(i), _uuid(i))
            await services.registry.check_in(CheckIn(_mac(i), _uuid(i), board="bread-compact-wifi"))
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, services, "127.0.0.1", 0)
            ready.put(port)

    trio.run(main)


def run_ws_server(data_dir: str, ready: multiprocessing.Queue, core: int, auth: bool) -> None:
    """The WebSocket server (test-double backends) with ops attached, pinned, until terminated."""
    _pin(core)
    logging.disable(logging.WARNING)
    import dataclasses

    from xiaozhi_trio.pipeline.ops.http import build_ops_services
    from xiaozhi_trio.pipeline.server import serve_devices

    from xiaozhi_trio.plugins.testing.harness import fake_config, make_app

    config = dataclasses.replace(fake_config(Path(data_dir)), extra={"auth": {"enabled": auth}})
    app, _fakes, _events = make_app(Path(data_dir), config=config)
    ops = build_ops_services(config)
    ops.attach(app)

    async def main() -> None:
        tokens = [ops.auth.issue(await ops.registry.bind_device(_mac(i), _uuid(i))) for i in range(DEVICES)]
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_devices, app, "127.0.0.1", 0)
            ready.put((port, tokens))

    trio.run(main)


async def _handshakes(port: int, tokens: list[str], count: int) -> list[float]:
    from xiaozhi_trio.pipeline.client import connect

    url = f"ws://127.0.0.1:{port}/xiaozhi/v1/"
    times = []
    for i in range(count):
        device = i % len(tokens)
        start = time.perf_counter()
        async with connect(url, device_id=_mac(device), client_id=_uuid(device), token=tokens[device]) as client:
            await client.hello()
            times.append(time.perf_counter() - start)
    return times


def time_handshakes(count: int) -> list[tuple[str, int, float, float]]:
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for auth in (True, False):
        data_dir = tempfile.mkdtemp(prefix="xiaozhi-ws-bench-")
        ready: multiprocessing.Queue = ctx.Queue()
        server = ctx.Process(target=run_ws_server, args=(data_dir, ready, 0, auth), daemon=True)
        server.start()
        try:
            port, tokens = ready.get(timeout=60)
            _pin(1)
            trio.run(_handshakes, port, tokens, min(50, count))  # warm-up
            times = sorted(trio.run(_handshakes, port, tokens, count))
        finally:
            server.terminate()
            server.join(5)
            shutil.rmtree(data_dir, ignore_errors=True)
        rows.append((f"auth {'on' if auth else 'off'}", len(times), statistics.median(times) * 1000, times[int(0.95 * (len(times) - 1))] * 1000))
    return rows


def _mac(i: int) -> str:
    return f"a4:cf:12:00:{i // 256:02x}:{i % 256:02x}"


def _uuid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def _check_in_request(mac: str, uuid: str, *, close: bool) -> bytes:
    device = FirmwareOta(client=None, ota_url="", mac=mac, uuid=uuid)  # type: ignore[arg-type]
    body = device.system_info_json().encode()
    headers = {"Host": "127.0.0.1:8003", **device.headers(), "Content-Length": str(len(body))}
    if close:
        headers["Connection"] = "close"
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST /xiaozhi/ota/ HTTP/1.1\r\n{head}\r\n".encode() + body


async def _read_response(stream: trio.SocketStream, buffer: bytearray) -> int:
    """Read one response (Content-Length framed) from ``stream``; return its status."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed mid-response")
        buffer += chunk
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    total = len(head) + 4 + length
    while len(buffer) < total:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed mid-body")
        buffer += chunk
    del buffer[:total]
    return status


async def _load(port: int, requests: list[bytes], concurrency: int, keep_alive: bool) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = list(reversed(requests))

    async def worker() -> None:
        stream: trio.SocketStream | None = None
        buffer = bytearray()
        while queue:
            request = queue.pop()
            start = time.perf_counter()
            if stream is None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(request)
            status = await _read_response(stream, buffer)
            if status != 200:
                raise RuntimeError(f"unexpected status {status}")
            if not keep_alive:
                await stream.aclose()
                stream, buffer = None, bytearray()
            latencies.append(time.perf_counter() - start)
        if stream is not None:
            await stream.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return time.perf_counter() - started, latencies


def run_load(port: int, server_pid: int, count: int, concurrency: int, core: int) -> list[tuple[str, int, float, float, float, float, float]]:
    _pin(core)
    server = psutil.Process(server_pid)
    healthz = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    scenarios = [
        ("check-in, new connection", [_check_in_request(_mac(i % DEVICES), _uuid(i % DEVICES), close=True) for i in range(count)], False),
        ("check-in, keep-alive", [_check_in_request(_mac(i % DEVICES), _uuid(i % DEVICES), close=False) for i in range(count)], True),
        ("new device, activation", [_check_in_request(f"02:00:00:{i // 65536:02x}:{i // 256 % 256:02x}:{i % 256:02x}", f"new-{i}", close=True)
                                    for i in range(count)], False),
        ("GET /healthz, keep-alive", [healthz] * count, True),
    ]
    rows = []
    for name, requests, keep_alive in scenarios:
        trio.run(_load, port, requests[: min(200, count)], concurrency, keep_alive)  # warm-up
        before = server.cpu_times()
        elapsed, latencies = trio.run(_load, port, requests, concurrency, keep_alive)
        after = server.cpu_times()
        cpu = (after.user - before.user) + (after.system - before.system)
        latencies.sort()
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        n = len(latencies)
        # busy: the server core's share of the wall time; per core-second: requests / server CPU time.
        rows.append((name, n, n / elapsed, statistics.median(latencies) * 1000, p95 * 1000, cpu / elapsed * 100, n / cpu))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per scenario (bounded)")
    parser.add_argument("--concurrency", type=int, default=16, help="client connections at once")
    parser.add_argument("--handshakes", type=int, default=500, help="WebSocket handshakes + hellos per auth setting")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("note: only one core available; server and load share it, so the figure is a lower bound")
    data_dir = tempfile.mkdtemp(prefix="xiaozhi-ota-bench-")
    ctx = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue = ctx.Queue()
    server = ctx.Process(target=run_server, args=(data_dir, ready, 0), daemon=True)
    server.start()
    try:
        port = ready.get(timeout=60)
        rows = run_load(port, server.pid, args.requests, args.concurrency, 1)
    finally:
        server.terminate()
        server.join(5)
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"\nOTA HTTP server on one core ({args.requests} requests per scenario, {args.concurrency} connections, loopback)\n")
    print(f"{'scenario':<28} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'server busy':>12} {'req per CPU-s':>14}")
    for name, n, rate, p50, p95, busy, per_cpu in rows:
        print(f"{name:<28} {n:>8} {rate:>8.0f} {p50:>8.2f} {p95:>8.2f} {busy:>11.0f}% {per_cpu:>14.0f}")
    handshakes = time_handshakes(args.handshakes)
    print(f"\nWebSocket handshake + hello, one device at a time ({args.handshakes} per setting, server on one core)\n")
    print(f"{'setting':<28} {'count':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for name, n, p50, p95 in handshakes:
        print(f"{name:<28} {n:>8} {p50:>8.2f} {p95:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
