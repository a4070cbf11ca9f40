"""Fault injection during remote lazy migration between the test hosts: the page server killed at several
points, network partitions, lossy / duplicating / corrupting links, bit flips in transit and on disk, lr-lazyd,
its guardian and `lazyrestore restore` killed. Whatever happens, the restored tree either ends with every byte
equal to the original (compared by checksum) or is killed with a named error, and the checkpoint on the source
restores again.

Each scenario records its figures (faults injected, mismatches, time to detect and to recover) for
RELIABILITY.md through faults.record when `make reliability` runs the suite.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from lazyrestore import procs, sample, testhosts

from . import faults
from .helpers import Background
from .migration import (SLOW_DRAIN, Source, checkpoint_on_a, checksums, finished, restore_on_b, serve_a,
                        start_on_a)

MIB = 128


def wait_for(predicate, timeout: float = 60.0, step: float = 0.02) -> float:
    """Seconds until predicate() holds; AssertionError after timeout."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"not within {timeout} s: {getattr(predicate, 'what', lambda: predicate)()}"
        time.sleep(step)
    return time.monotonic() - t0


def wait_dead(pid: int, timeout: float = 20.0) -> float:
    return wait_for(lambda: not procs.is_running(pid), timeout)


class Migration:
    """A workload on A served there, checkpointed on disk (`serve`) or live (`migrate`: CRIU holds the tree
    stopped, lr-pageserver serves its memory); restores of it on B."""

    def __init__(self, workdir: Path, reaper, mib: int = MIB, scanners: int = 0, live: bool = False) -> None:
        self.workdir, self.reaper, self.live = workdir, reaper, live
        self.w = start_on_a(workdir, reaper, mib, scanners=scanners)
        self.before = checksums(self.w)
        if live:
            self.src = Source(["migrate", "--pid", str(self.w.pid), "--images", str(workdir / "images"),
                               "--listen", f"{testhosts.ADDR_A}:0"])
        else:
            checkpoint_on_a(self.w, workdir / "images")
            self.src = serve_a(workdir / "images")
        self.log_size = self.w.log.stat().st_size  # CRIU restores the tree's log at this size (live: frozen)
        self.port = self.src.listening["port"]
        self.runs = 0

    def restore(self, *extra: str, source: str | None = None, until: tuple[str, ...] = ("resumed",)) -> Background:
        self.runs += 1
        return restore_on_b(source or self.src.address, self.workdir / "images", self.dst, *extra, until=until)

    @property
    def dst(self) -> Path:
        return self.workdir / f"dst{self.runs}"

    def restored(self, run: Background) -> sample.Workload:
        return sample.Workload(self.reaper.add(run.first("resumed")["pid"]), self.w.log, self.w.roles)

    def restart_server(self) -> None:
        """`serve` again on the same port; a live `migrate` starts lr-pageserver again itself."""
        if self.live:
            assert self.src.run.read_until("server_restart") is not None, self.src.run.events[-5:]
            return
        self.src = serve_a(self.workdir / "images", self.port)

    def kill_server(self) -> float:
        """SIGKILL lr-pageserver (and stop `serve`; a live `migrate` goes on and starts it again): when it died."""
        self.src.kill_server()
        died = time.monotonic()
        if not self.live:
            self.src.stop()
        return died

    def mismatches(self, restored: sample.Workload) -> int:
        return faults.mismatches(checksums(restored), self.before)

    def restores_again(self) -> int:
        """A fresh restore from the same checkpoint: its mismatching roles (0 when every byte is right)."""
        os.truncate(self.w.log, self.log_size)
        run = self.restore()
        restored = self.restored(run)
        finished(run)
        bad = self.mismatches(restored)
        os.kill(restored.pid, signal.SIGKILL)
        return bad

    def close(self) -> None:
        if self.live and self.src.run.proc.poll() is None:
            self.src.run.proc.kill()  # CRIU reads EOF and kills the held tree (a destination may have run it)
            self.src.run.finish(timeout=30)
        elif not self.live:
            self.src.stop()


@pytest.fixture(params=["via-disk", "live"])
def migration(request, hosts, workdir: Path, reaper):
    """Both sources: a checkpoint on disk, and a live migration's stopped tree."""
    live = request.param == "live"
    faults.MODE_SUFFIX["value"] = " (live)" if live else ""
    m = Migration(workdir, reaper, live=live)
    yield m
    m.close()
    faults.MODE_SUFFIX["value"] = ""


@pytest.fixture
def disk_migration(hosts, workdir: Path, reaper):
    """A checkpoint on disk only: for scenarios a live source has no counterpart of (its page server gone for
    good, a pages file on the source)."""
    m = Migration(workdir, reaper)
    yield m
    m.close()


