"""gunicorn entry point: `gunicorn -k gevent web.wsgi:app` (the gevent worker monkey-patches)."""

from web import create_app

app = create_app()
