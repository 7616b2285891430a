"""Locating, hashing and versioning source files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class FileVersion:
    """One file of one source: the unit a partition stands for.

    `partition_key` is the file's path relative to the source's landing folder, so a
    partition key alone tells where the file lives and reads well in the UI.
    """

    source: str
    partition_key: str
    path: Path

    @property
    def file_name(self) -> str:
        return self.path.name


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
    return FileVersion(source, partition_key, landing_dir / source / safe_partition_key(partition_key))


def list_landing_files(landing_dir: Path, source: str) -> list[str]:
    """Partition keys of every data file under the source's landing folder, sorted."""
    folder = landing_dir / source
    if not folder.is_dir():
        return []
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))
    )


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


def version_key(strategy: str, fp: FileFingerprint) -> str:
    """The source version a file belongs to, as the legacy loaders named it."""
    when = fp.modified_at
    if strategy == "quarterly":
        return f"{when.year}-Q{(when.month - 1) // 3 + 1}"
    if strategy == "monthly":
        return f"{when.year}-{when.month:02d}"
    if strategy == "daily":
        return when.strftime("%Y-%m-%d")
    return fp.file_hash[:16]
