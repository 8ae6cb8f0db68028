"""Push providers behind one small interface (no Flask, no Celery, no SQLAlchemy).

`base` holds the interface and the error taxonomy; `webpush`, `webhook` and `email` reach one
kind of target each; `targets` guards user-given URLs; `vapid` loads the server's VAPID key.
"""
