"""chmod modes: validation, and the result compared with GNU chmod itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpcgate.errors import BadRequest
from hpcgate.filesystem.modes import Mode

SYMBOLIC = [
    "u+x",
    "+x",
    "a+x",
    "go-w",
    "u=rw,go=r",
    "a=rX",
    "+X",
    "u+s",
    "g+s",
    "o+t",
    "+t",
    "ug=rwx,o=",
    "u-rwx",
    "=r",
    "+w",
    "-w",
    "u=g",
    "o=u",
    "g+u",
    "a-x,u+x",
    "u+rw-x",
    "=",
    "u=",
    "go=u-w",
    "a+st",
    "o-t",
    "u-s",
    "g=s",
]
STARTS = [0o644, 0o755, 0o600, 0o4755, 0o2770, 0o1777, 0o000, 0o711]


@pytest.mark.parametrize("text", ["755", "0644", "7", "4755", "00755", *SYMBOLIC])
def test_valid_modes_parse(text: str) -> None:
    assert Mode.parse(text).text == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8",
        "999",
        "12345",
        "0o755",
        "-755",
        "u+q",
        "x+u",
        "u",
        "rwx",
        "u+x;id",
        "u+x y",
        "$(id)",
        "'",
        "a" * 65,
        "u+x,",
        ",u+x",
        "u=gx",
        "u+ug",
    ],
)
def test_invalid_modes_are_bad_requests(text: str) -> None:
    with pytest.raises(BadRequest, match="Invalid mode"):
        Mode.parse(text)


def test_octal_ignores_current() -> None:
    assert Mode.parse("640").apply(0o4777, is_dir=False) == 0o640
    assert not Mode.parse("640").needs_current
    assert Mode.parse("g+w").needs_current


def _gnu_chmod(path: Path, start: int, text: str) -> int:
    os.chmod(path, start)
    subprocess.run(
        ["sh", "-c", 'umask 022 && chmod -- "$1" "$2"', "sh", text, str(path)],
        check=True,
        capture_output=True,
    )
    return path.stat().st_mode & 0o7777


@pytest.mark.parametrize("is_dir", [False, True], ids=["file", "dir"])
def test_symbolic_modes_match_gnu_chmod(tmp_path: Path, is_dir: bool) -> None:
    target = tmp_path / "target"
    if is_dir:
        target.mkdir()
    else:
        target.write_text("x")
    mismatches = []
    for start in STARTS:
        for text in SYMBOLIC:
            expected = _gnu_chmod(target, start, text)
            got = Mode.parse(text).apply(start, is_dir=is_dir)
            if got != expected:
                mismatches.append(f"{start:04o} {text}: chmod {expected:04o}, ours {got:04o}")
    os.chmod(target, 0o700)
    assert not mismatches, "\n".join(mismatches)
