"""Property: whatever a device does, in whatever order, the session keeps the protocol's
invariants and leaves nothing running when the device goes away."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.messages import OpusPacket

from xiaozhi_trio.plugins.testing.fakes.backends import FakeBackends, speech
from xiaozhi_trio.plugins.testing.harness import make_app, open_device

FRAME = 0.06

PHRASES = ["hello", "tell me more", "stop"]

single_actions = st.one_of(
    st.tuples(st.just("listen"), st.sampled_from(["auto", "manual", "realtime"])),
    # A phrase and the microphone's silence after it, streamed in real time as the firmware does.
    st.tuples(st.just("speak"), st.sampled_from(PHRASES), st.sampled_from([0.3, 1.0]), st.sampled_from([0.0, 0.5, 2.0])),
    st.tuples(st.just("stop")),
    st.tuples(st.just("abort")),
    st.tuples(st.just("detect")),
    # A typed message (browser clients): answered like speech, interrupting any reply.
    st.tuples(st.just("type"), st.sampled_from(PHRASES)),
    st.tuples(st.just("pause"), st.sampled_from([0.05, 0.5, 3.0])),
)
#: A whole exchange (listen, a question, perhaps an interruption mid-reply), so that most scripts
#: reach the interesting states instead of wandering around the idle ones.
exchanges = st.tuples(
    st.tuples(st.just("listen"), st.sampled_from(["auto", "manual", "realtime"])),
    st.tuples(st.just("speak"), st.sampled_from(PHRASES), st.just(1.0), st.sampled_from([0.5, 2.0])),
    st.one_of(st.tuples(st.just("stop")), st.tuples(st.just("pause"), st.sampled_from([0.1, 1.5]))),
    st.sampled_from([("abort",), ("detect",), ("type", "stop"), ("pause", 0.5)]),
)
scripts = st.lists(st.one_of(exchanges, st.tuples(single_actions)), min_size=1, max_size=6).map(
    lambda groups: [action for group in groups for action in group]
)


@dataclass
class Downlink:
    """The device's view of the downlink, checked as it arrives."""

    speaking: bool = False
    starts: int = 0
    stops: int = 0
    #: trio time an abort, wake word or typed message was sent while speaking (until the next
    #: tts stop).
    interrupted_at: float | None = None
    violations: list[str] = field(default_factory=list)

    def see(self, item: dict[str, Any] | OpusPacket) -> None:
        now = trio.current_time()
        if isinstance(item, OpusPacket):
            if not self.speaking:
                self.violations.append(f"audio outside tts start/stop at {now:.2f}")
            elif self.interrupted_at is not None and now - self.interrupted_at > FRAME:
                self.violations.append(f"stale audio {now - self.interrupted_at:.3f} s after an interruption")
            return
        if item.get("type") == "tts" and item.get("state") == "start":
            if self.speaking:
                self.violations.append("tts start while already speaking")
            self.speaking, self.starts = True, self.starts + 1
        elif item.get("type") == "tts" and item.get("state") == "stop":
            self.speaking, self.stops, self.interrupted_at = False, self.stops + 1, None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(script=scripts, version=st.sampled_from([1, 2, 3]), disconnect_early=st.booleans())
async def test_any_device_behaviour_keeps_the_invariants(tmp_path, autojump_clock, script, version, disconnect_early):
    fakes = FakeBackends()
    fakes.agent.delta_delay = 0.02
    for phrase in PHRASES:  # replies of a few seconds, so interruptions land mid-reply
        fakes.agent.answers[phrase] = " ".join(f"Sentence {i} about {phrase}." for i in range(8))
    app, _, _ = make_app(tmp_path, fakes)
    downlink = Downlink()
    async with open_device(app, protocol_version=version) as device:
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                while True:
                    downlink.see(await device.receive())

            nursery.start_soon(read)
            for action in script:
                match action:
                    case ("listen", mode):
                        await device.listen_start(mode)
                    case ("speak", phrase, seconds, silence):
                        await device.speak(speech(phrase, seconds), trailing_silence=silence)
                    case ("stop",):
                        await device.listen_stop()
                    case ("abort",) | ("detect",) | ("type", _):
                        if downlink.speaking and downlink.interrupted_at is None:
                            downlink.interrupted_at = trio.current_time()
                        match action:
                            case ("abort",):
                                await device.abort()
                            case ("detect",):
                                await device.wake_word("你好小智")
                            case ("type", phrase):
                                await device.send_text(phrase)
                    case ("pause", seconds):
                        await trio.sleep(seconds)
            if not disconnect_early:
                await trio.sleep(120)  # let any reply play out
                assert not downlink.speaking, "a tts start was never followed by a stop"
                assert downlink.starts == downlink.stops
            nursery.cancel_scope.cancel()
    assert downlink.violations == []
    assert app.sessions.count == 0
