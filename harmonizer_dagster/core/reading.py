"""Streams a source file as Arrow batches of raw text values, whatever its format.

DuckDB parses CSV (gzip too), so memory stays bounded by the batch size and malformed lines
are captured instead of aborting the file; the other formats have readers of their own
(`json_records`, `tabular`) built on this module's matching and messages.
No input is lost without a word: a CSV whose quoting DuckDB cannot follow is read again line
by line in Python, a byte the declared encoding cannot decode fails the file naming where it
is, and a byte-order mark decides the encoding whatever the spec says.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
import shutil
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import duckdb
import numpy as np
import pyarrow as pa

from harmonizer_dagster.core.local_duckdb import local_duckdb
from harmonizer_dagster.core.spec import Column, SourceSpec, header_key
from harmonizer_dagster.core.sql import quote_ident, quote_literal

LINE_COLUMN = "_source_line"
CHUNK_BYTES = 1 << 20
SNIFF_BYTES = 1 << 16
# What a message quotes of a file's column names: how many, and how much of each.
MESSAGE_NAMES = 20
MESSAGE_NAME_CHARS = 40
GZIP_MAGIC = b"\x1f\x8b"
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# A spec's encodings as Python codecs, and the ones DuckDB decodes itself: its "utf-16" is
# little-endian only (a big-endian file reads as no rows), so such a file is transcoded first.
SPEC_CODECS = {"utf-8": "utf-8", "utf-16": "utf-16-le", "latin-1": "latin-1"}
DUCKDB_ENCODINGS = {"utf-8": "utf-8", "utf-16-le": "utf-16", "latin-1": "latin-1"}


class SourceFormatError(ValueError):
    """The file cannot be read as its spec declares (missing columns, broken JSON...)."""


class UnreliableParse(Exception):
    """DuckDB met a quote that never closes: it may then skip the lines after it without a
    reject, so its rows cannot be trusted and the file must be read again line by line."""


@dataclass
class MalformedRecord:
    line: int
    raw_text: str
    error: str


@dataclass
class ReadResult:
    """Filled while reading; malformed records are known once the scan is finished."""

    malformed: list[MalformedRecord] = field(default_factory=list)
    extra_fields: list[str] = field(default_factory=list)
    # How far the scan of the lines has read the file (compressed bytes of a gzip file), of how
    # many: the batches parsed trail it by at most one scan chunk. Unknown (0) for JSON arrays.
    bytes_read: int = 0
    bytes_total: int = 0


def quoted_name(name: str) -> str:
    """A column name as a message quotes it, cut to MESSAGE_NAME_CHARS characters."""
    return repr(name if len(name) <= MESSAGE_NAME_CHARS else name[:MESSAGE_NAME_CHARS] + "...")


def quoted_names(names: list[str]) -> str:
    """Column names as a message quotes them: at most MESSAGE_NAMES, each cut short, so a file
    that is no source file (a header that is a line of anything) never has its content copied
    into a log or the registry."""
    shown = [quoted_name(name) for name in names[:MESSAGE_NAMES]]
    more = f", and {len(names) - MESSAGE_NAMES} more" if len(names) > MESSAGE_NAMES else ""
    return f"[{', '.join(shown)}{more}]"


def _found(spec: SourceSpec, names: list[str]) -> str:
    """What a message says of the names a file has: quoted when the file shares at least one
    with the spec (a renamed or dropped column); when it shares none it is likely no file of
    the source at all, and only their count is given."""
    if {header_key(n) for n in names} & {header_key(n) for c in spec.columns for n in c.source_names}:
        return f"the file has {quoted_names(names)}"
    return (
        f"the file has none of the {spec.name} spec's names ({len(names)} other name(s), not quoted): "
        f"is it a {spec.name} file?"
    )


def _described(column: Column) -> str:
    """A spec column as a message names it: its source name, and its aliases."""
    aliases = f" (or {', '.join(quoted_name(a) for a in column.aliases)})" if column.aliases else ""
    return quoted_name(column.source) + aliases


@dataclass(frozen=True)
class Matched:
    """Which of a file's names each spec column reads, matched whatever their case and
    surrounding whitespace, under the column's source name or one of its aliases."""

    names: dict[str, list[str]]  # spec column -> the file's names it matched, in the file's order
    extra: list[str]  # the file's names no column reads

    def missing(self, spec: SourceSpec, required_only: bool = False) -> list[Column]:
        return [c for c in spec.columns if not self.names[c.name] and (c.required or not required_only)]

    def single(self, spec: SourceSpec, file_name: str) -> dict[str, str]:
        """The one name each column reads; a column matching two names is ambiguous and fails the file."""
        for column in spec.columns:
            found = self.names[column.name]
            if len(found) > 1:
                raise SourceFormatError(
                    f"{file_name}: the file has {quoted_names(found)}, which all match column {column.name} "
                    f"({_described(column)}); keep one of them"
                )
        return {name: found[0] for name, found in self.names.items() if found}

    def enforce(self, spec: SourceSpec, file_name: str) -> None:
        """Under `schema_evolution: freeze` a file has the spec's columns, no more and no fewer."""
        missing = self.missing(spec)
        if spec.schema_evolution != "freeze" or not (self.extra or missing):
            return
        found = [f"columns not in the spec {quoted_names(self.extra)}"] if self.extra else []
        if missing:
            found.append(f"no column for [{', '.join(_described(c) for c in missing)}]")
        raise SourceFormatError(
            f"{file_name}: the file has {' and '.join(found)}, and the spec's columns are frozen "
            f"(`schema_evolution: freeze` in {_spec_file(spec)}); declare the change in the spec, "
            "or set schema_evolution: report or evolve"
        )


