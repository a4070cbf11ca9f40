"""The bootstrap is idempotent: a second run changes nothing and is fast."""

from __future__ import annotations

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
    assert criu.parse_version(subprocess.run([binary.path, "--version"], capture_output=True, text=True).stdout) >= (4, 1)


def test_demo_round_trip() -> None:
    out = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "lazyrestore"), "demo", "--mib", "128", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json
    events = [json.loads(line) for line in out.stdout.splitlines()]
    sums = {(e["when"], e["role"]): e["checksum"] for e in events if e["event"] == "checksum"}
    assert sums[("before checkpoint", "main")] == sums[("after eager restore", "main")]
    assert sums[("before checkpoint", "main")] == sums[("after lazy restore", "main")]
    final = events[-1]
    assert final["event"] == "summary" and final["match"] is True
    assert final["lazy_resume_s"] > 0 and final["lazy_resident_s"] > 0
