"""Unit tests for the command line (lazyrestore.cli) and CRIU discovery (lazyrestore.criu)."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest

from lazyrestore import cli, criu
from lazyrestore.errors import CriuUnavailable, ImagesDirError, UsageError


# ---------------------------------------------------------------- argument parsing

@pytest.mark.parametrize("value,shown", [("0", "got 0"), ("-3", "got -3"), ("abc", "got 'abc'"),
                                         ("1.5", "got '1.5'"), ("", "got ''")])
def test_parser_rejects_bad_pid(value: str, shown: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["checkpoint", "--pid", value, "--images", str(tmp_path / "d")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --pid" in err
    assert shown in err


def test_main_rejects_bad_pid_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["checkpoint", "--pid", "0", "--images", str(tmp_path / "d"), "--json"])
    assert info.value.code == 2
    assert "got 0" in capsys.readouterr().err


def test_parser_rejects_bad_mib(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["demo", "--mib", "-1"])
    assert info.value.code == 2
    assert "argument --mib" in capsys.readouterr().err


def test_parser_accepts_good_checkpoint_args(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(["checkpoint", "--pid", "1234", "-D", str(tmp_path / "d"),
                                          "--leave-running", "--json"])
    assert args.pid == 1234
    assert args.images == tmp_path / "d"
    assert args.leave_running is True and args.allow_host_pids is False and args.json is True
    assert args.func is cli.cmd_checkpoint


def test_parser_makes_images_path_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(["inspect", "--images", "rel/dir"])
    assert args.images == tmp_path / "rel" / "dir"
    assert args.images.is_absolute()


def test_parser_rejects_blank_images(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["inspect", "--images", "  "])
    assert info.value.code == 2
    assert "empty string" in capsys.readouterr().err


def test_parser_requires_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args([])
    assert info.value.code == 2


@pytest.mark.parametrize("text,value", [("1", 1), ("42", 42), ("007", 7)])
def test_positive_int_accepts(text: str, value: int) -> None:
    assert cli.positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "x", "0x10", "", "1e3"])
def test_positive_int_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="positive whole number"):
        cli.positive_int(text)


# ---------------------------------------------------------------- main exit codes

def test_inspect_nonexistent_dir_exits_6(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["inspect", "--images", "/nonexistent/dir"])
    assert code == 6 == ImagesDirError.exit_code
    out, err = capsys.readouterr()
    assert out == ""     # no JSON without --json; the error goes to stderr
    assert err.startswith("lazyrestore: error: ")
    assert "/nonexistent/dir" in err


def test_inspect_nonexistent_dir_json_error_event(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["inspect", "--images", "/nonexistent/dir", "--json"])
    assert code == 6
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines, "expected a JSON error event on stdout"
    events = [json.loads(line) for line in lines]   # stdout carries JSON lines only
    last = events[-1]
    assert last["event"] == "error"
    assert last["code"] == 6
    assert last["error"] == "ImagesDirError"
    assert "/nonexistent/dir" in last["message"]
    assert "lazyrestore: error:" in err


def test_inspect_dir_without_pstree_exits_6(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["inspect", "-D", str(tmp_path), "--json"])
    assert code == 6
    event = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert event["event"] == "error" and event["code"] == 6
    assert "no pstree.img" in event["message"]


# ---------------------------------------------------------------- criu.parse_version

@pytest.mark.parametrize("text,version", [
    ("Version: 4.1.1\n", (4, 1, 1)),
    ("Version: 3.17\nGitID: v3.17-12-gdeadbeef\n", (3, 17)),
    ("Version: 4.1\n", (4, 1)),
    ("GitID: v4.1.1\nVersion: 4.1.1\n", (4, 1, 1)),
    ("Version:4.2.\n", (4, 2)),
    ("Version: 10.0.3-rc1\n", (10, 0, 3)),
])
def test_parse_version(text: str, version: tuple[int, ...]) -> None:
    assert criu.parse_version(text) == version


@pytest.mark.parametrize("text", [
    "", "garbage", "criu 4.1.1", "version: 4.1.1", "Version: x.y", "Version:\n", "  Version: 4.1.1",
    "\x00\xff binary noise",
])
def test_parse_version_garbage_is_none(text: str) -> None:
    assert criu.parse_version(text) is None


def test_parse_version_malformed_dotted_number_is_none() -> None:
    """BUG probe: "4..1" matches [0-9][0-9.]* and int('') raises ValueError instead of returning None."""
    assert criu.parse_version("Version: 4..1\n") is None


# ---------------------------------------------------------------- criu.find_criu

def fake_criu(tmp_path: Path, version_line: str, name: str = "criu") -> Path:
    """A shell script that answers `--version` like CRIU does (and fails otherwise)."""
    path = tmp_path / name
    path.write_text(
        "#!/bin/sh\n"
        '[ "$1" = "--version" ] || { echo "unexpected args: $*" >&2; exit 1; }\n'
        f"printf '%s\\n' '{version_line}' 'GitID: v0'\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_find_criu_too_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = fake_criu(tmp_path, "Version: 3.17")
    monkeypatch.setenv("LAZYRESTORE_CRIU", str(binary))
    with pytest.raises(CriuUnavailable) as info:
        criu.find_criu()
    msg = str(info.value)
    assert "too old" in msg
    assert "make bootstrap" in msg
    assert "3.17" in msg and str(binary) in msg
    assert info.value.exit_code == 4


def test_find_criu_4_0_is_too_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZYRESTORE_CRIU", str(fake_criu(tmp_path, "Version: 4.0")))
    with pytest.raises(CriuUnavailable, match="too old"):
        criu.find_criu()


@pytest.mark.parametrize("line", ["Version: 4.1.1", "Version: 4.1"])
def test_find_criu_4_1_is_too_old_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str) -> None:
    """CRIU 4.1 cannot dump TCP/UDP/packet sockets on kernels >= 6.16 (SO_PASSCRED): named, with the fix."""
    monkeypatch.setenv("LAZYRESTORE_CRIU", str(fake_criu(tmp_path, line)))
    with pytest.raises(CriuUnavailable) as info:
        criu.find_criu()
    msg = str(info.value)
    assert "too old" in msg and "CRIU >= 4.2" in msg
    assert "Can't get 1:16 opt" in msg and "6.16" in msg and "SO_PASSCRED" in msg
    assert "`make bootstrap`" in msg and "4.2.x" in msg
    assert "vDSO" not in msg, "the 3.x reason is not 4.1's"
    assert info.value.exit_code == 4


def test_find_criu_3_17_gets_both_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZYRESTORE_CRIU", str(fake_criu(tmp_path, "Version: 3.17")))
    with pytest.raises(CriuUnavailable) as info:
        criu.find_criu()
    assert "vDSO" in str(info.value) and "1:16" in str(info.value)


@pytest.mark.parametrize("line,text", [("Version: 4.2.1", "4.2.1"), ("Version: 4.2", "4.2"), ("Version: 5.0", "5.0")])
def test_find_criu_recent_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, text: str) -> None:
    binary = fake_criu(tmp_path, line)
    monkeypatch.setenv("LAZYRESTORE_CRIU", str(binary))
    found = criu.find_criu()
    assert found == criu.CriuBinary(path=str(binary), version=text)


def test_find_criu_nonexistent_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZYRESTORE_CRIU", str(tmp_path / "no-such-criu"))
    with pytest.raises(CriuUnavailable) as info:
        criu.find_criu()
    assert "not found" in str(info.value)
    assert "make bootstrap" in str(info.value)


def test_find_criu_not_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = fake_criu(tmp_path, "Version: 4.1.1")
    binary.chmod(0o644)
    monkeypatch.setenv("LAZYRESTORE_CRIU", str(binary))
    if os.access(binary, os.X_OK):
        pytest.skip("root sees a 0644 file as executable on this system")
    with pytest.raises(CriuUnavailable):
        criu.find_criu()


def test_find_criu_no_version_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = fake_criu(tmp_path, "criu, some build")
    monkeypatch.setenv("LAZYRESTORE_CRIU", str(binary))
    with pytest.raises(CriuUnavailable, match="printed no version"):
        criu.find_criu()


def test_find_criu_unrunnable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "criu"
    binary.write_text("#!/nonexistent/interpreter\n")
    binary.chmod(0o755)
    monkeypatch.setenv("LAZYRESTORE_CRIU", str(binary))
    with pytest.raises(CriuUnavailable) as info:
        criu.find_criu()
    assert "cannot run" in str(info.value)
    assert "make bootstrap" in str(info.value)


# ---------------------------------------------------------------- criu.log_excerpt

def test_log_excerpt_keeps_error_lines_and_drops_harmless(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text("\n".join([
        "(00.001) Version: 4.1.1",
        "(00.002) Error (criu/cr-dump.c:1): Can't setup RLIMIT_NOFILE",
        "(00.003) dumping things",
        "(00.004) Error (criu/mem.c:2): bad size",
        "(00.005) Unable to open pages",
        "(00.006) done",
    ]) + "\n")
    assert criu.log_excerpt(log) == ["(00.004) Error (criu/mem.c:2): bad size", "(00.005) Unable to open pages"]
    assert criu.log_excerpt(log, limit=1) == ["(00.005) Unable to open pages"]


def test_log_excerpt_without_errors_gives_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    assert criu.log_excerpt(log, limit=3) == ["line 27", "line 28", "line 29"]


def test_log_excerpt_missing_log(tmp_path: Path) -> None:
    lines = criu.log_excerpt(tmp_path / "none.log")
    assert len(lines) == 1 and "could not be read" in lines[0]


def test_criu_log_level_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(criu.LOG_LEVEL_ENV, raising=False)
    assert criu.log_level() == criu.DEFAULT_LOG_LEVEL == 3
    monkeypatch.setenv(criu.LOG_LEVEL_ENV, "4")
    assert criu.log_level() == 4


@pytest.mark.parametrize("text", ["5", "-1", "debug", "3.0"])
def test_criu_log_level_rejects_bad_values(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(criu.LOG_LEVEL_ENV, text)
    with pytest.raises(UsageError, match=r"LAZYRESTORE_CRIU_LOG_LEVEL=.*expected a CRIU log level from 0 to 4"):
        criu.log_level()
