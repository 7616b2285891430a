"""What a long-running deployment removes so its disk stays flat: the staging a load left
behind when it failed (kept for a re-run to resume from, useless once nobody re-runs it) and
interrupted downloads. The Dagster side (run history, step output) is the housekeeping job's."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from harmonizer_dagster.core import staging

DOWNLOADS = "_downloads"


@dataclass(frozen=True)
class Swept:
    """What a sweep removed."""

    entries: int = 0
    bytes: int = 0

    def __add__(self, other: Swept) -> Swept:
        return Swept(self.entries + other.entries, self.bytes + other.bytes)


def _newest_change(path: Path) -> tuple[float, int]:
    """The newest modification time under `path`, and the bytes it holds (links not followed)."""
    newest, size = path.lstat().st_mtime, 0
    if path.is_dir() and not path.is_symlink():
        for folder, _, files in os.walk(path):
            newest = max(newest, os.lstat(folder).st_mtime)
            for name in files:
                status = os.lstat(os.path.join(folder, name))
                newest, size = max(newest, status.st_mtime), size + status.st_size
    else:
        size = path.lstat().st_size
    return newest, size


def sweep_staging(root: Path, older_than_days: float, now: float | None = None) -> Swept:
    """Removes each version's staging, and each interrupted download, untouched for the given
    days. A load in progress touches its staging at every checkpoint, so only abandoned ones go."""
    cutoff = (time.time() if now is None else now) - older_than_days * 86400
    swept = Swept()
    if not root.is_dir():
        return swept
    for source in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        versions = [p for p in source.iterdir() if p.name != DOWNLOADS]
        downloads = source / DOWNLOADS
        entries = versions + (list(downloads.iterdir()) if downloads.is_dir() else [])
        for entry in sorted(entries):
            newest, size = _newest_change(entry)
            if newest < cutoff:
                if entry.is_dir() and not entry.is_symlink():
                    staging.remove(entry)
                else:
                    entry.unlink(missing_ok=True)
                swept += Swept(1, size)
    return swept
