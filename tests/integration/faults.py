"""Faults the tests inject between the test hosts: a link taken down, packets dropped, duplicated or corrupted
by nftables, and a proxy that flips bits in page data, frame headers, the file list and files on their way from
the page server to lr-lazyd.

The kernel here has no netem (CONFIG_NET_SCH_NETEM); nftables' `numgen random` drops and duplicates packets at
a chosen rate, and its payload statement rewrites a byte of a TCP segment and fixes the TCP checksum, so the
corrupted byte reaches the receiver as if the sender had sent it: only lazyrestore's own checksums can catch it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lazyrestore import testhosts

NFT_TABLE = "lazyrestore_faults"
FRAME = struct.Struct("<IHHIIQ")
CHALLENGE_T, WELCOME_T, FILES_T, GET_FILE_T, FILE_DATA_T, PAGES_T = 2, 4, 6, 7, 8, 10
FILE_REQ = struct.Struct("<II")
PAGES_HDR = struct.Struct("<QIIQ")


def nft_available() -> str | None:
    """None when nftables can inject packet faults here, else why not."""
    return None if shutil.which("nft") else "nft (Debian's nftables) is not installed; `make bootstrap` installs it"


@contextmanager
def packet_faults(host: str, port: int, loss: float = 0, duplicate: float = 0, corrupt: float = 0) -> Iterator[None]:
    """Drop / duplicate / corrupt (one byte rewritten, TCP checksum fixed) that fraction of the TCP segments
    host (a or b) sends from or to `port`, until the block ends."""
    name, peer = (testhosts.HOST_A, testhosts.ADDR_B) if host == "a" else (testhosts.HOST_B, testhosts.ADDR_A)
    match = f"tcp sport {port}" if host == "a" else f"tcp dport {port}"
    rules = []
    # dup sends the copy out of the device that holds the host's address: its bridge (testhosts.py).
    for rate, action in ((loss, "drop"), (duplicate, f'dup to {peer} device "{testhosts.BRIDGE}"'),
                         (corrupt, "@th,400,8 set 0x5a")):
        if rate:
            rules.append(f"    {match} numgen random mod 100000 < {int(rate * 100000)} {action}")
    ruleset = (f"table ip {NFT_TABLE} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n"
               + "\n".join(rules) + "\n  }\n}\n")
    _nft(name, ["-f", "-"], ruleset)
    try:
        yield
    finally:
        _nft(name, ["delete", "table", "ip", NFT_TABLE])


def _nft(netns: str, args: list[str], stdin: str = "") -> None:
    res = subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True,
                         preexec_fn=testhosts.enter(netns), timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)} in {netns}: {res.stderr.strip()}")


@contextmanager
def link_down(host: str) -> Iterator[None]:
    """Take host's veth end down (a network partition) until the block ends."""
    name = testhosts.host_name(host)
    veth = testhosts.VETH_A if host == "a" else testhosts.VETH_B
    subprocess.run(["ip", "-n", name, "link", "set", veth, "down"], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "-n", name, "link", "set", veth, "up"], check=True)


