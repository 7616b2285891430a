"""Drafts a source spec from a sample file: `harmonizer init-source`.

The file is read by the pipeline's own readers, as text, and every guess is checked with the
validator's own parsing: a column is typed only when each of its values parses as that type,
and the checks drafted are warnings, so loading the sample with the draft rejects none of its
records. What was guessed, and why, comes back as notes for the person to read.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from harmonizer_dagster.core.reading import (
    GZIP_MAGIC,
    LINE_COLUMN,
    SNIFF_BYTES,
    ReadResult,
    decoded,
    detected_encoding,
    evolved_spec,
    read_batches,
)
from harmonizer_dagster.core.spec import NAMED_FORMATS, Column, SourceSpec, evolved_name, parse_spec
from harmonizer_dagster.core.validation import FALSE_WORDS, TRUE_WORDS, parsed_value

SAMPLE_ROWS = 100_000  # what the guesses are drawn from: the file's first rows
DELIMITERS = ",;\t|"
# Spellings of "no value" a file may use; proposed as `null_values` when a column holds them.
NULL_WORDS = ("NA", "N/A", "n/a", "NULL", "null", "None", "NaN", "#N/A", "-")
DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "%d/%m/%Y", "%d-%b-%Y", "%Y/%m/%d", "%d.%m.%Y", "%b %d, %Y", "%d %b %Y")
TIMESTAMP_FORMATS = (
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %H:%M:%S",
)
US_STATES = tuple(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "  # noqa: SIM905
    "OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR VI GU AS MP".split()
)
PHONE = r"^\+?[\d\s().-]{7,20}$"
ZIP = r"^\d{4,5}(-?\d{4})?$"
# A value set this small, in a sample this much larger, is a list of allowed values.
ALLOWED_VALUES_MAX = 12
ALLOWED_VALUES_MIN_ROWS = 20
# The share of values a harmonize rule's pattern must match for the rule to be proposed.
PATTERN_SHARE = 0.95
# Names that say a column identifies a record, tried first as natural keys: a name that is an
# identifier itself (`id`, `Case ID`, `person_id`) before one holding such a word (`Corp Number`).
ID_NAME = re.compile(r"(^|[^a-z])id$", re.IGNORECASE)
KEY_NAME = re.compile(r"(^|[^a-z])(id|key|code|number|no|num|nbr)([^a-z]|$)|_id$|^id", re.IGNORECASE)
KEY_COLUMNS_MAX = 3
KEY_REPEATS_SHARE = 0.02  # or one repeat, in a small sample
KEY_CANDIDATES_SHOWN = 5
VERSION_PATTERNS = (
    (r"\d{4}-Q[1-4]", "quarterly", r"(?P<year>\d{4})-Q(?P<quarter>[1-4])"),
    (r"\d{4}-\d{2}-\d{2}", "daily", r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"),
    (r"\d{4}-\d{2}", "monthly", r"(?P<year>\d{4})-(?P<month>\d{2})"),
)


@dataclass
class Draft:
    """The drafted spec's YAML text, and what was guessed and why, one note a line."""

    text: str
    notes: list[str] = field(default_factory=list)


@dataclass
class _Guess:
    """What was found for one column."""

    column: Column
    values: pl.Series  # the sample's trimmed values, nulls included
    lines: list[str] = field(default_factory=list)  # the YAML lines under the column's name
    why: list[str] = field(default_factory=list)


def _detect_format(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"PK\x03\x04") or path.suffix.lower() in (".xlsx", ".xlsm"):
        return "xlsx"
    if head.startswith(GZIP_MAGIC):
        import gzip

        with gzip.open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    text = head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
    if text.startswith("["):
        return "json"
    if text.startswith("{"):
        return "ndjson"
    return "csv"


def _fullest_sheet(path: Path) -> tuple[str, int]:
    """The workbook's sheet with the most rows, and its first row holding a value."""
    from python_calamine import CalamineWorkbook

    try:
        workbook = CalamineWorkbook.from_path(str(path))
    except Exception:  # the reader says what is wrong when it opens the file
        return "", 1
    sheets = [workbook.get_sheet_by_name(n) for n in workbook.sheet_names]
    fullest = max(sheets, key=lambda sheet: sheet.height)
    return fullest.name, (fullest.start[0] + 1) if fullest.start else 1


