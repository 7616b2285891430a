"""Reads Parquet files, Excel workbooks and fixed-width text as the text formats are read: batches
of the spec's columns as raw text, with the record's position in `_source_line`.

Typed values (a Parquet column's, a workbook's cells) become the text the validator parses, so
every format goes through one validation: a number as its digits, a boolean as true/false, a date
in the column's first format. A typed column that cannot hold the spec's type fails the file.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harmonizer_dagster.core.reading import (
    CHUNK_BYTES,
    LINE_COLUMN,
    MalformedRecord,
    ReadResult,
    SourceFormatError,
    decoded,
    encoding_error,
    match_names,
    missing_error,
    named_columns,
    quoted_name,
)
from harmonizer_dagster.core.spec import Column, SourceSpec

# The Arrow types that can hold each spec type's values without losing them.
_HOLDS = {
    "integer": lambda t: pa.types.is_integer(t) or (pa.types.is_decimal(t) and t.scale == 0),
    "decimal": lambda t: pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_floating(t),
    "boolean": pa.types.is_boolean,
    "date": pa.types.is_date,
    "timestamp": lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t),
}


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _type_problem(kind: pa.DataType, column: Column) -> str | None:
    """Why a Parquet column of `kind` cannot feed the spec column, or None when it can."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if _is_text(kind) or pa.types.is_null(kind):
        return None
    if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return f"holds {kind} values, which are not one value per record"
    if column.type == "string" or _HOLDS[column.type](kind):
        return None
    return f"holds {kind} values, which cannot be {column.type} values"


def _text_array(array: pa.Array, column: Column) -> pa.Array:
    """A typed column's values as the text the validator parses."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_date(array.type) and column.type in ("date", "timestamp"):
        return pc.strftime(array, format="%Y-%m-%d" if column.type == "date" else "%Y-%m-%dT00:00:00")
    if pa.types.is_timestamp(array.type) and column.type == "timestamp":
        # ISO 8601 with every digit of the unit's fraction (Arrow's %S). A zone-aware column's
        # values are instants: written in UTC with `Z`; a naive one's are read in the column's zone.
        if array.type.tz is None:
            return pc.strftime(array, format="%Y-%m-%dT%H:%M:%S")
        return pc.strftime(array.cast(pa.timestamp(array.type.unit)), format="%Y-%m-%dT%H:%M:%SZ")
    text = array.cast(pa.string())
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise SourceFormatError(f"{path.name}: is not a readable Parquet file ({exc}); re-upload the file") from None


def column_names(spec: SourceSpec, path: Path) -> list[str]:
    """The file's column names: a Parquet file's, a workbook's header row; a fixed-width file's
    are the spec's."""
    if spec.format == "parquet":
        return _parquet_file(path).schema_arrow.names
    if spec.format == "xlsx":
        return _xlsx_header(spec, path)[2]
    return [c.source for c in spec.columns]


def read_parquet(spec: SourceSpec, path: Path, batch_rows: int, result: ReadResult) -> Iterator[pa.RecordBatch]:
    """Streams the file by row group; `_source_line` is a row's 1-based position in the file."""
    handle = _parquet_file(path)
    names = handle.schema_arrow.names
    matched = match_names(spec, names)
    matched.enforce(spec, path.name)
    missing = matched.missing(spec, required_only=True)
    if missing:
        raise missing_error(spec, path.name, missing, names, "missing columns")
    read = matched.single(spec, path.name)
    for column in spec.columns:
        if column.name in read:
            problem = _type_problem(handle.schema_arrow.field(read[column.name]).type, column)
            if problem:
                raise SourceFormatError(
                    f"{path.name}: column {quoted_name(read[column.name])} {problem} ({column.name} is {column.type} "
                    "in the spec); change the column's type in the spec or the file"
                )
    result.extra_fields = matched.extra
    position = 1
    try:
        for batch in handle.iter_batches(batch_size=batch_rows, columns=list(dict.fromkeys(read.values()))):
            arrays = [
                _text_array(batch.column(read[c.name]), c) if c.name in read else pa.nulls(batch.num_rows, pa.string())
                for c in spec.columns
            ]
            lines = pa.array(range(position, position + batch.num_rows), pa.int64())
            position += batch.num_rows
            yield pa.record_batch([*arrays, lines], names=[*(c.name for c in spec.columns), LINE_COLUMN])
    except (pa.ArrowException, OSError) as exc:
        raise SourceFormatError(
            f"{path.name}: the Parquet data is damaged after row {position - 1} ({exc}); re-upload the file"
        ) from None


