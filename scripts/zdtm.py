"""`make zdtm`: CRIU's own zdtm lazy-pages suite with `lazyrestore lazy-pages` as the daemon and the plugin loaded.

The set is the one CRIU's CI runs in lazy mode (scripts/ci/run-ci-tests.sh): tests named like
`maps0|uffd-events|lazy-thp|futex|fork` minus maps04, cmdlinenv00 and maps007, in three modes:
  lazy-pages         `criu dump`, then `criu lazy-pages` + `criu restore --lazy-pages` (local)
  remote-lazy-pages  `criu dump`, then `criu page-server --lazy-pages` + `criu lazy-pages --page-server`
  lazy-migrate       `criu dump --lazy-pages` + `criu lazy-pages --page-server`, in the ns flavour (the host
                     flavour fails for stock CRIU too: the restored pids clash with the running test's)
  lazy-pages-slow-drain  lazy-pages with lazyrestore's drain capped at 1 MB/s: the tests fault most pages in
CRIU's `--tls` runs are left out: `lazyrestore lazy-pages` refuses CRIU's TLS options (README).

zdtm runs from a copy of the bootstrap's CRIU tree (build/zdtm/criu), never from the tree itself. Two documented
changes are made to the copy's test/zdtm.py (PATCHES), each checked to apply exactly once:
  - the tests run as root, not as uid 18943: root here lacks CAP_SYS_RESOURCE and CRIU cannot dump another
    user's task ("Can't get rlimit 0: Operation not permitted");
  - CRIU_LIBS_DIR, which zdtm points at its own test plugins, points at a dir holding this checkout's plugin
    (daemon `lazyrestore`) or an empty one (daemon `stock`, CRIU as shipped).
`--criu-bin` is a wrapper that sends `lazy-pages` to this checkout's `lazyrestore lazy-pages` (daemon
`lazyrestore`) and every other action to the installed criu. Two sysctls are raised for the runs only and put
back: vm.unprivileged_userfaultfd=1 (the uns flavour restores inside a user namespace; CRIU's CI sets it too) and,
for the remote modes, fs.pipe-max-size=4 MiB (CRIU's page server needs it).

Only the tests of the set are built (the whole zdtm tree needs libaio and libnl headers it does not use); a test
that does not build, or that zdtm does not report, is a failure. Results: build/zdtm/results.json and a table;
`--record` also writes bench/results/zdtm.json (its summary), which RELIABILITY.md shows (scripts/reliability.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "build" / "zdtm"
RECORD = REPO / "bench" / "results" / "zdtm.json"
CRIU_TREE = Path(os.environ.get("CRIU_TREE", "/var/cache/lazyrestore/criu"))
LAZY_TESTS = r".*(maps0|uffd-events|lazy-thp|futex|fork).*"
LAZY_EXCLUDE = ("maps04", "cmdlinenv00", "maps007")
MODES = {
    "lazy-pages": ["--lazy-pages"],
    "remote-lazy-pages": ["--remote-lazy-pages"],
    "lazy-migrate": ["--lazy-migrate", "-f", "ns"],
    "lazy-pages-slow-drain": ["--lazy-pages"],
}
# Options given to lazyrestore's daemon in a mode: the background drain capped at 1 MB/s, so that the tests' own
# accesses fault most pages in (CRIU's daemon has no such option: the mode is lazyrestore's only).
DAEMON_OPTIONS = {"lazy-pages-slow-drain": ["--drain-rate", "1M"]}
REMOTE_MODES = ("remote-lazy-pages", "lazy-migrate")
PIPE_MAX_SIZE = Path("/proc/sys/fs/pipe-max-size")
PIPE_MAX_FOR_CRIU = 4 << 20
# The uns flavour's restore opens userfaultfd inside a user namespace: CRIU's CI sets this knob to 1 too.
UNPRIVILEGED_UFFD = Path("/proc/sys/vm/unprivileged_userfaultfd")
MODE_TIMEOUT = 30 * 60

# (what and why, text in CRIU 4.2's test/zdtm.py, its replacement). Each must match exactly once.
PATCHES = (
    ("tests run as root: CRIU cannot dump another user's task without CAP_SYS_RESOURCE",
     "        if not test_flag(self.__desc, 'suid'):\n",
     "        if not test_flag(self.__desc, 'suid') and not os.environ.get('LR_ZDTM_AS_ROOT'):\n"),
    ("CRIU_LIBS_DIR names the plugin dir lazyrestore's run gives",
     "PLUGINS_DIR = os.path.join(\n",
     "PLUGINS_DIR = os.environ.get('LR_ZDTM_PLUGINS_DIR') or os.path.join(\n"),
)


class HarnessError(Exception):
    """The suite could not be prepared or run: what failed and how to see why."""


@dataclass(frozen=True)
class Outcome:
    test: str
    result: str  # "pass", "fail", "skip: REASON" or "missing" (zdtm did not report it)


def patch(text: str, patches: tuple[tuple[str, str, str], ...] = PATCHES) -> str:
    for why, old, new in patches:
        if text.count(old) != 1:
            raise HarnessError(f"zdtm.py: cannot apply '{why}': expected the line {old.strip()!r} exactly once, "
                               f"found it {text.count(old)} times (has zdtm.py changed in this CRIU?)")
        text = text.replace(old, new)
    return text


def criu_version(tree: Path) -> str:
    header = (tree / "criu" / "include" / "version.h").read_text()
    found = re.search(r'#define CRIU_VERSION "([^"]+)"', header)
    if not found:
        raise HarnessError(f"{tree}/criu/include/version.h names no CRIU_VERSION: is {tree} a built CRIU tree?")
    return found[1]


def prepare_tree(tree: Path, work: Path) -> Path:
    """WORK/criu: a copy of TREE with zdtm.py patched; copied again only when TREE is another tree or version."""
    if not (tree / "test" / "zdtm.py").is_file():
        raise HarnessError(f"{tree}/test/zdtm.py not found: run `make bootstrap` (it builds CRIU in {tree})")
    stamp, copy = work / "criu.stamp", work / "criu"
    want = f"{tree.resolve()} {criu_version(tree)}\n"
    if stamp.exists() and stamp.read_text() == want and (copy / "test" / "zdtm.py").exists():
        return copy
    shutil.rmtree(copy, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tree.resolve(), copy, symlinks=True)
    zdtm = copy / "test" / "zdtm.py"
    zdtm.write_text(patch(zdtm.read_text()))
    stamp.write_text(want)
    return copy


def select_tests(test_dir: Path, pattern: str = LAZY_TESTS, exclude: tuple[str, ...] = LAZY_EXCLUDE) -> list[str]:
    """zdtm names (zdtm/static/maps00, ...) of the set, from the sources: zdtm lists only built tests."""
    names = []
    for sub in ("static", "transition"):
        for src in sorted((test_dir / "zdtm" / sub).glob("*.c")):
            name = f"zdtm/{sub}/{src.stem}"
            if re.fullmatch(pattern, name) and src.stem not in exclude:
                names.append(name)
    return names


def run_make(args: list[str], cwd: Path, what: str) -> None:
    res = subprocess.run(["make", "-s", *args], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "MAKEFLAGS": ""})
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-15:])
        raise HarnessError(f"building {what} failed (make {' '.join(args)} in {cwd}):\n{tail}")


def build_tests(test_dir: Path, tests: list[str]) -> None:
    run_make(["umount2", "zdtm_ct"], test_dir, "zdtm's helpers")
    run_make(["-C", "zdtm/lib"], test_dir, "zdtm's test library")
    for sub in ("static", "transition"):
        names = [t.rsplit("/", 1)[1] for t in tests if t.startswith(f"zdtm/{sub}/")]
        if names:
            run_make(["-j2", "-C", f"zdtm/{sub}", *names], test_dir, f"zdtm/{sub} tests {' '.join(names)}")


def write_wrapper(work: Path, daemon: str, criu: str, lazyrestore: str, extra: list[str]) -> Path:
    wrapper = work / f"criu-{daemon}"
    body = ["#!/bin/sh", f"# zdtm's --criu-bin for daemon {daemon} (written by scripts/zdtm.py)"]
    if daemon == "lazyrestore":  # each call recorded: the count shows lazyrestore's daemon did run
        body.append(f'if [ "$1" = lazy-pages ]; then shift; echo "$PWD $*" >> {calls_file(work, daemon)}; '
                    f'exec {lazyrestore} lazy-pages "$@" {" ".join(extra)}; fi')
    body.append(f'exec {criu} "$@"')
    wrapper.write_text("\n".join(body) + "\n")
    wrapper.chmod(0o755)
    return wrapper


def calls_file(work: Path, daemon: str) -> Path:
    return work / f"lazy-pages-calls-{daemon}.log"


def plugin_dir(work: Path, daemon: str, plugin: Path) -> Path:
    d = work / f"plugins-{daemon}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    if daemon == "lazyrestore":
        if not plugin.is_file():
            raise HarnessError(f"{plugin} not found: run `make build` first")
        (d / plugin.name).symlink_to(plugin)
    return d


def parse_tap(text: str, tests: list[str]) -> list[Outcome]:
    """zdtm's TAP report: `ok N - NAME`, `not ok N - NAME ...`, `ok N - NAME # SKIP REASON`."""
    seen: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"(not ok|ok) \d+ - (\S+)(?:.*?# SKIP (.*))?", line)
        if m:
            result = "pass" if m[1] == "ok" else "fail"
            seen[m[2]] = f"skip: {m[3].strip()}" if m[3] is not None and result == "pass" else result
    return [Outcome(t, seen.get(t, "missing")) for t in tests]


