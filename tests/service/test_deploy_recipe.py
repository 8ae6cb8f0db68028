"""docs/deploy.md's local cluster, run as written: two web nodes, two worker pools and beat.

The Procfile is read from the page itself, so the documented recipe is the tested one. A
message posted through web node A reaches a WebSocket client and a REST reader on web node B;
`flask status` names both pools; SIGTERM to honcho then stops every process, each cleanly.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from core.ids import utcnow
from tests.conftest import JWT_SECRET, ROOT, RedisServer, free_port, wait_for
from tests.live_server import LiveClient
from tests.service.test_run_service import _descendants, _still_alive

RECIPE = re.compile(r"<!-- recipe: Procfile\.cluster -->\s*```procfile\n(.*?)```", re.S)
STOP_TIMEOUT_S = 40


def recipe() -> str:
    found = RECIPE.search((ROOT / "docs" / "deploy.md").read_text())
    assert found, "docs/deploy.md lost its Procfile.cluster recipe"
    return found.group(1)


def call(port: int, method: str, path: str, token: str | None = None, body: Any = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def token(user: str) -> str:
    claims = {"sub": user, "exp": utcnow() + timedelta(minutes=10)}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def healthy(port: int) -> bool:
    try:
        return bool(call(port, "GET", "/healthz")[0] == 200)
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_documented_local_cluster_delivers_across_nodes_and_stops_cleanly(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    procfile = tmp_path / "Procfile.cluster"
    procfile.write_text(recipe())
    assert {"web_a", "web_b", "pipeline", "others", "beat"} <= {
        line.split(":", 1)[0] for line in procfile.read_text().splitlines() if line
    }
    data_dir = tmp_path / "cluster"
    data_dir.mkdir()
    redis_db = 12
    redis_server.client(redis_db).flushdb()
    port_a, port_b = free_port(), free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PARLEY_", "CELERY_", "PROMETHEUS_")) and k not in ("PORT", "HOST")
    }
    env.update(
        REDIS_URL=redis_server.url(redis_db),
        DATABASE_URL=f"sqlite:///{data_dir / 'parley.db'}",
        PARLEY_DATA_DIR=str(data_dir),
        PARLEY_JWT_SECRET=JWT_SECRET,
        PARLEY_OUTBOX_SWEEP_S="1",
        WEB_A_PORT=str(port_a),
        WEB_B_PORT=str(port_b),
        PATH=os.pathsep.join([venv_bin, env.get("PATH", "")]),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "web", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    empty_env_file = tmp_path / "empty.env"  # not the developer's .env
    empty_env_file.write_text("")
    log_path = tmp_path / "honcho.log"
    with log_path.open("wb") as log:
        honcho = subprocess.Popen(
            [f"{venv_bin}/honcho", "-e", str(empty_env_file), "-f", str(procfile), "-d", str(ROOT),
             "start"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    seen: dict[int, str] = {}
    try:
        wait_for(lambda: healthy(port_a) and healthy(port_b), 90, 0.2, "both web nodes")
        seen.update(_descendants(honcho.pid))
        alice, bob = token("alice-" + data_dir.name), token("bob-" + data_dir.name)
        status, conv = call(
            port_a, "POST", "/v1/conversations", alice,
            {"type": "direct", "members": ["bob-" + data_dir.name]},
        )  # fmt: skip
        assert status == 201, conv
        client = LiveClient.connect(f"ws://127.0.0.1:{port_b}/v1/ws?token={bob}")
        try:
            status, msg = call(
                port_a, "POST", f"/v1/conversations/{conv['id']}/messages", alice,
                {"text": "posted through A"},
            )  # fmt: skip
            assert status == 202, msg
            event = client.wait_type("message.new", timeout=60)
            assert event["data"]["id"] == msg["id"] and event["data"]["text"] == "posted through A"
        finally:
            client.close()

        def read_on_b() -> list[Any]:
            items: list[Any] = call(port_b, "GET", f"/v1/conversations/{conv['id']}/messages", bob)[
                1
            ]["items"]
            return [(m["text"], m["state"]) for m in items]

        assert wait_for(read_on_b, 30, 0.2, "the message on B") == [
            ("posted through A", "delivered")
        ]
        report = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "web", "status", "--json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert report.returncode == 0, report.stdout + report.stderr
        answered = json.loads(report.stdout)["workers"]["answered"]
        assert {name.split("@")[0] for name in answered} == {"pipeline", "others"}
        seen.update(_descendants(honcho.pid))

        honcho.send_signal(signal.SIGTERM)
        honcho.wait(STOP_TIMEOUT_S)
        output = log_path.read_text(errors="replace")
        assert _still_alive(seen) == [], output[-4000:]
        assert "Traceback" not in output, output[-4000:]
        assert output.count("Warm shutdown") >= 2, output[-4000:]  # both worker pools
        assert "SIGKILL" not in output, output[-4000:]  # nothing needed killing
        assert output.count("Shutting down: Master") == 2, output[-4000:]  # both web nodes
        for name in ("web_a", "web_b", "pipeline", "others", "beat"):
            # rc -15: honcho's `sh -c` wrapper ended by the SIGTERM it forwarded; what matters
            # is that nothing is left (above) and nothing was SIGKILLed.
            assert re.search(rf"{name}\.1 stopped \(rc=(0|-15)\)", output), output[-3000:]
        assert not healthy(port_a) and not healthy(port_b)
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait()
        for pid in _still_alive(seen):
            os.kill(pid, signal.SIGKILL)
