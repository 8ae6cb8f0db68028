"""Retention: how long messages are kept (policy.py), the two-phase purge (purge.py), and
crypto-shredding: deleting a conversation shreds its keys at once (shredding.py), every process
forgets them (key_forgetter.py), and a job deletes its rows and files (conversation_purge.py).
deleting.py holds the deletes these share with GDPR erasure.

Callers import the module they need: this package imports nothing, so using one part (say
shredding, from conversation deletion) never loads the others (purge reaches GDPR exports).
"""
