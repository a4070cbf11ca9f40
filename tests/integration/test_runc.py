"""Container runtimes: runc (Debian 12's) checkpoints and restores real containers through lazyrestore's CRIU
plugin, with nothing but runc run on the destination.

Source container in test host A, destination in test host B; images on tmpfs. The container's memory
checksum (lr-workload's report) after the restore must equal the one before the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazyrestore import procs, sample, testhosts

from .containers import (RUNC_PATH, RUNC_ROOT, Bundle, assert_placed_by_lazyd, assert_served_once, cgroup_of,
                         container_name, hook_events, make_bundle, placed_bytes, remove, remove_parent_cgroups, report,
                         runc, state, wait_filled)
from .helpers import Background, pipe_max_size, wait_text

MIB = 256
SRC, DST = container_name("src"), container_name("dst")


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of the containers a test creates; all removed afterwards."""
    names: list[str] = []
    yield names
    for n in names:
        remove(n)
    remove_parent_cgroups()


def run_source(workdir: Path, containers: list[str], name: str = SRC) -> tuple[Bundle, sample.Report]:
    """A container with MIB MiB of memory running in host A; its checksum once filled."""
    bundle = make_bundle(workdir / "src", MIB, cgroup_of(name))
    containers.append(name)
    res = runc("run", "-d", name, host="a", cwd=bundle.path)
    assert res.returncode == 0, res.stderr
    wait_filled(bundle)
    return bundle, report(bundle, name)


