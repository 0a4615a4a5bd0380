"""SHA-256 whose running state can be saved and restored: a tus upload's checksum
survives a restart of the server and moves between replicas.

``hashlib`` cannot export a running hash, and re-reading the committed bytes is not
possible (the staged file is write-only until commit, and reading it back would cost
as much as receiving it). So this is OpenSSL's own SHA-256 through its low-level API
(``SHA256_Init``/``SHA256_Update``/``SHA256_Final`` of ``libcrypto``, the library
Python's ``hashlib`` uses): its context is the public, plain ``SHA256_CTX`` struct of
``<openssl/sha.h>`` (112 bytes), saved as bytes and copied back. ctypes releases the
GIL during each call, so hashing in a thread does not stall the event loop (the
pure-C ``resumablesha256`` package holds it, and is 8x slower).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final


class _Context(ctypes.Structure):
    """``SHA256_CTX`` (``SHA_LONG`` is a 32-bit unsigned int)."""

    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


STATE_SIZE: Final = ctypes.sizeof(_Context)


def _load() -> ctypes.CDLL:
    name = ctypes.util.find_library("crypto") or "libcrypto.so.3"
    library = ctypes.CDLL(name)
    for function in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
        getattr(library, function).restype = ctypes.c_int
    library.SHA256_Init.argtypes = [ctypes.POINTER(_Context)]
    library.SHA256_Update.argtypes = [ctypes.POINTER(_Context), ctypes.c_char_p, ctypes.c_size_t]
    library.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Context)]
    return library


_LIB = _load()


class ResumableSha256:
    """A SHA-256 in progress; ``state()`` and ``restore()`` carry it across processes."""

    __slots__ = ("_context",)

    def __init__(self) -> None:
        self._context = _Context()
        if _LIB.SHA256_Init(ctypes.byref(self._context)) != 1:
            raise RuntimeError("SHA256_Init failed")

    @classmethod
    def restore(cls, state: bytes) -> ResumableSha256:
        """The hash whose ``state()`` was ``state``; ``ValueError`` if it is not one."""
        if len(state) != STATE_SIZE:
            raise ValueError("not a SHA-256 state")
        hasher = cls()
        ctypes.memmove(ctypes.byref(hasher._context), state, STATE_SIZE)
        if hasher._context.md_len != 32 or hasher._context.num >= 64:
            raise ValueError("not a SHA-256 state")
        return hasher

    def update(self, data: bytes) -> None:
        if data and _LIB.SHA256_Update(ctypes.byref(self._context), data, len(data)) != 1:
            raise RuntimeError("SHA256_Update failed")

    def state(self) -> bytes:
        return ctypes.string_at(ctypes.byref(self._context), STATE_SIZE)

    def digest(self) -> bytes:
        """The digest of what was hashed so far (the hash itself is not changed)."""
        copy = _Context()
        ctypes.memmove(ctypes.byref(copy), ctypes.byref(self._context), STATE_SIZE)
        out = ctypes.create_string_buffer(32)
        if _LIB.SHA256_Final(out, ctypes.byref(copy)) != 1:
            raise RuntimeError("SHA256_Final failed")
        return out.raw
