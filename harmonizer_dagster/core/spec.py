"""Source specs: one YAML file declares everything the pipeline needs to know about a source.

Parsing is strict on purpose: a typo in a spec must fail when the code location loads,
naming the file, the field and its line, not silently skip a rule in production. A broken
spec rejects only its own source: `load_specs` returns the healthy specs with the errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
import yaml

FORMATS = ("csv", "json", "ndjson", "parquet", "xlsx", "fixed_width")
# Formats that carry their own encoding and compression.
BINARY_FORMATS = ("parquet", "xlsx")
COMPRESSIONS = ("auto", "none", "gzip")
# `auto` detects UTF-8, UTF-16 or Latin-1 per file (see reading.py); a byte-order mark always decides.
ENCODINGS = ("utf-8", "utf-16", "latin-1", "auto")
TYPES = ("string", "integer", "decimal", "boolean", "date", "timestamp")
SEVERITIES = ("warning", "error")
# What a file with other columns than the spec's does: `report` loads the spec's columns and
# warns (schema_drift), `evolve` also loads each new column into a new nullable text column,
# `freeze` fails the file when a column is new or missing and makes schema_drift blocking.
SCHEMA_EVOLUTIONS = ("report", "evolve", "freeze")
VERSION_STRATEGIES = ("quarterly", "monthly", "daily", "content_hash")
HARMONIZE_RULES = (
    "trim",
    "collapse_whitespace",
    "lowercase",
    "uppercase",
    "us_zip",
    "phone_e164",
    "email",
)
# Named formats a check may use instead of spelling out a regular expression.
NAMED_FORMATS = {
    "email": (r"^[^@\s]+@[^@\s]+\.[^@\s]+$", "name@domain.tld"),
    "us_zip": (r"^\d{5}(-\d{4})?$", "5 digits or ZIP+4 (12345-6789)"),
    "e164_phone": (r"^\+[1-9]\d{7,14}$", "E.164 phone number (+15551234567)"),
}
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DEFAULT_DATE_FORMATS = ("%Y-%m-%d",)
DEFAULT_TIMESTAMP_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")
# ISO 8601 is read whatever a column's formats, and is how typed readers (Parquet, Excel) hand
# their dates and timestamps to validation: `%.f` reads an optional fraction of a second.
ISO_DATE_FORMAT = "%Y-%m-%d"
ISO_TIMESTAMP_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f")
# The dates a source accepts unless its `date_range` says otherwise: four-digit years. A year
# of one to three digits (`0026-05-01`) is a typing error far more often than a date.
DEFAULT_DATE_RANGE = ("1000-01-01", "9999-12-31")
# How a decimal with more digits after the point than its scale may be rounded: none by
# default, which rejects the value.
ROUNDING_MODES = {"half_even": "half_to_even", "half_up": "half_away_from_zero"}
T = TypeVar("T")


class SpecError(ValueError):
    """A spec file is invalid. The message names the file, the field and its line, so a person
    can go and fix it; `problems` holds every error found in the file (this one alone unless
    several were collected, see `combine`)."""

    def __init__(self, message: str, *, file: str | None = None, field: str = "", line: int | None = None):
        self.file, self.field, self.line = file, field, line
        self.problems: tuple[SpecError, ...] = (self,)
        where = f"{file}, line {line}" if file and line else file
        text = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {text}" if where else text)

    @classmethod
    def combine(cls, problems: Sequence[SpecError]) -> SpecError:
        """One error standing for several, listing them one a line, for callers that stop at the first."""
        if len(problems) == 1:
            return problems[0]
        error = cls("\n".join(str(p) for p in problems))
        error.problems = tuple(problems)
        return error


@dataclass(frozen=True)
class Check:
    """One validation rule on one column."""

    kind: str  # pattern | allowed_values | range | unique
    issue_type: str
    severity: str
    expected_format: str
    pattern: str | None = None
    allowed_values: tuple[str, ...] = ()
    ignore_case: bool = False
    minimum: str | None = None
    maximum: str | None = None
    min_pass_rate: float | None = None  # the share of records that must pass, checked per file
    pass_rate_severity: str = "error"  # an error-severity pass-rate check blocks publication


@dataclass(frozen=True)
class Column:
    name: str
    source: str
    type: str = "string"
    required: bool = False
    formats: tuple[str, ...] = ()
    precision: int = 18
    scale: int = 4
    harmonize: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    # Other headers the field has gone by (`source: [Corp Number, CorpNo]`): a file having any
    # one of them loads. Out of the repr, which fingerprints processing: a file that matched no
    # name failed, so the names read never change what a loaded file gave.
    aliases: tuple[str, ...] = field(default=(), repr=False)
    # A fixed-width field's first character (1-based) and its width. Out of the repr, which stays
    # what it was for the other formats; `SourceSpec.processing` adds them.
    start: int | None = field(default=None, repr=False)
    width: int | None = field(default=None, repr=False)
    # Out of the repr as the layout is; `SourceSpec.processing` adds them unless they are the
    # default. The zone a timestamp without an offset is read in; the dates and timestamps
    # accepted (inclusive); how a decimal beyond its scale is rounded (None: it is rejected).
    timezone: str = field(default="UTC", repr=False)
    date_range: tuple[str, str] = field(default=DEFAULT_DATE_RANGE, repr=False)
    rounding: str | None = field(default=None, repr=False)

    @property
    def source_names(self) -> tuple[str, ...]:
        """The field's names in a file, the canonical `source` first; matched case-insensitively."""
        return (self.source, *self.aliases)

    @property
    def parse_formats(self) -> tuple[str, ...]:
        """strptime formats accepted for date/timestamp columns, in order of preference."""
        if self.formats:
            return self.formats
        return DEFAULT_TIMESTAMP_FORMATS if self.type == "timestamp" else DEFAULT_DATE_FORMATS

    @property
    def value_rules(self) -> tuple[str, str, str | None]:
        """The reading rules beyond the type that change what a value becomes, for `processing`."""
        return (self.timezone, *self.date_range, self.rounding)


