"""The device registry's life cycle (on SQLite and on PostgreSQL), races between servers, and the
``xiaozhi-trio devices`` command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import trio
from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.pipeline.cli import main
from xiaozhi_trio.pipeline.tables import parse_table
from xiaozhi_trio.pipeline.store.devices import CheckIn, DeviceRegistry, DevicesConfig
from xiaozhi_trio.pipeline.store.sqlite import DATABASE_FILE, open_database

from tests.databases import OpenDatabase
from xiaozhi_trio.plugins.testing.fakes.ops_server import WallClock

MAC = "a4:cf:12:34:56:78"
UUID = "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5"


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XIAOZHI_TRIO_SECRET", raising=False)


def registry(open_db: OpenDatabase, clock: WallClock | None = None, **config) -> DeviceRegistry:
    """A registry on the test's database (each call: another connection, as another server would have)."""
    return DeviceRegistry(open_db(), DevicesConfig(**config), clock=clock or WallClock())


def file_registry(data_dir, clock: WallClock | None = None, **config) -> DeviceRegistry:
    return DeviceRegistry(open_database(data_dir / DATABASE_FILE), DevicesConfig(**config), clock=clock or WallClock())


def check_in(**kwargs) -> CheckIn:
    return CheckIn(**{"device_id": MAC, "client_id": UUID, "board": "bread-compact-wifi", "firmware_version": "2.0.3", **kwargs})


async def test_life_cycle_pending_bound_revoked_and_back(open_db: OpenDatabase) -> None:
    clock = WallClock()
    reg = registry(open_db, clock)
    device = await reg.check_in(check_in())
    assert device.state == "pending" and re.fullmatch(r"\d{6}", device.activation_code or "")
    assert device.first_seen == device.last_seen == clock.now
    assert await reg.bind_code("000000" if device.activation_code != "000000" else "111111") is None

    clock.advance(5)
    bound = await reg.bind_code(f" {device.activation_code} ")
    assert bound is not None and bound.state == "bound" and bound.bound_at == clock.now
    assert bound.activation_code is None and bound.token_generation == 0

    clock.advance(5)
    again = await reg.check_in(check_in(firmware_version="2.0.4"))
    assert again.state == "bound" and again.firmware_version == "2.0.4" and again.last_seen == clock.now

    revoked = await reg.revoke(MAC.upper())
    assert revoked is not None and revoked.state == "revoked" and revoked.token_generation == 1
    returning = await reg.check_in(check_in())
    assert returning.state == "pending" and returning.activation_code
    assert (await reg.bind_code(returning.activation_code)).state == "bound"

    actions = [event.action for event in await reg.history(MAC)]
    assert actions == ["bound", "revoked", "bound"]
    assert await reg.revoke("02:00:00:00:00:00") is None
    reg.close()


async def test_activation_off_binds_on_first_check_in_but_not_after_revoke(open_db: OpenDatabase) -> None:
    reg = registry(open_db, activation=False)
    assert (await reg.check_in(check_in())).state == "bound"
    # A new client id is simply taken over (anything that presents the id is admitted)...
    moved = await reg.check_in(check_in(client_id="new-uuid"))
    assert moved.state == "bound" and moved.client_id == "new-uuid" and moved.token_generation == 1
    # ...but a revoked device needs its code bound, activation or not.
    await reg.revoke(MAC)
    assert (await reg.check_in(check_in())).state == "pending"
    assert [e.action for e in await reg.history(MAC)] == ["auto", "auto", "revoked"]
    reg.close()


async def test_a_second_client_id_gets_a_claim_and_keeps_the_binding_intact(open_db: OpenDatabase) -> None:
    reg = registry(open_db)
    first = await reg.check_in(check_in())
    await reg.bind_code(first.activation_code)
    claimant = await reg.check_in(check_in(client_id="imitator", board="evil-board", firmware_version="9.9.9"))
    assert claimant.bound and claimant.client_id == UUID and claimant.claim_client_id == "imitator"
    assert claimant.board == "bread-compact-wifi" and claimant.state == "bound, claim pending"
    # The bound device checking in does not disturb the claim, nor does the claim disturb it.
    assert (await reg.check_in(check_in())).client_id == UUID
    rebound = await reg.bind_code(claimant.activation_code)
    assert rebound.client_id == "imitator" and rebound.token_generation == 1 and rebound.state == "bound"
    reg.close()


