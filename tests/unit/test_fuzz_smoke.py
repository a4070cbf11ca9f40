"""The libFuzzer harnesses of native/fuzz/ (frame parser, handshake, lazy index reader), as `make fuzz-smoke` runs
them: every committed seed replayed once, then about 20 s of fuzzing each (scripts/fuzz.py; about 80 s in all,
build included). A crash, a harness that did not run, or a harness that was not built fails.

Without clang the harnesses cannot be built: a skip on a developer's machine, a failure on CI (CI set), where
scripts/bootstrap.sh installs clang and libclang-rt-14-dev.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("frame", "handshake", "index")
BIN_DIR = REPO_ROOT / "build" / "native" / "fuzz"
CORPUS = REPO_ROOT / "native" / "fuzz" / "corpus"
SUMMARY = REPO_ROOT / "build" / "fuzz" / "smoke.json"


@pytest.fixture(scope="module")
def smoke() -> tuple[subprocess.CompletedProcess[str], dict]:
    if shutil.which("clang") is None:
        if os.environ.get("CI"):
            pytest.fail("clang is not installed on CI: scripts/bootstrap.sh should have installed clang and "
                        "libclang-rt-14-dev, which the fuzz harnesses need")
        pytest.skip("clang is not installed: the fuzz harnesses need clang and libclang-rt-14-dev (make bootstrap)")
    SUMMARY.unlink(missing_ok=True)
    p = subprocess.run(["make", "--no-print-directory", "fuzz-smoke"], cwd=REPO_ROOT, capture_output=True, text=True,
                       timeout=600)
    summary = json.loads(SUMMARY.read_text()) if SUMMARY.exists() else {}
    return p, summary


def _report(p: subprocess.CompletedProcess[str]) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-6000:]}--- stderr\n{p.stderr[-6000:]}"


def test_every_harness_is_built(smoke: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    p, _ = smoke
    missing = [t for t in TARGETS if not (BIN_DIR / f"fuzz_{t}").is_file()]
    assert not missing, f"fuzz harnesses not built: {missing}\n{_report(p)}"


def test_smoke_replays_the_corpus_and_fuzzes_without_a_crash(smoke: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    p, summary = smoke
    assert p.returncode == 0, _report(p)
    assert sorted(summary) == sorted(TARGETS), _report(p)
    for target in TARGETS:
        r = summary[target]
        seeds = sum(1 for f in (CORPUS / target).iterdir() if f.is_file())
        assert r["crashes"] == 0 and not r["artifacts"], f"fuzz_{target} crashed: {r}\n{_report(p)}"
        assert r["replay_ok"] and r["replayed"] == seeds > 0, f"fuzz_{target}: corpus replay {r}"
        assert r["executions"] > 1000 and r["exec_per_s"] > 0, f"fuzz_{target} barely ran: {r}"
        assert r["coverage"] > 0 and r["features"] > 0 and r["corpus_size"] >= seeds, f"fuzz_{target}: {r}"