@dataclass(frozen=True)
class Fetch:
    """Where a scheduled run fetches the upstream file from: exactly one of the locations."""

    file_name: str  # strftime template, filled with the scheduled time
    url: str | None = None
    url_env: str | None = None  # an environment variable holding the URL (it may carry a token)
    path: str | None = None
    s3: str | None = None


@dataclass(frozen=True)
class Schedule:
    cron: str
    timezone: str
    fetch: Fetch


@dataclass(frozen=True)
class Anomalies:
    """Thresholds of the checks comparing a file version with the previous versions of its
    source; a threshold of None turns its check off."""

    baseline_versions: int = 5  # the baseline is the median of this many previous versions
    volume_change: float | None = 0.5  # relative change of records in the file
    null_rate_increase: float | None = 0.2  # absolute rise of a column's share of nulls
    rejected_rate_increase: float | None = 0.05  # absolute rise of the share of rejected records
    key_churn: float | None = 0.5  # share of natural keys new to, or dropped since, the previous version
    severity: str = "warning"  # warnings do not block publication


# A Kafka topic name: letters, digits, '.', '_' and '-', at most 249 characters (Kafka's own rule).
TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


@dataclass(frozen=True)
class KafkaSink:
    """A topic every published change of the source is produced to (core/sinks.py). Brokers and
    credentials are the deployment's (HARMONIZER_KAFKA_*), never the spec's."""

    topic: str
    # A missing topic is created with this many partitions; false: a missing topic fails the run.
    create_topic: bool = False
    partitions: int = 1

    @property
    def name(self) -> str:
        """How the registry and the metrics name the sink."""
        return f"kafka:{self.topic}"


# More than half of a file's records rejected says the spec or the file is wrong, not its records:
# such a version (every record rejected included) is held back. The shipped samples reject at most 13%.
DEFAULT_MAX_REJECTED_RATE = 0.5