def _provisional(name: str, file_format: str, **fields: Any) -> SourceSpec:
    """A spec without columns, evolving: read with it, a file gives every column it has, as text."""
    return SourceSpec(
        name=name,
        title=name,
        owner="",
        format=file_format,
        natural_key=(),
        columns=(),
        schema_evolution="evolve",
        **fields,
    )


def _delimiter(spec: SourceSpec, path: Path) -> str:
    """The delimiter that splits the first lines into equal numbers of fields; a comma if none does."""
    with decoded(spec, path) as source, source.open() as handle:
        head = "\n".join(handle.read(SNIFF_BYTES).splitlines()[:20])
    try:
        return csv.Sniffer().sniff(head, DELIMITERS).delimiter
    except csv.Error:
        return ","


def _sample(spec: SourceSpec, path: Path) -> tuple[SourceSpec, pl.DataFrame]:
    """The spec with a text column for each of the file's columns, and its first rows."""
    spec = evolved_spec(spec, path)
    batches: list[pl.DataFrame] = []
    rows = 0
    for batch in read_batches(spec, path, 10_000, ReadResult()):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        batches.append(frame.drop(LINE_COLUMN))
        rows += frame.height
        if rows >= SAMPLE_ROWS:
            break
    frame = pl.concat(batches).head(SAMPLE_ROWS) if batches else pl.DataFrame({c.name: [] for c in spec.columns})
    trimmed = frame.select(pl.col(c.name).cast(pl.Utf8).str.strip_chars().replace("", None) for c in spec.columns)
    return spec, trimmed


def _all_parse(values: pl.Series, column: Column) -> pl.Series:
    """Where each value parses as the column's type, as the validator parses it."""
    return pl.DataFrame({"v": values}).select(parsed_value(column, pl.col("v")).is_not_null()).to_series()


def _covering(values: pl.Series, column: Column, candidates: tuple[str, ...]) -> tuple[tuple[str, ...], pl.Series]:
    """The candidate formats (most used first) that parse the values, and the values none parses."""
    remaining, chosen = values, []
    while remaining.len():
        counts = {f: int(_all_parse(remaining, replace(column, formats=(f,))).sum()) for f in candidates}
        best = max(counts, key=lambda f: counts[f])
        if counts[best] == 0:
            break
        chosen.append(best)
        candidates = tuple(f for f in candidates if f != best)
        remaining = remaining.filter(~_all_parse(remaining, replace(column, formats=(best,))))
    return tuple(chosen), remaining


def _formats_covering(values: pl.Series, column: Column, candidates: tuple[str, ...]) -> tuple[str, ...] | None:
    """The fewest candidate formats that parse every value, or None."""
    formats, misses = _covering(values, column, candidates)
    return formats if formats and not misses.len() else None


def _near_misses(values: pl.Series, column: Column) -> tuple[str, tuple[str, ...], pl.Series] | None:
    """For a column of dates or timestamps but for a few values (at most a tenth): the type, its
    formats and those values."""
    for kind, candidates in (("date", DATE_FORMATS), ("timestamp", TIMESTAMP_FORMATS)):
        formats, misses = _covering(values, replace(column, type=kind), candidates)
        if formats and misses.len() <= values.len() // 10:
            return kind, formats, misses
    return None