@dataclass
class FlipProxy:
    """A TCP proxy in host A between lr-lazyd and the page server that flips one byte in the page data of the
    chosen PAGES frames (server to client), and in the replies to LIST and GET_FILE named in `files`."""

    target_port: int
    flip_every: int = 0          # damage every n-th PAGES frame (0: none)
    flip_limit: int = 1 << 30    # at most this many in all
    header: bool = False         # flip a byte of the frame's magic instead of its page data
    # "FILES" (the reply to LIST) or a file name -> how many of its replies to damage (a byte in the middle of
    # the first frame's payload)
    files: dict[str, int] = field(default_factory=dict)
    # which CHALLENGE and WELCOME frames to damage, counted together from 1 in the order they pass (the fetch's
    # channel: 1 and 2; the bulk channel after the fetch: 3 and 4; ...)
    handshake: frozenset[int] = frozenset()
    port: int = 0
    frames: int = 0
    handshakes: int = 0
    flipped: int = 0
    _listener: socket.socket | None = None
    _asked: dict[int, str] = field(default_factory=dict)  # GET_FILE request id -> the file's name
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FlipProxy:
        with testhosts.inside(testhosts.HOST_A):
            self._listener = socket.create_server((testhosts.ADDR_A, 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept_loop)
        return self

    @property
    def address(self) -> str:
        return f"{testhosts.ADDR_A}:{self.port}"

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        if self._listener:
            self._listener.close()

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            with testhosts.inside(testhosts.HOST_A):
                server = socket.create_connection((testhosts.ADDR_A, self.target_port))
            self._spawn(self._relay, client, server, False)
            self._spawn(self._relay, server, client, True)

    def _relay(self, src: socket.socket, dst: socket.socket, damage: bool) -> None:
        """src to dst until either ends; server to client (damage) frame by frame, the chosen PAGES frames
        with one byte flipped."""
        src.settimeout(0.2)
        buf, requests = bytearray(), bytearray()
        while not self._stop.is_set():
            try:
                data = src.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            buf += data
            if not damage:
                requests += data
                self._note_requests(requests)
            out = self._whole_frames(buf) if damage else bytes(buf)
            if not damage:
                buf.clear()
            try:
                dst.sendall(out)
            except OSError:
                break
        _close(src, dst)

    def _whole_frames(self, buf: bytearray) -> bytes:
        out = bytearray()
        while len(buf) >= FRAME.size:
            _, ftype, _, length, _, _ = FRAME.unpack_from(buf)
            if len(buf) < FRAME.size + length:
                break
            frame = buf[:FRAME.size + length]
            del buf[:FRAME.size + length]
            if ftype == PAGES_T:
                self._maybe_flip(frame)
            elif ftype in (FILES_T, FILE_DATA_T):
                self._maybe_flip_file(frame)
            elif ftype in (CHALLENGE_T, WELCOME_T):
                self._maybe_flip_handshake(frame)
            out += frame
        return bytes(out)

    def _note_requests(self, buf: bytearray) -> None:
        """The names of the files the client asks for, by request id (its frames, read as they pass)."""
        while len(buf) >= FRAME.size:
            _, ftype, _, length, _, req_id = FRAME.unpack_from(buf)
            if len(buf) < FRAME.size + length:
                return
            if ftype == GET_FILE_T and length >= FILE_REQ.size:
                n, _ = FILE_REQ.unpack_from(buf, FRAME.size)
                with self._lock:
                    self._asked[req_id] = bytes(buf[FRAME.size + FILE_REQ.size:FRAME.size + length][:n]).decode(
                        errors="replace")
            del buf[:FRAME.size + length]

    def _maybe_flip_handshake(self, frame: bytearray) -> None:
        with self._lock:
            self.handshakes += 1
            if self.handshakes not in self.handshake:
                return
            self.flipped += 1
        frame[FRAME.size + (len(frame) - FRAME.size) // 2] ^= 0x01

    def _maybe_flip_file(self, frame: bytearray) -> None:
        _, ftype, _, length, _, req_id = FRAME.unpack_from(frame)
        with self._lock:
            name = "FILES" if ftype == FILES_T else self._asked.pop(req_id, None)  # a reply's first frame only
            if name is None or not length or self.files.get(name, 0) <= 0:
                return
            self.files[name] -= 1
            self.flipped += 1
        frame[FRAME.size + length // 2] ^= 0x01

    def _maybe_flip(self, frame: bytearray) -> None:
        with self._lock:
            n = self.frames
            self.frames += 1
            if not self.flip_every or (n + 1) % self.flip_every or self.flipped >= self.flip_limit:
                return
            self.flipped += 1
        if self.header:
            frame[1] ^= 0x01
            return
        _, _, nblocks, data_len = PAGES_HDR.unpack_from(frame, FRAME.size)
        data_at = FRAME.size + PAGES_HDR.size + 8 * nblocks
        if data_len:
            frame[data_at + data_len // 2] ^= 0x01


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


# The migration mode a test_faults scenario runs in ("" for a checkpoint on disk, " (live)" for a live source):
# its fixture sets it, so that each mode's figures are reported apart.
MODE_SUFFIX = {"value": ""}


def record(scenario: str, **figures: object) -> None:
    """Append one scenario's figures to $LAZYRESTORE_RELIABILITY_LOG (written by `make reliability`)."""
    path = os.environ.get("LAZYRESTORE_RELIABILITY_LOG")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"scenario": scenario + MODE_SUFFIX["value"], "time": time.time(), **figures}) + "\n")


def mismatches(got: dict[str, str], expected: dict[str, str]) -> int:
    """Roles whose memory checksum differs from the original's."""
    return sum(1 for role, value in expected.items() if got.get(role) != value)


def log_text(workdir: Path) -> str:
    path = workdir / "run" / "lazyd.log"
    return path.read_text() if path.exists() else ""
