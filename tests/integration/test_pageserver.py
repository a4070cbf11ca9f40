"""lr-pageserver on loopback: honest and hostile clients of the wire protocol (tests/integration/wire.py).

The server under test is the ASan/UBSan build. Each test starts its own server on a
shared small checkpoint and checks that after whatever a client did, an honest client
is still served.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from lazyrestore import lazyindex
from lazyrestore.paths import native_binary

from . import wire
from .helpers import small_checkpoint


@pytest.fixture(scope="module")
def images() -> Iterator[Path]:
    with small_checkpoint("lazyrestore-ps-") as path:
        yield path


class Server:
    def __init__(self, images: Path, *extra: str) -> None:
        r, w = os.pipe()
        self.log = images.parent / f"ps-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen([str(native_binary("san/lr-pageserver")), "-D", str(images), "--listen",
                                      "127.0.0.1:0", "--events-fd", str(w), "-o", str(self.log), *extra],
                                     pass_fds=[w], stdin=subprocess.DEVNULL)
        os.close(w)
        self.events = os.fdopen(r, "r")
        first = self.next_event()
        assert first["event"] == "listening", first
        self.port = first["port"]

    def next_event(self, timeout: float = 20.0) -> dict:
        ready, _, _ = select.select([self.events], [], [], timeout)
        assert ready, f"no event from lr-pageserver in {timeout} s; log: {self.log_text()}"
        line = self.events.readline()
        assert line, f"lr-pageserver closed its events; log: {self.log_text()}"
        return json.loads(line)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout=20)
        self.events.close()
        return code


@pytest.fixture
def server(images: Path) -> Iterator[Server]:
    s = Server(images)
    yield s
    assert s.stop() == 0, s.log_text()
    assert "ERROR: AddressSanitizer" not in s.log_text() and "runtime error" not in s.log_text()


def secret_of(images: Path) -> bytes:
    return (images / "lazyrestore" / "secret").read_bytes()


def honest(server: Server, images: Path) -> wire.Client:
    c = wire.Client(server.port)
    c.handshake(secret_of(images))
    return c


def assert_still_serving(server: Server, images: Path) -> None:
    c = honest(server, images)
    assert "lazyrestore/manifest.json" in c.list_files()
    c.close()


def first_lazy(images: Path) -> tuple[int, lazyindex.IndexEntry]:
    index = lazyindex.read(images / "lazyrestore" / "index.bin")
    return next((i, e) for i, e in enumerate(index.entries) if e.lazy)


def test_honest_client_gets_files_and_verified_pages(server: Server, images: Path) -> None:
    c = honest(server, images)
    manifest = json.loads((images / "lazyrestore" / "manifest.json").read_text())
    assert c.checkpoint_id.hex() == manifest["checkpoint_id"]
    files = c.list_files()
    assert files["lazyrestore/index.bin"][0] == (images / "lazyrestore" / "index.bin").stat().st_size
    assert "lazyrestore/secret" not in files
    assert c.get_file("lazyrestore/index.bin") == (images / "lazyrestore" / "index.bin").read_bytes()
    assert c.get_file("pstree.img") == (images / "pstree.img").read_bytes()
    for view in manifest["lazy_view"]:  # the pagemaps and eager pages a lazy restore gives CRIU
        assert files[view["name"]] == (view["size"], wire.FILE_META)
        assert c.get_file(view["name"]) == (images / view["name"]).read_bytes()
    rec, entry = first_lazy(images)
    sums, data = c.get_pages(rec, 0, 1)
    assert sums[0] == entry.checksums[0]
    assert xxhash.xxh3_64_intdigest(data) == sums[0]
    with open(images / f"pages-{entry.pages_id}.img", "rb") as f:
        f.seek(entry.offset)
        assert data == f.read(len(data))
    c.close()


def test_frames_built_in_memory_carry_their_checksum(server: Server, images: Path) -> None:
    """Protocol version 2: CHALLENGE, WELCOME, FILES, every FILE_DATA frame and DONE come flagged F_SUM, with the
    checksum wire.Client.recv checks; PAGES (page bytes sent with sendfile, checked per block) come without."""
    c = wire.Client(server.port, record=True)
    c.handshake(secret_of(images))
    c.list_files()
    for name in ("lazyrestore/index.bin", "lazyrestore/manifest.json", "pstree.img"):
        assert c.get_file(name) == (images / name).read_bytes()
    rec, _ = first_lazy(images)
    c.get_pages(rec, 0, 1)
    c.request(wire.DONE_T)
    assert c.recv().type == wire.DONE_T
    assert c.got is not None
    kinds = [(f.type, bool(f.flags & wire.F_SUM)) for f in c.got]
    assert {t for t, summed in kinds if not summed} == {wire.PAGES_T}, kinds
    assert {wire.CHALLENGE_T, wire.WELCOME_T, wire.FILES_T, wire.FILE_DATA_T, wire.DONE_T} <= {t for t, _ in kinds}
    c.close()


def damaged(frame: bytes, at: int) -> bytes:
    """frame with one bit flipped after its checksum was taken (at: from the end when negative)."""
    b = bytearray(frame)
    b[at] ^= 0x20
    return bytes(b)


@pytest.mark.parametrize("where", ["payload", "request id"])
def test_a_request_damaged_on_the_way_is_refused_as_damaged(server: Server, images: Path, where: str) -> None:
    c = honest(server, images)
    name = b"lazyrestore/manifest.json"
    request = wire.frame(wire.GET_FILE_T, wire.FILE_REQ.pack(len(name), 0) + name, 5)
    c.sock.sendall(damaged(request, -3 if where == "payload" else 17))
    with pytest.raises(wire.PeerError) as info:
        c.recv()
    assert info.value.code == wire.ERR_DAMAGED and "GET_FILE frame" in info.value.message, info.value.message
    assert "fails its checksum" in info.value.message
    assert c.closed()
    assert_still_serving(server, images)


def test_unflagged_sum_field_is_refused(server: Server, images: Path) -> None:
    c = honest(server, images)
    c.sock.sendall(wire.FRAME.pack(wire.MAGIC, wire.LIST_T, 0, 0, 0x1234, 3))
    with pytest.raises(wire.PeerError) as info:
        c.recv()
    assert info.value.code == wire.ERR_PROTOCOL and "without LR_F_SUM" in info.value.message, info.value.message
    assert_still_serving(server, images)


def test_a_damaged_working_set_is_dropped_and_the_session_goes_on(server: Server, images: Path) -> None:
    """A WORKINGSET frame failing its checksum drops that restore's working set (a hint); DONE is still answered."""
    c = honest(server, images)
    c.sock.sendall(damaged(wire.frame(wire.WORKINGSET_T, b"LRWSET1\0" + bytes(56), 3, wire.F_MORE), 40)
                   + wire.frame(wire.WORKINGSET_T, bytes(48), 4))
    c.request(wire.DONE_T)
    assert c.recv().type == wire.DONE_T
    c.close()
    deadline = time.monotonic() + 10
    while "its working set is dropped" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    assert "WORKINGSET frame of 64 bytes fails its checksum" in server.log_text()
    assert not (images / "lazyrestore" / "workingset").exists()
    assert_still_serving(server, images)


