"""Remote shell operations that a co-tenant cannot redirect: rm -r, extract, compress.

Group members share directories and can swap any entry of them for a symlink at any
moment, so no check of a path made before a command runs holds while it runs. These
operations therefore run as one bash function (as the user, arguments passed as
positional parameters, never spliced into code) that reaches its directories itself:

* ``hpcgate_walk`` resolves an absolute path one component at a time from ``/``,
  like the kernel, but enters each directory only after ``stat`` and checks after
  ``cd`` that it is in that very directory (device and inode): a directory swapped
  for a symlink in between is noticed (exit 75), never followed. Symlinks on the
  way are followed only when they belong to the user or to root (a co-tenant's
  link: exit 77), the rule of the kernel's ``fs.protected_symlinks``, extended to
  every directory. Everything after that is relative to the checked directory.
* remove: GNU ``rm -r --one-file-system -- ./name`` in the checked parent. rm walks
  with fts (openat, O_NOFOLLOW, device/inode checks), so a subdirectory swapped for
  a symlink mid-walk is removed as a link; it has no recursion limit.
* extract: GNU tar runs in a fresh private directory (mode 0700, random name) made
  in the checked target, entered only if it is the user's, mode 0700 and empty
  (a co-tenant cannot make such a directory, nor list ours to learn a name), with
  ``--no-same-owner --no-same-permissions --delay-directory-restore``; GNU tar
  itself refuses ``..`` and absolute member names and defers dangerous symlinks
  (verified by ``tests/security/test_extract.py``). The archive is opened once and
  the open file must be the regular file that was checked. Then each top-level
  entry is renamed into the target (``mv -n -T``: rename(2), never into or through
  a link at the destination, never replacing an existing entry: exit 73), and the
  private directory is removed. On any failure nothing is moved.
* compress: the archive is written to a fresh temporary file (``set -C``:
  O_EXCL) in the checked target directory, from the checked source directory, then
  renamed over the target name (a symlink there is replaced, never written through).

Residual: a symlink that belongs to the user is followed with its owner and target
read in one ``find`` (lstat, then readlink); a co-tenant may rename the user's own
links around in a shared directory, but cannot make one.
"""

from __future__ import annotations

import re
import secrets

from hpcgate.cluster.remote import CommandResult
from hpcgate.errors import ApiError, BadRequest, Conflict, Forbidden, NotFound
from hpcgate.filesystem.models import CompressionType
from hpcgate.filesystem.paths import shown

CHANGED = 75
"""Exit status: a directory or file changed (was swapped) during the operation."""
FOREIGN_LINK = 77
"""Exit status: the path passes through a symlink of another user."""
EXISTS = 73
"""Exit status (extract): a top-level entry of the archive exists in the target."""

TAR_FLAGS: dict[str, list[str]] = {"none": [], "gzip": ["-z"], "bzip2": ["-j"], "xz": ["-J"]}

