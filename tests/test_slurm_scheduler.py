"""The Slurm scheduler: pure parsing and validation, then against the real local site."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence

import asyncssh
import pytest
from pydantic import ValidationError

from hpcgate import errors
from hpcgate.cluster.remote import CommandResult, CommandRunner
from hpcgate.compute.jobs import summarize_array, validate_job_id
from hpcgate.compute.scheduler.base import time_window_seconds
from hpcgate.compute.scheduler.models import (
    MAX_SCRIPT_BYTES,
    Job,
    JobDescription,
    JobStatus,
    JobSubmitRequest,
    JobTime,
)
from hpcgate.compute.scheduler.slurm import SlurmScheduler
from hpcgate.compute.scheduler.slurm.caches import RecentSubmissions, TtlCache
from hpcgate.compute.scheduler.slurm.cluster_records import (
    parse_accounts,
    parse_id,
    parse_partitions,
    parse_reservations,
    parse_scontrol_record,
    parse_sinfo_nodes,
)
from hpcgate.compute.scheduler.slurm.fields import (
    FIELD_SEP,
    decode_wait_status,
    parse_duration,
    parse_exit_code,
    parse_time_limit,
    split_records,
)
from hpcgate.compute.scheduler.slurm.job_records import (
    SACCT_FIELDS,
    SQUEUE_FIELDS,
    merge_jobs,
    parse_sacct,
    parse_squeue,
    select_entries,
)
from hpcgate.compute.scheduler.slurm.messages import classify_sbatch_error, slurm_message
from hpcgate.compute.scheduler.slurm.sbatch import (
    build_sbatch_options,
    forbidden_directive,
    is_test_only_answer,
    parse_sbatch_output,
    script_directives,
)
from hpcgate.config import SchedulerSettings
from tests.security.hostile import hostile_files
from tests.site import SiteEnv

S = FIELD_SEP
WD = "/home/u"


def describe(**fields: object) -> JobDescription:
    fields.setdefault("working_directory", WD)
    if "script_path" not in fields and "scriptPath" not in fields:
        fields.setdefault("script", "#!/bin/bash\ntrue\n")
    return JobDescription.model_validate(fields)


def job(job_id: str, state: str, *, exit_code: int | None = None, start: int | None = None) -> Job:
    return Job(
        job_id=job_id,
        name="n",
        status=JobStatus(state=state, exit_code=exit_code),
        time=JobTime(start=start),
        allocation_nodes=1,
        cluster="c",
        nodes="vm",
        partition="p",
        user="u",
        working_directory=WD,
    )


# ====================================================================== models


def test_description_accepts_camel_and_snake_case() -> None:
    camel = JobDescription.model_validate(
        {"workingDirectory": WD, "script": "#!/bin/sh\n", "standardOutput": "o.txt"}
    )
    snake = JobDescription.model_validate(
        {"working_directory": WD, "script": "#!/bin/sh\n", "standard_output": "o.txt"}
    )
    assert camel == snake
    request = JobSubmitRequest.model_validate({"job": {"workingDirectory": WD, "scriptPath": "a"}})
    assert request.job.script_path == "a"


def test_job_serialises_camel_case() -> None:
    dumped = job("1", "COMPLETED", exit_code=0).model_dump(mode="json")
    assert {"jobId", "allocationNodes", "workingDirectory", "killRequestUser"} <= dumped.keys()
    assert dumped["status"] == {
        "state": "COMPLETED",
        "stateReason": None,
        "exitCode": 0,
        "interruptSignal": None,
    }


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"env": ["A=1"]}, "valid dictionary"),
        ({"script": "#!/bin/sh\n", "script_path": "/x"}, "exactly one"),
        ({"script": None}, "exactly one"),
        ({"name": "-x"}, "must not start with '-'"),
        ({"name": "a\nb"}, "control characters"),
        ({"name": "a\x00b"}, "control characters"),
        ({"name": ""}, "must not be empty"),
        ({"account": "a;b"}, "Slurm name"),
        ({"account": "--qos=high"}, "Slurm name"),
        ({"partition": "x y"}, "partition name"),
        ({"reservation": "$(id)"}, "Slurm name"),
        ({"working_directory": "relative/dir"}, "absolute"),
        ({"working_directory": "/a\nb"}, "control characters"),
        ({"standard_output": "--output=/etc/x"}, "must not start with '-'"),
        ({"script_path": "-x", "script": None}, "must not start with '-'"),
        ({"script": "#!/bin/sh\n\x00"}, "NUL"),
        ({"script": "#!/bin/sh\n" + "x" * MAX_SCRIPT_BYTES}, "larger than"),
        ({"env": {"A": "x\ny"}}, "NUL or newline"),
        ({"env": {"1A": "x"}}, "environment variable name"),
        ({"env": {"A B": "x"}}, "environment variable name"),
        ({"env": {"SBATCH_ACCOUNT": "x"}}, "configure Slurm"),
        ({"env": {"SLURM_CONF": "/tmp/x"}}, "configure Slurm"),
        ({"time_limit": "abc"}, "Slurm time string"),
        ({"time_limit": 0}, "at least 1 minute"),
        ({"memory": "4 GB"}, "size"),
        ({"array": "0-2%x"}, "array specification"),
        ({"array": "0-3;id"}, "array specification"),
        ({"dependencies": "afterok:1;id"}, "dependency"),
        ({"dependencies": ["1", "x"]}, "job id"),
        ({"nodes": 0}, "node count"),
        ({"constraints": "-x"}, "constraint"),
        ({"extra_options": {"--comment": "x"}}, "option name"),
        ({"extra_options": {"comment": "a\nb"}}, "control characters"),
        ({"unknown_field": 1}, "Extra inputs"),
    ],
)
def test_description_rejects(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        describe(**fields)
    assert fragment in str(caught.value)


def test_description_normalises_extensions() -> None:
    d = describe(
        time_limit=30,
        memory="4G",
        array="0-15:4%2",
        dependencies=["12", "13_1"],
        nodes="2-4",
        constraints="gpu&(intel|amd)",
        partition="compute,xfer",
        env={"A": "x y 'q' \"d\" $(id) `id` ; , = "},
    )
    assert d.time_limit == "30"
    assert d.dependency_expression == "afterok:12:13_1"
    assert describe(dependencies="afterany:12?afternotok:13+5,singleton").dependency_expression
    assert describe(time_limit="1-02:03:04").time_limit == "1-02:03:04"


def test_sbatch_options_are_whole_argv_elements() -> None:
    d = describe(
        name="my job; $(id)",
        account="project1",
        partition="compute",
        standard_output="out %j.txt",
        time_limit="10",
        tasks=2,
        cpus_per_task=3,
        memory="1G",
        qos="normal",
        array="0-2",
        dependencies=["5"],
        extra_options={"comment": "a b", "hold": None},
    )
    options = build_sbatch_options(d, ["comment", "hold"])
    assert options == [
        "--parsable",
        "--comment=a b",
        "--hold",
        "--job-name=my job; $(id)",
        f"--chdir={WD}",
        "--account=project1",
        "--partition=compute",
        "--qos=normal",
        "--output=out %j.txt",
        "--time=10",
        "--ntasks=2",
        "--cpus-per-task=3",
        "--mem=1G",
        "--array=0-2",
        "--dependency=afterok:5",
    ]
    remote = build_sbatch_options(describe(script_path="jobs/run.sh", script=None))
    assert remote[-1] == f"{WD}/jobs/run.sh"


def test_extra_options_need_the_allow_list() -> None:
    with pytest.raises(errors.BadRequest, match="--begin is not allowed"):
        build_sbatch_options(describe(extra_options={"begin": "now+1hour"}), ["comment"])
    with pytest.raises(errors.BadRequest, match="--wrap is not allowed"):
        build_sbatch_options(describe(extra_options={"wrap": "id"}), ["wrap"])
    # sbatch takes any unambiguous prefix: an allow-listed abbreviation is refused too
    for short in ("te", "test", "test-on", "wai", "pars", "expo", "he"):
        with pytest.raises(errors.BadRequest, match="is not allowed"):
            build_sbatch_options(describe(extra_options={short: None}), [short])
    assert "--wait-all-nodes=1" in build_sbatch_options(
        describe(extra_options={"wait-all-nodes": "1"}), ["wait-all-nodes"]
    )


def test_script_directives_are_read_as_sbatch_reads_them() -> None:
    script = (
        "#!/bin/bash\n"
        "#SBATCH --time=5 -J 'a b' # a comment --test-only\n"
        "\n"
        "   # an indented comment\n"
        '#SBATCH--mem=1G "--qos"=x\\ y\n'
        "#SLURM -N 1\n"
        "echo hi\n"
        "#SBATCH --test-only\n"
    )
    expected = ["--time=5", "-J", "a b", "--mem=1G", "--qos=x y", "-N", "1"]
    assert script_directives(script) == expected


@pytest.mark.parametrize(
    "line",
    [
        "#SBATCH --test-only",
        "#SBATCH --te",
        "#SBATCH --time=5 --test-only",
        '#SBATCH "--test-only"',
        "#SBATCH--test-only",
        "#SLURM --test-only",
        "#SBATCH --wait",
        "#SBATCH -W",
        "#SBATCH -vW",
        "#SBATCH -J name --test-only",
    ],
)
def test_directives_that_stop_sbatch_answering_are_refused(line: str) -> None:
    refused = forbidden_directive(f"#!/bin/bash\n# c\n{line}\ntrue\n")
    assert isinstance(refused, errors.BadRequest)
    assert "is not allowed" in refused.message
    assert "--test-only" in refused.message or "--wait" in refused.message


@pytest.mark.parametrize(
    "line",
    [
        "#SBATCH --time=5 # --test-only",
        "#SBATCH -JW",  # job name W
        "#SBATCH -oWout.txt",
        "#SBATCH --wait-all-nodes=1",
        "#SBATCH --help",  # sbatch ignores these in a script (the job is submitted)
        "#SBATCH --version --usage --wrap=id",
        "echo first\n#SBATCH --test-only",
        " #SBATCH --test-only",
    ],
)
def test_harmless_directives_pass(line: str) -> None:
    assert forbidden_directive(f"#!/bin/bash\n{line}\ntrue\n") is None


def test_tested_only_answer() -> None:
    assert is_test_only_answer(
        "sbatch: Job 3 to start at 2026-11-30T17:15:22 using 1 processors on nodes vm\n"
    )
    assert not is_test_only_answer("sbatch: error: Batch job submission failed\n")


class Refusing:
    """A runner that must not be used: the check comes before any command."""

    username = "u"

    async def run(self, argv: Sequence[str], **_: object) -> CommandResult:
        raise AssertionError(f"ran {argv}")


class Answering:
    """A runner whose every command prints ``stdout``/``stderr`` (for sbatch's answer)."""

    username = "u"

    def __init__(self, stdout: str, stderr: str, status: int = 0) -> None:
        self.result = CommandResult(status, stdout, stderr)
        self.argvs: list[list[str]] = []

    async def run(self, argv: Sequence[str], **_: object) -> CommandResult:
        self.argvs.append(list(argv))
        return self.result


async def test_listing_window_is_capped() -> None:
    scheduler = SlurmScheduler(SchedulerSettings(max_list_window=3 * 86400))
    for window in ("9999d", "4d", "73h"):
        with pytest.raises(errors.BadRequest, match="maximum of 3d") as caught:
            await scheduler.jobs(Refusing(), time_window=window)
        assert "max_list_window" in caught.value.message
    # the default window (24h) is cut to a smaller cap instead of refused
    small = SlurmScheduler(SchedulerSettings(max_list_window=3600))
    runner = Answering("", "")
    assert await small.jobs(runner) == []
    sacct = next(argv for argv in runner.argvs if "sacct" in argv)
    assert "now-3600" in sacct


async def test_submit_answers_for_no_job_id() -> None:
    scheduler = SlurmScheduler()
    tested = Answering("", "sbatch: Job 7 to start at 2026-01-01T00:00:00 using 1 processors\n")
    with pytest.raises(errors.BadRequest, match="only tested the job"):
        await scheduler.submit(tested, describe(script_path="job.sh", script=None))
    with pytest.raises(errors.BadGateway, match="Unexpected output from sbatch"):
        await scheduler.submit(Answering("hello\n", ""), describe())
    with pytest.raises(errors.BadRequest, match="--test-only"):
        await scheduler.submit(Refusing(), describe(script="#!/bin/bash\n#SBATCH --test-only\n"))


class ByProgram:
    """A runner answering each program (argv's first non-``env`` word) its own result."""

    username = "u"

    def __init__(self, **results: CommandResult) -> None:
        self.results = results

    async def run(self, argv: Sequence[str], **_: object) -> CommandResult:
        program = next(word for word in argv if word != "env" and "=" not in word)
        return self.results[program.rsplit("/", 1)[-1]]


async def test_a_stamp_lookup_without_accounting_is_unknown_not_none() -> None:
    """With slurmdbd down and nothing in the controller, the lookup must not say
    "no such job": the controller may have forgotten it, and a retry would submit twice."""
    scheduler = SlurmScheduler()
    down = CommandResult(
        1, "", "sacct: error: Problem talking to the database: Connection refused\n"
    )
    forgotten = ByProgram(squeue=CommandResult(0, "", ""), sacct=down)
    with pytest.raises(errors.ServiceUnavailable, match="slurmdbd"):
        await scheduler.jobs_with_comment(forgotten, "hpcgate-stamp", since=0)
    # the controller still holds it: that answer is certain without accounting
    row = "".join(f"{field}{S}" for field in ("41", "41", "hpcgate-stamp")) + "\n"
    held = ByProgram(squeue=CommandResult(0, row, ""), sacct=down)
    assert await scheduler.jobs_with_comment(held, "hpcgate-stamp", since=0) == ["41"]


async def test_sbatch_path_comes_from_configuration() -> None:
    scheduler = SlurmScheduler(SchedulerSettings(sbatch_path="/opt/slurm/bin/sbatch"))
    runner = Answering("12\n", "")
    assert await scheduler.submit(runner, describe(env={"PATH": "/home/u/bin", "A": "1"})) == "12"
    assert await scheduler.submit(runner, describe(env={"A": "1"})) == "12"
    assert runner.argvs[0][:4] == ["env", "PATH=/home/u/bin", "A=1", "/opt/slurm/bin/sbatch"]
    assert runner.argvs[1][:3] == ["env", "A=1", "sbatch"]  # the user's own PATH finds it
    missing = Answering("", "env: '/opt/slurm/bin/sbatch': No such file or directory\n", 127)
    with pytest.raises(errors.BadGateway, match=r"scheduler\.sbatch_path"):
        await scheduler.submit(missing, describe(env={"PATH": "/bin"}))
    for bad in ("sbatch", "/usr/bin/sbatch --test-only", "/x=y", "/a\nb"):
        with pytest.raises(ValidationError, match="sbatch_path"):
            SchedulerSettings(sbatch_path=bad)
    for field, value in (("max_list_window", 10), ("max_list_jobs", 0)):
        with pytest.raises(ValidationError, match=field):
            SchedulerSettings.model_validate({field: value})


def test_job_ids_and_time_windows() -> None:
    assert validate_job_id("123") == "123"
    assert validate_job_id("123_4") == "123_4"
    for bad in ("", "12a", "-1", "1;id", "1 2", "1_", "1\n"):
        with pytest.raises(errors.BadRequest):
            validate_job_id(bad)
    assert time_window_seconds(None) == 86400
    assert time_window_seconds("7d") == 7 * 86400
    assert time_window_seconds("90m") == 5400
    with pytest.raises(errors.BadRequest):
        time_window_seconds("1y")


# ====================================================================== parsing


def test_split_records_keeps_separators_out_of_fields() -> None:
    out = f"1{S}a|b c{S}\n2{S}line\nbreak{S}\n"
    assert split_records(out, 2) == [["1", "a|b c"], ["2", "line\nbreak"]]
    assert split_records("", 2) == []
    with pytest.raises(ValueError):
        split_records(f"1{S}2{S}3{S}\n", 2)


def test_scalar_fields() -> None:
    assert decode_wait_status("768") == (3, 0)
    assert decode_wait_status("9") == (0, 9)
    assert decode_wait_status("N/A") == (None, None)
    assert parse_exit_code("3:0") == (3, 0)
    assert parse_exit_code("0:15") == (0, 15)
    assert parse_duration("1-02:03:04") == 93784
    assert parse_duration("05:06") == 306
    assert parse_duration("INVALID") is None
    assert parse_time_limit("UNLIMITED") is None
    assert parse_time_limit("1-00:00:00") == 1440
    assert parse_time_limit("30") == 30
    assert parse_time_limit("2-12") == 3600


def _squeue_row(**values: str) -> str:
    base = dict.fromkeys(SQUEUE_FIELDS, "")
    base.update(
        JobID="15", ArrayJobID="15", ArrayTaskID="N/A", Name="n", State="RUNNING", Reason="None",
        exit_code="0", TimeUsed="1:05", StartTime="1700000000", EndTime="1700003600",
        TimeLimit="1:00:00", Account="project1", NumNodes="1", Cluster="hpcsite",
        GroupName="g", NodeList="vm", Partition="compute", UserName="u", WorkDir=WD,
        PriorityLong="4294901737",
    )  # fmt: skip
    base.update(values)
    return "".join(base[name] + S for name in SQUEUE_FIELDS) + "\n"


def test_parse_squeue() -> None:
    out = _squeue_row() + _squeue_row(
        JobID="17", ArrayJobID="14", ArrayTaskID="1", State="FAILED", exit_code="768",
        Name="a|b c", StartTime="1700000000", EndTime="1700000010",
    ) + _squeue_row(JobID="18", State="PENDING", StartTime="1800000000", NodeList="")  # fmt: skip
    running, failed, pending = parse_squeue(out)
    assert running.raw_id == "15" and running.job.job_id == "15"
    assert running.job.time.elapsed == 65 and running.job.time.limit == 60
    assert running.job.time.end is None  # a forecast while running
    assert running.job.status.exit_code is None and running.job.priority == 4294901737
    assert failed.raw_id == "17" and failed.job.job_id == "14_1" and failed.job.name == "a|b c"
    assert (failed.job.status.exit_code, failed.job.status.interrupt_signal) == (3, 0)
    assert failed.job.time.end == 1700000010
    assert pending.job.time.start is None and pending.job.nodes == ""


def _sacct_row(**values: str) -> str:
    base = dict.fromkeys(SACCT_FIELDS, "")
    base.update(
        JobID="12", JobName="job", State="COMPLETED", ExitCode="0:0", Reason="None",
        ElapsedRaw="3", Start="1700000000", End="1700000003", Suspended="00:00:00",
        TimelimitRaw="UNLIMITED", Account="project1", NNodes="1", Cluster="hpcsite",
        Group="g", NodeList="vm", Partition="compute", User="u", UID="1001", WorkDir=WD,
        Priority="7",
    )  # fmt: skip
    base.update(values)
    return "".join(base[name] + S for name in SACCT_FIELDS) + "\n"


def test_parse_sacct_with_steps_and_killers() -> None:
    out = (
        _sacct_row(State="FAILED", ExitCode="3:0")
        + _sacct_row(JobID="12.batch", JobName="batch", State="FAILED", ExitCode="3:0")
        + _sacct_row(JobID="13", State="CANCELLED by 1001", ExitCode="0:15", TimelimitRaw="5")
        + _sacct_row(JobID="14", State="CANCELLED by 0")
        + _sacct_row(JobID="16", State="PENDING", NodeList="None assigned", Start="Unknown")
    )
    failed, cancelled, by_root, pending = parse_sacct(out)
    assert failed.status.exit_code == 3 and failed.status.state == "FAILED"
    assert [t.id for t in failed.tasks or []] == ["12.batch"]
    assert failed.tasks and failed.tasks[0].status.exit_code == 3
    assert cancelled.status.state == "CANCELLED" and cancelled.kill_request_user == "u"
    assert cancelled.status.interrupt_signal == 15 and cancelled.time.limit == 5
    assert by_root.kill_request_user == "0"
    assert pending.nodes == "" and pending.time.start is None and pending.status.exit_code is None


def test_merge_prefers_the_controller_and_keeps_steps() -> None:
    steps = parse_sacct(_sacct_row(State="RUNNING") + _sacct_row(JobID="12.batch"))
    active = job("12", "COMPLETED", exit_code=0, start=5)
    merged = merge_jobs([active], [*steps, job("3", "FAILED")])
    assert [j.job_id for j in merged] == ["3", "12"]
    assert merged[1].status.state == "COMPLETED" and merged[1].tasks
    assert merged[1].time.suspended == 0 and merged[1].time.start == 5


def test_array_summary_and_selection() -> None:
    tasks = [job("7_0", "COMPLETED", exit_code=0), job("7_1", "RUNNING"), job("7_2", "PENDING")]
    assert summarize_array("7", tasks).status.state == "RUNNING"
    done = [job("7_0", "COMPLETED", exit_code=0), job("7_1", "FAILED", exit_code=2)]
    summary = summarize_array("7", done)
    assert summary.job_id == "7" and summary.status.state == "FAILED"
    assert summary.status.exit_code == 2 and [t.id for t in summary.tasks or []] == ["7_0", "7_1"]
    ok = summarize_array("7", [job("7_1", "COMPLETED"), job("7_0", "COMPLETED")])
    assert ok.status.state == "COMPLETED"
    everything = [*done, job("70", "COMPLETED")]
    assert [j.job_id for j in select_entries("7", everything)] == ["7_0", "7_1"]
    assert [j.job_id for j in select_entries("7_1", everything)] == ["7_1"]
    assert select_entries("8", everything) == []


def test_parse_sbatch_output() -> None:
    assert parse_sbatch_output("123\n") == ("123", None)
    assert parse_sbatch_output("123;hpcsite\n") == ("123", "hpcsite")
    with pytest.raises(ValueError):
        parse_sbatch_output("Submitted batch job 123")


@pytest.mark.parametrize(
    ("stderr", "kind", "fragment"),
    [
        (
            "sbatch: error: invalid partition specified: nope\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified\n",
            errors.BadRequest,
            "Invalid partition name specified",
        ),
        (
            "sbatch: error: Batch job submission failed: Invalid account or "
            "account/partition combination specified\n",
            errors.BadRequest,
            "Invalid account",
        ),
        ("sbatch: unrecognized option '--x=1'\nTry \"sbatch --help\"", errors.BadRequest, "--x"),
        ("sbatch: error: Invalid --time specification\n", errors.BadRequest, "--time"),
        (
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
            "(connect failure)\n",
            errors.ServiceUnavailable,
            "Unable to contact slurm controller",
        ),
        ("sbatch: error: Socket timed out on send/recv operation", errors.ServiceUnavailable, ""),
        ("Segmentation fault", errors.BadGateway, "Segmentation fault"),
    ],
)
def test_sbatch_errors(stderr: str, kind: type[errors.ApiError], fragment: str) -> None:
    error = classify_sbatch_error(stderr)
    assert type(error) is kind and fragment in error.message
    assert "sbatch: error:" not in error.message and "--help" not in error.message
    if kind is errors.ServiceUnavailable:
        assert "Retry-After" in error.headers


def test_slurm_message_drops_plugin_chatter() -> None:
    noisy = (
        "scancel: Terminating job 9\n"
        "scancel: error: Kill job error on job id 9: Invalid job id specified\n"
        "scancel: select/cons_tres: common_init: select/cons_tres loaded\n"
    )
    assert slurm_message(noisy) == "Kill job error on job id 9: Invalid job id specified"


def test_scontrol_records() -> None:
    line = (
        "JobId=33 JobName=my job UserId=u(1001) AllocNode:Sid=localhost:1 CPUs/Task=1 "
        "Command=(null) WorkDir=/tmp/a b StdErr=/tmp/a b/e-33.log StdIn=/dev/null "
        "StdOut=/tmp/out-33.log Power="
    )
    record = parse_scontrol_record(line)
    assert record["JobName"] == "my job" and record["WorkDir"] == "/tmp/a b"
    assert record["StdErr"] == "/tmp/a b/e-33.log" and record["StdOut"] == "/tmp/out-33.log"
    assert record["AllocNode:Sid"] == "localhost:1" and record["Power"] == ""
    partitions = parse_partitions(
        "PartitionName=compute AllowGroups=ALL Default=YES State=UP TotalCPUs=8 TotalNodes=1\n"
        "PartitionName=xfer State=DOWN TotalCPUs=4 TotalNodes=2\n"
    )
    assert [(p.name, p.cpus, p.total_nodes, p.partition) for p in partitions] == [
        ("compute", 8, 1, ["UP"]),
        ("xfer", 4, 2, ["DOWN"]),
    ]
    assert parse_partitions("No partitions in the system\n") == []
    reservations = parse_reservations(
        "ReservationName=maint StartTime=2082758400 EndTime=2082758460 Duration=00:01:00 "
        "Nodes=vm NodeCnt=1 CoreCnt=8 Features=(null) PartitionName=(null) "
        "Flags=MAINT,SPEC_NODES TRES=cpu=8 Users=hpcuser1 State=INACTIVE MaxStartDelay=(null)\n"
    )
    assert reservations[0].model_dump(mode="json") == {
        "name": "maint",
        "nodeList": "vm",
        "endTime": 2082758460,
        "startTime": 2082758400,
        "features": None,
        "state": "INACTIVE",
    }
    assert parse_reservations("No reservations in the system\n") == []


def test_sinfo_nodes() -> None:
    document = {
        "nodes": [
            {
                "name": "vm", "cpus": 8, "sockets": 1, "cores": 8, "threads": 1,
                "cpu_load": 11, "free_memory": 23580, "features": "gpu,ssd",
                "address": "127.0.0.1", "hostname": "vm", "state": "idle",
                "state_flags": ["DRAIN", "NOT_RESPONDING"], "partitions": ["compute"],
                "weight": 1, "alloc_memory": 0, "alloc_cpus": 0, "idle_cpus": 8,
            },
            {"name": "vm", "cpus": 8, "state": "idle"},
            {"name": "n2", "cpus": 4, "state": ["MIXED", "COMPLETING"]},
        ]
    }  # fmt: skip
    vm, n2 = parse_sinfo_nodes(json.dumps(document))
    assert vm.state == ["IDLE", "DRAIN"] and vm.cpu_load == 0.11
    assert vm.features == ["gpu", "ssd"] and vm.partitions == ["compute"]
    assert n2.state == ["MIXED", "COMPLETING"] and n2.features is None
    with pytest.raises(ValueError):
        parse_sinfo_nodes("not json")


def test_id_and_accounts() -> None:
    identity = parse_id("uid=1001(alice) gid=1002(alice) groups=1002(alice),1003(domain users)\n")
    assert identity.user.model_dump() == {"id": "1001", "name": "alice"}
    assert [g.name for g in identity.groups] == ["alice", "domain users"]
    accounts = parse_accounts("project1|project1\nproject2|project1\n")
    assert [(a.name, a.default) for a in accounts] == [("project1", True), ("project2", False)]


def test_ttl_cache_expires_and_bounds() -> None:
    now = [0.0]
    cache: TtlCache[str, int] = TtlCache(ttl=60, max_entries=2, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)
    assert cache.get("a") is None and cache.get("c") == 3
    now[0] = 61
    assert cache.get("b") is None and len(cache) == 0
    recent = RecentSubmissions(ttl=60)
    recent.add("u1", job("5", "PENDING"))
    assert recent.get(("u1", "5")) is not None and recent.get(("u2", "5")) is None
    assert [j.job_id for j in recent.of_user("u1")] == ["5"]


# ====================================================================== the real site


class SshRunner:
    """A ``CommandRunner`` over one asyncssh connection (the pool is not used here)."""

    def __init__(self, conn: asyncssh.SSHClientConnection, username: str) -> None:
        self.conn = conn
        self.username = username
        self.calls: list[tuple[str, float]] = []

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(
                self.conn.run(shlex.join(argv), check=False, input=stdin), timeout
            )
        except TimeoutError as exc:
            raise errors.RequestTimeout(f"{argv[0]} timed out") from exc
        self.calls.append((argv[0] if argv[0] != "env" else argv[2], time.perf_counter() - started))
        return CommandResult(result.exit_status or 0, str(result.stdout), str(result.stderr))


class HiddenListings:
    """Delegates to a runner but makes squeue and sacct list nothing (a lagging
    scheduler), to show that a job just submitted is still answered."""

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner
        self.username = runner.username

    async def run(
        self, argv: Sequence[str], *, stdin: str | bytes | None = None, timeout: float | None = None
    ) -> CommandResult:
        if "squeue" in argv or "sacct" in argv:
            return CommandResult(0, "", "")
        return await self.runner.run(argv, stdin=stdin, timeout=timeout)


class Anonymous:
    """A runner that does not say whose it is: the scheduler must not ask the remote
    shell (``id -un`` there prints what the user likes), so it remembers nothing."""

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner
        self.argvs: list[list[str]] = []

    async def run(
        self, argv: Sequence[str], *, stdin: str | bytes | None = None, timeout: float | None = None
    ) -> CommandResult:
        self.argvs.append(list(argv))
        if "squeue" in argv or "sacct" in argv:
            return CommandResult(0, "", "")
        return await self.runner.run(argv, stdin=stdin, timeout=timeout)


@pytest.fixture(scope="module")
def scheduler() -> SlurmScheduler:
    return SlurmScheduler(SchedulerSettings(timeout=30, extra_sbatch_options=["comment", "hold"]))


@pytest.fixture(scope="module")
async def user1(ssh_as) -> SshRunner:  # type: ignore[no-untyped-def]
    return SshRunner(await ssh_as("hpcuser1"), "hpcuser1")


@pytest.fixture(scope="module")
async def user2(ssh_as) -> SshRunner:  # type: ignore[no-untyped-def]
    return SshRunner(await ssh_as("hpcuser2"), "hpcuser2")


@pytest.fixture(scope="module")
async def workdir(site_env: SiteEnv, user1: SshRunner) -> AsyncIterator[str]:
    """A fresh directory of hpcuser1's scratch, removed afterwards."""
    path = f"{site_env.scratch('hpcuser1')}/hpcgate-scheduler-{uuid.uuid4().hex[:8]}"
    assert (await user1.run(["mkdir", "-p", path])).ok
    yield path
    await user1.run(["rm", "-rf", path])


@pytest.fixture
def honest_user2() -> Iterator[None]:
    """hpcuser2's shell as it is for the test: other suites plant hostile programs in
    that home under the same lock, so none is there meanwhile."""
    with hostile_files("hpcuser2", {}):
        yield


@pytest.fixture(scope="module")
def tag() -> str:
    return f"hg{uuid.uuid4().hex[:6]}"


async def read(runner: CommandRunner, path: str) -> str:
    result = await runner.run(["cat", path])
    assert result.ok, result.stderr
    return result.stdout


async def wait_for(
    scheduler: SlurmScheduler,
    runner: CommandRunner,
    job_id: str,
    states: set[str],
    limit: float = 30,
) -> Job:
    """Poll ``job()`` until its state is one of ``states`` (bounded)."""
    deadline = time.monotonic() + limit
    current = None
    while time.monotonic() < deadline:
        current = await scheduler.job(runner, job_id)
        if current.status.state in states:
            return current
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} not in {states} after {limit}s: {current}")


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


