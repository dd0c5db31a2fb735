"""The downlink pacer (sans-IO): never further ahead of the device's playback than allowed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xiaozhi_trio.pipeline.stages.pacing import Pacer

FRAME = 0.06


def test_the_first_packets_go_out_as_a_burst_of_the_allowed_lead():
    pacer = Pacer(FRAME, 0.18)
    delays = []
    for _ in range(5):
        delays.append(pacer.delay(0.0))
        if delays[-1] == 0:
            pacer.sent(0.0)
    assert delays[:3] == [0.0, 0.0, 0.0]
    assert delays[3] == pytest.approx(FRAME)


def test_a_late_producer_is_never_caught_up_with_a_burst():
    pacer = Pacer(FRAME, 0.18)
    pacer.sent(0.0)
    assert pacer.lead(10.0) == 0.0  # the device's queue ran dry long ago
    pacer.sent(10.0)
    assert pacer.lead(10.0) == pytest.approx(FRAME)


def test_the_lead_is_at_least_one_frame_and_the_frame_positive():
    assert Pacer(FRAME, 0.0).max_lead == FRAME
    with pytest.raises(ValueError, match="frame_seconds must be positive"):
        Pacer(0.0, 0.18)


@given(
    lead_frames=st.integers(min_value=1, max_value=10),
    gaps=st.lists(st.sampled_from([0.0, 0.001, 0.03, 0.06, 0.2, 1.0]), min_size=1, max_size=80),
)
def test_sending_when_told_keeps_within_the_lead_and_plays_every_frame(lead_frames, gaps):
    """A sender that waits ``delay`` before each packet is never more than ``max_lead`` ahead,
    waits no longer than needed, and the device plays out exactly one frame per packet."""
    pacer = Pacer(FRAME, lead_frames * FRAME)
    now = 0.0
    for gap in gaps:
        now += gap  # the producer's own pace
        wait = pacer.delay(now)
        assert wait >= 0
        now += wait
        assert pacer.lead(now) + FRAME <= pacer.max_lead + 1e-9
        if wait > 0:
            assert pacer.lead(now) + FRAME == pytest.approx(pacer.max_lead)  # not a moment longer
        before = pacer.lead(now)
        pacer.sent(now)
        assert pacer.lead(now) == pytest.approx(before + FRAME)
