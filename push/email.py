"""E-mail digests over SMTP: `PARLEY_SMTP_URL` = smtp://[user:pass@]host[:port][?starttls=1]
or smtps://... (implicit TLS).

SMTP's own taxonomy maps onto ours: 4xx replies and connection trouble are temporary, 5xx
replies are permanent (a dead letter says which), so a full mailbox is retried and an unknown
address is not.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import parse_qs, unquote, urlsplit

from push.base import Digest, Outcome, Push, Result, Target


class EmailProvider:
    kind = "email"

    def __init__(self, smtp_url: str, sender: str, timeout_s: float) -> None:
        self.url = urlsplit(smtp_url) if smtp_url else None
        self.sender = sender
        self.timeout_s = timeout_s

    def send(self, target: Target, message: Push | Digest) -> Result:
        assert isinstance(message, Digest)
        if self.url is None:
            return Result(Outcome.PERMANENT, reason="PARLEY_SMTP_URL is not set")
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = target.address
        mail["Subject"] = message.subject
        mail["Message-ID"] = make_msgid(domain="parley")
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to digests
        mail.set_content(message.body)
        try:
            with self._connect() as smtp:
                smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            return _by_code(min(codes) if codes else 550)
        except smtplib.SMTPResponseException as exc:
            return _by_code(exc.smtp_code)
        except (smtplib.SMTPException, OSError) as exc:
            return Result(Outcome.RETRY, reason=f"smtp: {type(exc).__name__}")
        return Result(Outcome.OK)

    def _connect(self) -> smtplib.SMTP:
        url = self.url
        assert url is not None
        host = url.hostname or "127.0.0.1"
        options = parse_qs(url.query)
        smtp: smtplib.SMTP
        if url.scheme == "smtps":
            smtp = smtplib.SMTP_SSL(
                host, url.port or 465, timeout=self.timeout_s, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(host, url.port or 25, timeout=self.timeout_s)
            if options.get("starttls", ["0"])[0].lower() in ("1", "true", "yes"):
                smtp.starttls(context=ssl.create_default_context())
        if url.username:
            smtp.login(unquote(url.username), unquote(url.password or ""))
        return smtp


def _by_code(code: int) -> Result:
    if 400 <= code < 500:
        return Result(Outcome.RETRY, code, reason=f"smtp {code}")
    return Result(Outcome.PERMANENT, code, reason=f"smtp {code}")
