"""Every stored value is the file's value, or its record is rejected with a reason, in every format
and on every warehouse: hostile values of each class, and random values written in each format
and compared cell by cell with what the warehouse holds."""

import csv
import io
import json
import random
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harmonizer_dagster.core.spec import parse_spec
from harmonizer_dagster_tests.conftest import land, load_file

KEYED = {"k": {"source": "k"}}


def load(warehouse, tmp_path, spec_data: dict, name: str, data: bytes, columns: str):
    """Loads one file of a source declared inline; returns its stored rows by key, its issues
    (line, type, field) and its counts."""
    spec = parse_spec({"name": "v", "owner": "o", "natural_key": ["k"], **spec_data})
    load_file(spec, land(tmp_path, spec, name, data), name, warehouse, tmp_path / "staging")
    rows = {r[0]: r[1:] for r in warehouse.query(f"SELECT k, {columns} FROM {warehouse.table('v')} ORDER BY k")}
    issues = warehouse.query(
        "SELECT source_line_number, issue_type, field_name FROM {schema}.data_quality_issues "
        "WHERE source_type = 'v' ORDER BY source_line_number, issue_type"
    )
    return rows, [tuple(i) for i in issues], warehouse.partition_counts("v", name)


def csv_bytes(header: list[str], rows: list[list]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def parquet_bytes(table: pa.Table) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()


def xlsx_bytes(header: list[str], rows: list[list]) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


# --- Time zones ---------------------------------------------------------------------------------

TIMESTAMPS = {"columns": {**KEYED, "seen_at": {"type": "timestamp"}}}


def test_a_csv_or_json_timestamp_with_z_or_an_offset_is_stored_as_that_instant(warehouse, tmp_path):
    texts = ["2026-05-01T10:00:00Z", "2026-05-01T10:00:00+02:00", "2026-05-01 10:00:00.25", "2026-05-01T10:00:00-0530"]
    expected = {
        "1": (datetime(2026, 5, 1, 10),),
        "2": (datetime(2026, 5, 1, 8),),
        "3": (datetime(2026, 5, 1, 10, 0, 0, 250000),),
        "4": (datetime(2026, 5, 1, 15, 30),),
    }
    data = csv_bytes(["k", "seen_at"], [[str(i), t] for i, t in enumerate(texts, start=1)])
    rows, issues, _ = load(warehouse, tmp_path, {"format": "csv", **TIMESTAMPS}, "t.csv", data, "seen_at")
    assert (rows, issues) == (expected, [])
    ndjson = "".join(json.dumps({"k": str(i), "seen_at": t}) + "\n" for i, t in enumerate(texts, start=1)).encode()
    rows, issues, _ = load(warehouse, tmp_path, {"format": "ndjson", **TIMESTAMPS}, "t.ndjson", ndjson, "seen_at")
    assert (rows, issues) == (expected, [])


def test_a_parquet_timestamp_is_stored_as_its_instant_zone_aware_or_read_in_the_spec_zone(warehouse, tmp_path):
    instant = datetime(2026, 5, 1, 14, 0, 5, 123456, tzinfo=UTC)
    table = pa.table(
        {
            "k": ["1"],
            "aware": pa.array([instant], pa.timestamp("us", "America/New_York")),
            "naive": pa.array([datetime(2026, 1, 15, 10, 0)], pa.timestamp("ms")),
        }
    )
    spec = {
        "format": "parquet",
        "timezone": "Europe/Paris",
        "columns": {**KEYED, "aware": {"type": "timestamp"}, "naive": {"type": "timestamp"}},
    }
    rows, issues, _ = load(warehouse, tmp_path, spec, "t.parquet", parquet_bytes(table), "aware, naive")
    assert rows == {"1": (datetime(2026, 5, 1, 14, 0, 5, 123456), datetime(2026, 1, 15, 9, 0))}
    assert issues == []


def test_an_excel_datetime_is_read_in_the_spec_zone_and_a_time_on_a_date_column_is_rejected(warehouse, tmp_path):
    data = xlsx_bytes(
        ["k", "seen_at", "day"],
        [
            ["1", datetime(2026, 7, 1, 12, 30), datetime(2026, 7, 1)],
            ["2", datetime(2026, 7, 1), datetime(2026, 7, 1, 9)],
        ],
    )
    spec = {
        "format": "xlsx",
        "timezone": "America/New_York",
        "columns": {**KEYED, "seen_at": {"type": "timestamp"}, "day": {"type": "date"}},
    }
    spec["max_rejected_rate"] = 1
    rows, issues, counts = load(warehouse, tmp_path, spec, "t.xlsx", data, "seen_at, day")
    assert rows == {"1": (datetime(2026, 7, 1, 16, 30), date(2026, 7, 1))}
    assert issues == [(3, "invalid_date", "day")], "9:00 on a date column is no date: never cut to the day"
    assert (counts["records_imported"], counts["records_failed"]) == (1, 1)


# --- Decimals beyond their scale ----------------------------------------------------------------

# Most of these files' records are rejected: the version is still published, to show what is stored.
DECIMALS = {"max_rejected_rate": 1, "columns": {**KEYED, "price": {"type": "decimal", "precision": 10, "scale": 2}}}


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet", "xlsx"])
def test_a_decimal_beyond_its_scale_is_rejected_never_rounded_without_a_word(warehouse, tmp_path, fmt):
    values = ["19.999", "0.005", "1.50", "2.5e-3", "12.3"]
    if fmt == "csv":
        data = csv_bytes(["k", "price"], [[str(i), v] for i, v in enumerate(values, start=1)])
    elif fmt == "ndjson":
        data = "".join(f'{{"k": "{i}", "price": {v}}}\n' for i, v in enumerate(values, start=1)).encode()
    elif fmt == "parquet":
        data = parquet_bytes(pa.table({"k": [str(i) for i in range(1, 6)], "price": [float(v) for v in values]}))
    else:
        data = xlsx_bytes(["k", "price"], [[str(i), float(v)] for i, v in enumerate(values, start=1)])
    rows, issues, counts = load(warehouse, tmp_path, {"format": fmt, **DECIMALS}, f"t.{fmt}", data, "price")
    assert rows == {"3": (Decimal("1.50"),), "5": (Decimal("12.30"),)}
    first = 1 if fmt in ("ndjson", "parquet") else 2  # the first record's line
    rejected = [first, first + 1, first + 3]
    assert issues == [(line, "invalid_decimal", "price") for line in rejected]
    assert counts["records_failed"] == 3


def test_a_declared_rounding_rounds_and_records_each_altered_value(warehouse, tmp_path):
    spec = {"format": "csv", "columns": {**KEYED, "price": {**DECIMALS["columns"]["price"], "rounding": "half_up"}}}

    data = csv_bytes(["k", "price"], [["1", "19.999"], ["2", "0.005"], ["3", "1.5"]])
    rows, issues, counts = load(warehouse, tmp_path, spec, "t.csv", data, "price")
    assert rows == {"1": (Decimal("20.00"),), "2": (Decimal("0.01"),), "3": (Decimal("1.50"),)}
    assert issues == [(2, "altered_value", "price"), (3, "altered_value", "price")]
    assert counts["records_failed"] == 0


# --- Years of one to three digits, and a spec's date range ---------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet", "fixed_width"])
def test_a_year_of_fewer_than_four_digits_rejects_its_record_alone_on_every_warehouse(warehouse, tmp_path, fmt):
    texts = ["0026-05-01", "0226-05-01", "2026-05-01", "9999-12-31", "1000-01-01"]
    spec: dict = {"format": fmt, "max_rejected_rate": 1, "columns": {**KEYED, "day": {"type": "date"}}}
    if fmt == "csv":
        data = csv_bytes(["k", "day"], [[str(i), t] for i, t in enumerate(texts, start=1)])
    elif fmt == "ndjson":
        data = "".join(json.dumps({"k": str(i), "day": t}) + "\n" for i, t in enumerate(texts, start=1)).encode()
    elif fmt == "parquet":
        days = [date.fromisoformat(t) for t in texts]
        data = parquet_bytes(pa.table({"k": [str(i) for i in range(1, 6)], "day": pa.array(days, pa.date32())}))
    else:
        spec["columns"] = {"k": {"start": 1, "width": 3}, "day": {"type": "date", "start": 4, "width": 10}}
        data = "".join(f"{i:<3}{t}\n" for i, t in enumerate(texts, start=1)).encode()
    rows, issues, _ = load(warehouse, tmp_path, spec, f"t.{fmt}", data, "day")
    assert rows == {"3": (date(2026, 5, 1),), "4": (date(9999, 12, 31),), "5": (date(1000, 1, 1),)}
    first = 2 if fmt == "csv" else 1
    assert issues == [(first, "invalid_date", "day"), (first + 1, "invalid_date", "day")]


def test_a_spec_bounds_the_dates_it_accepts(warehouse, tmp_path):
    spec = {
        "format": "csv",
        "max_rejected_rate": 1,
        "date_range": ["2000-01-01", "2030-12-31"],
        "columns": {**KEYED, "day": {"type": "date"}, "seen_at": {"type": "timestamp"}},
    }
    data = csv_bytes(
        ["k", "day", "seen_at"],
        [["1", "1999-12-31", ""], ["2", "2030-12-31", "2030-12-31T23:59:59"], ["3", "", "2031-01-01T00:00:00Z"]],
    )
    rows, issues, _ = load(warehouse, tmp_path, spec, "t.csv", data, "day, seen_at")
    assert rows == {"2": (date(2030, 12, 31), datetime(2030, 12, 31, 23, 59, 59))}
    assert issues == [(2, "invalid_date", "day"), (4, "invalid_timestamp", "seen_at")]


# --- JSON: nested values, paths, a key twice, broken lines ---------------------------------------


def test_one_bad_ndjson_line_is_one_malformed_record_and_the_rest_loads(warehouse, tmp_path):
    lines = [
        '{"k": "1", "name": "Ada", "office": {"zip": "02139"}}',
        '{"k": "2", "name": {"first": "Bo"}, "office": {"zip": "10001"}}',
        '{"k": "3", "name": "Cy", "name": "Di", "office": {"zip": "60601"}}',
        '{"k": "4", "name": "Ed"} trailing garbage',
        '{"k": "5", "name": ',
        '{"k": "6", "name": "Flo", "office": {"zip": 94105}}',
    ]
    spec = {
        "format": "ndjson",
        "max_rejected_rate": 1,
        "columns": {**KEYED, "name": {}, "zip": {"source": "office.zip"}},
    }
    data = ("\n".join(lines) + "\n").encode()
    rows, issues, counts = load(warehouse, tmp_path, spec, "t.ndjson", data, "name, zip")
    assert rows == {"1": ("Ada", "02139"), "6": ("Flo", "94105")}
    assert issues == [(line, "malformed_record", None) for line in (2, 3, 4, 5)]
    assert (counts["records_in_file"], counts["records_imported"], counts["records_failed"]) == (6, 2, 4)
    messages = warehouse.query(
        "SELECT error_message FROM {schema}.failed_records WHERE source_type = 'v' ORDER BY source_line_number"
    )
    assert [m[0] for m in messages] == [
        "line 2: field 'name' holds an object, not one string value (name a field inside it as `source: name.<field>`)",
        "line 3: the key 'name' appears twice in the object",
        "line 4: not valid JSON: Extra data at character 26",
        "line 5: not valid JSON: Expecting value at character 21",
    ]


def test_a_json_number_keeps_every_digit_the_file_holds(warehouse, tmp_path):
    spec = {
        "format": "json",
        "columns": {**KEYED, "amount": {"type": "decimal", "precision": 38, "scale": 2}, "code": {}},
    }
    data = b'[{"k": "1", "amount": 12345678901234567.25, "code": 1.50}]'
    rows, issues, _ = load(warehouse, tmp_path, spec, "t.json", data, "amount, code")
    assert rows == {"1": (Decimal("12345678901234567.25"), "1.50")}
    assert issues == []


# --- Fixed width and workbooks ---------------------------------------------------------------------


def test_a_fixed_width_line_whose_fields_would_shift_is_rejected_never_loaded_shifted(warehouse, tmp_path):
    spec = {
        "format": "fixed_width",
        "columns": {
            "k": {"start": 1, "width": 3},
            "name": {"start": 4, "width": 8},
            "price": {"type": "decimal", "start": 12, "width": 7, "scale": 2},
        },
    }
    good = "1  Café    12.50  \n"
    tab = "2  Tab\t    13.00  \n"
    by_bytes = "3  Café   14.00  \n"  # padded as if é were one character per byte: 18 bytes, 17 characters
    data = (good + tab + by_bytes + "4  Dan     15.25  \n").encode()
    rows, issues, _ = load(warehouse, tmp_path, spec, "t.txt", data, "name, price")
    assert rows == {"1": ("Café", Decimal("12.50")), "4": ("Dan", Decimal("15.25"))}
    assert issues == [(2, "malformed_record", None), (3, "malformed_record", None)]


def test_a_workbook_formula_saved_without_its_value_is_reported_not_loaded_as_empty(warehouse, tmp_path):
    data = xlsx_bytes(["k", "total"], [["1", 10], ["2", "=B2*2"], ["3", 30]])
    spec = {"format": "xlsx", "columns": {**KEYED, "total": {"type": "integer"}}}
    rows, issues, _ = load(warehouse, tmp_path, spec, "t.xlsx", data, "total")
    assert rows == {"1": (10,), "3": (30,)}
    assert issues == [(3, "malformed_record", None)]
    message = warehouse.query("SELECT error_message FROM {schema}.failed_records WHERE source_type = 'v'")[0][0]
    assert message.startswith("line 3: cell B3 holds a formula (=B2*2) saved without its value"), message


# --- Random values round-tripped --------------------------------------------------------------------

ROUND_TRIP_SPEC = {
    **KEYED,
    "text": {},
    "whole": {"type": "integer"},
    "amount": {"type": "decimal", "precision": 18, "scale": 4},
    "day": {"type": "date"},
    "seen_at": {"type": "timestamp"},
    "flag": {"type": "boolean"},
}
LETTERS = "aZ9 ,;\"'é漢😀\u00a0-_/\\|"


def random_records(fmt: str, count: int = 120, seed: int = 7) -> list[dict]:
    """Records the format can hold exactly: unicode text (no leading or trailing space, which is
    trimmed), boundary numbers, dates at the edges of the accepted range, instants with offsets,
    and empty values."""
    rng = random.Random(f"{seed}-{fmt}")
    workbook = fmt == "xlsx"
    biggest = 2**53 if workbook else 2**63 - 1
    earliest = date(1900, 3, 1) if workbook else date(1000, 1, 1)
    records = []
    for number in range(count):
        text = "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 30))).strip().strip("\u00a0")
        whole = rng.choice([biggest, -biggest, 0, rng.randint(-biggest, biggest)])
        digits = 15 if workbook else 18
        unscaled = rng.randint(-(10 ** (digits - 1)) + 1, 10 ** (digits - 1) - 1)
        amount = Decimal(unscaled).scaleb(-4).quantize(Decimal("0.0001"))
        day = rng.choice([earliest, date(9999, 12, 31), earliest + timedelta(days=rng.randint(0, 2_900_000))])
        day = min(day, date(9999, 12, 31))
        at = datetime(2026, 1, 1) + timedelta(seconds=rng.randint(-(10**9), 10**9))
        if not workbook:
            at += timedelta(microseconds=rng.randint(0, 999_999))
        record = {"k": f"{number:05d}", "text": text or "x", "whole": whole, "amount": amount, "day": day}
        record |= {"seen_at": at, "flag": rng.random() < 0.5}
        for name in ("text", "whole", "amount", "day", "seen_at", "flag"):
            if rng.random() < 0.1:
                record[name] = None
        records.append(record)
    return records


def as_file(fmt: str, records: list[dict], rng: random.Random) -> bytes:
    """The records written as a file of the format; CSV and JSON timestamps carry a random offset."""

    def instant(value: datetime) -> str:
        offset = timedelta(minutes=rng.choice([-330, -300, 0, 60, 345, 840]))
        return value.replace(tzinfo=UTC).astimezone(timezone(offset)).isoformat()

    def text(name: str, value) -> str | None:
        if value is None:
            return None
        if name == "seen_at":
            return instant(value)
        if name == "flag":
            return "true" if value else "false"
        return str(value)

    names = list(ROUND_TRIP_SPEC)
    if fmt == "csv":
        return csv_bytes(names, [[text(n, r[n]) or "" for n in names] for r in records])
    if fmt in ("json", "ndjson"):

        def value(name: str, v):
            if v is None or name in ("text", "k", "day", "seen_at"):
                return text(name, v)
            return v if name != "amount" else RawNumber(str(v))

        objects = [{n: value(n, r[n]) for n in names if r[n] is not None or rng.random() < 0.5} for r in records]
        if fmt == "ndjson":
            return "".join(dumps(o) + "\n" for o in objects).encode()
        return ("[\n" + ",\n".join(dumps(o) for o in objects) + "\n]").encode()
    if fmt == "parquet":
        zone = ZoneInfo("Asia/Kolkata")
        aware = [None if r["seen_at"] is None else r["seen_at"].replace(tzinfo=UTC).astimezone(zone) for r in records]
        table = pa.table(
            {
                "k": [r["k"] for r in records],
                "text": [r["text"] for r in records],
                "whole": pa.array([r["whole"] for r in records], pa.int64()),
                "amount": pa.array([r["amount"] for r in records], pa.decimal128(18, 4)),
                "day": pa.array([r["day"] for r in records], pa.date32()),
                "seen_at": pa.array(aware, pa.timestamp("us", "Asia/Kolkata")),
                "flag": [r["flag"] for r in records],
            }
        )
        return parquet_bytes(table)
    if fmt == "xlsx":
        rows = [
            [
                r["k"],
                r["text"],
                r["whole"],
                None if r["amount"] is None else float(r["amount"]),
                r["day"],
                r["seen_at"],
                r["flag"],
            ]
            for r in records
        ]
        return xlsx_bytes(names, rows)
    widths = {"k": 5, "text": 40, "whole": 21, "amount": 22, "day": 10, "seen_at": 26, "flag": 5}
    lines = []
    for r in records:
        cells = [
            (str(r[n].isoformat()) if n == "seen_at" and r[n] else text(n, r[n]) or "").ljust(widths[n]) for n in names
        ]
        lines.append("".join(cells))
    return ("\n".join(lines) + "\n").encode()


class RawNumber(str):
    """A decimal written into JSON as a number with every digit."""


def dumps(obj: dict) -> str:
    parts = []
    for key, value in obj.items():
        shown = str(value) if isinstance(value, RawNumber) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{json.dumps(key)}: {shown}")
    return "{" + ", ".join(parts) + "}"


def round_trip_spec(fmt: str) -> dict:
    if fmt != "fixed_width":
        return {"format": fmt, "columns": ROUND_TRIP_SPEC}
    widths = {"k": 5, "text": 40, "whole": 21, "amount": 22, "day": 10, "seen_at": 26, "flag": 5}
    columns, start = {}, 1
    for name, width in widths.items():
        columns[name] = {**ROUND_TRIP_SPEC[name], "start": start, "width": width}
        start += width
    return {"format": fmt, "columns": columns}


@pytest.mark.parametrize("fmt", ["csv", "json", "ndjson", "parquet", "xlsx", "fixed_width"])
def test_random_values_are_stored_exactly_as_each_format_holds_them(warehouse, tmp_path, fmt):
    records = random_records(fmt)
    data = as_file(fmt, records, random.Random(fmt))
    columns = "text, whole, amount, day, seen_at, flag"
    rows, issues, counts = load(warehouse, tmp_path, round_trip_spec(fmt), f"t.{fmt}", data, columns)
    assert issues == []
    assert counts["records_imported"] == len(records)
    for r in records:
        stored = dict(zip(["text", "whole", "amount", "day", "seen_at", "flag"], rows[r["k"]], strict=True))
        assert stored == {n: r[n] for n in stored}, (fmt, r["k"])
