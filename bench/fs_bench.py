"""Benchmark the filesystem API against its raw floors, in one run, on the local site.

Through a real `hpcgate serve` process, as hpcuser1:

* ``GET ops/ls`` (a directory of 100 files) and ``GET ops/stat`` at each concurrency,
  beside their floors on one warm asyncssh connection: exec ``ls -l``, SFTP
  ``readdir`` and SFTP ``stat``; plus the server's CPU milliseconds per request;
* a large file (1 GiB by default) up and down through ``ops/upload``,
  ``ops/download``, the transfer flow (``transfer/upload``: parts PUT to the signed
  URLs, 4 at a time, then the completion; ``transfer/download``: the signed URL) and
  a resumable (tus) upload, beside raw SFTP ``put``/``get`` over the same loopback
  and cipher. MB/s are 10^6 bytes per second of the data phase; "end to end" adds
  the transfer job (submit, wait, log). The server's CPU seconds (and per GiB), its
  RSS before and at its peak (VmRSS sampled every 20 ms), this process's CPU per GiB
  (the floor's SFTP client, the API's HTTP client) and the machine's are reported,
  each API row beside its floor of the same run ("of floor"); and the download
  once more with both clients dropping the bytes as they arrive (SFTP ``get`` into
  ``/dev/null``; ``bench/http_sink.py``, a lean HTTP client), which shows what the
  server costs apart from what aiohttp and the file writes cost on the same cores.

Every loop is bounded in count and time. Files are checked (SHA-256) after timing.
``--profile DIR`` records the server with py-spy during each API transfer (collapsed
stacks, one file per row); ``--smoke`` is CI's tiny run.

    .venv/bin/python bench/fs_bench.py [--duration 5] [--levels 1,10,50] [--size-mib 1024]
        [--profile DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cpu_split import CpuSplit
from bench.http_sink import download_discarding
from bench.loadgen import Result, format_row, run_load, summarise
from bench.procstat import cpu_seconds
from hpcgate.config import SshSettings
from tests.server import ApiServer, start_server
from tests.site import SiteEnv, ensure_site_up

MIB = 1024 * 1024
BLOCK = 4 * MIB
PART_CONCURRENCY = 4
LIST_FILES = 100
MAX_CHANNELS = SshSettings.model_fields["max_channels_per_connection"].default
TRANSFER_TIMEOUT = 600.0


# -- small-operation load -----------------------------------------------------------------


async def sftp_floor(
    call: Callable[[], Awaitable[object]],
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
    label: str,
) -> Result:
    """``call`` in a loop from ``concurrency`` workers on one SFTP session."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    started = time.perf_counter()
    deadline = started + duration

    async def worker() -> None:
        nonlocal errors, sent
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            t0 = time.perf_counter()
            try:
                await call()
            except (asyncssh.SFTPError, asyncssh.ChannelOpenError):
                errors += 1
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    statuses = {"ok": len(latencies) - errors, "error": errors}
    return summarise(label, concurrency, elapsed, latencies, statuses, errors)


async def exec_floor(
    conn: asyncssh.SSHClientConnection,
    argv: list[str],
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
    label: str,
) -> Result:
    """``argv`` in a loop on one warm connection, at most ``MAX_CHANNELS`` channels open
    at once (as the server's pool allows per connection: ``ssh.max_channels_per_connection``).
    """
    channels = asyncio.Semaphore(MAX_CHANNELS)
    command = shlex.join(argv)

    async def call() -> None:
        async with channels:
            result = await conn.run(command, check=False)
        if result.exit_status != 0:
            raise asyncssh.SFTPError(asyncssh.FX_FAILURE, "exit status")

    return await sftp_floor(
        call, concurrency=concurrency, duration=duration, max_requests=max_requests, label=label
    )


# -- transfers --------------------------------------------------------------------------