def lazyd_log(run_dir: Path) -> str:
    return faults.log_text(run_dir)


def log_says(run_dir: Path, text: str):
    def says() -> bool:
        return text in lazyd_log(run_dir)
    says.what = lambda: f"{text!r} in lazyd.log: {lazyd_log(run_dir)[-2000:]}"  # type: ignore[attr-defined]
    return says


# --- the page server killed -------------------------------------------------------------------------------

POINTS = ("before-restore", "after-resume", "mid-drain")


def start_with_server_killed(m: Migration, point: str, timeout_s: int) -> tuple[Background, float]:
    """Start a slow restore on B with the page server SIGKILLed at `point`: (the restore, when it was killed)."""
    if point == "before-restore":
        killed = m.kill_server()
        return m.restore(*SLOW_DRAIN, "--source-timeout", str(timeout_s), until=("resumed", "fetched")), killed
    run = m.restore(*SLOW_DRAIN, "--source-timeout", str(timeout_s))
    if point == "mid-drain":
        time.sleep(1.0)  # 48 MiB/s: about a third of the pages are placed
    return run, m.kill_server()


class Checksums(threading.Thread):
    """The restored tree's memory checksums, asked for now (its pages may have to wait for the source)."""

    def __init__(self, restored: sample.Workload) -> None:
        super().__init__(daemon=True)
        self.restored, self.result = restored, None
        self.start()

    def run(self) -> None:
        self.result = checksums(self.restored)


@pytest.mark.parametrize("point", POINTS)
def test_page_server_killed_and_restarted_within_the_timeout(migration: Migration, point: str) -> None:
    m = migration
    # `serve` is started again by the test after 2 s; a live `migrate` starts lr-pageserver again itself, at once
    restarter = threading.Timer(2.0, m.restart_server) if point == "before-restore" and not m.live else None
    if restarter:
        restarter.start()
    run, killed = start_with_server_killed(m, point, 30)
    if point == "before-restore":
        if restarter:
            restarter.join()
        run.read_until("resumed")
    restored = m.restored(run)
    detect: float | None = None  # before the restore there is nothing to notice: the first connection waits
    if point == "before-restore":  # from the restart to the tree running
        recover = time.monotonic() - killed - (0.0 if m.live else 2.0)
    else:
        wait_for(log_says(m.dst, "lost the page server"), 30)
        detect = time.monotonic() - killed  # an upper bound: it includes the test's own polling
        reader = Checksums(restored)  # faults on missing pages now wait for the page server
        if not m.live:  # a live `migrate` starts lr-pageserver again at once; `serve` stays down until restarted
            time.sleep(1.0)
            assert procs.is_running(restored.pid) and reader.is_alive(), lazyd_log(m.dst)[-3000:]
        m.restart_server()
        recover = wait_for(log_says(m.dst, "reconnected to the page server"), 30)
        reader.join(60)
        assert reader.result == m.before
    finished(run)
    bad = m.mismatches(restored)
    faults.record(f"page server killed {point}, restarted within the timeout", injected=1, mismatches=bad,
                  detect_s=detect, recover_s=recover, outcome="completed")
    assert bad == 0
    assert restored.request_verify() == {"main": "ok"}
    assert not m.w.bad_lines()


@pytest.mark.parametrize("point", POINTS)
def test_page_server_gone_past_the_timeout(disk_migration: Migration, point: str) -> None:
    m = disk_migration
    run, killed = start_with_server_killed(m, point, 2)
    pid = m.reaper.add(run.first("resumed")["pid"]) if point != "before-restore" else None
    res = run.finish(timeout=120)
    detect = time.monotonic() - killed
    assert res.code != 0
    err = res.last("error")["message"]
    assert testhosts.ADDR_A in err, err
    if pid:
        assert "unreachable for 2 s" in err and "checkpoint is intact" in err, err
        wait_dead(pid)
    else:
        assert not any(e["event"] == "resumed" for e in res.events), "nothing may run without its source"
    m.restart_server()
    bad = m.restores_again()
    faults.record(f"page server killed {point}, gone past the timeout", injected=1, mismatches=bad,
                  detect_s=detect, recover_s=None, outcome="tree killed, named error; restored again")
    assert bad == 0


