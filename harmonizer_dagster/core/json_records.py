"""Reads JSON arrays and NDJSON as the text formats are read: batches of the spec's columns as
raw text, with each record's line (NDJSON) or position in the array (JSON) in `_source_line`.

Parsed in Python, record by record, because the value stored must be the one the file holds: a
number keeps its digits as written (an engine reading it as a double turns `12345678901234567.25`
into `12345678901234568`), and a record that is not one flat object of values (a broken line,
a key twice, an object where one value is declared) is a malformed record of its own, while the
other records load.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from harmonizer_dagster.core.reading import (
    CHUNK_BYTES,
    LINE_COLUMN,
    MalformedRecord,
    ReadResult,
    SourceFormatError,
    is_gzipped,
    match_names,
    missing_error,
    quoted_name,
)
from harmonizer_dagster.core.spec import Column, SourceSpec, header_key

# The largest record read: a line or array element beyond it is a malformed record, unparsed.
MAX_RECORD_BYTES = 16 << 20
# How much of a malformed record's text is kept for triage.
RAW_TEXT_CHARS = 10_000


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: JSON tools disagree on which of two values wins."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise DuplicateKey(twice)
    return obj


class DuplicateKey(ValueError):
    pass


# Numbers keep their text; NaN and Infinity are not JSON.
_DECODER = json.JSONDecoder(parse_float=str, parse_int=str, parse_constant=_no_constant, object_pairs_hook=_unique_keys)


# Finds where an array's element ends; `_DECODER` then judges it.
_ELEMENT_DECODER = json.JSONDecoder(parse_float=str, parse_int=str)


def _kind(value: Any) -> str:
    return "an object" if isinstance(value, dict) else "an array"


@dataclass
class _Columns:
    """Which spec column each of a file's keys feeds, learned key by key as records arrive (a key
    is compared whatever its case and surrounding whitespace); a column may name a field inside
    an object (`source: home_office.zip`)."""

    spec: SourceSpec
    wanted: dict[str, str] = field(init=False)
    paths: dict[str, list[tuple[str, ...]]] = field(init=False)
    known: dict[str, str | None] = field(default_factory=dict)
    present: dict[str, set[str]] = field(default_factory=dict)  # spec column -> the names it was read under
    extra: dict[str, None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.wanted = {header_key(n): c.name for c in self.spec.columns for n in c.source_names}
        self.paths = {
            c.name: [tuple(header_key(p) for p in n.split(".")) for n in c.source_names if "." in n.strip(".")]
            for c in self.spec.columns
        }
        self.present = {c.name: set() for c in self.spec.columns}
        self.nested_parents = {path[0] for paths in self.paths.values() for path in paths}

    def column_of(self, key: str) -> str | None:
        if key not in self.known:
            column = self.wanted.get(header_key(key))
            self.known[key] = column
            if column is None and header_key(key) not in self.nested_parents:
                self.extra[key] = None
        return self.known[key]

    def values(self, records: list[dict[str, Any]]) -> list[list[Any]]:
        """Each column's values in the records (the first spelling of a field a record has counts)."""
        keys: set[str] = set().union(*records)
        spellings: dict[str, list[str]] = {c.name: [] for c in self.spec.columns}
        for key in sorted(keys):
            column = self.column_of(key)
            if column is not None:
                spellings[column].append(key)
                self.present[column].add(key)
        return [self._column(records, c.name, spellings[c.name]) for c in self.spec.columns]

    def _column(self, records: list[dict[str, Any]], column: str, spellings: list[str]) -> list[Any]:
        if len(spellings) == 1 and not self.paths[column]:
            key = spellings[0]
            return [record.get(key) for record in records]
        found = []
        for record in records:
            hit, value = next(((True, record[k]) for k in record if k in spellings), (False, None))
            for path in self.paths[column] if not hit else ():
                hit, value = _walk(record, path)
                if hit:
                    self.present[column].add(".".join(path))
                    break
            found.append(value)
        return found


