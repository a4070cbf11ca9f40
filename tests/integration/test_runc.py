"""Container runtimes: runc (Debian 12's) checkpoints and restores real containers through lazyrestore's CRIU
plugin, with nothing but runc run on the destination.

Source container in test host A, destination in test host B; images on tmpfs. The container's memory
checksum (lr-workload's report) after the restore must equal the one before the checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyrestore import sample, testhosts

from .containers import Bundle, make_bundle, remove, report, runc, wait_filled
from .helpers import Background

MIB = 256


@pytest.fixture(scope="module")
def hosts() -> Iterator[testhosts.TestHosts]:
    h = testhosts.up()
    yield h
    testhosts.down()


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of the containers a test creates; all removed afterwards."""
    names: list[str] = []
    yield names
    for n in names:
        remove(n)


def run_source(workdir: Path, containers: list[str], name: str = "lrt-src") -> tuple[Bundle, sample.Report]:
    """A container with MIB MiB of memory running in host A; its checksum once filled."""
    bundle = make_bundle(workdir / "src", MIB, f"lazyrestore-test/{name}")
    containers.append(name)
    res = runc("run", "-d", name, host="a", cwd=bundle.path)
    assert res.returncode == 0, res.stderr
    wait_filled(bundle)
    return bundle, report(bundle, name)


def checkpoint_source(workdir: Path, name: str, *extra: str) -> tuple[Path, Path]:
    images, work = workdir / "images", workdir / "work-src"
    res = runc("checkpoint", "--image-path", str(images), "--work-path", str(work), *extra, name, host="a")
    assert res.returncode == 0, f"{res.stderr}\n{(work / 'dump.log').read_text()[-3000:]}"
    return images, work


def restore_dest(bundle: Bundle, images: Path, work: Path, name: str, *extra: str
                 ) -> subprocess.CompletedProcess[str]:
    return runc("restore", "-d", *extra, "--image-path", str(images), "--work-path", str(work),
                "--bundle", str(bundle.path), name, host="b", env={"LAZYRESTORE_SANITIZED": "1"})


def test_runc_restores_lazily_through_the_plugin(hosts, workdir: Path, containers: list[str]) -> None:
    src, before = run_source(workdir, containers)
    images, _ = checkpoint_source(workdir, "lrt-src")
    # The plugin indexed the checkpoint after runc's dump: it can be served as it is.
    manifest = json.loads((images / "lazyrestore" / "manifest.json").read_text())
    assert manifest["lazy_pages"] >= MIB * 256 * 15 // 16 - 64
    dest = src.copy(workdir / "dst", "lazyrestore-test/lrt-dst")
    server = Background(["serve", "--images", str(images), "--listen", f"{testhosts.ADDR_A}:0", "--once",
                         "--kit", str(workdir / "kit")], ("listening",), host="a")
    try:
        assert server.first("listening")["port"] > 0
        # The operator's only steps on host B: copy the kit, then runc restore --lazy-pages.
        dst_images = workdir / "dst-images"
        shutil.copytree(workdir / "kit", dst_images)
        containers.append("lrt-dst")
        res = restore_dest(dest, dst_images, workdir / "work-dst", "lrt-dst", "--lazy-pages")
        restore_log = (workdir / "work-dst" / "restore.log").read_text()
        assert res.returncode == 0, f"{res.stderr}\n{restore_log[-3000:]}"
        assert "lazyrestore: hook: lazyrestore hook pre-restore: started: lr-lazyd" in restore_log
        after = report(dest, "lrt-dst")
        assert after.checksum == before.checksum
        served = server.finish(timeout=120)
        assert served.code == 0, served.stderr
        assert served.last("summary")["delivered"] == 1
    finally:
        server.kill()
    lazyd_log = (workdir / "work-dst" / "lazyd.log").read_text()
    assert "every page placed" in lazyd_log and "the page server acknowledged DONE" in lazyd_log
    assert report(dest, "lrt-dst").checksum == before.checksum  # still right with every page placed


def test_an_eager_restore_of_a_served_checkpoint_is_refused(hosts, workdir: Path, containers: list[str]) -> None:
    src, _ = run_source(workdir, containers)
    images, _ = checkpoint_source(workdir, "lrt-src")
    dest = src.copy(workdir / "dst", "lazyrestore-test/lrt-dst")
    server = Background(["serve", "--images", str(images), "--listen", f"{testhosts.ADDR_A}:0",
                         "--kit", str(workdir / "kit")], ("listening",), host="a")
    try:
        shutil.copytree(workdir / "kit", workdir / "dst-images")
        containers.append("lrt-dst")
        res = restore_dest(dest, workdir / "dst-images", workdir / "work-dst", "lrt-dst")  # no --lazy-pages
        assert res.returncode != 0
        log = (workdir / "work-dst" / "restore.log").read_text()
        assert "restores only with --lazy-pages" in log and "refusing an eager restore" in log
        assert runc("state", "lrt-dst").returncode != 0  # nothing runs
    finally:
        server.kill()


def test_an_unreachable_page_server_fails_the_restore_cleanly(hosts, workdir: Path, containers: list[str]) -> None:
    src, _ = run_source(workdir, containers)
    images, _ = checkpoint_source(workdir, "lrt-src")
    dest = src.copy(workdir / "dst", "lazyrestore-test/lrt-dst")
    dst_images = workdir / "dst-images"
    (dst_images / "lazyrestore").mkdir(parents=True)
    for name in ("inventory.img", "descriptors.json"):
        shutil.copy(images / name, dst_images / name)
    shutil.copy(images / "lazyrestore" / "secret", dst_images / "lazyrestore" / "secret")
    (dst_images / "lazyrestore" / "source.json").write_text(json.dumps(
        {"lazyrestore_source": 1, "kind": "lazyrestore", "address": f"{testhosts.ADDR_A}:9",
         "secret_file": "secret", "source_timeout": 2}))
    containers.append("lrt-dst")
    res = restore_dest(dest, dst_images, workdir / "work-dst", "lrt-dst", "--lazy-pages")
    assert res.returncode != 0
    log = (workdir / "work-dst" / "restore.log").read_text()
    assert f"could not fetch the checkpoint from {testhosts.ADDR_A}:9" in log
    assert runc("state", "lrt-dst").returncode != 0


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
