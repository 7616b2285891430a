"""Locating, opening, hashing and versioning source files.

Nothing outside the landing area is ever opened: a landed file is opened one path part at a
time from the landing folder, none of them followed if it is a symbolic link, and the open
file itself is what every later read goes through. Symbolic links below the landing folder
are never followed, even to a file inside it: a link is an alias whose target can change
between two looks, and the file it points to, when it is landed, is loaded under its own name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

HASH_CHUNK_BYTES = 1 << 20


class RefusedFile(ValueError):
    """A landed path that is not opened, because reading it could leave the landing area."""


@dataclass(frozen=True)
class FileVersion:
    """One file of one source: the unit a partition stands for.

    The partition key tells where the file lives: a path relative to the source's landing
    folder, or a full `s3://bucket/key` URI for objects that landed in S3.
    """

    source: str
    partition_key: str
    location: str  # a local path, or s3://bucket/key
    landing_dir: str = ""  # the folder a local file is opened from, part by part

    def open(self) -> BinaryIO:
        """The local file, opened without leaving the landing area (see open_landed)."""
        return open_landed(Path(self.landing_dir), self.path.relative_to(self.landing_dir).as_posix())

    @property
    def is_s3(self) -> bool:
        return self.location.startswith("s3://")

    @property
    def path(self) -> Path:
        if self.is_s3:
            raise ValueError(f"{self.location} is not a local file")
        return Path(self.location)

    @property
    def file_name(self) -> str:
        return PurePosixPath(self.location).name

    @property
    def uri(self) -> str:
        return self.location if self.is_s3 else self.path.resolve().as_uri()


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


@dataclass(frozen=True)
class FileFingerprint:
    file_hash: str
    size_bytes: int
    modified_at: datetime


def safe_partition_key(relative: str) -> str:
    """Rejects keys that could escape the landing folder (absolute paths, '..')."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts or relative != path.as_posix():
        raise ValueError(f"not a safe landing-relative file name: {relative!r}")
    return relative


def locate(landing_dir: Path, source: str, partition_key: str) -> FileVersion:
    if partition_key.startswith("s3://"):
        return FileVersion(source, partition_key, partition_key)
    location = landing_dir / source / safe_partition_key(partition_key)
    return FileVersion(source, partition_key, str(location), str(landing_dir))


def link_reason(landing_dir: Path, link: Path) -> str:
    """Why a symbolic link below the landing folder is not followed, saying whether its target
    lies inside the landing area (without naming a target outside it)."""
    area = Path(os.path.realpath(landing_dir))
    target = Path(os.path.realpath(link))
    what = "folder" if target.is_dir() else "file"
    if target.is_relative_to(area):
        where = f"to {target.relative_to(area).as_posix()}, inside the landing area"
        fix = (
            f"the {what} it points to is loaded under its own name; move or copy a file here to load it under this one"
        )
    else:
        where = f"to a {what} outside the landing area {area}"
        fix = "nothing outside the landing area is ever read; copy the file in to load it"
    return f"it is a symbolic link {where}: links are never followed, so it is not loaded ({fix})"


def _refusal(landing_dir: Path, parts: list[str]) -> str:
    """Why opening a landed path met a link or a non-regular file, from the first part that is one."""
    path = landing_dir
    for part in parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            break
        if stat.S_ISLNK(mode):
            return f"{path.relative_to(landing_dir).as_posix()}: {link_reason(landing_dir, path)}"
    return f"{'/'.join(parts)}: a symbolic link was met while opening it (it changed since it was listed)"


