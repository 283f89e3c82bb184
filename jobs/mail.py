"""Mail: one message handed to an SMTP server, or filed in a maildir in embedded mode.

``HANDOVER_SMTP_URL`` names the server (RFC 5321 submission)::

    smtp://[user[:password]@]host[:port][?starttls=required]   port 25 by default
    smtps://[user[:password]@]host[:port]                      port 465 by default

``smtp://`` upgrades to TLS with STARTTLS (RFC 3207) whenever the server offers it;
``?starttls=required`` refuses to send unless it does, and so does a URL carrying
credentials: a password never crosses in clear. ``smtps://`` speaks TLS from the
first byte (RFC 8314). Certificates are verified against the system's CA bundle
(``SSL_CERT_FILE`` names another one); one that does not verify is a failure, never a
fall-back to plain text. User and password are percent-encoded.

Failures are classed once, here: :class:`MailUnavailable` (the server cannot be
reached, timed out, or answered 4xx: try again later) and :class:`MailRefused`
(it answered 5xx: the same message would be refused again). Their messages are
Handover's own words with the reply code, never the server's text, which often
quotes the recipient's address.

Embedded mode files each message in a maildir (:func:`file_in_maildir`), which the
support dashboard lists (:func:`read_maildir`); a purged job's messages are found by
their ``X-Handover-Job`` header (:func:`maildir_keys_by_job`) and removed
(:func:`remove_from_maildir`).
"""

from __future__ import annotations

import email.policy
import mailbox
import re
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

#: Seconds one SMTP command may take before the attempt counts as failed.
SMTP_TIMEOUT = 30.0
_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
#: An address Handover writes to: no spaces, quotes, brackets or separators that could
#: make it two addresses or a header of its own.
_ADDRESS = re.compile(r'[^@\s<>,;:"()\[\]\\]+@[^@\s<>,;:"()\[\]\\]+')


_UNREACHABLE = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPServerDisconnected,
)


class MailError(Exception):
    """A message was not handed over; the text is Handover's own words."""


class MailUnavailable(MailError):
    """The server cannot take the message now (unreachable, timed out, 4xx): try again later."""


class MailRefused(MailError):
    """The server refused the message for good (5xx, or TLS it cannot offer)."""


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how messages are handed over, parsed from ``HANDOVER_SMTP_URL``."""

    host: str
    port: int
    implicit_tls: bool
    starttls_required: bool
    username: str | None = None
    password: str | None = None

    @property
    def shown(self) -> str:
        """The server as logs and timelines name it: no credentials."""
        scheme = "smtps" if self.implicit_tls else "smtp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def smtp_target(url: str) -> SmtpTarget:
    """``url`` parsed; :class:`ValueError` saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"expected an smtp:// or smtps:// URL, got {parts.scheme or 'none'}://")
    if not parts.hostname:
        raise ValueError("the URL names no host")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    if parts.path not in {"", "/"}:
        raise ValueError(f"an SMTP URL has no path, got {parts.path!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"starttls"})
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} (known: starttls=required)")
    starttls = query.get("starttls", [])
    if starttls not in ([], ["required"]):
        raise ValueError("starttls takes one value: required")
    if starttls and parts.scheme == "smtps":
        raise ValueError("smtps:// is TLS from the start; starttls=required is for smtp://")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and username is None:
        raise ValueError("a password needs a user name")
    return SmtpTarget(
        host=parts.hostname,
        port=port,
        implicit_tls=parts.scheme == "smtps",
        starttls_required=bool(starttls) or (username is not None and parts.scheme == "smtp"),
        username=username,
        password=password,
    )


def mail_address(value: str) -> str:
    """The bare address of ``value`` (``Name <a@b>`` or ``a@b``); :class:`ValueError` if none."""
    _, address = parseaddr(value)
    if not usable_address(address):
        raise ValueError(f"expected an email address such as privacy@example.com, got {value!r}")
    return address


def usable_address(address: str) -> bool:
    """Whether Handover may write to ``address``: one plain address, nothing more."""
    return len(address) <= 320 and _ADDRESS.fullmatch(address) is not None


