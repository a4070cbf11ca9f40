"""`migrate --live` between the two test hosts: CRIU holds the source tree stopped on A, lr-pageserver serves its
lazy pages from the tree's memory, `restore --from` on B. Memory compared by checksum with the original."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from lazyrestore import procs, sample, testhosts

from . import apps
from .helpers import Background, flip_last_byte, run_cli, wait_text
from .migration import SLOW_DRAIN, Source, checksums, finished, restore_on_b, start_on_a


def live_source(w: sample.Workload, images: Path) -> Source:
    return Source(["migrate", "--pid", str(w.pid), "--images", str(images),
                   "--listen", f"{testhosts.ADDR_A}:0"])


def wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while procs.is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not procs.is_running(pid)


def test_a_live_migration_moves_the_tree_and_ends_the_source(hosts, workdir: Path, reaper) -> None:
    w = start_on_a(workdir, reaper, mib=256, children=1)
    before = checksums(w)
    src = live_source(w, workdir / "images")
    assert procs.status_fields(w.pid)["State"].startswith("t"), "CRIU holds the source stopped while it is served"
    written = sum(f.stat().st_size for f in (workdir / "images").rglob("*") if f.is_file())
    assert written < 16 << 20, f"{written} bytes on disk: only metadata and eager pages are written"
    run = restore_on_b(src.address, workdir / "images", workdir / "dst")
    restored = sample.Workload(reaper.add(run.first("resumed")["pid"]), w.log, w.roles)
    summary = finished(run)
    assert summary["drain_bytes"] + summary["fault_bytes"] >= (256 << 20) * 15 // 16
    assert checksums(restored) == before
    res = src.run.finish(timeout=60)
    assert res.code == 0, res.stderr
    assert res.last("summary")["delivered"] == 1
    assert any(e["event"] == "source_ended" for e in src.run.events), src.run.events
    assert wait_gone(w.pid), "after DONE the source tree is killed: two copies never run"


def anonymous_kib(pid: int) -> int:
    """The process's anonymous memory in kB (/proc/PID/smaps_rollup): zero-page mappings count none."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    raise AssertionError(f"no Anonymous line in /proc/{pid}/smaps_rollup")


def test_the_holes_of_a_live_tree_stay_unallocated_on_the_destination(hosts, workdir: Path, reaper) -> None:
    """lr-workload leaves every 16th page untouched. A live record spans those holes of its VMA: they arrive as
    zeros and lr-lazyd maps all-zero pages as zero pages, so the tree allocates no more on B than it had on A."""
    w = start_on_a(workdir, reaper, mib=256)
    before, source_kib = checksums(w), anonymous_kib(w.pid)
    src = live_source(w, workdir / "images")
    run = restore_on_b(src.address, workdir / "images", workdir / "dst")
    restored = sample.Workload(reaper.add(run.first("resumed")["pid"]), w.log, w.roles)
    summary = finished(run)
    holes = (256 << 20) // 4096 // 16
    assert summary["zero_pages"] >= holes, summary
    assert anonymous_kib(restored.pid) < source_kib + holes * 4 // 2, "the holes were allocated on B"
    assert checksums(restored) == before
    assert src.run.finish(timeout=60).code == 0


def free_port_on_a() -> int:
    with testhosts.inside(testhosts.HOST_A), socket.socket() as s:
        s.bind((testhosts.ADDR_A, 0))
        return s.getsockname()[1]