# --- network partition ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds", [3, 8])
def test_partition_shorter_than_the_timeout(migration: Migration, seconds: int) -> None:
    """3 s: TCP's retransmissions bridge it. 8 s: lr-lazyd gives the silent connection up after 5 s and
    reconnects once the link is back."""
    m = migration
    run = m.restore(*SLOW_DRAIN, "--source-timeout", "30")
    restored = m.restored(run)
    with faults.link_down("b"):
        reader = Checksums(restored)
        time.sleep(seconds)
        assert procs.is_running(restored.pid) and reader.is_alive()
    up = time.monotonic()
    reader.join(60)
    summary = finished(run)
    recover = time.monotonic() - up
    bad = m.mismatches(restored)
    stalled = "lost the page server" in lazyd_log(m.dst)
    faults.record(f"partition (veth down) {seconds} s, timeout 30 s", injected=1, mismatches=bad, detect_s=None,
                  recover_s=recover, outcome="completed" + ("; silent connection dropped, reconnected" if stalled
                                                            else "; TCP retransmission"))
    assert reader.result == m.before and bad == 0 and summary["resident_s"] > seconds
    assert stalled == (seconds > 5), lazyd_log(m.dst)[-2000:]
    assert restored.request_verify() == {"main": "ok"}


def test_partition_longer_than_the_timeout(migration: Migration) -> None:
    m = migration
    run = m.restore(*SLOW_DRAIN, "--source-timeout", "3")
    pid = m.reaper.add(run.first("resumed")["pid"])
    with faults.link_down("b"):
        down = time.monotonic()
        res = run.finish(timeout=120)
        detect = time.monotonic() - down
        wait_dead(pid)
    assert res.code != 0
    err = res.last("error")["message"]
    assert "unreachable for 3 s" in err and "checkpoint is intact" in err, err
    bad = m.restores_again()
    faults.record("partition (veth down) past the 3 s timeout", injected=1, mismatches=bad, detect_s=detect,
                  recover_s=None, outcome="tree killed, named error; restored again")
    assert bad == 0


# --- a lossy, duplicating, corrupting link ----------------------------------------------------------------

# Rates per packet as nftables sees it: veth hands it segments of up to 64 KiB (GSO), so a 128 MiB restore
# is a few thousand packets and 0.3% corruption damages a handful of them.
LINKS = {
    "loss 2%": {"loss": 0.02},
    "duplication 2%": {"duplicate": 0.02},
    "corruption 0.3%": {"corrupt": 0.003},
    "loss 1%, duplication 1%, corruption 0.2%": {"loss": 0.01, "duplicate": 0.01, "corrupt": 0.002},
}


@pytest.mark.parametrize("link", LINKS)
def test_bad_link_during_the_drain(migration: Migration, link: str) -> None:
    reason = faults.nft_available()
    if reason:
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    m = migration
    both = (faults.packet_faults("a", m.port, **LINKS[link]), faults.packet_faults("b", m.port, **LINKS[link]))
    with both[0], both[1]:
        t0 = time.monotonic()
        run = m.restore()
        restored = m.restored(run)
        finished(run)
        seconds = time.monotonic() - t0
    bad = m.mismatches(restored)
    log = lazyd_log(m.dst)
    caught = log.count("asking for it again") + log.count("lost the page server")
    faults.record(f"link: {link} (both directions)", injected=None, mismatches=bad, detect_s=None,
                  recover_s=seconds, outcome=f"completed; {caught} damaged frames caught", caught=caught)
    assert bad == 0, log[-3000:]
    assert restored.request_verify() == {"main": "ok"}


# --- bit flips in transit and on disk ---------------------------------------------------------------------

def migrate_through(m: Migration, proxy: faults.FlipProxy) -> tuple[int, str]:
    """A restore through the proxy that must complete: (mismatching roles, lazyd.log)."""
    proxy.start()
    try:
        run = m.restore(source=proxy.address)
        restored = m.restored(run)
        finished(run)
    finally:
        proxy.stop()
    return m.mismatches(restored), lazyd_log(m.dst)


def expect_aborted(m: Migration, run: Background, needle: str) -> float:
    """The restore fails with needle in its error and its tree (if it resumed) dies: seconds it took."""
    t0 = time.monotonic()
    pid = m.reaper.add(run.first("resumed")["pid"]) if any(e["event"] == "resumed" for e in run.events) else None
    res = run.finish(timeout=120)
    assert res.code != 0
    err = res.last("error")["message"]
    assert needle in err, err
    if pid:
        wait_dead(pid)
    return time.monotonic() - t0


def test_bit_flips_in_transit_are_refetched(migration: Migration) -> None:
    m = migration
    proxy = faults.FlipProxy(m.port, flip_every=7, flip_limit=20)
    bad, log = migrate_through(m, proxy)
    caught = log.count("asking for it again")
    faults.record("bit flips in transit (proxy, 20 PAGES frames)", injected=proxy.flipped, mismatches=bad,
                  detect_s=None, recover_s=None, outcome=f"completed; {caught} caught and refetched", caught=caught)
    assert proxy.flipped == 20
    assert caught == proxy.flipped, log[-3000:]
    assert bad == 0


