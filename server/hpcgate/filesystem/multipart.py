"""Streaming multipart/form-data reading for ops/upload: never spooled, never buffered.

Starlette's form parser writes file parts to a temporary file before the route sees
them. ``MultipartFile`` instead feeds the request body to python-multipart's
incremental parser and hands out the chosen field's bytes as they arrive, so an
upload flows from the socket to the cluster with only a chunk or two in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from urllib.parse import unquote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from hpcgate.errors import BadRequest

_MAX_HEADER_BYTES = 16 * 1024
_MAX_SKIPPED_PART_BYTES = 1024 * 1024


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type, or ``BadRequest``."""
    if not content_type:
        raise BadRequest("Expected a multipart/form-data body with a 'file' field")
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise BadRequest("Expected a multipart/form-data body with a 'file' field")
    return boundary


def _filename(disposition: bytes) -> tuple[str | None, str | None]:
    """(field name, file name) from a Content-Disposition header value."""
    _, options = parse_options_header(disposition)
    name = options.get(b"name")
    filename: str | None = None
    if b"filename" in options:
        filename = options[b"filename"].decode("utf-8", errors="replace")
    # RFC 5987 form (filename*=UTF-8''...), which python-multipart does not decode
    for parameter in disposition.split(b";"):
        key, _, value = parameter.strip().partition(b"=")
        if key.lower() == b"filename*" and b"''" in value:
            charset, _, encoded = value.partition(b"''")
            try:
                filename = unquote(encoded.decode("ascii"), encoding=charset.decode("ascii"))
            except (LookupError, UnicodeDecodeError):
                raise BadRequest("Malformed filename* in Content-Disposition") from None
    return (name.decode("utf-8", errors="replace") if name is not None else None), filename


class MultipartFile:
    """Finds field ``field`` in a multipart body and streams its bytes.

    ``await find()`` returns the part's file name; then ``async for chunk in data()``
    yields its bytes. Parts before it are read and discarded (up to 1 MiB each);
    whatever follows it is drained when ``data()`` ends.
    """

    def __init__(self, body: AsyncIterable[bytes], boundary: bytes, field: str = "file") -> None:
        self._body = body.__aiter__()
        self._field = field
        self._events: deque[tuple[str, bytes]] = deque()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._ended = False
        self._in_target = False
        self._found = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    # parser callbacks: record events; the async side acts on them
    def _on_part_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]
        self._count_header(end - start)

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._count_header(end - start)

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > _MAX_HEADER_BYTES:
            raise BadRequest("Multipart part headers are too large")

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        self._events.append(("headers", self._headers.get(b"content-disposition", b"")))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._events.append(("data", data[start:end]))

    def _on_part_end(self) -> None:
        self._events.append(("end", b""))

    def _on_end(self) -> None:
        self._ended = True

    async def _pull(self) -> bool:
        """Feed the parser one more body chunk; False at the end of the body."""
        try:
            chunk = await self._body.__anext__()
        except StopAsyncIteration:
            return False
        if chunk:
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise BadRequest(f"Malformed multipart body: {exc}") from None
        return True

    async def _next_event(self) -> tuple[str, bytes] | None:
        while not self._events:
            if self._ended or not await self._pull():
                return None
        return self._events.popleft()

    async def find(self) -> str:
        """Advance to the field's part; its file name (``BadRequest`` if absent)."""
        skipped = 0
        while True:
            event = await self._next_event()
            if event is None:
                raise BadRequest(f"The multipart body has no '{self._field}' field")
            kind, value = event
            if kind == "headers":
                name, filename = _filename(value)
                if name == self._field:
                    if not filename:
                        raise BadRequest(f"The '{self._field}' field has no file name")
                    self._found = True
                    return filename
                skipped = 0
            elif kind == "data":
                skipped += len(value)
                if skipped > _MAX_SKIPPED_PART_BYTES:
                    raise BadRequest("A multipart field before the file is too large")

    async def data(self) -> AsyncIterator[bytes]:
        """The field's bytes as they arrive; then the rest of the body is drained."""
        if not self._found:
            raise RuntimeError("call find() first")
        while True:
            event = await self._next_event()
            if event is None:
                raise BadRequest("The multipart body ended inside the file")
            kind, value = event
            if kind == "end":
                break
            if kind == "data" and value:
                yield value
        while not self._ended and await self._pull():
            self._events.clear()