def stop(server: Background) -> None:
    """SIGTERM `serve`: it stops its lr-pageserver too (SIGKILL would leave that running)."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        server.finish(timeout=30)


def checkpoint_source(workdir: Path, name: str, *extra: str) -> tuple[Path, Path]:
    images, work = workdir / "images", workdir / "work-src"
    res = runc("checkpoint", "--image-path", str(images), "--work-path", str(work), *extra, name, host="a")
    assert res.returncode == 0, f"{res.stderr}\n{(work / 'dump.log').read_text()[-3000:]}"
    return images, work


def restore_dest(bundle: Bundle, images: Path, work: Path, name: str, *extra: str
                 ) -> subprocess.CompletedProcess[str]:
    return runc("restore", "-d", *extra, "--image-path", str(images), "--work-path", str(work),
                "--bundle", str(bundle.path), name, host="b", env={"LAZYRESTORE_SANITIZED": "1"})


def pre_plugin_images(images: Path) -> set[str]:
    """The files runc and CRIU 4.2 read in the images dir before CRIU loads its plugins: a destination kit must
    hold them (runc: descriptors.json; CRIU: inventory.img in check_img_inventory, then pstree.img and every task's
    ids-PID.img in prepare_pstree, which 4.2 runs before cr_plugin_init; without pstree.img 4.2.1 crashes)."""
    return {"inventory.img", "descriptors.json", "pstree.img", *(p.name for p in images.glob("ids-*.img"))}


def assert_kit_complete(kit: Path, images: Path) -> None:
    missing = pre_plugin_images(images) - {p.name for p in kit.iterdir()}
    assert not missing, f"the kit lacks {sorted(missing)}: CRIU reads them before the plugin could fetch them"


def test_runc_restores_lazily_through_the_plugin(hosts, workdir: Path, containers: list[str]) -> None:
    src, before = run_source(workdir, containers)
    images, _ = checkpoint_source(workdir, SRC)
    # The plugin indexed the checkpoint after runc's dump: it can be served as it is.
    manifest = json.loads((images / "lazyrestore" / "manifest.json").read_text())
    assert manifest["lazy_pages"] >= MIB * 256 * 15 // 16 - 64
    dest = src.copy(workdir / "dst", cgroup_of(DST))
    server = Background(["serve", "--images", str(images), "--listen", f"{testhosts.ADDR_A}:0", "--once",
                         "--kit", str(workdir / "kit")], ("listening",), host="a")
    try:
        assert server.first("listening")["port"] > 0
        assert_kit_complete(workdir / "kit", images)
        # The operator's only steps on host B: copy the kit, then runc restore --lazy-pages.
        dst_images = workdir / "dst-images"
        shutil.copytree(workdir / "kit", dst_images)
        containers.append(DST)
        res = restore_dest(dest, dst_images, workdir / "work-dst", DST, "--lazy-pages")
        restore_log = (workdir / "work-dst" / "restore.log").read_text()
        assert res.returncode == 0, f"{res.stderr}\n{restore_log[-3000:]}"
        assert "lazyrestore: hook: lazyrestore hook pre-restore: started: lr-lazyd" in restore_log
        after = report(dest, DST)
        assert after.checksum == before.checksum
        assert_served_once(server)
    finally:
        stop(server)
    lazyd_log = (workdir / "work-dst" / "lazyd.log").read_text()
    assert "every page placed" in lazyd_log and "the page server acknowledged DONE" in lazyd_log
    assert report(dest, DST).checksum == before.checksum  # still right with every page placed


def test_a_restore_without_lazy_pages_of_a_served_checkpoint_comes_up_lazily(hosts, workdir: Path,
                                                                             containers: list[str]) -> None:
    """What every runtime but runc does (it has no way to ask for --lazy-pages): the plugin makes the restore lazy."""
    src, before = run_source(workdir, containers)
    images, _ = checkpoint_source(workdir, SRC)
    dest = src.copy(workdir / "dst", cgroup_of(DST))
    server = Background(["serve", "--images", str(images), "--listen", f"{testhosts.ADDR_A}:0", "--once",
                         "--kit", str(workdir / "kit")], ("listening",), host="a")
    try:
        assert_kit_complete(workdir / "kit", images)
        shutil.copytree(workdir / "kit", workdir / "dst-images")
        containers.append(DST)
        res = restore_dest(dest, workdir / "dst-images", workdir / "work-dst", DST)  # no --lazy-pages
        log = (workdir / "work-dst" / "restore.log").read_text()
        assert res.returncode == 0, f"{res.stderr}\n{log[-3000:]}"
        assert "restore asked without --lazy-pages: made lazy" in log
        summary = [e for e in hook_events(log) if e["event"] == "summary"]
        assert len(summary) == 1 and summary[0]["outcome"] == "started" and summary[0]["made_lazy"] is True, summary
        assert report(dest, DST).checksum == before.checksum
        assert_served_once(server)
    finally:
        stop(server)
    lazyd = (workdir / "work-dst" / "lazyd.log").read_text()
    assert_placed_by_lazyd(lazyd, MIB << 20)
    assert report(dest, DST).checksum == before.checksum


def test_an_unreachable_page_server_fails_the_restore_cleanly(hosts, workdir: Path, containers: list[str]) -> None:
    src, _ = run_source(workdir, containers)
    images, _ = checkpoint_source(workdir, SRC)
    dest = src.copy(workdir / "dst", cgroup_of(DST))
    dst_images = workdir / "dst-images"
    (dst_images / "lazyrestore").mkdir(parents=True)
    for name in pre_plugin_images(images):
        shutil.copy(images / name, dst_images / name)
    shutil.copy(images / "lazyrestore" / "secret", dst_images / "lazyrestore" / "secret")
    (dst_images / "lazyrestore" / "source.json").write_text(json.dumps(
        {"lazyrestore_source": 1, "kind": "lazyrestore", "address": f"{testhosts.ADDR_A}:9",
         "secret_file": "secret", "source_timeout": 2}))
    containers.append(DST)
    res = restore_dest(dest, dst_images, workdir / "work-dst", DST, "--lazy-pages")
    assert res.returncode != 0
    log = (workdir / "work-dst" / "restore.log").read_text()
    assert f"could not fetch the checkpoint from {testhosts.ADDR_A}:9" in log
    assert runc("state", DST).returncode != 0


def test_the_hook_as_a_criu_action_script_indexes_a_dump(workdir: Path, reaper) -> None:
    w = sample.start(workdir, 32)
    reaper.add(w.pid)
    before = w.request_report()
    images = workdir / "images"
    images.mkdir()
    conf = workdir / "criu.conf"
    conf.write_text(f"action-script {Path(sys.executable).parent / 'lazyrestore-hook'}\n")
    res = subprocess.run(["criu", "dump", "-t", str(w.pid), "-D", str(images), "--config", str(conf),
                          "-o", "dump.log"], capture_output=True, text=True,
                         env={"PATH": "/usr/local/sbin:/usr/bin:/bin", "LAZYRESTORE_PLUGIN": "off"})
    assert res.returncode == 0, res.stderr + (images / "dump.log").read_text()[-2000:]
    assert (images / "lazyrestore" / "manifest.json").is_file()
    inspect = subprocess.run([sys.executable, "-m", "lazyrestore.cli", "inspect", "--images", str(images), "--json"],
                             capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
    assert before["main"].checksum  # the dump stopped a workload that had reported


def lazy_checkpoint(workdir: Path, name: str, port: int) -> tuple[subprocess.Popen[str], Path]:
    """runc's documented lazy migration source: `runc checkpoint --lazy-pages --page-server` in host A, up to
    the status byte (its page server listens; runc returns only once a client closed it)."""
    images = workdir / "images"
    r, w = os.pipe()
    ck = subprocess.Popen(["runc", "--root", RUNC_ROOT, "checkpoint", "--lazy-pages", "--page-server",
                           f"{testhosts.ADDR_A}:{port}", "--status-fd", str(w), "--image-path", str(images),
                           "--work-path", str(workdir / "work-src"), name], pass_fds=(w,), text=True,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, "PATH": RUNC_PATH}, preexec_fn=testhosts.enter(testhosts.HOST_A))
    os.close(w)
    ok = procs.ready_byte(r, 60)
    assert ok, f"runc checkpoint --lazy-pages gave no status byte: {ck.poll()} {ck.stderr.read() if ck.poll() else ''}"
    return ck, images


def stop_checkpoint(ck: subprocess.Popen[str]) -> None:
    """Kill a `runc checkpoint --lazy-pages` still running, and its `criu swrk`: CRIU's page server waits for a
    client with no timeout, so killing runc alone would leave it holding the port and the frozen source."""
    if ck.poll() is not None:
        return
    criu_pids = []
    for task in Path(f"/proc/{ck.pid}/task").glob("*"):
        try:
            criu_pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            pass  # the thread is gone
    ck.kill()
    ck.communicate()
    for pid in criu_pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("via", ["plugin", "lazy-pages"])
def test_runc_lazy_page_server_checkpoint_served_to_lr_lazyd(hosts, workdir: Path, containers: list[str],
                                                            via: str) -> None:
    src, before = run_source(workdir, containers)
    port = 27411
    with pipe_max_size(4 << 20):
        ck, images = lazy_checkpoint(workdir, SRC, port)
        try:
            dest = src.copy(workdir / "dst", cgroup_of(DST))
            dst_images = workdir / "dst-images"
            shutil.copytree(images, dst_images)  # the dump's images: the lazy pages stay in CRIU's page server
            assert sum(f.stat().st_size for f in dst_images.iterdir()) < (MIB << 20) // 8
            work = workdir / "work-dst"
            daemon = None
            if via == "plugin":
                (dst_images / "lazyrestore").mkdir()
                (dst_images / "lazyrestore" / "source.json").write_text(json.dumps(
                    {"lazyrestore_source": 1, "kind": "criu", "address": f"{testhosts.ADDR_A}:{port}"}))
            else:  # the drop-in for `criu lazy-pages --page-server --address A --port P`
                work.mkdir()
                r, w = os.pipe()
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "lazyrestore.cli", "lazy-pages", "--page-server", "--address",
                     testhosts.ADDR_A, "--port", str(port), "-D", str(dst_images), "-W", str(work), "-o", "lazyd.log",
                     "--status-fd", str(w)], pass_fds=(w,), stdin=subprocess.DEVNULL,
                    preexec_fn=testhosts.enter(testhosts.HOST_B))
                os.close(w)
                assert procs.ready_byte(r, 60), (work / "lazyd.log").read_text()
            containers.append(DST)
            res = restore_dest(dest, dst_images, work, DST, "--lazy-pages")
            assert res.returncode == 0, f"{res.stderr}\n{(work / 'restore.log').read_text()[-3000:]}"
            assert report(dest, DST).checksum == before.checksum
            out, err = ck.communicate(timeout=120)  # the dump ends once lr-lazyd has closed the page server
            assert ck.returncode == 0, err
            if daemon is not None:
                assert daemon.wait(timeout=60) == 0
        finally:
            stop_checkpoint(ck)
    log = (work / "lazyd.log").read_text()
    assert f"connected to CRIU's page server {testhosts.ADDR_A}:{port}" in log
    assert "every page placed" in log and "closed with status 0" in log
    assert report(dest, DST).checksum == before.checksum


# --- a runc checkpoint made live by the plugin (LAZYRESTORE_LIVE=HOST:PORT in runc's environment): the source
# container stays stopped and is served from its memory, as `lazyrestore migrate` serves a tree; a plain
# `runc restore` of the kit runs it on B.

def live_checkpoint(workdir: Path, name: str, **env: str) -> tuple[subprocess.Popen[str], Path]:
    """`LAZYRESTORE_LIVE=ADDR_A:0 runc checkpoint` in host A, in the background: it returns once the tree's fate
    is decided."""
    images = workdir / "images"
    ck = subprocess.Popen(["runc", "--root", RUNC_ROOT, "checkpoint", "--image-path", str(images), "--work-path",
                           str(workdir / "work-src"), name], text=True, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, "PATH": RUNC_PATH, "LAZYRESTORE_LIVE": f"{testhosts.ADDR_A}:0", **env},
                          preexec_fn=testhosts.enter(testhosts.HOST_A))
    return ck, images


def live_events(images: Path) -> list[dict[str, Any]]:
    path = images / "lazyrestore" / "live.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def wait_event(images: Path, name: str, ck: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in live_events(images) if e["event"] == name]
        if found:
            return found[-1]
        log = images / "lazyrestore" / "live.log"
        assert time.monotonic() < deadline, (f"no {name!r} event in {timeout} s: {live_events(images)[-5:]}\n"
                                             f"{log.read_text()[-3000:] if log.exists() else '(no live.log)'}")
        if ck.poll() is not None and name != "rolled_back":
            pytest.fail(f"runc checkpoint exited {ck.returncode} before {name!r}: "
                        f"{ck.stderr.read() if ck.stderr else ''}\n{live_events(images)[-5:]}")
        time.sleep(0.1)


def checkpoint_result(ck: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    _, err = ck.communicate(timeout=timeout)
    return ck.returncode, err


def stop_live(ck: subprocess.Popen[str], images: Path) -> None:
    """After a failed test: stop the live dump (SIGTERM: it rolls back unless a destination holds the tree), then
    runc and its CRIU."""
    pid_file = images / "lazyrestore" / "migrate.pid"
    if ck.poll() is None and pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            ck.communicate(timeout=60)
        except (ProcessLookupError, ValueError, subprocess.TimeoutExpired):
            pass
    stop_checkpoint(ck)


def test_a_live_runc_checkpoint_is_restored_by_a_plain_runc_restore(hosts, workdir: Path,
                                                                    containers: list[str]) -> None:
    src, before = run_source(workdir, containers)
    ck, images = live_checkpoint(workdir, SRC)
    try:
        listening = wait_event(images, "listening", ck)
        assert listening["live"] is True and listening["port"] > 0
        kit = images / "lazyrestore" / "kit"
        assert_kit_complete(kit, images)
        # Only the metadata was written: the memory stays in the stopped container.
        assert sum(f.stat().st_size for f in images.iterdir() if f.is_file()) < (MIB << 20) // 8
        st = state(SRC)
        assert st["status"] != "stopped"  # runc's checkpoint is still under way
        assert procs.status_fields(st["pid"])["State"][0] in "tT"  # the source stays stopped while it is served
        dest = src.copy(workdir / "dst", cgroup_of(DST))
        dst_images = workdir / "dst-images"
        shutil.copytree(kit, dst_images)
        containers.append(DST)
        res = restore_dest(dest, dst_images, workdir / "work-dst", DST)  # no --lazy-pages: the plugin makes it lazy
        log = (workdir / "work-dst" / "restore.log").read_text()
        assert res.returncode == 0, f"{res.stderr}\n{log[-3000:]}"
        assert "made lazy" in log
        assert report(dest, DST).checksum == before.checksum
        # The destination has every page: CRIU kills the source and runc's checkpoint succeeds.
        code, err = checkpoint_result(ck)
        assert code == 0, f"{err}\n{live_events(images)[-5:]}"
    finally:
        stop_live(ck, images)
    events = live_events(images)
    assert [e["reason"] for e in events if e["event"] == "source_ended"] == ["delivered"], events[-5:]
    summary = events[-1]
    assert summary["event"] == "summary" and summary["action"] == "live-dump" and summary["delivered"] == 1, summary
    assert state(SRC) is None  # runc removed the checkpointed container
    lazyd = (workdir / "work-dst" / "lazyd.log").read_text()
    assert "every page placed" in lazyd
    assert placed_bytes(lazyd) >= (MIB << 20) * 15 // 16
    assert report(dest, DST).checksum == before.checksum


@pytest.mark.parametrize("how", ["sigterm", "timeout", "sigkill"])
def test_a_live_runc_checkpoint_no_destination_takes_rolls_back(hosts, workdir: Path, containers: list[str],
                                                                how: str) -> None:
    src, before = run_source(workdir, containers)
    ck, images = live_checkpoint(workdir, SRC, **({"LAZYRESTORE_LIVE_TIMEOUT": "3"} if how == "timeout" else {}))
    try:
        wait_event(images, "listening", ck)
        live_pid = int((images / "lazyrestore" / "migrate.pid").read_text())
        if how != "timeout":  # the operator stops the live dump, or it dies (SIGKILL, the OOM killer)
            os.kill(live_pid, signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        code, err = checkpoint_result(ck)
    finally:
        stop_live(ck, images)
    assert code != 0, "runc checkpoint succeeded though no destination took the container"
    if how == "sigkill":  # its fate keeper rolled the container back (else CRIU, reading EOF, would have killed it)
        keeper = wait_text(images / "lazyrestore" / "fatekeeper.log", "rolled back")
        assert "rolling it back" in keeper and "iptables: CRIU's lock chain removed" in keeper, keeper
    else:
        rolled = wait_event(images, "rolled_back", ck, timeout=30)
        # CRIU skips undoing its lock of the container's network namespace when the lazy transfer fails: undone here.
        assert "iptables: CRIU's lock chain removed" in rolled["released"], rolled
    events = live_events(images)
    assert not [e for e in events if e["event"] == "source_ended"], events
    if how == "timeout":
        assert [e for e in events if e["event"] == "timeout"], events
    st = state(SRC)
    assert st is not None and st["status"] == "running", st
    assert report(src, SRC).checksum == before.checksum  # it runs on where it stopped, memory intact
