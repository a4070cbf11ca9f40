"""Every value-taking option of every subcommand, given invalid values (no root or CRIU needed).

Each case must end with a non-zero exit and one message on stderr that names the option
and says what it expected, before anything runs: the tripwires below fail the test if a
case gets as far as the root check, CRIU, a daemon, a test host or an exec. Cases that
tests/unit/test_cli.py and test_remote_args.py already cover are not repeated here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from lazyrestore import cli, criu, dumpindex, paths, procs, serve, status, testhosts
from lazyrestore.errors import LazyRestoreError


class Case(NamedTuple):
    """argv for `lazyrestore`, with {placeholders} for paths and pids (see `places`); what stderr must say."""

    argv: tuple[str, ...]
    option: str
    expected: str


Bad = tuple[str, str, str]  # (id, value, what the message must say was expected)


def bad(command: str, option: str, values: list[Bad], context: str = "") -> list[Any]:
    """A case per value: `lazyrestore COMMAND CONTEXT OPTION=VALUE`, to be refused naming OPTION.
    (With "=", argparse takes "-4K" or "" as the value, not as an option or a missing value.)"""
    words = [*command.split(), *context.split()]
    return [pytest.param(Case((*words, f"{option}={value}"), option, expected),
                         id=f"{command.replace(' ', '-')}-{option.lstrip('-')}-{name}")
            for name, value, expected in values]


def numbers(expected: str, *named: tuple[str, str]) -> list[Bad]:
    return [(name, value, expected) for name, value in named]


def existing_dir(expected: str) -> list[Bad]:
    return [("missing", "{missing}", expected), ("a-file", "{file}", expected),
            ("empty", "", "expected a directory path")]


NEW_DIR = "expected a new or empty directory"
NEW_IMAGES: list[Bad] = [("a-file", "{file}", NEW_DIR), ("not-empty", "{full}", NEW_DIR),
                         ("parent-missing", "{deep}", NEW_DIR), ("under-a-file", "{under_file}", NEW_DIR),
                         ("empty", "", "expected a directory path")]
MAKEABLE_DIR: list[Bad] = [("a-file", "{file}", "expected a directory"),
                           ("under-a-file", "{under_file}", "expected a directory"),
                           ("empty", "", "expected a directory path")]
NOT_A_PID = numbers("positive whole number", ("zero", "0"), ("negative", "-5"), ("text", "x"), ("fraction", "1.5"),
                    ("empty", ""))
NO_SUCH_PID = [("beyond-pid-max", "4194304", "from 1 to 4194303"),
               ("absurd", "99999999999999999999999", "from 1 to 4194303"),
               ("not-running", "{free_pid}", "expected the host pid of a running process")]
BAD_ADDRESSES: list[Bad] = [
    ("999.1.1.1", "999.1.1.1:7411", "not an IPv4 address"),
    ("spaces", "host name with spaces:7411", "white space"),
    ("empty", "", "HOST:PORT"),
    ("no-port", "10.231.0.1", "HOST:PORT"),
    ("empty-port", "10.231.0.1:", "HOST:PORT"),
    ("port-65536", "10.231.0.1:65536", "port 0 to 65535"),
    ("port-negative", "10.231.0.1:-1", "port 0 to 65535"),
    ("port-text", "10.231.0.1:abc", "HOST:PORT"),
    ("ipv6-no-port", "[::1]", "HOST:PORT"),
    ("slash", "bad/host:7411", "host name"),
]
SECRET = "expected a copy of the checkpoint's lazyrestore/secret"
FROM = "--from 10.231.0.1:7411 --secret-file {secret} --workdir {missing}"
LAZY = "--images {dir} --lazy"
LISTEN = "--listen 127.0.0.1:0"

EXTERNAL = "expected CRIU's KIND[ID] or KIND[ID]:VALUE without spaces"
BAD_EXTERNAL: list[Bad] = [("empty", "", EXTERNAL), ("no-brackets", "veth", EXTERNAL), ("space", "veth[eth0]:a b", EXTERNAL),
                           ("upper-kind", "VETH[eth0]", EXTERNAL), ("empty-id", "veth[]:x", EXTERNAL),
                           ("empty-value", "veth[eth0]:", EXTERNAL), ("newline", "veth[eth0]:x\ny", EXTERNAL)]

BAD_LOCK: list[Bad] = [("other-word", "pf", "invalid choice"), ("empty", "", "invalid choice"),
                       ("upper", "IPTABLES", "invalid choice")]

CASES = [
    *bad("checkpoint", "--external", BAD_EXTERNAL, "--pid {self_pid} --images {missing}"),
    *bad("migrate", "--external", BAD_EXTERNAL, "--pid {self_pid} --images {missing} --listen 10.231.0.1:7411"),
    *bad("restore", "--external", BAD_EXTERNAL, LAZY),
    *bad("checkpoint", "--network-lock", BAD_LOCK, "--pid {self_pid} --images {missing}"),
    *bad("migrate", "--network-lock", BAD_LOCK, "--pid {self_pid} --images {missing} --listen 10.231.0.1:7411"),
    *bad("restore", "--network-lock", BAD_LOCK, LAZY),
    # checkpoint (0, -3, abc, 1.5 and "" for --pid are in test_cli.py)
    *bad("checkpoint", "--pid", NO_SUCH_PID, "--images {missing}"),
    *bad("checkpoint", "--images", NEW_IMAGES, "--pid {self_pid}"),
    # restore from local images
    *bad("restore", "--images", existing_dir("expected a checkpoint directory")),
    *bad("restore", "--images", existing_dir("expected a checkpoint directory")[:1], "--lazy"),
    *bad("restore", "--workdir", MAKEABLE_DIR, LAZY),
    *bad("restore", "--fault-around", numbers(
        "power of two from 4K to 64M", ("zero", "0"), ("not-a-power-of-two", "3K"), ("too-large", "128M"),
        ("text", "abc"), ("fraction", "1.5K"), ("negative", "-4K"), ("empty", "")), LAZY),
    *bad("restore", "--chunk", numbers(
        "from 4K to 256M", ("zero", "0"), ("below-4K", "1K"), ("above-256M", "1G"), ("text", "x"),
        ("negative", "-1"), ("fraction", "1.5M"), ("absurd", "99999999999999999999G"), ("empty", "")), LAZY),
    *bad("restore", "--prefetch", [("missing-file", "{missing}", "auto, off or an existing working-set file"),
                                   ("a-dir", "{dir}", "auto, off or an existing working-set file"),
                                   ("empty", "", "auto, off or an existing working-set file"),
                                   ("other-word", "on", "auto, off or an existing working-set file")], LAZY),
    *bad("restore", "--compress", [("other-word", "yes", "invalid choice"), ("empty", "", "invalid choice")], LAZY),
    *bad("restore", "--drain-rate", numbers(
        "to 1024G", ("negative", "-1"), ("text", "fast"), ("fraction", "1.5M"), ("absurd", "99999999999999999999G"),
        ("unicode-digits", "\u0663M")), LAZY),
    # restore --from: the address, the secret, the work dir
    *bad("restore", "--from", [*BAD_ADDRESSES, ("port-0", "10.231.0.1:0", "give the page server's port"),
                               ("wildcard", "0.0.0.0:7411", "give the page server's address")],
         "--secret-file {secret} --workdir {missing}"),
    *bad("restore", "--source-timeout", [
        *NOT_A_PID, ("above-a-day", "86401", "from 1 to 86400"), ("absurd", "99999999999999999999", "from 1 to 86400")],
         FROM),
    *bad("restore", "--secret-file", [("missing", "{missing}", SECRET), ("a-dir", "{dir}", SECRET),
                                      ("empty", "", "expected a file path"),
                                      ("readable-by-others", "{open_secret}", "expected 0600"),
                                      ("wrong-size", "{short_secret}", "expected 32")],
         "--from 10.231.0.1:7411 --workdir {missing}"),
    *bad("restore", "--workdir", MAKEABLE_DIR[:1], "--from 10.231.0.1:7411 --secret-file {secret}"),
    *bad("restore --prepare", "--images", NEW_IMAGES[:2], "--from 10.231.0.1:7411 --secret-file {secret}"),
    *bad("restore --prepare", "--secret-file", [("missing", "{missing}", SECRET)],
         "--from 10.231.0.1:7411 --images {dir}"),
    *bad("restore --prepare", "--from", BAD_ADDRESSES[:1], "--secret-file {secret} --images {dir}"),
    # status, inspect (a missing dir and a blank path are in test_cli.py), index
    *bad("status", "--images", existing_dir("expected a checkpoint directory")),
    *bad("abort", "--images", existing_dir("expected a live migration's images directory"), "--kill-source"),
    *bad("status", "--workdir", existing_dir("expected a lazy restore's work dir")),
    *bad("inspect", "--images", existing_dir("expected a checkpoint directory")[1:]),
    *bad("index", "--images", existing_dir("expected a directory of CRIU images")),
    # demo (--mib -1 is in test_cli.py)
    *bad("demo", "--mib", [*NOT_A_PID[:1], *NOT_A_PID[2:], ("absurd", "99999999999999", "this machine's memory")]),
    *bad("demo", "--workdir", MAKEABLE_DIR),
    # serve
    *bad("serve", "--images", existing_dir("expected a checkpoint directory"), LISTEN),
    *bad("serve", "--listen", BAD_ADDRESSES, "--images {dir}"),
    *bad("serve", "--kit", [*NEW_IMAGES[:2], NEW_IMAGES[-1]], f"--images {{dir}} {LISTEN}"),
    *bad("serve", "--kit", [("with-a-wildcard-address", "{missing}", "give this host's address")],
         "--images {dir} --listen 0.0.0.0:0"),
    *bad("serve", "--podman-archive", [("missing", "{missing}", "expected the archive of `podman container"),
                                       ("a-dir", "{dir}", "expected the archive of `podman container"),
                                       ("not-a-tar", "{file}", "not a tar archive (plain, gzip or zstd)"),
                                       ("empty", "", "expected a file path")], LISTEN),
    *bad("serve", "--containerd-image", [("missing", "{missing}", "expected the archive of `ctr images export"),
                                         ("a-dir", "{dir}", "expected the archive of `ctr images export"),
                                         ("not-a-tar", "{file}", "not a tar archive"),
                                         ("empty", "", "expected a file path")], LISTEN),
    *bad("serve", "--unpack", [*NEW_IMAGES[:2], NEW_IMAGES[-1]], f"--podman-archive {{file}} {LISTEN}"),
    *bad("serve", "--unpack", [("without-an-archive", "{missing}", "only with --podman-archive")],
         f"--images {{dir}} {LISTEN}"),
    *bad("serve", "--kit", [("existing-file", "{file}", "expected a new file in an existing directory"),
                            ("parent-missing", "{deep}", "expected a new file in an existing directory")],
         f"--podman-archive {{file}} --unpack {{missing}} {LISTEN}"),
    # migrate
    *bad("migrate", "--pid", [*NOT_A_PID, *NO_SUCH_PID], f"--images {{missing}} {LISTEN}"),
    *bad("migrate", "--images", NEW_IMAGES, f"--pid {{self_pid}} {LISTEN}"),
    *bad("migrate", "--listen", BAD_ADDRESSES[:6], "--pid {self_pid} --images {missing}"),
    *bad("migrate", "--secret-file", [("missing", "{missing}", "expected a secret shared with the destination"),
                                      ("readable-by-others", "{open_secret}", "expected 0600"),
                                      ("wrong-size", "{short_secret}", "expected 32")],
         f"--pid {{self_pid}} --images {{missing}} {LISTEN}"),
    # testhosts
    *bad("testhosts up", "--delay", numbers("milliseconds from 0 to 10000", ("negative", "-1"), ("text", "abc"),
                                            ("nan", "nan"), ("infinite", "inf"), ("too-long", "10001"), ("empty", ""))),
    *bad("testhosts up", "--rate", numbers("Mbit/s from 0 to 34359", ("negative", "-1"), ("text", "x"),
                                           ("nan", "nan"), ("too-fast", "34360"), ("absurd", "1e300"), ("empty", ""))),
    *bad("testhosts service", "--address", [
        ("host-a", "10.231.0.1", "expected a free host address in 10.231.0.0/24"),
        ("other-net", "10.9.0.10", "expected a free host address in 10.231.0.0/24"),
        ("broadcast", "10.231.0.255", "expected a free host address"), ("text", "redis", "expected an IPv4 address"),
        ("ipv6", "fd00::10", "expected an IPv4 address"), ("empty", "", "expected an IPv4 address")], "", ),
    *bad("testhosts service", "--host", [("c", "c", "expected a test host, a or b"),
                                         ("empty", "", "expected a test host, a or b")], "--address 10.231.0.10"),
    *bad("testhosts service", "--workdir", [("empty", "", "expected a directory path")], "--address 10.231.0.10"),
    *[pytest.param(Case(("testhosts", "exec", value, "--", "true"), "host", "expected a test host, a or b"),
                   id=f"testhosts-exec-host-{name}") for name, value in [("c", "c"), ("empty", ""), ("ab", "ab")]],
    # report: the run dir (positional), the checkpoint, the PNG
    *[pytest.param(Case(("report", value), "RUN_DIR", expected), id=f"report-RUN_DIR-{name}")
      for name, value, expected in [*existing_dir("expected a lazy restore's run dir"),
                                    ("not-a-run-dir", "{dir}", "expected a lazy restore's run dir")]],
    *bad("report", "--images", [*existing_dir("expected a checkpoint directory"),
                                ("no-index", "{full}", "expected a checkpoint directory")]),
    *bad("report", "--output", [("empty", "", "expected a file path"),
                                *[(name, value, "expected a .png file in an existing directory") for name, value in [
                                    ("not-png", "{dir}/report.jpg"), ("a-dir", "{dir}"),
                                    ("dir-named-png", "{png_dir}"), ("parent-missing", "{missing}/report.png"),
                                    ("under-a-file", "{file}/report.png")]]], "{dir}"),
    # lazy-pages --page-server: CRIU's --address and --port, checked before the dump is indexed
    *bad("lazy-pages", "--port", [
        ("zero", "0", "give the page server's port"), ("65536", "65536", "port 0 to 65535"),
        *numbers("PORT from 1 to 65535", ("text", "abc"), ("negative", "-1"), ("empty", ""))],
         "--page-server --address 10.0.0.1 -D {dir}"),
    *bad("lazy-pages", "--address", [
        ("999.1.1.1", "999.1.1.1", "not an IPv4 address"), ("spaces", "host name", "white space"),
        ("empty", "", "--address ADDR"), ("wildcard", "0.0.0.0", "give the page server's address")],
         "--page-server --port 27000 -D {dir}"),
]


def free_pid() -> int:
    """A pid no process has, below the kernel's limit."""
    pid = cli.PID_MAX_LIMIT - 1
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


