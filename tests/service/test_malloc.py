"""``service.cli.malloc``: a worker's large freed buffers go back to the system.

Each case runs in a fresh interpreter (glibc's threshold moves with what a process
frees) and reads glibc's own count of mapped bytes (``mallinfo2().hblkhd``): a buffer
mapped on its own is given back when freed. Left alone, glibc raises its threshold to
the largest mapped buffer freed so far, and the next such buffer comes from the heap,
which keeps it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from service.cli import malloc

PROBE = """
import ctypes, json, sys
from service.cli import malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
tuned = malloc.tune(json.loads(sys.argv[1]))
largest = bytearray(4 * malloc.MMAP_THRESHOLD)  # mapped: past glibc's first threshold
del largest  # left alone, glibc's threshold is now this buffer's size
before = libc.mallinfo2().hblkhd
buffer = bytearray(2 * malloc.MMAP_THRESHOLD)
print(json.dumps({"tuned": tuned, "mapped": libc.mallinfo2().hblkhd - before}))
"""

glibc_only = pytest.mark.skipif(malloc.glibc_version() is None, reason="glibc's allocator only")


def probe(environ: dict[str, str]) -> dict[str, int]:
    """Tune as if the environment were ``environ``, in a fresh interpreter; what it reports."""
    untuned = {k: v for k, v in os.environ.items() if not malloc.operator_tuned({k: v})}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(environ)],
        env=untuned,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, int] = json.loads(done.stdout)
    return result


@glibc_only
def test_a_tuned_process_maps_large_buffers_on_their_own() -> None:
    result = probe({})

    assert result["tuned"]
    assert result["mapped"] >= 2 * malloc.MMAP_THRESHOLD


@glibc_only
def test_an_operators_own_tuning_is_left_as_it_is() -> None:
    result = probe({"MALLOC_ARENA_MAX": "4"})

    assert not result["tuned"]
    assert result["mapped"] == 0, "glibc's default threshold moved up: the heap served it"


@pytest.mark.parametrize(
    ("environ", "tuned"),
    [
        ({}, False),
        ({"GLIBC_TUNABLES": "glibc.rtld.nns=4"}, False),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4194304"}, True),
        ({"MALLOC_MMAP_THRESHOLD_": "4194304"}, True),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, True),
    ],
)
def test_an_operators_tuning_is_read_from_glibcs_variables(
    environ: dict[str, str], tuned: bool
) -> None:
    assert malloc.operator_tuned(environ) is tuned
