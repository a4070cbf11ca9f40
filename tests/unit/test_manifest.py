"""Unit tests for lazyrestore.manifest: manifest.json validation and file listing."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from lazyrestore import manifest
from lazyrestore.errors import CorruptCheckpoint
from lazyrestore.manifest import FileEntry, Manifest, from_json, to_json

WHERE = "/ckpt/lazyrestore/manifest.json"
CID = "0123456789abcdef" * 2
SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()


def make_manifest() -> Manifest:
    return Manifest(
        checkpoint_id=CID, created="2025-01-02T03:04:05Z", criu_version="4.1.1", source_pid=4242,
        page_size=4096, block_size=65536, processes=2, threads=3, lazy_pages=100, eager_pages=7,
        files=(FileEntry("core-1.img", 1234, SHA_A), FileEntry("pstree.img", 56, SHA_B)),
        pages_files=(FileEntry("pages-1.img", 4096 * 80, None), FileEntry("pages-2.img", 4096 * 27, None)),
        index=FileEntry("lazyrestore/index.bin", 600, SHA_A),
    )


def valid_raw() -> dict[str, Any]:
    # through real JSON, as manifest.read would see it (tuples become lists)
    return json.loads(json.dumps(to_json(make_manifest())))


def rejected(raw: Any) -> CorruptCheckpoint:
    with pytest.raises(CorruptCheckpoint) as info:
        from_json(raw, WHERE)
    assert info.value.path == WHERE
    assert str(info.value).startswith(WHERE + ": ")
    return info.value


# ---------------------------------------------------------------- accepted

def test_to_json_has_format_and_version() -> None:
    raw = to_json(make_manifest())
    assert raw["format"] == "lazyrestore-manifest"
    assert raw["version"] == 1
    assert raw["checkpoint_id"] == CID


def test_from_json_accepts_valid_manifest() -> None:
    assert from_json(valid_raw(), WHERE) == make_manifest()


def test_from_json_accepts_to_json_output_directly() -> None:
    """BUG probe: to_json keeps the dataclass tuples (asdict), which from_json then refuses
    ("files and pages_files must be lists"); only a json.dumps/loads trip makes them lists."""
    assert from_json(to_json(make_manifest()), WHERE) == make_manifest()


def test_from_json_accepts_empty_file_lists_and_zero_counts() -> None:
    m = Manifest(CID, "t", "4.1.1", 0, 4096, 4096, 0, 0, 0, 0, (), (), FileEntry("lazyrestore/index.bin", 0, None))
    assert from_json(json.loads(json.dumps(to_json(m))), WHERE) == m


def test_write_then_read(tmp_path: Path) -> None:
    (tmp_path / manifest.META_DIR).mkdir()
    path = manifest.write(tmp_path, make_manifest())
    assert path == tmp_path / "lazyrestore" / "manifest.json"
    assert manifest.read(tmp_path) == make_manifest()


def test_read_missing_and_invalid_json(tmp_path: Path) -> None:
    where = str(tmp_path / "lazyrestore" / "manifest.json")
    with pytest.raises(CorruptCheckpoint, match="missing") as info:
        manifest.read(tmp_path)
    assert info.value.path == where
    (tmp_path / "lazyrestore").mkdir()
    (tmp_path / "lazyrestore" / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptCheckpoint, match="not valid JSON") as info:
        manifest.read(tmp_path)
    assert info.value.path == where


# ---------------------------------------------------------------- rejected: top level

@pytest.mark.parametrize("raw", [
    [],
    "lazyrestore-manifest",
    None,
    {**to_json(make_manifest()), "format": "criu-manifest"},
    {k: v for k, v in to_json(make_manifest()).items() if k != "format"},
])
def test_rejects_wrong_format(raw: Any) -> None:
    exc = rejected(raw)
    assert "format" in str(exc)


@pytest.mark.parametrize("version", [0, 2, "1", 1.5, None])
def test_rejects_wrong_version(version: Any) -> None:
    raw = valid_raw()
    raw["version"] = version
    exc = rejected(raw)
    assert "version" in str(exc)
    assert repr(version) in str(exc)


def test_rejects_missing_version() -> None:
    raw = valid_raw()
    del raw["version"]
    assert "version" in str(rejected(raw))


@pytest.mark.parametrize("field", manifest._INT_FIELDS)
@pytest.mark.parametrize("value", [-1, -4096, "4096", 4096.0, None, [1]])
def test_rejects_bad_int_fields(field: str, value: Any) -> None:
    raw = valid_raw()
    raw[field] = value
    exc = rejected(raw)
    assert f"field {field}" in str(exc)
    assert repr(value) in str(exc)


@pytest.mark.parametrize("field", manifest._INT_FIELDS)
def test_rejects_missing_int_fields(field: str) -> None:
    raw = valid_raw()
    del raw[field]
    assert f"field {field}" in str(rejected(raw))


@pytest.mark.parametrize("cid", ["", "0123", CID[:-1], CID + "0", 123, None, list(CID)])
def test_rejects_bad_checkpoint_id(cid: Any) -> None:
    raw = valid_raw()
    raw["checkpoint_id"] = cid
    exc = rejected(raw)
    assert "checkpoint_id" in str(exc)


@pytest.mark.parametrize("key,value", [("files", None), ("files", {}), ("pages_files", "pages-1.img"),
                                       ("pages_files", None)])
def test_rejects_non_list_file_lists(key: str, value: Any) -> None:
    raw = valid_raw()
    raw[key] = value
    assert "files and pages_files must be lists" in str(rejected(raw))


# ---------------------------------------------------------------- rejected: file entries

def set_files_name(raw: dict[str, Any], name: Any) -> None:
    raw["files"][1]["name"] = name


def set_pages_name(raw: dict[str, Any], name: Any) -> None:
    raw["pages_files"][0]["name"] = name


def set_index_name(raw: dict[str, Any], name: Any) -> None:
    raw["index"]["name"] = name


SETTERS: list[Callable[[dict[str, Any], Any], None]] = [set_files_name, set_pages_name, set_index_name]


@pytest.mark.parametrize("setter", SETTERS, ids=["files", "pages_files", "index"])
@pytest.mark.parametrize("name", [
    "a/b.img",
    "../core-1.img",
    "..",
    "/etc/passwd",
    "/pages-1.img",
    "lazyrestore/../../etc/shadow",
    "lazyrestore/sub/index.bin",
    ".hidden",
    None,
    7,
])
def test_rejects_bad_file_names(setter: Callable[[dict[str, Any], Any], None], name: Any) -> None:
    raw = valid_raw()
    setter(raw, name)
    exc = rejected(raw)
    assert "file name" in str(exc)
    assert repr(name) in str(exc)


@pytest.mark.parametrize("name", [
    "lazyrestore/..",            # '..' after the meta dir prefix: resolves to the images dir itself
    "evil-lazyrestore/core-1.img",  # a '/' in a name that is not under lazyrestore/
    "core-lazyrestore/x",
    "",                          # empty name: not a file name at all
])
def test_rejects_disguised_non_plain_names(name: str) -> None:
    """BUG probe: manifest._file_entry removes the first "lazyrestore/" found *anywhere* in the
    name (str.replace, not a prefix strip) and only refuses '..' as a leading '.', so these pass."""
    raw = valid_raw()
    raw["files"][0]["name"] = name
    exc = rejected(raw)
    assert "file name" in str(exc)


def test_meta_dir_index_name_is_accepted() -> None:
    raw = valid_raw()
    raw["files"][0]["name"] = "lazyrestore/index.bin"
    assert from_json(raw, WHERE).files[0].name == "lazyrestore/index.bin"


@pytest.mark.parametrize("size", [-1, "12", 1.0, None])
def test_rejects_bad_sizes(size: Any) -> None:
    raw = valid_raw()
    raw["files"][0]["size"] = size
    exc = rejected(raw)
    assert "size of core-1.img" in str(exc)
    assert repr(size) in str(exc)


@pytest.mark.parametrize("digest", [SHA_A[:-1], SHA_A + "0", "", 0, ["a"] * 64])
def test_rejects_bad_sha256(digest: Any) -> None:
    raw = valid_raw()
    raw["files"][0]["sha256"] = digest
    exc = rejected(raw)
    assert "sha256 of core-1.img" in str(exc)


def test_rejects_bad_sha256_of_index() -> None:
    raw = valid_raw()
    raw["index"]["sha256"] = "abc"
    assert "sha256 of lazyrestore/index.bin" in str(rejected(raw))


@pytest.mark.parametrize("entry", [None, "core-1.img", ["core-1.img", 3, None]])
def test_rejects_non_object_file_entries(entry: Any) -> None:
    raw = valid_raw()
    raw["files"].append(entry)
    assert "is not an object" in str(rejected(raw))


def test_rejects_missing_index() -> None:
    raw = valid_raw()
    del raw["index"]
    assert "not an object" in str(rejected(raw))


def test_validation_does_not_mutate_input() -> None:
    raw = valid_raw()
    before = copy.deepcopy(raw)
    from_json(raw, WHERE)
    assert raw == before


# ---------------------------------------------------------------- hex and bool probes (validation gaps)

def test_rejects_non_hex_checkpoint_id() -> None:
    """BUG probe: the message promises '32 hex digits' but only the length is checked."""
    raw = valid_raw()
    raw["checkpoint_id"] = "zz" * 16
    assert "checkpoint_id" in str(rejected(raw))


def test_rejects_non_hex_sha256() -> None:
    """BUG probe: the message promises '64 hex digits' but only the length is checked."""
    raw = valid_raw()
    raw["files"][0]["sha256"] = "z" * 64
    assert "sha256 of core-1.img" in str(rejected(raw))


def test_rejects_booleans_as_integers() -> None:
    """BUG probe: JSON true/false pass isinstance(x, int), so `"processes": true` reads as 1."""
    for field in manifest._INT_FIELDS:
        raw = valid_raw()
        raw[field] = True
        with pytest.raises(CorruptCheckpoint, match=f"field {field}"):
            from_json(raw, WHERE)


# ---------------------------------------------------------------- describe_files / list_image_files

@pytest.fixture()
def images_dir(tmp_path: Path) -> Path:
    contents = {
        "core-1.img": b"core one",
        "pstree.img": b"tree",
        "mm-1.img": b"",
        "pagemap-1.img": b"pm",
        "pages-1.img": b"\1" * 8192,
        "pages-12.img": b"\2" * 4096,
        "stats-dump": b"stats",
        "dump.log": b"criu log",
        "restore.log": b"criu log",
        "pages-3.img.log": b"not pages",
    }
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "lazyrestore").mkdir()
    (tmp_path / "lazyrestore" / "index.bin").write_bytes(b"index")
    (tmp_path / "subdir.img").mkdir()
    return tmp_path


def test_list_image_files_skips_logs_stats_and_directories(images_dir: Path) -> None:
    # stats-dump comes after CRIU's post-dump action script: the checkpoint is complete without it.
    assert manifest.list_image_files(images_dir) == sorted(
        ["core-1.img", "pstree.img", "mm-1.img", "pagemap-1.img", "pages-1.img", "pages-12.img"])


def test_describe_files_splits_pages_files(images_dir: Path) -> None:
    files, pages = manifest.describe_files(images_dir)
    assert pages == (FileEntry("pages-1.img", 8192, None), FileEntry("pages-12.img", 4096, None))
    by_name = {f.name: f for f in files}
    assert sorted(by_name) == ["core-1.img", "mm-1.img", "pagemap-1.img", "pstree.img"]
    for name, f in by_name.items():
        data = (images_dir / name).read_bytes()
        assert f.size == len(data)
        assert f.sha256 == hashlib.sha256(data).hexdigest()
    assert not any(f.name.endswith(".log") for f in files + pages)


def test_describe_files_output_round_trips_through_manifest(images_dir: Path) -> None:
    files, pages = manifest.describe_files(images_dir)
    m = Manifest(CID, "t", "4.1.1", 1, 4096, 65536, 1, 1, 2, 1, files, pages,
                 FileEntry("lazyrestore/index.bin", 5, hashlib.sha256(b"index").hexdigest()))
    assert from_json(json.loads(json.dumps(to_json(m))), WHERE) == m


@pytest.mark.parametrize("name,expected", [
    ("pages-1.img", True), ("pages-123.img", True), ("pagemap-1.img", False),
    ("pages-1.img.log", False), ("core-1.img", False)])
def test_is_pages_file(name: str, expected: bool) -> None:
    assert manifest.is_pages_file(name) is expected


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert manifest.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_new_checkpoint_id_is_32_hex_and_random() -> None:
    a, b = manifest.new_checkpoint_id(), manifest.new_checkpoint_id()
    assert len(a) == 32 and int(a, 16) >= 0
    assert a != b