def test_damaged_frame_headers_mean_a_reconnection(migration: Migration) -> None:
    m = migration
    proxy = faults.FlipProxy(m.port, flip_every=11, flip_limit=3, header=True)
    bad, log = migrate_through(m, proxy)
    caught = log.count("damaged frame")
    faults.record("frame headers damaged in transit (proxy, 3 frames)", injected=proxy.flipped, mismatches=bad,
                  detect_s=None, recover_s=None, outcome=f"completed; {caught} caught, reconnected", caught=caught)
    # A damaged frame still in flight when lr-lazyd drops that connection is never read: 1 to 3 are caught.
    assert proxy.flipped == 3 and 1 <= caught <= 3 and "reconnected to the page server" in log, log[-3000:]
    assert bad == 0


def test_bit_flips_in_every_frame_abort_with_a_named_error(migration: Migration) -> None:
    m = migration
    proxy = faults.FlipProxy(m.port, flip_every=1).start()
    try:
        expect_aborted(m, m.restore(source=proxy.address, until=("resumed", "fetched")), "checksum")
    finally:
        proxy.stop()
    bad = m.restores_again()
    faults.record("bit flips in every PAGES frame (proxy)", injected=proxy.flipped, mismatches=bad, detect_s=None,
                  recover_s=None, outcome="aborted, named error; restored again")
    assert bad == 0


def test_damaged_file_list_and_files_in_transit_are_fetched_again(migration: Migration) -> None:
    """FILES and FILE_DATA frames carry a checksum (LR_F_SUM): the file list, the index and the manifest (which
    nothing else covers), each damaged once on the way, are asked for again, and the restore is byte-exact."""
    m = migration
    proxy = faults.FlipProxy(m.port, files={"FILES": 1, "lazyrestore/index.bin": 1, "lazyrestore/manifest.json": 1})
    bad, log = migrate_through(m, proxy)
    caught = log.count("asking for it again")
    faults.record("file list and files damaged in transit (proxy, 3 frames)", injected=proxy.flipped,
                  mismatches=bad, detect_s=None, recover_s=None, outcome=f"completed; {caught} caught and fetched again",
                  caught=caught)
    assert proxy.flipped == 3 and caught == 3, log[-3000:]
    for what in ("the file list: FILES frame", "lazyrestore/index.bin: FILE_DATA frame",
                 "lazyrestore/manifest.json: FILE_DATA frame"):
        assert what in log, log[-3000:]
    assert bad == 0


@pytest.mark.parametrize("which", ["fetch CHALLENGE", "fetch WELCOME", "bulk CHALLENGE", "bulk WELCOME"])
def test_damaged_handshake_frames_mean_a_new_connection(migration: Migration, which: str) -> None:
    """CHALLENGE and WELCOME carry a checksum too: one damaged on the way, on the channel the fetch uses or on the
    bulk channel opened after it, means a new connection, not a failed restore."""
    m = migration
    nth = {"fetch CHALLENGE": 1, "fetch WELCOME": 2, "bulk CHALLENGE": 3, "bulk WELCOME": 4}[which]
    proxy = faults.FlipProxy(m.port, handshake=frozenset({nth}))
    bad, log = migrate_through(m, proxy)
    assert proxy.flipped == 1, log[-3000:]
    frame = which.split()[1]
    assert f"{frame} frame of" in log and "fails its checksum" in log, log[-3000:]
    assert ("connecting again" if nth <= 2 else "reconnected to the page server") in log, log[-3000:]
    assert bad == 0


@pytest.mark.parametrize("what,named", [("lazyrestore/index.bin", "lazyrestore/index.bin from the page server"),
                                        ("FILES", "the file list from the page server")])
def test_a_file_damaged_in_every_copy_aborts_with_a_named_error(migration: Migration, what: str, named: str) -> None:
    m = migration
    proxy = faults.FlipProxy(m.port, files={what: 1 << 30}).start()
    try:
        expect_aborted(m, m.restore(source=proxy.address, until=("resumed", "fetched")),
                       f"{named} failed its checksum 8 times")
    finally:
        proxy.stop()
    assert proxy.flipped == 8
    bad = m.restores_again()
    faults.record(f"{what} damaged in every copy (proxy)", injected=proxy.flipped, mismatches=bad, detect_s=None,
                  recover_s=None, outcome="aborted, named error; restored again")
    assert bad == 0


