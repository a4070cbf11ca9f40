"""Remote restore's argument checks: addresses, work dirs and the CLI's --from rules (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyrestore import address, cli, remote, serve
from lazyrestore.errors import UsageError


@pytest.mark.parametrize("text, expected", [
    ("10.231.0.1:7411", ("10.231.0.1", 7411)),
    ("pageserver.example:0", ("pageserver.example", 0)),
    ("[::1]:7411", ("::1", 7411)),
])
def test_addresses_parse(text: str, expected: tuple[str, int]) -> None:
    assert address.parse_address(text) == expected


@pytest.mark.parametrize("text", ["10.231.0.1", ":7411", "host:port", "host:65536", "host:-1", "a b:7411", ""])
def test_bad_addresses_name_what_was_expected(text: str) -> None:
    with pytest.raises(UsageError, match="HOST:PORT|white space"):
        address.parse_address(text)


@pytest.mark.parametrize("text, why", [("10.0.0.1:0", "port 0"), ("0.0.0.0:7411", "listening address")])
def test_a_destination_needs_a_real_address(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        address.check_destination(text)


def test_workdir_must_be_new_or_empty(tmp_path: Path) -> None:
    images, run = remote.prepare_workdir(tmp_path / "w")
    assert images == tmp_path / "w" / "images" and run.is_dir()
    remote.prepare_workdir(tmp_path / "w")  # empty: fine again
    (images / "core-1.img").write_bytes(b"x")
    with pytest.raises(UsageError, match="not empty"):
        remote.prepare_workdir(tmp_path / "w")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="not a directory"):
        remote.prepare_workdir(tmp_path / "file")


def test_destination_command_never_shows_a_wildcard_address(tmp_path: Path) -> None:
    assert serve.destination_command("10.0.0.1", 7411, tmp_path).startswith("lazyrestore restore --from 10.0.0.1:7411 ")
    assert "--from THIS_HOST:7411" in serve.destination_command("0.0.0.0", 7411, tmp_path)
    assert "--from [fd00::1]:7411" in serve.destination_command("fd00::1", 7411, tmp_path)


@pytest.mark.parametrize("args, message", [
    (["restore"], "either --images"),
    (["restore", "--images", "/x", "--from", "h:1"], "either --images"),
    (["restore", "--from", "h:1", "--workdir", "/w"], "--secret-file"),
    (["restore", "--from", "h:1", "--secret-file", "/s"], "--workdir"),
])
def test_restore_from_rules(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_testhosts_exec_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["testhosts", "exec", "a"]) == 2
    assert "needs a host and a command" in capsys.readouterr().err
