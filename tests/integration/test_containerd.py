"""Container runtimes: containerd 1.6 (Debian 12's, driven with `ctr`) checkpoints a container through runc and
CRIU, and restores it lazily on another host through lazyrestore's CRIU plugin.

Each test host runs a containerd of its own (temporary root, state and socket; started in the host's network
namespace, so the shim, runc, CRIU and the plugin's lr-lazyd run there), killed afterwards. ctr has no way to point a
restore at a directory (containerd's client has WithRestoreImagePath, ctr does not use it): `ctr containers restore
--live` unpacks the checkpoint image's CRIU tar from the content store into a temporary directory and runc restores
from there, without --lazy-pages (containerd's runc shim never asks for it). So the destination gets a checkpoint
image whose CRIU tar is `lazyrestore serve --kit`'s kit: containerd unpacks the kit, and the plugin finds
lazyrestore/source.json there, makes the restore lazy and starts lr-lazyd (its log in the container's work dir,
<root>/io.containerd.runtime.v2.task/NS/ID/lazyd.log).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyrestore import containerd, sample, testhosts
from lazyrestore.paths import native_binary

from .containers import (BUSYBOX, CGROUP_PARENT, RUNC_PATH, Bundle, assert_placed_by_lazyd, assert_served_once,
                         container_name, hook_events, remove, remove_parent_cgroups, wait_filled)
from .helpers import Background
from .test_runc import stop

pytestmark = pytest.mark.skipif(not (shutil.which("ctr") and shutil.which("containerd")),
                                reason="needs containerd and ctr (Debian 12: apt-get install containerd)")

MIB = 256
# The ctr namespace: containerd's default cgroupsPath is /NAMESPACE/ID, so the containers' cgroups sit under the
# runtime tests' parent cgroup, which containers.remove and remove_parent_cgroups clean up.
NAMESPACE = CGROUP_PARENT
IMAGE = "localhost/lr-workload:1"
SRC, DST = container_name("ctr-src"), container_name("ctr-dst")
TASKS = "io.containerd.runtime.v2.task"


class Containerd:
    """A containerd of its own in test host `host`: root, state, sockets and XDG_RUNTIME_DIR (where it unpacks
    checkpoints) in `base`."""

    def __init__(self, base: Path, host: str) -> None:
        self.base, self.sock = base, base / "ctrd.sock"
        (base / "xdg").mkdir(parents=True)
        config = base / "config.toml"
        config.write_text("\n".join([
            "version = 2", f'root = "{base / "root"}"', f'state = "{base / "state"}"',
            # the CRI plugin wants CNI and more; the other snapshotters fail their checks here
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",'
            ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",'
            ' "io.containerd.snapshotter.v1.devmapper"]',
            f'[grpc]\n  address = "{self.sock}"', f'[ttrpc]\n  address = "{self.sock}.ttrpc"',
            '[metrics]\n  address = ""', ""]))
        self.log = open(base / "containerd.log", "w")
        self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, preexec_fn=testhosts.enter(testhosts.host_name(host)),
                                     env={**os.environ, "PATH": RUNC_PATH, "XDG_RUNTIME_DIR": str(base / "xdg")})
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            assert self.proc.poll() is None and time.monotonic() < deadline, (base / "containerd.log").read_text()
            time.sleep(0.1)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["ctr", "--address", str(self.sock), "-n", NAMESPACE, *args], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=timeout)
        assert not check or res.returncode == 0, f"ctr {' '.join(args)}: {res.stderr}"
        return res

    def bundle(self, ctr: str) -> Bundle:
        """The container's bundle as runc sees it (rootfs/app.log is the workload's log)."""
        return Bundle(self.base / "state" / TASKS / NAMESPACE / ctr, f"/{NAMESPACE}/{ctr}")

    def work_dir(self, ctr: str) -> Path:
        """CRIU's work dir for the container's restore (the shim's default): restore.log, lazyd.log."""
        return self.base / "root" / TASKS / NAMESPACE / ctr

    def pid(self, ctr: str) -> int:
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            name, pid, status = line.split()
            if name == ctr:
                assert status == "RUNNING", line
                return int(pid)
        raise AssertionError(f"no task {ctr}")

    def remove(self, ctr: str) -> None:
        self.ctr("tasks", "delete", "--force", ctr, check=False)  # kills the task and waits for its end
        self.ctr("containers", "delete", ctr, check=False)

    def stop(self) -> None:
        """Every task and container gone (their shims exit), then containerd, then whatever it left."""
        if self.proc.poll() is None:
            for ctr in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.remove(ctr)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        for pid_dir in Path("/proc").glob("[0-9]*"):  # shims of this containerd, if a task could not be deleted
            try:
                cmd = (pid_dir / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd[0].endswith(b"containerd-shim-runc-v2") and str(self.sock).encode() in b" ".join(cmd):
                os.kill(int(pid_dir.name), signal.SIGKILL)
        mounts = [ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()]
        for m in sorted((m for m in mounts if m.startswith(f"{self.base}/")), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", m], capture_output=True, timeout=30)


@pytest.fixture
def ctrd(hosts, workdir: Path) -> Iterator[dict[str, Containerd]]:
    """containerd in test host A and in test host B, the workload image imported in both."""
    started: dict[str, Containerd] = {}
    image = workdir / "image.tar"
    image.write_bytes(workload_image())
    try:
        for h in ("a", "b"):
            started[h] = Containerd(workdir / f"c{h}", h)  # short paths: the lazy-pages socket lives below
            started[h].ctr("images", "import", str(image))
        yield started
    finally:
        for c in started.values():
            c.stop()
        for ctr in (SRC, DST):
            remove(ctr)  # their cgroups, if anything is left in them
        remove_parent_cgroups()


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for info, data in entries:
            info.mtime, info.size = 0, len(data or b"")
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _entry(name: str, data: bytes | None = None, link: str | None = None, mode: int = 0o755
           ) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    if link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, link
    elif data is None:
        info.type = tarfile.DIRTYPE
    return info, data


def _blob(data: bytes, media_type: str) -> tuple[dict, tuple[str, bytes]]:
    digest = hashlib.sha256(data).hexdigest()
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}, (f"blobs/sha256/{digest}", data)


def _archive(files: dict[str, bytes], ref: str, top: dict) -> bytes:
    """An OCI image archive for `ctr images import`: the blobs and an index.json naming `top` as `ref`."""
    top = {**top, "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name":
                                  ref.rsplit(":", 1)[1]}}
    files = {**files, "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": [top]}).encode()}
    return _tar([(tarfile.TarInfo(name), data) for name, data in files.items()])


