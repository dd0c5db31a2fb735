"""Coze credentials: personal access tokens rotated without a restart, and OAuth JWT apps."""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from xiaozhi_trio.pipeline.backends import (
    AgentRequest,
    BackendContext,
    BackendError,
    ConfigError,
)
from xiaozhi_trio.pipeline.messages import AgentText
from xiaozhi_trio.pipeline.workers import CpuWorkers
from xiaozhi_trio.plugins.coze.auth import (
    JWT_GRANT,
    JwtOAuthApp,
    OAuthSettings,
    PersonalAccessToken,
)
from xiaozhi_trio.plugins.coze.plugin import CozeAgent, create_agent

from xiaozhi_trio.plugins.testing.fakes.fake_coze import FAKE_BOT_ID, FakeCoze

TOKEN_A = "pat_aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
TOKEN_B = "pat_bbbbbbbbbbbbbbbbbbbbbbbbbbbb"
CLIENT_ID = "1180000000001"
KEY_ID = "key-1a2b3c"


def key_pair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return key_pair()


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeCoze:
    server = FakeCoze(tokens=[TOKEN_A])
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def agents() -> AsyncIterator[list[CozeAgent]]:
    made: list[CozeAgent] = []
    yield made
    for agent in made:
        await agent.aclose()


def make_agent(agents: list[CozeAgent], fake: FakeCoze, tmp_path: Path, **options: Any) -> CozeAgent:
    context = BackendContext(tmp_path, CpuWorkers(1))
    agent = create_agent(context, {"bot_id": FAKE_BOT_ID, "base_url": fake.url, **options})
    agents.append(agent)
    return agent


async def ask(agent: CozeAgent, text: str = "hi") -> str:
    send, receive = trio.open_memory_channel[AgentText](math.inf)
    await agent.respond(AgentRequest("dev-1", "s", text), send)
    send.close()
    return "".join([item.text async for item in receive])


def bearers(fake: FakeCoze, path: str = "/v3/chat") -> list[str]:
    return [r.headers["authorization"].removeprefix("Bearer ") for r in fake.requests_to(path)]


# ---- personal access tokens --------------------------------------------------------------------


