"""The process-wide handles web and worker share: settings, DB, Redis, keyring.

Built once per process (`build_services`, by the app factory in web/__init__.py), stored on the
Flask app, and reached through `services()` inside an app context, which Celery tasks also run
in (worker.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import sessionmaker

from core.config import Settings
from core.crypto import Keyring, MasterKeys
from models import DataKey
from models.db import make_engine, make_sessionmaker, read_only


@dataclass
class Services:
    settings: Settings
    engine: Engine
    Session: sessionmaker[OrmSession]
    ReadSession: sessionmaker[OrmSession]  # for work that never writes (no SQLite write lock)
    redis: redis.Redis
    keyring: Keyring
    tasks: Celery  # producer bound to this process's broker

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        """Drop inherited connections (a forked worker child must not share its parent's)."""
        self.engine.dispose(close=False)
        self.redis.connection_pool.reset()


def build_services(settings: Settings, producer: Celery) -> Services:
    """The process's handles; `producer` is the Celery app it sends tasks with."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url, pre_ping=settings.db_pre_ping)
    session_factory = make_sessionmaker(engine)
    read_factory = make_sessionmaker(read_only(engine))

    def load_wrapped(dk_id: str) -> tuple[str, bytes] | None:
        with read_factory() as s:
            row = s.execute(
                select(DataKey.master_kid, DataKey.wrapped).where(DataKey.id == dk_id)
            ).first()
            return (row[0], row[1]) if row else None

    master = MasterKeys.load(settings.master_keys, settings.data_dir)
    client = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    return Services(
        settings,
        engine,
        session_factory,
        read_factory,
        client,
        Keyring(master, load_wrapped),
        producer,
    )


def services() -> Services:
    svc: Services = current_app.extensions["parley"]
    return svc
