"""Dry-run submission (``sbatch --test-only``): argv and verdicts, without the site."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from hpcgate import errors
from hpcgate.cluster.remote import CommandResult
from hpcgate.compute.scheduler.models import JobDescription
from hpcgate.compute.scheduler.slurm import SlurmScheduler
from hpcgate.compute.scheduler.slurm.preflight import MAX_MESSAGE, category_of, read_test_only
from hpcgate.config import SchedulerSettings

WOULD_START = (
    "sbatch: Job 2496 to start at 1796069585 using 2 processors on nodes vm in partition compute\n"
)


class Answering:
    """A runner whose every command answers ``result``; records argv, stdin and caps."""

    username = "u"

    def __init__(self, stdout: str = "", stderr: str = "", status: int = 0) -> None:
        self.result = CommandResult(status, stdout, stderr)
        self.calls: list[tuple[list[str], object, object]] = []

    async def run(
        self, argv: Sequence[str], *, stdin: object = None, max_output: object = None, **_: object
    ) -> CommandResult:
        self.calls.append((list(argv), stdin, max_output))
        return self.result


def describe(**fields: object) -> JobDescription:
    fields.setdefault("working_directory", "/home/u")
    if "script_path" not in fields:
        fields.setdefault("script", "#!/bin/bash\ntrue\n")
    return JobDescription.model_validate(fields)


async def test_dry_run_uses_the_submission_argv_with_test_only() -> None:
    scheduler = SlurmScheduler(SchedulerSettings(extra_sbatch_options=["hold"]))
    runner = Answering(stderr=WOULD_START)
    job = describe(name="j", account="project1", env={"A": "x y"}, extra_options={"hold": None})
    verdict = await scheduler.preflight(runner, job)
    assert verdict.valid and verdict.expected_start == 1796069585
    assert (verdict.processors, verdict.nodes, verdict.partition) == (2, "vm", "compute")
    argv, stdin, cap = runner.calls[0]
    assert argv[:4] == ["env", "SLURM_TIME_FORMAT=%s", "A=x y", "sbatch"]
    assert argv[4:6] == ["--export=ALL", "--test-only"]
    assert "--account=project1" in argv and "--hold" in argv and "--job-name=j" in argv
    assert stdin == job.script and isinstance(cap, int) and cap <= 64 * 1024
    # without env: still env for the time format, never a shell
    plain = Answering(stderr=WOULD_START)
    await scheduler.preflight(plain, describe())
    assert plain.calls[0][0][:4] == ["env", "SLURM_TIME_FORMAT=%s", "sbatch", "--test-only"]
    # a real submission's argv is unchanged
    submitted = Answering(stdout="12\n")
    assert await scheduler.submit(submitted, describe()) == "12"
    assert submitted.calls[0][0][:2] == ["sbatch", "--parsable"]
    assert "--test-only" not in submitted.calls[0][0]


async def test_dry_run_keeps_the_submission_checks() -> None:
    scheduler = SlurmScheduler()
    runner = Answering(stderr=WOULD_START)
    for job in (
        describe(extra_options={"uid": "0"}),
        describe(script="#!/bin/bash\n#SBATCH --wait\ntrue\n"),
    ):
        verdict = await scheduler.preflight(runner, job)
        assert not verdict.valid and verdict.category == "request" and verdict.reason
    assert runner.calls == []  # refused before anything ran


@pytest.mark.parametrize(
    ("stderr", "category", "fragment"),
    [
        (
            "allocation failure: Invalid account or account/partition combination specified\n",
            "account",
            "Invalid account",
        ),
        (
            "sbatch: error: invalid partition specified: nope\n"
            "allocation failure: Invalid partition name specified\n",
            "partition",
            "Invalid partition name",
        ),
        ("allocation failure: Invalid qos specification\n", "qos", "Invalid qos"),
        (
            "allocation failure: Requested time limit is invalid (missing or exceeds some limit)\n",
            "time_limit",
            "time limit",
        ),
        (
            "allocation failure: Requested node configuration is not available\n",
            "resources",
            "node configuration",
        ),
        (
            "sbatch: error: Batch job submission failed: Invalid account or account/partition "
            "combination specified\n",
            "account",
            "Invalid account",
        ),
    ],
)
def test_refusals_are_verdicts(stderr: str, category: str, fragment: str) -> None:
    verdict = read_test_only(CommandResult(1, "", stderr), "sbatch")
    assert not verdict.valid
    assert verdict.category == category
    assert verdict.reason is not None and fragment in verdict.reason
    assert "allocation failure:" not in verdict.reason


def test_answers_that_are_not_verdicts() -> None:
    with pytest.raises(errors.ServiceUnavailable):
        read_test_only(
            CommandResult(1, "", "sbatch: error: Unable to contact slurm controller"), "sbatch"
        )
    with pytest.raises(errors.BadGateway):  # the shell could not run sbatch
        read_test_only(CommandResult(127, "", "bash: sbatch: command not found\n"), "sbatch")
    with pytest.raises(errors.BadGateway, match="sbatch_path"):
        read_test_only(CommandResult(127, "", "env: '/x/sbatch': No such file\n"), "/x/sbatch")
    # exit 0 without the test-only line (a job id on stdout proves nothing): no verdict
    with pytest.raises(errors.BadGateway, match="--test-only"):
        read_test_only(CommandResult(0, "4242\n", ""), "sbatch")


def test_hostile_output_is_bounded_and_strict() -> None:
    noise = "x" * 100_000
    verdict = read_test_only(CommandResult(1, noise, "allocation failure: " + noise), "sbatch")
    assert not verdict.valid and len(verdict.reason or "") <= MAX_MESSAGE
    # a forged line with an absurd node list is not believed
    forged = "sbatch: Job 1 to start at 5 using 1 processors on nodes $(rm -rf ~) in partition p"
    with pytest.raises(errors.BadGateway):
        read_test_only(CommandResult(0, "", forged), "sbatch")
    # ISO start times (a site without SLURM_TIME_FORMAT honoured) give no start, still valid
    iso = WOULD_START.replace("1796069585", "2026-11-30T20:13:05")
    verdict = read_test_only(CommandResult(0, "", iso), "sbatch")
    assert verdict.valid and verdict.expected_start is None
    assert category_of("something else") is None
