"""A small client of lr-pageserver's wire protocol (native/include/lr_proto.h), for tests only.

Speaks the frames byte for byte as lr_proto.h defines them, so tests can act as an
honest client, or as a hostile one (wrong secret, garbage, oversize frames, bad ranges).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass

import xxhash

MAGIC = 0x3150524C
VERSION = 3
FRAME = struct.Struct("<IHHIIQ")
HELLO = struct.Struct("<IIQ32s")
CHALLENGE = struct.Struct("<II16s32s")
WELCOME = struct.Struct("<Q32s")
FILE_ENTRY = struct.Struct("<QII")
FILE_REQ = struct.Struct("<II")
PAGE_REQ = struct.Struct("<QII")
PAGES_HDR = struct.Struct("<QIIQ")
ERROR = struct.Struct("<II")

HELLO_T, CHALLENGE_T, AUTH_T, WELCOME_T, LIST_T, FILES_T, GET_FILE_T, FILE_DATA_T = range(1, 9)
GET_PAGES_T, PAGES_T, HINT_T, BULK_START_T, BULK_END_T, DONE_T, ERROR_T, WORKINGSET_T = range(9, 17)
TUNE_T, COMMIT_T, ABORT_T = range(17, 20)
F_MORE, F_SUM = 1, 8
FILE_META, FILE_PAGES = 1, 2
URGENT, BULK = 1, 2
ERR_PROTOCOL, ERR_VERSION, ERR_AUTH, ERR_TOO_BIG, ERR_RANGE, ERR_NO_FILE = 1, 2, 3, 4, 5, 6
ERR_IO, ERR_TIMEOUT, ERR_SESSION, ERR_DAMAGED, ERR_BUSY = 7, 8, 9, 10, 11
PAGES_MAX_DATA = 2 << 20


class PeerError(Exception):
    """The server answered ERROR: code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"ERROR {code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    req_id: int
    payload: bytes


def frame_sum(type_: int, flags: int, length: int, req_id: int, payload: bytes) -> int:
    """A frame's checksum (LR_F_SUM): the low 32 bits of XXH3-64 of the payload, seeded with XXH3-64 of the
    header with its sum field 0."""
    seed = xxhash.xxh3_64_intdigest(FRAME.pack(MAGIC, type_, flags, length, 0, req_id))
    return xxhash.xxh3_64_intdigest(payload, seed=seed) & 0xFFFFFFFF


def frame(type_: int, payload: bytes = b"", req_id: int = 0, flags: int = 0, sealed: bool = True) -> bytes:
    """One frame's bytes: header, then payload; sealed: flagged F_SUM with its checksum, as lr-lazyd sends."""
    flags |= F_SUM if sealed else 0
    total = frame_sum(type_, flags, len(payload), req_id, payload) if sealed else 0
    return FRAME.pack(MAGIC, type_, flags, len(payload), total, req_id) + payload


@dataclass(frozen=True)
class Pages:
    """A PAGES payload: the blocks it answers, their checksums (from the server's index) and the bytes."""

    record: int
    first_block: int
    nblocks: int
    checksums: tuple[int, ...]
    data: bytes


def parse_pages(payload: bytes) -> Pages:
    rec, first, n, data_len = PAGES_HDR.unpack_from(payload)
    sums = struct.unpack_from(f"<{n}Q", payload, PAGES_HDR.size)
    data = payload[PAGES_HDR.size + 8 * n:]
    assert len(data) == data_len, f"PAGES announces {data_len} bytes, carries {len(data)}"
    return Pages(rec, first, n, sums, data)


def mac(secret: bytes, label: bytes, channel: int, session: int, cid: bytes, first: bytes, second: bytes) -> bytes:
    msg = label + struct.pack("<IQ", channel, session) + cid + first + second
    return hmac.new(secret, msg, hashlib.sha256).digest()