@dataclass(frozen=True)
class SourceSpec:
    name: str
    title: str
    owner: str
    format: str
    natural_key: tuple[str, ...]
    columns: tuple[Column, ...]
    version_strategy: str = "content_hash"
    # Reads the version from the file name: a regular expression with named groups `version`,
    # or `year` with `quarter`, `month` and `day` as the strategy needs. Files whose name does
    # not match fall back to their modification time.
    version_pattern: str | None = None
    compression: str = "auto"
    encoding: str = "utf-8"
    delimiter: str = ","
    description: str = ""
    schedule: Schedule | None = None
    freshness_hours: int | None = None  # a new version is expected at least this often
    # A version rejecting a larger share of its records fails a blocking check: it is not published.
    # Kept out of the repr, as the anomaly thresholds are.
    max_rejected_rate: float = field(default=DEFAULT_MAX_REJECTED_RATE, repr=False)
    # None when `anomalies: false`. Kept out of the repr, which fingerprints how files are
    # processed: thresholds only change how versions are judged, not what gets loaded.
    anomalies: Anomalies | None = field(default=Anomalies(), repr=False)
    # A workbook's sheet (a name, or its 1-based position; None: the first) and the 1-based row
    # holding the column names (a fixed-width file's header line; 0: it has none). Out of the repr
    # with the columns' positions, see `processing`.
    sheet: str | int | None = field(default=None, repr=False)
    header_row: int = field(default=1, repr=False)
    # Out of the repr as the layout is; `processing` adds them unless they are the default.
    schema_evolution: str = field(default="report", repr=False)
    # Values that mean "no value" in this source's files (`NA`, `N/A`), read as empty; matched
    # exactly, after trimming.
    null_values: tuple[str, ...] = field(default=(), repr=False)
    # Where published changes go besides the warehouse; out of the repr: they change nothing loaded.
    sinks: tuple[KafkaSink, ...] = field(default=(), repr=False)
    path: Path | None = field(default=None, compare=False)

    @property
    def processing(self) -> str:
        """What decides how a file is processed, fingerprinted with the rules: the spec's repr (as
        it always was, so a change of code alone reloads nothing) and the layout fields of the
        workbook and fixed-width formats."""
        text = repr(replace(self, path=None))
        if self.format in ("xlsx", "fixed_width"):
            positions = [(c.name, c.start, c.width) for c in self.columns]
            text += f" layout={(self.sheet, self.header_row, positions)!r}"
        if self.schema_evolution != "report":
            text += f" schema_evolution={self.schema_evolution}"
        if self.null_values:
            text += f" null_values={self.null_values!r}"
        rules = {c.name: c.value_rules for c in self.columns if c.value_rules != Column(c.name, c.source).value_rules}
        if rules:
            text += f" value_rules={rules!r}"
        return text

    def evolved(self, names: Sequence[str]) -> SourceSpec:
        """The spec with a nullable text column for each of the file's names it has no column
        for (`schema_evolution: evolve`), named in lower_snake_case after the header."""
        taken = {c.name for c in self.columns}
        added = []
        for source in names:
            name = evolved_name(source, taken)
            taken.add(name)
            added.append(Column(name=name, source=source))
        return replace(self, columns=self.columns + tuple(added)) if added else self

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def key_columns(self) -> tuple[Column, ...]:
        return tuple(self.column(k) for k in self.natural_key)


def evolved_name(header: str, taken: set[str]) -> str:
    """A column name for a header: lower_snake_case, a letter first (so never a provenance
    column's), unique among `taken`."""
    name = re.sub(r"[^a-z0-9]+", "_", header.strip().lower()).strip("_")
    if not name or not name[0].isalpha():
        name = f"c_{name}".rstrip("_")
    name = name[:56]
    unique, number = name, 2
    while unique in taken:
        unique, number = f"{name}_{number}", number + 1
    return unique


