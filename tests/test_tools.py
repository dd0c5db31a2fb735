"""Function-name mapping, the OpenAI tool schema, and the session's ToolBox."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from xiaozhi_trio.pipeline.backends import ToolBox, ToolResult, ToolSpec
from xiaozhi_trio.pipeline.protocol.tools import (
    FUNCTION_NAME,
    SessionTools,
    encode_tool_name,
    function_name,
    openai_tool_schema,
    tool_name,
)
from xiaozhi_trio.pipeline.protocol.tool_lookup import resolve_tool
from xiaozhi_trio.pipeline.registry import ToolRegistry

from xiaozhi_trio.plugins.testing.fakes.mcp_device import SimulatedDevice, connect

# ---- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "function"),
    [
        ("self.audio_speaker.set_volume", "self__audio_speaker__set_volume"),
        ("self.get_device_status", "self__get_device_status"),
        ("get_weather", "get_weather"),
        ("a__b", "a-5f-5fb"),
        ("a_.b", "a-5f__b"),
        ("a..b", "a____b"),
        ("my-tool", "my-2dtool"),
        ("天气", "-e5-a4-a9-e6-b0-94"),
    ],
)
def test_function_name_examples(tool: str, function: str) -> None:
    assert function_name(tool) == function
    assert tool_name(function) == tool


def test_long_names_are_shortened_with_a_hash_and_mapped_back_by_a_lookup() -> None:
    long_a = "self." + "very_long_component." * 5 + "a"
    long_b = "self." + "very_long_component." * 5 + "b"
    fa, fb = function_name(long_a), function_name(long_b)
    assert len(fa) == 64 and FUNCTION_NAME.match(fa) and fa != fb
    with pytest.raises(ValueError):
        tool_name(fa)
    names = [long_a, "self.x"]
    assert resolve_tool(fa, names).tool == long_a and resolve_tool("self__x", names).tool == "self.x"
    assert resolve_tool(fb, names).tool is None


@pytest.mark.parametrize("bad", ["", "a.b", "a___b", "a-zz", "a-5F", "a-", "a-ff", "x" * 65, "a-5fb"])
def test_tool_name_rejects_what_function_name_never_makes(bad: str) -> None:
    with pytest.raises(ValueError):
        tool_name(bad)


def test_function_name_refuses_empty() -> None:
    with pytest.raises(ValueError):
        function_name("")


_names = st.one_of(
    st.text(min_size=1, max_size=40),
    st.text(alphabet="ab._-1", min_size=1, max_size=30),
)


@given(_names)
def test_function_names_match_the_pattern_and_round_trip(name: str) -> None:
    function = function_name(name)
    assert FUNCTION_NAME.match(function)
    if len(encode_tool_name(name)) <= 64:
        assert tool_name(function) == name
    else:
        assert len(function) == 64
    assert resolve_tool(function, [name]).tool == name


@given(_names, _names)
def test_distinct_names_give_distinct_functions(a: str, b: str) -> None:
    if a != b:
        assert function_name(a) != function_name(b)


def test_openai_tool_schema() -> None:
    spec = ToolSpec(
        "self.audio_speaker.set_volume",
        "Set the volume.",
        {
            "type": "object",
            "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100}},
            "required": ["volume"],
        },
    )
    assert openai_tool_schema(spec) == {
        "type": "function",
        "function": {
            "name": "self__audio_speaker__set_volume",
            "description": "Set the volume.",
            "parameters": {
                "type": "object",
                "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100}},
                "required": ["volume"],
            },
        },
    }
    bare = openai_tool_schema(ToolSpec("ping", "", {}))
    assert bare["function"]["parameters"] == {"type": "object", "properties": {}}


# ---- SessionTools ---------------------------------------------------------------------------------


def registry_with(*tools: tuple[str, Any]) -> ToolRegistry:
    registry = ToolRegistry()
    for name, handler in tools:
        registry.add(ToolSpec(name, f"{name} tool", {"type": "object", "properties": {}}), handler)
    return registry


async def weather(arguments: Mapping[str, Any]) -> ToolResult:
    return ToolResult(f"sunny in {arguments.get('city', 'town')}")


async def broken(arguments: Mapping[str, Any]) -> ToolResult:
    raise RuntimeError("backend down")


async def impostor(arguments: Mapping[str, Any]) -> ToolResult:
    return ToolResult("plugin answered")


async def test_session_tools_combine_device_and_plugin_tools() -> None:
    device = SimulatedDevice(volume=50)
    tools = SessionTools(connect(device), registry_with(("get_weather", weather), ("self.get_device_status", impostor)))
    assert isinstance(tools, ToolBox)
    names = [t.name for t in await tools.list_tools()]
    assert names == [
        "self.get_device_status",
        "self.audio_speaker.set_volume",
        "self.screen.set_brightness",
        "self.screen.set_theme",
        "get_weather",
    ]
    assert await tools.call("get_weather", {"city": "Hangzhou"}) == ToolResult("sunny in Hangzhou")
    assert await tools.call("self.audio_speaker.set_volume", {"volume": 20}) == ToolResult("true")
    assert device.volume == 20
    # The device's tool wins over the plugin's tool of the same name.
    assert '"volume":20' in (await tools.call("self.get_device_status", {})).text


async def test_plugin_tool_failure_and_unknown_tools_are_error_results() -> None:
    tools = SessionTools(None, registry_with(("broken", broken)))
    assert [t.name for t in await tools.list_tools()] == ["broken"]
    assert await tools.call("broken", {}) == ToolResult("the tool failed: backend down", is_error=True)
    assert await tools.call("self.audio_speaker.set_volume", {"volume": 1}) == ToolResult(
        "unknown tool 'self.audio_speaker.set_volume'", is_error=True
    )
    with_device = SessionTools(connect(SimulatedDevice()), ToolRegistry())
    assert await with_device.call("self.nope", {}) == ToolResult("Unknown tool: self.nope", is_error=True)


async def test_a_mute_device_costs_one_short_wait_then_is_skipped_for_a_while(autojump_clock: trio.abc.Clock) -> None:
    device = SimulatedDevice(silent=True)
    tools = SessionTools(connect(device, call_timeout=3.0, relist_after=60.0), registry_with(("get_weather", weather)))
    start = trio.current_time()
    assert [t.name for t in await tools.list_tools()] == ["get_weather"]
    assert trio.current_time() - start == pytest.approx(tools.list_wait)
    received = len(device.received)
    start = trio.current_time()
    assert [t.name for t in await tools.list_tools()] == ["get_weather"]
    assert trio.current_time() == start and len(device.received) == received
    device.silent = False
    await trio.sleep(61)
    assert len(await tools.list_tools()) == 5


async def test_a_listing_that_lands_later_is_used_by_the_next_turn(autojump_clock: trio.abc.Clock) -> None:
    """The session lists the device's tools in the background; a turn that started before the
    answer came goes on without them, and the next turn has them at once."""
    device = SimulatedDevice(silent=True)
    mcp = connect(device, call_timeout=10.0)
    tools = SessionTools(mcp, registry_with(("get_weather", weather)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mcp.list_tools)  # the session's own listing, still waiting
        await trio.sleep(0.1)
        assert [t.name for t in await tools.list_tools()] == ["get_weather"]
        nursery.cancel_scope.cancel()
    device.silent = False
    await mcp.list_tools()
    start = trio.current_time()
    assert len(await tools.list_tools()) == 5
    assert trio.current_time() == start