def _cell_text(value: Any, column: Column | None = None) -> str | None:
    """A workbook cell as the text the validator parses for `column` (none: as plain text); an
    empty cell is None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # a workbook stores every number as a float
    if isinstance(value, datetime) and column is not None and column.type == "date" and value.time() == time.min:
        return value.date().isoformat()  # a workbook stores a date as a datetime at midnight
    if type(value) is date and column is not None and column.type == "timestamp":
        return f"{value.isoformat()}T00:00:00"  # a datetime cell at midnight may read as a date
    if isinstance(value, datetime | date | time):
        # ISO 8601, which validation reads whatever the column's formats: a time of day on a
        # date column, or a fraction of a second, stays in the text and is judged, not dropped.
        return value.isoformat()
    return str(value)


# A password-protected xlsx is no zip but an OLE compound file (as a legacy .xls is) holding
# the encrypted workbook in a stream of this name.
COMPOUND_FILE_MAGIC = bytes.fromhex("d0cf11e0a1b11ae1")
ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")


def _holds_bytes(path: Path, needle: bytes) -> bool:
    """Whether the file holds `needle`, read in chunks (an overlap keeps one split across two)."""
    tail = b""
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle) :]
    return False


def _sheet(spec: SourceSpec, path: Path) -> Any:
    """The workbook's sheet the spec names; a workbook that cannot be opened fails saying why."""
    from python_calamine import CalamineWorkbook

    with path.open("rb") as handle:
        compound = handle.read(len(COMPOUND_FILE_MAGIC)) == COMPOUND_FILE_MAGIC
    if compound:
        if _holds_bytes(path, ENCRYPTED_PACKAGE):
            raise SourceFormatError(
                f"{path.name}: the workbook is password-protected (encrypted); save it without a password "
                "and land it again"
            )
        raise SourceFormatError(f"{path.name}: is a legacy .xls workbook, not xlsx; save it as .xlsx and land it again")
    try:
        workbook = CalamineWorkbook.from_path(str(path))
    except Exception as exc:  # calamine raises a family of its own errors for a broken workbook
        raise SourceFormatError(f"{path.name}: is not a readable xlsx workbook ({exc}); re-upload the file") from None
    names = workbook.sheet_names
    sheet = spec.sheet if spec.sheet is not None else 1
    if isinstance(sheet, int):
        if sheet > len(names):
            raise SourceFormatError(f"{path.name}: has {len(names)} sheet(s), no sheet {sheet}: {names}")
        return workbook.get_sheet_by_index(sheet - 1)
    if sheet not in names:
        raise SourceFormatError(f"{path.name}: has no sheet {quoted_name(sheet)}; its sheets are {names}")
    return workbook.get_sheet_by_name(sheet)


def _xlsx_header(spec: SourceSpec, path: Path) -> tuple[str, str, list[str], Iterator[tuple[int, list[Any]]]]:
    """How messages name the sheet, its name, its header row's names, and its numbered rows after it."""
    sheet = _sheet(spec, path)
    first_row = sheet.start[0] + 1 if sheet.start else 1  # the sheet's first row that holds a cell
    rows = enumerate(sheet.iter_rows(), start=first_row)
    header = next(((number, cells) for number, cells in rows if number >= spec.header_row), None)
    where = f"{path.name} sheet {quoted_name(sheet.name)}"
    if header is None or header[0] != spec.header_row or not any(c not in (None, "") for c in header[1]):
        raise SourceFormatError(f"{where}: row {spec.header_row} holds no column names; is the sheet empty?")
    cells = [_cell_text(c) or "" for c in header[1]]
    while cells and not cells[-1].strip():
        cells.pop()  # a workbook's used range often runs past the last named column
    return where, sheet.name, named_columns(f"{where} row {spec.header_row}", cells), rows


