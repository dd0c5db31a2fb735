"""Two server processes on one port sharing one store: a device binds through one worker, talks
through the other, and keeps its conversation and its token; a dead worker is restarted; SIGTERM
stops everything. Runs on SQLite (one machine) and on PostgreSQL (as several machines would)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from xiaozhi_trio.pipeline.client import connect
from xiaozhi_trio.pipeline.ota_client import check_in
from xiaozhi_trio.pipeline.store.devices import DeviceRegistry

from tests.databases import OpenDatabase
from xiaozhi_trio.plugins.testing.fakes.backends import speech
from tests.multiworker import PHRASES, known_phrases, register_phrases

MAC = "02:00:00:00:0e:01"
UUID = "00000000-0000-4000-8000-00000000e001"
START_TIMEOUT = 90.0


def ready_workers(data_dir: Path) -> dict[int, int]:
    """index -> pid of the workers that have announced they are serving."""
    ready: dict[int, int] = {}
    for path in data_dir.glob("ready-*-*"):
        _, index, pid = path.name.split("-")
        ready[int(index)] = int(pid)
    return ready


def wait_for(condition, what: str, timeout: float = START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def talk(url: str, token: str, phrase: str) -> str:
    async with connect(url, device_id=MAC, client_id=UUID, token=token) as device:
        await device.hello()
        reply, _ = await device.ask(speech(phrase))
    assert reply.stt == phrase
    return " ".join(reply.sentences)


def fields(answer: str) -> dict[str, str]:
    # "Conversation <id> turn <n> pid <pid>."
    words = answer.rstrip(".").split()
    return {"conversation": words[1], "turn": words[3], "pid": words[5]}


async def test_a_device_binds_through_one_worker_and_talks_through_the_other(
    tmp_path: Path, store_table: dict[str, str], open_db: OpenDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XIAOZHI_TRIO_SECRET", raising=False)
    register_phrases()
    assert speech(PHRASES[0]) is not None
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    spec = {"workers": 2, "data_dir": str(data_dir), "store": store_table, "phrases": known_phrases()}
    env = {k: v for k, v in os.environ.items() if k != "XIAOZHI_TRIO_SECRET"}
    log_file = (tmp_path / "supervisor.log").open("w")  # a file: a full pipe would block the workers
    supervisor = subprocess.Popen([sys.executable, "-m", "tests.multiworker", json.dumps(spec)],
                                  stdout=subprocess.PIPE, stderr=log_file, text=True, env=env)
    try:
        ports = json.loads(await trio.to_thread.run_sync(supervisor.stdout.readline))
        ota_url = f"http://127.0.0.1:{ports['http']}/xiaozhi/ota/"
        ws_url = f"ws://127.0.0.1:{ports['ws']}/xiaozhi/v1/"
        workers = await trio.to_thread.run_sync(wait_for, lambda: len(ready_workers(data_dir)) == 2 and ready_workers(data_dir), "two workers")
        first, second = workers[0], workers[1]

        # Only the first worker can accept while the second is stopped: the check-in goes through it.
        os.kill(second, signal.SIGSTOP)
        try:
            answer = await trio.to_thread.run_sync(lambda: check_in(ota_url, device_id=MAC, client_id=UUID))
            assert answer.token is None and answer.activation_code
            owner = DeviceRegistry(open_db())
            assert (await owner.bind_code(answer.activation_code)).state == "bound"
            owner.close()
            answer = await trio.to_thread.run_sync(lambda: check_in(ota_url, device_id=MAC, client_id=UUID))
            assert answer.token and answer.websocket_url
            one = fields(await talk(ws_url, answer.token, PHRASES[0]))
            assert one["pid"] == str(first) and one["turn"] == "1"
        finally:
            os.kill(second, signal.SIGCONT)

        # Now only the second: the same token is accepted and the conversation carries over.
        os.kill(first, signal.SIGSTOP)
        try:
            two = fields(await talk(ws_url, answer.token, PHRASES[1]))
        finally:
            os.kill(first, signal.SIGCONT)
        assert two["pid"] == str(second)
        assert two["conversation"] == one["conversation"] and two["turn"] == "2"

        # A scrape reaching either worker shows both workers' sessions, each labelled.
        def sessions_by_worker() -> dict[str, float]:
            text = httpx.get(f"http://127.0.0.1:{ports['http']}/metrics", timeout=10).text
            found = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "xiaozhi_sessions_total":
                        found[sample.labels["worker"]] = found.get(sample.labels["worker"], 0) + sample.value
            return found

        counts = await trio.to_thread.run_sync(wait_for, lambda: c if len(c := sessions_by_worker()) == 2 else None, "both workers' metrics", 10)
        assert counts == {"0": 1.0, "1": 1.0}

        # A worker that dies is started again, and the service goes on.
        os.kill(first, signal.SIGKILL)
        (data_dir / f"ready-0-{first}").unlink()
        restarted = await trio.to_thread.run_sync(
            wait_for, lambda: (w := ready_workers(data_dir)).get(0) not in (None, first) and w, "the restart"
        )
        assert restarted[1] == second
        health = await trio.to_thread.run_sync(lambda: httpx.get(f"http://127.0.0.1:{ports['http']}/healthz", timeout=10))
        assert health.status_code == 200

        # SIGTERM stops the supervisor and every worker.
        supervisor.send_signal(signal.SIGTERM)
        await trio.to_thread.run_sync(lambda: supervisor.wait(timeout=60))
        errors = (tmp_path / "supervisor.log").read_text()
        assert supervisor.returncode == 0, errors
        assert "worker 0" in errors and "restarting it" in errors  # the death was logged
        assert not alive(restarted[0]) and not alive(second)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        log_file.close()


async def test_the_serve_command_runs_workers_on_shared_ports_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``xiaozhi-trio serve --workers 2`` with speech elsewhere: no models to load but VAD's."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\ndata_dir = "{tmp_path / "data"}"\n'
        '[ota]\nport = 0\n'
        '[asr]\nbackend = "sherpa-onnx-remote"\nurl = "ws://127.0.0.1:9/"\n'
        '[tts]\nbackend = "openai-speech"\nurl = "http://127.0.0.1:9/v1"\n'
        '[agent]\nbackend = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        server = subprocess.Popen([sys.executable, "-c", "import sys; from xiaozhi_trio.pipeline.cli import main; sys.exit(main())",
                                   "-v", "serve", "--config", str(config), "--workers", "2"],
                                  stdout=log_file, stderr=subprocess.STDOUT, text=True)
        try:
            def ports() -> tuple[int, int] | None:
                for line in log_path.read_text().splitlines():
                    if "worker processes on ports" in line:
                        words = line.split()
                        return int(words[words.index("ports") + 1]), int(words[words.index("and") + 1])
                return None

            _, http_port = await trio.to_thread.run_sync(wait_for, ports, "the supervisor's ports")

            def healthy() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            await trio.to_thread.run_sync(wait_for, healthy, "a worker answering /healthz")
            await trio.to_thread.run_sync(
                wait_for, lambda: all(f"worker {i} (pid" in log_path.read_text() for i in (0, 1)), "both workers serving"
            )
            server.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(lambda: server.wait(60)) == 0
            assert "all workers stopped" in log_path.read_text()
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
