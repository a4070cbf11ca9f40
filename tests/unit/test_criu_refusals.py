"""CRIU's refusals in lazyrestore's words: every table row against the log line CRIU 4.2.1 writes for it, and
criu.failure() putting the explanation first (never pycriu's "Error(0): Unknown")."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pycriu
import pytest
from pycriu import rpc_pb2 as rpc
from pycriu.criu import CRIUExceptionExternal

from lazyrestore import criu, criu_refusals, treefacts
from lazyrestore.criu_refusals import Context
from lazyrestore.errors import CriuFailed, CriuRefused

DUMP, RESTORE = Context("dump"), Context("restore")

# (name, context, CRIU log line, words the explanation must hold). Lines as CRIU 4.2.1 logs them (seen here, or
# its pr_err format with the values filled in).
CASES = [
    ("criu-too-old", DUMP, "(00.041102) Error (criu/sockets.c:628): sockets: Can't get 1:16 opt: Operation not supported",
     ["too old", "4.2", "6.16", "SO_PASSCRED", "make bootstrap"]),
    ("criu-too-old", DUMP, "(00.041102) Error (criu/sockets.c:628): sockets: Can't get 1:34 opt: Operation not supported",
     ["too old"]),
    ("tcp-established", DUMP,
     "(00.035953) Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using --tcp-established option.",
     ["open TCP connection", "--tcp-established", "--tcp-close"]),
    ("tcp-established", RESTORE, "(00.020000)      1: Error (criu/sk-inet.c:912): inet: Connected TCP socket in image",
     ["holds open TCP connections", "restore it with --tcp-established"]),
    ("tcp-close", RESTORE, "(00.001000) Error (criu/image.c:94): Need to set the --tcp-close options.",
     ["taken with --tcp-close", "restore it with --tcp-close"]),
    ("tcp-in-flight", DUMP, "(00.030000) Error (criu/sk-inet.c:184): inet: In-flight connection (l) for 1a2b3c",
     ["not accepted yet"]),
    ("tcp-port-in-use", RESTORE,
     "(00.030000)      1: Error (criu/sk-inet.c:1059): inet: Can't bind inet socket (id 7): Address already in use",
     ["in use on this host"]),
    ("socket-family", DUMP, "(00.029900) Error (criu/sockets.c:767): sockets: BUG! Unknown socket collected (family 40)",
     ["AF_VSOCK socket (family 40)", "cannot checkpoint"]),
    ("socket-family", DUMP, "(00.029900) Error (criu/sockets.c:448): sockets: Sockets (family 38 proto 0) are not collected",
     ["AF_ALG socket (family 38)"]),
    ("socket-protocol", DUMP, "(00.029900) Error (criu/sk-inet.c:138): inet: Unsupported proto 262 for socket 5d2a1",
     ["MPTCP", "GODEBUG=multipathtcp=0"]),
    ("socket-protocol", DUMP, "(00.029900) Error (criu/sk-inet.c:138): inet: Unsupported proto 132 for socket 5d2a1",
     ["protocol 132"]),
    ("socket-type", DUMP, "(00.029900) Error (criu/sk-inet.c:167): inet: Can't dump 5 inet socket 5d2a1. Only stream, "
     "dgram and raw are supported.", ["SOCK_SEQPACKET"]),
    ("external-unix-socket", DUMP,
     "(00.032963) Error (criu/sk-unix.c:874): unix: External socket is used. Consider using --ext-unix-sk option.",
     ["unix socket connected to a process outside it", "--external unix[INODE]", "ss -xp"]),
    ("external-unix-socket", RESTORE, "(00.010000)      1: Error (criu/sk-unix.c:1912): unix: External socket found in "
     "image. Consider using the --ext-unix-sk option to allow restoring it.", ["peer was outside the tree"]),
    ("file-lock", DUMP, "(00.027602) Error (criu/file-lock.c:110): Some file locks are hold by dumping tasks! You can "
     "try --file-locks to dump them.", ["file lock", "checkpoint with --file-locks", "release the lock"]),
    ("file-lock", DUMP, "(00.027602) Error (criu/file-lock.c:102): Unresolved lock found pid 4242 ino 1234",
     ["locked by process 4242 outside the tree"]),
    ("device", DUMP, "(00.028206) Error (criu/files-ext.c:94): Can't dump file 3 of that type [20600] (chr 10:237)",
     ["character device", "10:237", "as fd 3", "cannot checkpoint"]),
    ("device", DUMP, "(00.028206) Error (criu/files-ext.c:94): Can't dump file 7 of that type [0] (anon [io_uring])",
     ["anonymous inode file ([io_uring])", "fd 7"]),
    ("mount-sharing", DUMP, "(00.034908) Error (criu/mount.c:1092): mnt: Mount 93 ./run/netns/h2exp (master_id: 6 "
     "shared_id: 0) has unreachable sharing. Try --enable-external-masters.",
     ["mount namespace of its own", "ip netns exec", "nsenter --net=/run/netns/NAME", "--enable-external-masters"]),
    ("mount-sharing", DUMP, "(00.034908) Error (criu/mount.c:1092): mnt: Mount 97 ./data (master_id: 12 shared_id: 0) "
     "has unreachable sharing. Try --enable-external-masters.", ["mount ./data", "--enable-external-masters"]),
    ("mount-sharing", DUMP, "(00.034908) Error (criu/mount-v2.c:197): mnt-v2: Sharing group (3, 5) has unreachable "
     "sharing. Try --enable-external-masters.", ["--enable-external-masters"]),
    ("other-user", DUMP, "pie: 1: Error (criu/pie/parasite.c:641): can't dump unprivileged task whose /proc doesn't "
     "belong to it", ["another user", "CAP_SYS_RESOURCE"]),
    ("other-user", DUMP, "(00.010000) Error (criu/cr-dump.c:389): Can't get rlimit 0: Operation not permitted",
     ["another user"]),
    ("other-user", DUMP, "pie: 1: Error (criu/pie/parasite.c:634): Can't create a directory (-13)", ["another user"]),
    ("session", DUMP, "(00.067663) Error (criu/pstree.c:304): The root process 24713 is not a session leader. Consider "
     "using --shell-job option", ["session leader", "setsid"]),
    ("session-outside", DUMP, "(00.038340) Error (criu/cr-dump.c:1528): A session leader of 3622(3622) is outside "
     "of its pid namespace", ["process 3622", "session leader", "setsid"]),
    ("terminal", DUMP, "(00.020000) Error (criu/tty.c:410): tty: Found slave peer index 3 without correspond master peer",
     ["terminal", "/dev/null"]),
    ("file-size", RESTORE, "(00.030937)      1: Error (criu/files-reg.c:2175): File dev/shm/x/app.log has bad size 68 "
     "(expect 62)", ["/dev/shm/x/app.log is 68 bytes", "expects 62", "truncate -s 62 /dev/shm/x/app.log"]),
    ("no-space", DUMP, "(00.100000) Error (criu/page-xfer.c:700): Unable to write pages: No space left on device",
     ["full"]),
]


@pytest.mark.parametrize("name,ctx,line,words", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_refusal_is_recognised(name: str, ctx: Context, line: str, words: list[str]) -> None:
    found = criu_refusals.find(["(00.000001) Version: 4.2.1", line, "(00.2) Error (criu/cr-dump.c:1975): Dumping FAILED."],
                               ctx)
    assert found is not None and found.refusal.name == name, found
    assert found.line == line
    for word in words:
        assert word in found.text, (word, found.text)
    assert "\n" not in found.text, "one line"


def test_every_row_has_a_case() -> None:
    assert {r.name for r in criu_refusals.TABLE} == {c[0] for c in CASES}


def test_rows_apply_to_their_action_only() -> None:
    line = "(00.0) Error (criu/files-reg.c:2175): File a/b has bad size 1 (expect 2)"
    assert criu_refusals.find([line], DUMP) is None
    assert criu_refusals.find([line], RESTORE) is not None


def test_the_first_refusal_in_the_log_wins() -> None:
    lines = ["(1) Error (criu/file-lock.c:110): Some file locks are hold by dumping tasks! You can try --file-locks",
             "(2) Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using --tcp-established option."]
    found = criu_refusals.find(lines, DUMP)
    assert found is not None and found.refusal.name == "file-lock"


def test_unrecognised_log_is_none() -> None:
    assert criu_refusals.find(["(1) Error (criu/cr-dump.c:1975): Dumping FAILED."], DUMP) is None
    assert criu_refusals.find([], RESTORE) is None


def test_tcp_refusal_names_the_connection_when_the_tree_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    line = "(1) Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using --tcp-established option."
    monkeypatch.setattr(treefacts, "tcp_connections", lambda pid: ["127.0.0.1:40000 -> 127.0.0.1:8080"])
    found = criu_refusals.find([line], Context("dump", 4242))
    assert found is not None
    assert "open TCP connection (127.0.0.1:40000 -> 127.0.0.1:8080): checkpoint with --tcp-established" in found.text
    monkeypatch.setattr(treefacts, "tcp_connections", lambda pid: [f"127.0.0.1:{p} -> 127.0.0.1:80" for p in range(5)])
    found = criu_refusals.find([line], Context("dump", 4242))
    assert found is not None and "5 open TCP connections" in found.text and "and 2 more" in found.text
    assert "keep them" in found.text


def test_external_unix_refusal_names_the_inode(monkeypatch: pytest.MonkeyPatch) -> None:
    line = "(1) Error (criu/sk-unix.c:874): unix: External socket is used. Consider using --ext-unix-sk option."
    monkeypatch.setattr(treefacts, "unix_peers_outside", lambda pid: [12102003])
    found = criu_refusals.find([line], Context("dump", 4242))
    assert found is not None and "--external unix[12102003]" in found.text and "ss -xp" not in found.text


def test_other_user_says_when_root_lacks_cap_sys_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    line = "pie: 1: Error (criu/pie/parasite.c:641): can't dump unprivileged task whose /proc doesn't belong to it"
    monkeypatch.setattr(treefacts, "has_capability", lambda cap: False)
    found = criu_refusals.find([line], DUMP)
    assert found is not None and "lacks CAP_SYS_RESOURCE" in found.text
    monkeypatch.setattr(treefacts, "has_capability", lambda cap: True)
    found = criu_refusals.find([line], DUMP)
    assert found is not None and "lacks" not in found.text


# ---------------------------------------------------------------- treefacts

@pytest.mark.parametrize("text,shown", [
    ("0100007F:1F90", "127.0.0.1:8080"),
    ("00000000000000000000000001000000:0050", "[::1]:80"),
    ("0000000000000000FFFF00000100007F:0050", "127.0.0.1:80"),
])
def test_proc_net_address(text: str, shown: str) -> None:
    assert treefacts.proc_net_address(text) == shown


def test_tcp_connections_of_this_process() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                found = treefacts.tcp_connections(os.getpid())
                local, remote = client.getsockname(), server.getsockname()
                assert f"{local[0]}:{local[1]} -> {remote[0]}:{remote[1]}" in found
                assert not any("-> 0.0.0.0:0" in c for c in found), "a listening socket is no connection"


# ---------------------------------------------------------------- criu.failure

def unknown_error(req: int = rpc.DUMP) -> pycriu.CRIUException:
    return CRIUExceptionExternal(req, req, 0)


def write_log(tmp_path: Path, *lines: str) -> Path:
    log = tmp_path / "dump.log"
    log.write_text("\n".join(["(00.000001) Version: 4.2.1",
                              "(00.000100) Error (criu/kerndat.c:1): rlimit: Can't setup RLIMIT_NOFILE for self: "
                              "Operation not permitted", *lines]) + "\n")
    return log


def test_failure_explains_a_refusal_and_quotes_the_log(tmp_path: Path) -> None:
    log = write_log(tmp_path, "(00.035953) Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using "
                              "--tcp-established option.", "(00.036195) Error (criu/cr-dump.c:1975): Dumping FAILED.")
    exc = criu.failure("dump", unknown_error(), log)
    assert isinstance(exc, CriuRefused) and exc.exit_code == 8 and exc.resource == "tcp-established"
    first, *quoted = str(exc).splitlines()
    assert first.startswith("criu dump refused: the tree has an open TCP connection") and f"log: {log}" in first
    assert any("Connected TCP socket" in q and q.startswith("  | ") for q in quoted)
    assert "Error(0)" not in str(exc) and "Unknown" not in str(exc)


def test_failure_without_a_known_refusal_gives_criu_first_real_error(tmp_path: Path) -> None:
    log = write_log(tmp_path, "(00.01) Error (criu/cr-restore.c:1): Can't do the thing: Invalid argument",
                    "(00.02) Error (criu/cr-restore.c:2331): Restoring FAILED.")
    exc = criu.failure("restore", unknown_error(rpc.RESTORE), log)
    assert type(exc) is CriuFailed
    assert str(exc).splitlines()[0] == f"criu restore failed: Can't do the thing: Invalid argument; log: {log}"


def test_failure_with_nothing_in_the_log(tmp_path: Path) -> None:
    exc = criu.failure("dump", unknown_error(), tmp_path / "absent.log")
    assert str(exc).startswith("criu dump failed: CRIU failed (see log); log: ")
    assert "could not be read" in str(exc)


def test_failure_keeps_pycriu_text_when_it_means_something(tmp_path: Path) -> None:
    exc = criu.failure("dump", CRIUExceptionExternal(rpc.DUMP, rpc.DUMP, errno.ESRCH), write_log(tmp_path))
    assert "No process with such pid" in str(exc)


def test_relocated_failure_names_the_new_log(tmp_path: Path) -> None:
    log = write_log(tmp_path, "(1) Error (criu/file-lock.c:110): Some file locks are hold by dumping tasks!")
    exc = criu.failure("dump", unknown_error(), log)
    moved = exc.relocated("/elsewhere/x.log")
    assert isinstance(moved, CriuRefused) and moved.resource == "file-lock"
    assert "log: /elsewhere/x.log" in str(moved) and str(log) not in str(moved)


@pytest.mark.parametrize("line,text", [
    ("(00.030937)      1: Error (criu/files-reg.c:2175): File a has bad size 68 (expect 62)",
     "File a has bad size 68 (expect 62)"),
    ("pie: 1: Error (criu/pie/parasite.c:657): Can't get /proc fd", "Can't get /proc fd"),
])
def test_first_error_strips_criu_prefixes(line: str, text: str) -> None:
    assert criu.first_error(["(0) Error (criu/cr-dump.c:1975): Dumping FAILED.", line]) == text