_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_RELATIONSHIPS = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PACKAGE_RELATIONSHIPS = "{http://schemas.openxmlformats.org/package/2006/relationships}"


def _sheet_part(archive: zipfile.ZipFile, sheet_name: str) -> str | None:
    """The workbook part holding the named sheet's cells."""
    workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
    sheet = next((s for s in workbook.iter(f"{_MAIN}sheet") if s.get("name") == sheet_name), None)
    if sheet is None:
        return None
    links = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
    target = next(
        (
            r.get("Target")
            for r in links.iter(f"{_PACKAGE_RELATIONSHIPS}Relationship")
            if r.get("Id") == sheet.get(f"{_RELATIONSHIPS}id")
        ),
        None,
    )
    if target is None:
        return None
    return target.lstrip("/") if target.startswith("/") else f"xl/{target}"


def _cell_position(reference: str) -> tuple[int, int]:
    """A cell reference (`C12`) as its row number and 0-based column."""
    letters = reference.rstrip("0123456789")
    column = 0
    for letter in letters:
        column = column * 26 + ord(letter.upper()) - ord("A") + 1
    return int(reference[len(letters) :]), column - 1


def uncached_formulas(path: Path, sheet_name: str) -> dict[tuple[int, int], str]:
    """The sheet's formula cells saved without their value (a workbook written by a program that
    does not calculate), by row number and 0-based column: such a cell reads as empty, which is
    not what it holds. The sheet's XML is parsed only when it holds a formula at all."""
    with zipfile.ZipFile(path) as archive:
        part = _sheet_part(archive, sheet_name)
        if part is None or not any(b"<f" in chunk or b":f>" in chunk for chunk in _chunks(archive, part)):
            return {}
        found: dict[tuple[int, int], str] = {}
        with archive.open(part) as handle:
            for _, cell in ElementTree.iterparse(handle):
                if cell.tag != f"{_MAIN}c":
                    continue
                formula, value = cell.find(f"{_MAIN}f"), cell.find(f"{_MAIN}v")
                if formula is not None and (value is None or not (value.text or "")):
                    found[_cell_position(cell.get("r", "A1"))] = formula.text or ""
                cell.clear()
        return found


def _chunks(archive: zipfile.ZipFile, part: str) -> Iterator[bytes]:
    """A part's bytes in chunks that overlap by a few bytes, so a tag split across two is found."""
    tail = b""
    with archive.open(part) as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield tail + chunk
            tail = chunk[-4:]


def read_xlsx(spec: SourceSpec, path: Path, batch_rows: int, result: ReadResult) -> Iterator[pa.RecordBatch]:
    """The spec's sheet from its header row on; `_source_line` is a record's row number in the sheet
    (as the workbook shows it). Blank rows are skipped, as blank lines are in a CSV."""
    where, sheet_name, names, rows = _xlsx_header(spec, path)
    matched = match_names(spec, names)
    matched.enforce(spec, where)
    missing = matched.missing(spec)
    if missing:
        raise missing_error(spec, where, missing, names, "missing columns")
    read = matched.single(spec, where)
    result.extra_fields = matched.extra
    positions = [(names.index(read[c.name]), c) for c in spec.columns]
    uncached = uncached_formulas(path, sheet_name)
    read_positions = {position for position, _ in positions}
    values: list[list[str | None]] = [[] for _ in positions]
    lines: list[int] = []
    for number, row in rows:
        if all(c in (None, "") for c in row) and not any((number, p) in uncached for p in read_positions):
            continue
        stray = next((i for i in range(len(names), len(row)) if row[i] not in (None, "")), None)
        if stray is not None:
            text = ",".join(_cell_text(c) or "" for c in row)
            result.malformed.append(MalformedRecord(number, text, f"a value in column {stray + 1}, which has no name"))
            continue
        formula = next(((p, uncached[(number, p)]) for p in sorted(read_positions) if (number, p) in uncached), None)
        if formula is not None:
            text = ",".join(_cell_text(c) or "" for c in row)
            reference = f"{_column_letters(formula[0])}{number}"
            message = (
                f"cell {reference} holds a formula (={formula[1]}) saved without its value; open the workbook in "
                "Excel or LibreOffice so it calculates, save it and land it again"
            )
            result.malformed.append(MalformedRecord(number, text, message))
            continue
        for column, (position, spec_column) in zip(values, positions, strict=True):
            column.append(_cell_text(row[position], spec_column) if position < len(row) else None)
        lines.append(number)
        if len(lines) == batch_rows:
            yield _batch(spec, values, lines)
            values, lines = [[] for _ in positions], []
    if lines:
        yield _batch(spec, values, lines)


