"""S3 object storage through botocore (AWS, MinIO, moto), run in worker threads.

Writes stream through :class:`S3MultipartWriter`: S3 multipart with a bounded number
of parts in flight, aborted on failure, so nothing is ever held whole in memory.
:class:`S3Store`'s :class:`S3Assembler` also appends ranges of objects already in the
bucket, which S3 copies itself (``UploadPartCopy``), and reports the full-object CRC-32
S3 computed. :class:`S3PlainStore` is the same store without it, for an S3-compatible
store that has no ``UploadPartCopy`` or full-object CRC-32
(``HANDOVER_S3_SERVER_SIDE_COPY=false``): every byte of its objects is written by
Handover.
botocore's errors leave as :class:`~jobs.storage.base.StorageError`, classified transient
or permanent in :func:`_error` (or :class:`~jobs.storage.base.ObjectMissing` for a key
that holds nothing). The clients are built on botocore's data cut to :data:`OPERATIONS`
(:mod:`jobs.storage.s3model`), about 12 MB less per process, when the installed botocore's
cut is there; on botocore's full data otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    InvalidRegionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from jobs.storage import s3model
from jobs.storage.base import (
    READ_CHUNK,
    ObjectAssembler,
    ObjectMissing,
    ObjectShort,
    ObjectWriter,
    StorageError,
    StoredObject,
    content_type_of,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef


#: S3's smallest part (the last part of an upload may be smaller).
MIN_PART = 5 * 2**20
#: S3's largest part.
MAX_PART = 5 * 2**30
#: S3's largest number of parts in one upload.
MAX_PARTS = 10_000
#: Written parts keep one size for this many parts; the next ones are twice as large.
PARTS_PER_SIZE = 500
#: The most one copied part holds (S3 allows 5 GiB); larger ranges are split.
COPY_PART = 256 * 2**20
#: The most keys one ``DeleteObjects`` request names.
DELETE_BATCH = 1000
#: Copied parts in flight at once: each is one request, and holds no memory here.
COPIES_IN_FLIGHT = 4

#: Every S3 operation the store's clients call, presigned and paginated ones included:
#: their S3 model is cut to these (:mod:`jobs.storage.s3model`), and a client has no
#: method for any other. ``CreateSession`` is botocore's own call for a directory bucket.
OPERATIONS = (
    "AbortMultipartUpload",
    "CompleteMultipartUpload",
    "CreateMultipartUpload",
    "CreateSession",
    "DeleteObject",
    "DeleteObjects",
    "GetBucketLifecycleConfiguration",
    "GetObject",
    "HeadBucket",
    "HeadObject",
    "ListObjectsV2",
    "PutBucketLifecycleConfiguration",
    "PutObject",
    "UploadPart",
    "UploadPartCopy",
)

#: S3 error codes that may pass on their own (throttling, timeouts, an upload S3 forgot).
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "NoSuchUpload",
    }
)
#: botocore's errors that say the client is misconfigured: asking again cannot help.
MISCONFIGURED = (
    NoCredentialsError,
    PartialCredentialsError,
    NoRegionError,
    ParamValidationError,
    InvalidRegionError,
)


def written_part_size(first: int, number: int) -> int:
    """The size of written part ``number`` (from 1) of an upload whose first part is
    ``first`` bytes: doubled every :data:`PARTS_PER_SIZE` parts, up to :data:`MAX_PART`.

    So an upload holds two parts of ``first`` bytes in memory up to
    ``first`` × :data:`PARTS_PER_SIZE` (2.4 GiB from 5 MiB), and larger ones only for
    larger objects: from 5 MiB, 10,000 parts hold S3's largest object, 5 TiB, with
    parts of 5 GiB at most (a 100 GB object's last parts are 160 MiB).
    """
    return min(first << ((number - 1) // PARTS_PER_SIZE), MAX_PART)


def _error(exc: Exception, key: str) -> StorageError:
    """botocore's error as Handover's, transient or permanent, classified here once.

    Transient: a 5xx, a 408 or 429, a throttling or timeout code, a connection
    refused or timed out. Permanent: a missing bucket, a denied access, bad
    credentials, any other 4xx, a client misconfigured. ``answered``: S3 sent an error
    response (not when it could not be reached, or the request not sent).
    """
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"NoSuchKey", "404", "NotFound"}:
            return ObjectMissing(f"no object at {key!r}")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        transient = status >= 500 or status in {408, 429} or code in TRANSIENT_CODES
        return StorageError(f"S3 {code or 'error'} on {key!r}: {exc}", transient=transient)
    if isinstance(exc, MISCONFIGURED):
        return StorageError(
            f"S3 request for {key!r} cannot be sent: {exc}", transient=False, answered=False
        )
    return StorageError(f"S3 unreachable on {key!r}: {exc}", answered=False)


class S3MultipartWriter:
    """Streams one object as S3 multipart parts; up to ``max_in_flight`` upload meanwhile.

    Written pieces are copied into a part buffer as they come (each byte is copied
    once on its way out, and the piece can be freed at once); a full buffer is sent
    and a new one filled meanwhile, grown as it fills, so a small object holds only its
    own size. A sent part's buffer is let go as soon as S3 has it, not kept for the
    next part: a part goes up faster than the next one fills, so the process mostly
    holds one part and a part's worth of pieces, not ``max_in_flight`` + 1 parts for
    the whole upload (a worker's peak during a 1 GB export to S3, moto: 114.5–117.2
    against 110.7–112.4 MB). A buffer of a MiB or more is mapped on its own and given
    back when freed (:mod:`service.cli.malloc`). Parts are the store's ``part_size`` at
    first, doubled every :data:`PARTS_PER_SIZE` parts (:func:`written_part_size`), the
    last excepted. An object that never fills a part goes up in one ``put_object``.

    One part in flight is the default: a 1 GB export's staged object (replayed
    source, moto) staged as fast with one as with two (7.6–8.5 s against 9.4 s), and
    the worker peaked 13 MB lower (144 against 157 MB).
    """

    #: Whether S3 is asked for the object's full-object CRC-32 (see :class:`S3Assembler`).
    checksum = False

    def __init__(
        self,
        store: S3PlainStore,
        key: str,
        content_type: str,
        *,
        max_in_flight: int = 1,
    ) -> None:
        self._store = store
        self._key = key
        self._content_type = content_type
        self._buffer = bytearray()
        self._filled = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._size = 0
        self._crc32: str | None = None

    async def write(self, data: bytes) -> None:
        self._size += len(data)
        view = memoryview(data)
        while view:
            size = written_part_size(self._store.part_size, len(self._parts) + 1)
            piece = view[: size - self._filled]
            # Grows the buffer as it fills (a slice past its end appends).
            self._buffer[self._filled : self._filled + len(piece)] = piece
            self._filled += len(piece)
            view = view[len(piece) :]
            if self._filled == size:
                await self._start_part(None)

    def _take(self) -> bytes:
        """The bytes waiting in the part buffer, which is then empty (and kept)."""
        body = bytes(memoryview(self._buffer)[: self._filled])
        self._filled = 0
        return body

    async def _ensure_upload(self) -> str:
        if self._upload_id is None:
            try:
                response = await asyncio.to_thread(
                    self._store.client.create_multipart_upload,
                    Bucket=self._store.bucket,
                    Key=self._key,
                    ContentType=self._content_type,
                    **self._checksummed(ChecksumAlgorithm="CRC32", ChecksumType="FULL_OBJECT"),
                    **self._store.put_extra,
                )
            except (ClientError, BotoCoreError) as exc:
                raise _error(exc, self._key) from exc
            self._upload_id = response["UploadId"]
        return self._upload_id

    def _checksummed(self, **arguments: Any) -> dict[str, Any]:
        """``arguments`` for a request, if S3 is asked for checksums; else none."""
        return arguments if self.checksum else {}

    def _next_part(self) -> dict[str, Any]:
        if len(self._parts) >= MAX_PARTS:
            raise StorageError(
                f"{self._key!r} would need more than {MAX_PARTS:,} parts, the first of "
                f"{self._store.part_size:,} bytes; raise HANDOVER_S3_PART_SIZE",
                transient=False,
            )
        entry: dict[str, Any] = {"PartNumber": len(self._parts) + 1}
        self._parts.append(entry)
        return entry

    def _track(self, task: asyncio.Task[None]) -> None:
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _start_part(self, body: bytes | None) -> None:
        """Upload ``body``, or (``None``) the full part buffer."""
        await self._ensure_upload()
        await self._slots.acquire()
        try:
            self._raise_failed()
            entry = self._next_part()
        except BaseException:
            self._slots.release()
            raise
        payload: bytes | bytearray = body if body is not None else self._buffer
        if body is None:  # the full part buffer goes; a new one takes its place
            self._buffer = bytearray()
            self._filled = 0
        self._track(asyncio.create_task(self._upload_part(payload, entry)))

    async def _upload_part(self, body: bytes | bytearray, entry: dict[str, Any]) -> None:
        try:
            response = await asyncio.to_thread(
                self._store.client.upload_part,
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._upload_id or "",
                PartNumber=entry["PartNumber"],
                Body=body,  # type: ignore[arg-type]  # botocore takes a bytearray as a blob
                **self._checksummed(ChecksumAlgorithm="CRC32"),
            )
            entry["ETag"] = response["ETag"]
            if response.get("ChecksumCRC32"):
                entry["ChecksumCRC32"] = response["ChecksumCRC32"]
        except (ClientError, BotoCoreError) as exc:
            entry["error"] = _error(exc, self._key)
        finally:
            self._slots.release()

    def _raise_failed(self) -> None:
        for entry in self._parts:
            if "error" in entry:
                raise entry["error"]

    async def complete(self) -> int:
        try:
            if self._upload_id is None:
                await self._put_whole(self._take())
                return self._size
            if self._filled or not self._parts:
                await self._start_part(self._take())
            await asyncio.gather(*self._in_flight)
            self._raise_failed()
            response = await asyncio.to_thread(
                self._store.client.complete_multipart_upload,
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": [_completed(entry) for entry in self._parts]},
                **self._checksummed(ChecksumType="FULL_OBJECT"),
            )
            if self.checksum:
                self._crc32 = await self._stored_crc32(response)
        except (ClientError, BotoCoreError) as exc:
            await self.abort()
            raise _error(exc, self._key) from exc
        except BaseException:
            await self.abort()
            raise
        finally:
            self._buffer = bytearray()
        return self._size

    async def _put_whole(self, body: bytes) -> None:
        if not self.checksum:
            await self._store.put(self._key, body, self._content_type)
            return
        response = await asyncio.to_thread(
            self._store.client.put_object,
            Bucket=self._store.bucket,
            Key=self._key,
            Body=body,
            ContentType=self._content_type,
            ChecksumAlgorithm="CRC32",
            **self._store.put_extra,
        )
        self._crc32 = await self._stored_crc32(response)

    async def _stored_crc32(self, response: Mapping[str, Any]) -> str | None:
        """The object's full-object CRC-32 as S3 reports it, asked again if the answer
        to the write left it out (moto's does); ``None`` when S3 keeps none."""
        if not response.get("ChecksumCRC32"):
            response = await asyncio.to_thread(
                self._store.client.head_object,
                Bucket=self._store.bucket,
                Key=self._key,
                ChecksumMode="ENABLED",
            )
        return _full_object_crc32(response)

    async def abort(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._take()
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        # If this fails too, the bucket's AbortIncompleteMultipartUpload rule is the backstop.
        with contextlib.suppress(ClientError, BotoCoreError):
            await asyncio.to_thread(
                self._store.client.abort_multipart_upload,
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=upload_id,
            )


class S3Assembler(S3MultipartWriter):
    """An :class:`~jobs.storage.base.ObjectAssembler`: written bytes and ranges copied by S3.

    A range is copied by S3 itself (``UploadPartCopy`` with a copy-source range), its
    bytes never passing through this process, when that leaves every part but the last
    at S3's 5 MiB or more. Part boundaries fall where the written bytes meet the copied
    ones, so the written bytes before a copied range (a ZIP member's header) must make
    a part of 5 MiB on their own: they are topped up with the range's first bytes, read
    and uploaded here, and the rest of the range is copied. A range too small for that
    is read and uploaded whole. So at most :data:`MIN_PART` bytes per copied range
    pass through here, whatever its size; ranges over :data:`COPY_PART` are copied as
    several parts, up to :data:`COPIES_IN_FLIGHT` at once.

    The upload asks S3 for a full-object CRC-32 (``ChecksumType=FULL_OBJECT``): S3
    checks each uploaded part's CRC-32 on arrival and combines the parts' into the
    whole object's, which :attr:`crc32` gives once complete. CRC-64/NVME would be the
    stronger choice, but botocore computes it only with ``awscrt`` installed, and
    moto without it silently returns a CRC-32 under that name; any client can check
    a CRC-32 with the standard library.
    """

    checksum = True

    def __init__(self, store: S3Store, key: str, content_type: str) -> None:
        super().__init__(store, key, content_type)
        self._copy_slots = asyncio.Semaphore(COPIES_IN_FLIGHT)
        self._copied = 0
        self._sources: dict[str, int] = {}

    @property
    def copied(self) -> int:
        return self._copied

    @property
    def crc32(self) -> str | None:
        return self._crc32

    async def copy(self, key: str, start: int, length: int) -> None:
        top_up = max(MIN_PART - self._filled, 0) if self._filled else 0
        if length - top_up < MIN_PART:
            await self._read_through(key, start, length)
            return
        held = await self._source_size(key)
        if start + length > held:
            raise _past_the_end(key, held, start, length)
        await self._read_through(key, start, top_up)
        if self._filled:
            await self._start_part(self._take())
        start, length = start + top_up, length - top_up
        self._size += length
        self._copied += length
        pieces = math.ceil(length / COPY_PART)
        for index in range(pieces):
            piece_start = start + length * index // pieces
            piece_end = start + length * (index + 1) // pieces
            await self._start_copy(key, piece_start, piece_end - piece_start)

    async def _source_size(self, key: str) -> int:
        """The size of the object at ``key``, asked once: a range past its end would
        otherwise be copied short, without a word, by some stores. Read from a listing,
        whose body says it whatever a proxy on the way does to a HEAD's headers."""
        if key not in self._sources:
            try:
                listed = await asyncio.to_thread(
                    self._store.client.list_objects_v2,
                    Bucket=self._store.bucket,
                    Prefix=key,
                    MaxKeys=1,
                )
            except (ClientError, BotoCoreError) as exc:
                raise _error(exc, key) from exc
            found = [item["Size"] for item in listed.get("Contents", []) if item["Key"] == key]
            if not found:
                raise ObjectMissing(f"no object at {key!r}")
            self._sources[key] = found[0]
        return self._sources[key]

    async def _read_through(self, key: str, start: int, length: int) -> None:
        """Read the range and write it; an object that gives fewer bytes fails the copy
        (a range read past its end comes back short, without an error)."""
        if not length:
            return
        read = 0
        async for chunk in self._store.read(key, start, length):
            read += len(chunk)
            await self.write(chunk)
        if read != length:
            raise _past_the_end(key, start + read, start, length)

    async def _start_copy(self, key: str, start: int, length: int) -> None:
        await self._ensure_upload()
        await self._copy_slots.acquire()
        try:
            self._raise_failed()
            entry = self._next_part()
        except BaseException:
            self._copy_slots.release()
            raise
        self._track(asyncio.create_task(self._copy_part(key, start, length, entry)))

    async def _copy_part(self, key: str, start: int, length: int, entry: dict[str, Any]) -> None:
        try:
            response = await asyncio.to_thread(
                self._store.client.upload_part_copy,
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._upload_id or "",
                PartNumber=entry["PartNumber"],
                CopySource={"Bucket": self._store.bucket, "Key": key},
                CopySourceRange=f"bytes={start}-{start + length - 1}",
            )
            result = response["CopyPartResult"]
            entry["ETag"] = result["ETag"]
            if result.get("ChecksumCRC32"):
                entry["ChecksumCRC32"] = result["ChecksumCRC32"]
        except (ClientError, BotoCoreError) as exc:
            error = _error(exc, self._key)
            entry["error"] = (
                ObjectMissing(f"no object at {key!r}")
                if isinstance(error, ObjectMissing)
                else error
            )
        finally:
            self._copy_slots.release()


def _status(exc: ClientError) -> int:
    """The HTTP status S3 answered an error with."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _past_the_end(key: str, held: int, start: int, length: int) -> ObjectShort:
    return ObjectShort(
        f"{key!r} holds {held:,} bytes, not the {start + length:,} "
        f"that copying {length:,} from byte {start:,} needs",
        key,
    )


def _completed(entry: Mapping[str, Any]) -> CompletedPartTypeDef:
    """A part as ``CompleteMultipartUpload`` lists it."""
    part: CompletedPartTypeDef = {"PartNumber": entry["PartNumber"], "ETag": entry["ETag"]}
    if "ChecksumCRC32" in entry:
        part["ChecksumCRC32"] = entry["ChecksumCRC32"]
    return part


def _full_object_crc32(response: Mapping[str, Any]) -> str | None:
    """S3's ``ChecksumCRC32`` as 8 hex digits, if it is the whole object's."""
    value = response.get("ChecksumCRC32")
    if not value or response.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return digest.hex() if len(digest) == 4 else None


class _Deletions:
    """Deletions asked for while one ``DeleteObjects`` is under way wait and go together
    in the next, up to :data:`DELETE_BATCH` keys a request; each caller is answered for
    its own keys. A lone deletion goes at once."""

    def __init__(self, store: S3PlainStore) -> None:
        self._store = store
        self._waiting: deque[tuple[str, Sequence[str], asyncio.Future[int]]] = deque()
        self._sending: asyncio.Task[None] | None = None

    async def delete(self, prefix: str, keys: Sequence[str]) -> int:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[int] = loop.create_future()
        self._waiting.append((prefix, keys, answer))
        sending = self._sending
        if sending is None or sending.done() or sending.get_loop() is not loop:
            # One loop at a time: what an earlier, closed one left waiting is dropped.
            self._waiting = deque(w for w in self._waiting if w[2].get_loop() is loop)
            self._sending = loop.create_task(self._send())
        return await answer

    async def _send(self) -> None:
        waiting = self._waiting
        while waiting:
            batch = [waiting.popleft()]
            size = len(batch[0][1])
            while waiting and size + len(waiting[0][1]) <= DELETE_BATCH:
                size += len(waiting[0][1])
                batch.append(waiting.popleft())
            try:
                errors = await self._store._delete_objects(
                    list(dict.fromkeys(k for _, keys, _ in batch for k in keys))
                )
            except (ClientError, BotoCoreError) as exc:
                for prefix, _, answer in batch:
                    if not answer.done():
                        answer.set_exception(_error(exc, prefix))
                continue
            except BaseException as exc:
                # Not the store's: every caller waiting is told (or, cancelled, cancelled).
                for _, _, answer in [*batch, *waiting]:
                    if answer.done():
                        continue
                    if isinstance(exc, Exception):
                        answer.set_exception(exc)
                    else:
                        answer.cancel()
                waiting.clear()
                if not isinstance(exc, Exception):
                    raise
                return
            for _, keys, answer in batch:
                if not answer.done():
                    _answer(answer, keys, errors)


def _answer(
    answer: asyncio.Future[int], keys: Sequence[str], errors: Mapping[str, Mapping[str, Any]]
) -> None:
    """How many of ``keys`` were deleted, or the first of them S3 did not delete."""
    failed = [errors[key] for key in keys if key in errors]
    if not failed:
        answer.set_result(len(keys))
        return
    first = failed[0]
    answer.set_exception(
        StorageError(
            f"S3 {first.get('Code', 'error')} deleting {first.get('Key')!r} "
            f"({len(failed)} of {len(keys)} key(s) not deleted): {first.get('Message', '')}"
        )
    )


class S3PlainStore:
    """An S3 bucket (or a prefix of one) through botocore, run in worker threads.

    Every byte of an object is written by this process, and no upload asks S3 for a
    checksum of it: what any S3-compatible store serves. :class:`S3Store` also
    assembles objects.
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        part_size: int = MIN_PART,
        server_side_encryption: str | None = None,
        max_attempts: int = 5,
    ) -> None:
        """``max_attempts`` is botocore's, per call, before a transient error is raised."""
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"} if endpoint_url else {},
            retries={"max_attempts": max_attempts, "mode": "adaptive"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=20,
        )
        session = s3model.session(OPERATIONS)
        self.client = cast(
            "S3Client", session.create_client("s3", endpoint_url=endpoint_url, config=config)
        )
        self._presigner = (
            cast(
                "S3Client",
                session.create_client("s3", endpoint_url=public_endpoint_url, config=config),
            )
            if public_endpoint_url
            else self.client
        )
        self.bucket = bucket
        self.part_size = part_size
        self._deletions = _Deletions(self)
        self.put_extra: dict[str, Any] = (
            {"ServerSideEncryption": server_side_encryption} if server_side_encryption else {}
        )

    def writer(self, key: str, content_type: str = "application/octet-stream") -> ObjectWriter:
        return S3MultipartWriter(self, key, content_type)

    async def read(
        self, key: str, start: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        if length == 0:
            return
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            params["Range"] = f"bytes={start}-{end}"
        try:
            response = await asyncio.to_thread(self.client.get_object, **params)
            body = response["Body"]
            while True:
                chunk = await asyncio.to_thread(body.read, READ_CHUNK)
                if not chunk:
                    break
                yield chunk
            body.close()
        except ClientError as exc:
            if _status(exc) == 416:
                if length is None and start:
                    return  # from the object's very end to its end: nothing, as on disk
                # A range that starts at or past the end: the object is shorter than that.
                raise ObjectShort(
                    f"{key!r} ends before byte {start:,}, where a read of {length:,} begins",
                    key,
                ) from exc
            raise _error(exc, key) from exc
        except BotoCoreError as exc:
            raise _error(exc, key) from exc

    async def put(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        try:
            await asyncio.to_thread(
                self.client.put_object,
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                **self.put_extra,
            )
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, key) from exc

    async def get(self, key: str) -> bytes:
        """The object whole, asked and read in one worker thread's turn (a small object's
        ``read`` would take three)."""

        def fetch() -> bytes:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            with contextlib.closing(response["Body"]) as body:
                return body.read()

        try:
            return await asyncio.to_thread(fetch)
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, key) from exc

    async def exists(self, key: str) -> bool:
        try:
            await asyncio.to_thread(self.client.head_object, Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            error = _error(exc, key)
            if isinstance(error, ObjectMissing):
                return False
            raise error from exc
        return True

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, key) from exc

    async def delete_prefix(self, prefix: str, *, holding: Sequence[str] | None = None) -> int:
        if not prefix:
            raise StorageError("refusing to delete an empty prefix (the whole bucket)")
        if holding is not None:
            return await self._delete_keys(prefix, holding)
        deleted = 0
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            pages = await asyncio.to_thread(
                lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
            )
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, prefix) from exc
        for page in pages:
            listed = [item["Key"] for item in page.get("Contents", [])]
            for first in range(0, len(listed), DELETE_BATCH):
                deleted += await self._delete_batch(prefix, listed[first : first + DELETE_BATCH])
        return deleted

    async def _delete_keys(self, prefix: str, keys: Sequence[str]) -> int:
        """Delete ``keys``, all under ``prefix``, without listing: one ``DeleteObjects``
        per :data:`DELETE_BATCH` keys."""
        outside = [key for key in keys if not key.startswith(prefix)]
        if outside:
            raise StorageError(
                f"refusing to delete {outside[0]!r} with the prefix {prefix!r}", transient=False
            )
        deleted = 0
        for first in range(0, len(keys), DELETE_BATCH):
            deleted += await self._delete_batch(prefix, keys[first : first + DELETE_BATCH])
        return deleted

    async def _delete_batch(self, prefix: str, keys: Sequence[str]) -> int:
        """Delete at most :data:`DELETE_BATCH` keys; returns how many.

        The deletions callers ask for while one ``DeleteObjects`` is under way go
        together in the next (:class:`_Deletions`): a worker ending many jobs at once
        deletes their staged objects in a request or two, not one each. S3 answers a
        request it took with 200 even when some keys were not deleted, and names those
        in ``Errors``: any such key fails its caller's deletion (a :class:`StorageError`,
        so the caller tries again), none of its keys is counted as deleted.
        """
        if not keys:
            return 0
        return await self._deletions.delete(prefix, keys)

    async def _delete_objects(self, keys: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        """One ``DeleteObjects`` of ``keys``: the errors S3 names, by key."""
        response = await asyncio.to_thread(
            self.client.delete_objects,
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
        # Quiet: only the keys that failed are listed.
        return {error.get("Key", ""): error for error in response.get("Errors", [])}

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            try:
                page = await asyncio.to_thread(self.client.list_objects_v2, **params)
            except (ClientError, BotoCoreError) as exc:
                raise _error(exc, prefix) from exc
            for item in page.get("Contents", []):
                yield StoredObject(item["Key"], item["Size"], item["LastModified"])
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def download_url(self, key: str, *, ttl: timedelta, filename: str) -> str:
        return await asyncio.to_thread(
            self._presigner.generate_presigned_url,
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
                "ResponseContentType": content_type_of(filename),
            },
            ExpiresIn=max(1, math.floor(ttl.total_seconds())),
        )

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self.client.head_bucket, Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            error = _error(exc, self.bucket)
            if isinstance(error, ObjectMissing):  # HEAD has no body: a 404 names no code
                raise StorageError(
                    f"S3 bucket {self.bucket!r} does not exist", transient=False
                ) from exc
            raise error from exc

    async def ensure_lifecycle(self, prefix: str, archive_ttl: timedelta) -> None:
        """Merge Handover's lifecycle rules into the bucket's, keeping the operator's own.

        The rules are a backstop behind the cleanup job: archives expire a day after
        their TTL, staging data after two days, unfinished multipart uploads after one.
        """
        days = math.ceil(archive_ttl.total_seconds() / 86400) + 1
        ours = [
            {
                "ID": f"handover-archives-{prefix or 'root'}",
                "Filter": {"Prefix": f"{prefix}archives/"},
                "Status": "Enabled",
                "Expiration": {"Days": days},
            },
            {
                "ID": f"handover-staging-{prefix or 'root'}",
                "Filter": {"Prefix": f"{prefix}staging/"},
                "Status": "Enabled",
                "Expiration": {"Days": 2},
            },
            {
                "ID": f"handover-multipart-{prefix or 'root'}",
                "Filter": {"Prefix": prefix},
                "Status": "Enabled",
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
            },
        ]
        ids = {rule["ID"] for rule in ours}
        try:
            current = await asyncio.to_thread(
                self.client.get_bucket_lifecycle_configuration, Bucket=self.bucket
            )
            kept = [rule for rule in current.get("Rules", []) if rule.get("ID") not in ids]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise _error(exc, self.bucket) from exc
            kept = []
        try:
            await asyncio.to_thread(
                self.client.put_bucket_lifecycle_configuration,
                Bucket=self.bucket,
                LifecycleConfiguration={"Rules": [*kept, *ours]},  # type: ignore[list-item]
            )
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, self.bucket) from exc

    async def close(self) -> None:
        self.client.close()
        if self._presigner is not self.client:
            self._presigner.close()


class S3Store(S3PlainStore):
    """An S3 bucket that also assembles objects from ranges of those it holds: an
    :class:`~jobs.storage.base.AssemblingStore`. The bucket's store must support
    ``UploadPartCopy`` and full-object CRC-32 checksums (AWS S3 does, MinIO since 2025).
    """

    def assembler(
        self, key: str, content_type: str = "application/octet-stream"
    ) -> ObjectAssembler:
        """A writer for ``key`` whose :meth:`~S3Assembler.copy` S3 carries out itself."""
        return S3Assembler(self, key, content_type)
