"""Device tokens, the server secret and the handshake auth policy."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat

import httpx
import pytest
import trio
import trio_websocket
from xiaozhi_trio.pipeline.backends import ConfigError
from xiaozhi_trio.pipeline.client import connect
from xiaozhi_trio.pipeline.ops.auth import (
    AuthConfig,
    TokenClaims,
    TokenError,
    TokenSigner,
    load_secret,
)
from xiaozhi_trio.pipeline.ops.http import build_ops_services, serve_http
from xiaozhi_trio.pipeline.tables import parse_table
from xiaozhi_trio.pipeline.server import serve_devices
from xiaozhi_trio.pipeline.store.devices import CheckIn

from xiaozhi_trio.plugins.testing.fakes.firmware_ota import FirmwareOta
from xiaozhi_trio.plugins.testing.fakes.ops_server import WallClock, make_services
from xiaozhi_trio.plugins.testing.harness import make_app

MAC = "a4:cf:12:34:56:78"
UUID = "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5"
NOW = 1_786_000_000.0


@pytest.fixture(autouse=True)
def _no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XIAOZHI_TRIO_SECRET", raising=False)


def signer(secret: bytes = b"s" * 32) -> TokenSigner:
    return TokenSigner(secret)


# ---- tokens --------------------------------------------------------------------------------


def test_token_round_trip_and_url_safety() -> None:
    claims = TokenClaims(MAC, UUID, 3, NOW + 100)
    token = signer().issue(claims)
    assert set(token) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    assert " " not in token  # the firmware prefixes "Bearer " only to tokens without a space
    assert signer().verify(token, NOW) == TokenClaims(MAC, UUID, 3, float(int(NOW + 100)))


def test_expired_token_is_refused() -> None:
    token = signer().issue(TokenClaims(MAC, UUID, 0, NOW + 60))
    signer().verify(token, NOW + 59)
    with pytest.raises(TokenError, match="expired"):
        signer().verify(token, NOW + 60)
    forever = signer().issue(TokenClaims(MAC, UUID, 0, 0))
    assert signer().verify(forever, NOW + 10**9).expires == 0


def _tamper_payload(token: str, **changes) -> str:
    prefix, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    new_payload = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{prefix}.{new_payload}.{signature}"


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: _tamper_payload(t, d="02:00:00:00:00:01"),  # another device, old signature
        lambda t: _tamper_payload(t, e=NOW + 10**8),  # extended expiry
        lambda t: _tamper_payload(t, g=0),
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # flipped signature
        lambda t: signer(b"another secret!!" * 2).issue(TokenClaims(MAC, UUID, 5, NOW + 100)),  # other server
        lambda t: t.rsplit(".", 1)[0] + ".",  # no signature
    ],
)
def test_forged_tokens_are_refused(forge) -> None:
    token = signer().issue(TokenClaims(MAC, UUID, 5, NOW + 100))
    with pytest.raises(TokenError, match="signature"):
        signer().verify(forge(token), NOW)


@pytest.mark.parametrize("garbage", ["", "abc", "v1.abc", "v2.a.b", "v1..", "v1.!!!.x", "a.b.c.d", "v1." + "A" * 5000 + ".x"])
def test_malformed_tokens_are_refused(garbage: str) -> None:
    with pytest.raises(TokenError):
        signer().verify(garbage, NOW)


def test_correctly_signed_but_malformed_payload_is_refused() -> None:
    s = signer()
    body = "v1." + base64.urlsafe_b64encode(b'{"d": 1}').rstrip(b"=").decode()
    with pytest.raises(TokenError, match="payload"):
        s.verify(f"{body}.{s._sign(body.encode())}", NOW)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ConfigError):
        TokenSigner(b"short")


# ---- the server secret --------------------------------------------------------------------


def test_secret_is_created_once_with_mode_0600(tmp_path) -> None:
    first = load_secret(tmp_path)
    path = tmp_path / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(tmp_path) == first and len(first) == 64


def test_lax_secret_permissions_are_tightened(tmp_path) -> None:
    load_secret(tmp_path)
    path = tmp_path / "secret.key"
    os.chmod(path, 0o644)
    load_secret(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_empty_secret_file_is_an_error(tmp_path) -> None:
    (tmp_path / "secret.key").write_text("\n")
    with pytest.raises(ConfigError, match="delete it"):
        load_secret(tmp_path)


def test_environment_secret_wins(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XIAOZHI_TRIO_SECRET", "x" * 20)
    assert load_secret(tmp_path) == b"x" * 20
    assert not (tmp_path / "secret.key").exists()
    monkeypatch.setenv("XIAOZHI_TRIO_SECRET", "short")
    with pytest.raises(ConfigError, match="at least 16"):
        load_secret(tmp_path)


# ---- config ---------------------------------------------------------------------------------


def test_auth_config_parsing_and_errors() -> None:
    config = parse_table("auth", AuthConfig, {"allowed_devices": ["A4:CF:12:34:56:78"], "token_ttl_days": 30})
    assert config.allowed_devices == (MAC,) and config.token_ttl_days == 30.0 and config.enabled
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[auth\]: enable; valid keys"):
        parse_table("auth", AuthConfig, {"enable": False})
    with pytest.raises(ConfigError, match=r"\[auth\] enabled must be bool"):
        parse_table("auth", AuthConfig, {"enabled": 1})
    with pytest.raises(ConfigError, match=r"\[auth\] allowed_devices must be a list of str"):
        parse_table("auth", AuthConfig, {"allowed_devices": "a4:cf"})
    with pytest.raises(ConfigError, match="token_ttl_days"):
        parse_table("auth", AuthConfig, {"token_ttl_days": -1})
    with pytest.raises(ConfigError, match="no effect"):
        parse_table("auth", AuthConfig, {"enabled": False, "allowed_devices": [MAC]})


# ---- the policy -------------------------------------------------------------------------------


async def bound_services(tmp_path, tables=None, clock=None):
    services = make_services(tmp_path, tables, clock=clock)
    await services.registry.check_in(CheckIn(MAC, UUID))
    device = await services.registry.bind_device(MAC, UUID)
    return services, device


async def test_valid_token_with_and_without_bearer(tmp_path) -> None:
    services, device = await bound_services(tmp_path)
    token = services.auth.issue(device)
    for authorization in (f"Bearer {token}", f"bearer   {token}", token):
        decision = await services.auth.check(MAC.upper(), UUID, authorization)
        assert decision.ok, (authorization, decision.reason)
    assert (await services.auth.check(MAC, "", token)).ok  # a browser client without Client-Id
    assert services.metrics.auth_decisions.get(result="accepted") == 4
    services.close()


async def test_policy_refusals_with_reasons(tmp_path) -> None:
    clock = WallClock(NOW)
    services, device = await bound_services(tmp_path, {"auth": {"token_ttl_days": 1}}, clock=clock)
    token = services.auth.issue(device)
    other = await services.registry.bind_device("02:00:00:00:00:02", "other-client")
    other_token = services.auth.issue(other)
    cases = [
        (MAC, UUID, None, "no token"),
        (MAC, UUID, "Bearer ", "no token"),
        (MAC, UUID, "Bearer not-a-token", "malformed"),
        (MAC, UUID, other_token, "another device"),
        (MAC, "someone-else", token, "another client id"),
        ("02:00:00:00:00:09", UUID, token, "another device"),
    ]
    for device_id, client_id, authorization, reason in cases:
        decision = await services.auth.check(device_id, client_id, authorization)
        assert not decision.ok and reason in decision.reason, (authorization, decision)
    clock.advance(86400 + 1)
    decision = await services.auth.check(MAC, UUID, token)
    assert not decision.ok and "expired" in decision.reason
    assert services.metrics.auth_decisions.get(result="rejected") == len(cases) + 1
    services.close()


async def test_revocation_kills_tokens_at_once(tmp_path) -> None:
    services, device = await bound_services(tmp_path)
    token = services.auth.issue(device)
    await services.registry.revoke(MAC)
    decision = await services.auth.check(MAC, UUID, token)
    assert not decision.ok and "not bound" in decision.reason
    # Bound again, the old token still stays dead (its generation was revoked).
    rebound = await services.registry.bind_device(MAC)
    decision = await services.auth.check(MAC, UUID, token)
    assert not decision.ok and "revoked" in decision.reason
    assert (await services.auth.check(MAC, UUID, services.auth.issue(rebound))).ok
    services.close()


async def test_unbound_and_unknown_devices_are_refused(tmp_path) -> None:
    services = make_services(tmp_path)
    pending = await services.registry.check_in(CheckIn(MAC, UUID))
    token = services.auth.issue(pending)  # a token for a device nobody bound
    assert "not bound" in (await services.auth.check(MAC, UUID, token)).reason
    ghost = services.auth.signer.issue(TokenClaims("02:00:00:00:00:03", "c", 0, 0))
    assert "unknown" in (await services.auth.check("02:00:00:00:00:03", "c", ghost)).reason
    services.close()


async def test_allow_list(tmp_path) -> None:
    services, device = await bound_services(tmp_path, {"auth": {"allowed_devices": ["02:00:00:00:00:01"]}})
    token = services.auth.issue(device)
    decision = await services.auth.check(MAC, UUID, token)
    assert not decision.ok and "allowed_devices" in decision.reason
    assert services.auth.allows("02:00:00:00:00:01") and not services.auth.allows(MAC)
    services.close()


async def test_refuse_reason_is_none_when_accepted(tmp_path) -> None:
    services, device = await bound_services(tmp_path)
    assert await services.auth.refuse_reason(MAC, UUID, services.auth.issue(device)) is None
    assert "no token" in await services.auth.refuse_reason(MAC, UUID, None)
    services.close()


async def test_auth_disabled_accepts_anyone(tmp_path) -> None:
    services = make_services(tmp_path, {"auth": {"enabled": False}})
    decision = await services.auth.check("anyone", "", None)
    assert decision.ok and decision.reason == "auth disabled"
    services.close()


# ---- the WebSocket handshake, end to end (OTA → bind → token → session) -------------------------


async def test_websocket_handshake_needs_the_token_from_the_ota_reply(tmp_path, caplog) -> None:
    app, _fakes, _events = make_app(tmp_path)
    ops = build_ops_services(app.config)
    ops.attach(app)
    caplog.set_level(logging.WARNING, logger="xiaozhi_trio.server")
    async with trio.open_nursery() as nursery:
        ws_port = await nursery.start(serve_devices, app, "127.0.0.1", 0)
        http_port = await nursery.start(serve_http, ops, "127.0.0.1", 0)
        async with httpx.AsyncClient() as client:
            dev = FirmwareOta(client, f"http://127.0.0.1:{http_port}/xiaozhi/ota/", mac=MAC, uuid=UUID)

            async def owner(result: str) -> None:
                if result == "timeout":
                    await ops.registry.bind_code(dev.activation_code)

            assert (await dev.boot(on_activate_result=owner))[-1] == "done"
        url = f"ws://127.0.0.1:{ws_port}/xiaozhi/v1/"
        forged = dev.settings["token"][:-4] + "AAAA"
        for token in (None, forged, "Bearer"):
            with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                async with connect(url, device_id=MAC, client_id=UUID, token=token):
                    pass
            assert rejected.value.status_code == 401
        assert any(MAC in r.getMessage() and "rejected device" in r.getMessage() for r in caplog.records)
        async with connect(url, device_id=MAC, client_id=UUID, token=dev.settings["token"]) as device:
            hello = await device.hello()
            assert hello["transport"] == "websocket"
        assert ops.metrics.auth_decisions.get(result="rejected") == 3
        assert ops.metrics.auth_decisions.get(result="accepted") == 1
        nursery.cancel_scope.cancel()
    ops.close()