def match_names(spec: SourceSpec, names: list[str]) -> Matched:
    """Matches a file's column names (a header, JSON keys, Parquet columns) to the spec's."""
    wanted = {header_key(n): c.name for c in spec.columns for n in c.source_names}
    matched: dict[str, list[str]] = {c.name: [] for c in spec.columns}
    extra = []
    for name in names:
        column = wanted.get(header_key(name))
        if column is None:
            extra.append(name)
        else:
            matched[column].append(name)
    return Matched(matched, extra)


def missing_error(
    spec: SourceSpec, file_name: str, missing: list[Column], names: list[str], what: str
) -> SourceFormatError:
    listed = ", ".join(_described(c) for c in missing)
    return SourceFormatError(f"{file_name}: {what} [{listed}]; {_found(spec, names)}")


def is_gzipped(spec: SourceSpec, path: Path) -> bool:
    return spec.compression == "gzip" or (spec.compression == "auto" and path.suffix == ".gz")


def _spec_file(spec: SourceSpec) -> str:
    return spec.path.name if spec.path else f"the {spec.name} spec"


def _gzip_problem(spec: SourceSpec, path: Path) -> SourceFormatError | None:
    """What is wrong with a file read as gzip, found by decompressing it once (only once reading
    it failed); None when its stream is sound and the failure lies elsewhere."""
    with path.open("rb") as handle:
        magic = handle.read(len(GZIP_MAGIC))
    if magic != GZIP_MAGIC:
        declared = "its spec declares `compression: gzip`" if spec.compression == "gzip" else "its name ends in .gz"
        return SourceFormatError(
            f"{path.name} is not gzip-compressed although {declared}; land it compressed, or uncompressed under "
            f"a name without .gz, or set `compression: none` in {_spec_file(spec)} if the source's files never are"
        )
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(CHUNK_BYTES):
                pass
    except EOFError:
        return SourceFormatError(
            f"{path.name} is truncated: the gzip stream ends before its end marker; re-upload the complete file"
        )
    except (gzip.BadGzipFile, zlib.error) as exc:
        return SourceFormatError(f"{path.name} is a damaged gzip stream ({exc}); re-upload the file")
    return None