class Client:
    """One channel to lr-pageserver."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 20.0, record: bool = False) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.next_id = 1
        self.session = 0
        self.checkpoint_id = b""
        self.sent: list[bytes] | None = [] if record else None  # record=True: every frame sent, in order
        self.got: list[Frame] | None = [] if record else None  # ... and every frame received

    def close(self) -> None:
        self.sock.close()

    def send(self, type_: int, payload: bytes = b"", req_id: int = 0, flags: int = 0) -> None:
        data = frame(type_, payload, req_id, flags)
        if self.sent is not None:
            self.sent.append(data)
        self.sock.sendall(data)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError(f"closed by the server after {len(data)} of {n} bytes")
            data += chunk
        return data

    def recv(self) -> Frame:
        """The next frame; one flagged F_SUM must match its checksum."""
        magic, type_, flags, length, total, req_id = FRAME.unpack(self._read(FRAME.size))
        assert magic == MAGIC, f"bad magic {magic:#x}"
        payload = self._read(length)
        if flags & F_SUM:
            assert total == frame_sum(type_, flags, length, req_id, payload), f"frame {type_}: checksum mismatch"
        else:
            assert total == 0, f"frame {type_}: sum field {total:#x} without F_SUM"
        if self.got is not None:
            self.got.append(Frame(type_, flags, req_id, payload))
        if type_ == ERROR_T:
            code, _ = ERROR.unpack_from(payload)
            raise PeerError(code, payload[ERROR.size:].decode(errors="replace"))
        return Frame(type_, flags, req_id, payload)

    def closed(self) -> bool:
        """True when the server has closed the connection (after any frames it still sent)."""
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def handshake(self, secret: bytes, channel: int = URGENT, session: int = 0) -> None:
        cnonce = os.urandom(32)
        self.send(HELLO_T, HELLO.pack(VERSION, channel, session, cnonce))
        ch = self.recv()
        assert ch.type == CHALLENGE_T, ch
        _, _, cid, snonce = CHALLENGE.unpack(ch.payload)
        self.send(AUTH_T, mac(secret, b"lazyrestore-client-v1", channel, session, cid, snonce, cnonce))
        w = self.recv()
        assert w.type == WELCOME_T, w
        self.session, server_mac = WELCOME.unpack(w.payload)
        want = mac(secret, b"lazyrestore-server-v1", channel, self.session, cid, cnonce, snonce)
        assert hmac.compare_digest(server_mac, want), "the server's proof of the secret is wrong"
        self.checkpoint_id = cid

    def request(self, type_: int, payload: bytes = b"") -> int:
        req_id = self.next_id
        self.next_id += 1
        self.send(type_, payload, req_id)
        return req_id

    def list_files(self) -> dict[str, tuple[int, int]]:
        """name -> (size, kind)"""
        self.request(LIST_T)
        f = self.recv()
        assert f.type == FILES_T, f
        out, pos = {}, 0
        while pos < len(f.payload):
            size, kind, n = FILE_ENTRY.unpack_from(f.payload, pos)
            pos += FILE_ENTRY.size
            out[f.payload[pos:pos + n].decode()] = (size, kind)
            pos += n
        return out

    def get_file(self, name: str) -> bytes:
        raw = name.encode()
        self.request(GET_FILE_T, FILE_REQ.pack(len(raw), 0) + raw)
        data = b""
        while True:
            f = self.recv()
            assert f.type == FILE_DATA_T, f
            data += f.payload
            if not f.flags & F_MORE:
                return data

    def get_pages(self, record: int, first_block: int, nblocks: int) -> tuple[tuple[int, ...], bytes]:
        """(checksums, data) of blocks [first_block, first_block + nblocks) of index record `record`."""
        self.request(GET_PAGES_T, PAGE_REQ.pack(record, first_block, nblocks))
        f = self.recv()
        assert f.type == PAGES_T, f
        p = parse_pages(f.payload)
        assert (p.record, p.first_block, p.nblocks) == (record, first_block, nblocks)
        return p.checksums, p.data
