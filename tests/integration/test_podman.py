"""Podman (Debian 12's 4.3.1, through runc): a container checkpointed with `podman container checkpoint --export` in
test host A, served from that archive by `lazyrestore serve --podman-archive ... --kit KIT.tar`, and restored in test
host B by `podman container restore --import KIT.tar` alone. The kit holds no page: the plugin makes the restore
lazy and lr-lazyd places the container's memory. Its checksum (lr-workload's report) must equal the one before.

The test hosts share this machine's Podman storage, so the source container is removed on A before B imports the
kit (on two machines it would simply stay behind, exited). Root here lacks CAP_SYS_RESOURCE: Podman's default
rlimits are above this machine's hard limits, so containers run with lower ones (../shared/CRIU-NOTES.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyrestore import podman as podman_archive
from lazyrestore import sample, testhosts
from lazyrestore.paths import native_binary

from .containers import BUSYBOX, RUNC_PATH, assert_placed_by_lazyd, assert_served_once, container_name
from .helpers import Background

pytestmark = pytest.mark.skipif(shutil.which("podman") is None,
                                reason="podman is not installed (scripts/bootstrap.sh installs Debian's)")

MIB = 256
IMAGE = f"localhost/lazyrestore-test-{testhosts.PREFIX}:1"
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")
SRC = container_name("podman")


def podman(*args: str, host: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`podman ARGS` (in test host a or b), with CRIU 4.2.1 first in PATH for runc."""
    pre = None if host is None else testhosts.enter(testhosts.host_name(host))
    return subprocess.run(["podman", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout, preexec_fn=pre, env={**os.environ, "PATH": RUNC_PATH})


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local image (no registry): busybox-static and lr-workload, `podman import`ed."""
    rootfs = tmp_path_factory.mktemp("podman-rootfs")
    (rootfs / "bin").mkdir()
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    os.symlink("busybox", rootfs / "bin" / "sh")
    shutil.copy(native_binary("lr-workload"), rootfs / "bin" / "lr-workload")
    tar = rootfs.parent / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    res = podman("import", "-q", str(tar), IMAGE)
    assert res.returncode == 0, res.stderr
    yield IMAGE
    podman("rmi", "-f", IMAGE)


@pytest.fixture
def containers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for n in names:
        podman("rm", "-f", "-t", "0", n)


def inspect(name: str, fmt: str) -> str:
    res = podman("inspect", name, "--format", fmt)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def workload(name: str) -> sample.Workload:
    """The container's lr-workload, its log read through /proc/PID/root."""
    pid = int(inspect(name, "{{.State.Pid}}"))
    assert pid > 0, f"container {name} is not running"
    return sample.Workload(pid, Path(f"/proc/{pid}/root/app.log"), ("main",))


def wait_filled(name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(ln.startswith("heartbeat ") for ln in workload(name).lines()):
        assert time.monotonic() < deadline, f"{name}: lr-workload did not fill its memory in {timeout} s"
        time.sleep(0.1)


def checksum(name: str, timeout: float = 60) -> str:
    """SIGUSR1 to the container's lr-workload; the checksum of its fresh report."""
    w = workload(name)
    seen = len(w.reports())
    os.kill(w.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while len(w.reports()) <= seen:
        assert time.monotonic() < deadline, f"no report from {name} in {timeout} s: {w.lines()[-5:]}"
        time.sleep(0.05)
    return w.reports()[-1].checksum


def archive_names(path: Path) -> set[str]:
    with podman_archive.open_archive(path) as tar:
        return {os.path.normpath(m.name) for m in tar}


def test_podman_restore_import_of_a_kit_is_lazy(hosts, workdir: Path, image: str, containers: list[str]) -> None:
    containers.append(SRC)
    res = podman("run", "-d", "--name", SRC, "--network", "none", *ULIMITS, image, "/bin/sh", "-c",
                 f"exec /bin/lr-workload --mib {MIB} --heartbeat 1 </dev/null >/app.log 2>&1", host="a")
    assert res.returncode == 0, res.stderr
    wait_filled(SRC)
    before = checksum(SRC)

    exported = workdir / "exported.tar"
    res = podman("container", "checkpoint", "--export", str(exported), SRC, host="a")
    assert res.returncode == 0, res.stderr
    names = archive_names(exported)
    assert "checkpoint/lazyrestore/manifest.json" in names  # the plugin indexed runc's dump inside the archive

    kit = workdir / "kit.tar"
    server = Background(["serve", "--podman-archive", str(exported), "--listen", f"{testhosts.ADDR_A}:0", "--once",
                         "--kit", str(kit)], ("listening",), host="a")
    try:
        assert server.first("kit")["kit"] == str(kit)
        assert kit.stat().st_size < (MIB << 20) // 16, "the kit carries pages"
        assert oct(kit.stat().st_mode & 0o777) == "0o600"  # it holds the secret
        kit_names = archive_names(kit)
        assert {"config.dump", "spec.dump", "checkpoint/lazyrestore/source.json"} <= kit_names
        assert not any(n.startswith("checkpoint/pages-") for n in kit_names)
        res = podman("rm", SRC, host="a")  # shared storage: the name and id must be free for B
        assert res.returncode == 0, res.stderr

        # host B: the only command
        res = podman("container", "restore", "--import", str(kit), host="b")
        assert res.returncode == 0, res.stderr
        assert checksum(SRC) == before
        assert_served_once(server)
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            server.finish(timeout=30)
    lazyd = (Path(inspect(SRC, "{{.StaticDir}}")) / "lazyd.log").read_text()
    assert_placed_by_lazyd(lazyd, MIB << 20)
    assert checksum(SRC) == before  # still right with every page placed
    assert json.loads(inspect(SRC, "{{json .State.Status}}")) == "running"
