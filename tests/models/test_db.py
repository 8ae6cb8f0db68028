"""How sessions meet the database: read-only work on PostgreSQL runs in autocommit, and the
pooled connection it used is transactional again for the next writer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from psycopg import pq
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from models.db import make_engine, make_sessionmaker, read_only


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    # One connection, so the reader and the writer below share it.
    engine = make_engine(postgres_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _status(session: Session) -> pq.TransactionStatus:
    dbapi = session.connection().connection.dbapi_connection
    assert dbapi is not None
    status: pq.TransactionStatus = dbapi.info.transaction_status
    return status


def test_a_read_session_on_postgresql_sends_no_begin(engine: Engine) -> None:
    Reads = make_sessionmaker(read_only(engine))
    Writes = make_sessionmaker(engine)
    with Reads() as s:
        assert s.execute(text("SELECT 1")).scalar() == 1
        assert _status(s) == pq.TransactionStatus.IDLE  # no BEGIN went before the SELECT
    with Writes.begin() as s:  # the same pooled connection, back to transactions
        s.execute(text("SELECT 1"))
        assert _status(s) == pq.TransactionStatus.INTRANS
        isolation = s.execute(text("SHOW transaction_isolation")).scalar()
        assert isolation == "read committed"
