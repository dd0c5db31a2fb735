"""The Coze agent against the fake Coze server: answers, memory per device, every fault, barge-in,
tool calls, and the options."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
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
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.coze.plugin import CozeAgent, create_agent, user_id_for

from xiaozhi_trio.plugins.testing.fakes.fake_coze import (
    FAKE_BOT_ID,
    FAKE_TOKEN,
    ChatFailure,
    Drop,
    ErrorEvent,
    FakeCoze,
    Hang,
    HttpError,
    JsonError,
    Stall,
    ToolRule,
)
from xiaozhi_trio.plugins.testing.fakes.mcp_device import SimulatedDevice, connect


class MemoryStore:
    """A ConversationStore in a dict (no worker threads, so the autojump clock stays exact)."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], dict[str, Any]] = {}

    async def get_state(self, agent: str, device_id: str) -> dict[str, Any] | None:
        state = self.states.get((agent, device_id))
        return json.loads(json.dumps(state)) if state is not None else None

    async def put_state(self, agent: str, device_id: str, state: Mapping[str, Any]) -> None:
        self.states[(agent, device_id)] = json.loads(json.dumps(state))

    async def swap_state(self, agent: str, device_id: str, state: Mapping[str, Any],
                         expected: Mapping[str, Any] | None) -> dict[str, Any]:
        current = self.states.get((agent, device_id))
        if current is None or current == expected:
            await self.put_state(agent, device_id, state)
        return json.loads(json.dumps(self.states[(agent, device_id)]))

    async def load_history(self, agent: str, device_id: str, limit: int) -> list[dict[str, Any]]:
        return []

    async def append_history(self, agent: str, device_id: str, messages: list[Mapping[str, Any]]) -> None:
        pass

    async def clear(self, agent: str, device_id: str) -> None:
        self.states.pop((agent, device_id), None)

    async def aclose(self) -> None:
        pass


AgentFactory = Callable[..., CozeAgent]


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeCoze:
    server = FakeCoze()
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def make_agent(fake: FakeCoze, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AgentFactory]:
    monkeypatch.setenv("COZE_API_TOKEN", FAKE_TOKEN)
    monkeypatch.delenv("COZE_BOT_ID", raising=False)
    agents: list[CozeAgent] = []

    def factory(store: Any = None, **options: Any) -> CozeAgent:
        context = BackendContext(tmp_path, CpuWorkers(1), conversations=store if store is not None else MemoryStore())
        agent = create_agent(context, {"bot_id": FAKE_BOT_ID, "base_url": fake.url, **options})
        agents.append(agent)
        return agent

    yield factory
    for agent in agents:
        await agent.aclose()


async def ask(agent: CozeAgent, text: str, device: str = "aa:bb:cc:dd:ee:01", tools: Any = None) -> str:
    send, receive = trio.open_memory_channel[AgentText](math.inf)
    await agent.respond(AgentRequest(device, "session-1", text, tools), send)
    send.close()
    return "".join([item.text async for item in receive])


async def barge_in(agent: CozeAgent, text: str, *, after_deltas: int = 0, after_seconds: float = math.inf,
                   tools: Any = None) -> list[str]:
    """Run a turn and cancel it after some deltas (or seconds), as a barge-in does."""
    send, receive = trio.open_memory_channel[AgentText](math.inf)
    heard: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.respond, AgentRequest("aa:bb:cc:dd:ee:01", "session-1", text, tools), send)
        with trio.move_on_after(after_seconds):
            async for item in receive:
                heard.append(item.text)
                if len(heard) == after_deltas:
                    break
        nursery.cancel_scope.cancel()
    return heard


async def test_usage_is_reported_to_the_pipeline(fake: FakeCoze, make_agent: AgentFactory) -> None:
    usage: list[tuple[int, int]] = []
    send, receive = trio.open_memory_channel[AgentText](math.inf)
    request = AgentRequest("aa:bb:cc:dd:ee:01", "session-1", "hello", report_usage=lambda i, o: usage.append((i, o)))
    await make_agent().respond(request, send)
    answer = "".join(item.text for item in [receive.receive_nowait() for _ in range(receive.statistics().current_buffer_used)])
    assert usage == [(600, len(answer))]


def paths(fake: FakeCoze) -> list[str]:
    return [r.path for r in fake.requests]


# ---- answers ---------------------------------------------------------------------------------


