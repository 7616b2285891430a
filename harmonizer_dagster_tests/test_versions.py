"""A file's version comes from its name when the spec says how to read it, else from its
modification time: a fresh clone gives every shipped file the version its name states."""

from datetime import UTC, datetime

import pytest

from harmonizer_dagster.core.files import FileFingerprint, version_key
from harmonizer_dagster.core.spec import SpecError, parse_spec

CLONED_TODAY = FileFingerprint("ab" * 32, 10, datetime(2026, 11, 30, tzinfo=UTC))
QUARTER = r"registry_(?P<year>\d{4})-Q(?P<quarter>[1-4])"
DAY = r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"


@pytest.mark.parametrize(
    ("strategy", "pattern", "file_name", "expected"),
    [
        ("quarterly", QUARTER, "registry_2026-Q3.csv", "2026-Q3"),
        ("quarterly", QUARTER, "registry_2026-Q4.csv.gz", "2026-Q4"),
        ("quarterly", QUARTER, "registry latest.csv", "2026-Q4"),  # no match: modification time
        ("quarterly", DAY, "export_2026-02-11.csv", "2026-Q1"),
        ("daily", DAY, "court_2026-11-15.ndjson", "2026-11-15"),
        ("monthly", DAY, "court_2026-11-15.ndjson", "2026-11"),
        ("daily", None, "court_2026-11-15.ndjson", "2026-11-30"),
        ("content_hash", None, "anything.csv", "ab" * 8),
        ("content_hash", r"v(?P<version>\d+)", "feed_v17.json", "17"),
    ],
)
def test_the_version_a_file_name_states(strategy, pattern, file_name, expected):
    assert version_key(strategy, CLONED_TODAY, file_name, pattern) == expected


def test_the_shipped_registry_sample_is_the_quarter_its_name_says(specs):
    spec = specs["business_registry"]
    assert version_key(spec.version_strategy, CLONED_TODAY, "registry_2026-Q3.csv", spec.version_pattern) == "2026-Q3"


@pytest.mark.parametrize(
    ("strategy", "pattern", "problem"),
    [
        ("daily", r"(?P<year>\d{4})", "needs the named group(s) day, month for daily versions"),
        ("quarterly", r"(?P<year>\d{4}", "not a valid regular expression"),
        ("content_hash", r"(?P<year>\d{4})", "name a group `version`"),
    ],
)
def test_a_pattern_that_cannot_name_versions_is_a_spec_error(strategy, pattern, problem):
    data = {
        "name": "feed",
        "owner": "data@example.org",
        "format": "csv",
        "version_strategy": strategy,
        "version_pattern": pattern,
        "natural_key": ["id"],
        "columns": {"id": {"source": "ID"}},
    }
    with pytest.raises(SpecError, match="version_pattern") as error:
        parse_spec(data, "feed.yaml")
    assert problem in str(error.value)
