"""The MCP client against the simulated device (and against hand-fed replies)."""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Any

import pytest
import trio
import xiaozhi_trio.pipeline
from xiaozhi_trio.pipeline.backends import ToolResult
from xiaozhi_trio.pipeline.protocol.mcp import McpClient, McpError

from xiaozhi_trio.plugins.testing.fakes.mcp_device import Prop, SimulatedDevice, connect


def device_with_board_tools(count: int) -> SimulatedDevice:
    device = SimulatedDevice()
    for i in range(count):
        device.add_tool(
            f"self.light{i}.set_color", f"Set light {i}. " + "x" * 600, [Prop("color", "string")], lambda args: True
        )
    return device


class Recorder:
    """A send_json that keeps the frames, for tests that answer by hand."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.sent = trio.Event()

    async def __call__(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)
        self.sent.set()

    async def next_frame(self) -> dict[str, Any]:
        while not self.frames:
            self.sent = trio.Event()
            await self.sent.wait()
        return self.frames.pop(0)


async def test_initialize_announces_vision_and_reads_server_info() -> None:
    device = SimulatedDevice(has_camera=True)
    client = connect(device)
    info = await client.initialize(vision_url="http://server:8003/vision", vision_token="tok")
    assert info == {"name": "bread-compact-wifi", "version": "2.0.3"}
    assert device.vision == {"url": "http://server:8003/vision", "token": "tok"}
    first = device.received[0]
    assert first["method"] == "initialize" and isinstance(first["id"], int)
    assert first["params"]["capabilities"] == {"vision": {"url": "http://server:8003/vision", "token": "tok"}}
    assert device.received[1] == {"jsonrpc": "2.0", "method": "notifications/initialized"}


async def test_initialize_names_the_installed_package_version(monkeypatch: pytest.MonkeyPatch) -> None:
    device = SimulatedDevice()
    await connect(device).initialize()
    assert device.received[0]["params"]["clientInfo"] == {"name": "xiaozhi-trio", "version": version("xiaozhi-trio")}
    # Read from the package when asked, not written into the client.
    monkeypatch.setattr(xiaozhi_trio.pipeline, "__version__", "9.8.7")
    device = SimulatedDevice()
    await connect(device).initialize()
    assert device.received[0]["params"]["clientInfo"]["version"] == "9.8.7"


async def test_initialize_without_vision_sends_empty_capabilities() -> None:
    device = SimulatedDevice()
    await connect(device).initialize()
    assert device.received[0]["params"]["capabilities"] == {}
    assert device.vision == {}


async def test_list_tools_follows_paging_hides_user_tools_and_is_cached() -> None:
    device = device_with_board_tools(30)
    client = connect(device)
    tools = await client.list_tools()
    requests = [p for p in device.received if p.get("method") == "tools/list"]
    assert len(requests) >= 3  # 30 tools of ~700 bytes do not fit one 8 KB page
    assert requests[0]["params"] == {"cursor": "", "withUserTools": False}
    # Each later page starts at the name the previous page gave as nextCursor.
    assert all(r["params"]["cursor"].startswith("self.light") for r in requests[1:])
    names = [t.name for t in tools]
    assert names[:4] == [
        "self.get_device_status",
        "self.audio_speaker.set_volume",
        "self.screen.set_brightness",
        "self.screen.set_theme",
    ]
    assert names[4:] == [f"self.light{i}.set_color" for i in range(30)]
    assert "self.reboot" not in names
    volume = tools[1]
    assert volume.input_schema == {
        "type": "object",
        "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["volume"],
    }
    ids = [r["id"] for r in requests]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
    received = len(device.received)
    assert [t.name for t in await client.list_tools()] == names
    assert len(device.received) == received  # cached


async def test_call_tool_changes_the_device_and_returns_its_text() -> None:
    device = SimulatedDevice(volume=70)
    client = connect(device)
    assert await client.call_tool("self.audio_speaker.set_volume", {"volume": 30}) == ToolResult("true")
    assert device.volume == 30
    status = await client.call_tool("self.get_device_status", {})
    assert '"volume":30' in status.text and not status.is_error


async def test_device_error_replies_become_error_results() -> None:
    client = connect(SimulatedDevice())
    assert await client.call_tool("self.nope", {}) == ToolResult("Unknown tool: self.nope", is_error=True)
    assert await client.call_tool("self.audio_speaker.set_volume", {"volume": 300}) == ToolResult(
        "Value exceeds maximum allowed: 100", is_error=True
    )
    assert await client.call_tool("self.audio_speaker.set_volume", {"volume": "loud"}) == ToolResult(
        "Missing valid argument: volume", is_error=True
    )


async def test_a_silent_device_times_out_instead_of_hanging(autojump_clock: trio.abc.Clock) -> None:
    device = SimulatedDevice(silent_tools={"self.audio_speaker.set_volume"})
    client = connect(device, call_timeout=5.0)
    start = trio.current_time()
    result = await client.call_tool("self.audio_speaker.set_volume", {"volume": 10})
    assert result == ToolResult("the device did not answer", is_error=True)
    assert trio.current_time() - start == pytest.approx(5.0)
    # A per-call timeout overrides the default (a camera call may need longer).
    start = trio.current_time()
    await client.call_tool("self.audio_speaker.set_volume", {"volume": 10}, timeout=20.0)
    assert trio.current_time() - start == pytest.approx(20.0)
    # The same client still works for tools that answer.
    assert (await client.call_tool("self.screen.set_brightness", {"brightness": 5})).text == "true"


async def test_a_late_reply_is_dropped(autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture) -> None:
    send = Recorder()
    client = McpClient(send, call_timeout=1.0)
    assert (await client.call_tool("self.x", {})).is_error
    request = send.frames[0]["payload"]
    with caplog.at_level(logging.INFO):
        client.feed({"jsonrpc": "2.0", "id": request["id"], "result": {"content": []}})
    assert "after its request gave up" in caplog.text


async def test_listing_timeout_raises_backs_off_and_caches_nothing(autojump_clock: trio.abc.Clock) -> None:
    device = SimulatedDevice(silent=True)
    client = connect(device, call_timeout=2.0, relist_after=30.0)
    start = trio.current_time()
    with pytest.raises(McpError) as info:
        await client.list_tools()
    assert info.value.kind == "timeout" and trio.current_time() - start == pytest.approx(2.0)
    device.silent = False
    # Within relist_after the client does not wait on the device again...
    received = len(device.received)
    start = trio.current_time()
    with pytest.raises(McpError, match="a moment ago"):
        await client.list_tools()
    assert trio.current_time() == start and len(device.received) == received
    # ...after it, it asks again.
    await trio.sleep(30)
    assert len(await client.list_tools()) == 4


async def test_replies_are_matched_by_id_in_any_order() -> None:
    send = Recorder()
    client = McpClient(send)
    results: dict[str, ToolResult] = {}

    async def call(name: str) -> None:
        results[name] = await client.call_tool(name, {})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "a")
        first = (await send.next_frame())["payload"]
        nursery.start_soon(call, "b")
        second = (await send.next_frame())["payload"]
        assert first["id"] != second["id"]
        assert first["params"]["name"] == "a" and second["params"]["name"] == "b"
        client.feed(
            {
                "jsonrpc": "2.0",
                "id": second["id"],
                "result": {"content": [{"type": "text", "text": "B"}], "isError": False},
            }
        )
        client.feed({"jsonrpc": "2.0", "id": first["id"], "error": {"message": "broken"}})
    assert results == {"a": ToolResult("broken", is_error=True), "b": ToolResult("B")}


async def test_garbage_is_dropped_and_the_real_reply_still_lands(caplog: pytest.LogCaptureFixture) -> None:
    send = Recorder()
    client = McpClient(send)
    outcome: list[ToolResult] = []

    async def call() -> None:
        outcome.append(await client.call_tool("t", {}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        request = (await send.next_frame())["payload"]
        with caplog.at_level(logging.DEBUG):
            for garbage in [
                None,
                "text",
                [],
                {"id": str(request["id"]), "result": {}},
                {"id": True, "result": {}},
                {"id": request["id"]},
                {"id": 424242, "result": {}},
                {"jsonrpc": "2.0", "method": "notifications/state_changed", "params": {}},
            ]:
                client.feed(garbage)
        assert not outcome
        client.feed(
            {
                "jsonrpc": "2.0",
                "id": request["id"],
                "result": {
                    "content": [{"type": "text", "text": "ok"}, {"type": "image", "image": "{}"}],
                    "isError": True,
                },
            }
        )
    assert outcome[0].is_error and outcome[0].text.startswith("ok\n(the tool returned an image")
    assert "without a numeric id" in caplog.text and "neither result nor error" in caplog.text


async def test_a_result_that_is_not_an_object_is_an_error() -> None:
    send = Recorder()
    client = McpClient(send)
    outcome: list[ToolResult] = []

    async def call() -> None:
        outcome.append(await client.call_tool("t", {}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        request = (await send.next_frame())["payload"]
        client.feed({"jsonrpc": "2.0", "id": request["id"], "result": "done"})
    assert outcome[0].is_error and "not an object" in outcome[0].text


async def test_close_fails_waiting_and_later_requests_at_once(autojump_clock: trio.abc.Clock) -> None:
    device = SimulatedDevice(silent_tools={"self.get_device_status"})
    client = connect(device, call_timeout=100.0)
    outcome: list[ToolResult] = []

    async def call() -> None:
        outcome.append(await client.call_tool("self.get_device_status", {}))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        client.close()
    assert outcome == [ToolResult("the device is not connected", is_error=True)]
    assert trio.current_time() == start
    assert await client.call_tool("self.get_device_status", {}) == ToolResult(
        "the device is not connected", is_error=True
    )
    with pytest.raises(McpError, match="not connected"):
        await client.list_tools()


async def test_cancelled_call_leaves_no_waiter_behind(autojump_clock: trio.abc.Clock) -> None:
    device = SimulatedDevice(silent_tools={"self.get_device_status"})
    client = connect(device)
    with trio.move_on_after(1.0):
        await client.call_tool("self.get_device_status", {})
    assert client._waiters == {}


async def test_a_paging_loop_is_detected() -> None:
    send_frames: list[dict[str, Any]] = []
    client: McpClient

    async def send(frame: dict[str, Any]) -> None:
        send_frames.append(frame)
        payload = frame["payload"]
        client.feed({"jsonrpc": "2.0", "id": payload["id"], "result": {"tools": [{"name": "a"}], "nextCursor": "a"}})

    client = McpClient(send)
    with pytest.raises(McpError, match="loops") as info:
        await client.list_tools()
    assert info.value.kind == "protocol"
    assert len(send_frames) == 2


async def test_malformed_tool_entries_are_skipped() -> None:
    client: McpClient

    async def send(frame: dict[str, Any]) -> None:
        payload = frame["payload"]
        tools = [
            {"name": "ok", "description": "d"},
            {"description": "no name"},
            "junk",
            {"name": "ok"},
            {"name": "owner_only", "annotations": {"audience": ["user"]}},
        ]
        client.feed({"jsonrpc": "2.0", "id": payload["id"], "result": {"tools": tools}})

    client = McpClient(send)
    tools = await client.list_tools()
    assert [(t.name, t.description, t.input_schema) for t in tools] == [
        ("ok", "d", {"type": "object", "properties": {}})
    ]


# ---- the simulated device itself must be faithful, or the tests above prove nothing ------------


def test_simulated_device_ignores_string_ids_and_bad_envelopes() -> None:
    device = SimulatedDevice()
    assert device.handle({"jsonrpc": "2.0", "id": "1", "method": "tools/list"}) == []
    assert device.handle({"jsonrpc": "2.0", "method": "tools/list"}) == []
    assert device.handle({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}) == []
    assert device.handle({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": []}) == []
    assert device.handle({"jsonrpc": "2.0", "id": 2.7, "method": "bogus"}) == [
        {"jsonrpc": "2.0", "id": 2, "error": {"message": "Method not implemented: bogus"}}
    ]


def test_simulated_device_pages_within_8000_bytes_and_lists_user_tools_on_request() -> None:
    import json

    device = device_with_board_tools(30)
    cursor, pages, names = "", 0, []
    while True:
        (reply,) = device.handle(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": cursor, "withUserTools": True}}
        )
        result = reply["result"]
        assert len(json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode()) <= 8000
        names += [t["name"] for t in result["tools"]]
        pages += 1
        if "nextCursor" not in result:
            break
        cursor = result["nextCursor"]
        assert cursor == [t.name for t in device.tools][len(names)]
    assert pages >= 3 and names == [t.name for t in device.tools] and "self.reboot" in names
