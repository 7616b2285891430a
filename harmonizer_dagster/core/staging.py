"""Staged step outputs on disk, written in checkpointed batches.

A step writes batch k's files under temporary names, renames them, then drops a marker:
a batch counts only once its marker exists, so a step killed mid-batch resumes at the first
batch without a marker and nothing is half-written. A step is done once its summary exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import polars as pl

_MARKER = "batch-{index:06d}.done"


def staging_dir(root: Path, source: str, partition_key: str, file_hash: str, fingerprint: str) -> Path:
    """Staging belongs to one file, one partition and one spec-and-rules fingerprint: outputs
    staged under an older spec or rule set are never reused."""
    key_digest = hashlib.sha256(f"{partition_key}\0{fingerprint}".encode()).hexdigest()[:16]
    return root / source / f"{file_hash[:32]}-{key_digest}"


class StepStage:
    """The staged output of one step of one file version."""

    def __init__(self, directory: Path):
        self.directory = directory

    def completed_batches(self) -> int:
        count = 0
        while (self.directory / _MARKER.format(index=count)).exists():
            count += 1
        return count

    def prepare(self, batch_rows: int | None = None) -> int:
        """Drops leftovers of an interrupted batch; returns how many batches are complete.
        Batches staged with another batch size cannot be resumed and are dropped."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if batch_rows is not None:
            recorded = self.directory / "batch_rows"
            if recorded.exists() and recorded.read_text() != str(batch_rows):
                remove(self.directory)
                self.directory.mkdir(parents=True)
            _atomic_write(recorded, str(batch_rows))
        done = self.completed_batches()
        for path in self.directory.iterdir():
            index = _batch_index(path)
            if path.name.endswith(".tmp") or (index is not None and index >= done):
                path.unlink()
        return done

    def write_batch(self, index: int, frames: dict[str, pl.DataFrame]) -> None:
        for name, frame in frames.items():
            target = self.directory / f"{name}-{index:06d}.parquet"
            temporary = target.with_suffix(".parquet.tmp")
            frame.write_parquet(temporary, compression="zstd", compression_level=1)
            os.replace(temporary, target)
        _atomic_write(self.directory / _MARKER.format(index=index), "")

    def write_final(self, frames: dict[str, pl.DataFrame]) -> None:
        """Outputs that need the whole input, under fixed names: writing them again replaces them."""
        for name, frame in frames.items():
            target = self.directory / f"{name}-final.parquet"
            temporary = target.with_suffix(".parquet.tmp")
            frame.write_parquet(temporary, compression="zstd", compression_level=1)
            os.replace(temporary, target)

    def files(self, name: str) -> list[Path]:
        return sorted(self.directory.glob(f"{name}-*.parquet"))

    def summary(self) -> dict[str, Any] | None:
        path = self.directory / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        _atomic_write(self.directory / "summary.json", json.dumps(summary, sort_keys=True))
        return summary


def _batch_index(path: Path) -> int | None:
    stem = path.name.split(".")[0]
    digits = stem.rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else None


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
