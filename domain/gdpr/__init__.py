"""GDPR: export everything Parley holds about a user, and erase a user.

jobs.py holds the API's rules (who may, starting the jobs, what their status shows);
export.py gathers an export and export_lines.py says what each record holds; zipstream.py
zips it as a stream; stored_exports.py keeps the sealed zip, serves it through a signed link
and expires it; erasure.py erases.

The names below are the ones the web API (web/privacy.py) uses.
"""

from domain.gdpr.jobs import job_view, start_erase, start_export, visible_job
from domain.gdpr.stored_exports import check_signature, open_export

__all__ = [
    "check_signature",
    "job_view",
    "open_export",
    "start_erase",
    "start_export",
    "visible_job",
]
