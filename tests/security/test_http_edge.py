"""The HTTP edge (hpcgate.api.edge, hpcgate.api.connection), tried the way an attacker would.

A real ``hpcgate serve`` process, spoken to over raw sockets: bodies of hundreds of
megabytes with no token or past the caps, a Content-Length of 10 GB, a megabyte of
headers and a million header lines, a body that stalls, a head trickled byte by
byte. Each is answered at once (or within its configured timeout), the connection
is closed, and the server's memory (VmRSS, VmHWM from /proc) stays flat.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request

from hpcgate.api.dependencies import authenticated
from hpcgate.auth.tokens import TokenValidator
from hpcgate.cli import local_site_config
from hpcgate.config import Settings
from hpcgate.errors import Unauthorized
from tests.security.hostile import rss_kib
from tests.server import ApiServer, start_server
from tests.site import SiteEnv

pytestmark = [pytest.mark.site, pytest.mark.e2e]

MiB = 1024 * 1024
BODY_TIMEOUT = 1.0
HEAD_TIMEOUT = 1.5
FLAT_KIB = 20 * 1024  # "RSS flat": grows less than 20 MB
UPLOAD_CAP = 2 * MiB


@pytest.fixture(scope="module")
def edge_server(site_env: SiteEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A server with short read timeouts and a small ops/upload cap (the other caps
    keep their defaults)."""
    server = start_server(
        site_env,
        tmp_path_factory.mktemp("edge"),
        overrides={"filesystem_limits": {"max_ops_file_size": UPLOAD_CAP}},
        settings_overrides={
            "http": {
                "body_read_timeout_seconds": BODY_TIMEOUT,
                "header_read_timeout_seconds": HEAD_TIMEOUT,
            }
        },
    )
    yield server
    server.stop()


