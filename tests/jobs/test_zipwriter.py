"""The sans-I/O ZIP writer: archives read back by ``zipfile`` and ``unzip``, ZIP64 by struct."""

from __future__ import annotations

import io
import random
import shutil
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobs.archive.zipwriter import DEFLATED, STORED, ZipWriter

MODIFIED = datetime(2024, 5, 17, 13, 45, 59, tzinfo=UTC)
MAX32 = 0xFFFFFFFF
MAX16 = 0xFFFF

LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
CENTRAL_RECORD = struct.Struct("<IHHHHHHIIIHHHHHII")
END_RECORD = struct.Struct("<IHHHHIIH")
ZIP64_END_RECORD = struct.Struct("<IQHHIIQQQQ")
ZIP64_LOCATOR = struct.Struct("<IIQI")

LOCAL_SIGNATURE = 0x04034B50
CENTRAL_SIGNATURE = 0x02014B50
END_SIGNATURE = 0x06054B50
ZIP64_END_SIGNATURE = 0x06064B50
ZIP64_LOCATOR_SIGNATURE = 0x07064B50


@dataclass(frozen=True)
class Entry:
    """One member to write: its name, its uncompressed bytes and how to store them."""

    name: str
    data: bytes
    method: int = DEFLATED


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def encoded(entry: Entry) -> bytes:
    return raw_deflate(entry.data) if entry.method == DEFLATED else entry.data


ENTRIES = (
    Entry("manifest.json", b'{"format": 1, "files": []}\n' * 40),
    Entry("crm/contacts.csv", b"id,email\r\n1,alice@example.com\r\n2,bob@example.com\r\n"),
    Entry("crm/files/photos/me.png", random.Random(7).randbytes(70_000)),
    Entry("empty.ndjson", b""),
    Entry("stored.txt", b"kept as is, not deflated\n", STORED),
    Entry("données/résumé.json", '["é", "ü", "日本"]\n'.encode()),
)


@pytest.fixture
def build_archive() -> Callable[..., bytes]:
    """Writes ``entries`` through a :class:`ZipWriter` the way the bundler does."""

    def build(entries: Sequence[Entry] = ENTRIES, *, force_zip64: bool = False) -> bytes:
        writer = ZipWriter(MODIFIED, force_zip64=force_zip64)
        out = bytearray()
        for entry in entries:
            body = encoded(entry)
            out += writer.member_header(
                entry.name, zlib.crc32(entry.data), len(entry.data), len(body), entry.method
            )
            out += body
        out += writer.central_directory()
        return bytes(out)

    return build