LIBRARY = r"""
hpcgate_say() { printf 'hpcgate: %s\n' "$*" >&2; }

hpcgate_cd() {  # enter ./$1 only if it is the directory stat saw before the cd
    local want got
    want=$(stat -c '%d:%i:%F' -- "./$1") || return 1
    case $want in
        *:directory) ;;
        *':symbolic link') hpcgate_say "changed during the request: $1"; return 75 ;;
        *) hpcgate_say "not a directory: $1"; return 1 ;;
    esac
    cd -P -- "./$1" || return 1
    got=$(stat -c '%d:%i:%F' .) || return 1
    if [ "$got" != "$want" ]; then
        hpcgate_say "a directory changed during the request: $1"
        return 75
    fi
}

hpcgate_walk() {  # cd to the directory holding the last component of $1: hpcgate_leaf
    local rest=${1#/} part found owner target links=0 me
    me=$(id -u) || return 1
    hpcgate_leaf=
    cd -P / || return 1
    while [ -n "$rest" ]; do
        part=${rest%%/*}
        case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
        case $part in
            '' | .) continue ;;
            ..) cd -P .. || return 1; hpcgate_leaf=; continue ;;
        esac
        if [ -L "./$part" ]; then
            links=$((links + 1))
            if [ "$links" -gt 40 ]; then
                hpcgate_say "too many levels of symbolic links: $1"
                return 1
            fi
            found=$(find "./$part" -maxdepth 0 -type l -printf '%U/%l') || return 1
            if [ -z "$found" ]; then
                hpcgate_say "changed during the request: $part"
                return 75
            fi
            owner=${found%%/*} target=${found#*/}
            if [ "$owner" != "$me" ] && [ "$owner" != 0 ]; then
                hpcgate_say "refusing to follow a symbolic link that belongs to another user: $part"
                return 77
            fi
            case $target in /*) cd -P / || return 1 ;; esac
            rest=$target${rest:+/$rest}
            continue
        fi
        if [ -z "$rest" ]; then
            hpcgate_leaf=$part
            return 0
        fi
        hpcgate_cd "$part" || return
    done
}

hpcgate_enter() {  # cd into directory $1, checked all the way
    hpcgate_walk "$1" || return
    if [ -n "$hpcgate_leaf" ]; then hpcgate_cd "$hpcgate_leaf" || return; fi
}

hpcgate_remove() (  # rm -r $1/$2 (a checked parent, a name)
    hpcgate_enter "$1" || exit
    exec rm -r --one-file-system -- "./$2"
)

hpcgate_discard() {  # from inside private directory $1: leave it and remove it
    chmod -R u+rwx . 2>/dev/null
    cd -P .. && rm -rf --one-file-system -- "./$1"
}

hpcgate_extract() (  # $1 target dir, $2 archive, $3 private dir name, then tar flags
    target=$1 archive=$2 name=$3
    shift 3
    hpcgate_walk "$archive" || exit
    if [ -z "$hpcgate_leaf" ]; then hpcgate_say "not a regular file: $archive"; exit 1; fi
    kind=$(stat -c '%F' -- "./$hpcgate_leaf") || exit 1
    want=$(stat -c '%d:%i' -- "./$hpcgate_leaf") || exit 1
    case $kind in
        'regular file' | 'regular empty file') ;;
        'symbolic link') hpcgate_say "changed during the request: $archive"; exit 75 ;;
        *) hpcgate_say "not a regular file: $archive"; exit 1 ;;
    esac
    exec 3< "./$hpcgate_leaf" || exit 1
    if [ "$(stat -L -c '%d:%i' /dev/fd/3)" != "$want" ]; then
        hpcgate_say "the archive changed during the request: $archive"
        exit 75
    fi
    hpcgate_enter "$target" || exit
    mkdir -m 700 -- "./$name" || exit 1
    want=$(stat -c '%d:%i:%F:%u:%a' -- "./$name") || exit 1
    case ${want#*:*:} in  # setgid comes from a setgid parent; no one else has access
        "directory:$(id -u):700" | "directory:$(id -u):2700") ;;
        *) want= ;;
    esac
    if [ -z "$want" ]; then
        hpcgate_say "the private directory was replaced: $name"
        exit 75
    fi
    cd -P -- "./$name" || exit 1
    if [ "$(stat -c '%d:%i:%F:%u:%a' .)" != "$want" ] || [ -n "$(ls -A)" ]; then
        hpcgate_say "the private directory was replaced: $name"
        exit 75
    fi
    if ! tar -x "$@" --no-same-owner --no-same-permissions --delay-directory-restore \
            -f - <&3; then
        hpcgate_discard "$name"
        exit 1
    fi
    exec 3<&-
    shopt -s dotglob nullglob
    entries=(*)
    for entry in "${entries[@]}"; do
        if [ -e "../$entry" ] || [ -L "../$entry" ]; then
            hpcgate_say "$entry already exists in the target directory (extract replaces nothing)"
            hpcgate_discard "$name"
            exit 73
        fi
    done
    for entry in "${entries[@]}"; do
        if ! mv -n -T -- "./$entry" "../$entry"; then
            hpcgate_discard "$name"
            exit 1
        fi
        if [ -e "./$entry" ] || [ -L "./$entry" ]; then
            hpcgate_say "$entry already exists in the target directory (extract replaces nothing)"
            hpcgate_discard "$name"
            exit 73
        fi
    done
    cd -P .. && rmdir -- "./$name"
)

hpcgate_compress() (  # $1 source, $2 target, $3 temp name, $4 pattern, $5 deref, tar flags
    source=$1 target=$2 temp=$3 pattern=$4 deref=$5
    shift 5
    hpcgate_enter "${target%/*}" || exit
    set -C
    exec 4> "./$temp" || exit 1
    set +C
    (
        hpcgate_enter "${source%/*}" || exit
        name=${source##*/}
        if [ -n "$pattern" ]; then
            find "./$name" -type f -regex "$pattern" -print0 |
                tar -c "$@" ${deref:+--dereference} -f - --null --files-from=-
        else
            exec tar -c "$@" ${deref:+--dereference} -f - --no-unquote -- "$name"
        fi
    ) >&4
    status=$?
    exec 4>&-
    if [ "$status" -ne 0 ]; then
        rm -f -- "./$temp"
        exit "$status"
    fi
    if ! mv -f -T -- "./$temp" "./${target##*/}"; then
        rm -f -- "./$temp"
        exit 1
    fi
)
"""