def _type(guess: _Guess) -> None:
    """The narrowest type every value parses as; text otherwise."""
    values = guess.values.drop_nulls()
    column = guess.column
    if not values.len():
        guess.why.append("no value in the sample: text")
        return
    lowered = values.str.to_lowercase()
    words = set(TRUE_WORDS + FALSE_WORDS) - {"0", "1"}
    if lowered.is_in(list(words)).all():
        guess.column = Column(column.name, column.source, "boolean")
        guess.why.append(f"boolean: every value is one of {sorted(set(values.to_list()))[:6]}")
        return
    digits = values.str.contains(r"^[+-]?\d+$")
    if digits.all():
        if values.str.contains(r"^[+-]?0\d").any():
            guess.why.append("text: digits with leading zeros are codes, not numbers")
            return
        if _all_parse(values, Column(column.name, column.source, "integer")).all():
            guess.column = Column(column.name, column.source, "integer")
            guess.why.append("integer: every value is whole")
            return
    if values.str.contains(r"^[+-]?(\d+\.?\d*|\.\d+)$").all():
        whole = values.str.replace(r"^[+-]", "").str.split(".").list.first().str.strip_chars_start("0").str.len_chars()
        scale = int(values.str.split(".").list.get(1, null_on_oob=True).str.len_chars().fill_null(0).max() or 0)
        precision = min(38, int(whole.max() or 1) + scale + 3)  # three digits of headroom for larger values
        decimal = Column(column.name, column.source, "decimal", precision=precision, scale=scale)
        if _all_parse(values, decimal).all():
            guess.column = decimal
            guess.why.append(f"decimal({precision}, {scale}): up to {scale} decimals, 3 more digits than the largest")
            return
    for kind, candidates in (("date", DATE_FORMATS), ("timestamp", TIMESTAMP_FORMATS)):
        formats = _formats_covering(values, Column(column.name, column.source, kind), candidates)
        if formats:
            guess.column = Column(column.name, column.source, kind, formats=formats)
            ambiguous = kind == "date" and "%m/%d/%Y" in formats and "%d/%m/%Y" not in formats
            note = (
                " (%d/%m/%Y would read them too: check which the source means)"
                if ambiguous
                and _all_parse(values, Column(column.name, column.source, kind, formats=("%d/%m/%Y",))).all()
                else ""
            )
            guess.why.append(f"{kind}: every value reads as {' or '.join(formats)}{note}")
            return
    near = _near_misses(values, column)
    if near:
        kind, formats, misses = near
        guess.why.append(
            f"text: {misses.len()} of {values.len()} values are no {kind} as {' or '.join(formats)} "
            f"(e.g. {misses[0]!r}); type it {kind} to reject those records"
        )
        return
    guess.why.append("text")


def _share(values: pl.Series, pattern: str) -> float:
    return float(values.str.contains(pattern).mean() or 0.0) if values.len() else 0.0


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _rules(guess: _Guess, rows: int) -> None:
    """Harmonize rules and warning checks a text column's values call for."""
    values = guess.values.drop_nulls()
    name = guess.column.name
    if guess.column.type != "string" or not values.len():
        return
    harmonize: list[str] = []
    checks: list[str] = []
    if _share(values, NAMED_FORMATS["email"][0]) >= PATTERN_SHARE:
        harmonize, checks = ["email"], ["- format: email", "  severity: warning"]
        guess.why.append("emails: harmonized to lower case and checked")
    elif ("zip" in name or "postal" in name) and _share(values, ZIP) >= PATTERN_SHARE:
        harmonize, checks = ["us_zip"], ["- format: us_zip", "  severity: warning"]
        guess.why.append("US ZIP codes: 4-digit ones padded, checked as ZIP or ZIP+4")
    elif ("phone" in name or "fax" in name or "tel" in name) and _share(values, PHONE) >= PATTERN_SHARE:
        harmonize = ["phone_e164"]
        checks = [
            "- pattern: " + _quote(PHONE),
            "  issue_type: invalid_phone",
            "  expected_format: a phone number",
            "  severity: warning",
        ]
        guess.why.append("phone numbers: harmonized to E.164 (+15551234567) and checked")
    elif values.str.to_uppercase().is_in(US_STATES).mean() >= PATTERN_SHARE and values.str.len_chars().max() == 2:
        harmonize = ["trim", "uppercase"]
        checks = [
            "- allowed_values: [" + ", ".join(US_STATES) + "]",
            "  ignore_case: true",
            "  issue_type: invalid_state",
            "  severity: warning",
        ]
        guess.why.append("US state codes: upper-cased and checked against the state list")
    else:
        distinct = values.unique().sort()
        if distinct.len() <= ALLOWED_VALUES_MAX and rows >= ALLOWED_VALUES_MIN_ROWS and distinct.len() * 4 <= rows:
            harmonize = ["trim"]
            listed = ", ".join(_quote(v) for v in distinct.to_list())
            checks = [f"- allowed_values: [{listed}]", "  severity: warning  # error rejects any other value"]
            guess.why.append(f"{distinct.len()} distinct values in {rows} rows: allowed values")
        elif values.str.contains(r"^\d+$").all():
            low, high = int(values.str.len_chars().min() or 0), int(values.str.len_chars().max() or 0)
            span = f"{{{low}}}" if low == high else f"{{{low},{high}}}"
            checks = [
                "- pattern: " + _quote(rf"^\d{span}$"),
                f"  expected_format: {low if low == high else f'{low} to {high}'} digits",
                "  severity: warning",
            ]
            harmonize = ["trim"]
            guess.why.append("digits only: checked as such")
    if not harmonize:
        harmonize = ["trim"]
    if "trim" in harmonize and guess.values.drop_nulls().str.contains(r"\s{2,}").any():
        harmonize.append("collapse_whitespace")
    guess.lines.append(f"harmonize: [{', '.join(harmonize)}]")
    if checks:
        guess.lines.append("checks:")
        guess.lines += [f"  {line}" for line in checks]


