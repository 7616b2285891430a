"""Rows streamed to a client as CSV or Parquet, a batch at a time: a download holds one batch
in memory however many rows it sends."""

import csv
import io
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from starlette.responses import StreamingResponse

# Arrow types of the warehouse's column types, for Parquet downloads; DECIMAL(p, s) is parsed.
ARROW_TYPES = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "BOOLEAN": pa.bool_(),
    "DATE": pa.date32(),
    "TIMESTAMP": pa.timestamp("us"),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "UUID": pa.string(),
}


def csv_stream(names: list[str], batches: Iterator[list[tuple]]) -> Iterator[bytes]:
    """A header line, then each batch's rows as CSV (None as an empty field)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(names)
    yield text.getvalue().encode()
    for batch in batches:
        text.seek(0)
        text.truncate()
        writer.writerows(batch)
        yield text.getvalue().encode()


class _Sink(io.RawIOBase):
    """What a Parquet writer writes, kept until the stream takes it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def arrow_type(sql_type: str) -> pa.DataType:
    if sql_type.startswith("DECIMAL("):
        precision, scale = (int(part) for part in sql_type[len("DECIMAL(") : -1].split(","))
        return pa.decimal128(precision, scale)
    return ARROW_TYPES[sql_type]


def parquet_stream(schema: pa.Schema, batches: Iterator[list[tuple]]) -> Iterator[bytes]:
    """Each batch a row group, sent as soon as it is written: a download holds one batch."""
    sink = _Sink()
    strings = {field.name for field in schema if field.type == pa.string()}
    with pq.ParquetWriter(sink, schema) as writer:
        for batch in batches:
            columns = list(zip(*batch, strict=True))
            arrays = [
                pa.array(
                    [None if v is None else str(v) for v in values] if field.name in strings else values, field.type
                )
                for field, values in zip(schema, columns, strict=True)
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            yield sink.take()
    yield sink.take()


def download(name: str, kind: str, names: list[str], types: list[str], batches: Iterator[list[tuple]]) -> Any:
    """Rows streamed as CSV or Parquet, named for the browser or curl -OJ."""
    if kind == "parquet":
        schema = pa.schema([(n, arrow_type(t)) for n, t in zip(names, types, strict=True)])
        body, media = parquet_stream(schema, batches), "application/vnd.apache.parquet"
    else:
        body, media = csv_stream(names, batches), "text/csv; charset=utf-8"
    headers = {"Content-Disposition": f'attachment; filename="{name}.{kind}"'}
    return StreamingResponse(body, media_type=media, headers=headers)