async def send_smtp(
    target: SmtpTarget, message: EmailMessage | bytes, sender: str, to: str
) -> None:
    """Hand ``message`` (or its bytes) to the server for ``to``, from envelope sender ``sender``."""
    try:
        await aiosmtplib.send(
            message,
            sender=sender,
            recipients=[to],
            hostname=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            use_tls=target.implicit_tls,
            start_tls=None if not target.starttls_required else True,
            timeout=SMTP_TIMEOUT,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [refusal.code for refusal in exc.recipients]
        raise _by_code(codes[0] if codes else 550, target, "refused the recipient") from None
    except aiosmtplib.SMTPNotSupported as exc:
        raise MailRefused(
            f"{target.shown} does not offer what this URL requires ({_first_words(exc)})"
        ) from None
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise MailRefused(f"{target.shown} refused the credentials ({exc.code})") from None
    except aiosmtplib.SMTPResponseException as exc:
        raise _by_code(exc.code, target, "refused the message") from None
    except (*_UNREACHABLE, OSError, TimeoutError) as exc:
        if _caused_by(exc, ssl.SSLCertVerificationError):
            raise MailRefused(f"{target.shown}: its TLS certificate does not verify") from None
        raise MailUnavailable(f"{target.shown} unreachable: {type(exc).__name__}") from None
    except aiosmtplib.SMTPException as exc:  # e.g. AUTH not offered: as configured, it never works
        raise MailRefused(
            f"{target.shown} cannot be used as configured ({_first_words(exc)})"
        ) from None


def _by_code(code: int, target: SmtpTarget, what: str) -> MailError:
    if 400 <= code < 500:
        return MailUnavailable(f"{target.shown} {what} for now ({code})")
    return MailRefused(f"{target.shown} {what} ({code})")


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is ``exc`` or in the chain of causes aiosmtplib wraps it in."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _first_words(exc: Exception) -> str:
    """The start of an aiosmtplib message (its own words, not the server's)."""
    return str(exc).split(":", 1)[0][:80] or type(exc).__name__


def ensure_maildir(path: Path) -> None:
    """Create the maildir at ``path`` (private) if missing, before several writers share it:
    two creating it at once could each find it half made."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    mailbox.Maildir(path, create=True)


def file_in_maildir(path: Path, message: EmailMessage | bytes) -> None:
    """File ``message`` (or its bytes) in the maildir at ``path`` (created, private, if missing)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    box = mailbox.Maildir(path, create=True)
    box.add(message)


@dataclass(frozen=True)
class StoredMail:
    """A message in the embedded maildir, as the dashboard lists it."""

    key: str
    date: str
    to: str
    subject: str
    message_id: str
    job: str | None
    notice: str | None
    language: str | None
    text: str


def read_maildir(path: Path, limit: int = 200) -> list[StoredMail]:
    """The newest ``limit`` messages of the maildir at ``path``, newest first."""
    if not path.is_dir():
        return []
    box = mailbox.Maildir(path, create=False)
    found = []
    for key in box.iterkeys():
        parsed = BytesParser(policy=email.policy.default).parsebytes(box.get_bytes(key))
        body = parsed.get_body(("plain",))
        found.append(
            StoredMail(
                key=key,
                date=str(parsed["Date"] or ""),
                to=str(parsed["To"] or ""),
                subject=str(parsed["Subject"] or ""),
                message_id=str(parsed["Message-ID"] or ""),
                job=_header(parsed, "X-Handover-Job"),
                notice=_header(parsed, "X-Handover-Notice"),
                language=_header(parsed, "Content-Language"),
                text=body.get_content() if isinstance(body, EmailMessage) else "",
            )
        )
    found.sort(key=_sent_at, reverse=True)
    return found[:limit]


def maildir_keys_by_job(path: Path) -> dict[str, list[str]]:
    """The keys of the messages in the maildir at ``path``, by the job their
    ``X-Handover-Job`` header names (messages without one left out)."""
    if not path.is_dir():
        return {}
    box = mailbox.Maildir(path, create=False)
    parser = BytesHeaderParser(policy=email.policy.default)
    found: dict[str, list[str]] = {}
    for key in box.iterkeys():
        try:
            headers = parser.parsebytes(box.get_bytes(key))
        except (KeyError, FileNotFoundError):  # removed since it was listed
            continue
        job = headers["X-Handover-Job"]
        if job is not None:
            found.setdefault(str(job), []).append(key)
    return found


def remove_from_maildir(path: Path, keys: list[str]) -> int:
    """Remove the messages ``keys`` from the maildir at ``path``; how many were there."""
    box = mailbox.Maildir(path, create=False)
    removed = 0
    for key in keys:
        try:
            box.remove(key)
        except (KeyError, FileNotFoundError):  # removed already
            continue
        removed += 1
    return removed


def _header(message: EmailMessage, name: str) -> str | None:
    value = message[name]
    return str(value) if value is not None else None


def _sent_at(mail: StoredMail) -> float:
    try:
        return parsedate_to_datetime(mail.date).timestamp()
    except (TypeError, ValueError):
        return 0.0


__all__ = [
    "MailError",
    "MailRefused",
    "MailUnavailable",
    "SmtpTarget",
    "StoredMail",
    "file_in_maildir",
    "mail_address",
    "maildir_keys_by_job",
    "read_maildir",
    "remove_from_maildir",
    "send_smtp",
    "smtp_target",
    "usable_address",
]