def _key_candidates(guesses: list[_Guess], rows: int) -> list[tuple[tuple[str, ...], int]]:
    """Column sets that identify the sample's records, each with how many of its keys repeat:
    unique, never empty sets, smallest first, those with an id-like name first of a size. An
    id-like column whose keys repeat for at most KEY_REPEATS_SHARE of the records comes before
    wider sets: a file holding a record's update next to it repeats its key, and the load keeps
    one record per key (the others become duplicate_key warnings)."""
    usable = [g for g in guesses if g.column.type in ("string", "integer") and g.values.null_count() == 0]
    frame = pl.DataFrame({g.column.name: g.values for g in usable})
    position = {g.column.name: i for i, g in enumerate(usable)}
    idlike = {g.column.name for g in usable if KEY_NAME.search(g.column.source) or KEY_NAME.search(g.column.name)}
    ids = {g.column.name for g in usable if ID_NAME.search(g.column.source)}
    found: list[tuple[tuple[str, ...], int]] = []
    for size in range(1, KEY_COLUMNS_MAX + 1):
        names = [g.column.name for g in usable]
        if size > 1:  # wider sets only among the columns that might be part of a key
            names = [n for n in names if frame[n].n_unique() < rows][:16]
        distinct = {c: frame.select(pl.struct(list(c)).n_unique()).item() for c in combinations(names, size)}
        unique = [c for c, n in distinct.items() if n == rows]
        unique.sort(key=lambda c: (not set(c) & ids, not set(c) & idlike, sum(position[n] for n in c)))
        if size == 1 and not {c[0] for c in unique} & idlike:
            near = [
                (c, rows - n)
                for c, n in distinct.items()
                if c[0] in idlike and rows - n <= max(1, rows * KEY_REPEATS_SHARE)
            ]
            found += sorted(near, key=lambda item: (item[1], position[item[0][0]]))
        found += [(c, 0) for c in unique]
        if found:
            break
    return found[:KEY_CANDIDATES_SHOWN]


def _version(file_name: str) -> tuple[str, str | None, str]:
    for found, strategy, pattern in VERSION_PATTERNS:
        match = re.search(found, file_name)
        if match:
            prefix = re.escape(file_name[: match.start()])
            return strategy, f"{prefix}{pattern}", f"the file name holds a {strategy} date ({match.group()})"
    return "content_hash", None, "the file name holds no date: each distinct file is a version"


def source_name(path: Path) -> str:
    """A source name from the file name, its dates and extensions left out (`registry_2026-Q3.csv` is registry)."""
    stem = path.name.split(".")[0]
    stem = re.sub(r"[_\-\s]*\d{4}(-Q[1-4]|-\d{2}(-\d{2})?)?.*$", "", stem) or stem
    return evolved_name(stem, set())