def places(tmp_path: Path) -> dict[str, str]:
    """The paths and pids a case's argv may name."""
    (tmp_path / "file").write_text("not a directory\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "core-1.img").write_bytes(b"x")
    secrets = {"secret": (32, 0o600), "open_secret": (32, 0o644), "short_secret": (5, 0o600)}
    for name, (size, mode) in secrets.items():
        (tmp_path / name).write_bytes(b"s" * size)
        (tmp_path / name).chmod(mode)
    names = ("file", "dir", "full", "missing", *secrets)
    found = {name: str(tmp_path / name) for name in names}
    (tmp_path / "dir.png").mkdir()
    found |= {"deep": str(tmp_path / "no" / "such" / "dir"), "under_file": str(tmp_path / "file" / "sub"),
              "png_dir": str(tmp_path / "dir.png")}
    return found | {"free_pid": str(free_pid()), "self_pid": str(os.getpid())}


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything that would start to act fails the test: validation must come first."""
    def reached(what: str) -> Any:
        def trip(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"an invalid value got as far as {what}")
        return trip
    monkeypatch.setattr(procs, "require_root", reached("the root check"))
    monkeypatch.setattr(criu, "find_criu", reached("finding CRIU"))
    monkeypatch.setattr(testhosts, "_require_root", reached("the test hosts' root check"))
    monkeypatch.setattr(testhosts, "enter", reached("entering a test host"))
    monkeypatch.setattr(serve, "PageServer", reached("starting lr-pageserver"))
    monkeypatch.setattr(status, "exec_lazyd", reached("exec of lr-lazyd"))
    monkeypatch.setattr(dumpindex, "index_lazy_dump", reached("indexing a lazy dump"))
    monkeypatch.setattr(os, "execvp", reached("exec"))


def run_main(argv: list[str]) -> int | str | None:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse
        return exc.code


@pytest.mark.parametrize("c", CASES)
def test_invalid_value_is_refused_naming_the_option(c: Case, tmp_path: Path, tripwires: None,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    where = places(tmp_path)
    argv = [word.format(**where) for word in c.argv]
    code = run_main(argv)
    err = capsys.readouterr().err
    assert code not in (0, None), f"{argv} was accepted; stderr: {err}"
    assert "Traceback" not in err
    assert c.option in err, f"stderr does not name {c.option}: {err}"
    assert c.expected in err, f"stderr does not say {c.expected!r}: {err}"
    assert not (tmp_path / "missing").exists() and not (tmp_path / "dir" / "lazyrestore").exists(), \
        "a refused command must not create anything"


@pytest.mark.parametrize("argv, option", [
    (["restore", "--from", "999.1.1.1:7411", "--secret-file", "{secret}", "--workdir", "{missing}"], "--from"),
    (["serve", "--images", "{dir}", "--listen", "10.231.0.1"], "--listen"),
    (["inspect", "--images", "{missing}"], "--images"),
    (["checkpoint", "--pid", "{free_pid}", "--images", "{missing}"], "--pid"),
])
def test_json_mode_reports_a_refusal_as_an_error_event(argv: list[str], option: str, tmp_path: Path, tripwires: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A runtime reading --json events learns why, too (argparse's own errors aside: those print usage)."""
    where = places(tmp_path)
    code = run_main([word.format(**where) for word in argv] + ["--json"])
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code != 0 and last["event"] == "error" and last["code"] == code and option in last["message"], last


def test_every_value_taking_option_has_a_case() -> None:
    """The table covers each option that takes a value, of every subcommand (lazy-pages: its --page-server pair)."""
    covered = {(c.values[0].argv[0], c.values[0].option) for c in CASES}
    covered |= {(c.values[0].argv[1], c.values[0].option) for c in CASES if c.values[0].argv[0] == "testhosts"}
    wanted = set()
    for command, parser in subcommands(cli.build_parser()):
        for action in parser._actions:
            if action.nargs == 0 or action.dest in ("help", "cmd"):
                continue
            name = max(action.option_strings, key=len) if action.option_strings else action.metavar or action.dest
            wanted.add((command, name))
    wanted |= {("lazy-pages", "--address"), ("lazy-pages", "--port")}
    assert wanted - covered == set()


def subcommands(parser: Any) -> list[tuple[str, Any]]:
    """(name, parser) of every leaf subcommand (testhosts' actions by their own names)."""
    found = []
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            found += subcommands(sub) if sub._subparsers is not None else [(name, sub)]
    return found


LR_LAZYD_CASES = [  # lazy-pages passes these to lr-lazyd, which checks them itself before it does anything
    pytest.param(["--status-fd", "x"], "--status-fd", "expected a descriptor number", id="status-fd-text"),
    pytest.param(["--status-fd", "-1"], "--status-fd", "expected a descriptor number", id="status-fd-negative"),
    pytest.param(["--fault-around", "3K"], "--fault-around", "power of two from 4K to 64M", id="fault-around-3K"),
    pytest.param(["--chunk", "0"], "--chunk", "from 4K to 256M", id="chunk-zero"),
    pytest.param(["--source-timeout", "0"], "--source-timeout", "from 1 to 86400", id="source-timeout-zero"),
    # 2^44 G does not fit in 64 bits: the suffix must not wrap it to a small rate
    pytest.param(["--drain-rate", "17592186044416G"], "--drain-rate", "bytes per second", id="drain-rate-wraps"),
]


@pytest.mark.parametrize("args, option, expected", LR_LAZYD_CASES)
def test_lazy_pages_options_are_checked_by_lr_lazyd(args: list[str], option: str, expected: str,
                                                    tmp_path: Path) -> None:
    try:
        paths.native_binary("lr-lazyd")
    except LazyRestoreError as exc:
        pytest.skip(str(exc))
    proc = subprocess.run([sys.executable, "-m", "lazyrestore.cli", "lazy-pages", "-D", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert option in proc.stderr and expected in proc.stderr, proc.stderr


CRIU_TLS_CASES = [  # CRIU's TLS page-server options: refused by lazy-pages itself, before lr-lazyd or any indexing
    pytest.param(["--tls"], "--tls", id="tls"),
    pytest.param(["--page-server", "--address", "127.0.0.1", "--port", "27000", "--tls"], "--tls", id="page-server-tls"),
    pytest.param(["--tls-cacert", "ca.pem"], "--tls-cacert", id="tls-cacert"),
    pytest.param(["--tls-cacrl=crl.pem"], "--tls-cacrl", id="tls-cacrl-equals"),
    pytest.param(["--tls-cert", "c.pem", "--tls-key", "k.pem"], "--tls-cert", id="tls-cert-key"),
    pytest.param(["--tls-no-cn-verify"], "--tls-no-cn-verify", id="tls-no-cn-verify"),
]


@pytest.mark.parametrize("args, option", CRIU_TLS_CASES)
def test_lazy_pages_refuses_criu_tls(args: list[str], option: str, tmp_path: Path) -> None:
    """Exit 2 with one line naming the option and what to use instead; nothing written into -D (a dump dir here:
    --page-server would otherwise index it first)."""
    (tmp_path / "pstree.img").write_bytes(b"")
    before = sorted(tmp_path.iterdir())
    proc = subprocess.run([sys.executable, "-m", "lazyrestore.cli", "lazy-pages", "-D", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"lazyrestore: error: lazy-pages {option}: TLS to CRIU's page server is not "
                                  "supported"), proc.stderr
    assert "lazyrestore serve" in proc.stderr and "criu lazy-pages --tls" in proc.stderr, proc.stderr
    assert sorted(tmp_path.iterdir()) == before


def test_the_console_script_refuses_without_a_traceback(tmp_path: Path) -> None:
    """The installed entry point behaves as main() does (one case per kind of check)."""
    script = Path(sys.executable).with_name("lazyrestore")
    if not script.exists():
        pytest.skip(f"no console script at {script}")
    for argv, option in [(["restore", "--images", str(tmp_path), "--chunk", "0"], "--chunk"),
                         (["serve", "--images", str(tmp_path), "--listen", "999.1.1.1:1"], "--listen"),
                         (["inspect", "--images", str(tmp_path / "missing")], "--images")]:
        proc = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode != 0 and option in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
