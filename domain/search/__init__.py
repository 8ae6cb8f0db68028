"""Search over sealed messages through a blind index (docs/search.md).

`text` holds the pure rules, `index` writes and removes a message's keyed tokens (the pipeline
stage, edits, deletes, key rotation), `query` answers a search for one caller. Imported by
module, not re-exported here: domain.messages uses `index`, and `query` uses
domain.message_actions (which uses domain.messages).
"""
