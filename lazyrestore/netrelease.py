"""What CRIU would leave holding when it resumes a tree from a failed `criu dump --lazy-pages` (a live migration's
rollback) with --tcp-established: CRIU 4.2.1 would undo its network lock before it serves the lazy pages
(cr_dump_finish) only for a tree it leaves running, and not at all when that transfer fails, so the resumed
tree's connections would stay frozen (and a recv pending in repair mode fails with EPERM: the server's handler
drops the connection). Released here while CRIU still holds the tree stopped, as its network_unlock() would:
  - TCP repair mode, on each TCP socket of the tree still in it (a copy of the socket taken with pidfd_getfd;
    TCP_REPAIR set to 0, as libsoccr's tcp_repair_off, which sends a window probe);
  - the network lock: in the tree's own network namespace, the iptables/ip6tables chain CRIU and its jumps
    from INPUT and OUTPUT, and nftables tables named CRIU-*; in a namespace the tree shares, only CRIU's
    per-connection DROP rules that name one of the tree's connections, and nftables tables CRIU-* (CRIU
    names them after its run).
"""

from __future__ import annotations

import ctypes
import os
import re
import socket
import subprocess
from dataclasses import dataclass

from . import treefacts

SYS_PIDFD_GETFD = 438
TCP_REPAIR = 19
SOCCR_MARK = "0xc114"
_SOCKET = re.compile(r"^socket:\[(\d+)\]$")


@dataclass(frozen=True)
class Conn:
    local: tuple[str, int]
    peer: tuple[str, int]


def release(root: int) -> list[str]:
    """Repair mode off on the tree's TCP sockets and CRIU's network lock removed; what was done, a line each."""
    done, conns = repair_off(root)
    return done + unlock(root, conns)


def repair_off(root: int) -> tuple[list[str], list[Conn]]:
    done: list[str] = []
    conns: list[Conn] = []
    for pid in treefacts.tree_pids(root):
        for fd in _socket_fds(pid):
            sock = _copy(pid, fd)
            if sock is None:
                continue
            with sock:
                if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                conn = _conn(sock)
                if conn is not None:
                    conns.append(conn)
                if sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR):
                    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)
                    ends = f" ({conn.local[0]}:{conn.local[1]} - {conn.peer[0]}:{conn.peer[1]})" if conn else ""
                    done.append(f"TCP repair mode off: pid {pid} fd {fd}{ends}")
    return done, conns


def _socket_fds(pid: int) -> list[int]:
    found = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for name in names:
        try:
            if _SOCKET.match(os.readlink(f"/proc/{pid}/fd/{name}")):
                found.append(int(name))
        except OSError:
            continue
    return found


def _copy(pid: int, fd: int) -> socket.socket | None:
    """The process's fd as a socket of ours (the same open socket), or None when it cannot be had."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mine = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if mine < 0:
            return None
        return socket.socket(fileno=mine)
    finally:
        os.close(pidfd)


def _conn(sock: socket.socket) -> Conn | None:
    try:
        local, peer = sock.getsockname(), sock.getpeername()
    except OSError:
        return None  # listening or not connected
    return Conn((local[0], local[1]), (peer[0], peer[1]))


def unlock(root: int, conns: list[Conn]) -> list[str]:
    own = os.stat(f"/proc/{root}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    net = ["nsenter", f"--net=/proc/{root}/ns/net"] if own else []
    done = _nft_tables(net)
    for tool in ("iptables", "ip6tables"):
        done += _chain(net, tool) if own else _connection_rules(tool, conns)
    return done


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _nft_tables(net: list[str]) -> list[str]:
    try:
        out = _run([*net, "nft", "list", "tables"])
    except (OSError, subprocess.TimeoutExpired):
        return []
    done = []
    for line in out.stdout.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "table" and words[2].startswith("CRIU-"):
            if _run([*net, "nft", "delete", "table", words[1], words[2]]).returncode == 0:
                done.append(f"nftables table {words[1]} {words[2]} deleted")
    return done


def _chain(net: list[str], tool: str) -> list[str]:
    """CRIU's lock chain in the tree's own namespace: the jumps to it, then the chain."""
    steps = (["-D", "INPUT", "-j", "CRIU"], ["-D", "OUTPUT", "-j", "CRIU"], ["-F", "CRIU"], ["-X", "CRIU"])
    try:
        ok = [_run([*net, tool, "-w", *step]).returncode == 0 for step in steps]
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [f"{tool}: CRIU's lock chain removed"] if ok[-1] else []


def _connection_rules(tool: str, conns: list[Conn]) -> list[str]:
    """CRIU's per-connection DROP rules (a tree sharing this namespace) that name one of the tree's connections."""
    try:
        rules = _run([tool, "-w", "-S"]).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return []
    done = []
    for rule in rules:
        words = rule.split()
        if len(words) < 3 or words[0] != "-A" or SOCCR_MARK not in rule.lower() or "DROP" not in words:
            continue
        if any(_names(words, c) for c in conns) and _run([tool, "-w", "-D", *words[1:]]).returncode == 0:
            done.append(f"{tool}: rule removed: {rule}")
    return done


def _names(words: list[str], c: Conn) -> bool:
    def value(flag: str) -> str:
        return words[words.index(flag) + 1] if flag in words[:-1] else ""
    ends = {(value("-s").split("/")[0], value("--sport")), (value("-d").split("/")[0], value("--dport"))}
    return {(c.local[0], str(c.local[1])), (c.peer[0], str(c.peer[1]))} == ends