async def test_answer_is_spoken_and_nothing_else(fake: FakeCoze, make_agent: AgentFactory) -> None:
    fake.reasoning = "用户想知道星期几。"
    fake.follow_ups = ["明天星期几？"]
    answer = await ask(make_agent(), "今天星期几？")
    assert answer == "好的，今天是星期三。我们去公园散步吧！"
    chat = fake.requests_to("/v3/chat")[0]
    assert chat.headers["authorization"] == f"Bearer {FAKE_TOKEN}"
    assert chat.body["bot_id"] == FAKE_BOT_ID
    assert chat.body["user_id"] == user_id_for("aa:bb:cc:dd:ee:01")
    assert chat.body["stream"] is True and chat.body["auto_save_history"] is True
    assert chat.body["additional_messages"] == [{"role": "user", "content": "今天星期几？", "content_type": "text"}]
    assert chat.query["conversation_id"] in fake.conversations


async def test_text_streams_before_the_answer_is_complete(fake: FakeCoze, make_agent: AgentFactory,
                                                          autojump_clock: trio.testing.MockClock) -> None:
    fake.first_token_delay, fake.delta_interval = 2.0, 0.5
    agent = make_agent()
    send, receive = trio.open_memory_channel[AgentText](math.inf)
    start = trio.current_time()
    arrivals: list[float] = []
    async with trio.open_nursery() as nursery:
        async def turn() -> None:
            with send:
                await agent.respond(AgentRequest("dev", "s", "hi"), send)
        nursery.start_soon(turn)
        async for _ in receive:
            arrivals.append(trio.current_time() - start)
    assert arrivals[0] == pytest.approx(2.0, abs=0.01)
    assert arrivals[-1] == pytest.approx(2.0 + 0.5 * (len(arrivals) - 1), abs=0.01)


async def test_the_fake_speaks_the_recorded_byte_format(fake: FakeCoze) -> None:
    async with httpx.AsyncClient() as client:
        conversation = (await client.post(f"{fake.url}/v1/conversation/create", json={"bot_id": FAKE_BOT_ID},
                                          headers={"Authorization": f"Bearer {FAKE_TOKEN}"})).json()
        assert conversation["code"] == 0 and conversation["data"]["id"]
        response = await client.post(
            f"{fake.url}/v3/chat", params={"conversation_id": conversation["data"]["id"]},
            headers={"Authorization": f"Bearer {FAKE_TOKEN}"},
            json={"bot_id": FAKE_BOT_ID, "user_id": "u1", "stream": True,
                  "additional_messages": [{"role": "user", "content": "hi", "content_type": "text"}]})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-tt-logid"]
    blocks = response.content.decode().split("\n\n")
    assert blocks[-1] == "" and blocks[-2] == 'event:done\ndata:"[DONE]"'
    names = []
    for block in blocks[:-2]:
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event:") and data_line.startswith("data:")
        data = data_line.removeprefix("data:")
        assert data == json.dumps(json.loads(data), ensure_ascii=False, separators=(",", ":"))
        names.append(event_line.removeprefix("event:"))
    assert names[:2] == ["conversation.chat.created", "conversation.chat.in_progress"]
    assert names[-1] == "conversation.chat.completed"
    assert "今天" in response.text  # raw UTF-8, not \\u escapes


# ---- memory per device -----------------------------------------------------------------------


async def test_one_conversation_per_device(fake: FakeCoze, make_agent: AgentFactory) -> None:
    fake.answer = lambda question, history: f"第{len(history) // 2 + 1}轮。"
    agent = make_agent()
    assert await ask(agent, "一", device="dev-a") == "第1轮。"
    assert await ask(agent, "二", device="dev-a") == "第2轮。"
    assert await ask(agent, "三", device="dev-b") == "第1轮。"
    assert paths(fake).count("/v1/conversation/create") == 2
    chats = fake.requests_to("/v3/chat")
    assert chats[0].query == chats[1].query != chats[2].query
    assert chats[0].body["user_id"] == chats[1].body["user_id"] != chats[2].body["user_id"]


async def test_same_device_continues_after_a_restart(fake: FakeCoze, make_agent: AgentFactory, tmp_path: Path) -> None:
    fake.answer = lambda question, history: f"第{len(history) // 2 + 1}轮。"
    store = SqliteConversationStore.open(tmp_path / "first.db")
    assert await ask(make_agent(store), "一") == "第1轮。"
    await store.aclose()
    reopened = SqliteConversationStore.open(tmp_path / "first.db")
    assert await ask(make_agent(reopened), "二") == "第2轮。"
    await reopened.aclose()
    assert paths(fake).count("/v1/conversation/create") == 1


