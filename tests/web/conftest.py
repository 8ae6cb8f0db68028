"""Fixtures for the HTTP edge's tests: apps built with other settings (tight limits, CORS, a
metrics token, JWT claims) on the stack's database and Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from tests.conftest import JWT_SECRET, Stack


@pytest.fixture
def make_app(stack: Stack) -> Iterator[Callable[..., Flask]]:
    """An app on the stack's database and Redis with other settings."""
    from web import create_app

    made: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        s = stack.svc.settings
        app = create_app(
            {
                "database_url": s.database_url,
                "redis_url": s.redis_url,
                "broker_url": s.broker_url,
                "data_dir": stack.data_dir,
                "jwt_secret": JWT_SECRET,
                "moderation_policies": s.moderation_policies,
                "testing": True,
                **overrides,
            }
        )
        made.append(app)
        return app

    yield build
    for app in made:
        app.extensions["parley"].engine.dispose()
