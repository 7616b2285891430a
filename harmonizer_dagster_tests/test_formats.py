"""Parquet, Excel and fixed-width files load as the CSV does: the shipped registry sample in each
form gives the same rows and counts on every warehouse, a resumed read the same batches, and a
damaged, encrypted, empty or mistyped file fails saying what is wrong."""

import csv
import dataclasses
import io
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harmonizer_dagster.core.reading import ReadResult, SourceFormatError, read_batches
from harmonizer_dagster.core.spec import SpecError, parse_spec
from harmonizer_dagster_tests.conftest import SAMPLE, land, load_file, load_sample

PARTITION = "registry_2026-Q3"


def sample_records() -> tuple[list[str], list[list[str]]]:
    header, *records = list(csv.reader(io.StringIO(SAMPLE.read_text(encoding="utf-8"))))
    return header, records


def incorporation_date(text: str) -> date | None:
    for fmt in ("%Y-%m-%d", "%m/%d/%Y", "%d-%b-%Y"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def as_parquet(row_group_rows: int = 250) -> bytes:
    """The sample as Parquet in several row groups; the dates typed when every one parses."""
    header, records = sample_records()
    columns = {name: [r[i] or None for r in records] for i, name in enumerate(header)}
    dates = [incorporation_date(v) if v else None for v in columns["Incorporation Date"]]
    if all(d is not None or v is None for d, v in zip(dates, columns["Incorporation Date"], strict=True)):
        columns["Incorporation Date"] = dates
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out, row_group_size=row_group_rows)
    return out.getvalue()


def as_xlsx(sheet: str = "Registry") -> bytes:
    """The sample as a workbook with a title sheet first; dates as date cells, the rest as text."""
    header, records = sample_records()
    workbook = openpyxl.Workbook(write_only=True)
    workbook.create_sheet("About").append(["State business-entity registry"])
    data = workbook.create_sheet(sheet)
    data.append(header)
    position = header.index("Incorporation Date")
    for record in records:
        cells: list = list(record)
        cells[position] = incorporation_date(record[position]) or record[position]
        data.append([c if c != "" else None for c in cells])
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def fixed_width_layout() -> list[tuple[str, int, int]]:
    """(header, start, width) of each sample column, wide enough for its longest value plus a space."""
    header, records = sample_records()
    layout, start = [], 1
    for i, name in enumerate(header):
        width = max(len(name), *(len(r[i]) for r in records)) + 1
        layout.append((name, start, width))
        start += width
    return layout


def as_fixed_width() -> bytes:
    _, records = sample_records()
    layout = fixed_width_layout()
    lines = ["".join(name.ljust(width) for name, _, width in layout)]
    lines += ["".join(v.ljust(width) for v, (_, _, width) in zip(r, layout, strict=True)) for r in records]
    return ("\r\n".join(lines) + "\r\n").encode()


def spec_as(specs, file_format: str, **layout):
    spec = specs["business_registry"]
    if file_format == "fixed_width":
        positions = {name: (start, width) for name, start, width in fixed_width_layout()}
        columns = tuple(
            dataclasses.replace(c, start=positions[c.source][0], width=positions[c.source][1]) for c in spec.columns
        )
        spec = dataclasses.replace(spec, columns=columns, header_row=1)
    return dataclasses.replace(spec, format=file_format, **layout)


FORMS = {
    "parquet": (lambda: as_parquet(), {}),
    "xlsx": (lambda: as_xlsx(), {"sheet": "Registry"}),
    "fixed_width": (lambda: as_fixed_width(), {}),
}


@pytest.mark.parametrize("file_format", FORMS)
def test_each_format_loads_the_sample_with_the_rows_and_counts_of_the_csv(
    warehouse, tmp_path, specs, reference, file_format
):
    make, layout = FORMS[file_format]
    loaded = load_sample(warehouse, tmp_path, spec_as(specs, file_format, **layout), PARTITION, make())
    assert loaded == reference
    lines = warehouse.query(
        "SELECT source_line_number FROM {schema}.data_quality_issues ORDER BY source_line_number LIMIT 3"
    )
    csv_lines = [line for (line,) in lines]
    assert csv_lines and all(line >= 2 for line in csv_lines)  # the header is row 1 in every form


@pytest.mark.parametrize("file_format", FORMS)
def test_a_resumed_read_yields_the_batches_after_its_checkpoint(tmp_path, specs, file_format):
    make, layout = FORMS[file_format]
    path = tmp_path / PARTITION
    path.write_bytes(make())
    spec = spec_as(specs, file_format, **layout)
    whole = [b.to_pylist() for b in read_batches(spec, path, 100, ReadResult())]
    resumed = [b.to_pylist() for b in read_batches(spec, path, 100, ReadResult(), skip_batches=7)]
    assert len(whole) == 11 and resumed == whole[7:]
    assert whole[0][0]["_source_line"] == (1 if file_format == "parquet" else 2)


