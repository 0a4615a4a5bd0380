"""Units of the transfer package: URL signing, S3 XML, ranges, tus metadata, job scripts."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from hpcgate.config import TransferSettings
from hpcgate.errors import BadRequest, Forbidden, PayloadTooLarge, TooManyRequests
from hpcgate.filesystem.identity import FileIdentity
from hpcgate.filesystem.staging import Staged
from hpcgate.transfer import s3xml, scripts
from hpcgate.transfer.multipart import RangeNotSatisfiable, _hashed, parse_range
from hpcgate.transfer.resumable import parse_metadata, target_and_digest
from hpcgate.transfer.service import part_size_for
from hpcgate.transfer.sha256state import ResumableSha256
from hpcgate.transfer.signing import KEY_FILE, Binding, UrlSigner, load_or_create_key
from hpcgate.transfer.state import Instance
from hpcgate.transfer.state_sqlite import SqliteTransferState
from hpcgate.transfer.store import Download, MultipartUpload, Part, TransferStore

NOW = 1_700_000_000.0
NOW_INT = int(NOW)
BINDING = Binding("a" * 32, "hpcuser1", "hpcsite", "/scratch/hpcuser1/f")


def _signed(signer: UrlSigner, **changes: object) -> dict[str, object]:
    query = dict(
        part.split("=")
        for part in signer.query("PUT", "/p/1", BINDING, expires=int(NOW) + 60, part=1).split("&")
    )
    args: dict[str, object] = {
        "method": "PUT",
        "path": "/p/1",
        "binding": BINDING,
        "expires": int(query["expires"]),
        "signature": query["signature"],
        "part": 1,
    }
    args.update(changes)
    return args


def test_signature_round_trip_and_every_field_bound() -> None:
    signer = UrlSigner(b"k" * 32, clock=lambda: NOW)
    good = _signed(signer)
    signer.verify(**good)  # type: ignore[arg-type]
    tampered = [
        {"method": "GET"},
        {"path": "/p/2"},
        {"part": 2},
        {"expires": int(NOW) + 61},
        {"binding": Binding("b" * 32, "hpcuser1", "hpcsite", "/scratch/hpcuser1/f")},
        {"binding": Binding("a" * 32, "hpcuser2", "hpcsite", "/scratch/hpcuser1/f")},
        {"binding": Binding("a" * 32, "hpcuser1", "hpcsite", "/scratch/hpcuser1/g")},
        {"binding": Binding("a" * 32, "hpcuser1", "hpcsite", "/scratch/hpcuser1/f", "1:2")},
        {"signature": "0" * 64},
        {"signature": "zz"},
        {"signature": None},
        {"signature": "é" * 64},
    ]
    for change in tampered:
        with pytest.raises(Forbidden):
            signer.verify(**_signed(signer, **change))  # type: ignore[arg-type]
    with pytest.raises(Forbidden):  # another key
        UrlSigner(b"x" * 32, clock=lambda: NOW).verify(**good)  # type: ignore[arg-type]
    assert "k" * 32 not in repr(signer)


def test_download_urls_bind_the_file_identity() -> None:
    identity = FileIdentity(size=10, mtime=NOW_INT, uid=1001, gid=1001, mode=0o100640)
    download = Download(id="d" * 32, system="s", user="u", target="/t", size=10,
                        expires_at=NOW + 10, identity=identity)  # fmt: skip
    assert download.binding.fingerprint == identity.fingerprint != ""
    other = FileIdentity(size=10, mtime=NOW_INT + 1, uid=1001, gid=1001, mode=0o100640)
    assert other.fingerprint != identity.fingerprint
    swapped = asyncssh.SFTPAttrs(size=10, mtime=NOW_INT, uid=1001, gid=1001, permissions=0o100600)
    assert not identity.same_file(swapped)
    assert identity.same_file(
        asyncssh.SFTPAttrs(size=10, mtime=NOW_INT, uid=1001, gid=1001, permissions=0o100640)
    )


def test_staged_file_keeps_its_secret_name_out_of_repr_and_matches_only_itself() -> None:
    staged = Staged("/p/.hpcgate-upload-x", "s" * 32, 1001, 1001, 100, 0o644)
    assert "s" * 32 not in repr(staged) and "s" * 32 in staged.path
    mine = asyncssh.SFTPAttrs(size=100, uid=1001, gid=1001, permissions=0o100200)
    assert staged.matches(mine)
    for change in ({"size": 99}, {"uid": 1002}, {"gid": 0}, {"permissions": 0o100600},
                   {"permissions": 0o120777}):  # fmt: skip
        attrs = asyncssh.SFTPAttrs(**{**vars(mine), **change})
        assert not staged.matches(attrs), change


def test_expiry_checked_first() -> None:
    signer = UrlSigner(b"k" * 32, clock=lambda: NOW)
    assert signer.check_expiry(str(int(NOW) + 1)) == int(NOW) + 1
    for bad in (None, "", "abc", "-5", str(int(NOW) - 1), "9" * 13):
        with pytest.raises(Forbidden):
            signer.check_expiry(bad)


def test_complete_xml_as_pyfirecrest_sends_it() -> None:
    from firecrest.utilities import part_checksum_xml

    body = part_checksum_xml(
        [{"ETag": '"abc"', "PartNumber": 1}, {"ETag": '"DEF"', "PartNumber": 2}]
    ).encode()
    assert s3xml.parse_complete(body) == [(1, "abc"), (2, "def")]
    plain = b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part>"
    assert s3xml.parse_complete(plain + b"</CompleteMultipartUpload>") == [(1, "x")]


@pytest.mark.parametrize(
    "body",
    [
        b"not xml",
        b"<Other/>",
        b"<CompleteMultipartUpload/>",
        b"<CompleteMultipartUpload><Part><ETag>x</ETag></Part></CompleteMultipartUpload>",
        b'<!DOCTYPE a [<!ENTITY b "c">]><CompleteMultipartUpload/>',
        # the same DTD in UTF-16 (a byte search for "<!DOCTYPE" misses it), an entity
        # bomb, an external entity, an undeclared entity
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY b "c">]><a/>'.encode(
            "utf-16"
        ),
        '<!DOCTYPE a [<!ENTITY b "bbbbbbbbbb"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&c;</ETag></Part>"
        "</CompleteMultipartUpload>".encode("utf-16-le"),
        b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>',
        b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&x;</ETag></Part>"
        b"</CompleteMultipartUpload>",
        # too many elements, too deep, a non-ASCII digit
        b"<CompleteMultipartUpload>"
        + b"<a/>" * (s3xml.MAX_ELEMENTS + 1)
        + b"</CompleteMultipartUpload>",
        b"<CompleteMultipartUpload><Part><PartNumber><x>1</x></PartNumber></Part>"
        b"</CompleteMultipartUpload>",
        "<CompleteMultipartUpload><Part><PartNumber>\u00b2</PartNumber><ETag>x</ETag>"
        "</Part></CompleteMultipartUpload>".encode(),
    ],
)
def test_complete_xml_refused(body: bytes) -> None:
    with pytest.raises(BadRequest):
        s3xml.parse_complete(body)


def test_complete_xml_size_and_encodings() -> None:
    with pytest.raises(PayloadTooLarge):
        s3xml.parse_complete(b"<CompleteMultipartUpload>" + b" " * s3xml.MAX_COMPLETE_BODY)
    document = (
        '<?xml version="1.0" encoding="UTF-16"?><CompleteMultipartUpload>'
        '<Part><PartNumber>1</PartNumber><ETag>"AB"</ETag></Part></CompleteMultipartUpload>'
    )
    assert s3xml.parse_complete(document.encode("utf-16")) == [(1, "ab")]


def test_multipart_etag_like_s3() -> None:
    parts = [hashlib.md5(b"a").hexdigest(), hashlib.md5(b"b").hexdigest()]
    joined = hashlib.md5(bytes.fromhex(parts[0]) + bytes.fromhex(parts[1])).hexdigest()
    assert s3xml.multipart_etag(parts) == f'"{joined}-2"'


async def test_part_md5_over_batches_of_uneven_chunks() -> None:
    """The ETag's MD5 is the body's, whatever the chunking; batches are hashed whole."""
    body = os.urandom(3 * 1024 * 1024 + 12345)
    sizes = [1, 65536, 70001, 4096, 1 << 20]

    async def chunks() -> AsyncIterator[bytes]:
        at = index = 0
        while at < len(body):
            size = sizes[index % len(sizes)]
            yield body[at : at + size]
            at, index = at + size, index + 1

    digest = hashlib.md5(usedforsecurity=False)
    passed = b"".join([chunk async for chunk in _hashed(chunks(), digest, len(body), 1)])
    assert passed == body
    assert digest.hexdigest() == hashlib.md5(body).hexdigest()
    with pytest.raises(BadRequest, match="longer than"):
        longer = hashlib.md5(usedforsecurity=False)
        async for _ in _hashed(chunks(), longer, len(body) - 1, 1):
            pass


def test_ranges() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-", 10) == (0, 10)
    assert parse_range("bytes=2-4", 10) == (2, 3)
    assert parse_range("bytes=5-100", 10) == (5, 5)
    assert parse_range("bytes=-3", 10) == (7, 3)
    assert parse_range("bytes=0-1,4-5", 10) is None  # several: the whole file
    assert parse_range("items=0-1", 10) is None
    for bad in ("bytes=10-", "bytes=5-2", "bytes=-0"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(bad, 10)


def test_tus_metadata() -> None:
    digest = hashlib.sha256(b"x").digest()
    header = (
        f"path {base64.b64encode(b'/a/b c').decode()},"
        f"sha256 {base64.b64encode(digest).decode()},flag"
    )
    metadata = parse_metadata(header)
    assert metadata["flag"] == b""
    assert target_and_digest(metadata) == ("/a/b c", digest)
    hexed = {"path": b"/a", "sha256": digest.hex().encode()}
    assert target_and_digest(hexed) == ("/a", digest)
    for bad in ("path !!!", "path a b", "path YQ==,,", " "):
        with pytest.raises(BadRequest):
            parse_metadata(bad)
    for metadata in ({"path": b"/a"}, {"sha256": digest}, {"path": b"/a", "sha256": b"short"}):
        with pytest.raises(BadRequest):
            target_and_digest(metadata)


def test_part_size_grows_to_fit_max_parts() -> None:
    config = TransferSettings(part_size=8 * 1024**2, max_parts=10)
    assert part_size_for(config, 10 * 8 * 1024**2) == 8 * 1024**2
    assert part_size_for(config, 10 * 8 * 1024**2 + 1) == 9 * 1024**2
    assert part_size_for(config, 0) == 8 * 1024**2


async def test_store_expiry_limit_and_part_ranges(tmp_path: Path) -> None:
    now = [NOW]
    store = TransferStore(
        SqliteTransferState(tmp_path / "t.sqlite3"), max_per_user=2, clock=lambda: now[0]
    )
    await store.open()

    def upload(name: str, user: str = "u") -> MultipartUpload:
        return MultipartUpload(
            id=name, system="s", user=user, target="/t", size=20, expires_at=NOW + 10,
            part_size=8, state="open",
        )  # fmt: skip

    try:
        first = upload("1")
        await store.add(first)
        await store.add(upload("2"))
        with pytest.raises(TooManyRequests) as refused:
            await store.add(upload("3"))
        assert refused.value.status_code == 429 and refused.value.headers["Retry-After"] == "60"
        assert "transfer.max_active_per_user" in refused.value.message
        await store.add(upload("4", user="other"))
        for number in range(32):  # downloads have room of their own
            await store.add(Download(id=f"d{number}", system="s", user="u", target="/t",
                                     size=1, expires_at=NOW + 10))  # fmt: skip
        with pytest.raises(TooManyRequests):
            await store.add(Download(id="d", system="s", user="u", target="/t", size=1,
                                     expires_at=NOW))  # fmt: skip
        assert first.part_count == 3
        assert [first.part_range(n) for n in (1, 2, 3)] == [(0, 8), (8, 8), (16, 4)]
        await store.set_part(first, 2, Part(8, "e" * 32))
        got = await store.get("1")
        assert isinstance(got, MultipartUpload) and got.record() == first.record()
        assert got.parts == {2: Part(8, "e" * 32)}
        # a completed upload frees its place
        first.state = "completed"
        await store.save(first, "state")
        await store.add(upload("5"))
        now[0] += 11
        assert await store.get("1") is None
        due = {t.id for t in await store.due(100)}
        assert due == {"1", "2", "4", "5"} | {f"d{n}" for n in range(32)}
    finally:
        await store.close()


NASTY = ["it's", 'a "b" $(touch pwned) `x` ;|&', "*", "-rf", "%s%n\\n", "ü ñ"]


@pytest.mark.parametrize("name", NASTY)
def test_scripts_quote_every_path(tmp_path: Path, name: str) -> None:
    """The generated scripts, run by bash, act on exactly the named files."""
    source = tmp_path / f"src {name}"
    source.mkdir()
    (source / "f.txt").write_text("data")
    moved = tmp_path / f"moved {name}"
    archive = tmp_path / f"{name}.tar.gz"
    out = tmp_path / f"out {name}"
    out.mkdir()

    def run(script: str) -> str:
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "Files were successfully copied" in run(scripts.copy(str(source), str(moved)))
    assert "Files were successfully compressed" in run(
        scripts.compress(str(moved), str(archive), match_pattern=r".*\.txt")
    )
    whole = tmp_path / f"whole {name}.tar"
    assert "Files were successfully compressed" in run(
        scripts.compress(str(source), str(whole), compression="none")
    )
    listing = subprocess.run(
        ["tar", "--quoting-style=literal", "-tf", str(whole)], capture_output=True, check=True
    )
    assert f"src {name}/f.txt".encode() in listing.stdout
    whole.unlink()
    assert "Files were successfully extracted" in run(scripts.extract(str(archive), str(out)))
    assert (out / moved.name / "f.txt").read_text() == "data"
    assert "File was successfully" in run(scripts.download_ready(str(out / moved.name / "f.txt")))
    assert "Files were successfully removed" in run(scripts.remove(str(moved)))
    assert name in run(scripts.move(str(source), str(moved)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [archive.name, moved.name, out.name]
    )


def test_failing_script_reports_and_exits_non_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", scripts.move(str(tmp_path / "missing"), str(tmp_path / "x"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "successfully" not in done.stdout
    assert "failed (exit status 1)" in done.stderr


def test_upload_job_script_waits_for_the_marker(tmp_path: Path) -> None:
    target, marker = tmp_path / "t", tmp_path / "m"
    target.write_bytes(b"12345")
    marker.write_text("ok")
    script = scripts.await_upload(str(target), str(marker), 5, int(NOW) * 2, 0.1)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "Multipart file upload successfully completed" in done.stdout
    assert not marker.exists()
    # no marker and a deadline in the past: gives up
    late = scripts.await_upload(str(target), str(marker), 5, int(NOW), 0.1)
    done = subprocess.run(["bash", "-c", late], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "did not complete" in done.stderr
    marker.write_text("failed: expired")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "failed: expired" in done.stderr


def test_signing_key_is_made_once_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    key = load_or_create_key(state)
    path = state / KEY_FILE
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(state) == key
    assert sorted(p.name for p in state.iterdir()) == [KEY_FILE]  # no temporary left
    path.chmod(0o644)
    with pytest.raises(RuntimeError, match="mode 0600"):
        load_or_create_key(state)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):  # never followed, never created through
        load_or_create_key(state)
    assert not (tmp_path / "elsewhere").exists()


def test_sha256_state_survives_a_round_trip() -> None:
    data = os.urandom(300_001)
    for cut in (0, 1, 64, 65, 12_345, len(data)):
        first = ResumableSha256()
        first.update(data[:cut])
        second = ResumableSha256.restore(first.state())
        second.update(data[cut:])
        assert second.digest() == hashlib.sha256(data).digest()
    with pytest.raises(ValueError):
        ResumableSha256.restore(b"\0" * 111)


async def test_claims_of_a_dead_instance_count_for_nothing(tmp_path: Path) -> None:
    backend = SqliteTransferState(tmp_path / "t.sqlite3")
    await backend.open()
    try:
        gone = Instance("gone", "somewhere", 1, NOW)
        alive = Instance("alive", "somewhere", 2, NOW)
        for instance in (gone, alive):
            await backend.beat(instance, 20)
        record = MultipartUpload(
            id="x", system="s", user="u", target="/t", size=1, expires_at=NOW + 60, state="open"
        ).record()
        assert await backend.insert(record, limit=1, now=NOW) is None

        async def claim(slot: str, holder: str, instance: str, *blockers: str) -> str:
            return await backend.claim(
                "x", slot, holder, instance, blockers=blockers, open_only=True, dead={"gone"}
            )

        assert await claim("part:1", "h1", "gone", "part:1") == "ok"
        assert await claim("part:1", "h2", "alive", "part:1") == "ok"  # the dead one's lapsed
        assert await claim("part:1", "h3", "alive", "part:1") == "busy:part:1"
        assert await claim("complete", "h4", "alive", "part:", "complete") == "busy:part:1"
        await backend.release("x", "part:1", "h2")
        assert await claim("complete", "h4", "alive", "part:", "complete") == "ok"
        assert await claim("part:2", "h5", "alive", "part:2", "complete") == "busy:complete"
        await backend.update("x", {"state": "completed"})
        assert await claim("part:2", "h5", "alive", "part:2") == "closed"
    finally:
        await backend.close()
