"""`python -m bench render`: BENCHMARKS.md and RELIABILITY.md rewritten from the committed summaries
(bench/results/*.json) alone, running nothing; --check only says whether they are what the summaries give.

BENCHMARKS.md: the local suite's report, then the marked sections in markers.SECTIONS order: remote, coldstart and
compress from their summaries, and the criu-version comparison (written by hand) kept from the file as it is.
RELIABILITY.md: scripts/reliability.py's render of bench/results/reliability.json (with fuzz, soak and zdtm).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from . import coldstart_report, compress_report, local_report, remote_report
from .markers import keep_remote, put_section
from .summaries import REPO, read_summary, summary_path

SECTIONS = (("remote", "remote-bench", remote_report.render_summary),
            ("coldstart", coldstart_report.SECTION, coldstart_report.render_summary),
            ("compress", compress_report.SECTION, compress_report.render_summary))


def benchmarks(previous: str) -> str:
    """BENCHMARKS.md from the summaries; previous (the file as it is) gives the hand-written sections."""
    text = keep_remote(previous, local_report.render(read_summary(summary_path("local"))))
    for suite, section, render in SECTIONS:
        path = summary_path(suite)
        if path.exists():
            text = put_section(text, section, render(read_summary(path)))
    return text


def reliability_script() -> ModuleType:
    """scripts/reliability.py (a script, not a package module) loaded as reliability_script."""
    spec = importlib.util.spec_from_file_location("reliability_script", REPO / "scripts" / "reliability.py")
    if spec is None or spec.loader is None:
        raise ImportError("scripts/reliability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reliability() -> str:
    """RELIABILITY.md from bench/results/reliability.json (and the fuzz, soak and zdtm summaries)."""
    script = reliability_script()
    return str(script.render(json.loads(script.RESULTS.read_text())))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench render", description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md", help="BENCHMARKS.md")
    p.add_argument("--reliability", type=Path, default=REPO / "RELIABILITY.md", help="RELIABILITY.md")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs from its render")
    args = p.parse_args(argv)
    previous = args.benchmarks.read_text() if args.benchmarks.exists() else ""
    wanted = {args.benchmarks: benchmarks(previous), args.reliability: reliability()}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"render: {path} is not what the summaries give", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
    print(f"render: {len(stale)} file(s) rewritten: {', '.join(map(str, stale)) or 'none'}")
    return 0
