"""Bad input to the CLI: one clear line naming the problem, a documented exit code, nothing lost."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazyrestore import criu, procs, treefacts

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
    assert res.code == 6 and "not empty: it holds 1 other entry (something)" in res.last("error")["message"]
    assert procs.is_running(w.pid)


def test_images_dir_with_a_failed_or_a_complete_checkpoint_says_so(start_workload, workdir: Path) -> None:
    w = start_workload(mib=8)
    failed = workdir / "failed"
    failed.mkdir()
    (failed / "dump.log").write_text("(00.1) Error (criu/cr-dump.c:1975): Dumping FAILED.\n")
    (failed / "pstree.img").write_bytes(b"\0" * 8)
    res = run_cli("checkpoint", "--pid", str(w.pid), "--images", str(failed))
    message = res.last("error")["message"]
    assert res.code == 6 and "holds a failed or interrupted checkpoint (dump.log, 1 CRIU image file(s), no " \
        "lazyrestore/manifest.json)" in message and "remove it or pick another directory" in message
    assert sorted(os.listdir(failed)) == ["dump.log", "pstree.img"], "a refused directory is left as it was"
    done = checkpoint(w, workdir / "done", "--leave-running")
    res = run_cli("checkpoint", "--pid", str(w.pid), "--images", str(workdir / "done"))
    assert res.code == 6 and f"holds a complete checkpoint {done['checkpoint_id']}" in res.last("error")["message"]


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


@pytest.mark.parametrize("version,why", [("3.17", "vDSO"), ("4.1.1", "Can't get 1:16 opt")])
def test_criu_too_old_says_why_and_what_fixes_it(workdir: Path, version: str, why: str) -> None:
    fake = workdir / "criu"
    fake.write_text(f"#!/bin/sh\necho 'Version: {version}'\n")
    fake.chmod(0o755)
    res = run_cli("restore", "--images", str(workdir), env={"LAZYRESTORE_CRIU": str(fake)})
    assert res.code == 4
    message = res.last("error")["message"]
    assert f"criu {version}" in message and "too old" in message and why in message
    assert f"CRIU >= {'.'.join(map(str, criu.MIN_VERSION))}" in message and "SO_PASSCRED" in message
    assert "make bootstrap" in message and "4.2.x" in message


def test_criu_dump_failure_quotes_its_log(workdir: Path, reaper) -> None:
    # A process whose session leader is outside the dumped tree: CRIU refuses it without --shell-job.
    sleeper = subprocess.Popen(["sleep", "600"])
    reaper.add(sleeper.pid)
    res = run_cli("checkpoint", "--pid", str(sleeper.pid), "--images", str(workdir / "images"), "--allow-host-pids")
    assert res.code == 8, res.stderr
    error = res.last("error")
    message = error["message"]
    # CRIU words it by where the session's leader is: in the tree's pid namespace but not the root ("not a
    # session leader"), or outside it (sid 0 there: "outside of its pid namespace", as when pytest itself runs
    # in a pid namespace its session leader is not in). Both are the same refusal with the same advice.
    first = message.splitlines()[0]
    assert error["error"] == "CriuRefused" and message.startswith("criu dump refused: "), message
    assert "session leader" in first and "setsid" in first, first
    log = workdir / "images.dump-failed.log"
    assert f"log: {log}" in message
    assert re.search(r"not a session leader|session leader of \d+\(\d+\) is outside", log.read_text())
    assert "  | " in message, "the relevant lines of CRIU's log must be quoted"
    assert "Error(0)" not in message
    assert procs.is_running(sleeper.pid), "a failed dump must leave the source running"
    assert list((workdir / "images").iterdir()) == [], "what the failed dump wrote is removed"
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
    assert message.startswith(f"criu restore refused: file {w.log} is {w.log.stat().st_size} bytes now"), message
    assert "Error(0)" not in message and "  | " in message
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


# ---------------------------------------------------------------- CRIU's refusals, named (criu_refusals.py)

# Small trees CRIU refuses as they are. Each prints "ready ..." once it holds what CRIU refuses.
TCP_PAIR = """
import socket, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
client = socket.create_connection(server.getsockname())
accepted, _ = server.accept()
print("ready", client.getsockname()[1], server.getsockname()[1], flush=True)
time.sleep(600)
"""
FILE_LOCK = """
import fcntl, time
f = open("lockfile", "w")
fcntl.flock(f, fcntl.LOCK_EX)
print("ready", flush=True)
time.sleep(600)
"""
DEVICE = """
import os, time
fd = os.open("/dev/loop-control", os.O_RDONLY)
print("ready", flush=True)
time.sleep(600)
"""
IDLE = """
import time
print("ready", flush=True)
time.sleep(600)
"""


def start_tree(workdir: Path, reaper, script: str, prefix: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """`python3 -c script` as the init of its own pid namespace (cwd workdir, output in workdir/tree.log), started
    behind prefix (e.g. `ip netns exec NAME`); its pid and the words of its "ready" line, once it printed one."""
    log = workdir / "tree.log"
    cmd = f"exec {shlex.join([sys.executable, '-c', script])} > {shlex.quote(str(log))} 2>&1"
    with open(workdir / "unshare.log", "wb") as ulog:  # unshare's output apart from the tree's (CRIU-NOTES)
        unshare = subprocess.Popen([*prefix, "unshare", "-p", "-f", "setsid", "sh", "-c", cmd], cwd=workdir,
                                   stdin=subprocess.DEVNULL, stdout=ulog, stderr=ulog, start_new_session=True)
    pid = reaper.add(procs.wait_pidns_init(unshare, time.monotonic() + 30, "the test tree"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = [ln.split() for ln in (log.read_text() if log.exists() else "").splitlines() if ln.startswith("ready")]
        if ready:
            return pid, ready[0][1:]
        assert procs.is_running(pid), f"the test tree exited: {log.read_text() if log.exists() else ''}"
        time.sleep(0.05)
    raise AssertionError(f"the test tree did not get ready: {log.read_text() if log.exists() else ''}")


def refused(workdir: Path, pid: int, *extra: str) -> tuple[str, str]:
    """Checkpoint pid into workdir/images, which CRIU refuses: the first line of the error and all of it, once the
    common promises are checked: exit 8, CriuRefused, the tree runs on, the images dir is empty again, CRIU's log
    beside it is named and quoted."""
    images = workdir / "images"
    res = run_cli("checkpoint", "--pid", str(pid), "--images", str(images), *extra)
    assert res.code == 8, res.stderr
    error = res.last("error")
    message = error["message"]
    first = message.splitlines()[0]
    assert error["error"] == "CriuRefused" and first.startswith("criu dump refused: "), message
    log = workdir / "images.dump-failed.log"
    assert first.endswith(f"; log: {log}") and log.is_file(), message
    assert "\n  | " in message and "Error(0)" not in message
    assert procs.is_running(pid), "a refused dump must leave the tree running"
    assert images.is_dir() and list(images.iterdir()) == [], "the images dir must be empty again"
    return first, message


def test_open_tcp_connection_is_named_and_a_retry_with_the_option_works(workdir: Path, reaper) -> None:
    pid, (client_port, server_port) = start_tree(workdir, reaper, TCP_PAIR)
    first, message = refused(workdir, pid)
    assert first.startswith("criu dump refused: the tree has 2 open TCP connections ("), first
    assert f"127.0.0.1:{client_port} -> 127.0.0.1:{server_port}" in first
    assert "checkpoint with --tcp-established to keep them, or with --tcp-close to restore them closed" in first
    assert "Connected TCP socket, consider using --tcp-established option" in message
    # The same command with the option the error names: the images dir is usable again.
    res = run_cli("checkpoint", "--pid", str(pid), "--images", str(workdir / "images"), "--tcp-close")
    assert res.code == 0, res.stderr
    assert (workdir / "images" / "lazyrestore" / "manifest.json").is_file()


def test_file_lock_is_named_and_a_retry_with_file_locks_works(workdir: Path, reaper) -> None:
    pid, _ = start_tree(workdir, reaper, FILE_LOCK)
    first, _ = refused(workdir, pid)
    assert "the tree holds a file lock" in first and "--file-locks" in first
    res = run_cli("checkpoint", "--pid", str(pid), "--images", str(workdir / "images"), "--file-locks")
    assert res.code == 0, res.stderr


def test_tree_started_by_ip_netns_exec_is_explained(workdir: Path, reaper) -> None:
    name = f"lrt-err-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        pid, _ = start_tree(workdir, reaper, IDLE, prefix=("ip", "netns", "exec", name))
        first, message = refused(workdir, pid)
        assert "mount namespace of its own" in first and "`ip netns exec`" in first, first
        assert "nsenter --net=/run/netns/NAME" in first and "--enable-external-masters" in first
        assert "has unreachable sharing" in message
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.skipif(not os.path.exists("/dev/loop-control"), reason="needs /dev/loop-control")
def test_unsupported_device_is_named(workdir: Path, reaper) -> None:
    pid, _ = start_tree(workdir, reaper, DEVICE)
    first, _ = refused(workdir, pid)
    assert "the character device /dev/loop-control (10:237) open as fd" in first, first


@pytest.mark.skipif(treefacts.has_capability(treefacts.CAP_SYS_RESOURCE) is not False,
                    reason="CRIU dumps other users' processes where root has CAP_SYS_RESOURCE")
def test_tree_of_another_user_is_explained(workdir: Path, reaper) -> None:
    with open(workdir / "unshare.log", "wb") as ulog:
        unshare = subprocess.Popen(["unshare", "-p", "-f", "setsid", "setpriv", "--reuid=65534", "--regid=65534",
                                    "--clear-groups", "sleep", "600"], cwd=workdir, stdin=subprocess.DEVNULL,
                                   stdout=ulog, stderr=ulog, start_new_session=True)
    pid = reaper.add(procs.wait_pidns_init(unshare, time.monotonic() + 30, "sleep as nobody"))
    deadline = time.monotonic() + 10
    while procs.status_fields(pid).get("Uid", "").split()[:1] != ["65534"] and time.monotonic() < deadline:
        time.sleep(0.02)
    first, _ = refused(workdir, pid)
    assert "runs as another user than root" in first and "lacks CAP_SYS_RESOURCE" in first, first


def test_restore_that_criu_refuses_exits_8_eager_and_lazy(start_workload, workdir: Path, reaper) -> None:
    """CRIU failing before the tree resumes is exit 8 (CriuRefused here) for an eager and a lazy restore alike;
    10 is for lr-lazyd stopping."""
    w = start_workload(mib=16)
    checkpoint(w, workdir / "images")
    size = w.log.stat().st_size
    with open(w.log, "a") as f:  # the workload's open log grows after the dump: CRIU refuses to restore it
        f.write("extra\n")
    firsts = []
    for mode in ((), ("--lazy",)):
        res = run_cli("restore", "--images", str(workdir / "images"), *mode)
        for e in res.events:
            if e.get("event") == "resumed":
                reaper.add(e["pid"])
        assert res.code == 8, (mode, res.stderr)
        error = res.last("error")
        assert error["error"] == "CriuRefused" and not any(e["event"] == "resumed" for e in res.events)
        firsts.append(error["message"].splitlines()[0])
    for first in firsts:
        assert first.startswith(f"criu restore refused: file {w.log} is {size + 6} bytes now, the checkpoint "
                                f"expects {size}"), first
    os.truncate(w.log, size)  # nothing lost: back at its size, the checkpoint restores lazily
    res = run_cli("restore", "--images", str(workdir / "images"), "--lazy")
    assert res.code == 0, res.stderr
    reaper.add(res.last("summary")["pid"])