@pytest.mark.site
async def test_inline_script_completes(
    scheduler: SlurmScheduler, user1: SshRunner, workdir: str, tag: str
) -> None:
    job_id = await scheduler.submit(
        user1,
        describe(
            working_directory=workdir,
            name=f"{tag}-ok",
            script="#!/bin/bash\necho hello from $SLURM_JOB_ID\n",
            standard_output="ok-%j.out",
            time_limit=5,
        ),
    )
    assert job_id.isdigit()
    done = await wait_for(scheduler, user1, job_id, ENDED)
    assert done.status.state == "COMPLETED" and done.status.exit_code == 0
    assert done.status.interrupt_signal == 0
    assert done.user == "hpcuser1" and done.account == "project1" and done.partition == "compute"
    assert done.working_directory == workdir and done.name == f"{tag}-ok"
    assert done.time.limit == 5 and done.time.start and done.time.end
    assert done.cluster and done.nodes and done.allocation_nodes == 1
    deadline = time.monotonic() + 10  # steps come from accounting, a moment later
    while not any(task.id == f"{job_id}.batch" for task in done.tasks or []):
        assert time.monotonic() < deadline, f"no batch step: {done}"
        await asyncio.sleep(0.2)
        done = await scheduler.job(user1, job_id)
    assert await read(user1, f"{workdir}/ok-{job_id}.out") == f"hello from {job_id}\n"
    # once accounting has settled, a lookup of the ended job is a single squeue call
    deadline = time.monotonic() + 10
    while True:
        before = len(user1.calls)
        again = await scheduler.job(user1, job_id)
        if [name for name, _ in user1.calls[before:]] == ["squeue"]:
            break
        assert time.monotonic() < deadline, "ended job never answered from the cache"
        await asyncio.sleep(0.2)
    assert again.status == done.status
    batch = {t.id: t.status.state for t in again.tasks or []}
    assert batch[f"{job_id}.batch"] == "COMPLETED"


