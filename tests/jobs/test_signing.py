"""Ed25519 signatures over manifests: sign, verify, JWKs and the key file."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobs.archive.signing import SignatureError, Signer, jwk_public_key, key_id, public_jwk, verify

MANIFEST = b'{"job": "01HZZ", "files": [{"path": "crm/contacts.json", "sha256": "ab"}]}\n'


@pytest.fixture
def signer_factory() -> Callable[[], Signer]:
    """A signer over a freshly generated key."""
    return lambda: Signer(Ed25519PrivateKey.generate())


@pytest.fixture
def signer(signer_factory: Callable[[], Signer]) -> Signer:
    return signer_factory()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def with_signature_byte_flipped(document: bytes, index: int) -> bytes:
    fields = orjson.loads(document)
    raw = bytearray(base64.urlsafe_b64decode(fields["signature"] + "=="))
    raw[index] ^= 0x01
    fields["signature"] = b64url(bytes(raw))
    return orjson.dumps(fields)


def test_round_trip_returns_the_key_id(signer: Signer) -> None:
    document = signer.sign(MANIFEST)

    assert verify(MANIFEST, document, [signer.public_key]) == signer.key_id


def test_signature_document_names_algorithm_and_key(signer: Signer) -> None:
    fields = orjson.loads(signer.sign(MANIFEST))

    assert fields["alg"] == "EdDSA"
    assert fields["crv"] == "Ed25519"
    assert fields["kid"] == signer.key_id
    assert len(base64.urlsafe_b64decode(fields["signature"] + "==")) == 64


def test_key_id_is_recomputable_from_the_raw_key(signer: Signer) -> None:
    raw = signer.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert signer.key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert key_id(signer.public_key) == signer.key_id


def test_verify_picks_the_signing_key_among_several(
    signer: Signer, signer_factory: Callable[[], Signer]
) -> None:
    others = [signer_factory().public_key for _ in range(3)]
    document = signer.sign(MANIFEST)

    assert verify(MANIFEST, document, [*others, signer.public_key]) == signer.key_id


@pytest.mark.parametrize("index", [0, 1, len(MANIFEST) // 2, len(MANIFEST) - 1])
def test_flipped_data_byte_fails(signer: Signer, index: int) -> None:
    document = signer.sign(MANIFEST)
    tampered = bytearray(MANIFEST)
    tampered[index] ^= 0x01

    with pytest.raises(SignatureError, match="does not match"):
        verify(bytes(tampered), document, [signer.public_key])


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_flipped_signature_byte_fails(signer: Signer, index: int) -> None:
    document = with_signature_byte_flipped(signer.sign(MANIFEST), index)

    with pytest.raises(SignatureError, match="does not match"):
        verify(MANIFEST, document, [signer.public_key])


def test_unknown_key_fails(signer: Signer, signer_factory: Callable[[], Signer]) -> None:
    document = signer.sign(MANIFEST)

    with pytest.raises(SignatureError, match=f"signed by key '{signer.key_id}'"):
        verify(MANIFEST, document, [signer_factory().public_key])


def test_same_kid_in_a_forged_document_fails(
    signer: Signer, signer_factory: Callable[[], Signer]
) -> None:
    forged = orjson.loads(signer_factory().sign(MANIFEST))
    forged["kid"] = signer.key_id

    with pytest.raises(SignatureError, match="does not match"):
        verify(MANIFEST, orjson.dumps(forged), [signer.public_key])


@pytest.mark.parametrize(
    "document",
    [b"not json", b"{}", b'{"kid": "x"}', b'{"kid": "x", "signature": 5}', b"[1]"],
)
def test_malformed_document_fails(signer: Signer, document: bytes) -> None:
    with pytest.raises(SignatureError, match="malformed"):
        verify(MANIFEST, document, [signer.public_key])


def test_other_algorithm_fails(signer: Signer) -> None:
    fields = orjson.loads(signer.sign(MANIFEST))
    fields["alg"] = "HS256"

    with pytest.raises(SignatureError, match="unsupported signature algorithm 'HS256'"):
        verify(MANIFEST, orjson.dumps(fields), [signer.public_key])


def test_jwk_round_trip(signer: Signer) -> None:
    jwk = public_jwk(signer.public_key)

    assert jwk["kty"] == "OKP"
    assert jwk["crv"] == "Ed25519"
    assert jwk["kid"] == signer.key_id
    restored = jwk_public_key(orjson.loads(orjson.dumps(jwk)))
    assert key_id(restored) == signer.key_id
    assert verify(MANIFEST, signer.sign(MANIFEST), [restored]) == signer.key_id


def test_jwk_without_kid_is_accepted(signer: Signer) -> None:
    jwk = public_jwk(signer.public_key)
    del jwk["kid"]

    assert key_id(jwk_public_key(jwk)) == signer.key_id


def test_jwk_kid_mismatch_is_detected(signer: Signer, signer_factory: Callable[[], Signer]) -> None:
    jwk = public_jwk(signer.public_key)
    jwk["kid"] = signer_factory().key_id

    with pytest.raises(SignatureError, match="does not match its key"):
        jwk_public_key(jwk)


@pytest.mark.parametrize(
    "change",
    [
        {"kty": "EC"},
        {"crv": "X25519"},
        {"x": None},
        {"x": b64url(b"\x01" * 31)},
    ],
)
def test_bad_jwk_is_refused(signer: Signer, change: dict[str, object]) -> None:
    jwk: dict[str, object] = {**public_jwk(signer.public_key), **change}
    jwk.pop("kid")

    with pytest.raises(SignatureError):
        jwk_public_key(jwk)


def test_key_file_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.pem"

    created = Signer.from_file(path, create=True)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert sorted(p.name for p in path.parent.iterdir()) == ["signing.pem"]
    reloaded = Signer.from_file(path, create=True)
    assert reloaded.key_id == created.key_id
    assert Signer.from_file(path, create=False).key_id == created.key_id
    assert verify(MANIFEST, created.sign(MANIFEST), [reloaded.public_key]) == created.key_id


def test_missing_key_file_without_create_fails(tmp_path: Path) -> None:
    path = tmp_path / "missing.pem"

    with pytest.raises(SignatureError, match="no signing key"):
        Signer.from_file(path, create=False)

    assert not path.exists()


def test_key_file_made_meanwhile_by_another_process_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "signing.pem"
    their_key = Ed25519PrivateKey.generate()
    pem = their_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    real_link = os.link

    def link_after_the_other_process(source: Path, target: Path) -> None:
        Path(target).write_bytes(pem)
        real_link(source, target)

    monkeypatch.setattr(os, "link", link_after_the_other_process)

    ours = Signer.from_file(path, create=True)

    assert ours.key_id == key_id(their_key.public_key())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.pem"]


def test_non_ed25519_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    with pytest.raises(SignatureError, match="not an Ed25519 key"):
        Signer.from_file(path, create=True)


def test_garbage_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pem"
    path.write_text("hello\n")

    with pytest.raises(SignatureError, match="not a PEM private key"):
        Signer.from_file(path, create=True)


def test_repr_shows_only_the_key_id(signer: Signer) -> None:
    assert repr(signer) == f"Signer(key_id={signer.key_id!r})"


def test_a_signature_document_that_repeats_a_key_fails(signer: Signer) -> None:
    document = signer.sign(MANIFEST)
    assert document.startswith(b"{\n")
    repeated = b'{\n  "kid": "0000000000000000",\n' + document[2:]
    assert orjson.loads(repeated) == orjson.loads(document)  # a last-wins reader sees no change

    with pytest.raises(SignatureError, match=r"repeats the key\(s\) 'kid' within one object"):
        verify(MANIFEST, repeated, [signer.public_key])
