"""Facts about a live process tree that CRIU's refusals leave out of its log (at log level 3): the peers of its
TCP connections, its unix sockets whose peer is outside it, the name of a device, our own capabilities.

Each function is best effort: what cannot be read is left out, never an error (these facts only make a message
more precise).
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

_SOCKET_LINK = re.compile(r"^socket:\[(\d+)\]$")
# /proc/net/tcp states (include/net/tcp_states.h) of a connected socket, those CRIU dumps only with
# --tcp-established or --tcp-close (criu/sk-inet.c: can_dump_inet_sk): every state but LISTEN, CLOSE, TIME_WAIT.
_CONNECTED = {"01", "02", "03", "04", "05", "08", "09", "0B"}
CAP_SYS_RESOURCE = 24


def tree_pids(root: int) -> list[int]:
    """root and its descendants, from /proc/PID/task/TID/children."""
    seen: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo += [int(x) for x in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
    return seen


def socket_inodes(pids: list[int]) -> set[int]:
    """The inodes of the sockets the processes have open."""
    found: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                match = _SOCKET_LINK.match(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if match:
                found.add(int(match[1]))
    return found


def proc_net_address(text: str) -> str:
    """ "0100007F:1F90" (an address as /proc/net/tcp prints it) as "127.0.0.1:8080"; IPv6 as "[::1]:8080"."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if sys.byteorder == "little":  # each 32-bit word is printed as a number in host byte order
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    number = int(port, 16)
    if len(raw) == 4:
        return f"{ipaddress.IPv4Address(raw)}:{number}"
    v6 = ipaddress.IPv6Address(raw)
    return f"{v6.ipv4_mapped}:{number}" if v6.ipv4_mapped else f"[{v6}]:{number}"


def tcp_connections(root: int) -> list[str]:
    """The tree's connected TCP sockets, as "LOCAL -> REMOTE", read in root's network namespace."""
    inodes = socket_inodes(tree_pids(root))
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{root}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] in _CONNECTED and fields[9].isdigit() and int(fields[9]) in inodes:
                found.append(f"{proc_net_address(fields[1])} -> {proc_net_address(fields[2])}")
    return found


def unix_peers_outside(root: int) -> list[int]:
    """The inodes of the tree's unix sockets whose peer is not in the tree (`ss -xa` in its network namespace)."""
    inodes = socket_inodes(tree_pids(root))
    try:
        out = subprocess.run(["nsenter", "-t", str(root), "-n", "ss", "-xaH"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in out.splitlines():
        fields = line.split()  # Netid State Recv-Q Send-Q Local-Address Inode Peer-Address Peer-Inode
        if len(fields) == 8 and fields[5].isdigit() and fields[7].isdigit():
            ino, peer = int(fields[5]), int(fields[7])
            if ino in inodes and peer and peer not in inodes:
                found.append(ino)
    return sorted(found)


def char_device_name(major_minor: str) -> str | None:
    """/dev/NAME of the character device "MAJOR:MINOR", from sysfs, or None."""
    try:
        uevent = Path(f"/sys/dev/char/{major_minor}/uevent").read_text()
    except OSError:
        return None
    names = [line.split("=", 1)[1] for line in uevent.splitlines() if line.startswith("DEVNAME=")]
    return f"/dev/{names[0]}" if names else None


def has_capability(cap: int) -> bool | None:
    """Whether this process has capability number cap in its effective set, or None if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None
