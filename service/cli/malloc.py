"""glibc's allocator, told to give a worker's large freed buffers back to the system.

A worker's export allocates buffers of a MiB or more again and again: rendered
pieces and deflated chunks (about 1 MiB each, :mod:`jobs.archive.staging`), S3 part
buffers. glibc's default mmap threshold is dynamic: each time a mapped buffer is
freed it rises to that buffer's size (up to 32 MiB), so later buffers come from the
heap, whose freed space glibc keeps. :func:`tune` fixes the threshold at
:data:`MMAP_THRESHOLD` through ``mallopt(3)``: a buffer that large is mapped on its
own and unmapped, so given back, when freed. Measured (issue 16, README "Running in
production"): peak RSS of 100 MB to S3 (moto) 138–142 → 133–134 MB, of 1 GB 138–141 →
137–138 MB, of 1 GB to the local store 112 → 107 MB, for about 3 % more CPU. With the
staging of issue 16's second round, a fifth of a synthetic export's speed: 1 GB to moto
at 63–65 MB/s and 107–108 MB peak, against 77–81 MB/s and 117 MB with glibc's own
threshold (README).

Only on glibc: musl's and macOS's allocators are left as they are. An operator who
tunes malloc through glibc's environment (``MALLOC_MMAP_THRESHOLD_`` and the other
variables of :data:`OPERATOR_TUNING`, or ``glibc.malloc`` tunables) keeps exactly that.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

#: ``mallopt``'s parameter number, from glibc's ``malloc.h``.
M_MMAP_THRESHOLD = -3
#: Buffers of this size or more are mapped on their own and unmapped when freed.
MMAP_THRESHOLD = 1 << 20
#: glibc's environment variables for malloc; each also fixes the threshold as it is.
OPERATOR_TUNING = (
    "MALLOC_ARENA_MAX",
    "MALLOC_ARENA_TEST",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
)


def glibc_version() -> str | None:
    """The C library's version when it is glibc (``"2.36"``), else None."""
    try:
        found = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # not glibc: the name is unknown here
        return None
    if not found or not found.startswith("glibc "):
        return None
    return found.removeprefix("glibc ")


def operator_tuned(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` tunes glibc's malloc itself."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return "glibc.malloc." in tunables or any(name in environ for name in OPERATOR_TUNING)


def tune(environ: Mapping[str, str] | None = None) -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD`; True when it was set.

    False, changing nothing, when the C library is not glibc or when ``environ``
    (the process's own by default) tunes malloc already.
    """
    environ = os.environ if environ is None else environ
    if glibc_version() is None or operator_tuned(environ):
        return False
    return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
