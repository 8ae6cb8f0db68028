"""marshmallow schemas, one module per resource: request validation (unknown fields rejected)
and the response shapes, which both shape every JSON answer and generate /openapi.json.

- `common`: StrictSchema (request input), paging, ProblemSchema, HealthSchema
- `conversations`, `messages`, `moderation`, `attachments`, `privacy` (retention and GDPR jobs),
  `push` (subscriptions, preferences, dead letters), `notifications`

Import from the resource's module. `MessageSchema` is also re-exported here for
web/live/frames.py, which imports it from `web.schemas`.
"""

from web.schemas.messages import MessageSchema

__all__ = ["MessageSchema"]
