"""The trimmed botocore data directory Handover's S3 clients are built on.

Creating an S3 client makes botocore parse its data files: the S3 service model (3.3 MiB
parsed, 80 % of it documentation, for some 100 operations) and ``endpoints.json`` (6.7 MiB
parsed, every service of every partition, read by the legacy endpoint resolver for a
region's partition and defaults). :func:`build` writes, from the installed botocore's own
files, a data directory holding:

- ``s3/<api version>/service-2.json``: the S3 model cut to the operations the store calls
  (:data:`jobs.storage.s3.OPERATIONS`) and the shapes they reach, documentation emptied;
  its paginators, waiters and sdk-extras cut to the same operations, so that botocore's
  own extras are never merged into it;
- ``endpoints.json``: every partition with its regions and defaults, its services cut to
  :data:`ENDPOINT_SERVICES`;
- ``STAMP.json``: the botocore version it was cut from, the operations it holds and how
  it was cut (:data:`FORMAT`).

Everything else, S3's endpoint rule set (never trimmed) included, comes from botocore's own
data. :func:`session` puts the directory first on a new session's data path when its stamp
names the installed botocore and the store's operations; otherwise (missing, stale, or an
operator's ``AWS_DATA_PATH``) the session reads botocore's full data, as without it, and
the process logs why, once. A client on the directory sends the same requests; it has no
method for an operation outside the list (``AttributeError``).

Run ``python -m jobs.storage.s3model`` after installing or upgrading botocore (``make
install`` and the Dockerfile do): it writes the directory beside this module, atomically.
A worker's S3 client took 11.8 MiB less memory on it, and half the time to create.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import botocore
import botocore.session
from botocore.exceptions import DataNotFoundError
from botocore.loaders import Loader

log = logging.getLogger("handover.storage")

#: Where :func:`build` writes the directory and :func:`session` looks for it.
DIRECTORY = Path(__file__).with_name("botocore-data")
#: The stamp file in the directory.
STAMP = "STAMP.json"
#: The services ``endpoints.json`` keeps: S3, and those botocore's credential providers
#: create clients for on the same session (assume-role and web identity, SSO, console login).
ENDPOINT_SERVICES = frozenset({"s3", "sts", "sso", "sso-oidc", "signin"})
#: S3's files :func:`build` cuts; the endpoint rule set is not one of them.
SERVICE = "s3"
#: How :func:`build` cuts them: raised with any change to what it writes, so that a
#: directory written by an earlier Handover from the same botocore is written again.
FORMAT = 1


def _shapes_reached(model: Mapping[str, Any], operations: Sequence[str]) -> set[str]:
    """The names of the shapes ``operations`` reach: input, output, errors, transitively."""
    pending: list[str] = []
    for name in operations:
        operation = model["operations"][name]
        pending += [operation[key]["shape"] for key in ("input", "output") if key in operation]
        pending += [error["shape"] for error in operation.get("errors", [])]
    reached: set[str] = set()
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        reached.add(name)
        shape = model["shapes"][name]
        pending += [member["shape"] for member in shape.get("members", {}).values()]
        pending += [shape[key]["shape"] for key in ("member", "key", "value") if key in shape]
    return reached


def _without_documentation(value: Any) -> Any:
    """``value`` with every ``documentation`` text emptied; the key is kept, since botocore
    reads some (a client context parameter's)."""
    if isinstance(value, dict):
        emptied = {key: _without_documentation(item) for key, item in value.items()}
        if isinstance(emptied.get("documentation"), str):  # not a member named so
            emptied["documentation"] = ""
        return emptied
    if isinstance(value, list):
        return [_without_documentation(item) for item in value]
    return value


def trimmed_model(model: Mapping[str, Any], operations: Sequence[str]) -> dict[str, Any]:
    """The service model ``model`` with only ``operations``, the shapes they reach and no
    documentation."""
    shapes = _shapes_reached(model, operations)
    trimmed = {key: value for key, value in model.items() if key not in {"operations", "shapes"}}
    trimmed["operations"] = {name: model["operations"][name] for name in operations}
    trimmed["shapes"] = {name: shape for name, shape in model["shapes"].items() if name in shapes}
    result: dict[str, Any] = _without_documentation(trimmed)
    return result


def _trimmed_extras(extras: Mapping[str, Any], kept: Mapping[str, set[str]]) -> dict[str, Any]:
    """An sdk-extras file whose ``merge`` names only what ``kept`` keeps (by section)."""
    merge = {
        section: (
            {name: value for name, value in entries.items() if name in kept[section]}
            if section in kept
            else entries
        )
        for section, entries in extras.get("merge", {}).items()
    }
    return {**extras, "merge": merge}


def _service_files(loader: Loader, operations: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """(file name, content) of each S3 file the directory holds."""
    version = loader.determine_latest_version(SERVICE, "service-2")
    base = f"{SERVICE}/{version}"
    model, _ = loader.load_data_with_path(f"{base}/service-2")  # without botocore's extras
    trimmed = trimmed_model(model, operations)
    yield f"{base}/service-2.json", trimmed
    kept = {"operations": set(operations), "shapes": set(trimmed["shapes"])}
    pagination = loader.load_data(f"{base}/paginators-1")["pagination"]
    yield (
        f"{base}/paginators-1.json",
        {"pagination": {name: pages for name, pages in pagination.items() if name in operations}},
    )
    waiters = loader.load_data(f"{base}/waiters-2")
    yield (
        f"{base}/waiters-2.json",
        {
            **waiters,
            "waiters": {
                name: waiter
                for name, waiter in waiters["waiters"].items()
                if waiter["operation"] in operations
            },
        },
    )
    # Written even where botocore has none, so none of its own is merged into the model.
    for kind, sections in (("service-2", kept), ("paginators-1", {"pagination": set(operations)})):
        name = f"{base}/{kind}.sdk-extras"
        try:
            extras = loader.load_data(name)
        except DataNotFoundError:
            extras = {"version": 1.0}
        yield f"{name}.json", _trimmed_extras(extras, sections)


def _endpoints(loader: Loader) -> dict[str, Any]:
    """botocore's ``endpoints.json`` with only :data:`ENDPOINT_SERVICES` in each partition."""
    endpoints: dict[str, Any] = loader.load_data("endpoints")
    for partition in endpoints["partitions"]:
        partition["services"] = {
            name: service
            for name, service in partition["services"].items()
            if name in ENDPOINT_SERVICES
        }
    return endpoints


def _stamp(operations: Sequence[str]) -> dict[str, Any]:
    return {"format": FORMAT, "botocore": botocore.__version__, "operations": sorted(operations)}


def build(directory: Path, operations: Sequence[str]) -> None:
    """Write the trimmed data directory at ``directory`` from the installed botocore's data.

    Atomic: written beside it under another name, then renamed into place, so a process
    finds the old directory, the new one, or (for a moment, when there was one) none.
    Readable by every user, as an image's own user must read what root wrote at build.
    """
    # botocore's own files only: neither ~/.aws/models nor an AWS_DATA_PATH.
    loader = Loader(
        extra_search_paths=[Loader.BUILTIN_DATA_PATH], include_default_search_paths=False
    )
    files = [*_service_files(loader, operations), ("endpoints.json", _endpoints(loader))]
    files.append((STAMP, _stamp(operations)))
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        for name, content in files:
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, separators=(",", ":")))
        for folder in (staging, *(path for path in staging.rglob("*") if path.is_dir())):
            folder.chmod(0o755)
        for path in staging.rglob("*"):
            if path.is_file():
                path.chmod(0o644)
        _replace(directory, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(directory: Path, staging: Path) -> None:
    """Put ``staging`` where ``directory`` is (a directory cannot be renamed onto a full one)."""
    if not directory.exists():
        staging.rename(directory)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}-old-", dir=directory.parent))
    directory.rename(retired / directory.name)
    staging.rename(directory)
    shutil.rmtree(retired)


