import gzip
import json

import pytest

from harmonizer_dagster.core.reading import ReadResult, SourceFormatError, read_batches
from harmonizer_dagster.core.spec import parse_spec


def spec_for(fmt: str, **extra):
    return parse_spec(
        {
            "name": "things",
            "owner": "o",
            "format": fmt,
            "natural_key": ["thing_id"],
            "columns": {"thing_id": {"source": "Thing ID"}, "label": {"source": "Label"}},
            **extra,
        }
    )


def rows(spec, path, batch_rows=2, skip=0):
    result = ReadResult()
    batches = list(read_batches(spec, path, batch_rows, result, skip))
    return [r for b in batches for r in b.to_pylist()], [b.num_rows for b in batches], result


def test_csv_streams_in_exact_batches_with_the_physical_line_of_each_record(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Label,Thing ID,Ignored\n" + "".join(f"l{i},{i},x\n" for i in range(1, 6)))
    records, sizes, result = rows(spec_for("csv"), path)
    assert sizes == [2, 2, 1]
    assert records[0] == {"thing_id": "1", "label": "l1", "_source_line": 2}, "the header is line 1"
    assert [r["_source_line"] for r in records] == [2, 3, 4, 5, 6]
    assert result.extra_fields == ["Ignored"]


def test_resumed_read_skips_completed_batches(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Thing ID,Label\n" + "".join(f"{i},l{i}\n" for i in range(1, 6)))
    records, sizes, _ = rows(spec_for("csv"), path, skip=2)
    assert sizes == [1]
    assert records == [{"thing_id": "5", "label": "l5", "_source_line": 6}]


def test_gzip_csv_and_latin1(tmp_path):
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wb") as handle:
        handle.write("Thing ID,Label\n1,Café\n".encode("latin-1"))
    records, _, _ = rows(spec_for("csv", encoding="latin-1"), path)
    assert records == [{"thing_id": "1", "label": "Café", "_source_line": 2}]


def test_malformed_csv_lines_are_captured_not_dropped(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('Thing ID,Label\n1,a\n2,b,extra\n3\n4,"quoted, comma"\n')
    records, _, result = rows(spec_for("csv"), path)
    assert [r["thing_id"] for r in records] == ["1", "4"]
    assert records[1]["label"] == "quoted, comma"
    assert [(m.line, m.raw_text) for m in result.malformed] == [(3, "2,b,extra"), (4, "3")]


def test_missing_columns_fail_clearly(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Thing ID,Name\n1,a\n")
    with pytest.raises(SourceFormatError, match=r"missing columns \['Label'\]"):
        rows(spec_for("csv"), path)


def test_ndjson_and_json_array_read_every_value_as_text(tmp_path):
    ndjson = tmp_path / "t.ndjson"
    ndjson.write_text(
        '{"Thing ID": 7, "Label": 12345678901234567.25}\n\n{"Thing ID": "8", "Label": true}\n{"Thing ID": "9"}\n'
    )
    records, _, result = rows(spec_for("ndjson"), ndjson)
    assert records == [
        {"thing_id": "7", "label": "12345678901234567.25", "_source_line": 1},
        {"thing_id": "8", "label": "true", "_source_line": 3},
        {"thing_id": "9", "label": None, "_source_line": 4},
    ], "numbers keep the digits the file holds"
    assert result.malformed == []
    array = tmp_path / "t.json"
    array.write_text(json.dumps([{"Thing ID": "a", "Label": "x"}, {"Thing ID": "b", "Label": 1.50}]))
    records, _, _ = rows(spec_for("json"), array)
    assert [(r["thing_id"], r["label"], r["_source_line"]) for r in records] == [("a", "x", 1), ("b", "1.5", 2)]


def test_a_json_record_that_is_no_flat_object_is_malformed_and_the_rest_loads(tmp_path):
    path = tmp_path / "t.ndjson"
    lines = [
        '{"Thing ID": "1", "Label": "ok"}',
        '{"Thing ID": "2", "Label": {"nested": true}}',
        '{"Thing ID": "3", "Label": [1, 2]}',
        '{"Thing ID": "4", "Label": "a", "Label": "b"}',
        '{"Thing ID": "5", "Label": "x"} trailing',
        '{"Thing ID": "6", ',
        "[1, 2]",
        '{"Thing ID": "7", "Label": NaN}',
        '{"Thing ID": "8", "Label": "' + "x" * (17 << 20) + '"}',
        '{"Thing ID": "9", "Label": "last"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    records, _, result = rows(spec_for("ndjson"), path)
    assert [(r["thing_id"], r["_source_line"]) for r in records] == [("1", 1), ("9", 10)]
    problems = {m.line: m.error for m in result.malformed}
    assert problems == {
        2: "field 'Label' holds an object, not one string value (name a field inside it as `source: Label.<field>`)",
        3: "field 'Label' holds an array, not one string value (name a field inside it as `source: Label.<field>`)",
        4: "the key 'Label' appears twice in the object",
        5: "not valid JSON: Extra data at character 33",
        6: "not valid JSON: Expecting property name enclosed in double quotes at character 20",
        7: "holds an array, not an object",
        8: "not valid JSON: NaN is not a JSON value",
        9: f"the line is {len(lines[8]) + 1:,} bytes, over the 16 MiB a record may hold",
    }
    assert len(result.malformed[-1].raw_text) == 10_000, "a huge record is kept cut short"


def test_a_column_may_name_a_field_inside_an_object(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(
        json.dumps(
            [
                {"Thing ID": "1", "home_office": {"Zip": "02139", "city": "Cambridge"}},
                {"Thing ID": "2", "home_office": None},
                {"Thing ID": "3"},
            ]
        )
    )
    spec = parse_spec(
        {
            "name": "things",
            "owner": "o",
            "format": "json",
            "natural_key": ["thing_id"],
            "columns": {"thing_id": {"source": "Thing ID"}, "zip": {"source": "home_office.zip", "required": True}},
        }
    )
    records, _, result = rows(spec, path)
    assert [(r["thing_id"], r["zip"]) for r in records] == [("1", "02139"), ("2", None), ("3", None)]
    assert result.extra_fields == [], "the object a column reads inside is no unknown field"


def test_broken_json_array_fails_naming_line_and_column(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('[\n  {"Thing ID": "1"},\n  {"Thing ID": "2" "Label": "x"}\n]\n')
    with pytest.raises(SourceFormatError) as failed:
        rows(spec_for("json"), path)
    message = str(failed.value)
    assert message.startswith("t.json line 3, column 20: not valid JSON (Expecting ',' delimiter)"), message
    assert str(tmp_path) not in message and "maximum_object_size" not in message
    path.write_text('[\n  {"Thing ID": "1"},\n  {"Thing ID": \n')
    with pytest.raises(SourceFormatError, match=r"t\.json line 3, column 3: the file ends inside element 2"):
        rows(spec_for("json"), path)


def test_a_malformed_line_is_one_record_whatever_its_number_of_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Thing ID,Label,Extra1,Extra2\n1,a,b,c\nbroken\n")
    spec = parse_spec(
        {
            "name": "t",
            "owner": "o",
            "format": "csv",
            "natural_key": ["thing_id"],
            "columns": {"thing_id": {"source": "Thing ID"}, "label": {"source": "Label"}},
        }
    )
    _, _, result = rows(spec, path)
    assert len(result.malformed) == 1


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("Thing ID,Label\n1,a\n".encode("utf-8-sig"))
    records, _, _ = rows(spec_for("csv"), path)
    assert records == [{"thing_id": "1", "label": "a", "_source_line": 2}]


def test_json_without_a_required_field_is_refused_and_extra_keys_are_reported(tmp_path):
    path = tmp_path / "t.ndjson"
    path.write_text(json.dumps({"Thing ID": "1", "Label": "a", "New": 1}) + "\n")
    _, _, result = rows(spec_for("ndjson"), path)
    assert result.extra_fields == ["New"]
    path.write_text(json.dumps({"thing_id_renamed": "1", "Label": "a"}) + "\n")
    with pytest.raises(SourceFormatError, match=r"required field\(s\) \['Thing ID'\]"):
        rows(spec_for("ndjson"), path)


def physical_csv(records: int, newline: str) -> tuple[bytes, list[int], list[int]]:
    """A CSV larger than a scan chunk whose values hold line breaks (in read and unread columns),
    with blank lines and malformed records; the lines its records and rejects start on."""
    lines, starts, rejected, line = [f"Thing ID,Label,Note{newline}"], [], [], 2
    for i in range(records):
        if i % 997 == 0:
            lines.append(newline)  # a blank line, skipped
            line += 1
        if i % 1009 == 0:
            lines.append(f"{i},too,many,fields{newline}")
            rejected.append(line)
            line += 1
        label = f'"l{i}\nsecond ""line"""' if i % 7 == 0 else f"l{i}"
        note = '"a\r\nb\n\nc"' if i % 11 == 0 else "n" * 40
        record = f"{i},{label},{note}{newline}"
        lines.append(record)
        starts.append(line)
        line += record.count("\n")
    return "".join(lines).encode(), starts, rejected


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_each_record_carries_the_physical_line_it_starts_on_across_chunks_batches_and_a_resume(tmp_path, name, newline):
    data, starts, rejected = physical_csv(200_000, newline)
    path = tmp_path / name
    path.write_bytes(gzip.compress(data, 1) if name.endswith(".gz") else data)
    assert len(data) > 8 << 20, "the file spans several scan chunks"
    records, _, result = rows(spec_for("csv"), path, batch_rows=5_000)
    assert [r["_source_line"] for r in records] == starts
    assert [r["thing_id"] for r in records] == [str(i) for i in range(200_000)]
    assert [m.line for m in result.malformed] == rejected
    resumed, _, _ = rows(spec_for("csv"), path, batch_rows=5_000, skip=30)
    assert [r["_source_line"] for r in resumed] == starts[150_000:]


def test_a_file_read_line_by_line_gives_the_same_physical_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('Thing ID,Label\n1,"a\nb"\n2,"runaway\n\n3,c\n4,"d\n\ne"\n')
    result = ReadResult()
    records = [r for b in read_batches(spec_for("csv"), path, 2, result, 0, line_by_line=True) for r in b.to_pylist()]
    assert [(r["thing_id"], r["_source_line"]) for r in records] == [("1", 2), ("3", 6), ("4", 7)]
    assert [m.line for m in result.malformed] == [4]


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_records_carry_their_physical_lines(tmp_path, codec):
    path = tmp_path / "t.csv"
    path.write_bytes('Thing ID,Label\n1,"a\nb"\n\n2,c\n'.encode(codec))
    records, _, _ = (
        rows(spec_for("csv", encoding="utf-16"), path)
        if codec == "utf-16-le"
        else rows(spec_for("csv", encoding="auto"), path)
    )
    assert [(r["thing_id"], r["_source_line"]) for r in records] == [("1", 2), ("2", 5)]


def test_ndjson_records_carry_their_physical_line_and_array_objects_their_position(tmp_path):
    ndjson = tmp_path / "t.ndjson"
    ndjson.write_text('{"Thing ID": "1"}\n\n  \r\n{"Thing ID": "2"}\r\n{"Thing ID": "3"}')
    records, _, _ = rows(spec_for("ndjson"), ndjson)
    assert [(r["thing_id"], r["_source_line"]) for r in records] == [("1", 1), ("2", 4), ("3", 5)]
    array = tmp_path / "t.json"
    array.write_text('[\n  {"Thing ID": "a"},\n\n  {"Thing ID": "b"}\n]')
    records, _, _ = rows(spec_for("json"), array)
    assert [(r["thing_id"], r["_source_line"]) for r in records] == [("a", 1), ("b", 2)]
