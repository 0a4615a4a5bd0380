"""The floor: a bare ASGI server doing only the work an API request cannot avoid.

One process, no framework. Per request it checks the bearer token exactly as hpcgate
does (PyJWT ``decode`` against the issuer's JWKS: signature, ``exp``,
``iss``, ``aud``; no cache of verified tokens), does the cluster work on one pooled
asyncssh connection (as one user, from that user's key) and answers JSON built with
the standard library:

* ``GET /filesystem/{s}/ops/stat?path=``: one SFTP ``lstat`` on one SFTP channel;
* ``GET /filesystem/{s}/ops/ls?path=``: one SFTP ``readdir`` (entries as ``ls -l``);
* ``GET /compute/{s}/jobs/{id}``: from a cache that one poller keeps fresh with one
  batched ``squeue`` per interval (a miss asks ``squeue`` once and starts watching);
* ``GET /status/systems``: a description built at start.

It serves with uvicorn and the same HTTP protocol implementation as the server it
is compared with (``--http h11|httptools``). Bench use only: no limits, one user.

    python bench/floor_server.py --port 8100 --jwks keys/jwks.json --issuer I \
        --audience A --ssh-host 127.0.0.1 --ssh-port 2222 --user hpcuser1 \
        --key KEY --known-hosts KH
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import stat
import sys
import time
from typing import Any
from urllib.parse import parse_qs

import asyncssh
import jwt

Scope = dict[str, Any]
JSON_HEADERS = [(b"content-type", b"application/json")]
SQUEUE_FORMAT = "%i|%T|%u|%j|%P|%a|%r"


def _token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _mtime(seconds: int | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seconds or 0))


class Floor:
    """The app: token check, one SSH connection, one SFTP channel, one squeue poller."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        with open(args.jwks) as handle:
            jwks = json.load(handle)
        # the issuer's algorithm (the local issuer signs ES256; an OIDC issuer RS256)
        self.key = jwt.PyJWK(jwks["keys"][0])
        self.algorithm = self.key.algorithm_name
        self.conn: asyncssh.SSHClientConnection | None = None
        self.sftp: asyncssh.SFTPClient | None = None
        self.jobs: dict[str, dict[str, Any]] = {}
        self.poller: asyncio.Task[None] | None = None
        self.systems = json.dumps(
            {
                "systems": [
                    {
                        "name": args.system,
                        "ssh": {"host": args.ssh_host, "port": args.ssh_port},
                        "scheduler": {"type": "slurm", "version": "unknown"},
                        "servicesHealth": [],
                        "fileSystems": [],
                    }
                ]
            }
        ).encode()

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        args = self.args
        self.conn = await asyncssh.connect(
            args.ssh_host,
            port=args.ssh_port,
            username=args.user,
            client_keys=[args.key],
            known_hosts=args.known_hosts,
            encryption_algs=["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
        )
        self.sftp = await self.conn.start_sftp_client()
        self.poller = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self.poller is not None:
            self.poller.cancel()
        if self.conn is not None:
            self.conn.close()

    async def _squeue(self, ids: list[str]) -> None:
        assert self.conn is not None
        argv = ["squeue", "-h", "-t", "all", "-o", SQUEUE_FORMAT, "-j", ",".join(ids)]
        result = await self.conn.run(shlex.join(argv), check=False)
        for line in str(result.stdout).splitlines():
            fields = line.split("|")
            if len(fields) == 7:
                job_id, state, user, name, partition, account, reason = fields
                self.jobs[job_id] = {
                    "jobId": int(job_id) if job_id.isdigit() else job_id,
                    "name": name,
                    "status": {"state": state, "stateReason": reason},
                    "user": user,
                    "partition": partition,
                    "account": account,
                }

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.args.interval)
            if self.jobs:
                try:
                    await self._squeue(sorted(self.jobs))
                except (asyncssh.Error, OSError) as exc:
                    print(f"floor: squeue failed: {exc}", file=sys.stderr)

    # -- requests -----------------------------------------------------------------

    def _authenticate(self, scope: Scope) -> dict[str, Any] | None:
        token = _token(scope)
        if token is None:
            return None
        try:
            return jwt.decode(
                token,
                key=self.key,
                algorithms=[self.algorithm],
                audience=self.args.audience,
                issuer=self.args.issuer,
                options={"require": ["exp", "iss", "aud"], "verify_jti": False},
            )
        except jwt.PyJWTError:
            return None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        if path == "/status/liveness/":
            await _answer(send, 200, b'{"status":"ok"}')
            return
        if self._authenticate(scope) is None:
            await _answer(send, 401, b'{"message":"invalid token"}')
            return
        query = parse_qs(scope["query_string"].decode("latin-1"))
        parts = path.strip("/").split("/")
        try:
            if path == "/status/systems":
                body = self.systems
            elif parts[0] == "filesystem" and parts[2:] == ["ops", "stat"]:
                body = await self._stat(query["path"][0])
            elif parts[0] == "filesystem" and parts[2:] == ["ops", "ls"]:
                body = await self._ls(query["path"][0])
            elif parts[0] == "compute" and len(parts) == 4 and parts[2] == "jobs":
                body = await self._job(parts[3])
            else:
                await _answer(send, 404, b'{"message":"not found"}')
                return
        except asyncssh.SFTPError as exc:
            await _answer(send, 404, json.dumps({"message": exc.reason}).encode())
            return
        await _answer(send, 200, body)

    async def _stat(self, path: str) -> bytes:
        assert self.sftp is not None
        attrs = await self.sftp.lstat(path)
        mtime = attrs.mtime or 0
        output = {
            "mode": attrs.permissions or 0,
            "ino": 0,
            "dev": 0,
            "nlink": attrs.nlink or 1,
            "uid": attrs.uid or 0,
            "gid": attrs.gid or 0,
            "size": attrs.size or 0,
            "atime": attrs.atime or 0,
            "mtime": mtime,
            "ctime": mtime,
        }
        return json.dumps({"output": output}).encode()

    async def _ls(self, path: str) -> bytes:
        assert self.sftp is not None
        entries = await self.sftp.readdir(path)
        output = []
        for entry in entries:
            name = entry.filename
            if name in (".", "..") or name.startswith("."):
                continue
            attrs = entry.attrs
            mode = attrs.permissions or 0
            columns = str(entry.longname).split(None, 4)
            user, group = (columns[2], columns[3]) if len(columns) > 3 else ("", "")
            letters = stat.filemode(mode)
            output.append(
                {
                    "name": name,
                    "type": letters[0],
                    "linkTarget": None,
                    "user": user,
                    "group": group,
                    "permissions": letters[1:],
                    "lastModified": _mtime(attrs.mtime),
                    "size": str(attrs.size or 0),
                }
            )
        return json.dumps({"output": output}).encode()

    async def _job(self, job_id: str) -> bytes:
        job = self.jobs.get(job_id)
        if job is None:
            await self._squeue([job_id])
            job = self.jobs.get(job_id)
            if job is None:
                raise asyncssh.SFTPError(asyncssh.FX_NO_SUCH_FILE, "job not found")
        return json.dumps({"jobs": [job]}).encode()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # reported to uvicorn
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http", choices=["h11", "httptools"], default="h11")
    parser.add_argument("--jwks", required=True, help="the issuer's JWKS file")
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--system", default="cluster")
    parser.add_argument("--ssh-host", default="127.0.0.1")
    parser.add_argument("--ssh-port", type=int, default=2222)
    parser.add_argument("--user", required=True)
    parser.add_argument("--key", required=True, help="the user's SSH private key")
    parser.add_argument("--known-hosts", required=True)
    parser.add_argument("--interval", type=float, default=2.0, help="squeue poll interval (s)")
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(
        Floor(args),
        host=args.host,
        port=args.port,
        http=args.http,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
