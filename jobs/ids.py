"""Sortable job ids: ULIDs (48-bit millisecond time, 80 random bits, Crockford base32)."""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_PATTERN = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def new_ulid(now_ms: int | None = None) -> str:
    """A new ULID; ids made later sort after ids made earlier (to the millisecond)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return "".join(reversed(chars))


def is_ulid(text: str) -> bool:
    """Whether ``text`` has the shape of a ULID."""
    return ULID_PATTERN.fullmatch(text) is not None