def _walk(record: dict[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    value: Any = record
    for part in path:
        if not isinstance(value, dict):
            return False, None
        match = next((k for k in value if header_key(k) == part), None)
        if match is None:
            return False, None
        value = value[match]
    return True, value


@dataclass
class _Record:
    line: int
    text: str
    value: Any = None
    problem: str | None = None


def _parsed(line: int, text: str) -> _Record:
    """One record's text parsed, or what is wrong with it."""
    try:
        value = _DECODER.decode(text)
    except DuplicateKey as exc:
        return _Record(line, text, problem=f"the key {quoted_name(str(exc))} appears twice in the object")
    except json.JSONDecodeError as exc:
        return _Record(line, text, problem=f"not valid JSON: {exc.msg} at character {exc.pos + 1}")
    except ValueError as exc:
        return _Record(line, text, problem=f"not valid JSON: {exc}")
    except RecursionError:
        return _Record(line, text, problem="values nested too deeply to read")
    if not isinstance(value, dict):
        kind = "a value" if not isinstance(value, dict | list) else _kind(value)
        return _Record(line, text, problem=f"holds {kind}, not an object")
    return _Record(line, text, value)


def _lines(handle: IO[bytes]) -> Iterator[tuple[int, bytes, int]]:
    """The file's lines with their number and length in bytes; a line over MAX_RECORD_BYTES is
    cut there (the rest of it is skipped, never held in memory)."""
    number = 0
    while line := handle.readline(MAX_RECORD_BYTES + 1):
        number += 1
        size = len(line)
        if size > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            while (rest := handle.readline(CHUNK_BYTES)) and not rest.endswith(b"\n"):
                size += len(rest)
            size += len(rest)
        yield number, line, size


def _ndjson_records(handle: IO[bytes]) -> Iterator[_Record]:
    """Every line holding more than whitespace is a record, numbered by its physical line."""
    for number, raw, size in _lines(handle):
        if not raw.strip():
            continue
        if size > MAX_RECORD_BYTES:
            problem = f"the line is {size:,} bytes, over the {MAX_RECORD_BYTES >> 20} MiB a record may hold"
            yield _Record(number, raw[:RAW_TEXT_CHARS].decode("utf-8", "replace"), problem=problem)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"byte {exc.start + 1} of the line is not valid UTF-8 (JSON is UTF-8)"
            yield _Record(number, raw.decode("utf-8", "replace"), problem=message)
            continue
        yield _parsed(number, text.removeprefix("\ufeff") if number == 1 else text)


class _ArrayText:
    """A JSON array's text, read in chunks: elements are parsed one at a time from a buffer that
    holds at most one element beyond a chunk, so memory stays bounded by the largest element."""

    def __init__(self, name: str, handle: IO[str]):
        self.name, self.handle = name, handle
        self.buffer, self.at, self.done = "", 0, False
        self.line, self.column = 1, 0  # where the buffer starts: its line, and characters before it on that line

    def more(self) -> bool:
        """Reads the next chunk, dropping what was consumed; False at the end of the file."""
        if self.done:
            return False
        last_break = self.buffer.rfind("\n", 0, self.at)
        self.line += self.buffer.count("\n", 0, self.at)
        self.column = self.column + self.at if last_break < 0 else self.at - last_break - 1
        self.buffer, self.at = self.buffer[self.at :], 0
        chunk = self.handle.read(CHUNK_BYTES)
        self.buffer += chunk
        self.done = not chunk
        return True

    def skip_space(self) -> str:
        """The next character that is not whitespace ('' at the end)."""
        while True:
            while self.at < len(self.buffer) and self.buffer[self.at] in " \t\r\n":
                self.at += 1
            if self.at < len(self.buffer) or not self.more():
                return self.buffer[self.at : self.at + 1]

    def fail(self, what: str, at: int | None = None) -> SourceFormatError:
        at = self.at if at is None else at
        line = self.line + self.buffer.count("\n", 0, at)
        last_break = self.buffer.rfind("\n", 0, at)
        column = (self.column + at if last_break < 0 else at - last_break - 1) + 1
        return SourceFormatError(
            f"{self.name} line {line}, column {column}: {what}; a JSON source is one array of objects "
            "(or use format: ndjson for one object per line): fix the file and land it again"
        )

    def element(self, position: int) -> str:
        """The next element's text, whole (read on until it parses or the file ends)."""
        self.skip_space()
        while True:
            try:
                _, end = _ELEMENT_DECODER.raw_decode(self.buffer, self.at)
            except json.JSONDecodeError as exc:
                if len(self.buffer) - self.at > MAX_RECORD_BYTES:
                    raise self.fail(f"element {position} is over {MAX_RECORD_BYTES >> 20} MiB") from None
                if self.more():
                    continue
                if exc.pos >= len(self.buffer.rstrip()):
                    raise self.fail(f"the file ends inside element {position}, which starts here") from None
                raise self.fail(f"not valid JSON ({exc.msg})", exc.pos) from None
            except RecursionError:
                raise self.fail(f"element {position} nests values too deeply to read") from None
            text = self.buffer[self.at : end]
            self.at = end
            return text


def _array_records(name: str, handle: IO[str]) -> Iterator[_Record]:
    """The array's elements, numbered by their 1-based position in it."""
    text = _ArrayText(name, handle)
    if text.skip_space() != "[":
        raise text.fail("the file does not start with '['")
    text.at += 1
    position = 0
    if text.skip_space() == "]":
        text.at += 1
    else:
        while True:
            position += 1
            yield _parsed(position, text.element(position))
            following = text.skip_space()
            text.at += 1
            if following == "]":
                break
            if following != ",":
                raise text.fail("expected ',' or ']' after an element", text.at - 1)
    if text.skip_space():
        raise text.fail("more text after the array's closing ']'")


def _records(spec: SourceSpec, path: Path, result: ReadResult) -> Iterator[_Record]:
    compressed = is_gzipped(spec, path)
    with path.open("rb") as raw, gzip.GzipFile(fileobj=raw) if compressed else raw as handle:
        result.bytes_total = path.stat().st_size
        if spec.format == "ndjson":
            records = _ndjson_records(handle)
        else:
            text = io.TextIOWrapper(handle, encoding="utf-8-sig")
            records = _array_records(path.name, text)
        try:
            for number, record in enumerate(records):
                if not number % 4096:
                    result.bytes_read = raw.tell()
                yield record
        except UnicodeDecodeError as exc:
            raise SourceFormatError(
                f"{path.name}: holds bytes that are not UTF-8 ({exc.reason}); JSON is UTF-8: re-encode the file"
            ) from None


def json_keys(spec: SourceSpec, path: Path) -> list[str]:
    """Every top-level key a record of the file has, in the order first met."""
    keys: dict[str, None] = {}
    for record in _records(spec, path, ReadResult()):
        if record.problem is None:
            keys.update(dict.fromkeys(record.value))
    return list(keys)


def _shown(text: str) -> str:
    """A malformed record's text as triage keeps it: without its line break, cut short."""
    return text[:RAW_TEXT_CHARS].rstrip("\r\n")


def _nested(column: Column, value: Any) -> str:
    return (
        f"field {quoted_name(column.source)} holds {_kind(value)}, not one {column.type} value "
        f"(name a field inside it as `source: {column.source}.<field>`)"
    )


@dataclass
class _Batch:
    """Records parsed, waiting to become a batch of text columns."""

    records: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def texted(self, spec: SourceSpec, columns: _Columns, result: ReadResult) -> pa.RecordBatch | None:
        """The records' values as text columns. Parsed numbers are text already; booleans become
        true/false; a record with an object or array where a value is declared is malformed."""
        values = columns.values(self.records)
        problems: dict[int, str] = {}
        for column, found in zip(spec.columns, values, strict=True):
            for row, value in enumerate(found):
                if value is None or value.__class__ is str:
                    continue
                if isinstance(value, dict | list):
                    problems.setdefault(row, _nested(column, value))
                else:
                    found[row] = "true" if value else "false"
        keep = range(len(self.records))
        if problems:
            for row in sorted(problems):
                result.malformed.append(
                    MalformedRecord(self.lines[row], self.texts[row][:RAW_TEXT_CHARS], problems[row])
                )
            keep = [row for row in keep if row not in problems]
            values = [[found[row] for row in keep] for found in values]
        lines = [self.lines[row] for row in keep]
        if not lines:
            return None
        arrays = [*(pa.array(v, pa.string()) for v in values), pa.array(lines, pa.int64())]
        return pa.record_batch(arrays, names=[*(c.name for c in spec.columns), LINE_COLUMN])


def read_json(spec: SourceSpec, path: Path, batch_rows: int, result: ReadResult) -> Iterator[pa.RecordBatch]:
    """Batches of the records' values as text. A record that is no flat object of values is
    malformed; the others load. Once the file is read, a required field no record carried, or
    (under `schema_evolution: freeze`) a field not in the spec, fails it."""
    columns = _Columns(spec)
    pending = _Batch()
    for record in _records(spec, path, result):
        if record.problem is not None:
            result.malformed.append(MalformedRecord(record.line, _shown(record.text), record.problem))
            continue
        pending.records.append(record.value)
        pending.lines.append(record.line)
        pending.texts.append(record.text)
        if len(pending.lines) == batch_rows:
            if (batch := pending.texted(spec, columns, result)) is not None:
                yield batch
            pending = _Batch()
    if pending.lines and (batch := pending.texted(spec, columns, result)) is not None:
        yield batch
    result.malformed.sort(key=lambda record: record.line)
    _check_fields(spec, path, columns, result)


def _check_fields(spec: SourceSpec, path: Path, columns: _Columns, result: ReadResult) -> None:
    """A required field no record carries is a renamed or dropped column: reading it as nulls
    would blank stored values, so the file is refused; unknown keys are reported."""
    seen = [name for names in columns.present.values() for name in sorted(names)]
    matched = match_names(spec, [*seen, *columns.extra])
    matched.enforce(spec, path.name)
    missing = [c for c in spec.columns if c.required and not columns.present[c.name]]
    if missing:
        raise missing_error(
            spec, path.name, missing, sorted([*seen, *columns.extra]), "no record has the required field(s)"
        )
    result.extra_fields = list(columns.extra)