def test_a_destination_started_first_with_a_shared_secret_takes_the_tree_when_it_is_served(hosts, workdir: Path,
                                                                                           reaper) -> None:
    """`restore --from` runs before `migrate --secret-file` serves (orchestrators start both ends at once): lr-lazyd
    asks the refusing host again until the page server listens, then fetches, resumes and drains as usual."""
    w = start_on_a(workdir, reaper, mib=128)
    before = checksums(w)
    shared = workdir / "shared-secret"
    shared.write_bytes(os.urandom(32))
    shared.chmod(0o600)
    address = f"{testhosts.ADDR_A}:{free_port_on_a()}"
    run = Background(["restore", "--from", address, "--secret-file", str(shared), "--workdir", str(workdir / "dst")],
                     ("started",), host="b")
    time.sleep(1.0)  # B waits on a refusing host
    assert run.proc.poll() is None, run.stderr_now()
    src = Source(["migrate", "--pid", str(w.pid), "--images", str(workdir / "images"), "--listen", address,
                  "--secret-file", str(shared)])
    assert (workdir / "images/lazyrestore/secret").read_bytes() == shared.read_bytes()
    assert run.read_until("resumed") is not None, run.events
    restored = sample.Workload(reaper.add(run.first("resumed")["pid"]), w.log, w.roles)
    finished(run)
    assert checksums(restored) == before
    assert src.run.finish(timeout=60).code == 0
    assert wait_gone(w.pid)
    assert "not reachable yet" in (workdir / "dst" / "run" / "lazyd.log").read_text(errors="replace")


def test_a_wrong_secret_before_any_commit_rolls_the_source_back(hosts, workdir: Path, reaper) -> None:
    w = start_on_a(workdir, reaper, mib=64)
    before = checksums(w)
    src = live_source(w, workdir / "images")
    wrong = workdir / "wrong-secret"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    res = run_cli("restore", "--from", src.address, "--secret-file", str(wrong), "--workdir", str(workdir / "bad"),
                  host="b")
    assert res.code != 0 and "wrong proof of the checkpoint secret" in res.last("error")["message"]
    out = src.run.finish(timeout=60)
    assert out.code != 0 and "rolled back" in out.last("error")["message"], out.stderr
    assert any(e["event"] == "rolled_back" for e in src.run.events)
    assert not procs.status_fields(w.pid)["State"].startswith("t")
    assert checksums(w) == before, "the source runs on where it stopped, its memory unchanged"


def test_lr_pageserver_killed_mid_drain_is_started_again_and_the_destination_completes(hosts, workdir: Path,
                                                                                      reaper) -> None:
    w = start_on_a(workdir, reaper, mib=256)
    before = checksums(w)
    src = live_source(w, workdir / "images")
    run = restore_on_b(src.address, workdir / "images", workdir / "dst", *SLOW_DRAIN, "--source-timeout", "30")
    restored = sample.Workload(reaper.add(run.first("resumed")["pid"]), w.log, w.roles)
    time.sleep(1.0)  # 48 MiB/s: part of the memory is placed
    src.kill_server()
    again = src.run.read_until("server_restart")
    assert again is not None, src.run.events
    finished(run)
    assert checksums(restored) == before
    res = src.run.finish(timeout=60)
    assert res.code == 0 and res.last("summary")["delivered"] == 1, res.stderr
    assert wait_gone(w.pid)
    # the restarted server holds no one: the destination commits again on its new session
    assert "committed again on session" in (workdir / "dst" / "run" / "lazyd.log").read_text(errors="replace")
    assert len([e for e in src.run.events if e["event"] == "server_committed"]) == 2


def criu_of(src: Source) -> int:
    """The pid of the `criu dump --lazy-pages` that `migrate` runs."""
    found = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
             and _parent_and_comm(int(p.name)) == (src.run.proc.pid, "criu")]
    assert len(found) == 1, found
    return found[0]


def _parent_and_comm(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1]), stat[stat.index("(") + 1:stat.rindex(")")]


