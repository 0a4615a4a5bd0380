"""The S3 XML of a multipart upload's completion: the request parsed, the answer built.

The request body comes from the network, so it is parsed by ``defusedxml`` (a
maintained hardened parser over expat): any DTD is refused, and with it every
entity, internal or external, whatever the body's encoding (a byte search for
``<!DOCTYPE`` misses UTF-16). The body is bounded in size (413 past it) and in
elements, nesting and field lengths (400), and parsed incrementally, each
``Part`` cleared once read.
"""

from __future__ import annotations

import hashlib
import io
import xml.etree.ElementTree as ElementTree
from xml.sax.saxutils import escape

import defusedxml
import defusedxml.ElementTree as SafeElementTree

from hpcgate.errors import BadRequest, PayloadTooLarge

MAX_COMPLETE_BODY = 2 * 1024 * 1024
MAX_ELEMENTS = 1 + 3 * 100_000
"""The root and (Part, PartNumber, ETag) for the most parts ``transfer.max_parts`` allows."""
_MAX_DEPTH = 3
_MAX_FIELD = 1024
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

    ``PayloadTooLarge`` past ``MAX_COMPLETE_BODY``; ``BadRequest`` for a DTD or an
    entity, more than ``MAX_ELEMENTS`` elements or three levels, or anything else
    that is not the expected document.
    """
    if len(body) > MAX_COMPLETE_BODY:
        raise PayloadTooLarge(
            f"The CompleteMultipartUpload body is larger than {MAX_COMPLETE_BODY} bytes"
        )
    try:
        return _parts(body)
    except defusedxml.DefusedXmlException:
        raise BadRequest(
            "The CompleteMultipartUpload body must not contain a DTD or entities"
        ) from None
    except ElementTree.ParseError as exc:
        raise BadRequest(f"The CompleteMultipartUpload body is not XML: {exc}") from None


def _parts(body: bytes) -> list[tuple[int, str]]:
    parts: list[tuple[int, str]] = []
    elements = depth = 0
    events = SafeElementTree.iterparse(io.BytesIO(body), events=("start", "end"), forbid_dtd=True)
    for event, element in events:
        if event == "start":
            elements += 1
            depth += 1
            if elements > MAX_ELEMENTS:
                raise BadRequest(
                    f"The CompleteMultipartUpload body has more than {MAX_ELEMENTS} elements"
                )
            if depth > _MAX_DEPTH:
                raise BadRequest("The CompleteMultipartUpload body is nested too deeply")
            if depth == 1 and _local(element.tag) != "CompleteMultipartUpload":
                raise BadRequest("Expected a CompleteMultipartUpload document")
            continue
        depth -= 1
        if depth == 1:
            if _local(element.tag) == "Part":
                parts.append(_part(element))
            element.clear()
    if not parts:
        raise BadRequest("The CompleteMultipartUpload body lists no parts")
    return parts


def _part(element: ElementTree.Element) -> tuple[int, str]:
    fields = {_local(child.tag): (child.text or "").strip() for child in element}
    number, etag = fields.get("PartNumber", ""), fields.get("ETag", "")
    if not (number.isascii() and number.isdigit()) or len(number) > 6:
        raise BadRequest("Each Part needs a PartNumber and an ETag")
    if not etag or len(etag) > _MAX_FIELD:
        raise BadRequest("Each Part needs a PartNumber and an ETag")
    return int(number), normal_etag(etag)


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