async def test_codes_expire_and_are_unique(open_db: OpenDatabase) -> None:
    clock = WallClock()
    reg = registry(open_db, clock, code_ttl_minutes=1)
    devices = [await reg.check_in(check_in(device_id=f"02:00:00:00:00:{i:02x}")) for i in range(200)]
    codes = {d.activation_code for d in devices}
    assert len(codes) == 200
    clock.advance(61)
    assert await reg.bind_code(devices[0].activation_code) is None
    renewed = await reg.check_in(check_in(device_id=devices[0].device_id))
    assert renewed.activation_expires == clock.now + 60
    reg.close()


async def test_proof_and_approval_in_either_order(open_db: OpenDatabase) -> None:
    reg = registry(open_db)
    await reg.set_key("SN1", b"k" * 32)
    assert await reg.key_for("SN1") == b"k" * 32 and await reg.key_for("SN2") is None
    # Owner first: approved, then bound by the proof.
    device = await reg.check_in(check_in(serial_number="SN1", activation_version=2))
    assert await reg.needs_proof(device)
    approved = await reg.bind_code(device.activation_code)
    assert approved.state == "approved" and not approved.bound
    assert (await reg.complete_activation(MAC, UUID, proven=False)).state == "approved"
    assert (await reg.complete_activation(MAC, UUID, proven=True)).state == "bound"
    # Proof first: remembered, then the owner's bind completes it.
    other = await reg.check_in(check_in(device_id="02:00:00:00:00:01", serial_number="SN1"))
    assert (await reg.complete_activation(other.device_id, UUID, proven=True)).claim_proven
    assert (await reg.bind_code(other.activation_code)).state == "bound"
    reg.close()


async def test_registry_is_shared_with_other_tables_in_one_file(tmp_path) -> None:
    database = open_database(tmp_path / DATABASE_FILE)
    database.migrate("someone-else", ["CREATE TABLE other (x INTEGER)"])
    reg = DeviceRegistry(database)
    await reg.check_in(check_in())
    second = DeviceRegistry(open_database(tmp_path / DATABASE_FILE))  # migrations are idempotent
    assert [d.device_id for d in await second.list()] == [MAC]
    second.close()
    reg.close()


async def test_two_servers_binding_one_code_at_once_exactly_one_wins(open_db: OpenDatabase) -> None:
    # Two registries with their own connections (PostgreSQL: their own pools), as two servers have.
    servers = [registry(open_db), registry(open_db)]
    devices = [await servers[0].check_in(check_in(device_id=f"02:00:00:00:01:{i:02x}")) for i in range(12)]
    won: dict[str, list[int]] = {d.device_id: [] for d in devices}

    async def bind(server: int, code: str) -> None:
        result = await servers[server].bind_code(code)
        if result is not None:
            won[result.device_id].append(server)

    async with trio.open_nursery() as nursery:
        for device in devices:
            for server in (0, 1, 0, 1):  # four owners typing the same code at once
                nursery.start_soon(bind, server, device.activation_code)
    assert all(len(winners) == 1 for winners in won.values()), won
    for device in devices:
        assert [e.action for e in await servers[1].history(device.device_id)] == ["bound"]
        assert (await servers[1].get(device.device_id)).state == "bound"
    for server in servers:
        server.close()


_BIND_IN_A_PROCESS = """
import json, sys, trio
from pathlib import Path
from xiaozhi_trio.pipeline.store.database import database_config, open_shared_database
from xiaozhi_trio.pipeline.store.devices import DeviceRegistry

async def main():
    reg = DeviceRegistry(open_shared_database(database_config(json.loads(sys.argv[1])), Path(".")))
    sys.stdin.readline()  # both processes start binding together
    won = []
    async with trio.open_nursery() as nursery:
        async def bind(code):
            if await reg.bind_code(code) is not None:
                won.append(code)
        for code in sys.argv[2:]:
            nursery.start_soon(bind, code)
    print(json.dumps(won))
    reg.close()

trio.run(main)
"""


