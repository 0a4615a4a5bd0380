"""chmod modes: strict parsing of octal and symbolic modes, applied in Python.

SFTP sets permission bits, not mode expressions, so a symbolic mode (``u+x``,
``go-w,a+X``, ``u=g``) is applied here to the file's current mode, with GNU
chmod's semantics. When a clause names no ``who``, bits set in the umask are left
alone, as chmod does; the user's umask on the cluster is not known, so the common
default ``022`` is assumed.
"""

from __future__ import annotations

import re

from hpcgate.errors import BadRequest

DEFAULT_UMASK = 0o022

_OCTAL = re.compile(r"0?[0-7]{1,4}")
_ACTION = r"[-+=](?:[rwxXst]*|[ugo])"
_CLAUSE = re.compile(rf"([ugoa]*)((?:{_ACTION})+)")
_ACTIONS = re.compile(r"([-+=])([ugo]|[rwxXst]*)")
_MAX_MODE_LENGTH = 64

# bits each class may touch, special bits included (setuid with u, setgid with g,
# sticky with o: chmod applies "t" only when "o" or "a" is affected)
_WHO_MASK = {"u": 0o4700, "g": 0o2070, "o": 0o1007}
_CLASS_SHIFT = {"u": 6, "g": 3, "o": 0}
_PERMISSION_BITS = {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000}


class Mode:
    """A validated chmod mode: ``Mode.parse(text).apply(current, is_dir)``."""

    def __init__(self, text: str, octal: int | None) -> None:
        self.text = text
        self.octal = octal

    @classmethod
    def parse(cls, text: str) -> Mode:
        """``BadRequest`` unless ``text`` is an octal or symbolic chmod mode."""
        if not isinstance(text, str) or not text or len(text) > _MAX_MODE_LENGTH:
            raise BadRequest(f"Invalid mode {text!r}: expected octal (755) or symbolic (u+x)")
        if _OCTAL.fullmatch(text):
            return cls(text, int(text, 8))
        if all(_CLAUSE.fullmatch(clause) for clause in text.split(",")):
            return cls(text, None)
        raise BadRequest(
            f"Invalid mode {text!r}: expected octal (e.g. 755, 0644) or symbolic "
            "(e.g. u+x, go-w, a=rX, u=g)"
        )

    @property
    def needs_current(self) -> bool:
        """Whether the result depends on the file's current mode (symbolic modes)."""
        return self.octal is None

    def apply(self, current: int, *, is_dir: bool, umask: int = DEFAULT_UMASK) -> int:
        """The permission bits (``0o7777`` at most) after applying the mode to ``current``."""
        if self.octal is not None:
            return self.octal
        mode = current & 0o7777
        for clause in self.text.split(","):
            match = _CLAUSE.fullmatch(clause)
            assert match is not None
            who, actions = match.groups()
            if not who or "a" in who:
                who_mask = 0o7777
            else:
                who_mask = 0
                for letter in who:
                    who_mask |= _WHO_MASK[letter]
            protected = umask & 0o777 if not who else 0
            for op, perms in _ACTIONS.findall(actions):
                mode = _apply_action(mode, op, perms, who_mask, protected, is_dir=is_dir)
        return mode


def _apply_action(
    mode: int, op: str, perms: str, who_mask: int, protected: int, *, is_dir: bool
) -> int:
    if perms in _CLASS_SHIFT:
        bits = ((mode >> _CLASS_SHIFT[perms]) & 0o7) * 0o111
    else:
        bits = 0
        for letter in perms:
            if letter == "X":
                if is_dir or mode & 0o111:
                    bits |= 0o111
            else:
                bits |= _PERMISSION_BITS[letter]
    bits &= who_mask & ~protected
    if op == "+":
        return mode | bits
    if op == "-":
        return mode & ~bits
    # "=": reset the affected classes' rwx bits; on directories chmod keeps the
    # setuid/setgid bits unless the mode names them
    cleared = who_mask & 0o777
    if not is_dir:
        cleared |= who_mask & 0o7000
    else:
        cleared |= who_mask & 0o1000
    return (mode & ~cleared) | bits