def argv(call: list[str]) -> list[str]:
    """The command running ``call`` (a function of the library and its arguments, which
    reach it as positional parameters, never as code)."""
    function, *arguments = call
    return ["bash", "-c", f'{LIBRARY}\n{function} "$@"', "hpcgate", *arguments]


def private_name(kind: str) -> str:
    """A fresh, unguessable name for a temporary entry in a shared directory."""
    return f".hpcgate-{kind}-{secrets.token_hex(12)}"


def remove_call(parent: str, name: str) -> list[str]:
    """rm -r ``parent/name`` (``name`` itself is never followed)."""
    return ["hpcgate_remove", parent, name]


def extract_call(target: str, archive: str, compression: CompressionType) -> list[str]:
    return [
        "hpcgate_extract",
        target,
        archive,
        private_name("extract"),
        *TAR_FLAGS[compression],
    ]


def compress_call(
    source: str,
    target: str,
    *,
    match_pattern: str | None,
    dereference: bool,
    compression: CompressionType,
) -> list[str]:
    return [
        "hpcgate_compress",
        source,
        target,
        private_name("compress"),
        match_pattern or "",
        "yes" if dereference else "",
        *TAR_FLAGS[compression],
    ]


def error_for(result: CommandResult, what: str, path: str) -> ApiError:
    """The API error for a failed operation (``what`` names it: "remove", ...)."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    useful = [line for line in lines if "Exiting with failure status" not in line]
    ours = [line for line in useful if line.startswith("hpcgate: ")]
    detail = (ours or useful or [f"exit status {result.exit_status}"])[-1][:500]
    detail = detail.removeprefix("hpcgate: ")
    message = f"Cannot {what} {shown(path)}: {detail}"
    if result.exit_status == CHANGED:
        return Conflict(message)
    if result.exit_status == EXISTS:
        return Conflict(message)
    if result.exit_status == FOREIGN_LINK:
        return Forbidden(message)
    if detail.startswith("tar: "):  # the archive, not the paths of the request
        return BadRequest(message)
    if "Permission denied" in detail or "Operation not permitted" in detail:
        return Forbidden(message)
    if "No such file or directory" in detail:
        # the path itself (a component of it, './name'), or an entry that vanished
        # under the operation (a deeper one: something changed meanwhile)
        top = re.search(r"'\./[^/']*'", detail) is not None or "'./" not in detail
        return NotFound(message) if top else Conflict(message)
    return BadRequest(message)