class _Reader:
    """Reads one mapping of a spec, tracking the dotted path and its line for error messages.

    So that one pass reports every error it can, errors that leave a usable value (an optional
    field of the wrong type or not among its choices falls back to its default; an unknown
    field is ignored) are recorded in `errors`, shared with the sub-readers, and reading goes
    on. Errors without one (a required field missing, a malformed check) are raised; `each`
    records those per column or check. Anything recorded rejects the spec in `parse_spec`.
    """

    def __init__(
        self,
        data: Any,
        where: str,
        file: str,
        lines: Mapping[str, int] | None = None,
        errors: list[SpecError] | None = None,
    ):
        self.where, self.file, self.lines = where, file, lines or {}
        self.errors: list[SpecError] = [] if errors is None else errors
        if not isinstance(data, Mapping):
            raise self.fail("", "must be a mapping" if where else "the top level must be a mapping")
        self.data = dict(data)
        self.used: set[str] = set()

    def _path(self, key: str) -> str:
        if not key:
            return self.where
        return f"{self.where}.{key}" if self.where else key

    def line(self, path: str) -> int | None:
        """The line of the field at `path`, or of its nearest enclosing field when it is missing."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[: path.rindex("[")] if path.endswith("]") and "[" in path else path.rpartition(".")[0]
        return None

    def fail(self, key: str, message: str) -> SpecError:
        path = self._path(key)
        return SpecError(message, file=self.file, field=path, line=self.line(path))

    def record(self, error: SpecError) -> None:
        """Keeps `error` for the report, unless its field has one already (this one would follow from it)."""
        if all(known.field != error.field for known in self.errors):
            self.errors.append(error)

    def _reject(self, key: str, message: str, default: Any) -> Any:
        """Raises, or, when there is a default to go on with, records the error and returns the default."""
        error = self.fail(key, message)
        if default is None:
            raise error
        self.record(error)
        return default

    def get(self, key: str, default: Any = None, *, required: bool = False, kind: type | tuple = object) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.fail(key, "is required")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            return self._reject(key, f"must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}", default)
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.get(key, default, required=default is None, kind=str)
        if value not in choices:
            # Any choice will do to read on with: the recorded error rejects the spec anyway.
            return self._reject(key, f"'{value}' is not one of {', '.join(choices)}", default or choices[0])
        return value

    def sub(self, key: str, value: Any) -> _Reader:
        return _Reader(value, self._path(key), self.file, self.lines, self.errors)

    def each(self, items: Iterable[tuple[str, Any]], parse: Callable[[str, _Reader], T]) -> tuple[T, ...]:
        """Parses every (key, mapping) item with its own reader; a failing item is recorded and left
        out, so the items after it are still checked."""
        parsed = []
        for key, value in items:
            try:
                parsed.append(parse(key, self.sub(key, value)))
            except SpecError as error:
                self.record(error)
        return tuple(parsed)

    def finish(self) -> None:
        for key in sorted(set(self.data) - self.used, key=str):
            self.record(self.fail(str(key), "unknown field"))


def _parse_check(r: _Reader, column: Column) -> Check:
    check = _parse_rule(r, column)
    rate = r.get("min_pass_rate", None, kind=(int, float))
    if rate is not None and not 0 <= rate <= 1:
        raise r.fail("min_pass_rate", "must be between 0 and 1")
    rate_severity = r.choice("pass_rate_severity", SEVERITIES, "error")
    r.finish()
    return Check(
        **{
            **check.__dict__,
            "min_pass_rate": None if rate is None else float(rate),
            "pass_rate_severity": rate_severity,
        }
    )


def _parse_rule(r: _Reader, column: Column) -> Check:
    severity = r.choice("severity", SEVERITIES, "error")
    issue_type = r.get("issue_type", None, kind=str)
    expected = r.get("expected_format", None, kind=str)
    if "format" in r.data or "pattern" in r.data:
        if "format" in r.data:
            fmt = r.choice("format", tuple(NAMED_FORMATS))
            pattern, described = NAMED_FORMATS[fmt]
            issue_type = issue_type or f"invalid_{fmt}"
        else:
            pattern = r.get("pattern", kind=str)
            described = f"matches {pattern}"
            # Patterns run in polars (Rust regex): no look-arounds or back-references.
            try:
                pl.select(pl.lit("").str.contains(pattern))
            except pl.exceptions.PolarsError as exc:
                raise r.fail("pattern", f"invalid regular expression: {exc}") from exc
        check = Check("pattern", issue_type or "invalid_format", severity, expected or described, pattern=pattern)
    elif "allowed_values" in r.data:
        values = r.get("allowed_values", kind=list)
        if not values or not all(isinstance(v, (str, int)) for v in values):
            raise r.fail("allowed_values", "must be a non-empty list of strings")
        ignore_case = r.get("ignore_case", False, kind=bool)
        check = Check(
            "allowed_values",
            issue_type or "invalid_value",
            severity,
            expected or "one of " + ", ".join(map(str, values)),
            allowed_values=tuple(str(v) for v in values),
            ignore_case=ignore_case,
        )
    elif "min" in r.data or "max" in r.data:
        if column.type not in ("integer", "decimal", "date", "timestamp"):
            raise r.fail("min", f"range checks need a numeric or date column, '{column.name}' is {column.type}")
        low = r.get("min", None, kind=(int, float, str, date, datetime))
        high = r.get("max", None, kind=(int, float, str, date, datetime))
        for name, bound in (("min", low), ("max", high)):
            if bound is not None and not _valid_bound(column, str(bound)):
                expected = "a number" if column.type in ("integer", "decimal") else "an ISO date (YYYY-MM-DD)"
                raise r.fail(name, f"must be {expected}")
        low_s = None if low is None else str(low)
        high_s = None if high is None else str(high)
        check = Check(
            "range",
            issue_type or "out_of_range",
            severity,
            expected or f"between {low_s or '-inf'} and {high_s or '+inf'}",
            minimum=low_s,
            maximum=high_s,
        )
    elif "unique" in r.data:
        if r.get("unique", kind=bool) is not True:
            raise r.fail("unique", "must be true when given")
        if severity != "warning":
            # Duplicates are only known once the whole file is read: they are reported, not rejected.
            raise r.fail("severity", "unique checks report duplicates as warnings; set severity: warning")
        check = Check("unique", issue_type or "duplicate_value", severity, expected or "unique within the file")
    else:
        raise r.fail("", "a check needs one of: format, pattern, allowed_values, min/max, unique")
    return check


def _valid_bound(column: Column, bound: str) -> bool:
    try:
        if column.type in ("integer", "decimal"):
            float(bound)
        else:
            datetime.fromisoformat(bound)
    except ValueError:
        return False
    return True


def _parse_timezone(r: _Reader, default: str) -> str:
    timezone = r.get("timezone", default, kind=str)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        r.record(r.fail("timezone", f"unknown time zone '{timezone}' (an IANA name such as Europe/Paris, or UTC)"))
        return default
    return timezone


def _parse_date_range(r: _Reader) -> tuple[str, str]:
    bounds = r.get("date_range", list(DEFAULT_DATE_RANGE), kind=list)
    try:
        earliest, latest = (date.fromisoformat(str(b)) for b in bounds)
    except ValueError:
        r.record(r.fail("date_range", "must be two ISO dates, the earliest and the latest accepted"))
        return DEFAULT_DATE_RANGE
    if earliest > latest:
        r.record(r.fail("date_range", "the earliest date comes after the latest"))
        return DEFAULT_DATE_RANGE
    return earliest.isoformat(), latest.isoformat()


def _parse_column(
    name: str, r: _Reader, natural_key: tuple[str, ...], timezone: str, date_range: tuple[str, str]
) -> Column:
    if not NAME_PATTERN.match(name):
        raise r.fail("", "column names must be lower_snake_case (letters, digits, underscores)")
    col_type = r.choice("type", TYPES, "string")
    harmonize = r.get("harmonize", [], kind=list)
    for i, rule in enumerate(harmonize):
        if rule not in HARMONIZE_RULES:
            r.record(
                r.fail(f"harmonize[{i}]", f"unknown harmonization rule '{rule}' (known: {', '.join(HARMONIZE_RULES)})")
            )
    start, width = r.get("start", None, kind=int), r.get("width", None, kind=int)
    for key, value in (("start", start), ("width", width)):
        if value is not None and value < 1:
            raise r.fail(key, "must be at least 1")
    if (start is None) != (width is None):
        raise r.fail("start" if start is None else "width", "a fixed-width column needs both start and width")
    formats = r.get("formats", [], kind=list)
    if formats and col_type not in ("date", "timestamp"):
        raise r.fail("formats", "only date and timestamp columns take formats")
    names = _source_names(r, name)
    rounding = r.get("rounding", None, kind=str)
    if rounding is not None and (col_type != "decimal" or rounding not in ROUNDING_MODES):
        r.record(r.fail("rounding", f"only decimal columns round, by one of {', '.join(ROUNDING_MODES)}"))
        rounding = None
    column = Column(
        name=name,
        source=names[0],
        aliases=names[1:],
        type=col_type,
        required=r.get("required", False, kind=bool) or name in natural_key,
        formats=tuple(str(f) for f in formats),
        precision=r.get("precision", 18, kind=int),
        scale=r.get("scale", 4, kind=int),
        harmonize=tuple(harmonize),
        start=start,
        width=width,
        timezone=_parse_timezone(r, timezone),
        date_range=date_range,
        rounding=rounding,
    )
    checks = r.get("checks", [], kind=list)
    parsed = r.each(((f"checks[{i}]", c) for i, c in enumerate(checks)), lambda _, c: _parse_check(c, column))
    r.finish()
    return Column(**{**column.__dict__, "checks": parsed})


def _source_names(r: _Reader, name: str) -> tuple[str, ...]:
    """`source: Corp Number` or `source: [Corp Number, CorpNo]`: the first is the canonical name."""
    value = r.get("source", name, kind=(str, list))
    names = [value] if isinstance(value, str) else value
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise r.fail("source", "must be a header name or a non-empty list of header names")
    return tuple(n.strip() for n in names)


def header_key(name: str) -> str:
    """How a header name is compared with a spec's: case and surrounding whitespace ignored."""
    return name.strip().casefold()


