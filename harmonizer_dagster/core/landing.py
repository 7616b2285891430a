"""Deciding which landed files are new, changed and finished being written.

A file is ready once it shows the same signature (size and modification time, or ETag) on
two consecutive scans: a file still being written changes between scans and waits. Files
already handled with the same signature are never read again, so a scan of a folder full
of old files costs one listing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmonizer_dagster.core.files import safe_partition_key

INVALID_KEY_PARTS = ("...", "\n", "\r", "\t", "\0")


@dataclass(frozen=True)
class Landed:
    key: str
    signature: str


@dataclass
class ScanState:
    """What the previous scans saw: handled files, and files waiting to be seen unchanged."""

    handled: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, cursor: str | None) -> ScanState:
        if not cursor:
            return cls()
        data = json.loads(cursor)
        return cls(handled=data.get("handled", {}), waiting=data.get("waiting", {}))

    def dump(self) -> str:
        return json.dumps({"handled": self.handled, "waiting": self.waiting}, sort_keys=True, separators=(",", ":"))

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


def scan_folder(landing_dir: Path, source: str) -> list[Landed]:
    """Every file under the source's folder; raises OSError when the folder is unreadable."""
    folder = landing_dir / source
    listing = []
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if not usable_key(key) or any(part.startswith((".", "_")) for part in Path(key).parts):
            continue
        try:
            safe_partition_key(key)
            stat = path.stat()
        except (ValueError, FileNotFoundError):
            continue
        if path.is_file():
            listing.append(Landed(key, f"{stat.st_size}:{stat.st_mtime_ns}"))
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} does not exist or is not a folder")
    return listing


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
