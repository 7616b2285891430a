"""Fetching a pull-based source's upstream file into its landing folder.

A scheduled fetch only drops the file where the landing sensor looks: ingestion has one
code path whatever brought the file.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from harmonizer_dagster.core.files import HASH_CHUNK_BYTES, split_s3_uri
from harmonizer_dagster.core.spec import Fetch


def upstream_location(fetch: Fetch) -> str | None:
    """The URL, path or s3:// URI to fetch from; None while an env-named URL is unset."""
    if fetch.url_env:
        return os.environ.get(fetch.url_env) or None
    return fetch.url or fetch.path or fetch.s3


def fetch_upstream(fetch: Fetch, landing_dir: Path, source: str, when: datetime, s3_client: Any = None) -> Path:
    location = upstream_location(fetch)
    if location is None:
        raise ValueError(f"{source}: the upstream location is not configured (set {fetch.url_env})")
    target = landing_dir / source / when.strftime(fetch.file_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written under a hidden name and renamed: the sensor never sees a half-fetched file.
    partial = target.with_name(f".{target.name}.part")
    with partial.open("wb") as out:
        if location.startswith("s3://"):
            bucket, key = split_s3_uri(location)
            for chunk in s3_client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(HASH_CHUNK_BYTES):
                out.write(chunk)
        elif location.startswith(("http://", "https://")):
            with urllib.request.urlopen(location, timeout=300) as response:
                shutil.copyfileobj(response, out, HASH_CHUNK_BYTES)
        else:
            with Path(location).open("rb") as source_file:
                shutil.copyfileobj(source_file, out, HASH_CHUNK_BYTES)
    os.replace(partial, target)
    return target
