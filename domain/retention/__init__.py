"""Retention: how long messages are kept (policy.py), the two-phase purge (purge.py), and
crypto-shredding: deleting a conversation shreds its keys at once (shredding.py), every process
forgets them (key_forgetter.py), and a job deletes its rows and files (conversation_purge.py).
deleting.py holds the deletes these share with GDPR erasure.

The names below are the ones callers outside this package use.
"""

from domain.retention.conversation_purge import start_conversation_purge
from domain.retention.key_forgetter import KeyForgetter
from domain.retention.policy import get_policy, global_seconds, policy_view, set_policy
from domain.retention.purge import PurgeReport, run
from domain.retention.shredding import forget_keys, shred_conversation_keys

__all__ = [
    "KeyForgetter",
    "PurgeReport",
    "forget_keys",
    "get_policy",
    "global_seconds",
    "policy_view",
    "run",
    "set_policy",
    "shred_conversation_keys",
    "start_conversation_purge",
]
