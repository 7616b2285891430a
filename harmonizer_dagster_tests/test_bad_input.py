"""Bad input is never lost silently: every file either loads correctly or fails or flags with a
message saying what and where, on every warehouse, and the registry's counts reconcile."""

import codecs
import gzip
import re

import pytest

from harmonizer_dagster.core.landing import Ignored, scan_folder
from harmonizer_dagster.core.reading import SourceFormatError
from harmonizer_dagster.core.spec import parse_spec
from harmonizer_dagster_tests.conftest import load_file

SOURCE = "registry"
FILE = "registry.csv"
HEADER = b"id,name,city\n"


def spec_for(**extra):
    return parse_spec(
        {
            "name": SOURCE,
            "owner": "o",
            "format": "csv",
            "natural_key": ["id"],
            "columns": {
                "id": {"source": "id"},
                "name": {"source": "name"},
                "city": {"source": "city", "checks": [{"pattern": "^[a-z]+$", "issue_type": "invalid_city"}]},
            },
            **extra,
        },
        "registry.yaml",
    )


def load(warehouse, tmp_path, data: bytes, name: str = FILE, **extra):
    """Lands `data` as a file of the source and loads it; returns the registry's counts."""
    folder = tmp_path / "landing" / SOURCE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    load_file(spec_for(**extra), tmp_path / "landing", name, warehouse, tmp_path / "staging")
    return warehouse.partition_counts(SOURCE, name)


def stored(warehouse):
    return warehouse.query(f"SELECT id, name, city FROM {warehouse.table(SOURCE)} ORDER BY id")


def failed_records(warehouse):
    return warehouse.query("SELECT error_type, error_message FROM {schema}.failed_records ORDER BY error_message")


def issues(warehouse, issue_type):
    return warehouse.query(
        "SELECT source_line_number, severity, field_name, invalid_value, expected_format "
        "FROM {schema}.data_quality_issues WHERE issue_type = %s ORDER BY source_line_number, field_name",
        (issue_type,),
    )


def reconciles(counts) -> bool:
    return (
        counts["records_in_file"] == counts["records_imported"] + counts["records_failed"] + counts["records_skipped"]
    )


def test_a_header_with_an_unterminated_quote_fails_naming_the_line(warehouse, tmp_path):
    with pytest.raises(SourceFormatError) as raised:
        load(warehouse, tmp_path, b'id,name,"city\n1,a,x\n2,b,y\n')
    assert str(raised.value) == (
        'registry.csv line 1: the header has an unterminated quote in column 3 ("city...); '
        "a header must be one line with every quote closed"
    )
    assert warehouse.partition_counts(SOURCE, FILE) is None, "no completed load"


def test_a_quote_that_never_closes_costs_its_line_only(warehouse, tmp_path):
    counts = load(warehouse, tmp_path, HEADER + b'1,a,x\n2,"b,y\n3,c,z\n4,d,w\n')
    assert stored(warehouse) == [("1", "a", "x"), ("3", "c", "z"), ("4", "d", "w")]
    assert counts["records_in_file"] == 4 and counts["records_failed"] == 1 and reconciles(counts)
    assert failed_records(warehouse) == [
        ("malformed_record", "line 3: unterminated quote: the quoted value does not close before the end of the file")
    ]
    assert [(line, severity, value) for line, severity, _, value, _ in issues(warehouse, "malformed_record")] == [
        (3, "error", '2,"b,y')
    ]


def test_a_quote_closing_lines_later_is_malformed_and_the_lines_it_spans_are_read(warehouse, tmp_path):
    counts = load(warehouse, tmp_path, HEADER + b'1,a,x\n2,"b\n3,c,z\n4,d"w\n5,e,v\n')
    assert stored(warehouse) == [("1", "a", "x"), ("3", "c", "z"), ("5", "e", "v")]
    assert counts["records_in_file"] == 5 and counts["records_failed"] == 2 and reconciles(counts)
    assert [message for _, message in failed_records(warehouse)] == [
        "line 3: misplaced quote: a quoted value is followed by more text before the next delimiter "
        '(a quote inside a value is written twice: "")',
        "line 5: 2 fields where the header has 3",
    ]


