"""Engine and session factory.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with BEGIN IMMEDIATE:
a deferred transaction that reads and then writes can fail with "database is locked" without
waiting, which would break the gap-free seq under concurrent posts. PostgreSQL uses row locks.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "parley_read_only"

Db = Session | Connection  # a caller's transaction: an ORM session, or a bare connection


def connection_of(db: Db) -> Connection:
    """The connection under `db`. Core statements run on it directly: through the session's
    `execute` they take the ORM's execution path, which costs more than they do."""
    return db if isinstance(db, Connection) else db.connection()


def make_engine(url: str, *, pre_ping: bool = True, **kwargs: Any) -> Engine:
    """`pre_ping`: test a server connection (one round trip) each time it leaves the pool, so
    one the server dropped (a restart) is replaced instead of failing the statement. Off where
    the caller retries anyway (the worker's tasks). SQLite has no server connection to test."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            # Kept open: a gevent web process runs dozens of requests at once, and overflow
            # connections (opened, PRAGMAs run, closed per request) cost more than the query.
            pool_size=20,
            max_overflow=20,
            **kwargs,
        )
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, pool_pre_ping=pre_ping, **kwargs)
    # A list of rows goes as one multi-row INSERT (SQLAlchemy's "insertmanyvalues", which its
    # psycopg2 dialect uses by default) rather than psycopg's pipelined executemany: a batch
    # here is a few rows (a group commit's posts, a message's postings), for which the
    # pipeline cost more CPU than the rows under gevent, as the web runs (docs/performance.md).
    engine.dialect.use_insertmanyvalues_wo_returning = True
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy drive BEGIN itself (pysqlite's implicit BEGIN is deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Readers take no write lock (WAL lets them run beside a writer); see read_only().
        if conn.get_execution_options().get(READ_ONLY, False):
            conn.exec_driver_sql("BEGIN")
        else:
            begin_immediate(conn.connection.dbapi_connection)


def begin_immediate(dbapi_conn: Any) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock in Python rather than in SQLite's busy
    handler. That handler sleeps in C (1, 2, 5, 10… ms), which under gevent stalls every
    greenlet of the web process, sockets included, and oversleeps a lock freed in between;
    here the wait is `time.sleep` (a greenlet switch under gevent) in short steps."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.0002
    dbapi_conn.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                dbapi_conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
            time.sleep(delay)
            delay = min(delay * 1.5, 0.002)
    finally:
        dbapi_conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def read_only(engine: Engine) -> Engine:
    """The same engine for work that only reads.

    On SQLite its transactions begin DEFERRED, so a read inside a writer's transaction (a key
    lookup during a task) never waits on it. On PostgreSQL it runs in autocommit: at READ
    COMMITTED each statement takes its own snapshot whether or not a transaction wraps them,
    so the BEGIN and ROLLBACK round trips bought nothing (a hub's render is four reads)."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT", **{READ_ONLY: True})
    return engine.execution_options(**{READ_ONLY: True})