def test_criu_killed_after_a_destination_ran_leaves_the_source_stopped_and_the_drain_completes(
        hosts, workdir: Path, reaper) -> None:
    """Without lazyrestore's own hold, CRIU's death would detach its ptrace and the source would run beside the
    destination, under a page server reading its moving memory."""
    w = start_on_a(workdir, reaper, mib=256)
    before = checksums(w)
    src = live_source(w, workdir / "images")
    run = restore_on_b(src.address, workdir / "images", workdir / "dst", *SLOW_DRAIN)
    restored = sample.Workload(reaper.add(run.first("resumed")["pid"]), w.log, w.roles)
    os.kill(criu_of(src), signal.SIGKILL)
    assert src.run.read_until("criu_lost") is not None, src.run.events
    for _ in range(20):
        assert procs.status_fields(w.pid)["State"].startswith(("T", "t")), "the source ran after CRIU died"
        time.sleep(0.05)
    finished(run)
    assert checksums(restored) == before
    res = src.run.finish(timeout=60)
    assert res.code == 0 and res.last("summary")["delivered"] == 1, res.stderr
    assert wait_gone(w.pid), "after DONE the source is killed, CRIU or not"


def test_criu_killed_before_any_destination_rolls_the_source_back(hosts, workdir: Path, reaper) -> None:
    w = start_on_a(workdir, reaper, mib=64)
    before = checksums(w)
    src = live_source(w, workdir / "images")
    os.kill(criu_of(src), signal.SIGKILL)
    res = src.run.finish(timeout=60)
    kinds = [e["event"] for e in src.run.events]
    assert res.code != 0 and "criu_lost" in kinds and "rolled_back" in kinds, (kinds, res.stderr)
    assert checksums(w) == before, "the source runs on where it stopped"


def test_stopping_migrate_before_any_destination_rolls_back(hosts, workdir: Path, reaper) -> None:
    w = start_on_a(workdir, reaper, mib=64)
    before = checksums(w)
    src = live_source(w, workdir / "images")
    src.run.proc.send_signal(signal.SIGINT)
    res = src.run.finish(timeout=60)
    assert res.code != 0 and any(e["event"] == "rolled_back" for e in src.run.events), res.stderr
    assert checksums(w) == before


def test_migrate_killed_before_any_destination_rolls_the_source_back(hosts, workdir: Path, reaper) -> None:
    """SIGKILL (or the OOM killer) of migrate while no destination holds the tree: its fate keeper rolls the tree
    back instead of letting CRIU read EOF and kill the only copy."""
    w = start_on_a(workdir, reaper, mib=64)
    before = checksums(w)
    src = live_source(w, workdir / "images")
    server_pid = src.listening["server_pid"]
    src.run.proc.kill()
    src.run.finish(timeout=60)
    assert wait_gone(server_pid), "lr-pageserver dies with migrate"
    log = wait_text(workdir / "images" / "lazyrestore" / "fatekeeper.log", "rolled back")
    assert "rolling it back" in log and "rolled back" in log, log
    assert checksums(w) == before, "the source runs on where it stopped"


def test_migrate_killed_lets_criu_kill_the_source_and_the_destination_fails_by_name(hosts, workdir: Path,
                                                                                     reaper) -> None:
    w = start_on_a(workdir, reaper, mib=256)
    src = live_source(w, workdir / "images")
    server_pid = src.listening["server_pid"]
    run = restore_on_b(src.address, workdir / "images", workdir / "dst", *SLOW_DRAIN, "--source-timeout", "5")
    restored_pid = reaper.add(run.first("resumed")["pid"])
    src.run.proc.kill()  # SIGKILL: a destination holds the tree, so the keeper lets CRIU read EOF and kill it
    assert wait_gone(w.pid), "the source never runs again"
    assert "may run tree" in (workdir / "images" / "lazyrestore" / "fatekeeper.log").read_text()
    assert wait_gone(server_pid), "lr-pageserver dies with migrate"
    res = run.finish(timeout=120)
    assert res.code != 0 and res.last("error")["error"] == "DaemonFailed", res.stderr
    assert wait_gone(restored_pid), "the destination's half-restored tree is killed"