@pytest.mark.site
async def test_exit_3_fails_with_exit_code_3(
    scheduler: SlurmScheduler, user1: SshRunner, workdir: str, tag: str
) -> None:
    job_id = await scheduler.submit(
        user1,
        describe(working_directory=workdir, name=f"{tag}-e3", script="#!/bin/bash\nexit 3\n"),
    )
    done = await wait_for(scheduler, user1, job_id, ENDED)
    assert done.status.state == "FAILED"
    assert (done.status.exit_code, done.status.interrupt_signal) == (3, 0)
    # the answer is the same once only accounting knows it
    (accounted,) = [j for j in await scheduler.jobs(user1, name=f"{tag}-e3")]
    assert accounted.status.exit_code == 3


@pytest.mark.site
async def test_cancel(scheduler: SlurmScheduler, user1: SshRunner, workdir: str, tag: str) -> None:
    job_id = await scheduler.submit(
        user1,
        describe(working_directory=workdir, name=f"{tag}-c", script="#!/bin/bash\nsleep 120\n"),
    )
    await wait_for(scheduler, user1, job_id, {"RUNNING"})
    await scheduler.cancel(user1, job_id)
    cancelled = await wait_for(scheduler, user1, job_id, ENDED)
    assert cancelled.status.state == "CANCELLED"
    await scheduler.cancel(user1, job_id)  # again: already ended is fine
    with pytest.raises(errors.NotFound, match="Job not found"):
        await scheduler.cancel(user1, "999999999")