def _parse_schedule(r: _Reader) -> Schedule:
    cron = r.get("cron", required=True, kind=str)
    if len(cron.split()) != 5:
        raise r.fail("cron", "must have five fields: minute hour day-of-month month day-of-week")
    timezone = r.get("timezone", required=True, kind=str)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise r.fail("timezone", f"unknown time zone '{timezone}'") from exc
    f = r.sub("fetch", r.get("fetch", required=True, kind=dict))
    fetch = Fetch(
        file_name=f.get("file_name", required=True, kind=str),
        url=f.get("url", None, kind=str),
        url_env=f.get("url_env", None, kind=str),
        path=f.get("path", None, kind=str),
        s3=f.get("s3", None, kind=str),
    )
    if sum(x is not None for x in (fetch.url, fetch.url_env, fetch.path, fetch.s3)) != 1:
        raise f.fail("", "needs exactly one of url, url_env, path, s3")
    if "/" in fetch.file_name:
        raise f.fail("file_name", "must be a file name, not a path")
    f.finish()
    r.finish()
    return Schedule(cron=cron, timezone=timezone, fetch=fetch)


def _parse_anomalies(r: _Reader, value: bool | dict) -> Anomalies | None:
    """`anomalies: false` turns the checks off, `true` or a mapping (each field optional) on."""
    if value is False:
        return None
    a = r.sub("anomalies", {} if value is True else value)
    defaults = Anomalies()
    thresholds: dict[str, float | None] = {}
    for name in ("volume_change", "null_rate_increase", "rejected_rate_increase", "key_churn"):
        default = getattr(defaults, name)
        threshold = a.get(name, default, kind=(int, float, type(None)))
        ceiling = float("inf") if name == "volume_change" else 1.0  # a volume may more than double
        if isinstance(threshold, bool) or (threshold is not None and not 0 <= threshold <= ceiling):
            bounds = "at least 0" if name == "volume_change" else "between 0 and 1"
            a.record(a.fail(name, f"must be a number {bounds}, or null to turn the check off"))
            threshold = default
        thresholds[name] = None if threshold is None else float(threshold)
    versions = a.get("baseline_versions", defaults.baseline_versions, kind=int)
    if versions < 1:
        a.record(a.fail("baseline_versions", "must be at least 1"))
    severity = a.choice("severity", SEVERITIES, defaults.severity)
    a.finish()
    return Anomalies(baseline_versions=max(versions, 1), severity=severity, **thresholds)