async def test_a_new_bot_gets_a_new_conversation(fake: FakeCoze, make_agent: AgentFactory) -> None:
    fake.bot_ids.add("7400000000000000002")
    store = MemoryStore()
    await ask(make_agent(store), "一")
    await ask(make_agent(store, bot_id="7400000000000000002"), "二")
    created = fake.requests_to("/v1/conversation/create")
    assert [r.body["bot_id"] for r in created] == [FAKE_BOT_ID, "7400000000000000002"]


async def test_a_conversation_another_server_stored_first_is_the_one_used(fake: FakeCoze, make_agent: AgentFactory) -> None:
    store = MemoryStore()
    first = make_agent(store)
    await ask(first, "一")
    theirs = store.states[("coze", "aa:bb:cc:dd:ee:01")]

    class ReadBeforeTheOtherServerWrote(MemoryStore):
        async def get_state(self, agent: str, device_id: str) -> dict[str, Any] | None:
            return None  # this server read before the other stored its conversation

    racing = ReadBeforeTheOtherServerWrote()
    racing.states = store.states
    await ask(make_agent(racing), "二")
    # This server created a conversation too, but keeps using the one stored first.
    assert paths(fake).count("/v1/conversation/create") == 2
    chats = fake.requests_to("/v3/chat")
    assert chats[-1].query["conversation_id"] == theirs["conversation_id"]
    assert store.states[("coze", "aa:bb:cc:dd:ee:01")]["conversation_id"] == theirs["conversation_id"]


async def test_a_deleted_conversation_is_replaced(fake: FakeCoze, make_agent: AgentFactory) -> None:
    agent = make_agent()
    await ask(agent, "一")
    fake.conversations.clear()
    assert await ask(agent, "二") == fake.answer
    assert paths(fake).count("/v1/conversation/create") == 2


# ---- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "kind", "words"), [
    (ChatFailure(after_deltas=2, code=4013, msg="model error"), "coze_4013", ["4013", "model error"]),
    (ErrorEvent(after_deltas=1, code=5000, msg="internal error"), "coze_5000", ["5000", "internal error"]),
    (JsonError(4009, "the service is overloaded"), "coze_4009", ["4009", "overloaded"]),
    (HttpError(429, 4013, "request rate exceeds the limit"), "http_429", ["429", "4013", "rate exceeds"]),
    (Drop(after_deltas=2), "stream_cut", ["cut"]),
])
async def test_faults_become_typed_errors(fake: FakeCoze, make_agent: AgentFactory, fault: Any, kind: str,
                                          words: list[str]) -> None:
    agent = make_agent()
    fake.inject(fault)
    with pytest.raises(BackendError) as caught:
        await ask(agent, "hi")
    assert caught.value.kind == kind
    assert all(word in str(caught.value) for word in words), str(caught.value)
    assert "logid" in str(caught.value)
    # The conversation is free for the next turn.
    assert not fake.running_chats()
    assert await ask(agent, "again") == fake.answer


async def test_unpublished_bot_is_4015(fake: FakeCoze, make_agent: AgentFactory) -> None:
    with pytest.raises(BackendError) as caught:
        await ask(make_agent(bot_id="7400000000000000999"), "hi")
    assert caught.value.kind == "coze_4015" and "published" in str(caught.value)


async def test_slow_first_token_times_out_and_cancels(fake: FakeCoze, make_agent: AgentFactory,
                                                      autojump_clock: trio.testing.MockClock) -> None:
    agent = make_agent(first_token_timeout=5)
    fake.first_token_delay = 30.0
    start = trio.current_time()
    with pytest.raises(BackendError) as caught:
        await ask(agent, "hi")
    assert caught.value.kind == "timeout"
    assert trio.current_time() - start == pytest.approx(5.0, abs=0.01)
    cancel = fake.requests_to("/v3/chat/cancel")
    assert len(cancel) == 1 and cancel[0].body["chat_id"] in fake.chats
    fake.first_token_delay = 0.0
    assert await ask(agent, "again") == fake.answer


async def test_a_long_answer_outlives_the_first_token_limit(fake: FakeCoze, make_agent: AgentFactory,
                                                            autojump_clock: trio.testing.MockClock) -> None:
    fake.first_token_delay, fake.delta_interval = 2.0, 1.0
    agent = make_agent(first_token_timeout=3)
    assert await ask(agent, "hi") == fake.answer  # 2 s + 6 deltas a second apart
    assert not fake.requests_to("/v3/chat/cancel")