@pytest.mark.site
async def test_array_of_three(
    scheduler: SlurmScheduler, user1: SshRunner, workdir: str, tag: str
) -> None:
    job_id = await scheduler.submit(
        user1,
        describe(
            working_directory=workdir,
            name=f"{tag}-arr",
            array="0-2",
            standard_output="arr-%A_%a.out",
            script="#!/bin/bash\necho task $SLURM_ARRAY_TASK_ID\n",
        ),
    )
    summary = await wait_for(scheduler, user1, job_id, ENDED)
    assert summary.job_id == job_id and summary.status.state == "COMPLETED"
    assert [t.id for t in summary.tasks or []] == [f"{job_id}_{i}" for i in range(3)]
    entries = await scheduler.job_entries(user1, job_id)
    assert [e.job_id for e in entries] == [f"{job_id}_{i}" for i in range(3)]
    assert all(e.status.state == "COMPLETED" for e in entries)
    one = await scheduler.job(user1, f"{job_id}_1")
    assert one.job_id == f"{job_id}_1"
    for i in range(3):
        assert await read(user1, f"{workdir}/arr-{job_id}_{i}.out") == f"task {i}\n"


@pytest.mark.site
async def test_afterok_dependency(
    scheduler: SlurmScheduler, user1: SshRunner, workdir: str, tag: str
) -> None:
    first = await scheduler.submit(
        user1,
        describe(
            working_directory=workdir,
            name=f"{tag}-dep1",
            script="#!/bin/bash\nsleep 1\necho first > first.txt\n",
        ),
    )
    second = await scheduler.submit(
        user1,
        describe(
            working_directory=workdir,
            name=f"{tag}-dep2",
            dependencies=[first],
            script="#!/bin/bash\ncat first.txt > second.txt\n",
        ),
    )
    waiting = await scheduler.job(user1, second)
    assert waiting.status.state == "PENDING"
    done = await wait_for(scheduler, user1, second, ENDED)
    assert done.status.state == "COMPLETED"
    before = await scheduler.job(user1, first)
    assert before.time.end is not None and done.time.start is not None
    assert done.time.start >= before.time.end
    assert await read(user1, f"{workdir}/second.txt") == "first\n"