def test_wrong_secret_is_refused_and_others_are_served(server: Server, images: Path) -> None:
    c = wire.Client(server.port)
    with pytest.raises(wire.PeerError) as info:
        c.handshake(bytes(32))
    assert info.value.code == wire.ERR_AUTH
    assert c.closed()
    assert_still_serving(server, images)


def test_request_before_authentication_is_refused(server: Server, images: Path) -> None:
    c = wire.Client(server.port)
    c.request(wire.LIST_T)
    with pytest.raises(wire.PeerError) as info:
        c.recv()
    assert info.value.code == wire.ERR_PROTOCOL
    assert c.closed()
    assert_still_serving(server, images)


def test_garbage_bytes_are_refused(server: Server, images: Path) -> None:
    c = wire.Client(server.port)
    c.sock.sendall(os.urandom(64) + b"GET / HTTP/1.0\r\n\r\n")
    with pytest.raises((wire.PeerError, ConnectionError)):
        c.recv()
    assert c.closed()
    assert_still_serving(server, images)


def test_oversize_frame_is_refused(server: Server, images: Path) -> None:
    c = honest(server, images)
    c.sock.sendall(wire.FRAME.pack(wire.MAGIC, wire.GET_PAGES_T, 0, 1 << 30, 0, 7))
    with pytest.raises(wire.PeerError) as info:
        c.recv()
    assert info.value.code == wire.ERR_TOO_BIG
    assert c.closed()
    assert_still_serving(server, images)


@pytest.mark.parametrize("record,first,count", [(1 << 40, 0, 1), (None, 0, 0), (None, 1 << 20, 1), (None, 0, 1 << 30)])
def test_out_of_range_page_requests_are_refused(server: Server, images: Path, record, first, count) -> None:
    rec, _ = first_lazy(images)
    c = honest(server, images)
    with pytest.raises(wire.PeerError) as info:
        c.get_pages(rec if record is None else record, first, count)
    assert info.value.code == wire.ERR_RANGE
    assert_still_serving(server, images)


@pytest.mark.parametrize("name", ["lazyrestore/secret", "../etc/passwd", "pages-1.img", "no-such.img"])
def test_files_outside_the_catalog_are_refused(server: Server, images: Path, name: str) -> None:
    c = honest(server, images)
    with pytest.raises(wire.PeerError) as info:
        c.get_file(name)
    assert info.value.code == wire.ERR_NO_FILE
    assert_still_serving(server, images)


def test_silent_connection_is_dropped_after_the_handshake_time(images: Path) -> None:
    s = Server(images, "--handshake-ms", "300")
    try:
        c = wire.Client(s.port)
        time.sleep(1.0)
        assert c.closed()
        assert_still_serving(s, images)
    finally:
        assert s.stop() == 0, s.log_text()


def test_server_refuses_a_world_readable_secret(images: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(secret_of(images))
    secret.chmod(0o644)
    proc = subprocess.run([str(native_binary("san/lr-pageserver")), "-D", str(images), "--listen", "127.0.0.1:0",
                           "--secret-file", str(secret)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "mode 0600" in proc.stderr and str(secret) in proc.stderr