def workload_image() -> bytes:
    """IMAGE: busybox-static and lr-workload, no registry needed."""
    layer = _tar([*(_entry(d) for d in ("bin", "dev", "proc", "sys", "tmp")),
                  _entry("bin/busybox", Path(BUSYBOX).read_bytes()), _entry("bin/sh", link="busybox"),
                  _entry("bin/lr-workload", native_binary("lr-workload").read_bytes())])
    layer_d, layer_f = _blob(layer, "application/vnd.oci.image.layer.v1.tar")
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [layer_d["digest"]]}}).encode()
    config_d, config_f = _blob(config, "application/vnd.oci.image.config.v1+json")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": config_d, "layers": [layer_d]}).encode()
    manifest_d, manifest_f = _blob(manifest, "application/vnd.oci.image.manifest.v1+json")
    return _archive(dict([layer_f, config_f, manifest_f]), IMAGE, manifest_d)


def report(c: Containerd, ctr: str, timeout: float = 60) -> sample.Report:
    """SIGUSR1 to the container's process; its fresh report line (memory checksum) from app.log."""
    pid = c.pid(ctr)
    w = sample.Workload(pid, c.bundle(ctr).log, ("main",))
    seen = len(w.reports())
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while len(w.reports()) <= seen:
        assert time.monotonic() < deadline, f"no report from {ctr} in {timeout} s: {w.lines()[-5:]}"
        time.sleep(0.05)
    return w.reports()[-1]


def test_ctr_restores_lazily_through_the_plugin(ctrd: dict[str, Containerd], workdir: Path) -> None:
    a, b = ctrd["a"], ctrd["b"]
    a.ctr("run", "-d", "--null-io", IMAGE, SRC, "/bin/sh", "-c",
          f"exec /bin/lr-workload --mib {MIB} --heartbeat 1 </dev/null >/app.log 2>&1")
    wait_filled(a.bundle(SRC))
    before = report(a, SRC)
    # Host A: containerd's own checkpoint (CRIU's images go into the content store, with the rw layer), exported.
    a.ctr("containers", "checkpoint", "--task", "--rw", "--image", SRC, "lrc/ckpt:1")
    a.ctr("tasks", "delete", "--force", SRC)  # killed and reaped: a migration's source does not run again
    exported = workdir / "ckpt.tar"
    a.ctr("images", "export", "--skip-manifest-json", str(exported), "lrc/ckpt:1")  # without: "invalid character"
    # The plugin indexed the dump inside containerd's temporary images dir: it is in the content store's tar.
    img = containerd.read(exported)
    with tarfile.open(exported) as outer, tarfile.open(fileobj=outer.extractfile(img.criu_blob)) as inner:
        manifest = json.loads(inner.extractfile("lazyrestore/manifest.json").read())  # type: ignore[union-attr]
    assert manifest["lazy_pages"] >= MIB * 256 * 15 // 16 - 64
    kit = workdir / "kit.tar"
    server = Background(["serve", "--containerd-image", str(exported), "--listen", f"{testhosts.ADDR_A}:0", "--once",
                         "--kit", str(kit)], ("listening",), host="a")
    try:
        assert server.first("kit")["kit"] == str(kit)
        assert kit.stat().st_size < (MIB << 20) // 8  # the pages stay on host A
        # Host B: import the kit image (--no-unpack: a checkpoint index is no image to unpack) and restore it.
        b.ctr("images", "import", "--no-unpack", str(kit))
        res = b.ctr("containers", "restore", "--rw", "--live", DST, "lrc/ckpt:1", check=False)
        restore_log = (b.work_dir(DST) / "restore.log").read_text()
        assert res.returncode == 0, f"{res.stderr}\n{restore_log[-3000:]}"
        assert "restore asked without --lazy-pages: made lazy" in restore_log
        [summary] = [e for e in hook_events(restore_log) if e["event"] == "summary"]
        assert summary["outcome"] == "started" and summary["made_lazy"] is True, summary
        # runc restored from the directory containerd unpacked the kit into, not from one the user named
        assert Path(summary["images_dir"]).parent == b.base / "xdg", summary
        assert Path(summary["images_dir"]).name.startswith("ctrd-checkpoint"), summary
        after = report(b, DST)
        assert after.checksum == before.checksum
        assert_served_once(server)
    finally:
        stop(server)
    lazyd = (b.work_dir(DST) / "lazyd.log").read_text()
    assert_placed_by_lazyd(lazyd, MIB << 20)
    assert report(b, DST).checksum == before.checksum
