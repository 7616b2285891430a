"""Locating, hashing and versioning source files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class FileVersion:
    """One file of one source: the unit a partition stands for.

    The partition key tells where the file lives: a path relative to the source's landing
    folder, or a full `s3://bucket/key` URI for objects that landed in S3.
    """

    source: str
    partition_key: str
    location: str  # a local path, or s3://bucket/key

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
    return FileVersion(source, partition_key, str(landing_dir / source / safe_partition_key(partition_key)))


def fingerprint(path: Path) -> FileFingerprint:
    """Streams the file through SHA-256 in 1 MiB chunks: constant memory whatever its size."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    modified = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
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
