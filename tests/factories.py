"""Test helpers: an API client that signs real tokens, and readers of the real event streams."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text
from werkzeug.test import TestResponse

from core.events import EventLog
from domain import apikeys
from models import Message
from tests.conftest import Stack, wait_for

# Edge behaviour (HTTP, counters in Redis, tokens, logging) does not depend on the database, so
# those tests run on SQLite only; what touches delivery and the outbox runs on both.
ONE_DATABASE = pytest.mark.parametrize("stack", ["sqlite"], indirect=True)


def uid(prefix: str = "u") -> str:
    """A user id no other test uses (the database is shared across the session)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Api:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.client: FlaskClient = stack.app.test_client()
        self._tokens: dict[tuple[str, tuple[str, ...]], str] = {}

    def token(self, user: str, roles: tuple[str, ...] = ()) -> str:
        key = (user, roles)
        if key not in self._tokens:
            with self.stack.app.app_context():
                from web.auth import codec

                self._tokens[key] = codec().issue(user, roles=list(roles))
        return self._tokens[key]

    def api_key(self, name: str = "platform") -> str:
        with self.stack.svc.Session.begin() as s:
            _, key = apikeys.create(s, name)
        return key

    def call(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        key: str | None = None,
        roles: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> TestResponse:
        hdrs = dict(headers or {})
        if user is not None:
            hdrs["Authorization"] = f"Bearer {self.token(user, roles)}"
        elif key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        return self.client.open(path, method=method, headers=hdrs, **kwargs)

    def get(self, path: str, **kw: Any) -> TestResponse:
        return self.call("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> TestResponse:
        return self.call("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> TestResponse:
        return self.call("PATCH", path, **kw)

    def put(self, path: str, **kw: Any) -> TestResponse:
        return self.call("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> TestResponse:
        return self.call("DELETE", path, **kw)

    # --- shortcuts ------------------------------------------------------------------------

    def conversation(self, owner: str, *others: str, ctype: str = "group", **body: Any) -> str:
        resp = self.post(
            "/v1/conversations", user=owner, json={"type": ctype, "members": list(others), **body}
        )
        assert resp.status_code in (200, 201), resp.get_json()
        return str(resp.get_json()["id"])

    def send(self, user: str, cid: str, text: str, **body: Any) -> dict[str, Any]:
        resp = self.post(
            f"/v1/conversations/{cid}/messages", user=user, json={"text": text, **body}
        )
        assert resp.status_code in (200, 202), resp.get_json()
        data: dict[str, Any] = resp.get_json()
        return data


def stream_events(stack: Stack, user: str, etype: str | None = None) -> list[dict[str, Any]]:
    log = EventLog(stack.redis, stack.svc.settings.stream_maxlen)
    out = []
    since = "0"
    while True:
        batch = log.read(user, since, 1000)
        if not batch:
            break
        for eid, ev in batch:
            if etype is None or ev["type"] == etype:
                out.append({"id": eid, **ev})
        since = batch[-1][0]
    return out


def delivered_ids(stack: Stack, user: str) -> list[str]:
    return [e["data"]["message_id"] for e in stream_events(stack, user, "message.new")]


def wait_delivered(stack: Stack, user: str, message_ids: list[str], timeout: float = 30) -> None:
    """The messages are in the user's stream and their fan-out has committed: the fan-out
    appends `message.new` before it commits `delivered`, and listings and reactions follow
    the commit."""
    want = set(message_ids)
    wait_for(
        lambda: want <= set(delivered_ids(stack, user)),
        timeout,
        what=f"{len(want)} message(s) in {user}'s stream",
    )

    def committed() -> bool:
        with stack.svc.ReadSession() as s:
            found = s.scalar(
                select(func.count())
                .select_from(Message)
                .where(Message.id.in_(want), Message.state == "delivered")
            )
        return found == len(want)

    wait_for(committed, timeout, what=f"{len(want)} message(s) committed as delivered")


_SCAN = """
import sys
from pathlib import Path
root, needles = Path(sys.argv[1]), [bytes.fromhex(h) for h in sys.argv[2:]]
for path in sorted(root.rglob("*")):
    if path.is_file():
        blob = path.read_bytes()
        for n in needles:
            if n in blob:
                print(f"{path.relative_to(root)}: {n!r}")
"""


def files_containing(root: Path, needles: list[bytes]) -> list[str]:
    """Files under `root` holding any needle, read by a child process.

    Not in this process: it holds SQLite connections to the database in the data dir, and
    closing any descriptor of that file (or its -wal/-shm) would drop SQLite's POSIX locks —
    a worker could then reset shared memory this process still maps (SIGBUS, or corruption).
    """
    out = subprocess.run(
        [sys.executable, "-c", _SCAN, str(root), *(n.hex() for n in needles)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.splitlines()


# --- metrics ------------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def scrape(api: Api, **kw: Any) -> Samples:
    resp = api.get("/metrics", **kw)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.content_type.startswith("text/plain")
    return parse(resp.get_data(as_text=True))


def plaintext_at_rest(stack: Stack, needle: bytes) -> list[str]:
    """Every place at rest holding `needle`: files in the data dir (logs aside), PostgreSQL
    tables (each row as JSON), and Redis values of every kind. Empty when nothing leaks."""
    found = [
        f"file {h}"
        for h in files_containing(stack.data_dir, [needle])
        if not h.split(":")[0].endswith(".log")
    ]
    if stack.svc.dialect == "postgresql":
        tables_sql = text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        with stack.svc.engine.connect() as conn:
            for table in conn.execute(tables_sql).scalars().all():
                query = f'SELECT row_to_json(t)::text FROM "{table}" t'  # noqa: S608 (pg_tables)
                rows = conn.execute(text(query)).scalars()
                if any(needle.decode() in row for row in rows):
                    found.append(f"table {table}")
    r = stack.redis
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            values = [r.get(key) or b""]
        elif kind == "stream":
            values = [b"".join(v for f in e[1].items() for v in f) for e in r.xrange(key)]
        elif kind == "list":
            values = r.lrange(key, 0, -1)
        elif kind == "hash":
            values = [k + v for k, v in r.hgetall(key).items()]
        elif kind == "set":
            values = list(r.smembers(key))
        elif kind == "zset":
            values = r.zrange(key, 0, -1)
        else:
            values = []
        if any(needle in v for v in values):
            found.append(f"redis key {key!r}")
    return found