def sysctls_set(wanted: dict[Path, int]) -> dict[Path, int]:
    """Raise each sysctl to at least its wanted value; the old values of those changed, to put back."""
    old = {}
    for path, value in wanted.items():
        now = int(path.read_text())
        if now < value:
            path.write_text(str(value))
            old[path] = now
    return old


def restore_sysctls(old: dict[Path, int]) -> None:
    for path, value in old.items():
        path.write_text(str(value))


def run_mode(test_dir: Path, tests: list[str], mode: str, daemon: str, wrapper: Path, plugins: Path,
             report: Path) -> tuple[list[Outcome], float]:
    shutil.rmtree(report, ignore_errors=True)
    cmd = [sys.executable, "zdtm.py", "run", "--keep-going", "-p", "2", "--report", str(report),
           "--criu-bin", str(wrapper), *MODES[mode]]
    for t in tests:
        cmd += ["-t", t]
    # zdtm runs each test as `./zdtm.py` (#!/usr/bin/env python3): this venv's python (protobuf, yaml) first.
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    env = {**os.environ, "PATH": path, "LR_ZDTM_AS_ROOT": "1", "LR_ZDTM_PLUGINS_DIR": str(plugins)}
    log = report.with_suffix(".log")
    print(f"zdtm: {daemon} {mode}: {len(tests)} tests, log {log}", flush=True)
    old = sysctls_set({UNPRIVILEGED_UFFD: 1, **({PIPE_MAX_SIZE: PIPE_MAX_FOR_CRIU} if mode in REMOTE_MODES else {})})
    start = time.monotonic()
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=test_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                proc.wait(timeout=MODE_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                print(f"zdtm: {daemon} {mode}: killed after {MODE_TIMEOUT} s", flush=True)
    finally:
        restore_sysctls(old)
    taps = sorted(report.glob("criu-testreport*.tap"))
    outcomes = parse_tap("\n".join(t.read_text() for t in taps), tests)
    return outcomes, time.monotonic() - start


def table(results: dict[str, dict[str, dict[str, str]]], tests: list[str]) -> str:
    """Markdown: one row per test, one column per (mode, daemon)."""
    cols = [(mode, daemon) for mode in MODES for daemon in ("stock", "lazyrestore")
            if daemon in results.get(mode, {})]
    head = "| test | " + " | ".join(f"{m} ({d})" for m, d in cols) + " |"
    lines = [head, "|" + " --- |" * (len(cols) + 1)]
    for t in tests:
        cells = [results[m][d].get(t, "") for m, d in cols]
        lines.append(f"| {t.split('/', 1)[1]} | " + " | ".join(c.split(":")[0] for c in cells) + " |")
    totals = []
    for m, d in cols:
        got = list(results[m][d].values())
        totals.append(f"{got.count('pass')}/{len([g for g in got if not g.startswith('skip')])}")
    lines.append("| **passed** | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def summary_table(results: dict[str, dict[str, dict[str, str]]], seconds: dict[str, float]) -> str:
    """Markdown: one row per mode; per daemon the tests passed of those that ran, and the run's seconds."""
    daemons = [d for d in ("stock", "lazyrestore") if any(d in r for r in results.values())]
    lines = ["| mode | " + " | ".join(f"{d}: passed | {d}: s" for d in daemons) + " | skipped (why) |",
             "|---|" + "---:|---:|" * len(daemons) + "---|"]
    for mode, by_daemon in results.items():
        cells, skips = [], set()
        for d in daemons:
            got = by_daemon.get(d)
            if got is None:
                cells += ["–", "–"]
                continue
            ran = [r for r in got.values() if not r.startswith("skip")]
            cells += [f"{ran.count('pass')}/{len(ran)}", f"{seconds.get(f'{mode}/{d}', 0):.0f}"]
            skips |= {f"{t.split('/', 1)[1]} ({r.split(': ', 1)[1]})" for t, r in got.items() if r.startswith("skip")}
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {', '.join(sorted(skips)) or '–'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--daemons", default="lazyrestore", help="comma-separated: lazyrestore, stock")
    ap.add_argument("--tests", default=LAZY_TESTS, help="regex over zdtm names (default: CRIU CI's lazy set)")
    ap.add_argument("--record", action="store_true",
                    help=f"also write the results to {RECORD.relative_to(REPO)} (RELIABILITY.md and the README show them)")
    ap.add_argument("--criu", default=shutil.which("criu") or "/usr/local/sbin/criu", help="the installed criu")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    daemons = [d for d in args.daemons.split(",") if d]
    bad = [m for m in modes if m not in MODES] + [d for d in daemons if d not in ("lazyrestore", "stock")]
    if bad or not modes or not daemons:
        ap.error(f"unknown mode or daemon {bad}: modes are {', '.join(MODES)}; daemons lazyrestore, stock")
    try:
        return run(modes, daemons, args.tests, args.criu, args.record)
    except HarnessError as exc:
        print(f"zdtm: error: {exc}", file=sys.stderr)
        return 2


def run(modes: list[str], daemons: list[str], pattern: str, criu: str, record: bool) -> int:
    copy = prepare_tree(CRIU_TREE, WORK)
    test_dir = copy / "test"
    tests = select_tests(test_dir, pattern)
    if not tests:
        raise HarnessError(f"no zdtm test matches {pattern!r}")
    build_tests(test_dir, tests)
    results: dict[str, dict[str, dict[str, str]]] = {}
    seconds: dict[str, float] = {}
    daemon_runs: dict[str, int] = {}
    failed = []
    for daemon in daemons:
        plugins = plugin_dir(WORK, daemon, REPO / "build" / "native" / "lazyrestore_plugin.so")
        for mode in modes:
            if daemon == "stock" and mode in DAEMON_OPTIONS:
                continue
            wrapper = write_wrapper(WORK, daemon, criu, str(REPO / ".venv" / "bin" / "lazyrestore"),
                                    DAEMON_OPTIONS.get(mode, []))
            calls_file(WORK, daemon).unlink(missing_ok=True)
            outcomes, secs = run_mode(test_dir, tests, mode, daemon, wrapper, plugins,
                                      WORK / f"report-{daemon}-{mode}")
            results.setdefault(mode, {})[daemon] = {o.test: o.result for o in outcomes}
            calls = calls_file(WORK, daemon)
            daemon_runs[f"{mode}/{daemon}"] = len(calls.read_text().splitlines()) if calls.exists() else 0
            seconds[f"{mode}/{daemon}"] = round(secs, 1)
            bad = [o for o in outcomes if o.result in ("fail", "missing")]
            ran = [o for o in outcomes if not o.result.startswith("skip")]
            if daemon == "lazyrestore" and ran and not daemon_runs[f"{mode}/{daemon}"]:
                bad.append(Outcome("(lazyrestore lazy-pages never ran)", "fail"))
            print(f"zdtm: {daemon} {mode}: {len(ran) - len(bad)}/{len(ran)} passed, "
                  f"{len(outcomes) - len(ran)} skipped, {secs:.0f} s, "
                  f"{daemon_runs[f'{mode}/{daemon}']} runs of lazyrestore lazy-pages"
                  + "".join(f"\n  {o.result.upper()} {o.test}" for o in bad), flush=True)
            failed += [f"{daemon} {mode} {o.test}" for o in bad if daemon == "lazyrestore"]
    summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"kernel {os.uname().release}, {os.cpu_count()} CPUs", "criu": criu_version(CRIU_TREE),
               "tests": tests, "results": results, "seconds": seconds, "lazyrestore_lazy_pages_runs": daemon_runs,
               "table": table(results, tests), "summary": summary_table(results, seconds)}
    text = json.dumps(summary, indent=1) + "\n"
    (WORK / "results.json").write_text(text)
    if record:
        RECORD.write_text(text)
    print(summary["table"], summary["summary"], sep="\n\n")
    if failed:
        print(f"zdtm: {len(failed)} lazyrestore run(s) failed; logs in {WORK}/report-*.log and "
              f"{WORK}/report-*/", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
