"""The bootstrap is idempotent: a second run changes nothing and is fast."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from lazyrestore import criu
from lazyrestore.paths import REPO_ROOT


def test_second_bootstrap_is_fast_and_changes_nothing() -> None:
    binary = criu.find_criu()
    stamp = REPO_ROOT / ".venv" / ".lazyrestore-stamp"
    before = (os.stat(binary.path).st_mtime_ns, stamp.stat().st_mtime_ns)
    t0 = time.monotonic()
    out = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "bootstrap.sh")], capture_output=True, text=True,
                         timeout=120)
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert "criu check passed" in out.stdout
    for word in ("installing", "building", "fetching", "setting up"):
        assert word not in out.stdout, f"second run did work: {out.stdout}"
    assert elapsed < 10, f"second bootstrap took {elapsed:.1f} s"
    assert (os.stat(binary.path).st_mtime_ns, stamp.stat().st_mtime_ns) == before
    assert Path(binary.path) == Path("/usr/local/sbin/criu") or os.environ.get("LAZYRESTORE_CRIU")
    version = criu.parse_version(subprocess.run([binary.path, "--version"], capture_output=True, text=True).stdout)
    assert version is not None and version >= criu.MIN_VERSION


def test_demo_migrates_between_test_hosts_and_cleans_up() -> None:
    env = {**os.environ, "LAZYRESTORE_TESTHOSTS_PREFIX": "lrdemo"}  # apart from the other tests' hosts
    shm_before = set(os.listdir("/dev/shm"))
    out = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "lazyrestore"), "demo", "--mib", "128", "--json"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    sums = {(e["when"], e["role"]): e["checksum"] for e in events if e["event"] == "checksum"}
    before = sums[("before migrating", "main")]
    assert sums[("on B after the lazy migration", "main")] == before
    assert sums[("on A after the eager migration", "main")] == before
    final = events[-1]
    assert final["event"] == "summary" and final["match"] is True
    assert final["lazy"]["resume_s"] > 0 and final["lazy"]["resident_s"] > 0 and final["eager"]["resume_s"] > 0
    assert "resumed" in {e["event"] for e in events} and "fetched" in {e["event"] for e in events}
    assert not any(n.startswith("lrdemo-") for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else []))
    assert not [n for n in set(os.listdir("/dev/shm")) - shm_before if n.startswith("lazyrestore-demo-")]


def test_a_machine_with_an_older_criu_is_upgraded(tmp_path: Path) -> None:
    """A criu older than the series the bootstrap builds (a stand-in that reports 4.1.1) is replaced by it; the
    tree already built is reused, and the version comes from the newer suites' source index."""
    old = tmp_path / "criu"
    old.write_text("#!/bin/sh\necho 'Version: 4.1.1'\n")
    old.chmod(0o755)
    env = {**os.environ, "LAZYRESTORE_CRIU": str(old)}
    out = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "bootstrap.sh")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    installed = criu.find_criu().version  # the bootstrap's own, /usr/local/sbin/criu
    assert f"upgraded criu 4.1.1 -> {installed}" in out.stdout, out.stdout
    assert "building" not in out.stdout, "the tree of the same version was built again"
    version = criu.parse_version(subprocess.run([str(old), "--version"], capture_output=True, text=True).stdout)
    assert version is not None and version >= criu.MIN_VERSION and ".".join(map(str, version)) == installed
