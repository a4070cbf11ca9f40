"""What a bench ran on and how: the machine, CRIU and lazyrestore's commit (the "machine" of every summary's meta),
and the command line."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def command_line(name: str, argv: list[str]) -> str:
    """How bench name was run (`python -m bench NAME ...`), the interpreter relative to the repository."""
    return shlex.join([os.path.relpath(sys.executable, REPO), "-m", "bench", name, *argv])


def _first_line_with(path: str, key: str) -> str:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _command_output(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def commit(repo: Path) -> str:
    """The repository's HEAD, short, "(with uncommitted changes)" after it when the work tree has some."""
    head = _command_output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    return head + (" (with uncommitted changes)" if dirty not in ("", "unknown") else "")


def machine(criu_path: str, repo: Path) -> dict[str, str]:
    """Kernel, vCPUs, memory, CPU model, CRIU's version and path, Python, and lazyrestore's HEAD (marked when the
    work tree has uncommitted changes)."""
    mem_kb = _first_line_with("/proc/meminfo", "MemTotal").split()[0]
    criu_version = _command_output([criu_path, "--version"]).replace("\n", ", ").removeprefix("Version: ")
    return {
        "kernel": platform.release(),
        "nproc": str(len(os.sched_getaffinity(0))),
        "memory": f"{int(mem_kb) / (1 << 20):.1f} GiB" if mem_kb.isdigit() else mem_kb,
        "cpu": _first_line_with("/proc/cpuinfo", "model name"),
        "criu": f"{criu_version} ({criu_path})",
        "python": platform.python_version(),
        "lazyrestore": commit(repo),
    }
