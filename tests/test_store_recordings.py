"""Per-turn recordings: files written, readable, named safely, and kept under the size cap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.pipeline.config import RecordingConfig, parse_config
from xiaozhi_trio.pipeline.messages import PcmChunk
from xiaozhi_trio.pipeline.store.recordings import (
    Recorder,
)


def tone(seconds: float, rate: int) -> PcmChunk:
    t = np.arange(int(seconds * rate)) / rate
    return PcmChunk((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)


def test_a_turn_is_saved_as_flac_and_a_sidecar(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, 10_000_000)
    utterance, reply = tone(1.0, 16000), tone(0.5, 24000)
    recorder.save(
        "aa:bb:cc", "s1", 3, utterance, reply, "what time is it", "It is noon."
    )
    folder = tmp_path / "aa_bb_cc"
    sidecar_path = next(folder.glob("*.json"))
    sidecar = json.loads(sidecar_path.read_text())
    assert (
        sidecar["transcript"] == "what time is it"
        and sidecar["reply_text"] == "It is noon."
    )
    assert sidecar["turn"] == 3 and sidecar["user"]["seconds"] == 1.0
    audio, rate = soundfile.read(folder / sidecar["user"]["file"], dtype="float32")
    assert rate == 16000 and len(audio) == 16000
    assert np.max(np.abs(audio - utterance.samples)) < 1e-3
    audio, rate = soundfile.read(folder / sidecar["reply"]["file"], dtype="float32")
    assert rate == 24000 and len(audio) == 12000


def test_missing_audio_is_skipped_and_hostile_ids_are_made_safe(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, 10_000_000)
    recorder.save("../../etc", "a/b", 1, None, None, "", "")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".json"
    assert files[0].resolve().is_relative_to(tmp_path.resolve())
    assert "/" not in files[0].name


def test_the_oldest_turns_go_when_over_the_cap(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, 120_000)
    for turn in range(8):
        recorder.save("dev", "s", turn, tone(1.0, 16000), None, f"turn {turn}", "")
    total = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert total <= 120_000
    kept = sorted(json.loads(p.read_text())["turn"] for p in tmp_path.rglob("*.json"))
    assert kept and kept == list(
        range(8 - len(kept), 8)
    )  # a contiguous run of the newest
    # Each kept turn still has its audio (turns are deleted whole).
    assert len(list(tmp_path.rglob("*.flac"))) == len(kept)


def test_a_single_turn_over_the_cap_is_kept(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, 1000)
    recorder.save("dev", "s", 1, tone(1.0, 16000), None, "long", "")
    assert len(list(tmp_path.rglob("*.flac"))) == 1


def test_recording_config_is_checked() -> None:
    assert parse_config({}).recording == RecordingConfig(False, 500.0)
    assert parse_config({"recording": {"enabled": True, "max_megabytes": 20}}).recording == RecordingConfig(True, 20.0)
    with pytest.raises(ConfigError, match=r"\[recording\] enabled must be bool"):
        parse_config({"recording": {"enabled": "yes"}})
    with pytest.raises(ConfigError, match=r"\[recording\] max_megabytes must be more than 0"):
        parse_config({"recording": {"max_megabytes": 0}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"recording": {"dir": "x"}})