def test_a_runaway_quote_in_a_big_file_loses_no_line(warehouse, tmp_path):
    # DuckDB takes the rest of the file for one malformed record, and in bigger files its parallel
    # scan resynchronizes somewhere after the quote, skipping lines without a reject.
    rows = 30_000
    body = b"".join(b"%d,n,c\n" % i for i in range(1, rows + 1))
    counts = load(warehouse, tmp_path, HEADER + body + b'0,"runaway,c\n' + body.replace(b",n,", b",m,"))
    assert counts["records_in_file"] == 2 * rows + 1 and reconciles(counts)
    assert counts["records_imported"] == rows and counts["records_skipped"] == rows, "second copies supersede"
    assert failed_records(warehouse) == [
        ("malformed_record", "line 30002: unterminated quote: the quoted value runs past 131,072 characters")
    ]


@pytest.mark.parametrize(
    "encoded",
    [
        "id,name,city\n1,Café,x\n".encode("utf-16"),
        codecs.BOM_UTF16_BE + "id,name,city\n1,Café,x\n".encode("utf-16-be"),
        "id,name,city\n1,Café,x\n".encode("utf-8-sig"),
    ],
    ids=["utf-16-le", "utf-16-be", "utf-8"],
)
def test_a_byte_order_mark_decides_the_encoding_whatever_the_spec_says(warehouse, tmp_path, encoded):
    counts = load(warehouse, tmp_path, encoded, encoding="latin-1")
    assert counts["records_imported"] == 1
    assert stored(warehouse) == [("1", "Café", "x")]


@pytest.mark.parametrize("lines_before", [1, 5_000])
def test_an_undecodable_byte_fails_naming_its_offset_line_and_the_spec_field(warehouse, tmp_path, lines_before):
    before = HEADER + b"".join(b"%d,n,c\n" % i for i in range(lines_before))
    with pytest.raises(SourceFormatError) as raised:
        load(warehouse, tmp_path, before + "9,Café,x\n".encode("latin-1"))
    offset, line = len(before) + 5, lines_before + 2
    assert str(raised.value) == (
        f"registry.csv: byte {offset} (line {line}) is not valid utf-8; set `encoding:` in registry.yaml to the "
        "file's encoding (latin-1, utf-16) or `auto`"
    )
    assert warehouse.partition_counts(SOURCE, FILE) is None


@pytest.mark.parametrize(
    "name, encoded",
    [
        (FILE, "id,name,city\n1,Café,x\n".encode("latin-1")),
        (FILE, "id,name,city\n1,Café,x\n".encode()),
        (FILE, "id,name,city\n1,Café,x\n".encode("utf-16-le")),
        (FILE, "id,name,city\n1,Café,x\n".encode("utf-16-be")),
        ("registry.csv.gz", gzip.compress(b"id,name,city\n" + b"2,n,c\n" * 70_000 + "1,Café,x\n".encode("latin-1"))),
    ],
    ids=["latin-1", "utf-8", "utf-16-le", "utf-16-be", "gzip-latin-1-late"],
)
def test_encoding_auto_detects_the_encoding(warehouse, tmp_path, name, encoded):
    counts = load(warehouse, tmp_path, encoded, name=name, encoding="auto")
    assert reconciles(counts) and counts["records_failed"] == 0
    assert ("1", "Café", "x") in stored(warehouse)


def test_nul_bytes_removed_from_a_value_are_reported(warehouse, tmp_path):
    counts = load(warehouse, tmp_path, HEADER + b"1,a\x00b,x\n2,c,y\x00\x001\n3,d,z\n")
    assert stored(warehouse) == [("1", "ab", "x"), ("3", "d", "z")]
    assert counts["records_failed"] == 1 and counts["warnings"] == 2 and reconciles(counts)
    assert issues(warehouse, "altered_value") == [
        (2, "warning", "name", "a\u2400b", "no NUL bytes: the ones shown as \u2400 were removed from the stored value"),
        (
            3,
            "warning",
            "city",
            "y\u2400\u24001",
            "no NUL bytes: the ones shown as \u2400 were removed from the stored value",
        ),
    ]
    assert [(line, value) for line, _, _, value, _ in issues(warehouse, "invalid_city")] == [(3, "y\u2400\u24001")]


