"""Celery tasks: one module per stage, each idempotent and keyed by the id it works on."""
