"""Deciding which landed files are new, changed and finished being written, and how they are
grouped into runs.

A file is ready once it shows the same signature (size and modification time, or ETag) on
two consecutive scans: a file still being written changes between scans and waits. What the
scans remember is bounded whatever the number of files: a high-water mark of change times
below which every file is handled, plus short digests of the few files at or above it, so a
scan of a folder full of old files costs one listing and never reads a file again.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harmonizer_dagster.core.files import link_reason, safe_partition_key

INVALID_KEY_PARTS = ("...", "\n", "\r", "\t", "\0")
# Files taken into account per scan, and digests kept per kind: the cursor stays under
# 100 KB (15 bytes a digest); files beyond the first TRACKED are looked at by later scans.
TRACKED = 2_000
DIGEST_CHARS = 12

T = TypeVar("T")


@dataclass(frozen=True)
class Landed:
    """A landed file: `changed` is the later of its modification and status-change times in
    nanoseconds (an S3 object's LastModified), so a copy that keeps an old modification time
    (cp -p, rsync -t) still counts as changed: its status-change time is new."""

    key: str
    signature: str
    changed: int = 0


@dataclass(frozen=True)
class Ignored:
    """A landed file or folder that is not loaded, and why: so the caller can say so."""

    key: str
    reason: str
    changed: int = 0


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:DIGEST_CHARS]


@dataclass
class ScanState:
    """What the previous scans saw. Every file changed before `mark` is handled; `seen` holds
    the files handled at or after it, `waiting` the files seen once (to be seen unchanged
    once more) and `ignored` the names at or after it already reported (each is reported
    once, not at every scan): digests of key and signature, never the files themselves."""

    mark: int = 0
    seen: set[str] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, cursor: str | None) -> ScanState:
        """The state a cursor holds; an empty one, or one written before the mark existed,
        starts over: every file is looked at again, and those loaded already start no run."""
        data = json.loads(cursor) if cursor else {}
        if "mark" not in data:
            return cls()
        return cls(data["mark"], set(data["seen"]), set(data["waiting"]), set(data["ignored"]))

    def dump(self) -> str:
        state = {"mark": self.mark, **{name: sorted(getattr(self, name)) for name in ("seen", "waiting", "ignored")}}
        return json.dumps(state, separators=(",", ":"))

    def advance(self, listing: Iterable[Landed], ignored: Iterable[Ignored] = ()) -> Scan:
        """Sorts one listing into files ready now, files to wait for and names to report."""
        kept: list[tuple[int, str]] = []
        candidates: list[Landed] = []
        for item in listing:
            if item.changed < self.mark:
                continue
            digest = _digest(item.key, item.signature)
            if digest in self.seen:
                kept.append((item.changed, digest))
            else:
                candidates.append(item)
        # Oldest changes first, so the mark only ever passes files that were handled.
        candidates.sort(key=lambda item: (item.changed, item.key))
        admitted, overflow = candidates[:TRACKED], candidates[TRACKED:]
        ready = [item for item in admitted if _digest(item.key, item.signature) in self.waiting]
        fresh = [item for item in admitted if _digest(item.key, item.signature) not in self.waiting]
        current = [item for item in ignored if item.changed >= self.mark]
        reported = [item for item in current if _digest(item.key) not in self.ignored]
        return Scan(self.mark, ready, fresh, overflow, kept, current, reported)


@dataclass
class Scan:
    """One scan's verdict: `ready` files to hash and load, `reported` names to warn about."""

    mark: int
    ready: list[Landed]
    fresh: list[Landed]
    overflow: list[Landed]
    kept: list[tuple[int, str]]
    ignored: list[Ignored]
    reported: list[Ignored]

    def finish(self, left: Sequence[Landed] = ()) -> ScanState:
        """The state to keep once every ready file but `left` is handled (left ones stay ready)."""
        left_keys = {item.key for item in left}
        done = self.kept + [
            (item.changed, _digest(item.key, item.signature)) for item in self.ready if item.key not in left_keys
        ]
        pending = [*self.fresh, *left, *self.overflow]
        if pending:
            mark = min(item.changed for item in pending)
        else:
            mark = max([self.mark, *(changed for changed, _ in done), *(item.changed for item in self.ignored)])
        # Should files keep arriving below one that never settles, the oldest digests give
        # way first: such a file is looked at again, and, loaded already, starts no run.
        seen = sorted((entry for entry in done if entry[0] >= mark), reverse=True)[:TRACKED]
        return ScanState(
            mark=mark,
            seen={digest for _, digest in seen},
            waiting={_digest(item.key, item.signature) for item in [*self.fresh, *left]},
            ignored=set([_digest(item.key) for item in self.ignored if item.changed >= mark][:TRACKED]),
        )


def group_runs(items: Sequence[T], size: Callable[[T], int], max_files: int, max_bytes: int) -> list[list[T]]:
    """Consecutive groups of at most `max_files` items and `max_bytes` bytes: one run each.
    A file larger than `max_bytes` gets a run of its own."""
    groups: list[list[T]] = []
    total = 0
    for item in items:
        if not groups or len(groups[-1]) >= max_files or total + size(item) > max_bytes:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += size(item)
    return groups


def run_key(file_hashes: Iterable[str]) -> str:
    """The same bytes make the same key whatever the files are called: one file's key is its
    content hash, several files' the digest of their sorted hashes."""
    hashes = sorted(set(file_hashes))
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def usable_key(key: str) -> bool:
    """Keys Dagster accepts as partition keys and that stay inside the landing area."""
    return bool(key) and not any(part in key for part in INVALID_KEY_PARTS) and not key.startswith(("_", "."))


def scan_folder(landing_dir: Path, source: str, ignored: list[Ignored] | None = None, since: int = 0) -> list[Landed]:
    """Every regular file under the source's folder changed at or after `since` (in name
    order); raises OSError when the folder is unreadable.

    Hidden and temporary names (starting with '.' or '_', e.g. partial uploads), names no
    partition key can hold, symbolic links (never followed, see core/files.py) and anything
    that is not a regular file are skipped; each is added to `ignored`, a skipped folder once,
    and the source folder itself as '.' when it is a link. Every folder is walked and every
    entry's times read (a file rewritten in place leaves its folder's times alone), but
    entries older than `since` cost nothing more."""
    folder = landing_dir / source
    skipped = ignored if ignored is not None else []
    if folder.is_symlink():
        status = folder.lstat()
        reason = f"the source folder {folder} {link_reason(landing_dir, folder)}"
        skipped.append(Ignored(".", reason, max(status.st_mtime_ns, status.st_ctime_ns)))
        return []
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} does not exist or is not a folder")
    listing: list[Landed] = []
    _scan(landing_dir, folder, "", since, listing, skipped)
    return listing


