"""Checking what Handover hands out, with nothing but the service's public keys.

- an export archive: every file against the manifest's SHA-256, the manifest against its
  signature (that is what vouches for the content: an archive its store assembled has
  no SHA-256 of its own, and its job records the whole archive's CRC-32 instead, which
  :attr:`Verification.crc32`, computed here, can be compared with); a member name
  used twice (a forged copy can stand before the signed one, and unzip tools disagree
  on which they keep) or one that could be written outside the extraction directory
  fails it;
- an erasure or restriction receipt, or a breach report (:mod:`jobs.breach_report`): its
  signature over its canonical bytes; JSON that repeats a key in one object fails it.

Public keys come from a pinned key file or from the service's ``/v1/keys`` over
``https``; plain ``http`` only to a loopback host (127.0.0.0/8, ::1, ``localhost``),
where nobody between could swap the keys, and redirects are held to the same rule.

Used by ``handover verify``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from isal import isal_zlib

from jobs.archive.receipt import verify_receipt
from jobs.archive.signing import SignatureError, jwk_public_key, refuse_repeated_keys, verify
from jobs.archive.writer import FORMAT, MANIFEST, SIGNATURE
from jobs.archive.zipwriter import unsafe_name
from jobs.breach_report import FORMAT as REPORT_FORMAT
from jobs.breach_report import verify_report

READ_CHUNK = 1 << 20


@dataclass
class Verification:
    """The outcome: ``problems`` is empty when the archive or receipt is intact and authentic."""

    files: int = 0
    key_id: str | None = None
    problems: list[str] = field(default_factory=list)
    receipt: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    """A breach report's content, when the file checked is one."""
    crc32: str | None = None
    """The archive file's CRC-32 (8 hex digits), to compare with its job's ``result.crc32``."""

    @property
    def ok(self) -> bool:
        """Nothing wrong was found."""
        return not self.problems

    @property
    def summary(self) -> str:
        """What an intact archive was checked against, in one line."""
        return (
            f"{self.files} files match the manifest, signed by key {self.key_id} (each "
            f"file's SHA-256); the archive's CRC-32 is {self.crc32}, as its job's "
            "result.crc32 should be"
        )


def parse_keys(data: bytes, source: str) -> list[Ed25519PublicKey]:
    """Public keys from a PEM file, one JWK, or a JWK set (``{"keys": [...]}``)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"{source}: not an Ed25519 public key")
        return [key]
    try:
        document: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SignatureError(f"{source}: neither PEM nor JSON ({exc})") from None
    entries = (
        document.get("keys") if isinstance(document, dict) and "keys" in document else [document]
    )
    if not isinstance(entries, list) or not entries:
        raise SignatureError(f"{source}: holds no keys")
    return [jwk_public_key(entry) for entry in entries]


def load_keys(path: Path) -> list[Ed25519PublicKey]:
    """Public keys from a file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read key file {path}: {exc.strerror}") from None
    return parse_keys(data, str(path))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_keys_url(url: str) -> None:
    """Refuse a keys URL that anyone on the way could answer (see the module doc)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as exc:
        raise SignatureError(f"keys URL {url!r} is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "https" and host:
        return
    if scheme == "http" and _is_loopback(host):
        return
    if scheme == "http":
        raise SignatureError(
            f"keys URL {url!r}: plain http is accepted only to this machine "
            "(127.0.0.0/8, ::1, localhost); use https, or pin the key with --key FILE"
        )
    raise SignatureError(
        f"keys URL {url!r}: {'a URL with no scheme' if not scheme else repr(scheme)} "
        "is not accepted; use https (http only to this machine), or --key FILE"
    )


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL :func:`check_keys_url` accepts."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        try:
            check_keys_url(newurl)
        except SignatureError as exc:
            raise SignatureError(f"{req.full_url} redirected elsewhere: {exc}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_keys(url: str, timeout: float = 10.0) -> list[Ed25519PublicKey]:
    """Public keys from a service's ``/v1/keys``, over https (or http to this machine)."""
    check_keys_url(url)
    opener = urllib.request.build_opener(_CheckedRedirects())
    try:
        with opener.open(url, timeout=timeout) as response:
            data = response.read()
    except OSError as exc:
        raise SignatureError(f"cannot fetch keys from {url}: {exc}") from None
    return parse_keys(data, url)


