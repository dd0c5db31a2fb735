"""One device, one identity: however a client spells its MAC address, it is one device everywhere
(session replacement, agent memory, the Coze user id, recordings)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import trio
from trio_websocket import ConnectionClosed

import xiaozhi_trio.plugins.coze.plugin as coze_plugin
from xiaozhi_trio.pipeline.config import BackendConfig, RecordingConfig
from xiaozhi_trio.pipeline.protocol.handshake import parse_handshake
from xiaozhi_trio.pipeline.protocol.identity import normalise_device_id

from xiaozhi_trio.plugins.testing.fakes.backends import speech
from xiaozhi_trio.plugins.testing.fakes.fake_coze import FAKE_BOT_ID, FAKE_TOKEN, FakeCoze
from xiaozhi_trio.plugins.testing.harness import fake_config, make_app, open_device

UPPER = "25:B0:58:0A:1B:2C"
LOWER = "25:b0:58:0a:1b:2c"


@pytest.mark.parametrize("spelling", [UPPER, LOWER, " 25:b0:58:0A:1b:2C ", "25-B0-58-0A-1B-2C"])
def test_every_spelling_of_a_mac_is_one_id(spelling: str) -> None:
    assert normalise_device_id(spelling) == LOWER


def test_other_ids_are_only_trimmed_and_lower_cased() -> None:
    assert normalise_device_id("Browser-Test-1") == "browser-test-1"
    assert normalise_device_id("6F1C2D3E-4B5A-4C6D-8E7F-90A1B2C3D4E5") == "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5"


def test_the_handshake_normalizes_headers_and_query_parameters() -> None:
    by_header = parse_handshake("/xiaozhi/v1/", [(b"Device-Id", UPPER.encode())], "/xiaozhi/v1/")
    by_query = parse_handshake(f"/xiaozhi/v1/?device-id={UPPER}", [], "/xiaozhi/v1/")
    by_client_id = parse_handshake("/xiaozhi/v1/?client-id=ABC-1", [], "/xiaozhi/v1/")
    assert by_header.device_id == by_query.device_id == LOWER
    assert by_client_id.device_id == "abc-1" and by_client_id.client_id == "ABC-1"


@pytest.fixture
async def coze(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> FakeCoze:
    monkeypatch.setenv("COZE_API_TOKEN", FAKE_TOKEN)
    fake = FakeCoze(answer="Noted.", delta_chars=6, delta_interval=0.0)
    await nursery.start(fake.serve)
    return fake


async def test_both_spellings_share_one_memory_one_user_and_one_recording_folder(tmp_path, coze) -> None:
    base = fake_config(tmp_path)
    config = dataclasses.replace(
        base.with_backend("agent", BackendConfig("coze", {"bot_id": FAKE_BOT_ID, "base_url": coze.url})),
        recording=RecordingConfig(enabled=True),
    )
    app, _, _ = make_app(tmp_path, config=config, plugins=(coze_plugin,))
    async with open_device(app, device_id=UPPER) as device:
        await device.ask(speech("my name is Ada"))
    async with open_device(app, device_id=LOWER) as device:
        await device.ask(speech("what is my name"))
    await app.aclose()
    first, second = coze.requests_to("/v3/chat")
    assert first.query["conversation_id"] == second.query["conversation_id"]
    assert first.body["user_id"] == second.body["user_id"]
    assert len(coze.requests_to("/v1/conversation/create")) == 1
    folders = [p.name for p in (tmp_path / "recordings").iterdir()]
    assert folders == ["25_b0_58_0a_1b_2c"]
    sidecars = [json.loads(p.read_text()) for p in (tmp_path / "recordings" / folders[0]).glob("*.json")]
    assert sorted(s["device_id"] for s in sidecars) == [LOWER, LOWER]


async def test_a_reconnect_in_the_other_spelling_replaces_the_old_session(tmp_path, autojump_clock) -> None:
    app, _, _ = make_app(tmp_path)
    async with open_device(app, device_id=UPPER) as first:
        async with open_device(app, device_id=LOWER):
            assert list(app.sessions.by_device) == [LOWER]
            with trio.fail_after(5):
                while True:  # the first connection is closed by the server
                    try:
                        await first.receive()
                    except ConnectionClosed:
                        break
            assert app.sessions.count == 1
    await app.aclose()