async def test_a_stream_that_goes_quiet_times_out(fake: FakeCoze, make_agent: AgentFactory,
                                                  autojump_clock: trio.testing.MockClock) -> None:
    agent = make_agent(timeout=4)
    fake.inject(Stall(after_deltas=2))
    with pytest.raises(BackendError) as caught:
        await ask(agent, "hi")
    assert caught.value.kind == "timeout"
    assert len(fake.requests_to("/v3/chat/cancel")) == 1 and not fake.running_chats()
    assert await ask(agent, "again") == fake.answer


# ---- barge-in ----------------------------------------------------------------------------------


async def test_barge_in_cancels_the_chat_and_frees_the_conversation(
        fake: FakeCoze, make_agent: AgentFactory, autojump_clock: trio.testing.MockClock) -> None:
    fake.delta_interval = 0.5
    agent = make_agent()
    heard = await barge_in(agent, "讲个长故事", after_deltas=2)
    assert len(heard) == 2
    (cancel,) = fake.requests_to("/v3/chat/cancel")
    (chat,) = fake.chats.values()
    assert cancel.body == {"conversation_id": chat.conversation_id, "chat_id": chat.id}
    assert chat.status == "canceled" and not fake.running_chats()
    assert await ask(agent, "算了，现在几点？") == fake.answer
    assert paths(fake).count("/v3/chat") == 2  # no 4016 and no retry


async def test_barge_in_before_the_first_token(fake: FakeCoze, make_agent: AgentFactory,
                                               autojump_clock: trio.testing.MockClock) -> None:
    fake.first_token_delay = 3.0
    agent = make_agent()
    start = trio.current_time()
    assert await barge_in(agent, "hi", after_seconds=1.0) == []
    assert trio.current_time() - start == pytest.approx(1.0, abs=0.01)
    assert len(fake.requests_to("/v3/chat/cancel")) == 1 and not fake.running_chats()
    assert await ask(agent, "again") == fake.answer


async def test_barge_in_waits_for_a_silent_chat_request_at_most_cancel_timeout(
        fake: FakeCoze, make_agent: AgentFactory, autojump_clock: trio.testing.MockClock) -> None:
    fake.inject(Hang("/v3/chat"))
    agent = make_agent(cancel_timeout=3)
    start = trio.current_time()
    assert await barge_in(agent, "hi", after_seconds=1.0) == []
    assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)
    assert await ask(agent, "again") == fake.answer


async def test_cancel_is_bounded_in_time(fake: FakeCoze, make_agent: AgentFactory,
                                         autojump_clock: trio.testing.MockClock) -> None:
    fake.delta_interval = 0.5
    fake.inject(Hang("/v3/chat/cancel"))
    agent = make_agent(cancel_timeout=3)
    start = trio.current_time()
    await barge_in(agent, "hi", after_deltas=1)
    assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)


async def test_a_chat_left_running_is_cancelled_on_4016(fake: FakeCoze, make_agent: AgentFactory,
                                                        autojump_clock: trio.testing.MockClock) -> None:
    fake.delta_interval = 0.5
    store = MemoryStore()
    fake.inject(HttpError(500, 5000, "internal error", endpoint="/v3/chat/cancel"))
    await barge_in(make_agent(store), "hi", after_deltas=1)
    (left,) = fake.running_chats()  # the cancel failed: the chat still runs
    # A fresh agent (a restarted server) with the same store meets 4016, cancels the chat it
    # remembered, and retries once.
    fake.delta_interval = 0.0
    assert await ask(make_agent(store), "again") == fake.answer
    tail = [(r.path, r.body.get("chat_id") if r.path.endswith("cancel") else None) for r in fake.requests[-3:]]
    assert tail == [("/v3/chat", None), ("/v3/chat/cancel", left.id), ("/v3/chat", None)]
    assert left.status == "canceled"


# ---- tools -------------------------------------------------------------------------------------


VOLUME_RULE = ToolRule("音量", "self__audio_speaker__set_volume", {"volume": 30}, "好的，音量调到30了（设备回复 {output}）。")


async def test_requires_action_runs_the_device_tool(fake: FakeCoze, make_agent: AgentFactory) -> None:
    fake.tool_rules = [VOLUME_RULE]
    device = SimulatedDevice(volume=70)
    tools = SessionTools(connect(device), ToolRegistry())
    answer = await ask(make_agent(), "把音量调到30", tools=tools)
    assert device.volume == 30
    assert device.calls == [("self.audio_speaker.set_volume", {"volume": 30})]
    (submit,) = fake.requests_to("/v3/chat/submit_tool_outputs")
    chat = fake.chats[submit.query["chat_id"]]
    assert submit.body == {"tool_outputs": [{"tool_call_id": chat.tool_call_id, "output": "true"}], "stream": True}
    assert answer == "好的，音量调到30了（设备回复 true）。"
    assert chat.status == "completed"