def _shown(name: object) -> str:
    """A member name fit for a terminal: quoted and escaped if it holds control characters."""
    text = str(name)
    return text if text.isprintable() else repr(text)


def _digest(archive: zipfile.ZipFile, name: str) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with archive.open(name) as member:
        while chunk := member.read(READ_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _crc32(path: Path) -> str:
    crc = 0
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            crc = isal_zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def verify_archive(path: Path, keys: list[Ed25519PublicKey]) -> Verification:
    """Check the archive at ``path``; every problem found is listed, not just the first."""
    result = Verification()
    try:
        result.crc32 = _crc32(path)
    except OSError as exc:
        result.problems.append(f"cannot read: {exc.strerror or exc}")
        return result
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        result.problems.append(f"not a readable ZIP archive: {exc}")
        return result
    with archive:
        counted = Counter(archive.namelist())
        for name, count in counted.items():
            if count > 1:
                result.problems.append(
                    f"{_shown(name)}: the archive holds {count} members of this name; "
                    "a forged copy could be the one an unzip tool keeps"
                )
            problem = unsafe_name(name)
            if problem is not None:
                result.problems.append(
                    f"{_shown(name)}: unsafe member name ({problem}): it could be written "
                    "outside the folder the archive is extracted to"
                )
        names = set(counted)
        if MANIFEST not in names or SIGNATURE not in names:
            result.problems.append(f"{MANIFEST} or {SIGNATURE} is missing: not a Handover export")
            return result
        manifest_bytes = archive.read(MANIFEST)
        try:
            result.key_id = verify(manifest_bytes, archive.read(SIGNATURE), keys)
        except SignatureError as exc:
            result.problems.append(f"{SIGNATURE}: {exc}")
        try:
            manifest = orjson.loads(manifest_bytes)
            refuse_repeated_keys(manifest_bytes, MANIFEST)
            listed = manifest["files"]
            if manifest.get("format") != FORMAT:
                result.problems.append(f"{MANIFEST}: format is {manifest.get('format')!r}")
        except SignatureError as exc:
            result.problems.append(str(exc))
            return result
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            result.problems.append(f"{MANIFEST} is malformed: {exc}")
            return result
        for entry in listed:
            name = entry.get("path")
            if name not in names:
                result.problems.append(f"{_shown(name)}: listed in the manifest but missing")
                continue
            try:
                digest, size = _digest(archive, name)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                result.problems.append(f"{_shown(name)}: unreadable ({exc})")
                continue
            if digest != entry.get("sha256"):
                result.problems.append(f"{_shown(name)}: SHA-256 does not match the manifest")
            elif size != entry.get("bytes"):
                result.problems.append(f"{_shown(name)}: size {size} does not match the manifest")
            else:
                result.files += 1
        unlisted = names - {entry.get("path") for entry in listed} - {MANIFEST, SIGNATURE}
        for name in sorted(unlisted):
            result.problems.append(f"{_shown(name)}: in the archive but not in the manifest")
    return result


def verify_receipt_file(path: Path, keys: list[Ed25519PublicKey]) -> Verification:
    """Check the receipt at ``path``."""
    result = Verification()
    try:
        data = path.read_bytes()
    except OSError as exc:
        result.problems.append(f"cannot read: {exc.strerror}")
        return result
    try:
        result.key_id, result.receipt = verify_receipt(data, keys)
    except SignatureError as exc:
        result.problems.append(str(exc))
    return result


def _format_of(data: bytes) -> object:
    """The ``format`` a JSON document names, if it is an object that names one."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return document.get("format") if isinstance(document, dict) else None


def verify_report_file(path: Path, keys: list[Ed25519PublicKey]) -> Verification:
    """Check the breach report at ``path``."""
    result = Verification()
    try:
        result.key_id, result.report = verify_report(path.read_bytes(), keys)
    except OSError as exc:
        result.problems.append(f"cannot read: {exc.strerror}")
    except SignatureError as exc:
        result.problems.append(str(exc))
    return result


def verify_file(path: Path, keys: list[Ed25519PublicKey]) -> Verification:
    """Check an archive, a receipt or a breach report, whichever ``path`` holds."""
    if path.is_file() and not zipfile.is_zipfile(path) and path.read_bytes()[:1] == b"{":
        if _format_of(path.read_bytes()) == REPORT_FORMAT:
            return verify_report_file(path, keys)
        return verify_receipt_file(path, keys)
    return verify_archive(path, keys)