def _parse_sinks(r: _Reader) -> tuple[KafkaSink, ...]:
    """`sinks: [{kafka: {topic: ..., create_topic: ..., partitions: ...}}]`: Kafka is the one kind."""
    sinks = r.get("sinks", [], kind=list)
    parsed = r.each(((f"sinks[{i}]", item) for i, item in enumerate(sinks)), _parse_sink)
    topics = [sink.topic for sink in parsed]
    if len(set(topics)) != len(topics):
        r.record(r.fail("sinks", "names one topic twice"))
    return parsed


def _parse_sink(where: str, r: _Reader) -> KafkaSink:
    if set(r.data) != {"kafka"}:
        raise r.fail("", "must be a mapping with the one key `kafka`")
    k = r.sub("kafka", r.get("kafka", required=True, kind=dict))
    topic = k.get("topic", required=True, kind=str)
    if not TOPIC_PATTERN.match(topic):
        raise k.fail("topic", "must be 1 to 249 letters, digits, '.', '_' or '-'")
    partitions = k.get("partitions", 1, kind=int)
    if partitions < 1:
        raise k.fail("partitions", "must be at least 1")
    sink = KafkaSink(topic=topic, create_topic=k.get("create_topic", False, kind=bool), partitions=partitions)
    k.finish()
    r.finish()
    return sink


def _parse_rate(r: _Reader, key: str, default: float) -> float:
    """A share between 0 and 1; a wrong one is recorded and the default read on with."""
    rate = r.get(key, default, kind=(int, float))
    if isinstance(rate, bool) or not 0 <= rate <= 1:
        r.record(r.fail(key, "must be a number between 0 and 1"))
        return default
    return float(rate)


def parse_spec(data: Any, file: str = "<spec>", lines: Mapping[str, int] | None = None) -> SourceSpec:
    """Builds a SourceSpec from parsed YAML. SpecError lists every error found, each naming `file`,
    the field and, given the `lines` of the fields (see `load_spec`), its line."""
    r = _Reader(data, "", file, lines)
    try:
        spec = _parse_source(r, file)
    except SpecError as error:
        r.record(error)
    if r.errors:
        raise SpecError.combine(sorted(r.errors, key=lambda e: e.line or 0))
    return spec