@pytest.mark.site
async def test_env_is_passed_literally(
    scheduler: SlurmScheduler, user1: SshRunner, workdir: str, tag: str
) -> None:
    env = {
        "SPACES": "a  b   c",
        "QUOTES": 'it\'s "quoted"',
        "SUBST": f"$(touch {workdir}/pwned-subst)",
        "TICKS": f"`touch {workdir}/pwned-ticks`",
        "SEMI": f"x; touch {workdir}/pwned-semi",
        "LIST": "a,b=c,ALL",
        "EMPTY": "",
        "PATH": "/usr/local/bin:/usr/bin:/bin:/opt/my tools/bin",
    }
    script = "#!/bin/bash\n" + "".join(f'printf "%s\\n" "${name}"\n' for name in env)
    job_id = await scheduler.submit(
        user1,
        describe(
            working_directory=workdir,
            name=f"{tag}-env",
            env=env,
            script=script,
            standard_output="env.out",
        ),
    )
    done = await wait_for(scheduler, user1, job_id, ENDED)
    assert done.status.state == "COMPLETED"
    assert (await read(user1, f"{workdir}/env.out")).splitlines() == list(env.values())
    listing = await user1.run(["ls", workdir])
    assert "pwned" not in listing.stdout
    # the script reaches the job unchanged
    meta = await scheduler.metadata(user1, job_id)
    assert meta.script == script


