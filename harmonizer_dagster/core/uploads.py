"""Files handed in over HTTP, written into the landing area a source uses, so the landing
sensors load them as any dropped file.

A sensor must never see half a file: in a folder the bytes go to a hidden name (which every
scan skips) and are renamed into place once complete; in S3 they go up as a multipart upload,
which no listing shows until it is completed. An upload cut short leaves nothing behind. The
names allowed are those a landing folder loads: no path parts, nothing hidden, and an
extension the source's format is read from.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harmonizer_dagster.core.files import FileFingerprint, safe_partition_key, version_key
from harmonizer_dagster.core.landing import s3_prefix, usable_key
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.core.warehouse import Warehouse

# The extensions a file of each format may have; compressed text files add ".gz".
EXTENSIONS = {
    "csv": (".csv", ".tsv", ".txt"),
    "json": (".json",),
    "ndjson": (".ndjson", ".jsonl", ".json"),
    "parquet": (".parquet",),
    "xlsx": (".xlsx",),
    "fixed_width": (".txt", ".dat", ".fwf"),
}
# S3 parts: the smallest S3 takes is 5 MiB; an upload holds at most PARALLEL_PARTS + 1 in memory.
PART_BYTES = 8 << 20
PARALLEL_PARTS = 3
# The most buffers one writev takes.
IOV_MAX = os.sysconf("SC_IOV_MAX")


class RefusedName(ValueError):
    """A file name the landing area would not load."""


class UploadInProgress(RuntimeError):
    """Another upload of the same name is being written: one of them would silently be lost."""


class TooLarge(ValueError):
    """The file is over the upload size limit (HARMONIZER_UPLOAD_MAX_BYTES)."""


def checked_name(spec: SourceSpec, name: str) -> str:
    """`name` when a landing folder of the source would load a file so called; RefusedName saying why not."""
    if not name or "/" in name or "\\" in name:
        raise RefusedName(f"{name!r} is not a plain file name: a name has no folder or path parts")
    if name.startswith((".", "_")):
        raise RefusedName(
            f"{name!r} starts with '{name[0]}', which marks a hidden or temporary file: it is never loaded"
        )
    if not usable_key(name):
        raise RefusedName(f"{name!r} holds '...', a tab, a line break or a NUL, which a file name here cannot")
    safe_partition_key(name)
    allowed = EXTENSIONS[spec.format]
    if spec.format not in ("parquet", "xlsx") and spec.compression != "none":
        allowed = (*allowed, *(extension + ".gz" for extension in allowed))
    if not name.lower().endswith(allowed):
        raise RefusedName(f"{name!r}: a {spec.format} file of {spec.name} ends with {' or '.join(allowed)}")
    return name


class Upload(ABC):
    """One file being written: `write` its bytes in order, then `commit` (it appears whole in the
    landing area) or `abort` (nothing is left). Hashes as it writes: no second read of the file."""

    def __init__(self, partition_key: str, max_bytes: int):
        self.partition_key = partition_key
        self.max_bytes = max_bytes
        self.size = 0
        self._digest = hashlib.sha256()

    def write(self, chunks: Sequence[bytes]) -> None:
        """Appends the chunks, in order: several at a time, so a caller hands over a megabyte
        per call rather than a network read's worth."""
        self.size += sum(len(chunk) for chunk in chunks)
        if self.size > self.max_bytes:
            raise TooLarge(f"the file is over the upload limit of {self.max_bytes:,} bytes")
        for chunk in chunks:
            self._digest.update(chunk)
        self._store(chunks)

    def commit(self) -> FileFingerprint:
        self._finish()
        return FileFingerprint(self._digest.hexdigest(), self.size, datetime.now(tz=UTC))

    @abstractmethod
    def _store(self, chunks: Sequence[bytes]) -> None: ...

    @abstractmethod
    def _finish(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...


class FolderUpload(Upload):
    """A file written as `.NAME.upload` beside its final place, under an exclusive lock on that
    file (so two uploads of one name, from any process, cannot interleave) and renamed into place."""

    def __init__(self, folder: Path, name: str, max_bytes: int):
        super().__init__(name, max_bytes)
        self.final = folder / name
        self.partial = folder / f".{name}.upload"
        self._fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The lock is on the file opened: an upload that just renamed it into place leaves
            # this descriptor on the landed file, which must not be written over.
            if os.fstat(self._fd).st_ino != os.stat(self.partial, follow_symlinks=False).st_ino:
                raise BlockingIOError(errno.EWOULDBLOCK, "renamed meanwhile")
            os.ftruncate(self._fd, 0)
        except (BlockingIOError, FileNotFoundError):
            os.close(self._fd)
            raise UploadInProgress(f"{name} is being uploaded by another request: try again once it is done") from None
        except BaseException:
            os.close(self._fd)
            raise

    def _store(self, chunks: Sequence[bytes]) -> None:
        for start in range(0, len(chunks), IOV_MAX):
            group = chunks[start : start + IOV_MAX]
            written = os.writev(self._fd, group)
            if written < sum(len(chunk) for chunk in group):  # a short write: the rest at once
                rest = memoryview(b"".join(group))[written:]
                while rest:
                    rest = rest[os.write(self._fd, rest) :]

    def _finish(self) -> None:
        try:
            os.rename(self.partial, self.final)
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.partial)
        with contextlib.suppress(OSError):
            os.close(self._fd)


