"""The simulated device's playback queue (``xiaozhi_trio.plugins.testing.playback``): underruns,
their silence and the least audio queued, from arrival times alone."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xiaozhi_trio.plugins.testing.playback import replay

FRAME = 0.06


def paced(packets: int, burst: int = 3, start: float = 10.0) -> list[tuple[float, float]]:
    """Arrivals as the server's pacer sends them: ``burst`` packets at once, then one per frame."""
    return [(start + max(0, i - burst + 1) * FRAME, FRAME) for i in range(packets)]


def test_a_paced_reply_plays_without_a_gap_and_keeps_its_lead() -> None:
    played = replay(paced(50), burst=3)
    assert played.underruns == 0
    assert played.silence == 0.0
    assert played.least_queued == pytest.approx(2 * FRAME)  # the lead less the frame being played
    assert played.most_queued == pytest.approx(3 * FRAME)
    assert played.audio == pytest.approx(50 * FRAME)
    assert played.late_packets == ()


def test_a_late_packet_is_one_underrun_as_long_as_the_queue_was_empty() -> None:
    arrivals = paced(20)
    late_by = 0.5
    arrivals = arrivals[:10] + [(at + late_by, seconds) for at, seconds in arrivals[10:]]
    played = replay(arrivals, burst=3)
    assert played.underruns == 1
    # 2 frames were still queued when packet 10 was due: the gap is what is left of the delay.
    assert played.silence == pytest.approx(late_by - 2 * FRAME)
    assert played.late_packets == (10,)
    assert played.least_queued == 0.0


def test_the_opening_burst_does_not_count_as_a_low_queue() -> None:
    arrivals = paced(10, burst=3)
    assert replay(arrivals, burst=1).least_queued == pytest.approx(FRAME)  # packet 1 landed on one frame
    assert replay(arrivals, burst=3).least_queued == pytest.approx(2 * FRAME)


def test_a_reply_of_only_its_burst_has_no_least_queued() -> None:
    played = replay(paced(2), burst=3)
    assert math.isnan(played.least_queued)
    assert replay([], burst=3).packets == 0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="arrived before"):
        replay([(1.0, FRAME), (0.5, FRAME)])
    with pytest.raises(ValueError, match="negative"):
        replay([(1.0, -FRAME)])
    with pytest.raises(ValueError, match="burst"):
        replay([(1.0, FRAME)], burst=0)


gaps = st.lists(st.floats(min_value=0.0, max_value=0.3, allow_nan=False), min_size=1, max_size=60)
lengths = st.sampled_from([0.02, 0.04, 0.06, 0.12])


def arrivals_from(steps: list[float], seconds: float) -> list[tuple[float, float]]:
    at, out = 100.0, []
    for step in steps:
        at += step
        out.append((at, seconds))
    return out


@given(gaps, lengths)
def test_what_was_heard_adds_up(steps: list[float], seconds: float) -> None:
    arrivals = arrivals_from(steps, seconds)
    played = replay(arrivals)
    # Playback runs from the first packet to the end of the last one's audio: audio plus gaps.
    last_end = arrivals[0][0]
    for at, length in arrivals:
        last_end = max(last_end, at) + length
    assert played.started_to_finished == pytest.approx(last_end - arrivals[0][0])
    assert 0 <= played.underruns <= len(arrivals) - 1
    assert played.silence >= 0
    assert (played.underruns == 0) == (played.silence == 0)
    assert len(played.late_packets) == played.underruns
    assert math.isnan(played.least_queued) or 0 <= played.least_queued <= played.most_queued


@given(gaps, lengths, st.data())
def test_a_later_packet_never_means_less_silence(steps: list[float], seconds: float, data: st.DataObject) -> None:
    arrivals = arrivals_from(steps, seconds)
    index = data.draw(st.integers(min_value=1, max_value=max(1, len(arrivals) - 1)))
    delay = data.draw(st.floats(min_value=0.0, max_value=1.0, allow_nan=False))
    delayed = arrivals[:index] + [(at + delay, length) for at, length in arrivals[index:]]
    assert replay(delayed).silence >= replay(arrivals).silence - 1e-9