def test_a_duplicated_header_column_fails_naming_it_and_its_positions(warehouse, tmp_path):
    with pytest.raises(
        SourceFormatError, match=re.escape("registry.csv line 1: column 'zip' appears twice (columns 3 and 5)")
    ):
        load(warehouse, tmp_path, b"id,name,zip,city,zip\n1,a,1,x,2\n")
    assert warehouse.partition_counts(SOURCE, FILE) is None


def test_hidden_and_temporary_files_are_skipped_visibly(tmp_path):
    folder = tmp_path / SOURCE
    for key in ("ok.csv", ".partial.csv", "_tmp/part.csv", "sub/.hidden.csv", "sub/fine.csv", "a\tb.csv"):
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_text("id\n1\n")
    ignored: list[Ignored] = []
    assert [item.key for item in scan_folder(tmp_path, SOURCE, ignored)] == ["ok.csv", "sub/fine.csv"]
    assert [(item.key, item.reason.split(",")[0]) for item in ignored] == [
        (".partial.csv", "its name starts with '.'"),
        ("_tmp", "its name starts with '_'"),
        ("a\tb.csv", "'a\\tb.csv' holds '...'"),
        ("sub/.hidden.csv", "its name starts with '.'"),
    ]
    assert "folder" in ignored[1].reason and "nothing in it is loaded" in ignored[1].reason


def test_a_delimiter_ending_every_line_loads_and_its_unnamed_column_is_reported(warehouse, tmp_path):
    counts = load(warehouse, tmp_path, b"id,name,city,\n1,a,x,\n2,b,y,\n")
    assert stored(warehouse) == [("1", "a", "x"), ("2", "b", "y")]
    assert counts["records_imported"] == 2 and reconciles(counts)
    assert warehouse.query("SELECT extra_fields FROM {schema}.sources") == [("(unnamed column 4)",)]


def test_header_names_are_trimmed_and_odd_names_are_read(warehouse, tmp_path):
    counts = load(warehouse, tmp_path, b' id , name ,city,"a\'b ""c"""\n1,a,x,q\n')
    assert stored(warehouse) == [("1", "a", "x")] and counts["records_imported"] == 1
    assert warehouse.query("SELECT extra_fields FROM {schema}.sources") == [('a\'b "c"',)]


@pytest.mark.parametrize(
    "header, message",
    [
        (b"id,,name,city", "column 2 has no name; every column but a trailing one needs a name"),
        (b",id,name,city", "column 1 has no name; every column but a trailing one needs a name"),
        (b"id, \t,name,city", "column 2 has no name; every column but a trailing one needs a name"),
        (b"id,name,,city,", "column 3 has no name; every column but a trailing one needs a name"),
        (b"id,name,city, city", "column 'city' appears twice (columns 3 and 4)"),
        (b",,,", "the header has no column names, only delimiters"),
    ],
    ids=["mid-header", "first", "whitespace-only", "two-empty", "same-after-trimming", "only-delimiters"],
)
def test_an_unnamed_or_ambiguous_header_column_fails_naming_its_position(warehouse, tmp_path, header, message):
    with pytest.raises(SourceFormatError) as raised:
        load(warehouse, tmp_path, header + b"\n1,a,x,y\n")
    assert str(raised.value) == f"registry.csv line 1: {message}"
    assert warehouse.partition_counts(SOURCE, FILE) is None


GZIP_FORMATS = {
    "csv": (HEADER + b"".join(b"%d,n,c\n" % i for i in range(60_000)), "registry.csv.gz"),
    "ndjson": (b"".join(b'{"id": "%d", "name": "n", "city": "c"}\n' % i for i in range(60_000)), "r.ndjson.gz"),
    "json": (
        b"[" + b",\n".join(b'{"id": "%d", "name": "n", "city": "c"}' % i for i in range(60_000)) + b"]",
        "r.json.gz",
    ),
}


@pytest.mark.parametrize("file_format", list(GZIP_FORMATS))
@pytest.mark.parametrize("cut", [100, 0.5], ids=["in-the-header", "in-the-data"])
def test_a_truncated_gzip_file_fails_naming_it_and_what_to_do(warehouse, tmp_path, file_format, cut):
    data, name = GZIP_FORMATS[file_format]
    compressed = gzip.compress(data)
    with pytest.raises(SourceFormatError) as raised:
        load(
            warehouse,
            tmp_path,
            compressed[: cut if isinstance(cut, int) else int(len(compressed) * cut)],
            name=name,
            format=file_format,
        )
    assert str(raised.value) == (
        f"{name} is truncated: the gzip stream ends before its end marker; re-upload the complete file"
    )
    assert warehouse.partition_counts(SOURCE, name) is None
    assert not [p for p in (tmp_path / "staging").rglob("*") if p.is_file()], "a complete upload has other bytes"


