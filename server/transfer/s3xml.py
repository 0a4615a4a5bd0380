"""The S3 XML of a multipart upload's completion: the request parsed, the answer built."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ElementTree
from xml.sax.saxutils import escape

from hpcgate.errors import BadRequest

MAX_COMPLETE_BODY = 2 * 1024 * 1024
_NAMESPACE = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _local(tag: str) -> str:
    return tag[len(_NAMESPACE) :] if tag.startswith(_NAMESPACE) else tag


def normal_etag(value: str) -> str:
    """An ETag without its quotes (S3 clients send them quoted or not)."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value.lower()


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """(PartNumber, ETag) of each ``Part`` in a CompleteMultipartUpload body, in order.

    No DTDs or entities (refused before parsing), bounded size; ``BadRequest`` for
    anything that is not the expected document.
    """
    if len(body) > MAX_COMPLETE_BODY:
        raise BadRequest("The CompleteMultipartUpload body is too large")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise BadRequest("The CompleteMultipartUpload body must not contain a DTD")
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - see above
    except ElementTree.ParseError as exc:
        raise BadRequest(f"The CompleteMultipartUpload body is not XML: {exc}") from None
    if _local(root.tag) != "CompleteMultipartUpload":
        raise BadRequest("Expected a CompleteMultipartUpload document")
    parts: list[tuple[int, str]] = []
    for element in root:
        if _local(element.tag) != "Part":
            continue
        fields = {_local(child.tag): (child.text or "").strip() for child in element}
        number, etag = fields.get("PartNumber", ""), fields.get("ETag", "")
        if not number.isdigit() or len(number) > 6 or not etag:
            raise BadRequest("Each Part needs a PartNumber and an ETag")
        parts.append((int(number), normal_etag(etag)))
    if not parts:
        raise BadRequest("The CompleteMultipartUpload body lists no parts")
    return parts


def multipart_etag(etags: list[str]) -> str:
    """S3's ETag of a multipart object: MD5 of the parts' binary MD5s, "-<count>"."""
    digest = hashlib.md5(usedforsecurity=False)
    for etag in etags:
        digest.update(bytes.fromhex(etag))
    return f'"{digest.hexdigest()}-{len(etags)}"'


def complete_result(location: str, key: str, etag: str) -> str:
    """A CompleteMultipartUploadResult document."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Location>{escape(location)}</Location><Bucket>hpcgate</Bucket>"
        f"<Key>{escape(key)}</Key><ETag>{escape(etag)}</ETag>"
        "</CompleteMultipartUploadResult>"
    )
