"""Deterministic sample data with known, counted defects.

The shipped samples and the benchmark files come from here. Every defect is placed on a
distinct row, so what the pipeline must report (rejected, skipped, imported...) follows
from the counts alone; `expected` in the manifest is what the smoke job checks.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

REGISTRY_HEADER = {
    "corp_number": "Corp Number",
    "legal_name": "Legal Name",
    "entity_type": "Entity Type",
    "status": "Status",
    "incorporation_date": "Incorporation Date",
    "home_office_address": "Home Office Address",
    "home_office_city": "Home Office City",
    "home_office_state": "Home Office State",
    "home_office_zip": "Home Office Zip",
    "registered_agent": "Registered Agent",
    "email": "Email",
    "phone": "Phone",
}
# Defects per 1,000 rows. Rejected: letters in zips, missing names, impossible dates.
# Repaired by harmonization: 4-digit zips (with a warning), mixed-case emails, stray spaces.
DEFECTS_PER_1000 = {
    "zip_4_digits": 12,
    "zip_letters": 4,
    "missing_legal_name": 5,
    "impossible_date": 3,
    "mixed_case_email": 25,
    "padded_spaces": 25,
    "duplicate_key": 6,
}
REJECTING = ("zip_letters", "missing_legal_name", "impossible_date")
_WORDS = np.array(
    [
        "Acme",
        "Blue",
        "Cedar",
        "Delta",
        "Eagle",
        "Falcon",
        "Granite",
        "Harbor",
        "Iron",
        "Juniper",
        "Keystone",
        "Liberty",
        "Maple",
        "Northern",
        "Oak",
        "Pioneer",
        "Quarry",
        "River",
        "Summit",
        "Timber",
        "Union",
        "Valley",
        "Willow",
        "Yankee",
        "Zenith",
    ]
)
_SUFFIX = np.array(["Inc", "LLC", "Corp", "Holdings", "Partners", "Group", "Co"])
_TYPES = np.array(["CORPORATION", "LLC", "LP", "LLP", "NONPROFIT"])
_STATUS = np.array(["ACTIVE", "ACTIVE", "ACTIVE", "INACTIVE", "DISSOLVED"])
_CITIES = np.array(["Albany", "Boston", "Concord", "Hartford", "Montpelier", "Providence", "Trenton", "Dover"])
_STATES = np.array(["NY", "MA", "NH", "CT", "VT", "RI", "NJ", "DE"])
_STREETS = np.array(["Main St", "Oak Ave", "Elm St", "State St", "Park Rd", "Mill Ln", "Church St"])


@dataclass(frozen=True)
class RegistryFile:
    rows: int
    defects: dict[str, int]
    imported_keys: dict[str, str]  # corp_number -> final status, for expected upsert counts


def _registry_frame(start: int, rows: int, seed: int, revision: int) -> pl.DataFrame:
    """Clean rows for corp numbers start+1 .. start+rows; the same numbers always get the
    same values, except that each later `revision` flips the status of about 4% of them."""
    ids = np.arange(start + 1, start + rows + 1)
    rng = np.random.default_rng(seed + start)
    status = _STATUS[rng.integers(0, len(_STATUS), rows)]
    for number in range(1, revision + 1):
        flipped = np.random.default_rng(seed * 31 + number * 1009 + start).random(rows) < 0.04
        status = np.where(flipped, np.where(status == "ACTIVE", "INACTIVE", "ACTIVE"), status)
    day = rng.integers(0, 365 * 60, rows)
    dates = (np.datetime64("1965-01-01") + day.astype("timedelta64[D]")).astype(str)
    formats = rng.integers(0, 3, rows)
    frame = pl.DataFrame(
        {
            "corp_number": [f"{i:06d}" for i in ids],
            "legal_name": np.char.add(
                np.char.add(
                    np.char.add(_WORDS[rng.integers(0, len(_WORDS), rows)], " "),
                    np.char.add(_WORDS[rng.integers(0, len(_WORDS), rows)], " "),
                ),
                _SUFFIX[rng.integers(0, len(_SUFFIX), rows)],
            ),
            "entity_type": _TYPES[rng.integers(0, len(_TYPES), rows)],
            "status": status,
            "iso_date": dates,
            "date_format": formats,
            "home_office_address": np.char.add(
                np.char.add(rng.integers(1, 9999, rows).astype(str), " "), _STREETS[rng.integers(0, 7, rows)]
            ),
            "home_office_city": _CITIES[rng.integers(0, len(_CITIES), rows)],
            "home_office_state": _STATES[rng.integers(0, len(_STATES), rows)],
            "zip_number": rng.integers(1000, 99999, rows),
            "registered_agent": np.char.add(_WORDS[rng.integers(0, len(_WORDS), rows)], " Registered Agents"),
            "phone_number": rng.integers(2_000_000_000, 9_999_999_999, rows),
        }
    )
    return frame.with_columns(
        incorporation_date=pl.when(pl.col("date_format") == 0)
        .then(pl.col("iso_date"))
        .when(pl.col("date_format") == 1)
        .then(pl.col("iso_date").str.strptime(pl.Date).dt.strftime("%m/%d/%Y"))
        .otherwise(pl.col("iso_date").str.strptime(pl.Date).dt.strftime("%d-%b-%Y")),
        home_office_zip=pl.col("zip_number").cast(pl.Utf8).str.zfill(5),
        email=pl.concat_str([pl.lit("info"), pl.col("corp_number"), pl.lit("@example.com")]),
        phone=pl.format(
            "({}) {}-{}",
            *(pl.col("phone_number").cast(pl.Utf8).str.slice(a, n) for a, n in ((0, 3), (3, 3), (6, 4))),
        ),
    ).select(list(REGISTRY_HEADER))


def registry_rows(start: int, rows: int, seed: int, revision: int = 0) -> tuple[pl.DataFrame, RegistryFile]:
    """Rows with defects placed on distinct rows, plus what the pipeline must make of them.
    Each revision of a file places its defects on other rows."""
    base = _registry_frame(start, rows, seed, revision)
    rng = np.random.default_rng(seed * 7919 + revision * 104729 + start)
    counts = {name: rows * per // 1000 for name, per in DEFECTS_PER_1000.items()}
    # A zip loses its leading zero only if it had one, so 4-digit zips come from those rows.
    leading_zero = base["home_office_zip"].str.starts_with("0").to_numpy()
    zero_rows, other_rows = (
        rng.permutation(np.flatnonzero(leading_zero)),
        rng.permutation(np.flatnonzero(~leading_zero)),
    )
    positions = {"zip_4_digits": zero_rows[: counts["zip_4_digits"]]}
    offset = 0
    for name in ("zip_letters", "missing_legal_name", "impossible_date", "mixed_case_email", "padded_spaces"):
        positions[name] = other_rows[offset : offset + counts[name]]
        offset += counts[name]
    # Copies of untouched records, with another status, placed before all originals: the
    # original (last) occurrence wins.
    copied = np.sort(other_rows[offset : offset + counts["duplicate_key"]])
    row = pl.int_range(pl.len())

    def at(name: str) -> pl.Expr:
        return row.is_in(positions[name].tolist())

    dirty = base.with_columns(
        home_office_zip=pl.when(at("zip_4_digits"))
        .then(pl.col("home_office_zip").str.slice(1))
        .when(at("zip_letters"))
        .then(pl.lit("AB") + pl.col("home_office_zip").str.slice(2))
        .otherwise(pl.col("home_office_zip")),
        legal_name=pl.when(at("missing_legal_name"))
        .then(pl.lit(""))
        .when(at("padded_spaces"))
        .then(pl.lit("  ") + pl.col("legal_name") + pl.lit(" "))
        .otherwise(pl.col("legal_name")),
        incorporation_date=pl.when(at("impossible_date"))
        .then(pl.lit("02/30/2020"))
        .otherwise(pl.col("incorporation_date")),
        email=pl.when(at("mixed_case_email")).then(pl.col("email").str.to_titlecase()).otherwise(pl.col("email")),
    )
    if len(copied):
        first = int(copied[0])
        copies = dirty[copied.tolist()].with_columns(status=pl.lit("REVOKED"))
        dirty = pl.concat([dirty[:first], copies, dirty[first:]])
    rejected = set(np.concatenate([positions[name] for name in REJECTING]).tolist())
    keys, statuses = base["corp_number"].to_list(), base["status"].to_list()
    return dirty.rename(REGISTRY_HEADER), RegistryFile(
        rows=dirty.height,
        defects={**{name: len(p) for name, p in positions.items()}, "duplicate_key": len(copied)},
        imported_keys={keys[i]: statuses[i] for i in range(rows) if i not in rejected},
    )


def write_registry_csv(
    path: Path, rows: int, seed: int, revision: int = 0, chunk_rows: int = 500_000
) -> dict[str, Any]:
    """Writes a registry CSV (gzip when the name ends in .gz) in chunks; returns its manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    totals: dict[str, int] = {}
    imported: dict[str, str] = {}
    written = 0
    # mtime=0 keeps gzip output byte-identical from run to run.
    with (
        path.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.suffix == ".gz" else raw as handle,
    ):
        for start in range(0, rows, chunk_rows):
            frame, info = registry_rows(start, min(chunk_rows, rows - start), seed, revision)
            frame.write_csv(handle, include_header=start == 0)
            written += info.rows
            imported.update(info.imported_keys)
            for name, count in info.defects.items():
                totals[name] = totals.get(name, 0) + count
    failed = sum(totals[name] for name in REJECTING)
    return {
        "records_in_file": written,
        "records_failed": failed,
        "records_skipped": totals["duplicate_key"],
        "records_imported": written - failed - totals["duplicate_key"],
        "warnings": totals["zip_4_digits"] + totals["duplicate_key"],
        "defects": totals,
        "_imported_keys": imported,
    }