@pytest.mark.site
async def test_hostile_values_are_rejected_or_literal(
    scheduler: SlurmScheduler, user1: SshRunner, workdir: str, tag: str
) -> None:
    odd_dir = f"{workdir}/a b'c\"$(id)"
    assert (await user1.run(["mkdir", "-p", odd_dir])).ok
    name = f"{tag} n'a\"me $(id) ;|`id` --x"
    job_id = await scheduler.submit(
        user1,
        describe(
            working_directory=odd_dir,
            name=name,
            standard_output="out; touch pwned.txt",
            script="#!/bin/bash\npwd\n",
        ),
    )
    done = await wait_for(scheduler, user1, job_id, ENDED)
    assert done.status.state == "COMPLETED"
    assert done.name == name and done.working_directory == odd_dir
    assert await read(user1, f"{odd_dir}/out; touch pwned.txt") == f"{odd_dir}\n"
    listing = await user1.run(["ls", odd_dir])
    assert listing.stdout.splitlines() == ["out; touch pwned.txt"]
    assert [j.job_id for j in await scheduler.jobs(user1, name=name)] == [job_id]
    with pytest.raises(ValidationError):
        describe(working_directory=workdir, account="project1 --qos=x")
    with pytest.raises(ValidationError):
        describe(working_directory=workdir, partition="compute\n#SBATCH --qos=x")