class SlowTools:
    """A ToolBox whose one tool never answers."""

    async def list_tools(self) -> list[ToolSpec]:
        return [ToolSpec("self.audio_speaker.set_volume", "", {})]

    async def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        await trio.sleep_forever()
        raise AssertionError


@pytest.mark.parametrize(("tools", "output"), [
    (None, "error: this device offers no tools"),
    (SessionTools(None, ToolRegistry()),
     "error: there is no tool called 'self__audio_speaker__set_volume'; no tools are available"),
])
async def test_a_missing_tool_is_reported_to_the_bot(fake: FakeCoze, make_agent: AgentFactory, tools: Any,
                                                     output: str) -> None:
    fake.tool_rules = [VOLUME_RULE]
    answer = await ask(make_agent(), "把音量调到30", tools=tools)
    (submit,) = fake.requests_to("/v3/chat/submit_tool_outputs")
    assert submit.body["tool_outputs"][0]["output"] == output
    assert output in answer


async def test_a_hanging_tool_times_out(fake: FakeCoze, make_agent: AgentFactory,
                                        autojump_clock: trio.testing.MockClock) -> None:
    fake.tool_rules = [VOLUME_RULE]
    answer = await ask(make_agent(tool_timeout=4), "把音量调到30", tools=SlowTools())
    assert "did not answer within 4 s" in answer


async def test_barge_in_during_a_tool_call_cancels_the_waiting_chat(
        fake: FakeCoze, make_agent: AgentFactory, autojump_clock: trio.testing.MockClock) -> None:
    fake.tool_rules = [VOLUME_RULE]
    agent = make_agent(tool_timeout=60)
    await barge_in(agent, "把音量调到30", after_seconds=2.0, tools=SlowTools())
    (chat,) = fake.chats.values()
    assert chat.status == "canceled" and len(fake.requests_to("/v3/chat/cancel")) == 1
    fake.tool_rules = []
    assert await ask(agent, "again") == fake.answer


# ---- options -----------------------------------------------------------------------------------


def context(tmp_path: Path) -> BackendContext:
    return BackendContext(tmp_path, CpuWorkers(1), conversations=MemoryStore())


def test_missing_token_and_bot_id_name_the_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COZE_API_TOKEN", raising=False)
    monkeypatch.delenv("COZE_BOT_ID", raising=False)
    with pytest.raises(ConfigError) as caught:
        create_agent(context(tmp_path), {})
    assert "COZE_BOT_ID" in str(caught.value) and "COZE_API_TOKEN" in str(caught.value)
    monkeypatch.setenv("COZE_BOT_ID", FAKE_BOT_ID)
    with pytest.raises(ConfigError, match="COZE_API_TOKEN") as caught:
        create_agent(context(tmp_path), {})
    assert "COZE_BOT_ID" not in str(caught.value)
    with pytest.raises(ConfigError, match="MY_TOKEN"):
        create_agent(context(tmp_path), {"token_env": "MY_TOKEN"})
    with pytest.raises(ConfigError, match="token.txt"):
        create_agent(context(tmp_path), {"token_file": str(tmp_path / "token.txt")})


@pytest.mark.parametrize(("options", "match"), [
    ({"token": "pat_x"}, "secrets do not belong"),
    ({"colour": "red"}, "unknown key"),
    ({"timeout": -1}, r"\[agent\] timeout must be more than 0, not -1"),
    ({"base_url": "api.coze.cn"}, "base_url must be an http"),
    ({"custom_variables": {"name": 3}}, "custom_variables"),
    ({"oauth": {"client_id": "1"}}, "public_key_id, private_key_file"),
])
def test_bad_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], match: str) -> None:
    monkeypatch.setenv("COZE_API_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("COZE_BOT_ID", FAKE_BOT_ID)
    with pytest.raises(ConfigError, match=match):
        create_agent(context(tmp_path), options)


async def test_registered_as_the_coze_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COZE_API_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("COZE_BOT_ID", FAKE_BOT_ID)
    agent = Plugins().backends.create("agent", "coze", context(tmp_path), {})
    assert isinstance(agent, CozeAgent)
    assert agent.settings.base_url == "https://api.coze.cn" and agent.settings.bot_id == FAKE_BOT_ID
    await agent.aclose()


async def test_custom_variables_are_sent(fake: FakeCoze, make_agent: AgentFactory) -> None:
    await ask(make_agent(custom_variables={"city": "杭州"}), "天气")
    assert fake.requests_to("/v3/chat")[0].body["custom_variables"] == {"city": "杭州"}
