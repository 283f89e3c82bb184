"""Ed25519 signatures over archive manifests (and, later, erasure receipts).

A signature travels as a small JSON document beside what it signs::

    {"alg": "EdDSA", "crv": "Ed25519", "kid": "<key id>", "signature": "<base64url>"}

Public keys are published as JWKs (RFC 8037, ``kty: OKP``). The key id is the
first 16 hex digits of the SHA-256 of the raw public key, so anyone can recompute it.

Signed JSON is read strictly: an object that repeats a key is refused
(:func:`refuse_repeated_keys`), because JSON readers disagree on which copy counts
(RFC 8259 §4) and a checked document must read the same to every reader.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SignatureError(Exception):
    """A signature is malformed, made by an unknown key, or does not match."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's id: 16 hex digits of the SHA-256 of its raw bytes."""
    return hashlib.sha256(_raw(public_key)).hexdigest()[:16]


def public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The key as a JWK."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(_raw(public_key)),
        "kid": key_id(public_key),
        "alg": "EdDSA",
        "use": "sig",
    }


def jwk_public_key(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    """Inverse of :func:`public_jwk`; checks the kid matches the key."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(jwk.get("x"), str):
        raise SignatureError("not an Ed25519 JWK (kty OKP, crv Ed25519, x)")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(_unb64url(jwk["x"]))
    except ValueError as exc:
        raise SignatureError(f"bad Ed25519 public key: {exc}") from exc
    if "kid" in jwk and jwk["kid"] != key_id(public_key):
        raise SignatureError(f"JWK kid {jwk['kid']!r} does not match its key")
    return public_key


def refuse_repeated_keys(data: bytes, what: str) -> None:
    """Raise :class:`SignatureError` if a JSON object in ``data`` repeats a key.

    ``data`` must already have been parsed (with orjson); this only looks for repeats.
    """
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> None:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen:
                repeated.append(key)
            seen.add(key)

    try:
        json.loads(data, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:
        raise SignatureError(f"{what} is not JSON: {exc}") from None
    if repeated:
        keys = ", ".join(sorted(set(map(repr, repeated))))
        raise SignatureError(
            f"{what} repeats the key(s) {keys} within one object: "
            "readers disagree on which copy counts, so it is refused"
        )


class Signer:
    """Signs with one private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)
        self._keys: dict[bytes, bytes] = {}

    def _key(self, purpose: bytes) -> bytes:
        """The HMAC key for ``purpose``, derived from the private key once per process."""
        key = self._keys.get(purpose)
        if key is None:
            raw = self._private_key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            key = self._keys[purpose] = hmac.new(
                raw, b"handover " + purpose, hashlib.sha256
            ).digest()
        return key

    def sign(self, data: bytes) -> bytes:
        """The detached signature document for ``data``."""
        signature = self._private_key.sign(data)
        document = {
            "alg": "EdDSA",
            "crv": "Ed25519",
            "kid": self.key_id,
            "signature": _b64url(signature),
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"

    def pseudonym(self, subject: str) -> str:
        """A stable keyed hash of ``subject``, for logs and audit entries (no personal data).

        Keyed with a value derived from the private key, so it cannot be reversed by
        hashing guessed ids, and every process sharing the key agrees on it.
        """
        return (
            "s_"
            + hmac.new(self._key(b"pseudonym"), subject.encode(), hashlib.sha256).hexdigest()[:20]
        )

    def mac(self, purpose: bytes, data: bytes) -> str:
        """A keyed hash (HMAC-SHA-256, hex) of ``data`` for ``purpose``, keyed like
        :meth:`pseudonym`: every process sharing the key agrees, nobody else can make one."""
        return hmac.new(self._key(purpose), data, hashlib.sha256).hexdigest()

    @classmethod
    def from_file(cls, path: Path, *, create: bool) -> Signer:
        """Load the PEM private key at ``path``; with ``create``, make one if there is none."""
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            if not create:
                raise SignatureError(f"no signing key at {path}") from None
            return cls(_create_key_file(path))
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except ValueError as exc:
            raise SignatureError(f"{path} is not a PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)


def _create_key_file(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    try:
        os.link(temporary, path)  # fails if another process made one meanwhile
    except FileExistsError:
        temporary.unlink()
        return Signer.from_file(path, create=False)._private_key
    temporary.unlink()
    return key


def verify(data: bytes, signature_document: bytes, keys: Iterable[Ed25519PublicKey]) -> str:
    """Check ``signature_document`` over ``data`` with one of ``keys``; returns the key id."""
    try:
        document = orjson.loads(signature_document)
        kid = document["kid"]
        signature = _unb64url(document["signature"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"malformed signature document: {exc}") from exc
    refuse_repeated_keys(signature_document, "the signature document")
    if document.get("alg") != "EdDSA":
        raise SignatureError(f"unsupported signature algorithm {document.get('alg')!r}")
    by_id = {key_id(key): key for key in keys}
    public_key = by_id.get(kid)
    if public_key is None:
        raise SignatureError(f"signed by key {kid!r}, which is not among the trusted keys")
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        raise SignatureError(f"signature by key {kid!r} does not match the signed bytes") from None
    return str(kid)
