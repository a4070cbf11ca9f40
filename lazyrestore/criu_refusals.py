"""What CRIU refused, in lazyrestore's words: a table of CRIU log lines -> one-line explanations.

Each Refusal recognises the line CRIU 4.2 logs when it refuses a resource of the tree (or of a checkpoint, on
restore) and says which resource it is and which option or step helps, spelling options as lazyrestore's own
command line does. criu.failure() puts the explanation first and still quotes CRIU's lines below it.

The patterns follow CRIU 4.2.1's messages (criu/sk-inet.c, sockets.c, sk-unix.c, file-lock.c, files-ext.c,
mount.c, mount-v2.c, pie/parasite.c, cr-dump.c, files-reg.c, image.c, pstree.c, tty.c); a new table row needs
a unit test with the log line it matches (tests/unit/test_criu_refusals.py).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import treefacts

BOOTSTRAP = "run `make bootstrap` in the lazyrestore checkout to build CRIU 4.2.x"
MPTCP = 262  # IPPROTO_MPTCP
_SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET",
               6: "SOCK_DCCP", 10: "SOCK_PACKET"}


@dataclass(frozen=True)
class Context:
    """What an explanation may use besides CRIU's log line.

    action: "dump" or "restore".
    pid: the root of the tree being dumped (None on restore): its live sockets and devices can be looked up.
    """

    action: str
    pid: int | None = None


@dataclass(frozen=True)
class Refusal:
    """One kind of refusal.

    name: short and stable (CriuRefused.resource), e.g. "tcp-established".
    actions: the CRIU actions that log it ("dump", "restore").
    pattern: searched in each line of CRIU's log.
    explain: the one-line explanation, from the match and the context.
    """

    name: str
    actions: tuple[str, ...]
    pattern: re.Pattern[str]
    explain: Callable[[re.Match[str], Context], str]


@dataclass(frozen=True)
class Found:
    """A refusal recognised in a log: its table row, the explanation and the log line."""

    refusal: Refusal
    text: str
    line: str


def _list(items: list[str], most: int = 3) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def _tcp_open(m: re.Match[str], ctx: Context) -> str:
    conns = treefacts.tcp_connections(ctx.pid) if ctx.pid else []
    if len(conns) > 1:
        return (f"the tree has {len(conns)} open TCP connections ({_list(conns)}): checkpoint with "
                f"--tcp-established to keep them, or with --tcp-close to restore them closed")
    seen = f" ({conns[0]})" if conns else ""
    return (f"the tree has an open TCP connection{seen}: checkpoint with --tcp-established to keep it, "
            f"or with --tcp-close to restore it closed")


def _family(m: re.Match[str], ctx: Context) -> str:
    number = int(m["family"])
    try:
        name = f"{socket.AddressFamily(number).name} socket (family {number})"
    except ValueError:
        name = f"socket of family {number}"
    return (f"the tree has an {name}, which CRIU cannot checkpoint (it dumps unix, inet, inet6, packet and "
            f"netlink sockets): close it before the checkpoint, or run the tree without it")


def _proto(m: re.Match[str], ctx: Context) -> str:
    if int(m["proto"]) == MPTCP:
        return ("the tree has an MPTCP socket, which CRIU cannot checkpoint: run the tree with plain TCP "
                "(Go programs: start them with GODEBUG=multipathtcp=0)")
    return (f"the tree has an inet socket of protocol {m['proto']}, which CRIU cannot checkpoint (TCP, UDP, "
            f"UDP-Lite, ICMP and raw sockets only): close it before the checkpoint, or run the tree without it")


def _sock_type(m: re.Match[str], ctx: Context) -> str:
    number = int(m["type"])
    kind = _SOCK_TYPES.get(number, f"type {number}")
    return (f"the tree has a{'' if m['family'] == 'inet' else ' unix'} socket of type {kind}, which CRIU cannot "
            f"checkpoint: close it before the checkpoint, or run the tree without it")


def _unix_outside(m: re.Match[str], ctx: Context) -> str:
    inodes = treefacts.unix_peers_outside(ctx.pid) if ctx.pid else []
    which = f" (socket inode {_list([str(i) for i in inodes])})" if inodes else ""
    ext = f"unix[{inodes[0]}]" if len(inodes) == 1 else "unix[INODE]"
    find = "" if inodes else " (`ss -xp` shows the inode)"
    return (f"the tree has a unix socket connected to a process outside it{which}, e.g. its output going to "
            f"journald or to a pipe or socket of the program that started it: start the tree with its output in "
            f"files and its peers inside it, or checkpoint with --external {ext}{find} to dump it as an external "
            f"socket, whose peer must be there again at restore")


def _device(m: re.Match[str], ctx: Context) -> str:
    kind, info = m["kind"], m["info"]
    if kind == "chr":
        dev = treefacts.char_device_name(info)
        what = f"the character device {dev} ({info})" if dev else f"a character device ({info})"
    elif kind == "anon":
        what = f"an anonymous inode file ({info})"
    else:
        what = f"a file of a kind CRIU does not dump ({kind} {info})"
    return (f"the tree has {what} open as fd {m['fd']}, which CRIU cannot checkpoint: close it before the "
            f"checkpoint, or run the tree without it")


def _mount(m: re.Match[str], ctx: Context) -> str:
    where = m["mnt"] or ""
    if "/run/netns/" in where or where.startswith("./run/netns"):
        return (f"the tree runs in a mount namespace of its own (mount {where} has unreachable sharing): it was "
                f"started with `ip netns exec`, which makes one; start it with `nsenter --net=/run/netns/NAME` "
                f"(or `lazyrestore testhosts exec`) instead, or checkpoint with --enable-external-masters")
    mount = f"mount {where}" if where else "a mount"
    return (f"the tree's mount namespace has {mount} whose sharing master is outside it: checkpoint with "
            f"--enable-external-masters (restore it with the same mounts there), or start the tree in the host's "
            f"mount namespace")


def _other_user(m: re.Match[str], ctx: Context) -> str:
    lacking = treefacts.has_capability(treefacts.CAP_SYS_RESOURCE) is False
    why = ("CRIU here lacks CAP_SYS_RESOURCE (this host's root does not have it), which it needs to dump a "
           "process of another user" if lacking else "CRIU could not enter its /proc or read its limits")
    return (f"a process of the tree runs as another user than root and {why}: run the tree as root here, or "
            f"checkpoint it on a host where root has CAP_SYS_RESOURCE")


def _bad_size(m: re.Match[str], ctx: Context) -> str:
    path = "/" + m["path"].lstrip("/")
    return (f"file {path} is {m['size']} bytes now, the checkpoint expects {m['expect']}: CRIU restores open files "
            f"only at their checkpoint size; put it back as it was (a log that grew: `truncate -s {m['expect']} "
            f"{path}` drops what was added since), then restore again")


def _no_space(m: re.Match[str], ctx: Context) -> str:
    return ("the file system of the images directory is full: give an images directory with room for the "
            "tree's memory (tmpfs recommended)")


def _row(name: str, actions: str, pattern: str, explain: Callable[[re.Match[str], Context], str]) -> Refusal:
    return Refusal(name, tuple(actions.split()), re.compile(pattern), explain)


def _says(text: str) -> Callable[[re.Match[str], Context], str]:
    return lambda m, ctx: text


TABLE: tuple[Refusal, ...] = (
    _row("criu-too-old", "dump", r"Can't get 1:(16|34) opt",
         _says("this criu is too old for this kernel: CRIU < 4.2 cannot dump TCP, UDP or packet sockets on kernels "
               ">= 6.16, which restricted SO_PASSCRED and SO_PASSSEC to unix, netlink and bluetooth sockets; "
               f"{BOOTSTRAP}")),
    _row("tcp-established", "dump", r"Connected TCP socket, consider using --tcp-established", _tcp_open),
    _row("tcp-established", "restore", r"Connected TCP socket in image",
         _says("the checkpoint holds open TCP connections (it was dumped with --tcp-established): restore it with "
               "--tcp-established, or checkpoint again with --tcp-close to restore them closed")),
    _row("tcp-close", "restore", r"Need to set the --tcp-close option",
         _says("the checkpoint was taken with --tcp-close: restore it with --tcp-close as well (its TCP "
               "connections come back closed)")),
    _row("tcp-in-flight", "dump", r"In-flight connection \(l\) for",
         _says("a listening TCP socket of the tree has connections it has not accepted yet: checkpoint again "
               "once it has (CRIU's --tcp-skip-in-flight would drop them; lazyrestore does not pass it)")),
    _row("tcp-port-in-use", "restore", r"Can't bind inet socket .*Address already in use",
         _says("a port the tree's sockets are bound to is in use on this host: stop what uses it, or restore "
               "the tree into a network namespace of its own; when nothing listens there (`ss -tan`), connections "
               "the dump closed may still sit in TIME-WAIT on it (a program that binds without SO_REUSEADDR): "
               "retry after a minute")),
    _row("socket-family", "dump", r"Unknown socket collected \(family (?P<family>\d+)\)", _family),
    _row("socket-family", "dump", r"Sockets \(family (?P<family>\d+) proto \d+\) are not collected", _family),
    _row("socket-protocol", "dump", r"Unsupported proto (?P<proto>\d+) for socket", _proto),
    _row("socket-type", "dump", r"Can't dump (?P<type>\d+) (?P<family>inet) socket", _sock_type),
    _row("socket-type", "dump", r"(?P<family>Unsupported) type \((?P<type>\d+)\) on socket", _sock_type),
    _row("external-unix-socket", "dump", r"External socket is used\. Consider using --ext-unix-sk", _unix_outside),
    _row("external-unix-socket", "dump", r"Can't dump half of stream unix connection|Can't dump name-less external",
         _unix_outside),
    _row("external-unix-socket", "restore", r"External socket found in image",
         _says("the checkpoint holds a unix socket whose peer was outside the tree (dumped with --external "
               "unix[...]): CRIU reconnects it only with its --ext-unix-sk option, which lazyrestore does not "
               "pass; checkpoint the tree with its peers inside it")),
    _row("file-lock", "dump", r"Some file locks are hold by dumping tasks",
         _says("the tree holds a file lock (flock, fcntl or lockf): checkpoint with --file-locks to dump it, or "
               "release the lock before the checkpoint")),
    _row("file-lock", "dump", r"Unresolved lock found pid (?P<owner>\d+)",
         lambda m, ctx: f"a file the tree has open is locked by process {m['owner']} outside the tree: release "
                        f"that lock, or take the locking process into the tree"),
    _row("device", "dump", r"Can't dump file (?P<fd>\d+) of that type \[[0-7]+\] \((?P<kind>\w+) (?P<info>[^)]*)\)",
         _device),
    _row("mount-sharing", "dump",
         r"Mount \d+ (?P<mnt>\S+) \(master_id: \d+ shared_id: \d+\) has unreachable sharing"
         r"|Sharing group \(\d+, \d+\) has unreachable sharing", _mount),
    _row("other-user", "dump",
         r"can't dump unprivileged task|Can't get rlimit \d+: Operation not permitted"
         r"|parasite\.c:\d+\): Can't create a directory \(-13\)", _other_user),
    _row("session", "dump", r"The root process \d+ is not a session leader",
         _says("the tree's root is not a session leader (it shares the session of the shell that started it): "
               "start it with setsid, e.g. `unshare -p -f setsid CMD`")),
    _row("session-outside", "dump", r"A session leader of (?:zombie process )?(?P<pid>\d+)\(\d+\) is outside of its pid",
         lambda m, ctx: f"process {m['pid']} of the tree is in a session whose leader is outside the tree's pid "
                        f"namespace (the tree's root is not a session leader): start the tree with setsid as the "
                        f"init of its own pid namespace, e.g. `unshare -p -f setsid CMD`"),
    _row("terminal", "dump", r"Found slave peer index \d+ without",
         _says("the tree has a terminal open whose other end is outside it: start it with its input and output "
               "away from the terminal (`< /dev/null > app.log 2>&1`)")),
    _row("file-size", "restore", r"File (?P<path>.+) has bad size (?P<size>\d+) \(expect (?P<expect>\d+)\)",
         _bad_size),
    _row("no-space", "dump", r"No space left on device", _no_space),
)


def find(lines: Iterable[str], ctx: Context) -> Found | None:
    """The first line of CRIU's log a refusal of ctx.action recognises, explained; None if none does."""
    rows = [r for r in TABLE if ctx.action in r.actions]
    for line in lines:
        for row in rows:
            m = row.pattern.search(line)
            if m:
                return Found(row, row.explain(m, ctx), line)
    return None