@pytest.mark.site
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"partition": "nopart"}, "Invalid partition name specified"),
        ({"account": "noaccount"}, "Invalid account"),
        ({"qos": "noqos"}, "Invalid qos specification"),
        ({"memory": "999999G"}, "Requested node configuration is not available"),
        ({"script": "echo no shebang\n"}, "does not look like a batch script"),
        ({"script_path": "/nonexistent/job.sh", "script": None}, "Unable to open file"),
    ],
)
async def test_slurm_rejections_are_bad_requests(
    scheduler: SlurmScheduler,
    user1: SshRunner,
    workdir: str,
    fields: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(errors.BadRequest) as caught:
        await scheduler.submit(user1, describe(working_directory=workdir, **fields))
    assert message in caught.value.message


@pytest.mark.site
async def test_script_path_and_extra_options(
    scheduler: SlurmScheduler, user1: SshRunner, workdir: str, tag: str
) -> None:
    write = await user1.run(
        ["cp", "/dev/stdin", f"{workdir}/remote.sh"], stdin="#!/bin/bash\necho remote\n"
    )
    assert write.ok
    job_id = await scheduler.submit(
        user1,
        describe(
            working_directory=workdir,
            script_path="remote.sh",
            script=None,
            name=f"{tag}-rs",
            standard_output="remote.out",
            extra_options={"comment": "from the tests, with spaces"},
        ),
    )
    assert (await wait_for(scheduler, user1, job_id, ENDED)).status.state == "COMPLETED"
    assert await read(user1, f"{workdir}/remote.out") == "remote\n"
    with pytest.raises(errors.BadRequest, match="not allowed"):
        await scheduler.submit(
            user1, describe(working_directory=workdir, extra_options={"begin": "now+1hour"})
        )


@pytest.mark.site
async def test_a_job_just_submitted_is_never_not_found(
    user1: SshRunner, user2: SshRunner, workdir: str, tag: str, honest_user2: None
) -> None:
    scheduler = SlurmScheduler(SchedulerSettings(timeout=30))
    first: CommandRunner = user1
    second: CommandRunner = user2
    job_id = await scheduler.submit(
        first,
        describe(working_directory=workdir, name=f"{tag}-now", script="#!/bin/bash\ntrue\n"),
    )
    seen = await scheduler.job(first, job_id)  # straight after sbatch
    assert seen.job_id == job_id
    lagging = HiddenListings(first)
    synthesized = await scheduler.job(lagging, job_id)
    assert synthesized.status.state == "PENDING" and synthesized.name == f"{tag}-now"
    assert synthesized.working_directory == workdir and synthesized.user == "hpcuser1"
    assert job_id in [j.job_id for j in await scheduler.jobs(lagging)]
    with pytest.raises(errors.NotFound):  # the record is per user
        await scheduler.job(HiddenListings(second), job_id)
    assert job_id not in [j.job_id for j in await scheduler.jobs(HiddenListings(second))]
    with pytest.raises(errors.NotFound, match="Job not found"):
        await scheduler.job(first, "999999999")
    with pytest.raises(errors.BadRequest):
        await scheduler.job(first, "1;id")
    await wait_for(scheduler, first, job_id, ENDED)
    # a runner that does not say whose it is: its shell is never asked, nothing kept
    anonymous = Anonymous(user1)
    other = await scheduler.submit(
        anonymous,
        describe(working_directory=workdir, name=f"{tag}-anon", script="#!/bin/bash\ntrue\n"),
    )
    with pytest.raises(errors.NotFound):
        await scheduler.job(anonymous, other)
    assert all(argv[:1] != ["id"] for argv in anonymous.argvs), anonymous.argvs
    await wait_for(scheduler, first, other, ENDED)


@pytest.mark.site
async def test_other_users_cannot_touch_a_job(
    scheduler: SlurmScheduler,
    user1: SshRunner,
    user2: SshRunner,
    workdir: str,
    tag: str,
    honest_user2: None,
) -> None:
    job_id = await scheduler.submit(
        user1,
        describe(working_directory=workdir, name=f"{tag}-own", script="#!/bin/bash\nsleep 120\n"),
    )
    try:
        await wait_for(scheduler, user1, job_id, {"RUNNING"})
        with pytest.raises(errors.Forbidden):
            await scheduler.cancel(user2, job_id)
        with pytest.raises((errors.Forbidden, errors.NotFound)):
            await scheduler.metadata(user2, job_id)
        with pytest.raises(errors.Forbidden):
            await scheduler.attach(user2, job_id, "touch /tmp/hpcgate-attach-pwned")
        assert (await scheduler.job(user1, job_id)).status.state == "RUNNING"
        mine = {j.job_id for j in await scheduler.jobs(user2)}
        everyone = {j.job_id for j in await scheduler.jobs(user2, all_users=True)}
        assert job_id not in mine and job_id in everyone

        meta = await scheduler.metadata(user1, job_id)
        assert meta.script == "#!/bin/bash\nsleep 120\n"
        assert meta.standard_output == f"{workdir}/slurm-{job_id}.out"
        assert meta.standard_input == "/dev/null"

        await scheduler.attach(user1, job_id, f'echo "attached $SLURM_JOB_ID" > {workdir}/att')
        assert await read(user1, f"{workdir}/att") == f"attached {job_id}\n"
        with pytest.raises(errors.BadRequest, match="exit status 3"):
            await scheduler.attach(user1, job_id, "exit 3")
        with pytest.raises(errors.NotFound):
            await scheduler.attach(user1, "999999999", "true")
    finally:
        await scheduler.cancel(user1, job_id)


@pytest.mark.site
async def test_jobs_filters(
    scheduler: SlurmScheduler, user1: SshRunner, workdir: str, tag: str
) -> None:
    script = "#!/bin/bash\ntrue\n"
    a = await scheduler.submit(
        user1, describe(working_directory=workdir, name=f"{tag}-fa", script=script)
    )
    b = await scheduler.submit(
        user1, describe(working_directory=workdir, name=f"{tag}-fb", script=script)
    )
    only_a = await scheduler.jobs(user1, name=f"{tag}-fa")
    assert [j.job_id for j in only_a] == [a]
    listed = {j.job_id for j in await scheduler.jobs(user1, account="project1", time_window="1h")}
    assert {a, b} <= listed
    assert not await scheduler.jobs(user1, account="otheraccount")
    await wait_for(scheduler, user1, a, ENDED)
    await wait_for(scheduler, user1, b, ENDED)
    assert [j.job_id for j in await scheduler.jobs(user1, name=f"{tag}-fb")] == [b]


@pytest.mark.site
async def test_cluster_views(
    scheduler: SlurmScheduler, user1: SshRunner, site_env: SiteEnv
) -> None:
    await scheduler.ping(user1)
    nodes = await scheduler.nodes(user1)
    assert [n.name for n in nodes] == [site_env["HPC_SITE_NODE"]]
    node = nodes[0].model_dump(mode="json")
    assert node["cpus"] > 0 and node["state"] and {"idleCpus", "freeMemory"} <= node.keys()
    partitions = await scheduler.partitions(user1)
    assert {p.name for p in partitions} == set(site_env["HPC_SITE_PARTITIONS"].split())
    assert all(p.partition == ["UP"] and p.total_nodes == 1 for p in partitions)
    assert isinstance(await scheduler.reservations(user1), list)
    info = await scheduler.user_info(user1)
    assert info.user.name == "hpcuser1" and info.user.id.isdigit()
    assert "project1" in {g.name for g in info.groups}
    assert info.accounts and ("project1", True) in {(a.name, a.default) for a in info.accounts}
    assert set(info.model_dump(mode="json")) == {"user", "group", "groups", "accounts"}


async def test_ping_reports_a_dead_controller(scheduler: SlurmScheduler) -> None:
    class Down:
        async def run(self, argv: Sequence[str], **_: object) -> CommandResult:
            return CommandResult(1, "Slurmctld(primary) at vm is DOWN\n", "")

    with pytest.raises(errors.ServiceUnavailable, match="DOWN"):
        await scheduler.ping(Down())


class _ForgetfulController(SshRunner):
    """The user's real commands, except that ``squeue`` answers as a controller that
    forgot every ended job (past ``MinJobAge``): only accounting still knows them."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        if "squeue" in argv[:3]:
            return CommandResult(0, "", "")
        return await super().run(argv, stdin=stdin, timeout=timeout)


def test_sacct_since_is_relative_to_the_clusters_clock() -> None:
    from hpcgate.compute.scheduler.slurm.scheduler import sacct_since

    # epoch seconds are no time sacct accepts; "now-N" is, whatever the time zone
    assert sacct_since(1_000_000 - 3600, now=1_000_000) == "now-3900"
    assert sacct_since(1_000_000 + 50, now=1_000_000) == "now-300"


@pytest.mark.site
async def test_a_stamp_is_found_in_accounting_after_the_controller_forgot(
    scheduler: SlurmScheduler, user1: SshRunner, workdir: str, tag: str, caplog
) -> None:
    stamp = f"hpcgate-idem-{uuid.uuid4().hex}"
    since = int(time.time()) - 5
    job_id = await scheduler.submit(
        user1,
        describe(working_directory=workdir, name=f"{tag}-stamp", script="#!/bin/bash\ntrue\n"),
        comment=stamp,
    )
    await wait_for(scheduler, user1, job_id, ENDED)
    forgetful = _ForgetfulController(user1.conn, "hpcuser1")
    deadline = time.monotonic() + 30  # accounting records the job a moment after it ends
    while not (found := await scheduler.jobs_with_comment(forgetful, stamp, since=since)):
        assert time.monotonic() < deadline, "the stamp never showed in accounting"
        await asyncio.sleep(0.5)
    assert found == [job_id]
    assert "sacct failed in a comment lookup" not in caplog.text