@dataclass
class Exchange:
    """What a raw client saw: the server's bytes, whether it closed, how long it took."""

    response: bytes
    closed: bool
    seconds: float
    sent: int

    @property
    def status(self) -> int:
        assert self.response.startswith(b"HTTP/1.1 "), self.response[:200]
        return int(self.response.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        head = self.response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def exchange(
    server: ApiServer, head: bytes, body: Iterable[bytes] = (), *, deadline: float = 15.0
) -> Exchange:
    """Send ``head`` then ``body`` piece by piece, reading whatever the server answers
    meanwhile; stop sending once it answers, return once it closes or at ``deadline``."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=deadline)
    started = time.monotonic()
    response = b""
    closed = False
    sent = 0
    pieces = iter(body)
    sending = True
    try:
        try:
            sock.sendall(head)
        except OSError:
            sending = False  # the server stopped reading the head and closed
        while time.monotonic() - started < deadline:
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], 0.2)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed = True
                    break
                response += data
                sending = False  # answered: a real client stops sending too
            elif writable and sending:
                piece = next(pieces, None)
                if piece is None:
                    sending = False
                    continue
                try:
                    sock.sendall(piece)
                    sent += len(piece)
                except OSError:
                    sending = False
    finally:
        sock.close()
    return Exchange(response, closed, time.monotonic() - started, sent)


def request_head(
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    extra: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n").encode() + extra + b"\r\n"


def spaces(total: int, piece: int = MiB) -> Iterator[bytes]:
    """``total`` bytes of JSON whitespace (a valid prefix of any JSON body)."""
    block = b" " * piece
    for _ in range(total // piece):
        yield block


def chunked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield b"%x\r\n" % len(piece) + piece + b"\r\n"


@contextlib.contextmanager
def memory_watch(server: ApiServer, label: str) -> Iterator[dict[str, int]]:
    """VmRSS and VmHWM of the server before and after the block (KiB), printed."""
    figures: dict[str, int] = {}
    figures["rss_before"], figures["hwm_before"] = rss_kib(server.process.pid)
    yield figures
    time.sleep(0.2)
    figures["rss_after"], figures["hwm_after"] = rss_kib(server.process.pid)
    print(f"\n[{label}] server memory KiB: {figures}")
    peak_growth = figures["hwm_after"] - max(figures["hwm_before"], figures["rss_before"])
    assert figures["rss_after"] - figures["rss_before"] < FLAT_KIB, figures
    assert peak_growth < FLAT_KIB, figures


def jobs_path(server: ApiServer) -> str:
    return f"/compute/{server.system}/jobs"


# -- unauthenticated bodies cost nothing -------------------------------------------------


def test_no_token_400mb_json_body_is_refused_before_it_is_read(edge_server: ApiServer) -> None:
    total = 400 * MiB
    head = request_head(
        "POST",
        jobs_path(edge_server),
        {"Content-Type": "application/json", "Content-Length": str(total)},
    )
    with memory_watch(edge_server, "no token, 400 MB Content-Length body"):
        seen = exchange(edge_server, head, spaces(total))
    assert seen.status in (401, 413), seen.response
    assert seen.closed and seen.seconds < 5
    assert seen.sent < 64 * MiB  # answered while the client was still sending


def test_no_token_400mb_chunked_body_is_401_before_it_is_read(edge_server: ApiServer) -> None:
    head = request_head(
        "POST",
        jobs_path(edge_server),
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    with memory_watch(edge_server, "no token, 400 MB chunked body"):
        seen = exchange(edge_server, head, chunked(spaces(400 * MiB)))
    assert seen.status == 401, seen.response
    assert seen.header("www-authenticate") == "Bearer"
    assert b'"errorType":"error"' in seen.response
    assert b"Missing bearer token" in seen.response
    assert seen.closed and seen.seconds < 5
    assert seen.sent < 64 * MiB


def test_token_400mb_json_body_is_413_and_memory_stays_flat(edge_server: ApiServer) -> None:
    total = 400 * MiB
    headers = {**edge_server.headers(), "Content-Type": "application/json"}
    with memory_watch(edge_server, "token, 400 MB Content-Length body"):
        declared = exchange(
            edge_server,
            request_head("POST", jobs_path(edge_server), {**headers, "Content-Length": str(total)}),
            spaces(total),
        )
    assert declared.status == 413, declared.response
    assert b"http.max_json_body_bytes" in declared.response
    assert declared.closed and declared.seconds < 5

    with memory_watch(edge_server, "token, 400 MB chunked body"):
        streamed = exchange(
            edge_server,
            request_head(
                "POST", jobs_path(edge_server), {**headers, "Transfer-Encoding": "chunked"}
            ),
            chunked(spaces(total)),
        )
    # cut at the 1 MiB cap as it streams
    assert streamed.status == 413, streamed.response
    assert b'"user":"hpcuser1"' in streamed.response
    assert streamed.closed and streamed.seconds < 10
    assert streamed.sent < 64 * MiB


@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "token"])
def test_content_length_of_ten_gigabytes_is_answered_at_once(
    edge_server: ApiServer, with_token: bool
) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": str(10**10)}
    if with_token:
        headers.update(edge_server.headers())
    seen = exchange(edge_server, request_head("POST", jobs_path(edge_server), headers), deadline=5)
    assert seen.status in ((413,) if with_token else (401, 413)), seen.response
    assert seen.header("connection") == "close"
    assert seen.closed and seen.seconds < 3  # the socket is closed, not held open


def test_chunked_json_body_just_past_the_cap_is_413(edge_server: ApiServer) -> None:
    headers = {**edge_server.headers(), "Transfer-Encoding": "chunked"}
    head = request_head("POST", jobs_path(edge_server), headers)
    pieces = [b" " * (512 * 1024)] * 2 + [b" "]  # 1 MiB + 1 byte, then no end
    seen = exchange(edge_server, head, chunked(pieces), deadline=5)
    assert seen.status == 413, seen.response
    assert seen.closed


def test_a_route_that_ignores_the_body_does_not_drain_an_endless_one(
    edge_server: ApiServer,
) -> None:
    # GET /status/systems never reads its body: the answer ends the connection
    # instead of the server reading (and dropping) whatever the client sends next
    headers = {**edge_server.headers(), "Transfer-Encoding": "chunked"}
    endless = chunked(b" " * 65536 for _ in range(100_000))
    seen = exchange(edge_server, request_head("GET", "/status/systems", headers), endless)
    assert seen.status == 200, seen.response
    assert seen.header("connection") == "close"
    assert seen.closed and seen.seconds < 5


def test_a_json_body_within_the_cap_still_reaches_the_route(edge_server: ApiServer) -> None:
    # 900 KiB of whitespace around an invalid job: the route's own validation answers
    body = b" " * (900 * 1024) + b'{"job": {}}'
    response = httpx.post(
        f"{edge_server.url}{jobs_path(edge_server)}",
        content=body,
        headers={**edge_server.headers(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["errorType"] == "validation"


def test_uploads_stream_through_and_stop_at_their_own_cap(
    edge_server: ApiServer, site_env: SiteEnv
) -> None:
    directory = site_env.scratch("hpcuser1")
    name = f"edge-{uuid.uuid4().hex[:8]}.bin"
    target = Path(directory) / name
    upload = f"/filesystem/{edge_server.system}/ops/upload?path={directory}"
    try:
        # under filesystem_limits.max_ops_file_size (2 MiB here), through h11 and the edge
        data = os.urandom(UPLOAD_CAP - 4096)
        with edge_server.client() as client:
            response = client.post(upload, files={"file": (name, data)})
        assert response.status_code == 204, response.text
        assert target.read_bytes() == data

        # chunked, without Content-Length: counted as it streams, cut past the cap
        boundary = "edgeboundary"
        prologue = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{name}.big"\r\n\r\n'
        ).encode()
        headers = {
            **edge_server.headers(),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Transfer-Encoding": "chunked",
        }
        pieces = chunked([prologue, *spaces(64 * MiB)])
        seen = exchange(edge_server, request_head("POST", upload, headers), pieces)
        assert seen.status == 413, seen.response
        # the route's own count or the edge's (at the cap plus the multipart framing)
        assert b"limit" in seen.response
        assert seen.closed and seen.sent < 32 * MiB
    finally:
        target.unlink(missing_ok=True)
        Path(f"{target}.big").unlink(missing_ok=True)


# -- headers ------------------------------------------------------------------------


def test_one_mebibyte_of_headers_is_431_and_closed(edge_server: ApiServer) -> None:
    head = request_head("GET", "/status/liveness/", extra=b"X-Big: " + b"a" * MiB + b"\r\n")
    with memory_watch(edge_server, "1 MiB header"):
        seen = exchange(edge_server, head, deadline=5)
    assert seen.status == 431, seen.response
    assert b"http.max_header_bytes" in seen.response
    assert seen.closed and seen.seconds < 3


def test_a_million_header_lines_are_431_and_closed(edge_server: ApiServer) -> None:
    head = request_head("GET", "/status/liveness/", extra=b"X-A: b\r\n" * 1_000_000)
    with memory_watch(edge_server, "1,000,000 header lines"):
        seen = exchange(edge_server, head, deadline=10)
    assert seen.closed and seen.seconds < 5
    # the server stops reading past the cap: the client may see the 431 or a reset
    if seen.response:
        assert seen.status == 431, seen.response


def test_a_head_over_the_cap_in_one_read_is_431(edge_server: ApiServer) -> None:
    # 100 KiB arrives in one socket read: the parser takes it whole, the edge counts it
    head = request_head(
        "GET", "/status/liveness/", extra=b"X-Big: " + b"a" * (100 * 1024) + b"\r\n"
    )
    seen = exchange(edge_server, head, deadline=5)
    assert seen.status == 431, seen.response
    assert seen.closed


def test_too_many_small_headers_are_431_with_an_error_body(edge_server: ApiServer) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % n for n in range(150))  # 150 > max_headers (100)
    seen = exchange(edge_server, request_head("GET", "/status/liveness/", extra=lines), deadline=5)
    assert seen.status == 431, seen.response
    assert b"http.max_headers" in seen.response
    assert seen.header("x-request-id")  # answered inside the app: logged like any request
    assert seen.closed


# -- slow clients -------------------------------------------------------------------


def test_a_body_that_stalls_is_408_and_closed_within_the_timeout(edge_server: ApiServer) -> None:
    headers = {**edge_server.headers(), "Content-Type": "application/json", "Content-Length": "100"}
    seen = exchange(
        edge_server, request_head("POST", jobs_path(edge_server), headers), [b"{"], deadline=10
    )
    assert seen.status == 408, seen.response
    assert b"http.body_read_timeout_seconds" in seen.response
    assert seen.closed
    assert BODY_TIMEOUT * 0.8 < seen.seconds < BODY_TIMEOUT + 3


def test_a_head_trickled_byte_by_byte_is_408_and_closed(edge_server: ApiServer) -> None:
    host, port = edge_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /status/liveness/ HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.3)
        response = b""
        while time.monotonic() - started < 10:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")  # one more byte of an endless header
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            response += data
        elapsed = time.monotonic() - started
    assert response.startswith(b"HTTP/1.1 408 "), response
    assert b"http.header_read_timeout_seconds" in response
    assert HEAD_TIMEOUT * 0.8 < elapsed < HEAD_TIMEOUT + 3


def test_a_connection_that_sends_nothing_is_closed(edge_server: ApiServer) -> None:
    host, port = edge_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.monotonic()
        data = sock.recv(4096)
        elapsed = time.monotonic() - started
    assert data == b""
    assert HEAD_TIMEOUT * 0.8 < elapsed < HEAD_TIMEOUT + 3


def test_keep_alive_connections_still_serve_several_requests(edge_server: ApiServer) -> None:
    with edge_server.client() as client:
        for _ in range(3):
            assert client.get("/status/systems").status_code == 200
        # a connection idle past the head timeout is closed; the client reconnects
        time.sleep(HEAD_TIMEOUT + 0.5)
        assert client.get("/status/systems").status_code == 200


def test_pipelined_requests_are_all_answered_in_order(edge_server: ApiServer) -> None:
    """Three requests in one write: the protocol queues the second and third behind
    the first (``BoundedHttpToolsProtocol`` replaces uvicorn's pipeline queue)."""
    host, port = edge_server.url.removeprefix("http://").split(":")
    heads = b"".join(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        for path in ("/status/liveness/", "/no/such/route", "/status/liveness/")
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(heads)
        received = b""
        deadline = time.monotonic() + 10
        while received.count(b"HTTP/1.1 ") < 3 and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    statuses = [int(part.split(b" ", 1)[0]) for part in received.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [200, 401, 200], received[:600]  # no token: 401 before routing


# -- which routes need a token --------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/status/liveness/", "/openapi.json", "/docs", "/redoc", "/metrics"]
)
def test_public_routes_need_no_token(edge_server: ApiServer, path: str) -> None:
    assert httpx.get(f"{edge_server.url}{path}", timeout=30).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/status/systems",
        "/no/such/route",
        "/transfer-urls/0123/parts/1/x",  # not a signed URL route
        "/status/liveness/%0a",
        "/metrics/../status/systems",
    ],
)
def test_every_other_route_is_401_without_a_token(edge_server: ApiServer, path: str) -> None:
    response = httpx.get(f"{edge_server.url}{path}", timeout=30)
    assert response.status_code == 401, response.text
    assert response.json()["message"].startswith("Missing bearer token")


def test_signed_url_routes_are_answered_by_their_signature_check(edge_server: ApiServer) -> None:
    url = f"{edge_server.url}/transfer-urls/{'0' * 32}/parts/1?expires=1&signature=x"
    response = httpx.put(url, content=b"x", timeout=30)
    assert response.status_code in (403, 404), response.text  # not the edge's 401
    too_big = exchange(
        edge_server,
        request_head(
            "PUT",
            f"/transfer-urls/{'0' * 32}/parts/1?expires=1&signature=x",
            {"Content-Length": str(10**10)},
        ),
        deadline=5,
    )
    assert too_big.status == 413, too_big.response  # over transfer.part_size, unread
    assert b"transfer.part_size" in too_big.response
    assert too_big.closed


def test_a_bad_token_is_401_before_the_body_is_read(edge_server: ApiServer) -> None:
    headers = {
        "Authorization": "Bearer not.a.jwt",
        "Content-Type": "application/json",
        "Content-Length": str(512 * 1024),
    }
    seen = exchange(edge_server, request_head("POST", jobs_path(edge_server), headers), deadline=5)
    assert seen.status == 401, seen.response
    assert b"Malformed token" in seen.response
    assert seen.closed and seen.seconds < 3


# -- the dependency reuses the edge's principal -----------------------------------------


def _settings(site_env: SiteEnv, key_dir: Path) -> Settings:
    return Settings(**local_site_config(site_env.values, key_dir))


async def test_authenticated_validates_only_when_the_edge_did_not(
    site_env: SiteEnv, tmp_path: Path
) -> None:
    from hpcgate.auth.localauth import create_signing_key

    settings = _settings(site_env, tmp_path)
    validator = TokenValidator(settings.auth)
    calls: list[str] = []
    real_validate = validator.validate

    async def counting_validate(token: str):  # instrumentation, the real check runs
        calls.append(token)
        return await real_validate(token)

    validator.validate = counting_validate  # type: ignore[method-assign]

    class _Services:
        tokens = validator

    token = create_signing_key(tmp_path).mint("hpcuser1")
    edge_principal = await real_validate(token)

    def request(state: dict[str, object]) -> Request:
        return Request({"type": "http", "headers": [], "state": state})

    from fastapi.security import HTTPAuthorizationCredentials

    credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    # behind the edge: the principal is taken as is, no second validation
    seen = await authenticated(request({"principal": edge_principal}), _Services(), credentials)  # type: ignore[arg-type]
    assert seen is edge_principal and calls == []
    # without the edge (in-process app, tests): the dependency validates itself
    alone = request({})
    seen = await authenticated(alone, _Services(), credentials)  # type: ignore[arg-type]
    assert seen.username == "hpcuser1" and calls == [token]
    assert alone.state.user == "hpcuser1"
    with pytest.raises(Unauthorized):
        await authenticated(request({}), _Services(), None)  # type: ignore[arg-type]