def draft(path: Path, name: str | None = None) -> Draft:
    """Drafts a spec for the sample file at `path` (see the module's docstring)."""
    name = name or source_name(path)
    notes: list[str] = []
    file_format = _detect_format(path)
    fields: dict[str, Any] = {}
    header: list[str] = [
        f"name: {name}",
        f"title: {_quote(name.replace('_', ' ').capitalize())}",
        "owner: data-team@example.org  # who answers for this source",
        f"format: {file_format}",
    ]
    notes.append(f"format: {file_format}, from the file's first bytes and name")
    if file_format in ("csv", "json", "ndjson"):
        encoding = detected_encoding(_provisional(name, file_format), path)
        fields["encoding"] = encoding
        notes.append(f"encoding: {encoding}, from its byte-order mark or a strict UTF-8 pass (`auto` decides per file)")
        if encoding != "utf-8":
            header.append(f"encoding: {encoding}")
    if file_format == "csv":
        delimiter = _delimiter(_provisional(name, file_format, **fields), path)
        fields["delimiter"] = delimiter
        header.append(f"delimiter: {_quote(delimiter)}" if delimiter != "\t" else 'delimiter: "\\t"')
        notes.append(f"delimiter: {delimiter!r}, the one splitting the first lines into equal field counts")
        notes.append("header row: line 1, whose fields name the columns")
    if file_format == "xlsx":
        sheet, header_row = _fullest_sheet(path)
        fields |= {"sheet": sheet, "header_row": header_row}
        header += [f"sheet: {_quote(sheet)}", f"header_row: {header_row}"]
        notes.append(f"sheet: {sheet!r}, the one with the most rows; header row: {header_row}, its first with a value")
    spec, sample = _sample(_provisional(name, file_format, **fields), path)
    rows = sample.height
    notes.append(f"{len(spec.columns)} columns, guessed from the first {rows} rows")
    guesses = [_Guess(c, sample[c.name]) for c in spec.columns]
    nulls = sorted({w for g in guesses for w in NULL_WORDS if g.values.is_in([w]).any()})
    if nulls:
        header.append(f"null_values: [{', '.join(_quote(w) for w in nulls)}]  # read as empty")
        notes.append(f"null_values: {nulls}, spellings of 'no value' the file uses")
        guesses = [_Guess(g.column, g.values.replace(nulls, None)) for g in guesses]
    for guess in guesses:
        _type(guess)
        _rules(guess, rows)
    keys = _key_candidates(guesses, rows)
    strategy, pattern, why = _version(path.name)
    header.append(f"version_strategy: {strategy}  # {why}")
    if pattern:
        header.append(f"version_pattern: {_quote(pattern)}")
    if keys:
        (key, repeats), others = keys[0], "; ".join(", ".join(k) for k, _ in keys[1:])
        header.append(f"natural_key: [{', '.join(key)}]")
        why = (
            f"never empty, {repeats} of its keys repeat in the sample: one record of each is kept, the others "
            "reported as duplicate_key"
            if repeats
            else "unique and never empty in the sample"
        )
        notes.append(f"natural key: {', '.join(key)}, {why}" + (f" (other candidates: {others})" if others else ""))
        header.append(f"# natural key: {why}")
        if others:
            header.append(f"# other candidates: {others}")
    else:
        first = guesses[0].column.name
        header.append(f"natural_key: [{first}]  # no unique column set of up to {KEY_COLUMNS_MAX} columns: choose one")
        notes.append(f"natural key: none found unique and never empty; {first} stands in: choose one")
    body = ["columns:"]
    key = set(keys[0][0]) if keys else set()
    for guess in guesses:
        column = guess.column
        lines = [f"source: {_quote(column.source)}"]
        if column.type != "string":
            lines.append(f"type: {column.type}")
        if column.type == "decimal":
            lines += [f"precision: {column.precision}", f"scale: {column.scale}"]
        if column.formats:
            lines.append("formats: [" + ", ".join(_quote(f) for f in column.formats) + "]")
        if guess.values.null_count() == 0 and rows and column.name not in key:
            lines.append("required: true  # never empty in the sample")
        body.append(f"  {column.name}:  # {'; '.join(guess.why)}")
        body += [f"    {line}" for line in lines + guess.lines]
        notes.append(f"{column.name} ({column.source!r}): {'; '.join(guess.why)}")
    text = (
        "\n".join(
            [
                f"# Drafted by `harmonizer init-source` from {path.name}: correct what it guessed, then land files.",
                *header,
                *body,
            ]
        )
        + "\n"
    )
    return Draft(text, notes)


def checked(text: str, file: str) -> SourceSpec:
    """The draft parsed as `harmonizer check-specs` parses a spec: a draft that does not parse is a bug."""
    return parse_spec(yaml.safe_load(text), file)