def assert_unzip_accepts(path: Path) -> None:
    """Info-ZIP's ``unzip -t`` finds no error, when the tool is installed."""
    unzip = shutil.which("unzip")
    if unzip is None:
        return
    result = subprocess.run([unzip, "-t", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No errors detected" in result.stdout


def extra_fields(extra: bytes) -> dict[int, bytes]:
    """An extra field block as ``{header id: data}``."""
    fields: dict[int, bytes] = {}
    position = 0
    while position < len(extra):
        header_id, size = struct.unpack_from("<HH", extra, position)
        fields[header_id] = extra[position + 4 : position + 4 + size]
        position += 4 + size
    assert position == len(extra)
    return fields


def central_records(directory: bytes, count: int) -> list[tuple[tuple[int, ...], bytes, bytes]]:
    """The first ``count`` central directory records: (fixed fields, name, extra)."""
    records = []
    position = 0
    for _ in range(count):
        fixed = CENTRAL_RECORD.unpack_from(directory, position)
        assert fixed[0] == CENTRAL_SIGNATURE
        name_length, extra_length = fixed[10], fixed[11]
        start = position + CENTRAL_RECORD.size
        name = directory[start : start + name_length]
        extra = directory[start + name_length : start + name_length + extra_length]
        records.append((fixed, name, extra))
        position = start + name_length + extra_length
    return records


class SparseFile(io.RawIOBase):
    """A read-only file of ``size`` bytes: the given pieces at their offsets, zeros elsewhere."""

    def __init__(self, pieces: dict[int, bytes], size: int) -> None:
        self._pieces = pieces
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = base + offset
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = max(0, min(len(buffer), self._size - self._position))
        view = memoryview(buffer).cast("B")[:count]
        view[:] = bytes(count)
        end = self._position + count
        for start, data in self._pieces.items():
            low, high = max(start, self._position), min(start + len(data), end)
            if low < high:
                view[low - self._position : high - self._position] = data[
                    low - start : high - start
                ]
        self._position = end
        return count


@pytest.mark.parametrize("force_zip64", [False, True])
def test_zipfile_reads_back_every_member(
    build_archive: Callable[..., bytes], force_zip64: bool
) -> None:
    archive = zipfile.ZipFile(io.BytesIO(build_archive(force_zip64=force_zip64)))

    assert archive.testzip() is None
    assert archive.namelist() == [entry.name for entry in ENTRIES]
    for entry, info in zip(ENTRIES, archive.infolist(), strict=True):
        assert info.file_size == len(entry.data)
        assert info.compress_size == len(encoded(entry))
        assert info.compress_type == entry.method
        assert zlib.crc32(entry.data) == info.CRC
        assert archive.read(entry.name) == entry.data


@pytest.mark.parametrize("force_zip64", [False, True])
def test_unzip_tool_finds_no_error(
    build_archive: Callable[..., bytes], tmp_path: Path, force_zip64: bool
) -> None:
    path = tmp_path / "archive.zip"
    path.write_bytes(build_archive(force_zip64=force_zip64))

    assert_unzip_accepts(path)
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None


def test_member_metadata_is_utf8_unix_and_dos_time(build_archive: Callable[..., bytes]) -> None:
    archive = zipfile.ZipFile(io.BytesIO(build_archive()))

    for info in archive.infolist():
        assert info.flag_bits & 0x0800, "names are flagged as UTF-8"
        assert info.create_system == 3
        assert info.external_attr >> 16 == 0o100644
        # DOS time keeps even seconds only.
        assert info.date_time == (2024, 5, 17, 13, 45, 58)
    assert archive.getinfo("données/résumé.json").filename == "données/résumé.json"


def test_small_archive_has_no_zip64_records(build_archive: Callable[..., bytes]) -> None:
    data = build_archive()

    assert struct.pack("<I", ZIP64_END_SIGNATURE) not in data
    assert struct.pack("<I", ZIP64_LOCATOR_SIGNATURE) not in data
    signature, _, _, on_disk, total, _, _, comment = END_RECORD.unpack(data[-END_RECORD.size :])
    assert (signature, on_disk, total, comment) == (END_SIGNATURE, len(ENTRIES), len(ENTRIES), 0)
    assert LOCAL_HEADER.unpack_from(data)[1] == 20


def test_forced_zip64_puts_sizes_in_extra_fields(build_archive: Callable[..., bytes]) -> None:
    entry = ENTRIES[0]
    data = build_archive([entry], force_zip64=True)

    fixed = LOCAL_HEADER.unpack_from(data)
    signature, version, _, _, _, _, _, csize, size, name_length, extra_length = fixed
    assert (signature, version, csize, size) == (LOCAL_SIGNATURE, 45, MAX32, MAX32)
    start = LOCAL_HEADER.size + name_length
    fields = extra_fields(data[start : start + extra_length])
    assert struct.unpack("<QQ", fields[0x0001]) == (len(entry.data), len(encoded(entry)))

    tail = data[-(ZIP64_END_RECORD.size + ZIP64_LOCATOR.size + END_RECORD.size) :]
    zip64_end = ZIP64_END_RECORD.unpack_from(tail)
    assert zip64_end[0] == ZIP64_END_SIGNATURE
    assert zip64_end[6:8] == (1, 1)
    assert zipfile.ZipFile(io.BytesIO(data)).read(entry.name) == entry.data


def test_offset_counts_every_byte_emitted() -> None:
    writer = ZipWriter(MODIFIED)
    emitted = 0
    assert writer.offset == 0
    for entry in ENTRIES:
        body = encoded(entry)
        header = writer.member_header(
            entry.name, zlib.crc32(entry.data), len(entry.data), len(body), entry.method
        )
        emitted += len(header) + len(body)
        assert writer.offset == emitted
    emitted += len(writer.central_directory())
    assert writer.offset == emitted


def test_empty_archive_is_valid(tmp_path: Path) -> None:
    writer = ZipWriter(MODIFIED)
    path = tmp_path / "empty.zip"
    path.write_bytes(writer.central_directory())

    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == []
        assert archive.testzip() is None


def test_duplicate_name_is_refused_and_writes_nothing() -> None:
    writer = ZipWriter(MODIFIED)
    writer.member_header("a.json", 0, 0, 2)
    offset = writer.offset

    with pytest.raises(ValueError, match="duplicate archive member 'a.json'"):
        writer.member_header("a.json", 0, 0, 2)

    assert writer.offset == offset
    directory = writer.central_directory()
    assert len(central_records(directory, 1)) == 1
    assert END_RECORD.unpack(directory[-END_RECORD.size :])[4] == 1


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "/",
        "x" * (MAX16 + 1),
        "../../../../x.json",
        "crm/../../x.json",
        "crm/..",
        "..",
        "crm\\..\\..\\x.json",
        "crm/a\\b.json",
        "crm/x.json\x00.png",
        "C:/Windows/x.json",
        "c:x.json",
        "crm/\udcff.json",
    ],
)
def test_bad_name_is_refused(name: str) -> None:
    writer = ZipWriter(MODIFIED)

    with pytest.raises(ValueError, match="bad archive member name"):
        writer.member_header(name, 0, 0, 2)

    assert writer.offset == 0