def test_bit_flip_in_a_pages_file_on_the_source(disk_migration: Migration) -> None:
    m = disk_migration
    pages = max((m.workdir / "images").glob("pages-*.img"), key=lambda p: p.stat().st_size)
    data = bytearray(pages.read_bytes())
    at = len(data) * 3 // 4
    data[at] ^= 0x10
    pages.write_bytes(bytes(data))
    t0 = time.monotonic()
    expect_aborted(m, m.restore(until=("resumed", "fetched")), "checksum")
    detect = time.monotonic() - t0
    data[at] ^= 0x10
    pages.write_bytes(bytes(data))
    bad = m.restores_again()
    faults.record("bit flip in pages-N.img on the source", injected=1, mismatches=bad, detect_s=detect,
                  recover_s=None, outcome="aborted, named error; restored again once repaired")
    assert bad == 0


# --- lr-lazyd, its guardian, `lazyrestore restore` killed -------------------------------------------------

def children(pid: int, name: str = "lr-lazyd") -> list[int]:
    """Pids whose parent is pid and whose command is name."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if int(rest[1]) == pid and comm == name[:15]:
            found.append(int(entry.name))
    return found


def guardian_and_daemon(run: Background) -> tuple[int, int]:
    (guardian,) = children(run.proc.pid)
    (daemon,) = children(guardian)
    return guardian, daemon


def killed_mid_drain(m: Migration, victim: str, sig: int = signal.SIGKILL) -> tuple[Background, int, float]:
    """A slow restore on B with `victim` (daemon, guardian, restore) sent sig a second in: (run, tree pid, when)."""
    run = m.restore(*SLOW_DRAIN)
    pid = m.reaper.add(run.first("resumed")["pid"])
    time.sleep(1.0)
    guardian, daemon = guardian_and_daemon(run)
    os.kill({"daemon": daemon, "guardian": guardian, "restore": run.proc.pid}[victim], sig)
    return run, pid, time.monotonic()


@pytest.mark.parametrize("victim,expected", [
    ("daemon", "before every page was placed"),
    ("guardian", "the guardian"),
])
def test_lazyd_or_its_guardian_killed_mid_drain_kills_the_tree(migration: Migration, victim: str,
                                                              expected: str) -> None:
    m = migration
    run, pid, killed = killed_mid_drain(m, victim)
    detect = wait_dead(pid)
    res = run.finish(timeout=60)
    assert res.code != 0
    err = res.last("error")["message"]
    assert expected in err and "checkpoint is intact" in err, err
    bad = m.restores_again()
    faults.record(f"lr-lazyd's {victim} SIGKILLed mid-drain", injected=1, mismatches=bad, detect_s=detect,
                  recover_s=None, outcome="tree killed, named error; restored again")
    assert bad == 0


def test_restore_interrupted_with_ctrl_c_kills_the_tree(migration: Migration) -> None:
    m = migration
    run, pid, killed = killed_mid_drain(m, "restore", signal.SIGINT)
    res = run.finish(timeout=60)
    detect = time.monotonic() - killed  # until `restore` exited, its tree killed
    try:
        wait_dead(pid)
    except AssertionError:
        raise AssertionError(f"tree {pid} alive; restore exit {res.code}; events {res.events[-3:]}; stderr "
                             f"{res.stderr[-2000:]}; lazyd.log {lazyd_log(m.dst)[-2000:]}") from None
    assert res.code != 0
    err = res.last("error")["message"]
    assert "interrupted" in err and "checkpoint is intact" in err, err
    bad = m.restores_again()
    faults.record("`lazyrestore restore` interrupted (SIGINT) mid-drain", injected=1, mismatches=bad,
                  detect_s=detect, recover_s=None, outcome="tree killed, named error; restored again")
    assert bad == 0


def test_restore_killed_leaves_lazyd_to_finish(migration: Migration) -> None:
    """SIGKILL of `lazyrestore restore` (nothing can catch it): lr-lazyd and its guardian run in their own
    session, finish placing every page, and the tree runs on with every byte right."""
    m = migration
    run, pid, killed = killed_mid_drain(m, "restore")
    run.kill()
    status = m.dst / "run" / "status.json"
    recover = wait_for(lambda: '"done"' in (status.read_text() if status.exists() else ""), 60)
    restored = sample.Workload(pid, m.w.log, m.w.roles)
    bad = m.mismatches(restored)
    faults.record("`lazyrestore restore` SIGKILLed mid-drain", injected=1, mismatches=bad, detect_s=None,
                  recover_s=recover, outcome="lr-lazyd finished the drain; tree runs")
    assert bad == 0 and restored.request_verify() == {"main": "ok"}
