"""Signed, expiring download URLs, each bound to one user (signed by domain/signed_urls.py).

A URL grants one (attachment, variant, user) until its expiry: changing any of them breaks the
signature. The user rides in the URL (`u=`) because a download needs no bearer token (it works
in `<img src>`); the download view checks again that this user may still see the attachment.
"""

from __future__ import annotations

from urllib.parse import quote

from core.services import Services
from domain.signed_urls import expiry, signer_for

PURPOSE = "attachment-download"


class DownloadLinks:
    """Signed download URLs for one user, all expiring at the same second."""

    def __init__(self, svc: Services, user_id: str, expires: int | None = None) -> None:
        """`expires` in Unix seconds; by default PARLEY_DOWNLOAD_TTL_S from now."""
        self._signer = signer_for(svc, PURPOSE)
        self.user_id = user_id
        self.expires = expiry(svc.settings.download_ttl_s) if expires is None else expires

    def url(self, att_id: str, variant: str) -> str:
        query = self._signer.query(att_id, variant, self.user_id, expires=self.expires)
        user = quote(self.user_id, safe="")
        return f"/v1/attachments/{att_id}/content/{variant}?u={user}&{query}"


def check_link(
    svc: Services, att_id: str, variant: str, user_id: str, *, expires: int, sig: str
) -> None:
    """Return if the link was signed by us for exactly these values and has not expired;
    otherwise InvalidLink or ExpiredLink (both 403)."""
    signer_for(svc, PURPOSE).check(att_id, variant, user_id, expires=expires, sig=sig)