class RssSampler:
    """The peak VmRSS of a process while running (a thread sampling every 20 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.rss_kib())
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self.peak_kib = self.rss_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: all but idle, iowait)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Profiler:
    """py-spy recording the server during one transfer (collapsed stacks, ``--format raw``)."""

    def __init__(self, pid: int, directory: Path | None, label: str) -> None:
        self.pid, self.label = pid, label
        self.output = (
            directory / (label.split(":")[0].replace("/", "_").replace(" ", "_") + ".txt")
            if directory
            else None
        )
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.output is not None:
            spy = Path(sys.executable).with_name("py-spy")
            self._process = subprocess.Popen(
                [str(spy), "record", "--pid", str(self.pid), "--rate", "200", "--format", "raw",
                 "--nonblocking", "--threads", "--output", str(self.output)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)  # attached before the transfer starts
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@dataclass
class TransferRow:
    label: str
    seconds: float
    size: int
    end_to_end: float | None
    server_cpu_s: float | None
    rss_before_mib: float | None
    rss_peak_mib: float | None
    floor_mb_s: float | None = None
    #: every process's CPU (client, server, sshd, the rest of the machine) per GiB
    machine_cpu_s: float | None = None
    #: this process's CPU: the SFTP client of a floor, the HTTP client of an API row
    client_cpu_s: float | None = None
    #: percent of one core each took over the transfer: server, sshd, client, idle, other
    cores: dict[str, float] | None = None

    @property
    def mb_s(self) -> float:
        return self.size / self.seconds / 1e6

    @property
    def cpu_s_per_gib(self) -> float | None:
        return None if self.server_cpu_s is None else self.server_cpu_s / (self.size / 1024**3)

    @property
    def client_s_per_gib(self) -> float | None:
        return None if self.client_cpu_s is None else self.client_cpu_s / (self.size / 1024**3)

    @property
    def machine_s_per_gib(self) -> float | None:
        return None if self.machine_cpu_s is None else self.machine_cpu_s / (self.size / 1024**3)

    @property
    def rss_growth_mib(self) -> float | None:
        if self.rss_peak_mib is None or self.rss_before_mib is None:
            return None
        return self.rss_peak_mib - self.rss_before_mib

    @property
    def of_floor(self) -> float | None:
        return None if not self.floor_mb_s else self.mb_s / self.floor_mb_s


def file_chunks(path: Path, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
    """A local file's bytes in 4 MiB blocks (reads from the page cache)."""

    total = path.stat().st_size - offset if length is None else length

    async def generate() -> AsyncIterator[bytes]:
        remaining = total
        with path.open("rb") as handle:
            handle.seek(offset)
            while remaining > 0:
                block = handle.read(min(BLOCK, remaining))
                if not block:
                    break
                remaining -= len(block)
                yield block

    return generate()


async def save(response: aiohttp.ClientResponse, target: Path) -> int:
    total = 0
    with target.open("wb") as handle:
        async for block in response.content.iter_chunked(BLOCK):
            handle.write(block)
            total += len(block)
    return total


async def wait_job(session: aiohttp.ClientSession, url: str, deadline: float) -> str:
    """Poll a job (bounded) until it ends; its state."""
    while time.monotonic() < deadline:
        async with session.get(url) as response:
            if response.status == 200:
                state = (await response.json())["jobs"][0]["status"]["state"]
                if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                    return state
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not end in time")