@pytest.mark.parametrize(
    "name", ["crm/..x/y.json", "crm/x..json", "crm/files/.hidden", "crm/files/a:b.png", "..."]
)
def test_names_that_only_look_odd_are_written(name: str, tmp_path: Path) -> None:
    writer = ZipWriter(MODIFIED)
    body = writer.member_header(name, zlib.crc32(b""), 0, 0, STORED)
    path = tmp_path / "odd.zip"
    path.write_bytes(body + writer.central_directory())

    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == [name]


def test_timestamp_before_1980_is_refused() -> None:
    with pytest.raises(ValueError, match="1980"):
        ZipWriter(datetime(1979, 12, 31, 23, 59, 59))


def test_member_over_4_gib_gets_zip64_fields() -> None:
    huge = 5 * 2**30
    writer = ZipWriter(MODIFIED)
    huge_header = writer.member_header("big.bin", 0x12345678, huge, huge + 7)

    fixed = LOCAL_HEADER.unpack_from(huge_header)
    _, version, _, method, _, _, crc, csize, size, name_length, extra_length = fixed
    assert (version, method, crc, csize, size) == (45, DEFLATED, 0x12345678, MAX32, MAX32)
    assert huge_header[LOCAL_HEADER.size : LOCAL_HEADER.size + name_length] == b"big.bin"
    extra = huge_header[LOCAL_HEADER.size + name_length :]
    assert len(extra) == extra_length
    assert struct.unpack("<QQ", extra_fields(extra)[0x0001]) == (huge, huge + 7)
    assert writer.offset == len(huge_header) + huge + 7

    small = Entry("small.txt", b"after the big one\n")
    small_body = encoded(small)
    small_offset = writer.offset
    small_header = writer.member_header(
        small.name, zlib.crc32(small.data), len(small.data), len(small_body)
    )
    small_fixed = LOCAL_HEADER.unpack_from(small_header)
    assert small_fixed[1] == 20, "a small member needs no ZIP64 local header"
    assert small_fixed[7:9] == (len(small_body), len(small.data))
    assert small_fixed[10] == 0

    # The offset already counts the small member's data, which the caller emits next.
    directory_start = writer.offset
    assert directory_start == small_offset + len(small_header) + len(small_body)
    tail = writer.central_directory()
    big_record, small_record = central_records(tail, 2)

    big_fixed, big_name, big_extra = big_record
    assert big_name == b"big.bin"
    assert big_fixed[2] == 45
    assert big_fixed[8:10] == (MAX32, MAX32)
    assert big_fixed[16] == 0, "the first member's offset still fits in 32 bits"
    assert struct.unpack("<QQ", extra_fields(big_extra)[0x0001]) == (huge, huge + 7)

    small_fixed_central, small_name, small_extra = small_record
    assert small_name == b"small.txt"
    assert small_fixed_central[8:10] == (len(small_body), len(small.data))
    assert small_fixed_central[16] == MAX32
    assert struct.unpack("<Q", extra_fields(small_extra)[0x0001]) == (small_offset,)

    directory_size = sum(
        CENTRAL_RECORD.size + len(name) + len(extra)
        for _, name, extra in (big_record, small_record)
    )
    rest = tail[directory_size:]
    zip64_end = ZIP64_END_RECORD.unpack_from(rest)
    assert zip64_end[0] == ZIP64_END_SIGNATURE
    assert zip64_end[1] == ZIP64_END_RECORD.size - 12
    assert zip64_end[6:] == (2, 2, directory_size, directory_start)
    locator = ZIP64_LOCATOR.unpack_from(rest, ZIP64_END_RECORD.size)
    assert locator == (ZIP64_LOCATOR_SIGNATURE, 0, directory_start + directory_size, 1)
    end = END_RECORD.unpack_from(rest, ZIP64_END_RECORD.size + ZIP64_LOCATOR.size)
    assert end == (END_SIGNATURE, 0, 0, MAX16, MAX16, MAX32, MAX32, 0)
    assert len(rest) == ZIP64_END_RECORD.size + ZIP64_LOCATOR.size + END_RECORD.size


