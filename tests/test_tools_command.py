"""``xiaozhi-trio tools``: a device's tool listing is recorded by the server and shown to the bot
owner with the names to enter in Coze."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import trio
from xiaozhi_trio.pipeline.backends import ToolSpec
from xiaozhi_trio.pipeline.cli import main
from xiaozhi_trio.pipeline.ops.services import build_ops_services
from xiaozhi_trio.pipeline.store.device_tools import DeviceToolLists
from xiaozhi_trio.pipeline.store.sqlite import DATABASE_FILE, open_database

from xiaozhi_trio.plugins.testing.fakes.backends import speech
from xiaozhi_trio.plugins.testing.fakes.mcp_device import SimulatedDevice
from xiaozhi_trio.plugins.testing.harness import fake_config, make_app, open_device

DEVICE = "AA:BB:CC:00:00:07"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path}"\n')
    return path


async def connect_a_device_once(tmp_path: Path) -> None:
    """A device with the firmware's tools connects to a server and asks one question."""
    config = dataclasses.replace(fake_config(tmp_path), extra={"auth": {"enabled": False}})
    app, _, _ = make_app(tmp_path, config=config)
    ops = build_ops_services(app.config)
    ops.attach(app)
    simulated = SimulatedDevice()
    async with open_device(app, device_id=DEVICE, features={"mcp": True}) as device:
        device.mcp_handler = simulated.handle
        await device.ask(speech("hello"))
    known = await ops.tool_lists.get(DEVICE)
    assert known is not None and "self.audio_speaker.set_volume" in [spec.name for spec in known.tools]
    ops.close()
    await app.aclose()


async def test_a_device_listing_is_recorded_and_shown_with_the_names_for_coze(tmp_path, config_file, capsys) -> None:
    await connect_a_device_once(tmp_path)
    # The command runs in its own process in real use (its own trio loop and database connection).
    assert await trio.to_thread.run_sync(main, ["tools", "--config", str(config_file), DEVICE.lower()]) == 0
    out = capsys.readouterr().out
    block = out.split("self.audio_speaker.set_volume\n", 1)[1].split("\n\n", 1)[0]
    assert "enter in Coze:  self__audio_speaker__set_volume" in block
    assert "also accepted:  self.audio_speaker.set_volume, set_volume, audio_speaker_set_volume" in block
    assert "parameters:     volume (integer, 0 to 100, required)" in block
    assert "self.reboot" not in out  # a tool for the user only is never offered to agents

    assert await trio.to_thread.run_sync(main, ["tools", "--config", str(config_file), DEVICE, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["device_id"] == DEVICE.lower()
    (volume,) = [t for t in record["device_tools"] if t["name"] == "self.audio_speaker.set_volume"]
    assert volume["coze_name"] == "self__audio_speaker__set_volume"
    assert volume["parameters"]["properties"]["volume"]["maximum"] == 100

    assert await trio.to_thread.run_sync(main, ["tools", "--config", str(config_file)]) == 0
    overview = capsys.readouterr().out
    assert DEVICE.lower() in overview and "tools DEVICE_ID" in overview


def test_an_unknown_device_says_how_listings_are_made(config_file, capsys) -> None:
    assert main(["tools", "--config", str(config_file), "11:22:33:44:55:66"]) == 1
    assert "no tool listing for 11:22:33:44:55:66" in capsys.readouterr().err
    assert main(["tools", "--config", str(config_file)]) == 0
    assert "no device has listed its tools yet" in capsys.readouterr().out


async def test_the_store_keeps_the_latest_listing_per_device(tmp_path) -> None:
    now = [1000.0]
    lists = DeviceToolLists(open_database(tmp_path / DATABASE_FILE), clock=lambda: now[0])
    schema = {"type": "object", "properties": {"volume": {"type": "integer"}}}
    await lists.save("AA:BB", [ToolSpec("self.a", "first", schema)])
    now[0] = 2000.0
    await lists.save("aa:bb", [ToolSpec("self.b", "second", {})])
    await lists.save("cc:dd", [])
    known = await lists.get("Aa:Bb")
    assert known is not None and known.listed_at == 2000.0
    assert known.tools == (ToolSpec("self.b", "second", {}),)
    assert [k.device_id for k in await lists.all()] == ["aa:bb", "cc:dd"]
    assert await lists.get("ee:ff") is None
    lists.database.close()