class S3Upload(Upload):
    """A multipart upload to the object's own key: S3 shows the object only once it is completed."""

    def __init__(self, client: Any, bucket: str, key: str, max_bytes: int, claimed: set[str], lock: threading.Lock):
        super().__init__(f"s3://{bucket}/{key}", max_bytes)
        self.client, self.bucket, self.key = client, bucket, key
        self._claimed, self._lock = claimed, lock
        with lock:
            if key in claimed:
                raise UploadInProgress(f"{key} is being uploaded by another request: try again once it is done")
            claimed.add(key)
        try:
            self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        except BaseException:
            self._release()
            raise
        self._buffer = bytearray()
        # Parts go up a few at once, as boto3's own uploads send them; each holds its bytes until sent.
        self._sender = ThreadPoolExecutor(max_workers=PARALLEL_PARTS, thread_name_prefix="s3-part")
        self._sending: list[Future] = []

    def _store(self, chunks: Sequence[bytes]) -> None:
        for chunk in chunks:
            self._buffer += chunk
        if len(self._buffer) >= PART_BYTES:
            self._send()

    def _send(self) -> None:
        """Sends the buffer as the next part, waiting first while PARALLEL_PARTS are in flight."""
        in_flight = [future for future in self._sending if not future.done()]
        if len(in_flight) >= PARALLEL_PARTS:
            in_flight[0].result()
        body, self._buffer = self._buffer, bytearray()
        number = len(self._sending) + 1
        self._sending.append(
            self._sender.submit(
                self.client.upload_part,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            )
        )

    def _finish(self) -> None:
        try:
            if self._buffer or not self._sending:
                self._send()
            parts = [{"PartNumber": n, "ETag": f.result()["ETag"]} for n, f in enumerate(self._sending, start=1)]
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.abort()
            raise
        finally:
            self._sender.shutdown()
        self._release()

    def abort(self) -> None:
        self._sender.shutdown(cancel_futures=True)
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._claimed.discard(self.key)


class LandingArea(ABC):
    """Where a deployment's files land: its folder, or its S3 bucket when it has one."""

    @abstractmethod
    def start(self, spec: SourceSpec, name: str, max_bytes: int) -> Upload:
        """An upload of `name` (checked already) for the source."""


@dataclass
class FolderLanding(LandingArea):
    landing_dir: Path

    def start(self, spec: SourceSpec, name: str, max_bytes: int) -> Upload:
        folder = self.landing_dir / spec.name
        if folder.is_symlink():
            raise RefusedName(f"the landing folder of {spec.name} is a symbolic link: nothing is written through it")
        folder.mkdir(parents=True, exist_ok=True)
        return FolderUpload(folder, name, max_bytes)


class S3Landing(LandingArea):
    def __init__(self, client: Any, bucket: str, prefix: str = ""):
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self._claimed: set[str] = set()
        self._lock = threading.Lock()

    def start(self, spec: SourceSpec, name: str, max_bytes: int) -> Upload:
        key = s3_prefix(self.prefix, spec.name) + name
        return S3Upload(self.client, self.bucket, key, max_bytes, self._claimed, self._lock)


@dataclass(frozen=True)
class HandedIn:
    """A file handed in: the version it is, and who handed it in."""

    upload_id: str
    source: str
    name: str
    partition_key: str
    file_hash: str
    size_bytes: int
    version: str
    uploaded_by: str
    run_id: str | None = None


def record_upload(
    store: Warehouse, spec: SourceSpec, name: str, partition_key: str, fp: FileFingerprint, by: str
) -> HandedIn:
    """Records a completed upload, with the source version its name or time makes it."""
    handed = HandedIn(
        uuid.uuid4().hex,
        spec.name,
        name,
        partition_key,
        fp.file_hash,
        fp.size_bytes,
        version_key(spec.version_strategy, fp, name, spec.version_pattern),
        by,
    )
    store.query(
        "INSERT INTO {schema}.api_uploads (upload_id, source_type, partition_key, file_hash, file_size_bytes, "
        "source_version, uploaded_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (handed.upload_id, spec.name, partition_key, fp.file_hash, fp.size_bytes, handed.version, by),
    )
    return handed


def set_upload_run(store: Warehouse, upload_id: str, run_id: str) -> None:
    """The run launched at once to load an upload."""
    store.query("UPDATE {schema}.api_uploads SET run_id = %s WHERE upload_id = %s", (run_id, upload_id))


def find_upload(store: Warehouse, upload_id: str) -> HandedIn | None:
    rows = store.query(
        "SELECT upload_id, source_type, partition_key, file_hash, file_size_bytes, source_version, uploaded_by, "
        "run_id FROM {schema}.api_uploads WHERE upload_id = %s",
        (upload_id,),
    )
    if not rows:
        return None
    upload_id, source, key, file_hash, size, version, by, run_id = rows[0]
    return HandedIn(upload_id, source, key.rsplit("/", 1)[-1], key, file_hash, int(size), version, by, run_id)
