"""runc containers for the runtime tests: a minimal bundle from Debian packages and runc driven as a user would.

The rootfs is busybox-static plus lr-workload; the container's only process is
  sh -c 'exec /bin/lr-workload --mib N </dev/null >/app.log 2>&1'
so CRIU finds no file outside the container (stdio from the host would be). Each
container gets its own cgroupsPath: the source's freezer cgroup stays frozen while
its pages are served. runc keeps its state under RUNC_ROOT, apart from any other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyrestore import sample, testhosts
from lazyrestore.paths import native_binary

# Apart per test-hosts prefix ($LAZYRESTORE_TESTHOSTS_PREFIX), like the hosts: two test runs at once neither see
# nor remove each other's containers.
RUNC_ROOT = f"/run/lazyrestore-test-runc-{testhosts.PREFIX}"
BUSYBOX = "/bin/busybox"
# runc runs `criu swrk`: the bootstrap's CRIU (4.2.1) first in PATH (Debian 12's 3.17 cannot run on this kernel).
RUNC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def runc(*args: str, host: str | None = None, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`runc --root RUNC_ROOT ARGS` (in test host a or b), stdio off the container."""
    pre = None if host is None else testhosts.enter(testhosts.host_name(host))
    return subprocess.run(["runc", "--root", RUNC_ROOT, *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout, preexec_fn=pre,
                          env={**os.environ, "PATH": RUNC_PATH, **(env or {})})


@dataclass
class Bundle:
    path: Path
    cgroup: str

    @property
    def log(self) -> Path:
        return self.path / "rootfs" / "app.log"

    def copy(self, dest: Path, cgroup: str) -> Bundle:
        """A copy for the destination (rootfs as at the checkpoint: CRIU checks app.log's size), own cgroup."""
        shutil.copytree(self.path, dest, symlinks=True)
        b = Bundle(dest, cgroup)
        b.set_config(lambda c: c["linux"].__setitem__("cgroupsPath", cgroup))
        return b

    def set_config(self, change) -> None:
        cfg = json.loads((self.path / "config.json").read_text())
        change(cfg)
        (self.path / "config.json").write_text(json.dumps(cfg, indent=1))


def make_bundle(path: Path, mib: int, cgroup: str) -> Bundle:
    rootfs = path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    os.symlink("busybox", rootfs / "bin" / "sh")
    shutil.copy(native_binary("lr-workload"), rootfs / "bin" / "lr-workload")
    res = runc("spec", cwd=path)
    assert res.returncode == 0, res.stderr
    b = Bundle(path, cgroup)

    def change(cfg: dict) -> None:
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["/bin/sh", "-c", f"exec /bin/lr-workload --mib {mib} --heartbeat 1 </dev/null >/app.log 2>&1"]
        cfg["root"]["readonly"] = False
        cfg["linux"]["cgroupsPath"] = cgroup
    b.set_config(change)
    return b


def container_name(role: str) -> str:
    """A test container's name: the test-hosts prefix and its role ("src", "dst"), e.g. lrt-src."""
    return f"{testhosts.PREFIX}-{role}"


def state(ctr: str) -> dict | None:
    res = runc("state", ctr)
    return json.loads(res.stdout) if res.returncode == 0 else None


def report(bundle: Bundle, ctr: str, timeout: float = 60) -> sample.Report:
    """SIGUSR1 to the container's process; its fresh report line (memory checksum) from app.log."""
    st = state(ctr)
    assert st and st["status"] == "running", f"container {ctr} is not running: {st}"
    w = sample.Workload(st["pid"], bundle.log, ("main",))
    seen = len(w.reports())
    os.kill(st["pid"], signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while len(w.reports()) <= seen:
        assert time.monotonic() < deadline, f"no report from {ctr} in {timeout} s: {w.lines()[-5:]}"
        time.sleep(0.05)
    return w.reports()[-1]


def wait_filled(bundle: Bundle, timeout: float = 60) -> None:
    """lr-workload (--heartbeat 1) prints its first heartbeat once its memory is filled."""
    deadline = time.monotonic() + timeout
    while not any(ln.startswith("heartbeat ") for ln in sample.Workload(0, bundle.log, ()).lines()):
        assert time.monotonic() < deadline, f"the workload in {bundle.path} did not fill its memory in {timeout} s"
        time.sleep(0.1)


CGROUP_PARENT = "lazyrestore-test"


def cgroup_of(ctr: str) -> str:
    """The cgroupsPath the tests give container ctr."""
    return f"{CGROUP_PARENT}/{ctr}"


def remove(ctr: str) -> None:
    """Kill and delete a container, whatever state it is in, and whatever is left in its cgroups (a failed
    `runc checkpoint --lazy-pages` has been seen to forget a container whose process kept running, frozen) and
    in runc's root (a failed `runc restore` leaves a state directory runc cannot load, and the name taken)."""
    st = state(ctr)
    if st is not None:
        if st.get("pid"):
            _kill(st["pid"])
        runc("delete", "--force", ctr)
    stale = Path(RUNC_ROOT) / ctr
    if stale.exists():  # with runc 1.1.5's mount of the rootfs for CRIU still on it
        subprocess.run(["umount", "--lazy", str(stale / "criu-root")], capture_output=True, timeout=30)
        shutil.rmtree(stale, ignore_errors=True)
    for freezer in Path("/sys/fs/cgroup").glob(f"**/{cgroup_of(ctr)}/freezer.state"):
        try:
            freezer.write_text("THAWED")  # a frozen task does not die of SIGKILL until thawed
        except OSError:
            pass
    for procs in Path("/sys/fs/cgroup").glob(f"**/{cgroup_of(ctr)}/cgroup.procs"):
        for pid in procs.read_text().split():
            _kill(int(pid))
        _rmdir(procs.parent)


def remove_parent_cgroups() -> None:
    """The tests' parent cgroup in every hierarchy, once empty (runc leaves it behind)."""
    for parent in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}"):
        try:
            parent.rmdir()
        except OSError:
            pass  # not empty: another test's container is still there


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _rmdir(path: Path) -> None:
    for _ in range(50):  # the killed tasks leave the cgroup a moment later
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def hook_events(restore_log: str) -> list[dict]:
    """The hook's JSON events, as the plugin relays them into CRIU's log ("lazyrestore: hook: {...}")."""
    out = []
    for line in restore_log.splitlines():
        _, sep, rest = line.partition("lazyrestore: hook: {")
        if sep:
            out.append(json.loads("{" + rest))
    return out


def assert_served_once(server: Any) -> None:
    """`serve --once` (a helpers.Background) ended well once its one destination took every page."""
    served = server.finish(timeout=120)
    assert served.code == 0, served.stderr
    assert served.last("summary")["delivered"] == 1


def assert_placed_by_lazyd(lazyd_log: str, nbytes: int) -> None:
    """lr-lazyd placed every page, at least 15/16 of nbytes through userfaultfd, and told the page server DONE."""
    assert "every page placed" in lazyd_log and "the page server acknowledged DONE" in lazyd_log
    assert placed_bytes(lazyd_log) >= nbytes * 15 // 16


def placed_bytes(lazyd_log: str) -> int:
    """Bytes lr-lazyd placed through userfaultfd, by fault and by drain, from its "every page placed: ..." line."""
    m = re.search(r"every page placed: .* ([0-9]+) bytes by fault, ([0-9]+) by drain", lazyd_log)
    assert m, lazyd_log[-2000:]
    return int(m[1]) + int(m[2])