def test_zipfile_reads_the_directory_of_an_archive_over_4_gib() -> None:
    huge = 5 * 2**30
    writer = ZipWriter(MODIFIED)
    pieces = {0: writer.member_header("big.bin", 0, huge, huge)}
    small = Entry("small.txt", b"readable past the 4 GiB mark\n")
    small_body = encoded(small)
    small_offset = writer.offset
    pieces[small_offset] = (
        writer.member_header(small.name, zlib.crc32(small.data), len(small.data), len(small_body))
        + small_body
    )
    # The writer counted the small member's data already; the directory follows it.
    directory_start = writer.offset
    pieces[directory_start] = writer.central_directory()

    archive = zipfile.ZipFile(SparseFile(pieces, writer.offset))

    big_info, small_info = archive.infolist()
    assert (big_info.file_size, big_info.compress_size, big_info.header_offset) == (huge, huge, 0)
    assert small_info.header_offset == small_offset
    assert archive.read("small.txt") == small.data


def test_more_than_65535_entries_use_the_zip64_end_record(tmp_path: Path) -> None:
    count = MAX16 + 1
    writer = ZipWriter(MODIFIED)
    path = tmp_path / "many.zip"
    with path.open("wb") as out:
        for index in range(count):
            out.write(writer.member_header(f"{index:05d}", 0, 0, 0, STORED))
        out.write(writer.central_directory())
    data = path.read_bytes()

    end = END_RECORD.unpack(data[-END_RECORD.size :])
    assert end[3:5] == (MAX16, MAX16)
    zip64_end = ZIP64_END_RECORD.unpack_from(
        data, len(data) - END_RECORD.size - ZIP64_LOCATOR.size - ZIP64_END_RECORD.size
    )
    assert zip64_end[0] == ZIP64_END_SIGNATURE
    assert zip64_end[6:8] == (count, count)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert len(names) == count
        assert names[0] == "00000"
        assert names[-1] == f"{count - 1:05d}"
        assert archive.read(names[-1]) == b""
    assert_unzip_accepts(path)
