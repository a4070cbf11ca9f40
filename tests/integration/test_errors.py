"""Bad input to the CLI: one clear line naming the problem, a documented exit code, nothing lost."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lazyrestore import procs

from .helpers import checkpoint, run_cli


def free_pid() -> int:
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


def test_absent_pid(workdir: Path) -> None:
    pid = free_pid()
    res = run_cli("checkpoint", "--pid", str(pid), "--images", str(workdir / "images"))
    assert res.code == 5
    assert f"no process with pid {pid}" in res.last("error")["message"]
    assert not (workdir / "images").exists(), "nothing may be created for a refused checkpoint"


def test_pid_not_a_namespace_init(workdir: Path, reaper) -> None:
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
    reaper.add(sleeper.pid)
    res = run_cli("checkpoint", "--pid", str(sleeper.pid), "--images", str(workdir / "images"))
    assert res.code == 5
    message = res.last("error")["message"]
    assert "not the init of its own pid namespace" in message and "unshare -p -f setsid" in message
    assert procs.is_running(sleeper.pid), "a refused checkpoint must leave the process alone"
    sleeper.kill()
    sleeper.wait()


def test_images_dir_not_empty(start_workload, workdir: Path) -> None:
    w = start_workload(mib=8)
    images = workdir / "images"
    images.mkdir()
    (images / "something").write_text("x")
    res = run_cli("checkpoint", "--pid", str(w.pid), "--images", str(images))
    assert res.code == 6 and "not empty" in res.last("error")["message"]
    assert procs.is_running(w.pid)


def test_images_parent_missing(start_workload, workdir: Path) -> None:
    w = start_workload(mib=8)
    res = run_cli("checkpoint", "--pid", str(w.pid), "--images", str(workdir / "no" / "such"))
    assert res.code == 6 and str(workdir / "no") in res.last("error")["message"]
    assert procs.is_running(w.pid)


def test_restore_missing_dir(workdir: Path) -> None:
    res = run_cli("restore", "--images", str(workdir / "nothing"))
    assert res.code == 6 and "does not exist" in res.last("error")["message"]


def test_restore_dir_that_is_not_a_checkpoint(workdir: Path) -> None:
    (workdir / "notes.txt").write_text("hello")
    res = run_cli("restore", "--images", str(workdir))
    assert res.code == 6 and "not a CRIU checkpoint" in res.last("error")["message"]


def test_criu_too_old(workdir: Path) -> None:
    fake = workdir / "criu"
    fake.write_text("#!/bin/sh\necho 'Version: 3.17'\n")
    fake.chmod(0o755)
    res = run_cli("restore", "--images", str(workdir), env={"LAZYRESTORE_CRIU": str(fake)})
    assert res.code == 4
    message = res.last("error")["message"]
    assert "3.17" in message and "too old" in message and "make bootstrap" in message


def test_criu_dump_failure_quotes_its_log(workdir: Path, reaper) -> None:
    # A process whose session leader is outside the dumped tree: CRIU refuses it without --shell-job.
    sleeper = subprocess.Popen(["sleep", "600"])
    reaper.add(sleeper.pid)
    res = run_cli("checkpoint", "--pid", str(sleeper.pid), "--images", str(workdir / "images"), "--allow-host-pids")
    assert res.code == 8, res.stderr
    message = res.last("error")["message"]
    assert str(workdir / "images" / "dump.log") in message
    assert "  | " in message, "the relevant lines of CRIU's log must be quoted"
    assert procs.is_running(sleeper.pid), "a failed dump must leave the source running"
    assert not (workdir / "images" / "lazyrestore" / "manifest.json").exists()
    sleeper.kill()
    sleeper.wait()


def test_restore_failure_names_criu_log(start_workload, workdir: Path, reaper) -> None:
    w = start_workload(mib=8)
    checkpoint(w, workdir / "images")
    with open(w.log, "a") as f:  # the workload's open log grows after the dump: CRIU must refuse
        f.write("extra\n")
    res = run_cli("restore", "--images", str(workdir / "images"))
    assert res.code == 8, res.stderr
    message = res.last("error")["message"]
    assert "restore-" in message and ".log" in message
    assert "size" in message, message
    # Nothing lost: with the file back at its size, the same checkpoint restores.
    os.truncate(w.log, w.log.stat().st_size - len("extra\n"))
    res = run_cli("restore", "--images", str(workdir / "images"))
    assert res.code == 0, res.stderr
    reaper.add(res.last("summary")["pid"])


def test_not_root(workdir: Path) -> None:
    import sys
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                           "-m", "lazyrestore.cli", "restore", "--images", str(workdir), "--json"],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 3, proc.stderr
    assert "must run as root" in proc.stderr
