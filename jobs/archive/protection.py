"""End-to-end protection of an export archive, chosen per request.

- ``password``: every member is encrypted with AES-256 in WinZip's AE-2 format
  (PBKDF2-HMAC-SHA1 key derivation, AES-CTR, HMAC-SHA1 authentication), which
  7-Zip, WinZip, macOS's Archive Utility and pyzipper read.
- ``age``: the whole archive is encrypted to the recipient's age X25519 public key
  (age-encryption.org/v1: X25519 + HKDF-SHA256 key wrap, ChaCha20-Poly1305 STREAM
  in 64 KiB chunks), read by the ``age`` CLI, rage and pyrage.

Both stream: nothing is held whole. Object storage's own server-side encryption
(``HANDOVER_S3_SSE``) applies on top, to every stored object.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jobs.storage.base import ObjectWriter


class ProtectionError(ValueError):
    """A password or recipient that cannot protect an archive."""


# --- WinZip AE-2 ---------------------------------------------------------------

AES_SALT = 16
AES_OVERHEAD = AES_SALT + 2 + 10  # salt, password verifier, authentication code
AES_EXTRA_ID = 0x9901
AES_METHOD = 99


def aes_extra(compression_method: int) -> bytes:
    """The AE-2 extra field: vendor version 2, vendor "AE", AES-256, the real method."""
    return struct.pack("<HHH2sBH", AES_EXTRA_ID, 7, 2, b"AE", 3, compression_method)


class ZipMemberCipher:
    """Encrypts one member's (already deflated) bytes, streaming."""

    def __init__(self, password: str) -> None:
        self.salt = os.urandom(AES_SALT)
        keys = hashlib.pbkdf2_hmac("sha1", password.encode("utf-8"), self.salt, 1000, 66)
        self._aes = Cipher(algorithms.AES(keys[:32]), modes.ECB()).encryptor()
        self._mac = hmac.new(keys[32:64], digestmod=hashlib.sha1)
        self.verifier = keys[64:66]
        self._counter = 1
        self._spare = b""

    def start(self) -> bytes:
        """Bytes before the encrypted data: salt and password verifier."""
        return self.salt + self.verifier

    def encrypt(self, data: bytes) -> bytes:
        """Encrypt the next piece (CTR with WinZip's little-endian counter)."""
        if not data:
            return b""
        stream = self._spare
        needed = len(data) - len(stream)
        if needed > 0:
            blocks = (needed + 15) // 16
            counters = b"".join((self._counter + i).to_bytes(16, "little") for i in range(blocks))
            self._counter += blocks
            stream += self._aes.update(counters)
        keystream, self._spare = stream[: len(data)], stream[len(data) :]
        encrypted = (int.from_bytes(data, "big") ^ int.from_bytes(keystream, "big")).to_bytes(
            len(data), "big"
        )
        self._mac.update(encrypted)
        return encrypted

    def finish(self) -> bytes:
        """The authentication code that ends the member."""
        return self._mac.digest()[:10]


# --- age -------------------------------------------------------------------------

AGE_CHUNK = 64 * 1024
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _bech32_decode(text: str) -> tuple[str, bytes]:
    lowered = text.lower()
    if lowered != text and text.upper() != text:
        raise ProtectionError("mixed-case bech32 string")
    separator = lowered.rfind("1")
    if separator < 1 or separator + 7 > len(lowered):
        raise ProtectionError("not a bech32 string")
    hrp, data_part = lowered[:separator], lowered[separator + 1 :]
    try:
        values = [_BECH32.index(c) for c in data_part]
    except ValueError:
        raise ProtectionError("invalid bech32 character") from None
    generator = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    checksum = 1
    for value in [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + values:
        top = checksum >> 25
        checksum = ((checksum & 0x1FFFFFF) << 5) ^ value
        for bit in range(5):
            checksum ^= generator[bit] if (top >> bit) & 1 else 0
    if checksum != 1:
        raise ProtectionError("bech32 checksum mismatch")
    accumulator = bits = 0
    out = bytearray()
    for value in values[:-6]:
        accumulator = (accumulator << 5) | value
        bits += 5
        while bits >= 8:
            bits -= 8
            out.append((accumulator >> bits) & 0xFF)
    return hrp, bytes(out)


def age_recipient(text: str) -> X25519PublicKey:
    """Parse an ``age1…`` X25519 recipient."""
    hrp, key = _bech32_decode(text.strip())
    if hrp != "age" or len(key) != 32:
        raise ProtectionError("an age recipient looks like age1… (an X25519 public key)")
    return X25519PublicKey.from_public_bytes(key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def age_header(recipient: X25519PublicKey, file_key: bytes) -> bytes:
    """The age header that wraps ``file_key`` for ``recipient``."""
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    theirs = recipient.public_bytes_raw()
    wrap_key = _hkdf(ephemeral.exchange(recipient), share + theirs, b"age-encryption.org/v1/X25519")
    body = ChaCha20Poly1305(wrap_key).encrypt(b"\x00" * 12, file_key, None)
    header = f"age-encryption.org/v1\n-> X25519 {_b64(share)}\n{_b64(body)}\n---".encode()
    mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    return header + f" {_b64(mac)}\n".encode()


class AgeWriter:
    """An :class:`~jobs.storage.base.ObjectWriter` that age-encrypts what it is given."""

    def __init__(self, target: ObjectWriter, recipient: X25519PublicKey) -> None:
        self._target = target
        file_key = os.urandom(16)
        nonce = os.urandom(16)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._prelude = age_header(recipient, file_key) + nonce
        self._buffer = bytearray()
        self._counter = 0

    def _seal(self, chunk: bytes, last: bool) -> bytes:
        nonce = self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self._counter += 1
        return self._aead.encrypt(nonce, chunk, None)

    async def write(self, data: bytes) -> None:
        if self._prelude:
            await self._target.write(self._prelude)
            self._prelude = b""
        self._buffer += data
        # Keep at least one byte back: the last chunk must be sealed as last.
        while len(self._buffer) > AGE_CHUNK:
            chunk = bytes(self._buffer[:AGE_CHUNK])
            del self._buffer[:AGE_CHUNK]
            await self._target.write(self._seal(chunk, last=False))

    async def complete(self) -> int:
        if self._prelude:
            await self._target.write(self._prelude)
            self._prelude = b""
        await self._target.write(self._seal(bytes(self._buffer), last=True))
        self._buffer.clear()
        return await self._target.complete()

    async def abort(self) -> None:
        await self._target.abort()
