"""The accounting parser (``sacct``) and its derived figures, without the site."""

from __future__ import annotations

import pytest

from hpcgate.compute.scheduler.slurm.accounting import (
    ACCOUNTING_FIELDS,
    MAX_STEPS,
    parse_accounting,
    parse_cpu_time,
    parse_size,
    sacct_accounting_argv,
    select_accounting,
)
from hpcgate.compute.scheduler.slurm.fields import FIELD_SEP, SlurmOutputError

S = FIELD_SEP


def rows(*lines: str) -> str:
    """sacct's ``-p --delimiter=FIELD_SEP`` output for ``;``-separated sample lines."""
    out = []
    for line in lines:
        fields = line.split(";")
        assert len(fields) == len(ACCOUNTING_FIELDS), line
        out.append("".join(f + S for f in fields))
    return "\n".join(out) + "\n"


# recorded on the local site (sacct 22.05) for a 2-CPU job with one srun step
JOB = rows(
    "2501;wrap;hpcuser1;COMPLETED;0:0;project1;compute;normal;vm;1796069687;1796069690;"
    "1796069694;4;UNLIMITED;1;2;00:01.607;8;;24105M",
    "2501.batch;batch;;COMPLETED;0:0;project1;;;vm;1796069687;1796069690;1796069694;4;;1;2;"
    "00:00.061;8;12040K;",
    "2501.0;bash;;COMPLETED;0:0;project1;;;vm;1796069690;1796069690;1796069693;3;;1;2;"
    "00:01.545;6;1.5M;",
)


def test_scalar_parsers() -> None:
    assert parse_cpu_time("00:01.607") == pytest.approx(1.607)
    assert parse_cpu_time("01:02:03") == 3723
    assert parse_cpu_time("2-01:00:00") == 2 * 86400 + 3600
    assert parse_cpu_time("") is None and parse_cpu_time("$(id)") is None
    assert parse_size("12040K") == 12040 * 1024
    assert parse_size("1.5M") == int(1.5 * 2**20)
    assert parse_size("0") == 0
    assert parse_size("") is None and parse_size("12X") is None


def test_job_with_steps() -> None:
    [job] = parse_accounting(JOB)
    assert job.job_id == "2501" and job.name == "wrap" and job.user == "hpcuser1"
    assert (job.state, job.exit_code) == ("COMPLETED", 0)
    assert (job.account, job.partition, job.qos, job.node_list) == (
        "project1",
        "compute",
        "normal",
        "vm",
    )
    assert job.queue_wait_seconds == 3 and job.elapsed_seconds == 4
    assert (job.alloc_nodes, job.alloc_cpus) == (1, 2)
    assert job.time_limit_minutes is None  # UNLIMITED
    assert job.node_hours == pytest.approx(4 / 3600, abs=1e-6)
    assert job.cpu_hours == pytest.approx(8 / 3600, abs=1e-6)
    assert job.total_cpu_seconds == pytest.approx(1.607)
    assert job.cpu_efficiency == pytest.approx(1.607 / 8, abs=1e-4)
    assert (job.max_rss_bytes, job.max_rss_step) == (12040 * 1024, "2501.batch")
    assert job.requested_memory == "24105M"
    assert [s.id for s in job.steps] == ["2501.batch", "2501.0"]
    assert job.steps[1].total_cpu_seconds == pytest.approx(1.545)
    wire = job.model_dump(mode="json", by_alias=True)
    assert wire["queueWaitSeconds"] == 3 and wire["cpuEfficiency"] == job.cpu_efficiency


def test_running_and_pending_jobs_have_no_made_up_figures() -> None:
    [running, pending] = parse_accounting(
        rows(
            "7;r;u;RUNNING;0:0;a;p;normal;vm;100;160;Unknown;30;60;1;4;00:00:00;120;;1G",
            "8;q;u;PENDING;0:0;a;p;normal;None assigned;100;Unknown;Unknown;0;60;1;4;"
            "00:00:00;0;;1G",
        )
    )
    assert running.queue_wait_seconds == 60 and running.end is None
    assert running.exit_code is None and running.cpu_efficiency is None  # not recorded yet
    assert running.time_limit_minutes == 60 and running.cpu_hours == pytest.approx(
        120 / 3600, abs=1e-6
    )
    assert pending.start is None and pending.queue_wait_seconds is None
    assert pending.node_list is None and pending.elapsed_seconds == 0
    assert pending.cpu_efficiency is None


def test_cpu_time_from_steps_when_the_job_line_has_none() -> None:
    [job] = parse_accounting(
        rows(
            "9;j;u;FAILED;3:0;a;p;normal;vm;1;1;11;10;5;1;1;;10;;",
            "9.batch;batch;;FAILED;3:0;a;;;vm;1;1;11;10;;1;1;00:05.000;10;;",
        )
    )
    assert (job.state, job.exit_code) == ("FAILED", 3)
    assert job.total_cpu_seconds == 5.0 and job.cpu_efficiency == 0.5


def test_arrays_and_selection() -> None:
    records = parse_accounting(
        rows(
            "20_0;a;u;COMPLETED;0:0;a;p;normal;vm;1;2;3;1;5;1;1;00:01;1;;",
            "20_0.batch;batch;;COMPLETED;0:0;a;;;vm;1;2;3;1;;1;1;00:01;1;;",
            "20_1;a;u;FAILED;1:0;a;p;normal;vm;1;2;4;2;5;1;1;00:01;2;;",
            "21;b;u;COMPLETED;0:0;a;p;normal;vm;1;2;4;2;5;1;1;00:01;2;;",
        )
    )
    assert [r.job_id for r in select_accounting("20", records)] == ["20_0", "20_1"]
    assert [r.job_id for r in select_accounting("20_1", records)] == ["20_1"]
    assert select_accounting("20_7", records) == []
    assert records[0].steps[0].id == "20_0.batch"
    # an array task asked for by its own numeric id: sacct answers with the task alone
    assert [r.job_id for r in select_accounting("22", records[1:2])] == ["20_1"]


def test_hostile_output() -> None:
    with pytest.raises(SlurmOutputError):
        parse_accounting("not sacct output" + S + "\n")
    # nonsense values are None, never errors that hide the rest
    [job] = parse_accounting(rows("5;$(x);u;WEIRD;x;a;p;q;n;-1;x;x;x;x;x;x;x;x;x;x"))
    assert job.state == "WEIRD" and job.elapsed_seconds is None and job.cpu_hours is None
    assert job.max_rss_bytes is None and job.cpu_efficiency is None
    # many steps: bounded in the answer, counted in the totals
    many = [f"6.{i};s;;COMPLETED;0:0;a;;;vm;1;1;2;1;;1;1;00:01;1;;" for i in range(MAX_STEPS + 5)]
    [job] = parse_accounting(rows("6;j;u;COMPLETED;0:0;a;p;n;vm;1;1;2;1;5;1;1;;1;;", *many))
    assert len(job.steps) == MAX_STEPS and job.steps_truncated
    assert job.total_cpu_seconds == MAX_STEPS + 5


def test_argv_is_plain() -> None:
    argv = sacct_accounting_argv("sacct", "123_4")
    assert argv[:3] == ["env", "SLURM_TIME_FORMAT=%s", "sacct"]
    assert argv[-2:] == ["-j", "123_4"] and f"--delimiter={S}" in argv