@pytest.mark.parametrize("file_format", list(GZIP_FORMATS))
@pytest.mark.parametrize("compression", ["auto", "gzip"])
def test_a_file_named_gz_that_is_not_gzip_fails_saying_what_to_change(warehouse, tmp_path, file_format, compression):
    data, name = GZIP_FORMATS[file_format]
    with pytest.raises(SourceFormatError) as raised:
        load(warehouse, tmp_path, data, name=name, format=file_format, compression=compression)
    declared = "its spec declares `compression: gzip`" if compression == "gzip" else "its name ends in .gz"
    assert str(raised.value) == (
        f"{name} is not gzip-compressed although {declared}; land it compressed, or uncompressed under a name "
        "without .gz, or set `compression: none` in registry.yaml if the source's files never are"
    )


def rejected_rate_check(warehouse, name: str = FILE, **extra):
    from harmonizer_dagster.core.quality import checks_for, run_check

    check = next(c for c in checks_for(spec_for(**extra)) if c.name == "rejected_rate")
    assert check.severity == "error", "blocking: a failing version is not published"
    return run_check(warehouse, spec_for(**extra), check, name, "check-run")


@pytest.mark.parametrize(
    "rows",
    [b"1,a,X\n2,b,Y\n3,c,Z\n", b",a,x\n,b,y\n,c,z\n"],
    ids=["every-record-rejected", "every-key-missing"],
)
def test_a_version_rejecting_most_records_fails_the_blocking_rejected_rate_check(warehouse, tmp_path, rows):
    counts = load(warehouse, tmp_path, HEADER + rows)
    assert counts["records_failed"] == 3 and counts["records_imported"] == 0
    evaluation = rejected_rate_check(warehouse)
    assert not evaluation.passed and (evaluation.observed, evaluation.threshold) == (1.0, 0.5)
    assert evaluation.message == "100.00% of records rejected (3 of 3; at most 50.00% allowed by max_rejected_rate)"
    assert warehouse.query(
        "SELECT DISTINCT severity, passed, observed_value, threshold FROM {schema}.data_quality_checks "
        "WHERE check_name = 'rejected_rate'"
    ) == [("error", False, 1.0, 0.5)], "the audit and the check evaluated again agree"


def test_max_rejected_rate_sets_the_share_a_version_may_reject(warehouse, tmp_path):
    load(warehouse, tmp_path, HEADER + b"1,a,X\n2,b,y\n3,c,z\n4,d,w\n")
    assert rejected_rate_check(warehouse).passed, "a quarter rejected is under the default"
    assert not rejected_rate_check(warehouse, max_rejected_rate=0.2).passed
    assert rejected_rate_check(warehouse, max_rejected_rate=0.25).passed, "the threshold itself is allowed"


def test_every_issue_names_the_physical_line_its_record_starts_on(warehouse, tmp_path):
    data = HEADER + b'1,"two\nlines",x\n\n2,b,BAD\n3,c\n1,"a\n\nb",y\n4,d,z\n'
    counts = load(warehouse, tmp_path, data)
    assert counts["records_in_file"] == 5 and reconciles(counts)
    assert [(line, value) for line, _, _, value, _ in issues(warehouse, "invalid_city")] == [(5, "BAD")]
    assert [(line, value) for line, _, _, value, _ in issues(warehouse, "malformed_record")] == [(6, "3,c")]
    assert warehouse.query(
        "SELECT source_line_number, error_type, error_message FROM {schema}.failed_records ORDER BY 1"
    ) == [
        (5, "validation_error", "city: invalid_city"),
        (6, "malformed_record", "line 6: 2 fields where the header has 3"),
    ]
    assert [(line, message) for line, _, _, _, message in issues(warehouse, "duplicate_key")] == [
        (2, "unique natural key; the record on line 7 was kept")
    ]
    table = warehouse.table(SOURCE)
    assert warehouse.query(f"SELECT id, _source_line FROM {table} ORDER BY id") == [("1", 7), ("4", 10)]