def _parse_source(r: _Reader, file: str) -> SourceSpec:
    name = r.get("name", required=True, kind=str)
    if not NAME_PATTERN.match(name):
        raise r.fail("name", "must be lower_snake_case")
    natural_key = r.get("natural_key", required=True, kind=(list, str))
    natural_key = (natural_key,) if isinstance(natural_key, str) else tuple(natural_key)
    if not natural_key:
        raise r.fail("natural_key", "needs at least one column")
    columns_data = r.get("columns", required=True, kind=dict)
    columns_reader = r.sub("columns", columns_data)
    timezone, date_range = _parse_timezone(r, "UTC"), _parse_date_range(r)
    columns = columns_reader.each(
        ((str(col_name), col_data or {}) for col_name, col_data in columns_data.items()),
        lambda col_name, c: _parse_column(col_name, c, natural_key, timezone, date_range),
    )
    names = {str(col_name) for col_name in columns_data}  # a broken column is reported once, as itself
    for key in natural_key:
        if key not in names:
            raise r.fail("natural_key", f"'{key}' is not a declared column")
    seen: dict[str, str] = {}
    for column in columns:
        for source in dict.fromkeys(header_key(n) for n in column.source_names):
            if seen.setdefault(source, column.name) != column.name:
                raise r.fail(
                    f"columns.{column.name}.source",
                    f"'{source}' is read by column '{seen[source]}' too (names match whatever their case)",
                )
    spec = SourceSpec(
        name=name,
        title=r.get("title", name.replace("_", " ").title(), kind=str),
        owner=r.get("owner", required=True, kind=str),
        description=r.get("description", "", kind=str),
        format=r.choice("format", FORMATS),
        compression=r.choice("compression", COMPRESSIONS, "auto"),
        encoding=r.choice("encoding", ENCODINGS, "utf-8"),
        delimiter=r.get("delimiter", ",", kind=str),
        version_strategy=r.choice("version_strategy", VERSION_STRATEGIES, "content_hash"),
        version_pattern=r.get("version_pattern", None, kind=str),
        natural_key=natural_key,
        columns=columns,
        schedule=_parse_schedule(r.sub("schedule", r.get("schedule", kind=dict))) if "schedule" in r.data else None,
        freshness_hours=r.get("freshness_hours", None, kind=int),
        anomalies=_parse_anomalies(r, r.get("anomalies", True, kind=(bool, dict))),
        max_rejected_rate=_parse_rate(r, "max_rejected_rate", DEFAULT_MAX_REJECTED_RATE),
        sheet=r.get("sheet", None, kind=(str, int)),
        schema_evolution=r.choice("schema_evolution", SCHEMA_EVOLUTIONS, "report"),
        null_values=_parse_null_values(r),
        header_row=r.get("header_row", 0 if r.data.get("format") == "fixed_width" else 1, kind=int),
        sinks=_parse_sinks(r),
        path=Path(file),
    )
    if len(spec.delimiter) != 1:
        raise r.fail("delimiter", "must be a single character")
    if spec.format in ("json", "ndjson", *BINARY_FORMATS) and spec.encoding != "utf-8":
        raise r.fail(
            "encoding",
            f"{spec.format} sources must be utf-8"
            if spec.format in ("json", "ndjson")
            else f"a {spec.format} file carries its own encoding: leave `encoding` out",
        )
    if spec.format in BINARY_FORMATS and spec.compression == "gzip":
        raise r.fail("compression", f"a {spec.format} file is compressed inside: leave `compression` out")
    _check_layout(r, spec)
    if spec.version_pattern is not None:
        problem = version_pattern_problem(spec.version_pattern, spec.version_strategy)
        if problem:
            r.record(r.fail("version_pattern", problem))
    r.finish()
    return spec


def _parse_null_values(r: _Reader) -> tuple[str, ...]:
    values = r.get("null_values", [], kind=list)
    if not all(isinstance(v, str) and v.strip() for v in values):
        r.record(r.fail("null_values", "must be a list of non-empty strings (quote NA, null, ... in YAML)"))
        return ()
    return tuple(v.strip() for v in values)