@dataclass(frozen=True)
class _Source:
    """The bytes a CSV is read from (the landed file, or its UTF-8 transcoding) and their codec."""

    path: Path
    gzipped: bool
    codec: str

    def open(self) -> IO[str]:
        return io.TextIOWrapper(open_bytes(self.path, self.gzipped), encoding=self.codec, newline="")


def open_bytes(path: Path, gzipped: bool) -> IO[bytes]:
    return gzip.open(path, "rb") if gzipped else path.open("rb")


def _first_undecodable(source: _Source) -> tuple[int, int] | None:
    """The offset and line of the first byte the codec cannot decode, in one streamed pass."""
    decoder = codecs.getincrementaldecoder(source.codec)()
    offset, line = 0, 1
    with open_bytes(source.path, source.gzipped) as handle:
        while True:
            chunk = handle.read(CHUNK_BYTES)
            pending = decoder.getstate()[0]  # the start of a character split across chunks
            try:
                line += decoder.decode(chunk, final=not chunk).count("\n")
            except UnicodeDecodeError as exc:
                valid = (pending + chunk)[: exc.start].decode(source.codec)
                return offset - len(pending) + exc.start, line + valid.count("\n")
            if not chunk:
                return None
            offset += len(chunk)


def encoding_error(spec: SourceSpec, name: str, source: _Source, line: int | None = None) -> SourceFormatError:
    """Names the first byte the file's encoding cannot decode, and the spec field to change."""
    found = _first_undecodable(source)
    decompressed = " of the decompressed data" if source.gzipped else ""
    where = f"line {line}" if found is None else f"byte {found[0]}{decompressed} (line {found[1]})"
    return SourceFormatError(
        f"{name}: {where} is not valid {source.codec}; set `encoding:` in {_spec_file(spec)} to the file's encoding "
        "(latin-1, utf-16) or `auto`"
    )


def _sniffed_codec(spec: SourceSpec, path: Path, gzipped: bool) -> str:
    """The file's encoding: a byte-order mark decides whatever the spec says, then the spec.

    `auto` stays dependency-free on purpose: for the three encodings a spec can name, the NUL
    bytes UTF-16 puts in ASCII text and a strict UTF-8 pass over the whole file (streamed)
    decide exactly, where a statistical detector such as charset-normalizer guesses."""
    with open_bytes(path, gzipped) as handle:
        head = handle.read(SNIFF_BYTES)
    for mark, codec in BYTE_ORDER_MARKS:
        if head.startswith(mark):
            return codec
    if spec.encoding != "auto":
        return SPEC_CODECS[spec.encoding]
    if head[1::2].count(0) > len(head) // 4:
        return "utf-16-le"
    if head[0::2].count(0) > len(head) // 4:
        return "utf-16-be"
    return "utf-8" if _first_undecodable(_Source(path, gzipped, "utf-8")) is None else "latin-1"


def detected_encoding(spec: SourceSpec, path: Path) -> str:
    """The spec encoding (`utf-8`, `utf-16`, `latin-1`) `encoding: auto` finds for the file."""
    codec = _sniffed_codec(replace(spec, encoding="auto"), path, is_gzipped(spec, path))
    return "utf-16" if codec.startswith("utf-16") else codec


@contextmanager
def decoded(spec: SourceSpec, path: Path) -> Iterator[_Source]:
    """The CSV as DuckDB can read it: as landed, or transcoded to UTF-8 in a temporary file
    (streamed, so memory stays constant) when DuckDB cannot decode its encoding."""
    gzipped = is_gzipped(spec, path)
    landed = _Source(path, gzipped, _sniffed_codec(spec, path, gzipped))
    if landed.codec in DUCKDB_ENCODINGS:
        yield landed
        return
    with tempfile.TemporaryDirectory(prefix="harmonizer-") as folder:
        target = Path(folder) / "transcoded.csv"
        try:
            with landed.open() as text, target.open("w", encoding="utf-8", newline="") as out:
                shutil.copyfileobj(text, out, CHUNK_BYTES)
        except UnicodeDecodeError:
            raise encoding_error(spec, path.name, landed) from None
        yield _Source(target, False, "utf-8")