def open_landed(landing_dir: Path, relative: str) -> BinaryIO:
    """Opens a regular file below the landing folder, following no symbolic link on the way:
    each folder and the file itself is opened relative to the one above it with O_NOFOLLOW,
    so a link swapped in after any check still cannot lead outside. Raises RefusedFile with
    the reason otherwise, and FileNotFoundError for a missing file."""
    parts = list(PurePosixPath(safe_partition_key(relative)).parts)
    descriptor = os.open(landing_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts, start=1):
            # A FIFO would block an open for reading: O_NONBLOCK returns at once, and it is refused below.
            kind = os.O_NONBLOCK if depth == len(parts) else os.O_DIRECTORY
            try:
                child = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | kind, dir_fd=descriptor)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise RefusedFile(_refusal(landing_dir, parts[:depth])) from None
                raise
            os.close(descriptor)
            descriptor = child
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            what = "not a regular file (a folder, FIFO, socket or device)"
            raise RefusedFile(f"{'/'.join(parts)}: {what}: it is not loaded")
        os.set_blocking(descriptor, True)
        handle = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    return handle


@dataclass(frozen=True)
class FileIdentity:
    """Which file was hashed, and as it was then: a later step reads only that file, unchanged."""

    device: int
    inode: int
    size_bytes: int
    modified_ns: int

    @classmethod
    def of(cls, handle: BinaryIO) -> FileIdentity:
        status = os.fstat(handle.fileno())
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


@contextlib.contextmanager
def pinned_path(handle: BinaryIO, file_name: str) -> Iterator[Path]:
    """A path that reads exactly the open file, for readers that take a path (DuckDB): a link
    named like the file, in a folder only this process may write, to the process's own
    descriptor. Renaming, replacing or linking the landed path changes nothing it reads."""
    with tempfile.TemporaryDirectory(prefix="harmonizer-") as folder:
        path = Path(folder) / file_name
        path.symlink_to(f"/proc/self/fd/{handle.fileno()}")
        yield path


def fingerprint(handle: BinaryIO) -> FileFingerprint:
    """Streams the open file through SHA-256 in 1 MiB chunks: constant memory whatever its size."""
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    modified = datetime.fromtimestamp(os.fstat(handle.fileno()).st_mtime, tz=UTC)
    return FileFingerprint(digest.hexdigest(), size, modified)


def fingerprint_s3(client: Any, uri: str, copy_to: Path | None = None) -> FileFingerprint:
    """Streams an S3 object through SHA-256 in one pass, optionally teeing it into a local
    copy for the later steps: the object is never downloaded first and hashed afterwards."""
    bucket, key = split_s3_uri(uri)
    try:
        response = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey as exc:
        raise FileNotFoundError(uri) from exc
    digest = hashlib.sha256()
    size = 0
    partial = None
    if copy_to is not None:
        copy_to.parent.mkdir(parents=True, exist_ok=True)
        partial = copy_to.with_name(copy_to.name + ".part")
    try:
        with partial.open("wb") if partial else contextlib.nullcontext() as handle:
            for chunk in response["Body"].iter_chunks(HASH_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                if handle:
                    handle.write(chunk)
    except BaseException:
        # An interrupted download (a cut connection, a full disk) leaves no partial copy behind.
        if partial:
            partial.unlink(missing_ok=True)
        raise
    if partial and copy_to:
        os.replace(partial, copy_to)
    return FileFingerprint(digest.hexdigest(), size, response["LastModified"].astimezone(UTC))


def version_key(strategy: str, fp: FileFingerprint, file_name: str = "", pattern: str | None = None) -> str:
    """The source version a file belongs to, as the legacy loaders named it: what its name
    states when the spec says how to read it, else its modification time (or its content)."""
    named = re.search(pattern, file_name) if pattern else None
    if named and named.groupdict().get("version"):
        return named["version"]
    if strategy == "content_hash":
        return fp.file_hash[:16]
    stated = {k: int(v) for k, v in (named.groupdict() if named else {}).items() if v and v.isdigit()}
    if "year" not in stated:  # the name states no date: the modification time does
        when = fp.modified_at
        stated = {"year": when.year, "month": when.month, "day": when.day}
    year, month, day = stated["year"], stated.get("month", 1), stated.get("day", 1)
    if strategy == "quarterly":
        return f"{year}-Q{stated.get('quarter') or (month - 1) // 3 + 1}"
    if strategy == "monthly":
        return f"{year}-{month:02d}"
    return f"{year}-{month:02d}-{day:02d}"