def _check_layout(r: _Reader, spec: SourceSpec) -> None:
    """The layout fields belong to their formats: a workbook's sheet and header row, a
    fixed-width file's header line and every column's position."""
    if "sheet" in r.data and spec.format != "xlsx":
        r.record(r.fail("sheet", "only xlsx sources have sheets"))
    if isinstance(spec.sheet, int) and spec.sheet < 1:
        r.record(r.fail("sheet", "a sheet's position counts from 1"))
    if "header_row" in r.data and spec.format not in ("xlsx", "fixed_width"):
        r.record(r.fail("header_row", "only xlsx and fixed_width sources take a header row"))
    if spec.header_row < (1 if spec.format == "xlsx" else 0):
        r.record(r.fail("header_row", "counts from 1" + (", or is 0 for none" if spec.format == "fixed_width" else "")))
    placed = [c for c in spec.columns if c.start is not None]
    if spec.format == "fixed_width":
        for c in spec.columns:
            if c.start is None:
                r.record(r.fail(f"columns.{c.name}", "a fixed-width column needs start and width"))
        ordered = sorted(placed, key=lambda c: c.start or 0)
        for before, after in pairwise(ordered):
            if (before.start or 0) + (before.width or 0) > (after.start or 0):
                r.record(r.fail(f"columns.{after.name}.start", f"overlaps column '{before.name}'"))
    elif placed:
        r.record(r.fail(f"columns.{placed[0].name}.start", "only fixed_width columns have positions"))


# The named groups a version pattern needs for each strategy, unless it has a `version` group.
VERSION_GROUPS = {"quarterly": {"year"}, "monthly": {"year", "month"}, "daily": {"year", "month", "day"}}


def version_pattern_problem(pattern: str, strategy: str) -> str | None:
    """Why a version pattern cannot name versions for the strategy, or None when it can."""
    try:
        groups = set(re.compile(pattern).groupindex)
    except re.error as error:
        return f"not a valid regular expression: {error}"
    if "version" in groups:
        return None
    if strategy == "content_hash":
        return "a content_hash version comes from the bytes: name a group `version` or choose another strategy"
    needed = VERSION_GROUPS[strategy] | ({"quarter"} if strategy == "quarterly" and "month" not in groups else set())
    missing = sorted(needed - groups)
    return f"needs the named group(s) {', '.join(missing)} for {strategy} versions" if missing else None


def _field_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """The line of every field of a composed YAML document, keyed by its path as error
    messages spell it (`columns.price.checks[0].min`)."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            lines[path] = key.start_mark.line + 1
            lines |= _field_lines(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{prefix}[{i}]"] = item.start_mark.line + 1
            lines |= _field_lines(item, f"{prefix}[{i}]")
    return lines


# libyaml's loader when PyYAML was built with it: ten times faster, same nodes and marks.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read(path: Path) -> tuple[Any, dict[str, int]]:
    """A spec file's YAML, and the line of each of its fields for error messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"is not UTF-8 text (byte {exc.start})", file=str(path)) from exc
    except OSError as exc:
        raise SpecError(f"cannot be read: {exc.strerror}", file=str(path)) from exc
    loader = SAFE_LOADER(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"not valid YAML: {problem}", file=str(path), line=mark and mark.line + 1) from exc
    finally:
        loader.dispose()
    return data, _field_lines(node)


def load_spec(path: Path) -> SourceSpec:
    """Reads one spec file; SpecError lists every error found in it, each with its field and line."""
    data, lines = _read(path)
    return parse_spec(data, str(path), lines)


@dataclass(frozen=True)
class SpecCatalog:
    """The specs of a sources folder that are valid, sorted by source name, and one error per
    problem in the others. Iterating a catalog yields its specs."""

    specs: tuple[SourceSpec, ...]
    errors: tuple[SpecError, ...] = ()

    def __iter__(self) -> Iterator[SourceSpec]:
        return iter(self.specs)


def load_specs(directory: Path, *, strict: bool = True) -> SpecCatalog:
    """Loads every *.yaml / *.yml spec in `directory`. Strict, any error raises a SpecError listing
    them all; otherwise the broken specs are left out and their errors returned with the valid
    ones, so one broken file does not take every source down."""
    if not directory.is_dir():
        raise SpecError(f"{directory}: sources folder does not exist")
    specs: list[SourceSpec] = []
    errors: list[SpecError] = []
    seen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.y*ml")):
        try:
            data, lines = _read(path)
            spec = parse_spec(data, str(path), lines)
            if spec.name in seen:
                message = f"'{spec.name}' is already declared in {seen[spec.name]}"
                raise SpecError(message, file=str(path), field="name", line=lines.get("name"))
        except SpecError as error:
            errors.extend(error.problems)
            continue
        seen[spec.name] = path
        specs.append(spec)
    if strict and errors:
        raise SpecError.combine(errors)
    return SpecCatalog(tuple(sorted(specs, key=lambda s: s.name)), tuple(errors))