def _csv_header(spec: SourceSpec, name: str, source: _Source) -> list[str]:
    """The header's column names. A header that is not one cleanly quoted line would swallow
    data rows, and duplicated names are ambiguous: both are refused, naming the line."""
    try:
        with source.open() as handle:
            line = handle.readline().removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise encoding_error(spec, name, source) from None
    if "\x00" in line:
        raise SourceFormatError(
            f"{name} line 1: the header holds NUL bytes, as UTF-16 without a byte-order mark does; "
            f"set `encoding: utf-16` (or `auto`) in {_spec_file(spec)}"
        )
    try:
        header = next(csv.reader([line], delimiter=spec.delimiter, strict=True), [])
    except csv.Error as exc:
        if line.count('"') % 2:
            fields = next(csv.reader([line], delimiter=spec.delimiter))
            raise SourceFormatError(
                f"{name} line 1: the header has an unterminated quote in column {len(fields)} "
                f'("{fields[-1].rstrip()[:30]}...); a header must be one line with every quote closed'
            ) from exc
        raise SourceFormatError(f"{name} line 1: the header cannot be parsed: {exc}") from exc
    return named_columns(name, header)


UNNAMED = "(unnamed column "


def _unnamed(position: int) -> str:
    """How a trailing column without a name is reported among the fields not in the spec."""
    return f"{UNNAMED}{position})"


def named_columns(name: str, header: list[str]) -> list[str]:
    """The header's names with surrounding whitespace trimmed, as the spec names them. Only the
    last column may be unnamed (a delimiter ending every line): it is reported as a field not in
    the spec. An unnamed column elsewhere, or a name appearing twice, is ambiguous and refused."""
    names = [column.strip() for column in header]
    if len(names) > 1 and not any(names):
        raise SourceFormatError(f"{name} line 1: the header has no column names, only delimiters")
    first_position: dict[str, int] = {}
    for position, column in enumerate(names, start=1):
        if not column:
            if position == len(names) and position > 1:
                names[-1] = _unnamed(position)
                continue
            raise SourceFormatError(
                f"{name} line 1: column {position} has no name; every column but a trailing one needs a name"
            )
        if first_position.setdefault(column, position) != position:
            raise SourceFormatError(
                f"{name} line 1: column {quoted_name(column)} appears twice "
                f"(columns {first_position[column]} and {position})"
            )
    return names


def _query(spec: SourceSpec, source: _Source, header: list[str], positions: list[int]) -> str:
    """The DuckDB query of a CSV's spec columns, each read at its position in the header."""
    # DuckDB reads the columns under positional names: a file's names need not be valid there.
    columns = ", ".join(f"{quote_literal(_positional(position))}: 'VARCHAR'" for position in range(len(header)))
    scan = (
        f"read_csv({quote_literal(str(source.path))}, header=true, auto_detect=false, columns={{{columns}}}, "
        f"delim={quote_literal(spec.delimiter)}, quote='\"', escape='\"', "
        f"encoding={quote_literal(DUCKDB_ENCODINGS[source.codec])}, "
        f"compression={quote_literal('gzip' if source.gzipped else 'none')}, store_rejects=true)"
    )
    read = [_positional(position) for position in positions]
    pairs = zip(read, spec.columns, strict=True)
    selected = ", ".join(f"{quote_ident(field)} AS {quote_ident(c.name)}" for field, c in pairs)
    return f"SELECT {selected} FROM {scan}"


def _positional(index: int) -> str:
    return f"column{index}"


