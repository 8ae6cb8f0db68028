"""Operator commands: `flask --app web db|keys|token|status ...`."""

from __future__ import annotations

import json

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import select

from core.crypto import MasterKeys
from core.services import services
from domain import apikeys
from models import ApiKey


def register_cli(app: Flask) -> None:
    db = AppGroup("db", help="Database schema.")
    keys = AppGroup("keys", help="API keys and encryption keys.")
    token = AppGroup("token", help="User tokens for local use.")

    @db.command("upgrade")
    @click.argument("revision", default="head")
    def db_upgrade(revision: str) -> None:
        """Apply migrations up to REVISION (default: head)."""
        from models.migrate import upgrade

        upgrade(services().settings.database_url, revision)
        click.echo(f"database at {revision}")

    @keys.command("create")
    @click.argument("name")
    def keys_create(name: str) -> None:
        """Create a server API key named NAME; the key is shown once."""
        with services().Session.begin() as s:
            row, key = apikeys.create(s, name)
            s.flush()
            click.echo(json.dumps({"id": row.id, "name": name, "key": key}))

    @keys.command("list")
    def keys_list() -> None:
        """List API keys (never the secrets)."""
        with services().Session() as s:
            for row in s.scalars(select(ApiKey).order_by(ApiKey.created_at)):
                state = "revoked" if row.revoked_at else "active"
                click.echo(f"{row.id}  pk_{row.prefix}_…  {row.name}  {state}")

    @keys.command("revoke")
    @click.argument("key_id")
    def keys_revoke(key_id: str) -> None:
        """Revoke the API key with id KEY_ID."""
        from core.ids import utcnow

        with services().Session.begin() as s:
            row = s.get(ApiKey, key_id)
            if row is None:
                raise click.ClickException(f"no API key {key_id}")
            row.revoked_at = utcnow()
        click.echo(f"revoked {key_id}")

    @keys.command("new-master")
    @click.argument("kid")
    def keys_new_master(kid: str) -> None:
        """Print a new master key entry to put first in PARLEY_MASTER_KEYS."""
        click.echo(MasterKeys.generate_entry(kid))

    @keys.command("rotate")
    @click.option(
        "--reencrypt",
        is_flag=True,
        help="Also give every conversation a new data key and re-encrypt its text.",
    )
    @click.option("--wait/--no-wait", default=True, help="Follow progress until done.")
    def keys_rotate(reencrypt: bool, wait: bool) -> None:
        """Re-wrap data keys under the newest master key (and optionally re-encrypt text)."""
        from domain.jobs import follow
        from domain.rotation import start_rotation

        job_id = start_rotation(reencrypt=reencrypt, actor="cli")
        click.echo(f"rotation job {job_id} queued")
        if wait:
            for line in follow(job_id):
                click.echo(line)

    @token.command("issue")
    @click.argument("user_id")
    @click.option("--name", default=None)
    @click.option("--role", "roles", multiple=True, help="moderator or admin; repeatable")
    @click.option("--ttl", default=3600, show_default=True, help="Lifetime in seconds.")
    def token_issue(user_id: str, name: str | None, roles: tuple[str, ...], ttl: int) -> None:
        """Print a JWT for USER_ID signed with the configured secret (local use)."""
        from web.auth import codec

        claims: dict[str, object] = {"roles": list(roles)}
        if name:
            claims["name"] = name
        click.echo(codec().issue(user_id, ttl_s=ttl, **claims))

    for group in (db, keys, token):
        app.cli.add_command(group)

    from web.status import status_command

    app.cli.add_command(status_command)
    app.cli.add_command(_retention_commands())


def _retention_commands() -> AppGroup:
    retention = AppGroup("retention", help="Retention purge (docs/retention.md).")

    @retention.command("run")
    def retention_run() -> None:
        """Run the retention purge now and print what it did (exit 1 if another holds it)."""
        from domain.retention import run

        report = run(services())
        click.echo(report.summary())
        if report.skipped:
            raise click.exceptions.Exit(1)

    return retention
