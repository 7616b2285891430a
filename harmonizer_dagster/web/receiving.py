"""Request bodies streamed into an upload as they arrive: a multipart body's file part parsed on
the fly (never spooled to a temporary file first), and the bytes written a batch at a time in
a worker thread while the next batch is received."""

import asyncio

from python_multipart.multipart import MultipartParser, parse_options_header

from harmonizer_dagster.core.uploads import Upload

# Bytes handed to the landing area at a time: few thread hops per file, little memory per upload.
WRITE_BYTES = 1 << 20


class FilePart:
    """The first file part of a multipart body, streamed out as it arrives: never spooled to a
    temporary file first, so a large upload is written once, into the landing area."""

    def __init__(self, boundary: bytes):
        self.filename: str | None = None
        self.started = False
        self.finished = False
        self.data: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._ours = False
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda data, start, end: setattr(self, "_field", self._field + data[start:end]),
                "on_header_value": lambda data, start, end: setattr(self, "_value", self._value + data[start:end]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def _begin(self) -> None:
        self._headers, self._field, self._value = {}, b"", b""

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._ours = not self.started and options.get(b"name") == b"file"
        if self._ours:
            self.started = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._ours:
            self.data.append(data[start:end])

    def _part_end(self) -> None:
        if self._ours:
            self.finished, self._ours = True, False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Parses a chunk; returns the file bytes it held."""
        self.parser.write(chunk)
        data, self.data = self.data, []
        return data


class PipelinedWriter:
    """Hands the received bytes to the upload a batch at a time, in a worker thread, while the
    next batch is received: hashing and writing overlap the network. One batch is written while
    one is gathered, so an upload holds about two batches in memory whatever its size."""

    def __init__(self) -> None:
        self.upload: Upload | None = None
        self._batch: list[bytes] = []
        self._size = 0
        self._writing: asyncio.Future | None = None

    async def add(self, pieces: list[bytes], finished: bool = False) -> None:
        """Takes the pieces; hands the batch over once it is large enough (or the body ended)."""
        self._batch += pieces
        self._size += sum(len(piece) for piece in pieces)
        if self.upload is None or not (finished or self._size >= WRITE_BYTES):
            return
        await self.settle()
        batch, self._batch, self._size = self._batch, [], 0
        if batch:
            self._writing = asyncio.get_running_loop().run_in_executor(None, self.upload.write, batch)
        if finished:
            await self.settle()

    async def settle(self) -> None:
        """Waits for the batch being written; raises what writing it raised."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing
