"""marshmallow schemas, one module per resource: request validation (unknown fields rejected)
and the response shapes, which both shape every JSON answer and generate /openapi.json.

- `common`: StrictSchema (request input), paging, ProblemSchema, HealthSchema
- `conversations`, `messages`, `moderation`, `attachments`, `privacy` (retention and GDPR jobs),
  `push` (subscriptions, preferences, dead letters), `notifications`

Import from the resource's module; this package re-exports nothing.
"""