def _court_records(count: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        records.append(
            {
                "case_number": f"{['cv', 'CR', 'FA'][i % 3]}-2026-{i + 1:06d}",
                "court": f"  {['Albany', 'Kings', 'Suffolk'][i % 3]}   County Court ",
                "type": ["Civil", "criminal", "FAMILY"][i % 3],
                "filed": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}"
                if i % 2
                else f"{1 + i % 12:02d}/{1 + i % 28:02d}/2026",
                "party": f"{_WORDS[i % len(_WORDS)]} {_SUFFIX[i % len(_SUFFIX)]}",
                "corp_number": f"{int(rng.integers(1, 1000)):06d}",
                "amount": f"{int(rng.integers(100, 100000))}.{int(rng.integers(0, 99)):02d}",
                "sealed": bool(i % 5 == 0),
            }
        )
    # Known defects: two missing courts, two impossible dates, one bad case number, one repeat.
    for i in (3, 17):
        records[i]["court"] = None
    for i in (5, 23):
        records[i]["filed"] = "2026-02-30"
    records[11]["case_number"] = "BAD-CASE"
    records.append({**records[8], "amount": "999.99"})
    return records, {
        "records_in_file": count + 1,
        "records_failed": 5,
        "records_skipped": 1,
        "records_imported": count - 5,
        "warnings": 1,
    }