def test_typed_parquet_columns_load_as_their_types(warehouse, tmp_path):
    spec = parse_spec(
        {
            "name": "typed",
            "owner": "o",
            "format": "parquet",
            "natural_key": ["id"],
            "columns": {
                "id": {"source": "ID", "type": "integer"},
                "amount": {"type": "decimal", "precision": 10, "scale": 2},
                "ratio": {"type": "decimal"},
                "active": {"type": "boolean"},
                "opened": {"type": "date", "formats": ["%m/%d/%Y"]},
                "seen_at": {"type": "timestamp"},
                "kind": {},
            },
        }
    )
    table = pa.table(
        {
            "id": pa.array([1, 2], pa.int32()),
            "amount": pa.array([Decimal("12.50"), None], pa.decimal128(10, 2)),
            "ratio": [0.25, 3.0],
            "active": [True, False],
            "opened": [date(2024, 2, 29), date(1999, 12, 31)],
            "seen_at": [datetime(2026, 1, 2, 3, 4, 5), None],
            "kind": pa.array(["a", "b"]).dictionary_encode(),
        }
    )
    out = io.BytesIO()
    pq.write_table(table, out)
    load_file(spec, land(tmp_path, spec, "typed.parquet", out.getvalue()), "typed.parquet", warehouse, tmp_path / "s")
    assert warehouse.query(
        f"SELECT id, amount, ratio, active, opened, seen_at, kind FROM {warehouse.table('typed')} ORDER BY id"
    ) == [
        (1, Decimal("12.50"), Decimal("0.2500"), True, date(2024, 2, 29), datetime(2026, 1, 2, 3, 4, 5), "a"),
        (2, None, Decimal("3.0000"), False, date(1999, 12, 31), None, "b"),
    ]


