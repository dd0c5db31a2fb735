"""How long the server takes from the first answer bytes to the first sentence handed to TTS.

A fake Coze on 127.0.0.1 streams answers at a set pace; the Coze agent reads them through the real
stages (``ask_agent`` → ``split_sentences``), exactly as a session does. For each turn:

* ``first bytes → sentence``: from the fake handing the first answer delta to the socket to the
  first ``Sentence`` coming out of the splitter;
* ``text arrival``: the part of that spent waiting for the text of the first sentence itself (until
  the delta that completes it was sent), which no server can save;
* ``overhead``: the rest: loopback, HTTP, SSE and JSON decoding, channels and the splitter.

Target: overhead p95 ≤ 5 ms. Run: ``python bench/agent_first_sentence.py [--turns 100]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio


from xiaozhi_trio.pipeline.backends import AgentRequest, BackendContext
from xiaozhi_trio.pipeline.messages import AgentText, Emotion, Sentence
from xiaozhi_trio.pipeline.stages.agent import ask_agent
from xiaozhi_trio.pipeline.stages.sentences import split_sentences
from xiaozhi_trio.pipeline.store.conversations import SqliteConversationStore
from xiaozhi_trio.pipeline.text.splitter import SentenceSplitter
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.coze.plugin import AGENT_KEY, CozeAgent, create_agent

from xiaozhi_trio.plugins.testing.fakes.fake_coze import FAKE_BOT_ID, FAKE_TOKEN, FakeCoze


@dataclass(frozen=True)
class Scenario:
    name: str
    answer: str
    delta_chars: int
    delta_interval: float
    concurrency: int = 1


SCENARIOS = [
    Scenario("zh, 2 chars / 30 ms", "好的呀，今天是星期三，天气晴朗。我们下午去公园散步吧！", 2, 0.030),
    Scenario("en, 4 chars / 30 ms", "Sure thing, it is Wednesday and sunny today. Shall we walk in the park?", 4, 0.030),
    Scenario("zh, whole answer at once", "好的呀，今天是星期三，天气晴朗。我们下午去公园散步吧！", 100, 0.0),
    Scenario("zh, 20 sessions at once", "好的呀，今天是星期三，天气晴朗。我们下午去公园散步吧！", 2, 0.030, 20),
]


def completing_delta(answer: str, delta_chars: int) -> int:
    """The index of the delta after which the splitter can emit the first sentence."""
    splitter = SentenceSplitter()
    pieces = [answer[i:i + delta_chars] for i in range(0, len(answer), delta_chars)]
    for index, piece in enumerate(pieces):
        if any(isinstance(item, Sentence) for item in splitter.feed(piece)):
            return index
    return len(pieces) - 1


async def one_turn(agent: CozeAgent, store: SqliteConversationStore, fake: FakeCoze, device: str,
                   k: int) -> tuple[float, float]:
    """Run one turn; return (first bytes → first sentence, overhead) in seconds."""
    text_send, text_receive = trio.open_memory_channel[AgentText](0)
    sentence_send, sentence_receive = trio.open_memory_channel[Sentence | Emotion](0)
    first_sentence_at = math.nan
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: ask_agent(agent, AgentRequest(device, "bench", "今天星期几？"), text_send,
                                             apology="Sorry.", on_first_text=lambda: None, on_error=print))
        nursery.start_soon(split_sentences, text_receive, sentence_send)
        async for item in sentence_receive:
            if isinstance(item, Sentence) and math.isnan(first_sentence_at):
                first_sentence_at = trio.current_time()
    state = await store.get_state(AGENT_KEY, device)
    assert state is not None
    sent = fake.chats[state["chat_id"]].answer_sent_at
    return first_sentence_at - sent[0], first_sentence_at - sent[k]


async def run(scenario: Scenario, turns: int, data_dir: Path) -> dict[str, float]:
    fake = FakeCoze(answer=scenario.answer, delta_chars=scenario.delta_chars,
                    delta_interval=scenario.delta_interval, first_token_delay=0.05)
    k = completing_delta(scenario.answer, scenario.delta_chars)
    store = SqliteConversationStore.open(data_dir / f"bench-{id(scenario)}.db")
    waits: list[float] = []
    overheads: list[float] = []
    async with trio.open_nursery() as nursery:
        url = await nursery.start(fake.serve)
        context = BackendContext(data_dir, CpuWorkers(), conversations=store)
        agent = create_agent(context, {"bot_id": FAKE_BOT_ID, "base_url": url})
        devices = [f"bench-{i:02d}" for i in range(scenario.concurrency)]
        rounds = math.ceil(turns / scenario.concurrency)

        async def device_turns(device: str) -> None:
            for round_ in range(rounds + 2):
                wait, overhead = await one_turn(agent, store, fake, device, k)
                if round_ >= 2:  # the first two warm up connections and the conversation
                    waits.append(wait)
                    overheads.append(overhead)

        async with trio.open_nursery() as devices_nursery:
            for device in devices:
                devices_nursery.start_soon(device_turns, device)
        await agent.aclose()
        nursery.cancel_scope.cancel()
    await store.aclose()
    return {
        "turns": len(overheads),
        "overhead_p50": percentile(overheads, 50), "overhead_p95": percentile(overheads, 95),
        "overhead_max": max(overheads),
        "wait_p50": percentile(waits, 50), "wait_p95": percentile(waits, 95),
        "text_arrival": statistics.median(w - o for w, o in zip(waits, overheads, strict=True)),
    }


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


async def main(turns: int) -> int:
    os.environ["COZE_API_TOKEN"] = FAKE_TOKEN
    logging.basicConfig(level=logging.WARNING)
    print(f"{'scenario':28} {'turns':>5} | {'overhead p50':>12} {'p95':>6} {'max':>6} | "
          f"{'first bytes→sentence p50':>24} {'p95':>6} | {'text arrival':>12}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in SCENARIOS:
            r = await run(scenario, turns, Path(tmp))
            worst = max(worst, r["overhead_p95"])
            print(f"{scenario.name:28} {r['turns']:>5} | {r['overhead_p50'] * 1e3:>9.2f} ms {r['overhead_p95'] * 1e3:>6.2f} "
                  f"{r['overhead_max'] * 1e3:>6.2f} | {r['wait_p50'] * 1e3:>21.2f} ms {r['wait_p95'] * 1e3:>6.2f} | "
                  f"{r['text_arrival'] * 1e3:>9.2f} ms")
    print(f"\noverhead p95, worst scenario: {worst * 1e3:.2f} ms (target ≤ 5 ms): {'PASS' if worst <= 0.005 else 'FAIL'}")
    return 0 if worst <= 0.005 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100, help="measured turns per scenario (default 100)")
    sys.exit(trio.run(main, parser.parse_args().turns))
