"""A sans-I/O ZIP writer for members whose deflate stream is produced elsewhere.

Handover deflates each archive file once, in staging, while the connector's
records stream in; bundling only copies those bytes. So this writer never sees
uncompressed data: it is told each member's CRC-32 and sizes up front and returns
the header bytes to emit before the member's data, then the central directory.
Sizes are known before the data, so no data descriptors are needed; ZIP64
records appear exactly where a size, an offset or the entry count needs them.

Member names are checked here, whatever the caller: a name that an unzip tool could
write outside the directory it extracts to (zip-slip: a ``..`` segment, an absolute
path, a backslash, a NUL, a drive letter) is refused with :class:`ValueError`, never
renamed, as is a name used twice.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from datetime import datetime

DEFLATED = 8
STORED = 0
_UTF8_FLAG = 0x0800
_ENCRYPTED_FLAG = 0x0001
_MAX32 = 0xFFFFFFFF
_MAX16 = 0xFFFF
_UNIX_FILE_ATTRS = 0o100644 << 16
_MADE_BY = (3 << 8) | 45  # Unix, spec version 4.5


_DRIVE = re.compile(r"[A-Za-z]:")


def unsafe_name(name: str) -> str | None:
    """Why ``name`` must not be an archive member's name, or ``None`` when it may be."""
    if not name:
        return "it is empty"
    if "\x00" in name:
        return "it holds a NUL"
    if "\\" in name:
        return "it holds a backslash"
    if name.startswith("/"):
        return "it is an absolute path"
    if _DRIVE.match(name):
        return "it starts with a drive letter"
    if ".." in name.split("/"):
        return "it has a .. segment"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode"
    if len(encoded) > _MAX16:
        return "it is longer than 65535 bytes"
    return None


def _version_needed(zip64: bool, encrypted: bool) -> int:
    if encrypted:
        return 51  # AES encryption
    return 45 if zip64 else 20


@dataclass(frozen=True)
class Member:
    """What the central directory needs to know about one written member."""

    name: bytes
    crc32: int
    size: int
    compressed_size: int
    method: int
    offset: int
    zip64: bool
    extra: bytes = b""
    encrypted: bool = False


class ZipWriter:
    """Tracks offsets and builds headers; the caller writes the bytes in order.

    Usage::

        writer = ZipWriter(modified)
        out(writer.member_header(name, crc, size, csize))
        out(compressed bytes, exactly csize of them)
        ...
        out(writer.central_directory())
    """

    def __init__(self, modified: datetime, *, force_zip64: bool = False) -> None:
        if modified.year < 1980:
            raise ValueError("ZIP timestamps start in 1980")
        self._time = (modified.hour << 11) | (modified.minute << 5) | (modified.second // 2)
        self._date = ((modified.year - 1980) << 9) | (modified.month << 5) | modified.day
        self._force_zip64 = force_zip64
        self._members: list[Member] = []
        self._names: set[bytes] = set()
        self._offset = 0
        self._pending: int | None = None

    @property
    def offset(self) -> int:
        """Bytes emitted so far (headers plus the member data the caller promised)."""
        return self._offset

    def member_header(
        self,
        name: str,
        crc32: int,
        size: int,
        compressed_size: int,
        method: int = DEFLATED,
        *,
        extra: bytes = b"",
        encrypted: bool = False,
    ) -> bytes:
        """The local file header for a member; its ``compressed_size`` bytes follow it.

        ``extra`` is appended to the extra field (e.g. WinZip AES's), and
        ``encrypted`` sets the encryption flag; both repeat in the central directory.
        Raises :class:`ValueError` for a name used before or one :func:`unsafe_name` refuses.
        """
        problem = unsafe_name(name)
        if problem is not None:
            raise ValueError(f"bad archive member name {name!r}: {problem}")
        encoded = name.encode("utf-8")
        if encoded in self._names:
            raise ValueError(f"duplicate archive member {name!r}")
        self._names.add(encoded)
        zip64 = self._force_zip64 or size >= _MAX32 or compressed_size >= _MAX32
        fields = struct.pack("<HHQQ", 0x0001, 16, size, compressed_size) if zip64 else b""
        fields += extra
        flags = _UTF8_FLAG | (_ENCRYPTED_FLAG if encrypted else 0)
        header = struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            _version_needed(zip64, encrypted),
            flags,
            method,
            self._time,
            self._date,
            crc32,
            _MAX32 if zip64 else compressed_size,
            _MAX32 if zip64 else size,
            len(encoded),
            len(fields),
        )
        member = Member(
            encoded, crc32, size, compressed_size, method, self._offset, zip64, extra, encrypted
        )
        self._members.append(member)
        self._offset += len(header) + len(encoded) + len(fields) + compressed_size
        return header + encoded + fields

    def central_directory(self) -> bytes:
        """The central directory and end records; the last bytes of the archive."""
        start = self._offset
        records = [self._central_record(member) for member in self._members]
        directory = b"".join(records)
        size = len(directory)
        count = len(self._members)
        tail = b""
        if self._force_zip64 or count >= _MAX16 or size >= _MAX32 or start >= _MAX32:
            zip64_end_offset = start + size
            tail += struct.pack(
                "<IQHHIIQQQQ", 0x06064B50, 44, _MADE_BY, 45, 0, 0, count, count, size, start
            )
            tail += struct.pack("<IIQI", 0x07064B50, 0, zip64_end_offset, 1)
            tail += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, _MAX16, _MAX16, _MAX32, _MAX32, 0)
        else:
            tail += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size, start, 0)
        self._offset += size + len(tail)
        return directory + tail

    def _central_record(self, member: Member) -> bytes:
        big_size = self._force_zip64 or member.size >= _MAX32
        big_csize = self._force_zip64 or member.compressed_size >= _MAX32
        big_offset = self._force_zip64 or member.offset >= _MAX32
        values = []
        if big_size:
            values.append(member.size)
        if big_csize:
            values.append(member.compressed_size)
        if big_offset:
            values.append(member.offset)
        extra = (
            struct.pack(f"<HH{len(values)}Q", 0x0001, 8 * len(values), *values) if values else b""
        )
        extra += member.extra
        encrypted = member.encrypted
        header = struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            _MADE_BY,
            _version_needed(bool(values) or member.zip64, encrypted),
            _UTF8_FLAG | (_ENCRYPTED_FLAG if encrypted else 0),
            member.method,
            self._time,
            self._date,
            member.crc32,
            _MAX32 if big_csize else member.compressed_size,
            _MAX32 if big_size else member.size,
            len(member.name),
            len(extra),
            0,
            0,
            0,
            _UNIX_FILE_ATTRS,
            _MAX32 if big_offset else member.offset,
        )
        return header + member.name + extra
