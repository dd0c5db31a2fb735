"""The command line: check, serve's start-up errors, config errors."""

from __future__ import annotations

import pytest

from xiaozhi_trio.pipeline.cli import main


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XIAOZHI_TRIO_DATA", str(tmp_path / "data"))
    for name in ("COZE_API_TOKEN", "COZE_BOT_ID", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_serve_without_coze_credentials_exits_at_once_naming_the_variables(capsys):
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "COZE_BOT_ID" in err or "COZE_API_TOKEN" in err
    assert "[agent] coze" in err


def test_unknown_config_key_is_named(tmp_path, capsys):
    (tmp_path / "config.toml").write_text("[session]\nidel_timeout = 3\n")
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "idel_timeout" in err and "idle_timeout" in err


def test_wrong_type_is_named(tmp_path, capsys):
    (tmp_path / "config.toml").write_text('[server]\nport = "eight thousand"\n')
    assert main(["check"]) == 2
    assert "[server] port must be int" in capsys.readouterr().err


def test_bad_toml_is_reported(tmp_path, capsys):
    (tmp_path / "config.toml").write_text("[server\n")
    assert main(["check"]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_unknown_backend_is_named_with_the_alternatives(tmp_path, capsys):
    (tmp_path / "config.toml").write_text('[tts]\nbackend = "nope"\n[agent]\nbackend = "openai"\nbase_url = "http://127.0.0.1:11434/v1"\n')
    assert main(["check"]) == 1
    err = capsys.readouterr().err
    assert "unknown tts backend 'nope'" in err and "sherpa-onnx" in err


@pytest.mark.models
def test_check_loads_every_default_backend(tmp_path, capsys):
    (tmp_path / "config.toml").write_text('[agent]\nbackend = "openai"\nbase_url = "http://127.0.0.1:11434/v1"\nmodel = "qwen2.5"\n')
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "all backends loaded" in out
