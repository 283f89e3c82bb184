"""A real SMTP server for tests (aiosmtpd, in its own thread), and a self-signed certificate.

The server keeps every message it accepts, parsed, with what the session was:
TLS or not, and who signed in. It can require STARTTLS and a login, speak TLS from
the first byte (``smtps``), and refuse recipients with a reply of the test's choosing.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port

USER, PASSWORD = "handover", "mail-password-" + "p" * 12


@dataclass(frozen=True)
class Received:
    """One message the server accepted."""

    sender: str
    recipients: list[str]
    message: EmailMessage
    tls: bool
    login: str | None

    def text(self) -> str:
        """The text part."""
        body = self.message.get_body(("plain",))
        assert isinstance(body, EmailMessage)
        return str(body.get_content())

    def words(self) -> str:
        """The text part's words, one space apart (lines wrap wherever the text says)."""
        return " ".join(self.text().split())

    def html(self) -> str:
        """The HTML part."""
        body = self.message.get_body(("html",))
        assert isinstance(body, EmailMessage)
        return str(body.get_content())


@dataclass
class Inbox:
    """aiosmtpd's handler: keeps what arrives; refuses recipients with ``refusal`` if set."""

    received: list[Received] = field(default_factory=list)
    refusal: str | None = None
    refused: int = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.refusal is not None:
            self.refused += 1
            return self.refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = BytesParser(policy=default).parsebytes(envelope.content)
        assert isinstance(parsed, EmailMessage)
        login = session.auth_data.login.decode() if session.authenticated else None
        # STARTTLS sets session.ssl; TLS from the start shows on the transport only.
        tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), parsed, tls, login)
        )
        return "250 Message accepted for delivery"

    def about(self, notice: str) -> list[Received]:
        """The messages of one notice."""
        return [r for r in self.received if r.message["X-Handover-Notice"] == notice]


def _authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    good = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode(),
        auth_data.password.decode(),
    ) == (USER, PASSWORD)
    return AuthResult(success=good, auth_data=auth_data if good else None)


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for localhost and 127.0.0.1, and its key, in PEM files."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def self_signed(folder: Path) -> Certificate:
    """A certificate its own CA vouches for: trust it with ``SSL_CERT_FILE=<cert>``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = Certificate(folder / "smtp-cert.pem", folder / "smtp-key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@contextmanager
def mail_server(
    *,
    certificate: Certificate | None = None,
    starttls: bool = False,
    implicit_tls: bool = False,
    login: bool = False,
) -> Iterator[tuple[Inbox, int]]:
    """A running SMTP server on 127.0.0.1: its inbox and its port.

    ``starttls`` offers STARTTLS and requires it; ``implicit_tls`` speaks TLS from the
    start; ``login`` requires AUTH (over TLS) as :data:`USER` / :data:`PASSWORD`.
    """
    inbox = Inbox()
    port = free_port()
    options: dict[str, Any] = {}
    if starttls or implicit_tls:
        assert certificate is not None
    if starttls:
        options.update(tls_context=certificate.server_context(), require_starttls=True)  # type: ignore[union-attr]
    if implicit_tls:
        options["ssl_context"] = certificate.server_context()  # type: ignore[union-attr]
        # aiosmtpd knows TLS it started itself (STARTTLS), not the socket's: it would hide AUTH.
        options["auth_require_tls"] = False
    if login:
        options.update(authenticator=_authenticate, auth_required=True)
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


__all__ = ["PASSWORD", "USER", "Certificate", "Inbox", "Received", "mail_server", "self_signed"]
