"""The OTA check-in and activation exchange, exactly as the firmware performs it."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re

import httpx
import pytest
from xiaozhi_trio.pipeline.ops.ota import local_timezone_offset

from xiaozhi_trio.plugins.testing.fakes.firmware_ota import FirmwareOta
from xiaozhi_trio.plugins.testing.fakes.ops_server import WallClock, running_ops

MAC = "a4:cf:12:34:56:78"
KEY = bytes(range(32))


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XIAOZHI_TRIO_SECRET", raising=False)


def device(client: httpx.AsyncClient, base: str, **kwargs) -> FirmwareOta:
    return FirmwareOta(client, f"{base}/xiaozhi/ota/", **kwargs)


async def test_first_check_in_reply_has_exactly_what_the_firmware_reads(tmp_path) -> None:
    clock = WallClock(1_786_000_000.25)
    async with running_ops(tmp_path, {"ota": {"timezone_offset": 480}}, clock=clock) as (services, base), httpx.AsyncClient() as client:
        dev = device(client, base)
        assert await dev.check_version() == 0
        reply = dev.last_reply
        assert set(reply) == {"websocket", "server_time", "activation"}  # never mqtt, no firmware
        assert reply["websocket"] == {"url": "ws://127.0.0.1:8000/xiaozhi/v1/", "token": "", "version": 1}
        assert reply["server_time"] == {"timestamp": 1_786_000_000_250, "timezone_offset": 480}
        activation = reply["activation"]
        assert re.fullmatch(r"\d{6}", activation["code"])
        assert activation["code"] in activation["message"]
        assert re.fullmatch(r"[0-9a-f]{32}", activation["challenge"])
        assert activation["timeout_ms"] == 60 * 60 * 1000
        assert dev.has_websocket_config and not dev.has_mqtt_config and dev.has_server_time
        assert dev.settings == {"url": "ws://127.0.0.1:8000/xiaozhi/v1/", "token": "", "version": 1}
        assert dev.server_time_ms == 1_786_000_000_250 + 480 * 60_000

        record = await services.registry.get(MAC.upper())
        assert record is not None
        assert (record.client_id, record.board, record.board_type, record.firmware_version) == (
            dev.uuid, "bread-compact-wifi", "bread-compact-wifi", "2.0.3")
        assert (record.language, record.address, record.activation_version) == ("zh-CN", "127.0.0.1", 1)
        assert record.state == "pending" and not record.bound


async def test_activation_loop_202_until_the_owner_binds_then_200(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base), httpx.AsyncClient() as client:
        dev = device(client, base)
        waits = 0

        async def owner(result: str) -> None:
            nonlocal waits
            if result == "timeout":
                waits += 1
                if waits == 3:  # the owner reads the code off the screen and binds it
                    assert await services.registry.bind_code(dev.activation_code) is not None

        log = await dev.boot(on_activate_result=owner)
        code = dev.activation_code
        assert log == ["check:0", f"code:{code}", "activate:timeout", "activate:timeout", "activate:timeout",
                       "activate:ok", "check:0", "done"]
        # The token the firmware now has (it adds "Bearer " itself) opens a session.
        token = dev.settings["token"]
        assert token
        decision = await services.auth.check(MAC, dev.uuid, f"Bearer {token}")
        assert decision.ok, decision.reason
        # Once bound, the reply no longer carries an activation block.
        assert await dev.check_version() == 0 and "activation" not in dev.last_reply


async def test_activation_off_admits_a_new_device_at_once(tmp_path) -> None:
    async with running_ops(tmp_path, {"devices": {"activation": False}}) as (services, base), httpx.AsyncClient() as client:
        dev = device(client, base)
        assert await dev.boot() == ["check:0", "done"]
        assert (await services.auth.check(MAC, dev.uuid, "Bearer " + dev.settings["token"])).ok


async def test_code_is_stable_while_valid_and_renewed_after_expiry(tmp_path) -> None:
    clock = WallClock()
    async with running_ops(tmp_path, {"devices": {"code_ttl_minutes": 10}}, clock=clock) as (services, base), httpx.AsyncClient() as client:
        dev = device(client, base)
        await dev.check_version()
        first = dev.activation_code
        clock.advance(9 * 60)
        await dev.check_version()
        assert dev.activation_code == first
        assert dev.last_reply["activation"]["timeout_ms"] == 60_000
        clock.advance(2 * 60)
        assert await services.registry.bind_code(first) is None  # expired
        await dev.check_version()
        assert dev.activation_code != first
        assert await services.registry.bind_code(dev.activation_code) is not None


async def test_serial_number_device_proves_its_key_after_the_owner_binds(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base):
        await services.registry.set_key("SN2026000042", KEY)
        async with httpx.AsyncClient() as client:
            dev = device(client, base, serial_number="SN2026000042", hmac_key=KEY)
            assert await dev.check_version() == 0
            request_headers = dev.headers()
            assert request_headers["Activation-Version"] == "2" and request_headers["Serial-Number"] == "SN2026000042"
            bound = await services.registry.bind_code(dev.activation_code)
            assert bound is not None and bound.state == "approved" and not bound.bound
            # Firmware payload: {"algorithm","serial_number","challenge","hmac"} with the eFuse key.
            payload = json.loads(dev.activation_payload())
            assert payload["hmac"] == hmac.new(KEY, dev.activation_challenge.encode(), hashlib.sha256).hexdigest()
            assert await dev.activate() == "ok"
            record = await services.registry.get(MAC)
            assert record is not None and record.state == "bound"


async def test_serial_number_proof_may_come_before_the_owner_binds(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base):
        await services.registry.set_key("SN1", KEY)
        async with httpx.AsyncClient() as client:
            dev = device(client, base, serial_number="SN1", hmac_key=KEY)
            await dev.check_version()
            assert await dev.activate() == "timeout"  # proof accepted, owner not yet
            record = await services.registry.bind_code(dev.activation_code)
            assert record is not None and record.state == "bound"
            assert await dev.activate() == "ok"


async def test_wrong_device_key_is_refused_and_nothing_is_bound(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base):
        await services.registry.set_key("SN1", KEY)
        async with httpx.AsyncClient() as client:
            dev = device(client, base, serial_number="SN1", hmac_key=b"\x01" * 32)
            await dev.check_version()
            await services.registry.bind_code(dev.activation_code)
            response = await client.post(f"{base}/xiaozhi/ota/activate", headers=dev.headers(), content=dev.activation_payload())
            assert response.status_code == 403 and "hmac" in response.json()["error"]
            # A stale challenge is refused as well.
            dev.hmac_key = KEY
            dev.activation_challenge = "0" * 32
            assert await dev.activate() == "fail"
            record = await services.registry.get(MAC)
            assert record is not None and not record.bound


async def test_serial_number_without_provisioned_key(tmp_path) -> None:
    # Default: the owner's bind is the proof; the unverifiable hmac (here empty) is accepted.
    async with running_ops(tmp_path) as (services, base), httpx.AsyncClient() as client:
        dev = device(client, base, serial_number="SN7")
        await dev.check_version()
        await services.registry.bind_code(dev.activation_code)
        assert await dev.activate() == "ok"
    # require_device_key: refused until the key is provisioned.
    async with running_ops(tmp_path / "strict", {"devices": {"require_device_key": True}}) as (services, base), httpx.AsyncClient() as client:
        dev = device(client, base, serial_number="SN8", hmac_key=KEY)
        await dev.check_version()
        await services.registry.bind_code(dev.activation_code)
        response = await client.post(f"{base}/xiaozhi/ota/activate", headers=dev.headers(), content=dev.activation_payload())
        assert response.status_code == 403 and "no HMAC key" in response.json()["error"]
        await services.registry.set_key("SN8", KEY)
        assert await dev.activate() == "ok"


async def test_newer_firmware_is_offered_and_downloadable(tmp_path) -> None:
    folder = tmp_path / "firmware" / "bread-compact-wifi"
    folder.mkdir(parents=True)
    image = os.urandom(300_000)
    (folder / "2.0.10.bin").write_bytes(image)
    (folder / "2.0.9.bin").write_bytes(b"old")
    (folder / "latest.bin").write_bytes(b"not a version")
    (folder / "2.1.0-beta.bin").write_bytes(b"not a plain version")
    async with running_ops(tmp_path, {"devices": {"activation": False}}) as (_services, base), httpx.AsyncClient() as client:
        dev = device(client, base)
        assert await dev.boot() == ["check:0", "upgrade:2.0.10"]
        assert dev.last_reply["firmware"] == {
            "version": "2.0.10", "url": f"{base}/xiaozhi/ota/firmware/bread-compact-wifi/2.0.10.bin", "force": 0}
        download = await client.get(dev.firmware_url)
        assert download.status_code == 200 and download.content == image
        assert download.headers["content-length"] == str(len(image))
        # Up to date, or another board: no firmware block.
        latest = device(client, base, version="2.0.10")
        await latest.check_version()
        assert "firmware" not in latest.last_reply
        other = device(client, base, mac="a4:cf:00:00:00:01", board_type="other-board")
        await other.check_version()
        assert "firmware" not in other.last_reply


async def test_board_and_version_come_from_the_body_before_the_user_agent(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base), httpx.AsyncClient() as client:
        # The firmware: its User-Agent names the board by BOARD_NAME; the body has the type too.
        dev = device(client, base, board_name="My Bread Board", board_type="bread-compact-wifi", version="2.4.2")
        await dev.check_version()
        record = await services.registry.get(MAC)
        assert (record.board, record.board_type, record.firmware_version) == ("bread-compact-wifi", "bread-compact-wifi", "2.4.2")

        # A browser test page: a browser's User-Agent, the board in the body.
        browser = {"Device-Id": "a4:cf:00:00:00:02", "Client-Id": "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5",
                   "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36",
                   "Content-Type": "application/json"}
        body = {"application": {"name": "xiaozhi-web-test", "version": "1.0.0"}, "board": {"type": "web-test", "name": "Web"}}
        assert (await client.post(f"{base}/xiaozhi/ota/", headers=browser, json=body)).status_code == 200
        record = await services.registry.get("a4:cf:00:00:00:02")
        assert (record.board, record.board_type, record.firmware_version) == ("web-test", "web-test", "1.0.0")

        # A browser with an empty body: nothing is made up from "Mozilla/5.0 (X11; ...".
        assert (await client.post(f"{base}/xiaozhi/ota/", headers={**browser, "Device-Id": "a4:cf:00:00:00:03"})).status_code == 200
        record = await services.registry.get("a4:cf:00:00:00:03")
        assert (record.board, record.firmware_version) == ("", "")

        # An old client that sends only the User-Agent still gets its board and version recorded.
        agent_only = {**browser, "Device-Id": "a4:cf:00:00:00:04", "User-Agent": "esp-box-3/1.9.0"}
        assert (await client.post(f"{base}/xiaozhi/ota/", headers=agent_only)).status_code == 200
        record = await services.registry.get("a4:cf:00:00:00:04")
        assert (record.board, record.firmware_version) == ("esp-box-3", "1.9.0")


async def test_unbound_devices_are_not_offered_firmware(tmp_path) -> None:
    folder = tmp_path / "firmware" / "bread-compact-wifi"
    folder.mkdir(parents=True)
    (folder / "9.0.0.bin").write_bytes(b"x")
    async with running_ops(tmp_path) as (_services, base), httpx.AsyncClient() as client:
        dev = device(client, base)
        await dev.check_version()
        assert "firmware" not in dev.last_reply and "activation" in dev.last_reply


async def test_public_urls_and_websocket_version_are_configurable(tmp_path) -> None:
    folder = tmp_path / "firmware" / "bread-compact-wifi"
    folder.mkdir(parents=True)
    (folder / "3.0.0.bin").write_bytes(b"x")
    tables = {
        "server": {"public_url": "wss://voice.example.org/xiaozhi/v1/"},
        "ota": {"public_url": "https://ota.example.org/", "websocket_version": 3},
        "devices": {"activation": False},
    }
    async with running_ops(tmp_path, tables) as (_services, base), httpx.AsyncClient() as client:
        dev = device(client, base)
        await dev.check_version()
        assert dev.settings["url"] == "wss://voice.example.org/xiaozhi/v1/"
        assert dev.settings["version"] == 3 and isinstance(dev.last_reply["websocket"]["version"], int)
        assert dev.firmware_url == "https://ota.example.org/xiaozhi/ota/firmware/bread-compact-wifi/3.0.0.bin"


async def test_websocket_url_follows_the_host_the_device_used(tmp_path) -> None:
    async with running_ops(tmp_path, {"server": {"port": 8100, "path": "/ws/"}}) as (_services, base), httpx.AsyncClient() as client:
        dev = device(client, base)
        for host, expected in [("192.168.1.10:8003", "ws://192.168.1.10:8100/ws/"),
                               ("xiaozhi.lan", "ws://xiaozhi.lan:8100/ws/"),
                               ("[fd00::5]:8003", "ws://[fd00::5]:8100/ws/"),
                               ("evil.com/x?y", "ws://127.0.0.1:8100/ws/")]:
            response = await client.post(f"{base}/xiaozhi/ota/", headers={**dev.headers(), "Host": host},
                                         content=dev.system_info_json())
            assert response.json()["websocket"]["url"] == expected, host


async def test_each_device_is_given_one_server_of_the_list_always_the_same(tmp_path) -> None:
    servers = [f"ws://voice{i}.lan:8000/xiaozhi/v1/" for i in range(3)]
    macs = [f"02:00:00:00:00:{i:02x}" for i in range(30)]
    async with running_ops(tmp_path, {"ota": {"websocket_urls": servers}}) as (_services, base), httpx.AsyncClient() as client:
        given = {}
        for mac in macs:
            dev = device(client, base, mac=mac)
            await dev.check_version()
            first = dev.settings["url"]
            await dev.check_version()
            assert dev.settings["url"] == first  # stable across check-ins
            given[mac] = first
    assert set(given.values()) == set(servers)  # every server gets devices
    # Without the last server, only its devices move (the others keep theirs).
    async with running_ops(tmp_path, {"ota": {"websocket_urls": servers[:2]}}) as (_services, base), httpx.AsyncClient() as client:
        for mac in macs:
            dev = device(client, base, mac=mac)
            await dev.check_version()
            if given[mac] != servers[2]:
                assert dev.settings["url"] == given[mac]


def test_websocket_urls_must_be_websocket_urls() -> None:
    from xiaozhi_trio.pipeline.backends import ConfigError
    from xiaozhi_trio.pipeline.ops.ota import OtaConfig
    from xiaozhi_trio.pipeline.tables import parse_table

    with pytest.raises(ConfigError, match="ws:// or wss://"):
        parse_table("ota", OtaConfig, {"websocket_urls": ["http://voice.lan:8000/"]})


async def test_allow_list_refuses_strangers_without_storing_them(tmp_path) -> None:
    async with running_ops(tmp_path, {"auth": {"allowed_devices": ["A4:CF:12:34:56:78"]}}) as (services, base), httpx.AsyncClient() as client:
        stranger = device(client, base, mac="02:00:00:00:00:01")
        assert await stranger.check_version() == 403
        assert await services.registry.get("02:00:00:00:00:01") is None
        assert await device(client, base).check_version() == 0  # listed (case-insensitively)


async def test_reflashed_device_needs_a_new_code_and_the_old_token_dies(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base), httpx.AsyncClient() as client:
        original = device(client, base)
        await original.check_version()
        await services.registry.bind_code(original.activation_code)
        await original.check_version()
        old_token = original.settings["token"]
        # Same MAC, new Client-Id (flash erased, or an imitation of the MAC).
        newcomer = device(client, base, uuid="11111111-2222-4333-8444-555555555555")
        await newcomer.check_version()
        assert newcomer.settings["token"] == "" and newcomer.has_activation_code
        assert (await services.auth.check(MAC, original.uuid, old_token)).ok  # untouched until the owner acts
        assert not (await services.auth.check(MAC, newcomer.uuid, old_token)).ok
        await services.registry.bind_code(newcomer.activation_code)
        assert await newcomer.activate() == "ok"
        assert not (await services.auth.check(MAC, original.uuid, old_token)).ok
        await newcomer.check_version()
        assert (await services.auth.check(MAC, newcomer.uuid, newcomer.settings["token"])).ok


async def test_timezone_offset_defaults_to_the_servers_own(tmp_path) -> None:
    clock = WallClock()
    async with running_ops(tmp_path, clock=clock) as (_services, base), httpx.AsyncClient() as client:
        dev = device(client, base)
        await dev.check_version()
        assert dev.last_reply["server_time"]["timezone_offset"] == local_timezone_offset(clock.now)


async def test_get_on_the_ota_url_gives_a_hint(tmp_path) -> None:
    async with running_ops(tmp_path) as (_services, base), httpx.AsyncClient() as client:
        response = await client.get(f"{base}/xiaozhi/ota/")
        assert response.status_code == 200 and "OTA" in response.text and "ws://" in response.text


async def test_check_in_counts_in_metrics(tmp_path) -> None:
    async with running_ops(tmp_path) as (services, base), httpx.AsyncClient() as client:
        await device(client, base).check_version()
        assert services.metrics.ota_check_ins.get(state="activating") == 1
        assert services.metrics.http_requests.get(route="ota", status="200") == 1


def test_documented_ops_config_is_valid_complete_and_shows_the_defaults() -> None:
    import dataclasses
    import tomllib
    from pathlib import Path

    from xiaozhi_trio.pipeline.config import parse_config
    from xiaozhi_trio.pipeline.ops.services import OpsConfig

    path = Path(__file__).resolve().parents[1] / "config.example.toml"
    text = path.read_text()
    documented = OpsConfig.from_config(parse_config(tomllib.loads(text)))
    assert documented == OpsConfig()
    for table in dataclasses.fields(OpsConfig):
        for key in dataclasses.fields(getattr(OpsConfig(), table.name)):
            assert re.search(rf"^#? ?{key.name} = ", text, re.MULTILINE), f"[{table.name}] {key.name} is not documented"
