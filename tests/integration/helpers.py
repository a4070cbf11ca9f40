"""Helpers for integration tests: the CLI as a runtime would call it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyrestore import sample

from .reaper import Reaper


@dataclass
class CliResult:
    code: int
    events: list[dict[str, Any]]
    stderr: str

    def last(self, name: str) -> dict[str, Any]:
        found = [e for e in self.events if e.get("event") == name]
        assert found, f"no {name!r} event in {self.events}; stderr: {self.stderr}"
        return found[-1]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    """Run `lazyrestore ARGS --json` in a subprocess, as a runtime would."""
    proc = subprocess.run([sys.executable, "-m", "lazyrestore.cli", *args, "--json"], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return CliResult(proc.returncode, events, proc.stderr)


def checkpoint(workload: sample.Workload, images: Path, *extra: str) -> dict[str, Any]:
    res = run_cli("checkpoint", "--pid", str(workload.pid), "--images", str(images), *extra)
    assert res.code == 0, res.stderr
    return res.last("summary")


def restore(images: Path, reaper: Reaper, workload: sample.Workload) -> sample.Workload:
    res = run_cli("restore", "--images", str(images))
    assert res.code == 0, res.stderr
    pid = reaper.add(res.last("summary")["pid"])
    return sample.Workload(pid, workload.log, workload.roles)