async def test_env_token_rotated_without_restart(fake: FakeCoze, agents: list[CozeAgent], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COZE_API_TOKEN", TOKEN_A)
    agent = make_agent(agents, fake, tmp_path)
    assert await ask(agent) == fake.answer
    fake.tokens = {TOKEN_B: math.inf}  # A expired at Coze, the environment not updated yet
    with pytest.raises(BackendError) as caught:
        await ask(agent)
    assert caught.value.kind == "http_401" and "4100" in str(caught.value)
    monkeypatch.setenv("COZE_API_TOKEN", TOKEN_B)
    assert await ask(agent) == fake.answer
    assert bearers(fake) == [TOKEN_A, TOKEN_A, TOKEN_B]


async def test_token_file_reread_on_4100(fake: FakeCoze, agents: list[CozeAgent], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COZE_API_TOKEN", raising=False)
    token_file = tmp_path / "coze-token"
    token_file.write_text(TOKEN_A + "\n")
    agent = make_agent(agents, fake, tmp_path, token_file=str(token_file))
    assert await ask(agent) == fake.answer
    # Rotate in place with the same size and modification time, so only the 4100 forces a re-read.
    before = token_file.stat()
    with token_file.open("r+") as f:
        f.write(TOKEN_B)
    os.utime(token_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    fake.tokens = {TOKEN_B: math.inf}
    assert await ask(agent) == fake.answer
    assert bearers(fake) == [TOKEN_A, TOKEN_A, TOKEN_B]


async def test_token_file_change_is_picked_up_before_any_4100(fake: FakeCoze, agents: list[CozeAgent],
                                                              tmp_path: Path) -> None:
    token_file = tmp_path / "coze-token"
    token_file.write_text(TOKEN_A)
    agent = make_agent(agents, fake, tmp_path, token_file=str(token_file))
    await ask(agent)
    fake.tokens = {TOKEN_B: math.inf}
    token_file.write_text(TOKEN_B + "\n\n")
    await ask(agent)
    assert bearers(fake) == [TOKEN_A, TOKEN_B]


async def test_personal_access_token_rejection() -> None:
    environ = {"COZE_API_TOKEN": TOKEN_A}
    pat = PersonalAccessToken(environ=environ)
    assert await pat.token() == TOKEN_A
    assert await pat.rejected(TOKEN_A) is False
    environ["COZE_API_TOKEN"] = TOKEN_B
    assert await pat.rejected(TOKEN_A) is True
    del environ["COZE_API_TOKEN"]
    with pytest.raises(BackendError, match="COZE_API_TOKEN"):
        await pat.token()


# ---- OAuth JWT apps ----------------------------------------------------------------------------


def oauth_options(tmp_path: Path, private: bytes, **extra: Any) -> dict[str, Any]:
    key_file = tmp_path / "app-private.pem"
    key_file.write_bytes(private)
    return {"client_id": CLIENT_ID, "public_key_id": KEY_ID, "private_key_file": str(key_file), **extra}


async def test_jwt_app_gets_and_caches_an_access_token(fake: FakeCoze, agents: list[CozeAgent], tmp_path: Path,
                                                      keys: tuple[bytes, bytes],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COZE_API_TOKEN", raising=False)
    private, public = keys
    fake.jwt_apps = {CLIENT_ID: (KEY_ID, public)}
    agent = make_agent(agents, fake, tmp_path, oauth=oauth_options(tmp_path, private))
    assert await ask(agent) == fake.answer
    assert await ask(agent) == fake.answer
    (grant,) = fake.requests_to("/api/permission/oauth2/token")
    assert grant.body == {"grant_type": JWT_GRANT, "duration_seconds": 3600}
    assertion = grant.headers["authorization"].removeprefix("Bearer ")
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256", "kid": KEY_ID, "typ": "JWT"}
    claims = jwt.decode(assertion, public, algorithms=["RS256"], audience=fake.url.removeprefix("http://"))
    assert claims["iss"] == CLIENT_ID and claims["exp"] - claims["iat"] == 600 and claims["jti"]
    access = bearers(fake)
    assert access[0] == access[1] and access[0].startswith("czs_")


async def test_jwt_app_access_token_revoked_at_coze(fake: FakeCoze, agents: list[CozeAgent], tmp_path: Path,
                                                    keys: tuple[bytes, bytes],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COZE_API_TOKEN", raising=False)
    private, public = keys
    fake.jwt_apps = {CLIENT_ID: (KEY_ID, public)}
    agent = make_agent(agents, fake, tmp_path, oauth=oauth_options(tmp_path, private))
    await ask(agent)
    fake.tokens.clear()
    assert await ask(agent) == fake.answer  # 4100, a new access token, one retry
    assert len(fake.requests_to("/api/permission/oauth2/token")) == 2
    first, rejected, retried = bearers(fake)
    assert first == rejected != retried


async def test_jwt_app_renews_before_expiry(fake: FakeCoze, tmp_path: Path, keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    now = [time.time()]
    fake.jwt_apps = {CLIENT_ID: (KEY_ID, public)}
    fake.wall_clock = lambda: now[0]
    settings = OAuthSettings.from_options(oauth_options(tmp_path, private, duration=3600))
    async with httpx.AsyncClient() as http:
        app = JwtOAuthApp(settings, base_url=fake.url, http=http, wall_clock=lambda: now[0])
        # Sessions asking at once share one fetch.
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(app.token)
        first = await app.token()
        assert app.fetches == 1
        now[0] += 3600 - 300 - 1  # still outside the 5-minute renewal margin
        assert await app.token() == first and app.fetches == 1
        now[0] += 2
        second = await app.token()
        assert second != first and app.fetches == 2
        assert fake.tokens[second] == pytest.approx(now[0] + 3600, abs=1)
        await app.rejected(second)
        assert await app.token() not in (first, second) and app.fetches == 3


async def test_jwt_signed_with_the_wrong_key_is_refused(fake: FakeCoze, tmp_path: Path,
                                                        keys: tuple[bytes, bytes]) -> None:
    _private, public = keys
    other_private, _other_public = key_pair()
    fake.jwt_apps = {CLIENT_ID: (KEY_ID, public)}
    settings = OAuthSettings.from_options(oauth_options(tmp_path, other_private))
    async with httpx.AsyncClient() as http:
        app = JwtOAuthApp(settings, base_url=fake.url, http=http)
        with pytest.raises(BackendError) as caught:
            await app.token()
    assert caught.value.kind == "auth"
    assert CLIENT_ID in str(caught.value) and "HTTP 401" in str(caught.value)


def test_oauth_options_are_checked(tmp_path: Path, keys: tuple[bytes, bytes]) -> None:
    private, _public = keys
    with pytest.raises(ConfigError, match="does not exist"):
        OAuthSettings.from_options({"client_id": "1", "public_key_id": "k", "private_key_file": str(tmp_path / "none.pem")})
    with pytest.raises(ConfigError, match="duration"):
        OAuthSettings.from_options(oauth_options(tmp_path, private, duration=90000))
    with pytest.raises(ConfigError, match="unknown key"):
        OAuthSettings.from_options(oauth_options(tmp_path, private, private_key="inline"))