def write_parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"id": ["1"], "opened": [3]}), r"column 'opened' holds int64 values, which cannot be date values"),
        (
            pa.table({"id": ["1"], "opened": [[1, 2]]}),
            r"column 'opened' holds list<.*> values, which are not one value",
        ),
        (pa.table({"ident": ["1"]}), r"missing columns \['id'\]"),
    ],
)
def test_a_parquet_file_the_spec_cannot_read_fails_naming_the_column(tmp_path, table, message):
    spec = parse_spec(
        {
            "name": "t",
            "owner": "o",
            "format": "parquet",
            "natural_key": ["id"],
            "columns": {"id": {}, "opened": {"type": "date"}},
        }
    )
    with pytest.raises(SourceFormatError, match=message):
        list(read_batches(spec, write_parquet(tmp_path / "t.parquet", table), 10, ReadResult()))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_parquet_file_fails_clearly(warehouse, tmp_path, specs, damage):
    data = as_parquet()
    data = b"PAR1 not parquet at all" if damage == "garbage" else data[: len(data) // 2]
    with pytest.raises(SourceFormatError, match=r"registry_2026-Q3: is not a readable Parquet file .*re-upload"):
        load_sample(warehouse, tmp_path, spec_as(specs, "parquet"), PARTITION, data)


def test_a_password_protected_workbook_fails_saying_to_save_it_without(warehouse, tmp_path, specs):
    from msoffcrypto.format.ooxml import OOXMLFile

    encrypted = io.BytesIO()
    OOXMLFile(io.BytesIO(as_xlsx())).encrypt("secret", encrypted)
    with pytest.raises(SourceFormatError, match=r"password-protected \(encrypted\); save it without a password"):
        load_sample(warehouse, tmp_path, spec_as(specs, "xlsx", sheet="Registry"), PARTITION, encrypted.getvalue())


@pytest.mark.parametrize(
    ("layout", "data", "message"),
    [
        ({"sheet": "Registry"}, lambda: b"PK\x03\x04 a torn archive", r"is not a readable xlsx workbook"),
        ({"sheet": "About"}, as_xlsx, r"missing columns \['Corp Number', 'Legal Name'"),
        ({"sheet": "Missing"}, as_xlsx, r"has no sheet 'Missing'; its sheets are \['About', 'Registry'\]"),
        ({"sheet": 3}, as_xlsx, r"has 2 sheet\(s\), no sheet 3"),
        ({"sheet": "Registry", "header_row": 2000}, as_xlsx, r"row 2000 holds no column names"),
    ],
)
def test_a_workbook_the_spec_cannot_read_fails_clearly(tmp_path, specs, layout, data, message):
    path = tmp_path / "registry.xlsx"
    path.write_bytes(data())
    with pytest.raises(SourceFormatError, match=message):
        list(read_batches(spec_as(specs, "xlsx", **layout), path, 100, ReadResult()))


def test_an_empty_sheet_fails_saying_it_is_empty(tmp_path, specs):
    workbook = openpyxl.Workbook()
    workbook.active.title = "Registry"
    path = tmp_path / "empty.xlsx"
    workbook.save(path)
    with pytest.raises(SourceFormatError, match=r"empty.xlsx sheet 'Registry': row 1 holds no column names; is the"):
        list(read_batches(spec_as(specs, "xlsx"), path, 100, ReadResult()))


def test_a_workbook_row_with_a_value_under_no_header_is_malformed(warehouse, tmp_path):
    spec = parse_spec({"name": "t", "owner": "o", "format": "xlsx", "natural_key": ["id"], "columns": {"id": {}}})
    workbook = openpyxl.Workbook()
    for row in (["id", None], [1, None], [2, "stray"], [None, None], [3.5, None]):
        workbook.active.append(row)
    out = io.BytesIO()
    workbook.save(out)
    load_file(spec, land(tmp_path, spec, "t.xlsx", out.getvalue()), "t.xlsx", warehouse, tmp_path / "s")
    assert warehouse.query(f"SELECT id FROM {warehouse.table('t')} ORDER BY id") == [("1",), ("3.5",)]
    assert warehouse.query("SELECT source_line_number, error_message FROM {schema}.failed_records") == [
        (3, "line 3: a value in column 2, which has no name")
    ]


FIXED = {
    "name": "t",
    "owner": "o",
    "format": "fixed_width",
    "natural_key": ["id"],
    "columns": {"id": {"start": 1, "width": 3}, "name": {"start": 4, "width": 6}, "zip": {"start": 10, "width": 5}},
}


def test_a_fixed_width_line_past_the_last_column_is_malformed_and_padding_trimmed(warehouse, tmp_path):
    spec = parse_spec(FIXED)
    data = b"001Ada   02139\n\n002Grace 10001 overflow\n003  Bo      \n"
    load_file(spec, land(tmp_path, spec, "t.txt", data), "t.txt", warehouse, tmp_path / "s")
    assert warehouse.query(f"SELECT id, name, zip, _source_line FROM {warehouse.table('t')} ORDER BY id") == [
        ("001", "Ada", "02139", 1),
        ("003", "Bo", None, 4),
    ]
    assert warehouse.query("SELECT source_line_number, error_message FROM {schema}.failed_records") == [
        (3, "line 3: 23 characters, past the last column's end at 14")
    ]


def test_a_fixed_width_byte_the_encoding_cannot_decode_fails_naming_where(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"001Ada   02139\n002Gr\xe9ce 10001\n")
    with pytest.raises(SourceFormatError, match=r"t.txt: byte 20 \(line 2\) is not valid utf-8"):
        list(read_batches(parse_spec(FIXED), path, 10, ReadResult()))
    spec = parse_spec({**FIXED, "encoding": "latin-1"})
    assert [r["name"] for r in next(read_batches(spec, path, 10, ReadResult())).to_pylist()] == ["Ada", "Gréce"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"columns": {"id": {"start": 1, "width": 3}, "name": {}}}, r"columns\.name': a fixed-width column needs"),
        ({"columns": {"id": {"start": 1, "width": 3}, "name": {"start": 3, "width": 2}}}, r"overlaps column 'id'"),
        ({"columns": {"id": {"start": 1}}}, r"columns\.id\.width': a fixed-width column needs both"),
        ({"format": "csv"}, r"only fixed_width columns have positions"),
        ({"format": "csv", "columns": {"id": {}}, "sheet": 1}, r"'sheet': only xlsx sources have sheets"),
        ({"format": "xlsx", "columns": {"id": {}}, "encoding": "latin-1"}, r"carries its own encoding"),
        ({"format": "parquet", "columns": {"id": {}}, "compression": "gzip"}, r"is compressed inside"),
    ],
)
def test_layout_fields_belong_to_their_formats(changes, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({**FIXED, **changes})


def test_a_layout_change_reprocesses_a_file_and_other_specs_keep_their_fingerprint(specs):
    spec = specs["business_registry"]
    assert spec.processing == repr(dataclasses.replace(spec, path=None))
    workbook = spec_as(specs, "xlsx", sheet="Registry")
    assert workbook.processing != dataclasses.replace(workbook, sheet=2).processing
