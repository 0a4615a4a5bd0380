"""sbatch: its options for a job description, the script's own directives, its answer.

Values from requests travel as whole ``argv`` elements in ``--option=value`` form, so
neither a shell nor sbatch's option parser can misread them; options that would
change how the gateway talks to sbatch are refused, abbreviated or not.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence

from hpcgate import errors
from hpcgate.compute.scheduler.models import JobDescription
from hpcgate.compute.scheduler.slurm.fields import SlurmOutputError

PLAIN_VALUE = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
"""A filter or comment value: 1-256 characters, no control characters."""

FORBIDDEN_EXTRA_OPTIONS = frozenset(
    {
        "chdir",
        "export",
        "export-file",
        "get-user-env",
        "gid",
        "help",
        "parsable",
        "test-only",
        "uid",
        "usage",
        "version",
        "wait",
        "wrap",
    }
)
"""Options that would change how this module talks to sbatch: never allowed (nor any
abbreviation of them, which sbatch's option parser would accept)."""

SCRIPT_FORBIDDEN_OPTIONS: dict[str, str] = {
    "test-only": "sbatch would only test the job and submit nothing",
    "wait": "sbatch would not answer until the job ends",
}
"""Options that sbatch honours in a script's ``#SBATCH`` lines and that would stop it
from answering with a job id at once (``--help``, ``--usage``, ``--version`` and
``--wrap`` are ignored there; the command line's ``--parsable`` stays)."""
_SCRIPT_FORBIDDEN_SHORT = {"W": "wait"}
# sbatch 22.05's short options that take an argument: the rest of the word is its value
_SHORT_WITH_ARGUMENT = frozenset("aAbcCdDeFGiJLmMnNopqStwx")


def _abbreviates(name: str, options: Iterable[str]) -> str | None:
    """The option of ``options`` that ``--name`` stands for in getopt_long (which takes
    any unambiguous prefix), if any."""
    return next((option for option in options if name and option.startswith(name)), None)


def forbidden_directive(script: str) -> errors.BadRequest | None:
    """The error for a script whose ``#SBATCH`` lines hold an option that would stop
    sbatch from submitting or from answering at once (``--test-only``, ``--wait``,
    ``-W``, abbreviations and bundles included), or None."""
    for argument in script_directives(script):
        option = None
        if argument.startswith("--"):
            option = _abbreviates(argument[2:].split("=", 1)[0], SCRIPT_FORBIDDEN_OPTIONS)
        elif argument.startswith("-"):
            for letter in argument[1:]:
                if letter in _SCRIPT_FORBIDDEN_SHORT:
                    option = _SCRIPT_FORBIDDEN_SHORT[letter]
                    break
                if letter in _SHORT_WITH_ARGUMENT:
                    break
        if option is not None:
            shown = argument if len(argument) <= 40 else argument[:37] + "..."
            return errors.BadRequest(
                f"The script's directive '#SBATCH {shown}' is not allowed: --{option} "
                f"({SCRIPT_FORBIDDEN_OPTIONS[option]})"
            )
    return None


def build_sbatch_options(
    description: JobDescription, allowed_extra: Sequence[str] = (), comment: str | None = None
) -> list[str]:
    """sbatch's options (and the remote script path, last) for ``description``.

    Extra options come first so that the first-class fields win; an extra option not
    in ``allowed_extra`` (or in ``FORBIDDEN_EXTRA_OPTIONS``) is a ``BadRequest``.
    ``comment`` (``--comment``, e.g. an idempotency stamp) overrides an extra one.
    """
    options = ["--parsable"]
    for name, value in (description.extra_options or {}).items():
        if _abbreviates(name, FORBIDDEN_EXTRA_OPTIONS) or name not in allowed_extra:
            raise errors.BadRequest(f"The sbatch option --{name} is not allowed on this system")
        options.append(f"--{name}" if value is None else f"--{name}={value}")
    fields: list[tuple[str, object]] = [
        ("job-name", description.name),
        ("chdir", description.working_directory),
        ("account", description.account),
        ("partition", description.partition),
        ("reservation", description.reservation),
        ("qos", description.qos),
        ("constraint", description.constraints),
        ("input", description.standard_input),
        ("output", description.standard_output),
        ("error", description.standard_error),
        ("time", description.time_limit),
        ("nodes", description.nodes),
        ("ntasks", description.tasks),
        ("cpus-per-task", description.cpus_per_task),
        ("mem", description.memory),
        ("array", description.array),
        ("dependency", description.dependency_expression),
    ]
    options.extend(f"--{name}={value}" for name, value in fields if value is not None)
    if comment is not None:
        if not PLAIN_VALUE.fullmatch(comment):
            raise ValueError("invalid job comment")
        options.append(f"--comment={comment}")
    if description.script_path is not None:
        options.append(posixpath.join(description.working_directory, description.script_path))
    return options


# ---------------------------------------------------------------- answers, directives


def parse_sbatch_output(stdout: str) -> tuple[str, str | None]:
    """``sbatch --parsable``'s ``"123"`` or ``"123;cluster"`` as (id, cluster)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise SlurmOutputError("sbatch printed no job id")
    match = re.fullmatch(r"(\d+)(?:;(\S+))?", lines[-1])
    if not match:
        raise SlurmOutputError(f"unexpected sbatch output {lines[-1][:80]!r}")
    return match.group(1), match.group(2)


_TESTED_ONLY = re.compile(r"\bJob \d+ to start at\b")


def is_test_only_answer(stderr: str) -> bool:
    """sbatch only tested the job (``--test-only``, e.g. from a script's directives):
    it exits 0, prints no job id and says when the job would start."""
    return bool(_TESTED_ONLY.search(stderr))


DIRECTIVE_PREFIXES = ("#SBATCH", "#SLURM")


def script_directives(script: str) -> list[str]:
    """The arguments sbatch takes from the script's ``#SBATCH`` (and ``#SLURM``) lines.

    As sbatch 22.05 reads them: a line that starts with the magic word (no space
    needed after it) gives arguments; the first line whose first non-blank character
    is not ``#`` ends the directives; quotes group, a backslash escapes the next
    character and an unquoted ``#`` starts a comment.
    """
    arguments: list[str] = []
    for line in script.split("\n"):
        prefix = next((p for p in DIRECTIVE_PREFIXES if line.startswith(p)), None)
        if prefix is None:
            stripped = line.lstrip()
            if stripped and not stripped.startswith("#"):
                break
            continue
        arguments.extend(_directive_arguments(line[len(prefix) :]))
    return arguments


def _directive_arguments(text: str) -> list[str]:
    arguments: list[str] = []
    current: list[str] | None = None
    quote = ""
    escaped = False
    for char in text:
        if current is None:
            if char.isspace():
                continue
            current = []
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
            continue
        elif quote:
            if char == quote:
                quote = ""
                continue
        elif char in "\"'":
            quote = char
            continue
        elif char == "#":
            break
        elif char.isspace():
            arguments.append("".join(current))
            current = None
            continue
        current.append(char)
    if current is not None and (current or quote):
        arguments.append("".join(current))
    return arguments
