"""Study storage on a local folder or a bucket: read, list, and write atomically (tmp + rename).

Plain paths and URIs (`s3://bucket/x`, `gs://...`, `file:///...`) both go through
`pyarrow.fs.FileSystem.from_uri`. On a local filesystem a write lands in a temporary
file in the same folder and is moved into place with `os.replace`; on an object store
it lands in a temporary object that is then moved (or copied and deleted) into place.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import posixpath
import re
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")
TMP_MARK = ".tmp-"


def is_uri(location: str | os.PathLike[str]) -> bool:
    """Whether `location` is a URI (`scheme://...`) rather than a plain path."""
    return bool(_URI.match(str(location)))


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """`base/part/...` for a plain path or a URI (query strings are kept at the end)."""
    base = str(base)
    if not is_uri(base):
        return os.path.join(base, *parts)
    head, sep, query = base.partition("?")
    return posixpath.join(head, *parts) + (sep + query if sep else "")


@lru_cache(maxsize=32)
def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(root)


def resolve(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for a plain path or URI."""
    location = str(location)
    if not is_uri(location):
        return pafs.FileSystem.from_uri(os.path.abspath(os.path.expanduser(location)))
    if location.startswith("file://"):
        return pafs.FileSystem.from_uri(location)
    # One filesystem object per bucket: S3 clients are costly to build, and a mock store must persist.
    head, _, query = location.partition("?")
    scheme, _, rest = head.partition("://")
    authority, _, key = rest.partition("/")
    key = key.rstrip("/")
    fs, root_path = _filesystem(f"{scheme}://{authority}" + (f"?{query}" if query else ""))
    if root_path:
        return fs, posixpath.join(root_path, key) if key else root_path
    return fs, pafs.FileSystem.from_uri(location)[1]


def exists(location: str | os.PathLike[str]) -> bool:
    """Whether a file or folder exists at `location`."""
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(location: str | os.PathLike[str]) -> bool:
    """Whether `location` is a folder (on object stores: a prefix with objects under it)."""
    fs, path = resolve(location)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def listdir(location: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the entries directly under a folder; [] when it does not exist."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return sorted(posixpath.basename(info.path.rstrip("/")) for info in infos)


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """The whole content of a file."""
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str | os.PathLike[str]) -> str:
    """The whole content of a UTF-8 text file."""
    return read_bytes(location).decode("utf-8")


def read_json(location: str | os.PathLike[str]) -> Any:
    """A parsed JSON file."""
    return json.loads(read_text(location))


def read_npz(location: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file (no pickles)."""
    with np.load(io.BytesIO(read_bytes(location)), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def tmp_name(name: str) -> str:
    """The temporary name a write of `name` goes through: hidden, unique, never mistaken for a result."""
    return f".{name}{TMP_MARK}{uuid.uuid4().hex}"


def is_tmp_name(name: str) -> bool:
    """Whether a file name is one of `tmp_name`'s (left behind by a writer that was killed)."""
    return name.startswith(".") and TMP_MARK in name


STALE_TMP_SECONDS = 600.0


def _remove_stale_tmp(target: Path) -> None:
    """Delete temporary files of `target` that a killed writer left (older than STALE_TMP_SECONDS).

    They never count as results, but `ablations/promoted/` is committed to git and `results/` synced:
    leftovers would travel. A younger one may belong to a writer still at work, and is kept.
    """
    now = time.time()
    for leftover in target.parent.glob(f".{glob.escape(target.name)}{TMP_MARK}*"):
        try:
            if now - leftover.stat().st_mtime > STALE_TMP_SECONDS:
                leftover.unlink()
        except OSError:  # gone already (another writer's cleanup)
            pass


def write_bytes_atomic(location: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` so that readers see the old file or the whole new one, never a part."""
    fs, path = resolve(location)
    if isinstance(fs, pafs.LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(target.parent / tmp_name(target.name))
        # not mkstemp: its files are 0600, and the result would keep that mode; 0666 lets the umask decide
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _remove_stale_tmp(target)
        return
    parent, name = posixpath.split(path)
    tmp = posixpath.join(parent, tmp_name(name))
    if parent:
        fs.create_dir(parent, recursive=True)
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        try:
            fs.move(tmp, path)
        except (OSError, NotImplementedError):
            fs.copy_file(tmp, path)
            fs.delete_file(tmp)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


def write_text_atomic(location: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically (see `write_bytes_atomic`)."""
    write_bytes_atomic(location, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """`value` with numpy scalars/arrays made plain and non-finite floats made None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json_atomic(location: str | os.PathLike[str], obj: Any) -> None:
    """Write strict JSON (NaN/Inf as null), indented, atomically."""
    write_text_atomic(location, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


def write_npz_atomic(location: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays as an `.npz` file atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    write_bytes_atomic(location, buffer.getvalue())
