"""The source description (lazyrestore/source.json) and the CRIU-side entry points that need no CRIU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyrestore import cli, hook, lazypages_args, sourcefile
from lazyrestore.errors import UsageError


def write(tmp_path: Path, raw: object) -> Path:
    (tmp_path / "lazyrestore").mkdir(exist_ok=True)
    p = tmp_path / "lazyrestore" / "source.json"
    p.write_text(json.dumps(raw))
    return p


def test_a_written_description_reads_back(tmp_path: Path) -> None:
    path = sourcefile.write(tmp_path, "lazyrestore", "10.231.0.1:7411", "secret", 12)
    src = sourcefile.read(path)
    assert (src.kind, src.address, src.source_timeout) == ("lazyrestore", "10.231.0.1:7411", 12)
    assert src.secret_file == tmp_path / "lazyrestore" / "secret"  # relative to the description's dir
    assert sourcefile.find(tmp_path, tmp_path / "elsewhere") == path


def test_a_criu_source_needs_no_secret(tmp_path: Path) -> None:
    src = sourcefile.read(write(tmp_path, {"lazyrestore_source": 1, "kind": "criu", "address": "10.0.0.1:27000"}))
    assert src.kind == "criu" and src.secret_file is None


def test_the_images_dir_description_wins_over_the_work_dir_one(tmp_path: Path) -> None:
    images, work = tmp_path / "images", tmp_path / "work"
    sourcefile.write(work, "criu", "10.0.0.1:1", None)
    assert sourcefile.find(images, work) == work / "lazyrestore" / "source.json"
    sourcefile.write(images, "criu", "10.0.0.2:1", None)
    assert sourcefile.find(images, work) == images / "lazyrestore" / "source.json"
    assert sourcefile.find(tmp_path / "x", tmp_path / "y") is None


@pytest.mark.parametrize("raw, named", [
    ({"kind": "criu", "address": "10.0.0.1:1"}, "lazyrestore_source"),
    ({"lazyrestore_source": 1, "kind": "nfs", "address": "10.0.0.1:1"}, "'kind'"),
    ({"lazyrestore_source": 1, "kind": "criu", "address": "10.0.0.1"}, "HOST:PORT"),
    ({"lazyrestore_source": 1, "kind": "criu", "address": "10.0.0.1:0"}, "port 0"),
    ({"lazyrestore_source": 1, "kind": "criu", "address": "0.0.0.0:7411"}, "listening address"),
    ({"lazyrestore_source": 1, "kind": "criu", "address": 7411}, "'address'"),
    ({"lazyrestore_source": 1, "kind": "lazyrestore", "address": "10.0.0.1:1"}, "'secret_file'"),
    ({"lazyrestore_source": 1, "kind": "criu", "address": "10.0.0.1:1", "source_timeout": 0}, "'source_timeout'"),
    ({"lazyrestore_source": 1, "kind": "criu", "address": "10.0.0.1:1", "source_timeout": True}, "'source_timeout'"),
    (["not", "an", "object"], "lazyrestore_source"),
])
def test_a_bad_description_is_refused_naming_the_file_and_field(tmp_path: Path, raw: object, named: str) -> None:
    path = write(tmp_path, raw)
    with pytest.raises(UsageError) as exc:
        sourcefile.read(path)
    assert str(path) in str(exc.value) and named in str(exc.value)


def test_a_description_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {})
    path.write_text("{kind: criu")
    with pytest.raises(UsageError, match="not a readable JSON source description"):
        sourcefile.read(path)


def test_lazy_pages_passes_plain_options_through() -> None:
    args = ["-D", "/img", "-W", "/work", "--status-fd", "5"]
    assert lazypages_args.criu_lazy_pages_args(args) == args


def test_lazy_pages_takes_criu_common_options_as_zdtm_gives_them() -> None:
    # zdtm: `criu lazy-pages --no-default-config --log-file lazy-pages.log --images-dir DIR --verbosity=4`
    args = ["--no-default-config", "--log-file", "lazy-pages.log", "--images-dir", "dump/x", "--verbosity=4"]
    assert lazypages_args.criu_lazy_pages_args(args) == ["--log-file", "lazy-pages.log", "--images-dir", "dump/x",
                                               "--verbose=4"]
    assert lazypages_args.criu_lazy_pages_args(["-D", "/img", "--verbosity"]) == ["-D", "/img", "--verbose"]


def test_lazy_pages_translates_criu_page_server_options(tmp_path: Path) -> None:
    (tmp_path / "lazyrestore").mkdir()
    (tmp_path / "lazyrestore" / "index.bin").write_bytes(b"")  # already indexed: nothing to read here
    out = lazypages_args.criu_lazy_pages_args(["--page-server", "--address", "10.0.0.1", "--port=27000", "-D", str(tmp_path),
                                     "-W", "/work"])
    assert out == ["-D", str(tmp_path), "-W", "/work", "--criu-page-server", "10.0.0.1:27000"]


@pytest.mark.parametrize("args", [["--page-server", "--port", "1"], ["--page-server", "--address", "a", "--port", "x"]])
def test_lazy_pages_page_server_needs_address_and_port(args: list[str]) -> None:
    with pytest.raises(UsageError, match="--address ADDR and --port PORT"):
        lazypages_args.criu_lazy_pages_args(args)


def test_the_hook_does_nothing_at_actions_that_do_not_concern_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRTOOLS_SCRIPT_ACTION", "network-lock")
    monkeypatch.delenv("CRTOOLS_IMAGE_DIR", raising=False)
    assert cli.main(["hook"]) == 0


def test_the_hook_without_criu_says_what_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CRTOOLS_SCRIPT_ACTION", "post-dump")
    monkeypatch.delenv("CRTOOLS_IMAGE_DIR", raising=False)
    assert cli.main(["hook"]) == 2
    assert "CRTOOLS_IMAGE_DIR is not set" in capsys.readouterr().err


def test_pre_restore_without_a_description_skips(tmp_path: Path) -> None:
    res = hook.run("pre-restore", tmp_path / "images", tmp_path / "work", None)
    assert res.outcome == "skipped" and "source.json" in res.detail