def _scan(
    landing_dir: Path, folder: Path, prefix: str, since: int, listing: list[Landed], skipped: list[Ignored]
) -> None:
    """Adds the folder's entries changed since `since` in name order, descending into real folders only."""
    entries = []
    with os.scandir(folder) as scan:
        for entry in scan:
            is_folder = entry.is_dir(follow_symlinks=False)
            try:
                status = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # deleted while the folder was listed
                continue
            changed = max(status.st_mtime_ns, status.st_ctime_ns)
            if changed >= since or (is_folder and not entry.name.startswith((".", "_"))):
                entries.append((entry.name, entry, is_folder, status, changed))
    entries.sort(key=lambda found: found[0])
    for name, entry, is_folder, status, changed in entries:
        key = prefix + name
        if name.startswith((".", "_")):
            what, effect = ("folder", "nothing in it is loaded") if is_folder else ("file", "it is not loaded")
            reason = (
                f"its name starts with '{name[0]}', which marks a hidden or temporary {what} "
                f"(a partial upload, say): {effect}; rename it to load it"
            )
            skipped.append(Ignored(key, reason, changed))
            continue
        try:
            if not usable_key(key):
                raise ValueError(f"{key!r} holds '...', a tab, a line break or a NUL, which a partition key cannot")
            safe_partition_key(key)
            if entry.is_symlink():
                raise ValueError(link_reason(landing_dir, Path(entry.path)))
            if is_folder:
                _scan(landing_dir, Path(entry.path), f"{key}/", since, listing, skipped)
                continue
            if not entry.is_file(follow_symlinks=False):
                raise ValueError("it is not a regular file (a FIFO, socket or device): it is not loaded")
        except ValueError as exc:
            if changed >= since:
                skipped.append(Ignored(key, str(exc), changed))
            continue
        except FileNotFoundError:  # deleted while the folder was listed
            continue
        listing.append(Landed(key, f"{status.st_size}:{status.st_mtime_ns}", changed))


def nearest_keys(key: str, known: Iterable[str], count: int = 5) -> list[str]:
    """The `count` known keys most like `key`, closest first, however far: a message about a
    mistyped or renamed file then names the ones meant."""
    return difflib.get_close_matches(key, list(known), n=count, cutoff=0)


def missing_file_message(landing_dir: Path, source: str, key: str) -> str:
    """Why a partition of `source` cannot be loaded when its file is not in the landing folder,
    naming the nearest keys that are, so the person who typed or registered it can act."""
    folder = landing_dir / source
    try:
        known = [item.key for item in scan_folder(landing_dir, source)]
    except OSError:
        return f"{source}: no file {key}: the landing folder {folder} does not exist or cannot be read"
    if not known:
        return f"{source}: no file {key} in {folder}, which holds no files"
    return f"{source}: no file {key} in {folder}; nearest known keys: {', '.join(nearest_keys(key, known))}"


def scan_s3(client: Any, bucket: str, prefix: str) -> list[Landed]:
    """Every object under the prefix, keyed by its full s3:// URI and signed by its ETag.

    A full listing, not a since-key query: keys that sort before the last one seen and
    re-uploads of a known key must be noticed too (a re-upload gets a new LastModified)."""
    listing = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            name = item["Key"].removeprefix(prefix)
            if item["Key"].endswith("/") or not usable_key(name):
                continue
            uri = f"s3://{bucket}/{item['Key']}"
            changed = int(item["LastModified"].timestamp() * 1e9)
            listing.append(Landed(uri, f"{item['Size']}:{item['ETag']}", changed))
    return listing


def s3_prefix(root_prefix: str, source: str) -> str:
    root = root_prefix.strip("/")
    return f"{root}/{source}/" if root else f"{source}/"
