"""The ``openai`` agent against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from xiaozhi_trio.pipeline.backends import (
    AgentRequest,
    BackendContext,
    BackendError,
    ConfigError,
    ToolResult,
    ToolSpec,
)
from xiaozhi_trio.pipeline.messages import AgentText
from xiaozhi_trio.pipeline.protocol.tools import SessionTools
from xiaozhi_trio.pipeline.registry import Plugins, ToolRegistry
from xiaozhi_trio.pipeline.store.conversations import SqliteConversationStore
from xiaozhi_trio.pipeline.store.sqlite import DATABASE_FILE
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.openai_chat.agent import STORE_KEY, OpenAIChatAgent
from xiaozhi_trio.plugins.openai_chat.options import (
    DEFAULT_SYSTEM_PROMPT,
    OpenAIOptions,
)
from xiaozhi_trio.plugins.openai_chat.plugin import create_agent

from xiaozhi_trio.plugins.testing.fakes.fake_openai import (
    FakeOpenAI,
    HttpReply,
    Stream,
    chunk,
    last_message,
    text_reply,
    tool_call_reply,
)
from xiaozhi_trio.plugins.testing.fakes.mcp_device import SimulatedDevice, connect


@pytest.fixture
async def server(nursery: trio.Nursery) -> FakeOpenAI:
    fake = FakeOpenAI()
    await nursery.start(fake.serve)
    return fake


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteConversationStore]:
    store = SqliteConversationStore.open(tmp_path / DATABASE_FILE)
    yield store
    await store.aclose()


def make_agent(server: FakeOpenAI, store: SqliteConversationStore, **options: Any) -> OpenAIChatAgent:
    return OpenAIChatAgent(OpenAIOptions.parse({"base_url": server.base_url, **options}), "sk-test", store)


async def ask(agent: OpenAIChatAgent, text: str, *, device: str = "aa:bb:cc", tools: Any = None) -> str:
    send, receive = trio.open_memory_channel[AgentText](1000)
    await agent.respond(AgentRequest(device, "session-1", text, tools), send)
    send.close()
    return "".join([item.text async for item in receive])


# ---- text ------------------------------------------------------------------------------------------


async def test_streams_the_answer_and_sends_a_proper_request(
    server: FakeOpenAI, store: SqliteConversationStore
) -> None:
    server.script(text_reply("It is ", "sunny", " today.", reasoning=("The user asks", " about weather")))
    agent = make_agent(server, store, model="glm-4-flash", temperature=0.3)
    assert await ask(agent, "How is the weather?") == "It is sunny today."
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert (
        request.body["model"] == "glm-4-flash" and request.body["stream"] is True and request.body["temperature"] == 0.3
    )
    assert request.body["messages"] == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "How is the weather?"},
    ]
    assert "tools" not in request.body
    await agent.aclose()


async def test_asks_for_usage_in_the_stream_and_reports_it(server: FakeOpenAI, store: SqliteConversationStore) -> None:
    server.script(text_reply("One, ", "two, ", "three."))
    agent = make_agent(server, store)
    usage: list[tuple[int, int]] = []
    send, receive = trio.open_memory_channel[AgentText](1000)
    request = AgentRequest("aa:bb:cc", "session-1", "Count", report_usage=lambda used, made: usage.append((used, made)))
    await agent.respond(request, send)
    assert server.requests[0].body["stream_options"] == {"include_usage": True}
    # The fake sends the usage chunk only because it was asked for.
    assert usage == [(20, 3)]
    send.close()
    receive.close()
    await agent.aclose()


async def test_first_words_are_handed_on_before_the_answer_is_complete(
    server: FakeOpenAI, store: SqliteConversationStore
) -> None:
    gate = trio.Event()
    server.script(text_reply("First part.", " Second part.", gate=gate, gate_at=2))
    agent = make_agent(server, store)
    send, receive = trio.open_memory_channel[AgentText](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.respond, AgentRequest("d", "s", "hi"), send)
        with trio.fail_after(5):
            first = await receive.receive()
        assert first == AgentText("First part.")
        assert len(server.requests) == 1
        gate.set()
        assert await receive.receive() == AgentText(" Second part.")
    await agent.aclose()


async def test_an_empty_system_prompt_sends_no_system_message(server: FakeOpenAI, store: SqliteConversationStore) -> None:
    server.script(text_reply("ok"))
    agent = make_agent(server, store, system_prompt="")
    await ask(agent, "hi")
    assert server.requests[0].body["messages"] == [{"role": "user", "content": "hi"}]
    await agent.aclose()


async def test_think_blocks_in_content_are_not_spoken(server: FakeOpenAI, store: SqliteConversationStore) -> None:
    server.script(text_reply("<thi", "nk>hmm, the user</th", "ink>Hello", " <there"))
    agent = make_agent(server, store)
    assert await ask(agent, "hi") == "Hello <there"
    await agent.aclose()


async def test_a_server_that_ignores_stream_still_works(server: FakeOpenAI, store: SqliteConversationStore) -> None:
    server.script(
        HttpReply(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "Whole answer."}, "finish_reason": "stop"}
                ],
            },
        )
    )
    agent = make_agent(server, store)
    assert await ask(agent, "hi") == "Whole answer."
    await agent.aclose()


async def test_crlf_streams_and_comments_are_fine(server: FakeOpenAI, store: SqliteConversationStore) -> None:
    stream = text_reply("A", "B", newline=b"\r\n")
    stream.events.insert(1, b": keep-alive\r\n\r\n")
    server.script(stream)
    agent = make_agent(server, store)
    assert await ask(agent, "hi") == "AB"
    await agent.aclose()


# ---- tools ------------------------------------------------------------------------------------------


async def test_a_volume_request_calls_the_device_tool(server: FakeOpenAI, store: SqliteConversationStore) -> None:
    device = SimulatedDevice(volume=70)
    tools = SessionTools(connect(device), ToolRegistry())
    server.script(
        tool_call_reply([("call_7", "self__audio_speaker__set_volume", '{"volume": 30}')], pieces=4),
        lambda body: text_reply(f"Done, the device said {last_message(body, 'tool')}."),
    )
    agent = make_agent(server, store)
    assert await ask(agent, "Turn the volume down to thirty", tools=tools) == "Done, the device said true."
    assert device.volume == 30
    first, second = server.requests
    names = [t["function"]["name"] for t in first.body["tools"]]
    assert names == [
        "self__get_device_status",
        "self__audio_speaker__set_volume",
        "self__screen__set_brightness",
        "self__screen__set_theme",
    ]
    volume_tool = first.body["tools"][1]["function"]
    assert volume_tool["parameters"]["properties"]["volume"] == {"type": "integer", "minimum": 0, "maximum": 100}
    assert second.body["messages"][-2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_7",
                "type": "function",
                "function": {"name": "self__audio_speaker__set_volume", "arguments": '{"volume": 30}'},
            }
        ],
    }
    assert second.body["messages"][-1] == {"role": "tool", "tool_call_id": "call_7", "content": "true"}
    assert "tool_choice" not in second.body
    # The history keeps what the user heard, not the tool traffic.
    assert await store.load_history(STORE_KEY, "aa:bb:cc", 10) == [
        {"role": "user", "content": "Turn the volume down to thirty"},
        {"role": "assistant", "content": "Done, the device said true."},
    ]
    await agent.aclose()


async def test_several_calls_in_one_round_and_plugin_tools(server: FakeOpenAI, store: SqliteConversationStore) -> None:
    async def weather(arguments: Any) -> ToolResult:
        return ToolResult(f"sunny in {arguments['city']}")

    registry = ToolRegistry()
    registry.add(
        ToolSpec("get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}}),
        weather,
    )
    device = SimulatedDevice(battery_level=42)
    server.script(
        tool_call_reply(
            [("c1", "self__get_device_status", ""), ("c2", "get_weather", '{"city": "Xi\'an"}')], text="Let me check. "
        ),
        lambda body: text_reply("Battery 42, sunny."),
    )
    agent = make_agent(server, store)
    said = await ask(agent, "battery and weather?", tools=SessionTools(connect(device), registry))
    assert said == "Let me check. Battery 42, sunny."
    messages = server.requests[1].body["messages"]
    assert messages[-3]["content"] == "Let me check. "
    assert '"level":42' in messages[-2]["content"] and messages[-2]["tool_call_id"] == "c1"
    assert messages[-1] == {"role": "tool", "tool_call_id": "c2", "content": "sunny in Xi'an"}
    await agent.aclose()


async def test_bad_calls_are_reported_to_the_model_not_raised(
    server: FakeOpenAI, store: SqliteConversationStore
) -> None:
    device = SimulatedDevice()
    server.script(
        tool_call_reply(
            [
                ("a", "no_such_function", "{}"),
                ("b", "self__audio_speaker__set_volume", "{volume"),
                ("c", "self__audio_speaker__set_volume", '{"volume": 500}'),
            ]
        ),
        lambda body: text_reply("Sorry, that did not work."),
    )
    agent = make_agent(server, store)
    assert (
        await ask(agent, "louder", tools=SessionTools(connect(device), ToolRegistry())) == "Sorry, that did not work."
    )
    results = [m["content"] for m in server.requests[1].body["messages"] if m["role"] == "tool"]
    assert results[0] == (
        "error: there is no tool called 'no_such_function'; the tools are: self__audio_speaker__set_volume, "
        "self__get_device_status, self__screen__set_brightness, self__screen__set_theme"
    )
    assert results[1].startswith("error: the arguments are not valid JSON")
    assert results[2] == "error: Value exceeds maximum allowed: 100"
    assert device.volume == 70
    await agent.aclose()


async def test_a_silent_device_does_not_hang_the_turn(
    server: FakeOpenAI, store: SqliteConversationStore, autojump_clock: trio.abc.Clock
) -> None:
    device = SimulatedDevice(silent_tools={"self.audio_speaker.set_volume"})
    server.script(
        tool_call_reply([("a", "self__audio_speaker__set_volume", '{"volume": 5}')]),
        lambda body: text_reply(f"Hmm: {last_message(body, 'tool')}"),
    )
    agent = make_agent(server, store)
    said = await ask(agent, "quiet please", tools=SessionTools(connect(device, call_timeout=4.0), ToolRegistry()))
    assert said == "Hmm: error: the device did not answer"
    await agent.aclose()


async def test_tool_rounds_are_bounded(server: FakeOpenAI, store: SqliteConversationStore) -> None:
    call = [("x", "self__get_device_status", "{}")]
    server.script(tool_call_reply(call), tool_call_reply(call), tool_call_reply(call))
    agent = make_agent(server, store, max_tool_rounds=2)
    with pytest.raises(BackendError) as info:
        await ask(agent, "status?", tools=SessionTools(connect(SimulatedDevice()), ToolRegistry()))
    assert info.value.kind == "tool_rounds"
    assert [r.body.get("tool_choice") for r in server.requests] == [None, None, "none"]
    await agent.aclose()


# ---- memory -----------------------------------------------------------------------------------------


async def test_history_survives_a_fresh_agent_and_store(server: FakeOpenAI, tmp_path: Path) -> None:
    path = tmp_path / DATABASE_FILE
    store = SqliteConversationStore.open(path)
    agent = make_agent(server, store)
    server.script(text_reply("Nice to meet you, Li."))
    await ask(agent, "My name is Li.")
    await agent.aclose()
    await store.aclose()

    store = SqliteConversationStore.open(path)
    agent = make_agent(server, store)
    server.script(lambda body: text_reply("You are Li."))
    await ask(agent, "What is my name?")
    assert server.requests[1].body["messages"][1:] == [
        {"role": "user", "content": "My name is Li."},
        {"role": "assistant", "content": "Nice to meet you, Li."},
        {"role": "user", "content": "What is my name?"},
    ]
    # Another device has its own memory.
    server.script(text_reply("Hello."))
    await ask(agent, "Hi", device="other")
    assert server.requests[2].body["messages"][1:] == [{"role": "user", "content": "Hi"}]
    await agent.aclose()
    await store.aclose()


async def test_history_is_bounded_by_history_turns(server: FakeOpenAI, store: SqliteConversationStore) -> None:
    agent = make_agent(server, store, history_turns=2)
    for i in range(4):
        server.script(text_reply(f"a{i}"))
        await ask(agent, f"q{i}")
    contents = [m["content"] for m in server.requests[-1].body["messages"][1:]]
    assert contents == ["q1", "a1", "q2", "a2", "q3"]
    none = make_agent(server, store, history_turns=0)
    server.script(text_reply("x"))
    await ask(none, "fresh")
    assert [m["content"] for m in server.requests[-1].body["messages"][1:]] == ["fresh"]
    await agent.aclose()
    await none.aclose()


async def test_barge_in_closes_the_stream_and_records_what_was_said(
    server: FakeOpenAI, store: SqliteConversationStore
) -> None:
    gate = trio.Event()
    server.script(text_reply("The story begins.", " Then a dragon came.", gate=gate, gate_at=2))
    agent = make_agent(server, store)
    send, receive = trio.open_memory_channel[AgentText](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.respond, AgentRequest("d", "s", "Tell me a story"), send)
        assert await receive.receive() == AgentText("The story begins.")
        nursery.cancel_scope.cancel()  # the user spoke over the answer
    with trio.fail_after(5):
        await server.client_gone.wait()
    assert server.streams_cut_by_client == 1
    assert await store.load_history(STORE_KEY, "d", 10) == [
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": "The story begins.", "interrupted": True},
    ]
    # The next turn works at once and tells the model where the user cut in.
    server.script(text_reply("Okay."))
    assert await ask(agent, "Stop. What time is it?", device="d") == "Okay."
    assert server.requests[1].body["messages"][1:3] == [
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": "The story begins.… (the user interrupted here)"},
    ]
    await agent.aclose()


async def test_barge_in_before_any_word_keeps_the_question(
    server: FakeOpenAI, store: SqliteConversationStore, autojump_clock: trio.abc.Clock
) -> None:
    gate = trio.Event()
    server.script(text_reply("never heard", gate=gate, gate_at=0))
    agent = make_agent(server, store)
    with trio.move_on_after(0.5):
        await ask(agent, "Hello?", device="d")
    assert await store.load_history(STORE_KEY, "d", 10) == [
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "", "interrupted": True},
    ]
    await agent.aclose()


# ---- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "kind", "words"),
    [
        (
            HttpReply(
                401, {"error": {"message": "Authentication Fails (no such user)", "type": "authentication_error"}}
            ),
            "auth",
            ["HTTP 401", "Authentication Fails", "req-fake"],
        ),
        (
            HttpReply(429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}),
            "rate_limit",
            ["HTTP 429", "Rate limit"],
        ),
        (
            HttpReply(503, "upstream overloaded", content_type="text/plain"),
            "server",
            ["HTTP 503", "upstream overloaded"],
        ),
        (HttpReply(404, {"error": "model 'llama9' not found"}), "not_found", ["HTTP 404", "llama9"]),
        (
            HttpReply(200, {"error": {"message": "Insufficient Balance", "code": "invalid_request_error"}}),
            "api_error",
            ["Insufficient Balance"],
        ),
        (HttpReply(200, "<html>proxy login</html>", content_type="text/html"), "bad_response", ["proxy login"]),
        (
            Stream([chunk({"content": "Hi"}), {"error": {"message": "content filtered", "code": "sensitive"}}]),
            "api_error",
            ["content filtered"],
        ),
        (Stream([chunk({"content": "Hi"})], done=False, drop=True), "stream_ended", ["broke off"]),
        (Stream([chunk({"content": "Hi"})], done=False), "stream_ended", ["before [DONE]"]),
    ],
)
async def test_failures_become_typed_backend_errors(
    server: FakeOpenAI, store: SqliteConversationStore, reply: Any, kind: str, words: list[str]
) -> None:
    server.script(reply)
    agent = make_agent(server, store)
    with pytest.raises(BackendError) as info:
        await ask(agent, "hi", device="d")
    assert info.value.kind == kind
    for word in words:
        assert word in str(info.value)
    await agent.aclose()


async def test_a_failure_after_some_words_records_them_and_one_before_records_nothing(
    server: FakeOpenAI, store: SqliteConversationStore
) -> None:
    server.script(
        HttpReply(500, {"error": {"message": "boom"}}), Stream([chunk({"content": "Half"})], done=False, drop=True)
    )
    agent = make_agent(server, store)
    with pytest.raises(BackendError):
        await ask(agent, "first", device="d")
    assert await store.load_history(STORE_KEY, "d", 10) == []
    with pytest.raises(BackendError):
        await ask(agent, "second", device="d")
    assert await store.load_history(STORE_KEY, "d", 10) == [
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "Half", "interrupted": True},
    ]
    await agent.aclose()


async def test_a_stream_with_finish_reason_but_no_done_is_accepted(
    server: FakeOpenAI, store: SqliteConversationStore
) -> None:
    server.script(text_reply("Fine.", done=False))
    agent = make_agent(server, store)
    assert await ask(agent, "hi") == "Fine."
    await agent.aclose()


async def test_a_slow_first_token_times_out(
    server: FakeOpenAI, store: SqliteConversationStore, autojump_clock: trio.abc.Clock
) -> None:
    server.script(text_reply("late", delay=60.0))
    agent = make_agent(server, store, timeout=10)
    with pytest.raises(BackendError) as info:
        await ask(agent, "hi")
    assert info.value.kind == "timeout" and "10 s" in str(info.value)
    await agent.aclose()


async def test_an_unreachable_server_is_a_connection_error(store: SqliteConversationStore) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there any more
    agent = OpenAIChatAgent(OpenAIOptions.parse({"base_url": f"http://127.0.0.1:{port}/v1"}), "", store)
    with pytest.raises(BackendError) as info:
        await ask(agent, "hi")
    assert info.value.kind == "connection"
    await agent.aclose()


# ---- options and registration ---------------------------------------------------------------------


def context(tmp_path: Path, store: SqliteConversationStore | None = None) -> BackendContext:
    return BackendContext(data_dir=tmp_path, workers=CpuWorkers(1), conversations=store)


def test_a_key_in_the_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment variable"):
        create_agent(context(tmp_path), {"api_key": "sk-123"})


def test_a_missing_key_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPSEEK_KEY", raising=False)
    with pytest.raises(ConfigError, match="DEEPSEEK_KEY"):
        create_agent(context(tmp_path), {"api_key_env": "DEEPSEEK_KEY"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"modle": "x"}, "unknown"),
        ({"history_turns": -1}, "history_turns"),
        ({"temperature": "hot"}, "temperature"),
        ({"timeout": 0}, "timeout"),
        ({"base_url": "api.deepseek.com"}, "base_url"),
        ({"model": ""}, "model"),
        ({"max_tool_rounds": True}, "max_tool_rounds"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OpenAIOptions.parse(options)


@pytest.mark.parametrize("url", ["http://localhost:11434/v1", "http://127.0.0.1:8080/v1", "http://[::1]:11434/v1"])
def test_loopback_servers_need_no_key(url: str) -> None:
    assert OpenAIOptions.parse({"base_url": url}).api_key({}) == ""
    with pytest.raises(ConfigError):
        OpenAIOptions.parse({"base_url": "https://api.openai.com/v1"}).api_key({})


async def test_registered_as_the_openai_agent_and_works_without_a_key_on_loopback(
    server: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    plugins = Plugins()
    assert "openai" in plugins.backends.names("agent")
    agent = plugins.backends.create(
        "agent", "openai", context(tmp_path), {"base_url": server.base_url, "model": "qwen2.5:3b"}
    )
    assert isinstance(agent, OpenAIChatAgent)
    server.script(text_reply("Local hello."))
    assert await ask(agent, "hi") == "Local hello."
    assert "authorization" not in server.requests[0].headers
    # Without a store in the context, the default SQLite store in the data folder keeps the history.
    assert (tmp_path / DATABASE_FILE).exists()
    await agent.aclose()
    await agent.store.aclose()


async def test_the_key_is_sent_from_the_environment(
    server: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: SqliteConversationStore
) -> None:
    monkeypatch.setenv("MY_LLM_KEY", "sk-from-env")
    agent = create_agent(context(tmp_path, store), {"base_url": server.base_url, "api_key_env": "MY_LLM_KEY"})
    server.script(text_reply("ok"))
    await ask(agent, "hi")
    assert server.requests[0].headers["authorization"] == "Bearer sk-from-env"
    assert json.dumps(server.requests[0].body).count("sk-from-env") == 0
    await agent.aclose()