def _news_articles(count: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    records = [
        {
            "id": f"news-{i + 1:05d}",
            "title": f" {_WORDS[i % len(_WORDS)]} {_SUFFIX[i % len(_SUFFIX)]}  announces   results ",
            "published": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:15:00Z",
            "source": ["Gazette", "Herald", "Tribune"][i % 3],
            "url": f"https://news.example.com/{i + 1}",
            "word_count": 200 + i,
            "corp_number": f"{1 + i:06d}",
        }
        for i in range(count)
    ]
    records[4]["title"] = "   "  # missing headline
    records[9]["published"] = "yesterday"  # not a timestamp
    records[12]["url"] = "ftp://old.example.com/12"  # warning only
    return records, {
        "records_in_file": count,
        "records_failed": 2,
        "records_skipped": 0,
        "records_imported": count - 2,
        "warnings": 1,
    }


def write_samples(root: Path, registry_rows_per_file: int = 1000) -> dict[str, Any]:
    """Writes the shipped samples under root/<source>/ and root/manifest.json."""
    manifest: dict[str, Any] = {}
    first = write_registry_csv(root / "business_registry" / "registry_2026-Q3.csv", registry_rows_per_file, seed=3)
    second = write_registry_csv(
        root / "business_registry" / "registry_2026-Q4.csv.gz", registry_rows_per_file, seed=3, revision=1
    )
    # The Q4 file is loaded after Q3: keys new to it are inserted, keys whose status moved are updated.
    before, after = first.pop("_imported_keys"), second.pop("_imported_keys")
    second["records_inserted"] = len(after.keys() - before.keys())
    second["records_updated"] = sum(1 for k, v in after.items() if k in before and before[k] != v)
    second["records_unchanged"] = second["records_imported"] - second["records_inserted"] - second["records_updated"]
    first.update(records_inserted=first["records_imported"], records_updated=0, records_unchanged=0)
    manifest["business_registry"] = {"registry_2026-Q3.csv": first, "registry_2026-Q4.csv.gz": second}

    court, court_expected = _court_records(40, seed=11)
    court_path = root / "court_records" / "court_2026-11-15.ndjson"
    court_path.parent.mkdir(parents=True, exist_ok=True)
    court_path.write_text("".join(json.dumps(r) + "\n" for r in court))
    manifest["court_records"] = {court_path.name: court_expected}

    news, news_expected = _news_articles(30)
    news_path = root / "news_articles" / "news_2026-11-20.json"
    news_path.parent.mkdir(parents=True, exist_ok=True)
    news_path.write_text(json.dumps(news, indent=1))
    manifest["news_articles"] = {news_path.name: news_expected}

    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "samples"
    print(json.dumps(write_samples(target), indent=2))
