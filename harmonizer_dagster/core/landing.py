"""Deciding which landed files are new, changed and finished being written.

A file is ready once it shows the same signature (size and modification time, or ETag) on
two consecutive scans: a file still being written changes between scans and waits. Files
already handled with the same signature are never read again, so a scan of a folder full
of old files costs one listing.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmonizer_dagster.core.files import link_reason, safe_partition_key

INVALID_KEY_PARTS = ("...", "\n", "\r", "\t", "\0")


@dataclass(frozen=True)
class Landed:
    key: str
    signature: str


@dataclass(frozen=True)
class Ignored:
    """A landed file or folder that is not loaded, and why: so the caller can say so."""

    key: str
    reason: str


@dataclass
class ScanState:
    """What the previous scans saw: handled files, files waiting to be seen unchanged, and the
    ignored names already reported (each is reported once, not at every scan)."""

    handled: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, cursor: str | None) -> ScanState:
        if not cursor:
            return cls()
        data = json.loads(cursor)
        return cls(handled=data.get("handled", {}), waiting=data.get("waiting", {}), ignored=data.get("ignored", []))

    def dump(self) -> str:
        state = {"handled": self.handled, "waiting": self.waiting, "ignored": self.ignored}
        return json.dumps(state, sort_keys=True, separators=(",", ":"))

    def advance(self, listing: Iterable[Landed]) -> tuple[list[Landed], ScanState]:
        """Returns the files ready now, and the state to keep if they are all handled."""
        ready: list[Landed] = []
        handled: dict[str, str] = {}
        waiting: dict[str, str] = {}
        for item in listing:
            if self.handled.get(item.key) == item.signature:
                handled[item.key] = item.signature
            elif self.waiting.get(item.key) == item.signature:
                ready.append(item)
            else:
                waiting[item.key] = item.signature
        # Deleted files drop out of the state; a file reappearing later is new again.
        return ready, ScanState(handled=handled, waiting=waiting)


def usable_key(key: str) -> bool:
    """Keys Dagster accepts as partition keys and that stay inside the landing area."""
    return bool(key) and not any(part in key for part in INVALID_KEY_PARTS) and not key.startswith(("_", "."))


def scan_folder(landing_dir: Path, source: str, ignored: list[Ignored] | None = None) -> list[Landed]:
    """Every regular file under the source's folder; raises OSError when the folder is unreadable.

    Hidden and temporary names (starting with '.' or '_', e.g. partial uploads), names no
    partition key can hold, symbolic links (never followed, see core/files.py) and anything
    that is not a regular file are skipped; each is added to `ignored`, a skipped folder once,
    and the source folder itself as '.' when it is a link."""
    folder = landing_dir / source
    skipped = ignored if ignored is not None else []
    if folder.is_symlink():
        skipped.append(Ignored(".", f"the source folder {folder} {link_reason(landing_dir, folder)}"))
        return []
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} does not exist or is not a folder")
    listing: list[Landed] = []
    _scan(landing_dir, folder, "", listing, skipped)
    return listing


def _scan(landing_dir: Path, folder: Path, prefix: str, listing: list[Landed], skipped: list[Ignored]) -> None:
    """Adds the folder's entries in name order, descending into real folders only."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        key = prefix + entry.name
        is_folder = entry.is_dir(follow_symlinks=False)
        if entry.name.startswith((".", "_")):
            what, effect = ("folder", "nothing in it is loaded") if is_folder else ("file", "it is not loaded")
            skipped.append(
                Ignored(
                    key,
                    f"its name starts with '{entry.name[0]}', which marks a hidden or temporary {what} "
                    f"(a partial upload, say): {effect}; rename it to load it",
                )
            )
            continue
        try:
            if not usable_key(key):
                raise ValueError(f"{key!r} holds '...', a tab, a line break or a NUL, which a partition key cannot")
            safe_partition_key(key)
            if entry.is_symlink():
                raise ValueError(link_reason(landing_dir, Path(entry.path)))
            if is_folder:
                _scan(landing_dir, Path(entry.path), f"{key}/", listing, skipped)
                continue
            if not entry.is_file(follow_symlinks=False):
                raise ValueError("it is not a regular file (a FIFO, socket or device): it is not loaded")
            status = entry.stat(follow_symlinks=False)
        except ValueError as exc:
            skipped.append(Ignored(key, str(exc)))
            continue
        except FileNotFoundError:  # deleted while the folder was listed
            continue
        listing.append(Landed(key, f"{status.st_size}:{status.st_mtime_ns}"))


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
    re-uploads of a known key must be noticed too."""
    listing = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            name = item["Key"].removeprefix(prefix)
            if item["Key"].endswith("/") or not usable_key(name):
                continue
            uri = f"s3://{bucket}/{item['Key']}"
            listing.append(Landed(uri, f"{item['Size']}:{item['ETag']}"))
    return listing


def s3_prefix(root_prefix: str, source: str) -> str:
    root = root_prefix.strip("/")
    return f"{root}/{source}/" if root else f"{source}/"
