"""The ``turn`` backend kind: config, registration, the Smart Turn model, and running without it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soxr

from xiaozhi_trio.pipeline.app import App
from xiaozhi_trio.pipeline.backends import BackendContext, BackendUnavailable, ConfigError
from xiaozhi_trio.pipeline.cli import main
from xiaozhi_trio.pipeline.config import TurnPolicyConfig, default_data_dir, parse_config
from xiaozhi_trio.pipeline.messages import PcmChunk
from xiaozhi_trio.pipeline.registry import Plugins
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.speech import turn as smart_turn
from xiaozhi_trio.plugins.speech.turn import MODEL_NAME, SmartTurn, SmartTurnOptions, create_turn_detector, load_session

from xiaozhi_trio.plugins.testing.harness import fake_config, make_app
from xiaozhi_trio.plugins.testing.speech import spoken
from xiaozhi_trio.plugins.testing.turn_clips import broken_off

MODEL_FILE = "smart-turn-v3.2-cpu.onnx"


def installed_model() -> Path:
    """The real model where ``xiaozhi-trio models install smart-turn-v3.2`` puts it (CI does)."""
    path = default_data_dir() / "models" / MODEL_NAME / MODEL_FILE
    if not path.is_file():
        pytest.skip(f"{path} is missing: run xiaozhi-trio models install {MODEL_NAME}")
    return path


def context(tmp_path: Path) -> BackendContext:
    return BackendContext(data_dir=tmp_path, workers=CpuWorkers(1))


# ------------------------------------------------------------------------------------------
# Config and registration
# ------------------------------------------------------------------------------------------


def test_the_turn_table_splits_policy_keys_from_backend_options() -> None:
    config = parse_config({"turn": {"backend": "smart-turn", "pause_ms": 250, "num_threads": 2, "modes": ["auto"]}})
    assert config.backend("turn").backend == "smart-turn" and dict(config.backend("turn").options) == {"num_threads": 2}
    assert config.turn_policy == TurnPolicyConfig(pause_ms=250.0, modes=("auto",))
    assert parse_config({}).backend("turn").backend == "smart-turn"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"pause_ms": 0}, "pause_ms"),
        ({"pause_ms": 900, "max_silence_ms": 800}, "max_silence_ms"),
        ({"threshold": 1.5}, "threshold"),
        ({"modes": ["always"]}, r"\[turn\] modes\[0\] must be one of .auto., .manual., .realtime., not .always."),
        ({"recheck_ms": "soon"}, "recheck_ms must be float"),
        ({"recheck_ms": -1}, "recheck_ms must be at least 0"),
        ({"schedule": 0.9}, r"\[turn\] schedule must be a list of a list of float"),
        ({"schedule": []}, "at least one"),
        ({"schedule": [[200, 0.9, 1]]}, r"schedule\[0\] must be \[silence_ms, probability\]"),
        ({"schedule": [[200, 1.2]]}, r"schedule\[0\] must be .*at most 1, not \[200.0, 1.2\]"),
        ({"schedule": [[1000, 0.9], [200, 0.5]]}, r"schedule\[1\]: silences must grow"),
        ({"schedule": [[200, 0.5], [1000, 0.9]]}, r"schedule\[1\]: the probability may only fall"),
        ({"schedule": [[200, 0.9]], "threshold": 0.8}, "both schedule and threshold"),
    ],
)
def test_bad_policy_values_are_named(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"turn": table})


def test_the_policy_takes_a_schedule_or_one_threshold() -> None:
    from xiaozhi_trio.pipeline.stages.turn_policy import TurnTiming

    default = TurnTiming.from_config(TurnPolicyConfig())
    assert default == TurnTiming() and default.schedule == ((0.2, 0.93), (1.0, 0.5)) and default.recheck == 0
    custom = parse_config({"turn": {"schedule": [[300, 0.95], [700, 0.8], [1200, 0.5]], "recheck_ms": 300}}).turn_policy
    assert TurnTiming.from_config(custom).schedule == ((0.3, 0.95), (0.7, 0.8), (1.2, 0.5))
    assert TurnTiming.from_config(parse_config({"turn": {"threshold": 0.8}}).turn_policy).schedule == ((0.0, 0.8),)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"modle": "x"}, r"unknown key\(s\) in \[turn\]: modle"), ({"num_threads": 0}, "num_threads"), ({"model": ""}, "model")],
)
def test_bad_backend_options_are_named(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SmartTurnOptions.parse(options)


def test_the_plugin_registers_the_backend_through_its_entry_point() -> None:
    plugins = Plugins()
    entry = plugins.backends.get("turn", "smart-turn")
    assert entry.plugin == "smart_turn"
    assert "smart-turn" in plugins.backends.names("turn")


def test_plugins_lists_the_turn_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    assert "turn:smart-turn" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# Without the model, or with a broken one
# ------------------------------------------------------------------------------------------


def test_a_model_not_installed_is_unavailable_not_broken(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match=f"models install {MODEL_NAME}") as error:
        create_turn_detector(context(tmp_path), {})
    assert not error.value.broken


@pytest.mark.parametrize("content", [b"", b"\x08\x01garbage" * 100, None])
def test_a_corrupt_or_missing_file_is_broken_and_named(tmp_path: Path, content: bytes | None) -> None:
    folder = tmp_path / "models" / MODEL_NAME
    folder.mkdir(parents=True)
    if content is not None:
        (folder / MODEL_FILE).write_bytes(content)
    with pytest.raises(BackendUnavailable) as error:
        create_turn_detector(context(tmp_path), {})
    assert error.value.broken and MODEL_NAME in str(error.value)


def test_a_given_path_that_does_not_exist_is_broken(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="does not exist") as error:
        create_turn_detector(context(tmp_path), {"model": str(tmp_path / "nope.onnx")})
    assert error.value.broken


def test_the_server_goes_on_without_the_detector_and_says_so_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config({**{k: {"backend": "fake"} for k in ("vad", "asr", "agent", "tts")}, "server": {"data_dir": str(tmp_path)}})
    (tmp_path / "models" / MODEL_NAME).mkdir(parents=True)
    (tmp_path / "models" / MODEL_NAME / MODEL_FILE).write_bytes(b"corrupt")
    with caplog.at_level(logging.WARNING):
        app, _, _ = make_app(tmp_path, config=config, plugins=(smart_turn,))
    assert app.turn is None and app.unavailable["turn"].broken
    warnings = [r for r in caplog.records if "[turn] smart-turn is not available" in r.getMessage()]
    assert len(warnings) == 1


def test_turn_off_builds_no_detector(tmp_path: Path) -> None:
    app, _, _ = make_app(tmp_path, config=fake_config(tmp_path))
    assert app.turn is None and app.unavailable == {}


@pytest.fixture
def cli_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XIAOZHI_TRIO_DATA", str(tmp_path / "data"))
    (tmp_path / "config.toml").write_text('[agent]\nbackend = "openai"\nbase_url = "http://127.0.0.1:11434/v1"\nmodel = "qwen2.5"\n')
    return tmp_path


@pytest.mark.models
def test_check_notes_a_missing_model_and_passes(cli_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert f"turn: smart-turn: not available: model '{MODEL_NAME}' is not installed" in out
    assert "VAD's silence window" in out


@pytest.mark.models
def test_check_fails_on_a_corrupt_model(cli_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = cli_dir / "data" / "models" / MODEL_NAME
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(b"\x00" * 1000)
    assert main(["check"]) == 1
    err = capsys.readouterr().err
    assert "turn: smart-turn: ERROR" in err and MODEL_FILE in err


# ------------------------------------------------------------------------------------------
# The real model
# ------------------------------------------------------------------------------------------


@pytest.mark.models
async def test_the_real_model_tells_a_finished_question_from_one_broken_off() -> None:
    """espeak-ng speech (deterministic): a whole question, and one cut at its comma's pause."""
    detector = SmartTurn(load_session(installed_model()), CpuWorkers(1))
    quiet = np.zeros(3200, np.float32)  # the 200 ms pause at which the policy asks
    finished = np.concatenate([quiet, spoken("Can you tell me a joke?", "en-us", 150), quiet])
    text = "I would like to know, the weather in Shanghai."
    broken = broken_off(text, "en", "en-us", spoken(text, "en-us", 150), 0.6)
    unfinished = np.concatenate([quiet, broken.before_pause, quiet])
    complete = await detector.predict(PcmChunk(finished, 16000))
    incomplete = await detector.predict(PcmChunk(unfinished, 16000))
    assert complete.complete and complete.probability > 0.8, complete
    assert not incomplete.complete and incomplete.probability < 0.2, incomplete
    # Another rate is resampled, with the same verdicts.
    at_24k = soxr.resample(unfinished, 16000, 24000).astype(np.float32)
    assert not (await detector.predict(PcmChunk(at_24k, 24000))).complete
    assert detector.calls == 3 and detector.seconds > 0


@pytest.mark.models
def test_the_real_model_loads_through_the_factory(tmp_path: Path) -> None:
    path = installed_model()
    detector = create_turn_detector(context(tmp_path), {"model": str(path), "num_threads": 1})
    assert detector.path == path
    assert 0.0 <= detector.probability(np.zeros(16000, np.float32)) <= 1.0