def read_batches(
    spec: SourceSpec,
    path: Path,
    batch_rows: int,
    result: ReadResult,
    skip_batches: int = 0,
    line_by_line: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Yields batches of exactly `batch_rows` rows (the last may be shorter), each with the
    physical line its record starts on in `_source_line` (1-based; a CSV's header is line 1,
    a value's line breaks count; a JSON array's objects are numbered by their position in it).
    The first `skip_batches` batches are parsed but not yielded, which is how a resumed step
    skips work it already checkpointed: the lines are counted from the start of the file.

    A CSV with a quote that never closes raises UnreliableParse once DuckDB has scanned it:
    discard what was yielded and read it again with `line_by_line=True`. A gzip stream that
    cannot be read fails the file saying what is wrong with it and what to do."""
    with _read_errors(spec, path):
        yield from _read_batches(spec, path, batch_rows, result, skip_batches, line_by_line)


@contextmanager
def _read_errors(spec: SourceSpec, path: Path) -> Iterator[None]:
    """A gzip stream that cannot be read fails the file saying what is wrong with it and what to do."""
    try:
        yield
    except (SourceFormatError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        problem = _gzip_problem(spec, path) if is_gzipped(spec, path) else None
        if problem is None:
            raise
        raise problem from exc


def evolved_spec(spec: SourceSpec, path: Path) -> SourceSpec:
    """The spec the file loads with: under `schema_evolution: evolve`, with a text column for each
    of the file's columns the spec does not name (see `SourceSpec.evolved`); else the spec."""
    if spec.schema_evolution != "evolve":
        return spec
    from harmonizer_dagster.core import json_records, tabular

    with _read_errors(spec, path):
        if spec.format == "csv":
            with decoded(spec, path) as source:
                names = _csv_header(spec, path.name, source)
        elif spec.format in ("json", "ndjson"):
            names = json_records.json_keys(spec, path)
        else:
            names = tabular.column_names(spec, path)
    return spec.evolved([n for n in match_names(spec, names).extra if not n.startswith(UNNAMED)])


def _read_batches(
    spec: SourceSpec, path: Path, batch_rows: int, result: ReadResult, skip_batches: int, line_by_line: bool
) -> Iterator[pa.RecordBatch]:
    # Imported here: those readers build on this module's matching and messages.
    from harmonizer_dagster.core import json_records, tabular

    readers = {
        "parquet": tabular.read_parquet,
        "xlsx": tabular.read_xlsx,
        "fixed_width": tabular.read_fixed_width,
        "json": json_records.read_json,
        "ndjson": json_records.read_json,
    }
    if spec.format in readers:
        yield from _batched(readers[spec.format](spec, path, batch_rows, result), batch_rows, skip_batches)
        return
    with decoded(spec, path) as source:
        header = _csv_header(spec, path.name, source)
        matched = match_names(spec, header)
        missing = matched.missing(spec)
        if missing:
            raise missing_error(spec, path.name, missing, header, "missing columns")
        matched.enforce(spec, path.name)
        names = matched.single(spec, path.name)
        result.extra_fields = matched.extra
        positions = [header.index(names[c.name]) for c in spec.columns]
        if line_by_line:
            batches = _parsed_lines(spec, path.name, source, header, positions, batch_rows, result)
        else:
            starts = _csv_record_starts(source, spec.delimiter, len(header), result)
            scanned = _scanned(
                spec,
                path,
                lambda: _query(spec, source, header, positions),
                batch_rows,
                lambda con: _rejects(con, spec, path.name, source, result, starts, len(header)),
            )
            batches = _lined(scanned, starts, path.name)
        yield from _batched(batches, batch_rows, skip_batches)


def _scanned(
    spec: SourceSpec,
    path: Path,
    query: Callable[[], str],
    batch_rows: int,
    after: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """DuckDB's batches of the query (built inside, as building it may read the file); `after`
    then inspects the finished scan. A file DuckDB cannot parse is read again line by line,
    whose messages name the line and what is wrong in this project's words (DuckDB's own name a
    temporary file and give advice for its options)."""
    con = local_duckdb()
    try:
        try:
            yield from con.sql(query()).to_arrow_reader(batch_rows)
        except duckdb.Error as exc:
            raise UnreliableParse(f"{path.name}: DuckDB could not parse it") from exc
        if after is not None:
            after(con)
    finally:
        con.close()


def _rejects(
    con: duckdb.DuckDBPyConnection,
    spec: SourceSpec,
    name: str,
    source: _Source,
    result: ReadResult,
    starts: _RecordStarts,
    columns: int,
) -> None:
    """Turns the records DuckDB rejected into malformed records on the physical line they start,
    one per record whatever its number of errors; an undecodable byte fails the file, and a
    runaway quote, or rejects the scan of the lines did not foresee, ask for a careful re-read."""
    rows = con.sql(
        "SELECT line, any_value(csv_line), string_agg(error_message, '; '), "
        "bool_or(error_type = 'INVALID ENCODING'), bool_or(error_type = 'UNQUOTED VALUE') "
        "FROM reject_errors GROUP BY line ORDER BY line"
    ).fetchall()
    for line, _, _, undecodable, _ in rows:
        if undecodable:
            raise encoding_error(spec, name, source, int(line))
    for line, _, _, _, unquoted in rows:
        if unquoted:
            raise UnreliableParse(f"{name} line {line}: a quote does not close where a value ends")
    starts.finish(name)
    if len(rows) != len(starts.rejected):
        raise UnreliableParse(f"{name}: DuckDB rejected other records than the scan of the lines found")
    result.malformed = [
        MalformedRecord(line, text or "", _reject_message(text or "", message, spec.delimiter, columns))
        for line, (_, text, message, _, _) in zip(starts.rejected, rows, strict=True)
    ]


def _reject_message(text: str, message: str, delimiter: str, columns: int) -> str:
    """One reason for a record DuckDB rejected, in this project's words: DuckDB reports a short
    record once for every column it lacks."""
    if "Expected Number of Columns" in message:
        try:
            fields = next(csv.reader(text.splitlines(), delimiter=delimiter), [])
        except csv.Error:
            fields = text.split(delimiter)
        return _field_count_error(len(fields), columns)
    return message.split("; ")[0]


SCAN_BYTES = 8 << 20


@dataclass
class _RecordStarts:
    """The physical line each record of a text file starts on, from a vectorized scan of its code
    units (no Python per row). In a CSV a line break ends a record where the quotes before it are
    balanced (an escaped quote is two quotes), and records are told apart as DuckDB does: a blank
    line is skipped, a record with another number of fields than the header is rejected. In NDJSON
    every line holding more than whitespace is a record."""

    accepted: Iterator[np.ndarray]
    rejected: list[int] = field(default_factory=list)
    pending: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def take(self, count: int) -> np.ndarray:
        """The start lines of the next `count` records read; fewer means the scan and the parse disagree."""
        parts, have = [self.pending], len(self.pending)
        while have < count and (more := next(self.accepted, None)) is not None:
            parts.append(more)
            have += len(more)
        joined = np.concatenate(parts)
        self.pending = joined[count:]
        return joined[:count]

    def finish(self, name: str) -> None:
        """Scans to the end, so every rejected record is known; a record left over means the
        parse and the scan disagree, and the file is read again line by line."""
        if len(self.take(1)):
            raise UnreliableParse(f"{name}: the file's lines hold more records than the parse found")


def _code_units(source: _Source, result: ReadResult) -> Iterator[np.ndarray]:
    """The decompressed file as arrays of code units (two bytes each in UTF-16), in big chunks;
    how far into the file they are goes to `result`."""
    dtype = np.dtype("<u2") if source.codec == "utf-16-le" else np.dtype(np.uint8)
    carry = b""
    with source.path.open("rb") as raw, gzip.GzipFile(fileobj=raw) if source.gzipped else raw as handle:
        result.bytes_total = os.fstat(raw.fileno()).st_size
        while chunk := handle.read(SCAN_BYTES):
            result.bytes_read = raw.tell()
            chunk = carry + chunk
            usable = len(chunk) - len(chunk) % dtype.itemsize
            carry = chunk[usable:]
            yield np.frombuffer(chunk, dtype, usable // dtype.itemsize)


def _csv_record_starts(source: _Source, delimiter: str, columns: int, result: ReadResult) -> _RecordStarts:
    starts = _RecordStarts(iter(()))
    starts.accepted = _csv_scan(source, delimiter, columns, starts.rejected, result)
    return starts


def _csv_scan(
    source: _Source, delimiter: str, columns: int, rejected: list[int], result: ReadResult
) -> Iterator[np.ndarray]:
    quotes = fields = length = 0  # quotes seen, and the current record's outside delimiters and length
    first_unit = -1  # the current record's first code unit
    line = record_line = 1  # the line the chunk starts on, and the one the current record starts on
    header = True
    for units in _code_units(source, result):
        quote_at = np.flatnonzero(units == 0x22)
        breaks = np.flatnonzero(units == 0x0A)
        delims = np.flatnonzero(units == ord(delimiter))
        if len(quote_at) or quotes & 1:
            ends = breaks[((quotes + np.searchsorted(quote_at, breaks)) & 1) == 0]
            outside = delims[((quotes + np.searchsorted(quote_at, delims)) & 1) == 0]
            end_lines = line + np.searchsorted(breaks, ends)
        else:  # no quote: every line break ends a record, every delimiter separates fields
            ends, outside, end_lines = breaks, delims, line + np.arange(len(breaks))
        if len(ends):
            record_lines = np.concatenate(([record_line], end_lines[:-1] + 1))
            counts = np.diff(np.searchsorted(outside, ends), prepend=0) + 1
            counts[0] += fields
            begins = np.concatenate(([-1], ends[:-1])) + 1
            lengths = ends - begins
            lengths[0] += length
            firsts = units[np.minimum(begins, len(units) - 1)].astype(np.int64)
            if length:
                firsts[0] = first_unit
            blank = (lengths == 0) | ((lengths == 1) & (firsts == 0x0D))
            if header:
                blank[0], header = True, False
            kept = ~blank
            good = kept & (counts == columns)
            rejected.extend(record_lines[kept & ~good].tolist())
            yield record_lines[good].astype(np.int64)
            tail = ends[-1] + 1
            record_line = int(end_lines[-1]) + 1
            fields = len(outside) - int(np.searchsorted(outside, ends[-1]))
            length = len(units) - tail
            first_unit = int(units[tail]) if length else -1
        else:
            if not length and len(units):
                first_unit = int(units[0])
            fields += len(outside)
            length += len(units)
        quotes += len(quote_at)
        line += len(breaks)
    if length and not header and not (length == 1 and first_unit == 0x0D):
        if fields + 1 == columns:
            yield np.array([record_line], np.int64)
        else:
            rejected.append(record_line)


def _int64s(values: np.ndarray) -> pa.Array:
    """The numbers as an Arrow array, sharing their memory. `pa.array` first imports pandas
    wherever it is installed (the dev extra installs it), to see whether it was handed a pandas
    object: 0.4 s and 45 MiB for a run that uses no pandas."""
    values = np.ascontiguousarray(values, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])


def _lined(batches: Iterator[pa.RecordBatch], starts: _RecordStarts, name: str) -> Iterator[pa.RecordBatch]:
    """Each batch with the physical line its records start on (the parse calls `starts.finish`
    once it is done)."""
    for batch in batches:
        lines = starts.take(batch.num_rows)
        if len(lines) < batch.num_rows:
            raise UnreliableParse(f"{name}: the parse found more records than the file's lines hold")
        yield batch.append_column(LINE_COLUMN, _int64s(lines))


def _batched(batches: Iterator[pa.RecordBatch], batch_rows: int, skip_batches: int) -> Iterator[pa.RecordBatch]:
    """Re-cuts batches of any size into numbered batches of exactly `batch_rows` rows."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    emitted = 0
    for batch in batches:
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= batch_rows:
            table = pa.Table.from_batches(pending)
            chunk, rest = table.slice(0, batch_rows), table.slice(batch_rows)
            if emitted >= skip_batches:
                yield _single(chunk)
            emitted += 1
            pending, pending_rows = rest.to_batches(), rest.num_rows
    if pending_rows and emitted >= skip_batches:
        yield _single(pa.Table.from_batches(pending))


class _Lines:
    """A text file's physical lines for csv.reader, tracking the line a record begins on; the
    lines a broken record swallowed can be given back to be read again."""

    def __init__(self, handle: IO[str]):
        self.handle = handle
        self.number = 1
        self.taken: list[str] = []
        self.again: deque[str] = deque()

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.again.popleft() if self.again else next(self.handle)
        self.taken.append(line)
        return line

    def end_record(self) -> str:
        """The record's text; the next record begins on the line after it."""
        text = "".join(self.taken)
        self.number += len(self.taken)
        self.taken.clear()
        return text

    def end_at_first_line(self) -> str:
        """The record's first line, which becomes a record of its own; the lines after it are read again."""
        first, *rest = self.taken
        self.again.extendleft(reversed(rest))
        self.number += 1
        self.taken.clear()
        return first


def _quote_error(exc: csv.Error, text: str) -> str:
    """What csv's complaint about the record beginning on the line `text` means."""
    if str(exc) == "unexpected end of data":
        return "unterminated quote: the quoted value does not close before the end of the file"
    if str(exc).startswith("field larger than field limit"):
        if '"' not in text:
            return f"a value over {csv.field_size_limit():,} characters, longer than a field may be"
        return f"unterminated quote: the quoted value runs past {csv.field_size_limit():,} characters"
    return (
        "misplaced quote: a quoted value is followed by more text before the next delimiter "
        '(a quote inside a value is written twice: "")'
    )


def _field_count_error(found: int, expected: int) -> str:
    return f"{found} fields where the header has {expected}"


def _parsed_lines(
    spec: SourceSpec,
    name: str,
    source: _Source,
    header: list[str],
    positions: list[int],
    batch_rows: int,
    result: ReadResult,
) -> Iterator[pa.RecordBatch]:
    """The CSV parsed in Python record by record, for a file DuckDB cannot follow. A line whose
    quote does not close where a value ends is one malformed record and parsing resumes on the
    next line, so every line is either a record or recorded; line numbers are physical lines.
    A quoted value longer than csv's field limit (131,072 characters) counts as a quote that
    never closes, which bounds what a runaway quote can hold in memory."""
    names = [c.name for c in spec.columns] + [LINE_COLUMN]
    values: list[list[str | None]] = [[] for _ in positions]
    starts: list[int] = []
    rows = 0
    try:
        with source.open() as handle:
            lines = _Lines(handle)
            next(lines, None)  # the header, already checked
            lines.end_record()
            reader = csv.reader(lines, delimiter=spec.delimiter, strict=True)
            while True:
                start = lines.number
                try:
                    fields = next(reader, None)
                except csv.Error as exc:
                    text = lines.end_at_first_line().rstrip("\r\n")
                    result.malformed.append(MalformedRecord(start, text, _quote_error(exc, text)))
                    continue
                if fields is None:
                    break
                text = lines.end_record()
                if not fields:
                    continue  # a blank line, which DuckDB skips too
                if len(fields) != len(header):
                    message = _field_count_error(len(fields), len(header))
                    result.malformed.append(MalformedRecord(start, text.rstrip("\r\n"), message))
                    continue
                for column, position in zip(values, positions, strict=True):
                    column.append(fields[position] or None)
                starts.append(start)
                rows += 1
                if rows == batch_rows:
                    yield _record_batch(values, starts, names)
                    values, starts, rows = [[] for _ in positions], [], 0
    except UnicodeDecodeError:
        raise encoding_error(spec, name, source) from None
    if rows:
        yield _record_batch(values, starts, names)


def _record_batch(values: list[list[str | None]], starts: list[int], names: list[str]) -> pa.RecordBatch:
    return pa.record_batch([*(pa.array(v, pa.string()) for v in values), pa.array(starts, pa.int64())], names=names)


def _single(table: pa.Table) -> pa.RecordBatch:
    return table.combine_chunks().to_batches()[0]