def test_a_destination_that_aborts_before_its_tree_ran_rolls_the_source_back(hosts, workdir: Path,
                                                                            reaper) -> None:
    """A metadata image changed on A while it is served: B commits, its verification fails, lr-lazyd sends
    ABORT before CRIU ran; the source resumes where it stopped, its memory unchanged."""
    w = start_on_a(workdir, reaper, mib=64)
    before = checksums(w)
    src = live_source(w, workdir / "images")
    core = sorted((workdir / "images").glob("core-*.img"))[0]
    flip_last_byte(core)  # in place: lr-pageserver holds it open and sends what it reads
    run = restore_on_b(src.address, workdir / "images", workdir / "dst", until=())
    result = run.finish(timeout=120)
    assert result.code != 0 and not [e for e in run.events + result.events if e["event"] == "resumed"]
    out = src.run.finish(timeout=60)
    kinds = [e["event"] for e in src.run.events]
    assert "server_committed" in kinds and "server_aborted" in kinds and kinds[-2:] == ["rolled_back", "error"], kinds
    assert not (workdir / "images" / "lazyrestore" / "held").exists(), "the ABORT removed lr-pageserver's held file"
    assert out.code != 0 and checksums(w) == before


def test_a_second_destination_cannot_take_a_tree_another_holds(hosts, workdir: Path, reaper) -> None:
    w = start_on_a(workdir, reaper, mib=256)
    before = checksums(w)
    src = live_source(w, workdir / "images")
    first = restore_on_b(src.address, workdir / "images", workdir / "dst1", *SLOW_DRAIN)
    restored = sample.Workload(reaper.add(first.first("resumed")["pid"]), w.log, w.roles)
    second = run_cli("restore", "--from", src.address, "--secret-file", str(workdir / "images/lazyrestore/secret"),
                     "--workdir", str(workdir / "dst2"), host="b")
    assert second.code != 0 and "another destination holds the tree" in second.last("error")["message"]
    finished(first)
    assert checksums(restored) == before
    assert src.run.finish(timeout=60).code == 0


# A connected pair inside one tree that shares host A's network namespace: CRIU locks each connection with its
# own iptables rules there (not a chain of a namespace of the tree's own). The client counts answers in a file.
PAIR = r"""
import os, socket, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
port = server.getsockname()[1]
if os.fork() == 0:
    conn = socket.create_connection(("127.0.0.1", port))
    n = 0
    while True:
        conn.sendall(b"ping\n")
        if not conn.recv(64):
            break
        n += 1
        with open("count.tmp", "w") as f:
            f.write(str(n))
        os.replace("count.tmp", "count")
        time.sleep(0.02)
else:
    conn, _ = server.accept()
    while True:
        data = conn.recv(64)
        if not data:
            break
        conn.sendall(data)
while True:
    time.sleep(1)
"""


def count(tree: Path) -> int:
    try:
        return int((tree / "count").read_text())
    except (OSError, ValueError):
        return 0


def test_a_rolled_back_tree_in_the_hosts_namespace_keeps_its_connection(hosts, workdir: Path, reaper) -> None:
    tree = workdir / "pair"
    tree.mkdir()
    (tree / "pair.py").write_text(PAIR)
    pid = apps.start_tree(testhosts.HOST_A, tree, [sys.executable, str(tree / "pair.py")], reaper)
    apps.wait_for("the pair exchanging", lambda: count(tree) > 5)
    src = Source(["migrate", "--tcp-established", "--pid", str(pid), "--images", str(workdir / "images"),
                  "--listen", f"{testhosts.ADDR_A}:0"])
    src.run.proc.send_signal(signal.SIGINT)
    res = src.run.finish(timeout=60)
    rolled = [e for e in src.run.events if e["event"] == "rolled_back"]
    assert res.code != 0 and rolled, res.stderr
    assert any("rule removed" in line for line in rolled[0]["released"]), rolled[0]["released"]
    after = count(tree)
    apps.wait_for("the pair exchanging again after the rollback", lambda: count(tree) > after + 10, timeout=10)
