"""GDPR: export everything Parley holds about a user, and erase a user.

jobs.py holds the API's rules (who may, starting the jobs, what their status shows);
export.py gathers an export and export_lines.py says what each record holds; zipstream.py
zips it as a stream; stored_exports.py keeps the sealed zip, serves it through a signed link
and expires it; erasure.py erases.

Callers import the module they need; this package imports nothing, so loading one part does
not load the rest (erasure and exports build on domain/retention, whose purge expires exports).
"""