def _unusable(directory: Path, operations: tuple[str, ...]) -> str | None:
    """Why the directory cannot serve a client of ``operations``; ``None`` when it can."""
    hint = "`python -m jobs.storage.s3model` writes it"
    try:
        stamp = json.loads((directory / STAMP).read_text())
    except FileNotFoundError:
        return f"no trimmed botocore data at {directory}: {hint}"
    except (OSError, ValueError) as exc:
        return f"the trimmed botocore data at {directory} is unreadable ({exc}): {hint}"
    if not isinstance(stamp, dict):
        return f"the trimmed botocore data at {directory} has no stamp of its botocore: {hint}"
    if stamp.get("botocore") != botocore.__version__:
        return (
            f"the trimmed botocore data at {directory} was made from botocore "
            f"{stamp.get('botocore')}, this is botocore {botocore.__version__}: {hint}"
        )
    if stamp.get("format") != FORMAT:
        return (
            f"the trimmed botocore data at {directory} was cut by another version of "
            f"Handover: {hint}"
        )
    if stamp.get("operations") != sorted(operations):
        return f"the trimmed botocore data at {directory} holds other operations: {hint}"
    return None


@functools.cache
def usable(directory: Path, operations: tuple[str, ...]) -> bool:
    """Whether ``directory`` was made from the installed botocore for ``operations``;
    when not, the process logs why (once: the answer is kept)."""
    reason = _unusable(directory, operations)
    if reason is not None:
        log.warning("S3 clients read botocore's full data, about 12 MB more: %s", reason)
    return reason is None


def session(operations: Sequence[str], directory: Path = DIRECTORY) -> botocore.session.Session:
    """A new botocore session on the trimmed data at ``directory`` if :func:`usable`, else
    on botocore's full data; an operator's ``AWS_DATA_PATH`` is left as it is.

    botocore's own, not boto3's: the store calls the client's operations and nothing of
    boto3's (its resources, its managed transfers), and importing boto3 brings s3transfer
    and ``multiprocessing``, about 2 MB of every process on S3."""
    core = botocore.session.get_session()
    if core.get_config_variable("data_path"):
        _operator_data_path(str(core.get_config_variable("data_path")))
    elif usable(directory, tuple(operations)):
        core.set_config_variable("data_path", str(directory))
    return core


@functools.cache
def _operator_data_path(data_path: str) -> None:
    log.warning("S3 clients read botocore's full data, as AWS_DATA_PATH is set: %s", data_path)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m jobs.storage.s3model [DIRECTORY]``: write the trimmed data directory."""
    from jobs.storage.s3 import OPERATIONS  # that module imports this one

    parser = argparse.ArgumentParser(
        prog="python -m jobs.storage.s3model", description=main.__doc__
    )
    parser.add_argument("directory", nargs="?", type=Path, default=DIRECTORY)
    directory: Path = parser.parse_args(argv).directory
    build(directory, OPERATIONS)
    size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    print(
        f"trimmed botocore {botocore.__version__} data for {len(OPERATIONS)} S3 operations: "
        f"{directory} ({size / 2**20:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