def _column_letters(position: int) -> str:
    """A 0-based column as Excel names it (0 is A, 26 is AA)."""
    letters = ""
    position += 1
    while position:
        position, remainder = divmod(position - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return letters


def _batch(spec: SourceSpec, values: list[list[str | None]], lines: list[int]) -> pa.RecordBatch:
    arrays = [*(pa.array(v, pa.string()) for v in values), pa.array(lines, pa.int64())]
    return pa.record_batch(arrays, names=[*(c.name for c in spec.columns), LINE_COLUMN])


def read_fixed_width(spec: SourceSpec, path: Path, batch_rows: int, result: ReadResult) -> Iterator[pa.RecordBatch]:
    """Each line is a record cut at the spec's positions, the padding around a value trimmed; the
    lines up to `header_row` are skipped and blank lines too. A line running on past the last
    column with more than spaces is malformed: its positions are not the spec's."""
    width = max((c.start or 1) + (c.width or 0) - 1 for c in spec.columns)
    with decoded(spec, path) as source:
        try:
            with source.open() as handle:
                lines: list[str] = []
                numbers: list[int] = []
                typical = width  # the length of the file's lines, from its last line of plain ASCII
                for number, line in enumerate(handle, start=1):
                    text = line.rstrip("\r\n")
                    if number <= spec.header_row or not text.strip():
                        continue
                    if text.isascii():
                        typical = len(text)
                    problem = _misplaced(text, width, typical, source.codec)
                    if problem is not None:
                        result.malformed.append(MalformedRecord(number, text, problem))
                        continue
                    lines.append(text)
                    numbers.append(number)
                    if len(lines) == batch_rows:
                        yield _cut(spec, lines, numbers)
                        lines, numbers = [], []
                if lines:
                    yield _cut(spec, lines, numbers)
        except UnicodeDecodeError:
            raise encoding_error(spec, path.name, source) from None


def _misplaced(text: str, width: int, typical: int, codec: str) -> str | None:
    """Why a line's fields would not sit at their declared positions, which count characters:
    a tab (whose width is anyone's guess), text past the last column, or padding counted in
    bytes (a line with a character beyond ASCII that is as many bytes long as the others are
    characters). None when the line can be cut."""
    if "\t" in text:
        return (
            f"a tab at character {text.index(chr(9)) + 1}: positions count characters and a tab has no fixed "
            "width; replace tabs with spaces"
        )
    if len(text) > width and text[width:].strip():
        return f"{len(text)} characters, past the last column's end at {width}"
    if not text.isascii() and len(text) != typical and len(text.encode(codec, "replace")) == typical:
        return (
            f"{len(text)} characters but {typical} bytes, as long in bytes as the other lines are in characters: "
            "its padding was counted in bytes, so its fields would shift; pad by characters"
        )
    return None


def _cut(spec: SourceSpec, lines: list[str], numbers: list[int]) -> pa.RecordBatch:
    """The batch's lines cut into the spec's columns in one vectorized pass per column."""
    text = pa.array(lines, pa.string())
    arrays = []
    for column in spec.columns:
        begin = (column.start or 1) - 1
        value = pc.utf8_trim_whitespace(pc.utf8_slice_codeunits(text, begin, begin + (column.width or 0)))
        arrays.append(pc.if_else(pc.equal(value, ""), pa.scalar(None, pa.string()), value))
    return pa.record_batch(
        [*arrays, pa.array(numbers, pa.int64())], names=[*(c.name for c in spec.columns), LINE_COLUMN]
    )
