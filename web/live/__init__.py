"""The live side of the web process: WebSocket sessions, per-socket send queues, presence.

`web/ws.py` is the endpoint, `web/hub.py` the one Redis subscriber per process that feeds every
local socket; the pieces both use live here, small and named for what they hold.
"""
