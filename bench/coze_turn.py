"""End of user speech → first reply audio, with Coze answering after a 2.0 s first token.

The server runs in this process with the real Coze plugin talking HTTP to a fake Coze on
loopback (first token after ``--first-token`` seconds, then a delta every 50 ms), the test-double
VAD/ASR/TTS (instant) and a simulated device speaking real Opus. For each turn it prints:

- total: the device's last voiced packet → the first reply packet at the device;
- server-added: that total minus the time Coze itself took to send the first sentence's text
  (request received → the delta that completes the first sentence, i.e. carries the character
  after its full stop), minus the VAD's end-of-speech silence window, which is a setting.

Run: ``python -m bench.coze_turn [--turns 20] [--first-token 2.0]``
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import trio

import xiaozhi_trio.plugins.coze.plugin as coze_plugin
from xiaozhi_trio.pipeline.config import BackendConfig
from xiaozhi_trio.pipeline.events import FirstAudio, FirstSentence, SpeechEndDetected

from xiaozhi_trio.plugins.testing.fakes.backends import speech
from xiaozhi_trio.plugins.testing.fakes.fake_coze import FAKE_BOT_ID, FAKE_TOKEN, FakeCoze
from xiaozhi_trio.plugins.testing.harness import fake_config, make_app, open_device


ANSWER = "It is Wednesday today. Shall we go for a walk in the park?"
DELTA_CHARS = 4


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def run(turns: int, first_token: float) -> None:
    os.environ["COZE_API_TOKEN"] = FAKE_TOKEN
    fake = FakeCoze(answer=ANSWER, first_token_delay=first_token, delta_chars=DELTA_CHARS, delta_interval=0.05)
    with tempfile.TemporaryDirectory() as data:
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            config = fake_config(Path(data))
            config = config.with_backend("agent", BackendConfig("coze", {"bot_id": FAKE_BOT_ID, "base_url": fake.url}))
            app, fakes, events = make_app(Path(data), config=config, plugins=(coze_plugin,))
            from xiaozhi_trio.pipeline.workers import CpuWorkers

            app.workers = CpuWorkers()  # real threads, as in production
            vad_window = fakes.vad.min_silence
            totals, added, server_side = [], [], []
            async with open_device(app) as device:
                for turn in range(turns):
                    reply, spoken_at = await device.ask(speech("what day is it"), trailing_silence=0.8)
                    chat = list(fake.chats.values())[-1]
                    request_at = fake.requests_to("/v3/chat")[-1].at
                    # The splitter can cut after the delta that carries the character after the
                    # first sentence's full stop; until then the server is waiting for text.
                    first_sentence = events.of(FirstSentence)[-1].text
                    completing_delta = min(len(first_sentence) // DELTA_CHARS, len(chat.answer_sent_at) - 1)
                    coze_time = chat.answer_sent_at[completing_delta] - request_at
                    total = reply.first_audio_at - spoken_at
                    totals.append(total)
                    added.append(total - coze_time - vad_window)
                    end = events.of(SpeechEndDetected)[-1].at
                    first = events.of(FirstAudio)[-1].at
                    server_side.append(first - end - coze_time)
            await app.aclose()
            nursery.cancel_scope.cancel()
    ms = lambda v: f"{v * 1000:8.1f}"  # noqa: E731
    print(f"{turns} turns, Coze first token {first_token:.1f} s, VAD end-of-speech window {vad_window * 1000:.0f} ms")
    print(f"{'':32}{'p50':>8}{'p95':>8}{'max':>8}   (ms)")
    for label, values in (
        ("end of speech → first audio", totals),
        ("server-added (device view)", added),
        ("server-added (server events)", server_side),
    ):
        print(f"{label:32}{ms(percentile(values, 50))}{ms(percentile(values, 95))}{ms(max(values))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--first-token", type=float, default=2.0)
    args = parser.parse_args()
    trio.run(run, args.turns, args.first_token)


if __name__ == "__main__":
    main()