async def test_two_server_processes_binding_the_same_codes_each_code_is_won_once(
    open_db: OpenDatabase, store_table: dict[str, str]
) -> None:
    reg = registry(open_db, WallClock(time.time()))  # the other processes run on the real clock
    codes = [(await reg.check_in(check_in(device_id=f"02:00:00:00:02:{i:02x}"))).activation_code for i in range(16)]
    command = [sys.executable, "-c", _BIND_IN_A_PROCESS, json.dumps(store_table), *codes]
    processes = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = await trio.to_thread.run_sync(lambda: [p.communicate("go\n", timeout=60)[0] for p in processes])
    assert all(p.returncode == 0 for p in processes)
    won = [code for out in outputs for code in json.loads(out)]
    assert sorted(won) == sorted(codes)  # every code bound, none twice
    assert {d.state for d in await reg.list()} == {"bound"}
    reg.close()


def test_devices_config_parsing() -> None:
    assert parse_table("devices", DevicesConfig, {"activation": False}).activation is False
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[devices\]: activate"):
        parse_table("devices", DevicesConfig, {"activate": True})
    with pytest.raises(ConfigError, match="code_ttl_minutes"):
        parse_table("devices", DevicesConfig, {"code_ttl_minutes": 0})


# ---- the command line (synchronous tests: the CLI runs its own trio loop) ---------------------


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    return path


def run_cli(config_file, *args: str) -> int:
    return main(["devices", "--config", str(config_file), *args])


def seed(config_file, tmp_path, *infos: CheckIn) -> list:
    async def go():
        reg = file_registry(tmp_path / "data", WallClock(time.time()))  # the CLI runs on the real clock
        result = [await reg.check_in(info) for info in infos]
        reg.close()
        return result

    return trio.run(go)


def test_cli_list_bind_show_revoke(config_file, tmp_path, capsys) -> None:
    assert run_cli(config_file, "list") == 0
    assert "no devices yet" in capsys.readouterr().out
    (device,) = seed(config_file, tmp_path, check_in())
    assert run_cli(config_file, "list") == 0
    out = capsys.readouterr().out
    assert MAC in out and "pending" in out and device.activation_code in out and "bread-compact-wifi" in out

    assert run_cli(config_file, "bind", "999999" if device.activation_code != "999999" else "888888") == 1
    assert "no device is waiting" in capsys.readouterr().err
    assert run_cli(config_file, "bind", device.activation_code) == 0
    assert f"bound {MAC}" in capsys.readouterr().out

    assert run_cli(config_file, "list", "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["state"] == "bound" and "activation_challenge" not in record

    assert run_cli(config_file, "token", MAC) == 0
    assert capsys.readouterr().out.startswith("v1.")

    assert run_cli(config_file, "revoke", MAC) == 0
    assert "revoked" in capsys.readouterr().out
    assert run_cli(config_file, "show", MAC) == 0
    out = capsys.readouterr().out
    assert "state:           revoked" in out and "bound " in out and "revoked" in out
    assert run_cli(config_file, "token", MAC) == 1
    assert run_cli(config_file, "revoke", "02:00:00:00:00:00") == 1
    assert run_cli(config_file, "show", "02:00:00:00:00:00") == 1


def test_cli_bind_by_device_id_and_key(config_file, tmp_path, capsys) -> None:
    assert run_cli(config_file, "bind", "browser-1") == 1
    assert "--client-id" in capsys.readouterr().err
    assert run_cli(config_file, "bind", "browser-1", "--client-id", "page") == 0
    assert run_cli(config_file, "token", "browser-1") == 0
    assert run_cli(config_file, "key", "SN1", "zz") == 1
    assert run_cli(config_file, "key", "SN1", "ab" * 16) == 1
    assert run_cli(config_file, "key", "SN1", "ab" * 32) == 0

    async def stored() -> bytes | None:
        reg = file_registry(tmp_path / "data")
        try:
            return await reg.key_for("SN1")
        finally:
            reg.close()

    assert trio.run(stored) == bytes.fromhex("ab" * 32)


def test_cli_reports_a_bad_config_table(tmp_path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path}"\n[devices]\nactivaton = false\n')
    assert main(["devices", "--config", str(path), "list"]) == 2
    assert "unknown key(s) in [devices]: activaton" in capsys.readouterr().err
