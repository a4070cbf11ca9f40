"""Remote migration between the two test hosts, as the tests drive it: the source (`serve`/`migrate`) in host A,
`restore --from` in host B, memory compared by checksum."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lazyrestore import procs, sample, testhosts

from .helpers import Background, run_cli

SLOW_DRAIN = ("--drain-rate", "48M")  # keeps the drain running while the test acts


def start_on_a(workdir: Path, reaper, mib: int = 256, **kw: int | str) -> sample.Workload:
    with testhosts.inside(testhosts.HOST_A):
        w = sample.start(workdir, mib, **kw)
    reaper.add(w.pid)
    return w


class Source:
    """`lazyrestore serve` (or `migrate`) on host A, up to its "listening" event."""

    def __init__(self, args: list[str]) -> None:
        self.run = Background(args, ("listening",), host="a")
        self.listening = self.run.first("listening")
        self.address = f"{testhosts.ADDR_A}:{self.listening['port']}"

    def kill_server(self) -> None:
        """SIGKILL lr-pageserver: its sessions drop without a word."""
        pid = self.listening["server_pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while procs.is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> dict:
        """SIGTERM `serve` (it stops lr-pageserver); its summary."""
        if self.run.proc.poll() is None:
            self.run.proc.send_signal(signal.SIGTERM)
        self.result = self.run.finish(timeout=30)
        return self.result.last("summary") if self.result.code == 0 else {}


def serve_a(images: Path, port: int = 0, *extra: str) -> Source:
    return Source(["serve", "--images", str(images), "--listen", f"{testhosts.ADDR_A}:{port}", *extra])


def restore_on_b(source: str, images: Path, workdir: Path, *extra: str, until: tuple[str, ...] = ("resumed",)
                 ) -> Background:
    return Background(["restore", "--from", source, "--secret-file", str(images / "lazyrestore" / "secret"),
                       "--workdir", str(workdir), *extra], until, host="b")


def finished(run: Background) -> dict:
    res = run.finish()
    assert res.code == 0, res.stderr
    summary = res.last("summary")
    assert summary["lazy"] is True and summary["resident_s"] is not None
    return summary


def checksums(w: sample.Workload) -> dict[str, str]:
    return {role: r.checksum for role, r in w.request_report().items()}


def checkpoint_on_a(w: sample.Workload, images: Path) -> None:
    res = run_cli("checkpoint", "--pid", str(w.pid), "--images", str(images), host="a")
    assert res.code == 0, res.stderr