class Transfers:
    """The large-file transfers, each through the API or raw SFTP."""

    def __init__(
        self,
        server: ApiServer,
        sftp: asyncssh.SFTPClient,
        session: aiohttp.ClientSession,
        local: Path,
        remote_dir: str,
    ) -> None:
        self.server, self.sftp, self.session = server, sftp, session
        self.local, self.remote_dir = local, remote_dir
        self.size = local.stat().st_size
        self.fs = f"{server.url}/filesystem/{server.system}"
        self.jobs = f"{server.url}/compute/{server.system}/jobs"

    async def sftp_put(self) -> tuple[str, float | None]:
        await self.sftp.put(str(self.local), f"{self.remote_dir}/raw.bin")
        return f"{self.remote_dir}/raw.bin", None

    async def sftp_get(self, target: Path) -> None:
        await self.sftp.get(f"{self.remote_dir}/raw.bin", str(target))

    async def ops_upload(self) -> tuple[str, float | None]:
        boundary = uuid.uuid4().hex

        async def body() -> AsyncIterator[bytes]:
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                'filename="ops.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            async for block in file_chunks(self.local):
                yield block
            yield f"\r\n--{boundary}--\r\n".encode()

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        async with self.session.post(
            f"{self.fs}/ops/upload", params={"path": self.remote_dir}, data=body(), headers=headers
        ) as response:
            assert response.status == 204, await response.text()
        return f"{self.remote_dir}/ops.bin", None

    async def ops_download(self, target: Path) -> None:
        async with self.session.get(
            f"{self.fs}/ops/download", params={"path": f"{self.remote_dir}/raw.bin"}
        ) as response:
            assert response.status == 200, await response.text()
            assert await save(response, target) == self.size

    async def transfer_upload(self) -> tuple[str, float | None]:
        started = time.perf_counter()
        path = f"{self.remote_dir}/xfer.bin"
        body = {"path": path, "transferDirectives": {"transferMethod": "s3", "fileSize": self.size}}
        async with self.session.post(f"{self.fs}/transfer/upload", json=body) as response:
            assert response.status == 201, await response.text()
            info = await response.json()
        directives = info["transferDirectives"]
        part_size = directives["maxPartSize"]
        gate = asyncio.Semaphore(PART_CONCURRENCY)
        etags: dict[int, str] = {}

        async def put(number: int, url: str) -> None:
            offset = (number - 1) * part_size
            length = min(part_size, self.size - offset)
            async with gate:
                async with self.session.put(
                    url,
                    data=file_chunks(self.local, offset, length),
                    headers={"Content-Length": str(length)},
                ) as response:
                    assert response.status == 200, await response.text()
                    etags[number] = response.headers["ETag"]

        await asyncio.gather(
            *(put(n, url) for n, url in enumerate(directives["partsUploadUrls"], start=1))
        )
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{etags[n]}</ETag></Part>"
            for n in sorted(etags)
        )
        xml = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>"
        async with self.session.post(directives["completeUploadUrl"], data=xml) as response:
            assert response.status == 200, await response.text()
        data_phase = time.perf_counter() - started
        deadline = time.monotonic() + TRANSFER_TIMEOUT
        state = await wait_job(
            self.session, f"{self.jobs}/{info['transferJob']['jobId']}", deadline
        )
        assert state == "COMPLETED", state
        return path, time.perf_counter() - started - data_phase

    async def transfer_download(self, target: Path) -> float:
        """GET of the signed URL; returns the seconds spent before it (POST + job)."""
        started = time.perf_counter()
        body = {
            "sourcePath": f"{self.remote_dir}/raw.bin",
            "transferDirectives": {"transferMethod": "s3"},
        }
        async with self.session.post(f"{self.fs}/transfer/download", json=body) as response:
            assert response.status == 201, await response.text()
            info = await response.json()
        deadline = time.monotonic() + TRANSFER_TIMEOUT
        state = await wait_job(
            self.session, f"{self.jobs}/{info['transferJob']['jobId']}", deadline
        )
        assert state == "COMPLETED", state
        before = time.perf_counter() - started
        self.download_url = info["transferDirectives"]["downloadUrl"]
        return before

    async def signed_get(self, target: Path) -> None:
        async with self.session.get(self.download_url) as response:
            assert response.status == 200, await response.text()
            assert await save(response, target) == self.size

    async def tus_upload(self, digest: bytes) -> tuple[str, float | None]:
        path = f"{self.remote_dir}/tus.bin"
        metadata = (
            f"path {base64.b64encode(path.encode()).decode()},"
            f"sha256 {base64.b64encode(digest).decode()}"
        )
        tus = {"Tus-Resumable": "1.0.0"}
        headers = {**tus, "Upload-Length": str(self.size), "Upload-Metadata": metadata}
        async with self.session.post(f"{self.fs}/uploads", headers=headers) as response:
            assert response.status == 201, await response.text()
            location = response.headers["Location"]
        headers = {
            **tus,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(self.size),
        }
        async with self.session.patch(
            location, data=file_chunks(self.local), headers=headers
        ) as response:
            assert response.status == 204, await response.text()
        return path, None


