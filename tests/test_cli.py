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


async def test_talk_checks_in_gets_bound_and_talks(tmp_path, capsys):
    """`talk --ota` against a real server on loopback with auth and activation on (the defaults)."""
    import dataclasses

    import soundfile
    import trio

    from xiaozhi_trio.pipeline.ops.services import build_ops_services
    from xiaozhi_trio.pipeline.ops.http import serve_http
    from xiaozhi_trio.pipeline.server import serve_devices

    from xiaozhi_trio.plugins.testing.fakes.backends import speech
    from xiaozhi_trio.plugins.testing.harness import fake_config, make_app

    import socket

    with socket.socket() as probe:  # a free port, so the OTA reply names the real WebSocket port
        probe.bind(("127.0.0.1", 0))
        ws_port = probe.getsockname()[1]
    config = fake_config(tmp_path / "data")
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, port=ws_port), extra={"ota": {"port": 0}})
    app, fakes, _ = make_app(tmp_path / "data", config=config)
    from xiaozhi_trio.pipeline.workers import CpuWorkers

    app.workers = CpuWorkers(1)
    fakes.agent.answers["hello server"] = "Hello device, I hear you."
    ops = build_ops_services(config)
    ops.attach(app)
    question = tmp_path / "question.wav"
    soundfile.write(question, speech("hello server"), 16000)
    reply_file = tmp_path / "reply.wav"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_devices, app, "127.0.0.1", ws_port)
        http_port = await nursery.start(serve_http, ops, "127.0.0.1", 0)
        argv = ["talk", "--ota", f"http://127.0.0.1:{http_port}/xiaozhi/ota/", "--wav", str(question), "--save", str(reply_file)]
        # First boot: the server hands out an activation code.
        assert await trio.to_thread.run_sync(main, argv) == 3
        err = capsys.readouterr().err
        code = err.rsplit("devices bind ", 1)[1].strip()
        assert await ops.registry.bind_code(code) is not None
        assert await trio.to_thread.run_sync(main, argv) == 0
        nursery.cancel_scope.cancel()
    out = capsys.readouterr().out
    assert "stt:       'hello server'" in out
    assert "sentence:  Hello device, I hear you." in out
    audio, rate = soundfile.read(reply_file)
    assert rate == 24000 and len(audio) > 0.5 * rate
    ops.close()
    await app.aclose()


@pytest.mark.parametrize(("flags", "level"), [([], "WARNING"), (["-v"], "INFO"), (["-vv"], "DEBUG"), (["-v", "-v", "-v"], "DEBUG")])
def test_verbosity_flags_set_the_log_level(flags, level, capsys):
    import logging

    root = logging.getLogger()
    before = root.level
    try:
        assert main([*flags, "devices", "list"]) == 0
        assert logging.getLevelName(root.level) == level
    finally:
        root.setLevel(before)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('mirror = ["https://m.example/"]', "unknown key(s) in [models]: mirror"),
        ('mirrors = ["ftp://m.example/"]', "[models] mirrors: 'ftp://m.example/' is not an http(s) URL prefix"),
        ("mirrors = [true]", "[models] mirrors[0] must be str, not bool True"),
        ("dir = 3", "[models] dir must be str, not int 3"),
    ],
)
def test_check_serve_and_models_judge_the_models_table_alike(tmp_path, capsys, table, message):
    """One owner of ``[models]``: a table one command rejects, every command rejects the same way."""
    (tmp_path / "config.toml").write_text(f"[models]\n{table}\n")
    for argv in (["check"], ["serve"], ["models", "list"], ["transcribe", str(tmp_path / "none.wav")]):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_models_list_uses_the_configured_folder(tmp_path, capsys):
    (tmp_path / "config.toml").write_text(f'[models]\ndir = "{tmp_path / "my-models"}"\nmirrors = ["https://m.example/"]\n')
    assert main(["models", "list"]) == 0
    assert f"models folder: {tmp_path / 'my-models'}" in capsys.readouterr().out
