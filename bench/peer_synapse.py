"""Matrix Synapse's side of the peer benchmark: pinned, installed into its own venv under
bench/out/ (never Parley's), configured for one process on loopback with SQLite, presence off
and rate limits out of the way; users registered with the shared-secret admin API; messages
sent with `PUT /rooms/{id}/send/m.room.message/{txn}` over keep-alive connections; and each
receiver a long-polling `/sync` loop, which is how Matrix clients receive."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from bench.peer_common import Inbox, Scenario, Setup, listening, text
from bench.stack import ROOT, Stack, free_port, wait_for

VERSION = "1.163.2"  # the newest on PyPI when this was written (2026-12-03), pinned exactly
VENV = ROOT / "bench" / "out" / "synapse-venv"
UNLIMITED = {"per_second": 100_000, "burst_count": 100_000}
# What a receiver syncs: its rooms' messages (timeline up to 1,000 per response, more would be
# a gap and fails the check); no presence, account data, receipts, typing or state.
FILTER = json.dumps(
    {
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "room": {
            "timeline": {"limit": 1000, "types": ["m.room.message"]},
            "state": {"not_types": ["*"]},
            "ephemeral": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
        },
    },
    separators=(",", ":"),
)
POLL_MS = 5000  # a long poll answers as soon as an event arrives; idle, it ends after this


def install() -> Path:
    """bench/out/synapse-venv with matrix-synapse==VERSION (installed on first use)."""
    python = VENV / "bin" / "python"
    if _installed(python) != VERSION:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", f"matrix-synapse=={VERSION}"]
        print(f"  installing matrix-synapse=={VERSION} into {VENV} ...", flush=True)
        subprocess.run(pip, check=True)
    return python


def _installed(python: Path) -> str:
    if not python.exists():
        return ""
    probe = "import importlib.metadata as m; print(m.version('matrix-synapse'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def config(tmp: Path, port: int, secret: str) -> dict[str, Any]:
    """homeserver.yaml (written as JSON, which YAML reads): one client listener on loopback,
    SQLite, no federation listener, presence off, every rate limit far out of the way, cheap
    password hashing (users are registered once per scenario; it is not measured)."""
    return {
        "server_name": "localhost",
        "pid_file": str(tmp / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(tmp / "homeserver.db")}},
        "media_store_path": str(tmp / "media"),
        "signing_key_path": str(tmp / "localhost.signing.key"),
        "registration_shared_secret": secret,
        "macaroon_secret_key": secrets.token_urlsafe(32),
        "form_secret": secrets.token_urlsafe(32),
        "report_stats": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "presence": {"enabled": False},
        "bcrypt_rounds": 4,
        "enable_metrics": False,
        "url_preview_enabled": False,
        "rc_message": UNLIMITED,
        "rc_registration": UNLIMITED,
        "rc_login": {k: UNLIMITED for k in ("address", "account", "failed_attempts")},
        "rc_joins": {"local": UNLIMITED, "remote": UNLIMITED},
        "rc_joins_per_room": UNLIMITED,
        "rc_invites": {k: UNLIMITED for k in ("per_room", "per_user", "per_issuer")},
        "rc_room_creation": UNLIMITED,
        "rc_admin_redaction": UNLIMITED,
        "rc_presence": {"per_user": UNLIMITED},
        "rc_profile": UNLIMITED,
    }


class SynapseSide:
    name = "Synapse"

    def __init__(self, base: str, secret: str, roots: dict[str, int]) -> None:
        self.base, self.secret, self.roots = base, secret, roots
        self.version = VERSION
        self.http = requests.Session()

    def _call(self, method: str, path: str, token: str = "", **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = self.http.request(method, self.base + path, headers=headers, timeout=60, **kw)
        if resp.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status_code} {resp.text[:300]}")
        return resp.json()

    def register(self, name: str) -> tuple[str, str]:
        """(user id, access token) through the shared-secret admin API."""
        path = "/_synapse/admin/v1/register"
        nonce = self._call("GET", path)["nonce"]
        password = secrets.token_urlsafe(12)
        mac = hmac.new(self.secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join(p.encode() for p in (nonce, name, password, "notadmin")))
        body = {"nonce": nonce, "username": name, "password": password, "admin": False}
        done = self._call("POST", path, json={**body, "mac": mac.hexdigest()})
        return str(done["user_id"]), str(done["access_token"])

    def prepare(self, sc: Scenario, tag: str) -> Setup:
        senders = [self.register(f"{tag}-s{k}") for k in range(sc.senders)]
        receivers = [self.register(f"{tag}-r{j}") for j in range(sc.receivers)]
        if sc.receivers == 1:  # a direct room per sender with the receiver
            rooms = [self._room(s, receivers, direct=True) for s in senders]
        else:  # one group room: the first sender creates it, everyone else joins
            room = self._room(senders[0], senders[1:] + receivers, direct=False)
            rooms = [room] * sc.senders
        readers = []
        for _, token in receivers:  # each starts after its initial sync: nothing sent is missed
            since = self._call("GET", "/_matrix/client/v3/sync", token, params={"filter": FILTER})
            readers.append(partial(self._sync, token, since["next_batch"]))
        inboxes, close = listening(readers, POLL_MS / 1000 + 10)
        posters = [
            self._poster(token, room) for (_, token), room in zip(senders, rooms, strict=True)
        ]
        return Setup(posters, inboxes, close)

    def _room(self, owner: tuple[str, str], members: list[tuple[str, str]], direct: bool) -> str:
        body: dict[str, Any] = {"invite": [uid for uid, _ in members]}
        body |= {"preset": "trusted_private_chat", "is_direct": True} if direct else {}
        body |= {} if direct else {"preset": "private_chat"}
        room = str(
            self._call("POST", "/_matrix/client/v3/createRoom", owner[1], json=body)["room_id"]
        )
        for _, token in members:
            self._call("POST", f"/_matrix/client/v3/join/{quote(room)}", token, json={})
        return room

    def _sync(self, token: str, since: str, inbox: Inbox, stop: threading.Event) -> None:
        """One receiver's /sync long-poll loop: every m.room.message in a timeline is a receipt,
        timed when the response arrived; a `limited` timeline is a gap, a problem."""
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        url = self.base + "/_matrix/client/v3/sync"
        while not stop.is_set():
            params: dict[str, str | int] = {"since": since, "timeout": POLL_MS, "filter": FILTER}
            try:
                resp = http.get(url, params=params, timeout=POLL_MS / 1000 + 60)
            except requests.RequestException as exc:
                inbox.problem(f"sync failed: {exc!r}")
                return
            at = time.perf_counter()
            if resp.status_code != 200:
                inbox.problem(f"sync: {resp.status_code} {resp.text[:200]}")
                return
            body = resp.json()
            since = body["next_batch"]
            for room in body.get("rooms", {}).get("join", {}).values():
                timeline = room.get("timeline", {})
                if timeline.get("limited"):
                    inbox.problem("sync timeline limited: events skipped")
                for event in timeline.get("events", []):
                    if event.get("type") == "m.room.message":
                        inbox.add(event["event_id"], at)

    def _poster(self, token: str, room: str) -> Callable[[int], str]:
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        prefix = f"{self.base}/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/"
        run = secrets.token_hex(4)

        def send(i: int) -> str:
            body = {"msgtype": "m.text", "body": text(i)}
            resp = http.put(f"{prefix}{run}-{i}", json=body, timeout=60)
            if resp.status_code != 200:
                raise RuntimeError(f"send: {resp.status_code} {resp.text[:200]}")
            return str(resp.json()["event_id"])

        return send


@contextmanager
def synapse(keep: bool) -> Iterator[SynapseSide]:
    """One Synapse process (the monolith) on a free loopback port, in a fresh tmp dir."""
    python = install()
    tmp = Path(tempfile.mkdtemp(prefix="parley-bench-synapse-"))
    stack = Stack(tmp)
    port, secret = free_port(), secrets.token_urlsafe(32)
    path = tmp / "homeserver.yaml"
    path.write_text(json.dumps(config(tmp, port, secret), indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "CELERY_"))}
    env.pop("PYTHONPATH", None)
    argv = [str(python), "-m", "synapse.app.homeserver", "-c", str(path)]
    try:
        subprocess.run(
            [*argv, "--generate-keys"], cwd=tmp, env=env, check=True, capture_output=True
        )
        with (tmp / "synapse.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        stack.procs.append(proc)
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"synapse exited {proc.returncode}; see {tmp / 'synapse.log'}")
            try:
                return requests.get(base + "/_matrix/client/versions", timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(answers, 180, "synapse to serve", interval=0.2)
        yield SynapseSide(base, secret, {"synapse": proc.pid})
    finally:
        stack.stop_all()
        if keep:
            print(f"synapse logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