async def remote_sha256(conn: asyncssh.SSHClientConnection, path: str) -> str:
    result = await conn.run(shlex.join(["sha256sum", "--", path]), check=True)
    return str(result.stdout).split()[0]


def local_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def make_file(path: Path, size: int) -> bytes:
    """``size`` random bytes (incompressible), returning their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        written = 0
        while written < size:
            block = os.urandom(min(BLOCK, size - written))
            handle.write(block)
            digest.update(block)
            written += len(block)
    return digest.digest()


# -- the run ----------------------------------------------------------------------------


async def connect(site: SiteEnv) -> asyncssh.SSHClientConnection:
    ciphers = SshSettings.model_fields["ciphers"].get_default(call_default_factory=True)
    return await asyncssh.connect(
        site.ssh_host,
        port=site.ssh_port,
        username="hpcuser1",
        client_keys=[str(site.key("hpcuser1"))],
        known_hosts=str(site.known_hosts),
        encryption_algs=ciphers,
    )


async def bench(
    levels: list[int], duration: float, size: int, profile: Path | None = None
) -> dict[str, Any]:
    site = ensure_site_up()
    workdir = Path(tempfile.mkdtemp(prefix="hpcgate-fsbench-"))
    server = start_server(site, workdir / "server")
    pid = server.process.pid
    token = server.token("hpcuser1", lifetime_seconds=6 * 3600)
    headers = {"Authorization": f"Bearer {token}"}
    conn = await connect(site)
    sftp = await conn.start_sftp_client()
    remote = f"{site.scratch('hpcuser1')}/fsbench-{uuid.uuid4().hex[:8]}"
    listing, stat_target = f"{remote}/list", f"{remote}/list/file-000"
    await sftp.makedirs(listing)

    async def touch(name: str) -> None:
        async with sftp.open(name, "w"):
            pass

    await asyncio.gather(*(touch(f"{listing}/file-{i:03d}") for i in range(LIST_FILES)))
    ops = f"{server.url}/filesystem/{server.system}/ops"
    load_rows: list[dict[str, Any]] = []
    transfer_rows: list[TransferRow] = []
    try:
        # warm the server's connection and SFTP session
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.get(f"{ops}/ls", params={"path": listing}) as response:
                assert response.status == 200, await response.text()

        async def measure(kind: str, load: Awaitable[Result], floors: list[Awaitable[Result]]):
            before = cpu_seconds(pid)
            api = await load
            used = cpu_seconds(pid) - before
            per_request = used / api.requests * 1000 if api.requests else float("nan")
            print(format_row(api), f" server CPU {per_request:.2f} ms/req")
            measured = []
            for floor in floors:
                raw = await floor
                measured.append(raw)
                print(format_row(raw))
            load_rows.append(
                {"kind": kind, "api": api, "floors": measured, "cpu_ms": round(per_request, 3)}
            )

        for level in levels:
            common = {"concurrency": level, "duration": duration}
            await measure(
                "GET ops/ls (100 entries)",
                run_load(f"{ops}/ls?path={listing}", headers=headers, label="GET ops/ls", **common),
                [
                    exec_floor(
                        conn, ["ls", "-l", listing], max_requests=1_000_000,
                        label="floor: exec ls -l (warm ssh)", **common,
                    ),
                    sftp_floor(
                        lambda: sftp.readdir(listing), max_requests=1_000_000,
                        label="floor: SFTP readdir (warm session)", **common,
                    ),
                ],
            )  # fmt: skip
            await measure(
                "GET ops/stat",
                run_load(
                    f"{ops}/stat?path={stat_target}",
                    headers=headers,
                    label="GET ops/stat",
                    **common,
                ),
                [
                    sftp_floor(
                        lambda: sftp.lstat(stat_target), max_requests=1_000_000,
                        label="floor: SFTP lstat (warm session)", **common,
                    )
                ],
            )  # fmt: skip

        # -- large files
        local = workdir / "data.bin"
        digest = make_file(local, size)
        expected = digest.hex()
        back = workdir / "back.bin"
        timeout = aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT)
        # a connection per request: the checksums between transfers outlast keep-alive
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(
            headers=headers, timeout=timeout, connector=connector
        ) as session:
            transfers = Transfers(server, sftp, session, local, remote)
            floors: list[float] = []  # the last raw SFTP rate: the floor of the rows after it

            async def timed(
                label: str, call: Callable[[], Awaitable[Any]], *, api: bool = True
            ) -> Any:
                with Profiler(pid, profile if api else None, label):
                    # a floor's SSH sessions are those of this process's own connection
                    split = CpuSplit(pid if api else os.getpid(), site.ssh_port)
                    cpu = cpu_seconds(pid)
                    machine = machine_busy_seconds()
                    client = own_cpu_seconds()
                    sampler = RssSampler(pid)
                    rss_before = sampler.rss_kib() / 1024
                    started = time.perf_counter()
                    with sampler:
                        outcome = await call()
                    elapsed = time.perf_counter() - started
                    machine = machine_busy_seconds() - machine
                    client = own_cpu_seconds() - client
                    taken = split.done()
                    if not api:  # the split's "server" was this process: the client
                        taken = dataclasses.replace(taken, server=0.0)
                    cores = taken.with_client(client)
                extra = outcome[1] if isinstance(outcome, tuple) else None
                data_seconds = elapsed - (extra or 0.0)
                row = TransferRow(
                    label=label,
                    seconds=data_seconds,
                    size=size,
                    end_to_end=elapsed if extra is not None else None,
                    server_cpu_s=round(cpu_seconds(pid) - cpu, 2) if api else None,
                    rss_before_mib=round(rss_before, 1) if api else None,
                    rss_peak_mib=round(sampler.peak_kib / 1024, 1) if api else None,
                    floor_mb_s=floors[-1] if api and floors else None,
                    machine_cpu_s=round(machine, 2) if extra is None else None,
                    client_cpu_s=round(client, 2) if extra is None else None,
                    cores=cores if extra is None else None,
                )
                if not api:
                    floors.append(row.mb_s)
                transfer_rows.append(row)
                print(
                    f"{label:<44} {row.mb_s:>8.1f} MB/s  {row.seconds:6.2f} s"
                    + (f"  end to end {row.end_to_end:.2f} s" if row.end_to_end else "")
                    + (
                        f"  client {row.client_s_per_gib or 0:.2f}, machine "
                        f"{row.machine_s_per_gib:.2f} CPU s/GiB"
                        if row.machine_cpu_s
                        else ""
                    )
                    + (
                        f"  {row.of_floor or 0:.2f} of floor, server CPU {row.server_cpu_s} s "
                        f"({row.cpu_s_per_gib or 0:.2f} s/GiB), RSS {row.rss_before_mib} -> "
                        f"peak {row.rss_peak_mib} MiB"
                        if api
                        else ""
                    )
                )
                return outcome

            async def check_remote(path: str) -> None:
                assert await remote_sha256(conn, path) == expected, path
                await sftp.remove(path)

            def check_local() -> None:
                assert local_sha256(back) == expected
                back.unlink()

            # uploads (raw.bin stays: the downloads read it)
            await timed("floor: SFTP put (warm session)", transfers.sftp_put, api=False)
            assert await remote_sha256(conn, f"{remote}/raw.bin") == expected
            path, _ = await timed("POST ops/upload (multipart, streamed)", transfers.ops_upload)
            await check_remote(path)
            path, _ = await timed(
                f"transfer/upload: {PART_CONCURRENCY} parts at a time + complete",
                transfers.transfer_upload,
            )
            await check_remote(path)
            path, _ = await timed(
                "tus: POST + one PATCH (SHA-256 checked)", lambda: transfers.tus_upload(digest)
            )
            await check_remote(path)
            # downloads
            await timed(
                "floor: SFTP get (warm session)", lambda: transfers.sftp_get(back), api=False
            )
            check_local()
            await timed("GET ops/download (streamed)", lambda: transfers.ops_download(back))
            check_local()

            async def signed_download() -> tuple[None, float]:
                before = await transfers.transfer_download(back)
                await transfers.signed_get(back)
                return None, before

            await timed("transfer/download: job, then GET signed URL", signed_download)
            check_local()

            # the same download with the bytes dropped on arrival at both clients: what
            # the server costs, apart from what a general-purpose client costs
            async def lean_download() -> None:
                query = urlencode({"path": f"{remote}/raw.bin"})
                url = f"{transfers.fs}/ops/download?{query}"
                assert await download_discarding(url, headers, TRANSFER_TIMEOUT) == size

            await timed(
                "floor: SFTP get, bytes dropped (/dev/null)",
                lambda: sftp.get(f"{remote}/raw.bin", os.devnull),
                api=False,
            )
            await timed("GET ops/download, lean client, bytes dropped", lean_download)
    finally:
        try:
            await sftp.rmtree(remote)
        except asyncssh.SFTPError as exc:
            print(f"cleanup of {remote} failed: {exc}")
        sftp.exit()
        conn.close()
        if sys.exc_info()[0] is not None and server.log_path.exists():
            print("server log (tail):", *server.log_path.read_text().splitlines()[-30:], sep="\n")
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"load": load_rows, "transfers": transfer_rows, "size": size}


def size_label(size: int) -> str:
    return f"{size / 1024**3:g} GiB" if size >= 1024**3 else f"{size / MIB:g} MiB"


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| request | c | API req/s | p50 ms | p99 ms | errors | server CPU ms/req "
        "| floor | floor req/s | floor p50 ms | floor p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["load"]:
        api = row["api"]
        for index, floor in enumerate(row["floors"]):
            head = (
                f"| {row['kind']} | {api.concurrency} | {api.rps} | {api.p50_ms} | {api.p99_ms} "
                f"| {api.errors}/{api.requests} | {row['cpu_ms']} "
                if index == 0
                else "| | | | | | | "
            )
            lines.append(
                head + f"| {floor.label.removeprefix('floor: ')} | {floor.rps} "
                f"| {floor.p50_ms} | {floor.p99_ms} |"
            )
    lines += [
        "",
        f"| transfer ({size_label(results['size'])}) | MB/s | of floor | data s | end to end s "
        "| server CPU s | server CPU s/GiB | client CPU s/GiB | machine CPU s/GiB "
        "| server RSS before → peak MiB | RSS growth MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["transfers"]:
        rss = f"{row.rss_before_mib} → {row.rss_peak_mib}" if row.rss_peak_mib else ""
        growth = f"{row.rss_growth_mib:.1f}" if row.rss_growth_mib is not None else ""
        lines.append(
            f"| {row.label} | {row.mb_s:.1f} | {f'{row.of_floor:.2f}' if row.of_floor else ''} "
            f"| {row.seconds:.2f} | {f'{row.end_to_end:.2f}' if row.end_to_end else ''} "
            f"| {row.server_cpu_s if row.server_cpu_s is not None else ''} "
            f"| {f'{row.cpu_s_per_gib:.2f}' if row.cpu_s_per_gib is not None else ''} "
            f"| {f'{row.client_s_per_gib:.2f}' if row.client_s_per_gib is not None else ''} "
            f"| {f'{row.machine_s_per_gib:.2f}' if row.machine_s_per_gib is not None else ''} "
            f"| {rss} | {growth} |"
        )
    lines += [
        "",
        "Where the cores went (percent of one core over each transfer; sshd: the SSH",
        "sessions serving it, with their sftp-server; client: this process):",
        "",
        "| transfer | server | sshd | client | idle | other |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["transfers"]:
        if row.cores:
            shares = " | ".join(
                f"{row.cores[key]:.0f}" for key in ("server", "sshd", "client", "idle", "other")
            )
            lines.append(f"| {row.label} | {shares} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--levels", default="1,10,50", help="concurrency levels (empty: none)")
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the large file")
    parser.add_argument("--smoke", action="store_true", help="tiny: CI's smoke run")
    parser.add_argument("--profile", help="py-spy each API transfer into this directory")
    parser.add_argument("--output", help="write the markdown tables here too")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.levels, args.size_mib = 0.3, "1", 4
    levels = [int(level) for level in args.levels.split(",") if level]
    size = min(args.size_mib, 16 * 1024) * MIB
    profile = Path(args.profile) if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(bench(levels, min(args.duration, 120), size, profile))
    table = markdown(results)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, default=lambda o: o.__dict__, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
