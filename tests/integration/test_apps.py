"""Real programs from Debian migrated lazily, each checked by its own data: redis-server with over 1 GiB (digest and
key count, a connection opened before the checkpoint, a client during the drain), nginx master and workers (files
byte for byte on a keep-alive connection opened before, and on new ones), a UDP service keeping state in memory, an
IPv6 listener, and a tree with an open TCP connection in its host's namespace (refused without an option, brought
back closed with --tcp-close).

Services that keep their address run as test-host services (hostservice.py: own pid and network namespaces on the
hosts' bridge). Each test has an address of its own: a new service at an address another had would wait for the
neighbours' stale ARP entries. Figures (times from the checkpoint's start, sizes) are printed (-s) and kept in
apps.FIGURES.
"""

from __future__ import annotations

import hashlib
import random
import socket
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from lazyrestore import hostservice, procs, testhosts

from . import apps
from .apps import Http, Resp, connect
from .helpers import run_cli

A, B = testhosts.HOST_A, testhosts.HOST_B

# ------------------------------------------------------------------------------------------------- redis

REDIS_PORT = 6379
REDIS_KEYS = 1_100_000  # DEBUG POPULATE: key:N -> "value:N" NUL-padded to 1 KiB: 1.05 GiB of values
REDIS_VALUE = 1024
OWN_KEYS = 200  # set by the test with random values, beside the populated ones


def start_redis(workdir: Path, reaper, address: str) -> tuple[int, Resp]:
    """redis-server as a service of host A, filled: its pid, and a client from host A."""
    apps.require_tools("redis-server")
    data = workdir / "redis"
    argv = ["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0", "--protected-mode", "no",
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(data),
            "--enable-debug-command", "yes"]
    svc = apps.start_service(A, data, argv, address, reaper)
    client = Resp(connect(A, address, REDIS_PORT, wait=20))
    assert client.call("DEBUG", "POPULATE", REDIS_KEYS, "key", REDIS_VALUE) == "OK"
    return svc.pid, client


def redis_checker(own: dict[bytes, bytes]):
    """ask(conn, rng) for a client loop: GET a populated key (or one of ours), the value checked."""
    names = sorted(own)

    def ask(conn: Resp, rng: random.Random) -> None:
        if rng.random() < 0.1:
            key = rng.choice(names)
            expected = own[key]
        else:
            n = rng.randrange(REDIS_KEYS)
            key, expected = b"key:%d" % n, apps.populated_value(n, REDIS_VALUE)
        got = conn.call("GET", key)
        assert got == expected, f"GET {key!r}: {got[:48]!r}... expected {expected[:48]!r}..."

    return ask


@pytest.mark.parametrize("mode", ["a-to-b", "local"])
def test_redis_with_1gib_migrates_lazily(hosts, workdir: Path, reaper, mode: str) -> None:
    address = {"a-to-b": "10.231.0.40", "local": "10.231.0.41"}[mode]
    pid, client = start_redis(workdir, reaper, address)
    rng = random.Random(mode)
    own = {b"own:%d" % i: rng.randbytes(rng.randrange(1, 4096)) for i in range(OWN_KEYS)}
    assert client.call("MSET", *[x for kv in own.items() for x in kv]) == "OK"
    ask = redis_checker(own)
    for _ in range(200):
        ask(client, rng)
    keys, digest = client.call("DBSIZE"), client.call("DEBUG", "DIGEST")
    used = int(client.info("memory")["used_memory"])
    assert keys == REDIS_KEYS + OWN_KEYS and used >= 1 << 30, (keys, used)
    client.close()
    held = Resp(connect(A, address, REDIS_PORT))  # open across the migration: its name is connection state
    assert held.call("CLIENT", "SETNAME", "held-across") == "OK"
    assert held.call("GET", b"own:7") == own[b"own:7"]

    dest = B if mode == "a-to-b" else A
    if mode == "a-to-b":
        moving = apps.migrate_a_to_b(pid, workdir, reaper, "--tcp-established")
    else:
        moving = apps.restore_here(pid, workdir, reaper, "a", "--tcp-established")
    with moving as moved:
        loop = apps.ClientLoop(dest, lambda: Resp(connect(dest, address, REDIS_PORT)), ask)
        first = loop.wait_first()
        # the connection opened before the checkpoint, during the drain: same client, same data
        assert held.call("CLIENT", "GETNAME") == b"held-across"
        assert held.call("GET", b"own:7") == own[b"own:7"]
        assert held.call("GET", b"key:123456") == apps.populated_value(123456, REDIS_VALUE)
        summary = moved.finish()
        during = loop.answers
        loop.stop()
    assert during > 0, "no answer came during the drain"
    for host in (A, B):  # new clients, at the same address, from both hosts
        fresh = Resp(connect(host, address, REDIS_PORT))
        assert fresh.call("DBSIZE") == keys
        fresh.close()
    fresh = Resp(connect(dest, address, REDIS_PORT))
    assert fresh.call("DEBUG", "DIGEST") == digest
    assert int(fresh.info("memory")["used_memory"]) >= used * 0.99
    fresh.close()
    assert held.call("PING") == "PONG" and held.call("CLIENT", "GETNAME") == b"held-across"
    held.close()
    if mode == "a-to-b":
        svc_outer = hostservice.outer_name(address)
        assert apps.link_master(B, svc_outer) == testhosts.BRIDGE and apps.link_master(A, svc_outer) is None
    assert summary["drain_bytes"] + summary["fault_bytes"] + summary["prefetch_bytes"] >= REDIS_KEYS * REDIS_VALUE
    apps.record(f"redis {mode}", {**moved.figures(first), "used_memory": used, "keys": keys,
                                  "answers_during_drain": during, "loop_answers": loop.answers})


# ------------------------------------------------------------------------------------------------- nginx

NGINX_PORT = 8080
NGINX_CONF = """
user root root;
daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    keepalive_timeout 600s;
    keepalive_requests 100000;
    default_type application/octet-stream;
    server {{
        listen {port};
        root {d}/www;
    }}
}}
"""


def nginx_site(base: Path) -> dict[str, bytes]:
    """The files nginx serves, written under base/www: {URL path: content}."""
    rng = random.Random("nginx")
    words = [rng.choice(("lazy", "restore", "page", "fault", "drain", "bridge", "veth")) for _ in range(60_000)]
    files = {
        "/index.html": b"<html><body><h1>lazyrestore</h1><p>served across a migration</p></body></html>\n",
        "/big.bin": rng.randbytes(6 << 20 | 12345),  # multi-MiB, not a multiple of a page
        "/docs/words.txt": " ".join(words).encode(),
    }
    for path, content in files.items():
        target = base / "www" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (base / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    return files


def get_all(conn: Http, files: dict[str, bytes]) -> None:
    for path, content in files.items():
        code, headers, body = conn.get(path)
        assert code == 200 and body == content, f"GET {path}: status {code}, {len(body)} bytes"
        assert headers.get("connection", "keep-alive").lower() == "keep-alive", headers


def test_nginx_master_and_workers_migrate_a_to_b(hosts, workdir: Path, reaper) -> None:
    apps.require_tools("nginx")
    address = "10.231.0.42"
    base = workdir / "nginx"
    files = nginx_site(base)
    conf = base / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=base, port=NGINX_PORT))
    svc = apps.start_service(A, base, ["nginx", "-p", str(base), "-c", str(conf)], address, reaper)
    apps.wait_for("nginx's two workers", lambda: len(apps.children(svc.pid)) == 2)
    held = Http(connect(A, address, NGINX_PORT, wait=20))  # keep-alive, open across the migration
    get_all(held, files)
    paths = sorted(files)

    def ask(conn: Http, rng: random.Random) -> None:
        path = rng.choice(paths)
        code, _, body = conn.get(path)
        assert code == 200 and body == files[path], f"GET {path}: status {code}, {len(body)} bytes"

    with apps.migrate_a_to_b(svc.pid, workdir, reaper, "--tcp-established") as moved:
        loop = apps.ClientLoop(B, lambda: Http(connect(B, address, NGINX_PORT)), ask)
        first = loop.wait_first()
        get_all(held, files)  # during the drain, on the connection opened before
        moved.finish()
        during = loop.answers
        loop.stop()
    assert len(apps.children(moved.pid)) == 2, "the restored master must have its two workers"
    get_all(held, files)
    held.close()
    for host in (A, B):
        fresh = Http(connect(host, address, NGINX_PORT))
        get_all(fresh, files)
        fresh.close()
    assert "[emerg]" not in (base / "error.log").read_text()
    apps.record("nginx a-to-b", {**moved.figures(first), "answers_during_drain": during,
                                 "site_bytes": sum(map(len, files.values()))})


# --------------------------------------------------------------------------------------------------- UDP

UDP_PORT = 5353
UDP_MIB = 64
UDP_SEED = 1515
# Answers "PING n" with "PONG n count digest": count of the pings it has taken, digest a hash of its state
# (UDP_MIB MiB of memory, each ping changing one byte) and of count and n. A repeated n from a peer (a client's
# retry) gets the same answer again, without a second step.
UDP_SERVER = r"""
import hashlib, random, socket, sys
port, mib, seed = map(int, sys.argv[1:4])
state = bytearray(random.Random(seed).randbytes(mib << 20))
count, last = 0, {}
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", port))
while True:
    data, peer = sock.recvfrom(512)
    words = data.split()
    if len(words) != 2 or words[0] != b"PING" or not words[1].isdigit():
        sock.sendto(b"ERR " + data[:64], peer)
        continue
    n = int(words[1])
    if peer in last and last[peer][0] == n:
        sock.sendto(last[peer][1], peer)
        continue
    count += 1
    pos = n * 1000003 % len(state)
    state[pos] = (state[pos] + n) & 0xFF
    h = hashlib.blake2b(state, digest_size=16)
    h.update(b"%d %d" % (count, n))
    last[peer] = (n, b"PONG %d %d %s" % (n, count, h.hexdigest().encode()))
    sock.sendto(last[peer][1], peer)
"""


class UdpModel:
    """What the UDP server's state must be: the same bytes, the same steps."""

    def __init__(self) -> None:
        self.state = bytearray(random.Random(UDP_SEED).randbytes(UDP_MIB << 20))
        self.count = 0

    def expect(self, n: int) -> bytes:
        self.count += 1
        pos = n * 1000003 % len(self.state)
        self.state[pos] = (self.state[pos] + n) & 0xFF
        h = hashlib.blake2b(self.state, digest_size=16)
        h.update(b"%d %d" % (self.count, n))
        return b"PONG %d %d %s" % (n, self.count, h.hexdigest().encode())


def udp_client(host: str, address: str) -> socket.socket:
    with testhosts.inside(host):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((address, UDP_PORT))
    return sock


def udp_ready(sock: socket.socket) -> bool:
    """Whether the service answers PING 0 (refused or silent while it starts)."""
    try:
        return apps.udp_ask(sock, b"PING 0", tries=1, wait=0.5).startswith(b"PONG 0 1 ")
    except (OSError, AssertionError):
        return False


def test_udp_service_with_state_migrates_a_to_b(hosts, workdir: Path, reaper) -> None:
    address = "10.231.0.43"
    script = workdir / "udp_state.py"
    script.write_text(UDP_SERVER)
    argv = [sys.executable, str(script), str(UDP_PORT), str(UDP_MIB), str(UDP_SEED)]
    svc = apps.start_service(A, workdir / "udp", argv, address, reaper)
    model = UdpModel()
    n = iter(range(1, 1 << 30))
    held = udp_client(A, address)  # one socket, before and after
    apps.wait_for("the UDP service", lambda: udp_ready(held))
    model.count = 1  # PING 0 changed nothing (0 added) but counted
    for _ in range(3):
        k = next(n)
        assert apps.udp_ask(held, b"PING %d" % k) == model.expect(k)
    with apps.migrate_a_to_b(svc.pid, workdir, reaper) as moved:
        fresh = udp_client(B, address)
        k = next(n)
        assert apps.udp_ask(fresh, b"PING %d" % k) == model.expect(k)
        first = time.monotonic()
        k = next(n)
        assert apps.udp_ask(held, b"PING %d" % k) == model.expect(k)  # the count went on: the same state
        moved.finish()
    for sock in (fresh, held, udp_client(A, address)):
        for _ in range(2):
            k = next(n)
            assert apps.udp_ask(sock, b"PING %d" % k) == model.expect(k)
        sock.close()
    apps.record("udp a-to-b", {**moved.figures(first), "state_bytes": UDP_MIB << 20, "pings": model.count})


# -------------------------------------------------------------------------------------------------- IPv6

HTTP6_PORT = 8000
ULA_SERVICE, ULA_HOST, ULA_PREFIXLEN = "fd31:231::44", "fd31:231::1", 64
IFA_F_NODAD = 0x02  # no duplicate address detection: the address answers at once, before and after restore


def add_ula(netns: str, ifname: str, address: str) -> None:
    with IPRoute(netns=netns, flags=0) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=address, prefixlen=ULA_PREFIXLEN,
                 flags=IFA_F_NODAD)


def test_ipv6_listener_restores_lazily_on_its_host(hosts, workdir: Path, reaper) -> None:
    address = "10.231.0.44"
    www = workdir / "www6"
    www.mkdir()
    content = random.Random("ipv6").randbytes(3 << 20)
    (www / "blob.bin").write_bytes(content)
    argv = [sys.executable, "-m", "http.server", "--bind", "::", "--directory", str(www), str(HTTP6_PORT)]
    svc = apps.start_service(A, workdir / "http6", argv, address, reaper)
    # An IPv6 address of the hosts' segment on the service's eth0 and on host A's bridge (hostservice sets IPv4)
    add_ula(f"/proc/{svc.pid}/ns/net", "eth0", ULA_SERVICE)
    add_ula(A, testhosts.BRIDGE, ULA_HOST)
    connect(A, ULA_SERVICE, HTTP6_PORT, wait=20).close()

    def answers(pid: int) -> None:
        assert apps.http_once(A, "::1", "/blob.bin", HTTP6_PORT, inside_of=pid) == content  # inside its namespace
        assert apps.http_once(A, ULA_SERVICE, "/blob.bin", HTTP6_PORT) == content  # from host A, over IPv6
        assert apps.http_once(A, address, "/blob.bin", HTTP6_PORT) == content  # the same socket, IPv4-mapped

    answers(svc.pid)
    with apps.restore_here(svc.pid, workdir, reaper, "a") as moved:
        answers(moved.pid)
        first = time.monotonic()
        moved.finish()
    answers(moved.pid)
    apps.record("ipv6 local", moved.figures(first))


# ------------------------------------------------------------------- open connections without own namespace

# A server and its client, two processes of one tree in the host's network namespace, connected over loopback.
# Each writes its state to a file of its own (never held open): "connected" after the first exchange, then
# "closed <error>" once the connection fails; then it idles.
TCP_PAIR = r"""
import os, socket, time
def status(role, text):
    with open(f"{role}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{role}.tmp", f"{role}.status")
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: see the test
server.bind(("127.0.0.1", 0))
server.listen()
port = server.getsockname()[1]
with open("port.tmp", "w") as f:
    f.write(str(port))
os.replace("port.tmp", "port")
if os.fork() == 0:
    role, conn = "client", socket.create_connection(("127.0.0.1", port))
    server.close()
else:
    role, (conn, _) = "server", server.accept()
n = 0
while True:
    try:
        if role == "client":
            conn.sendall(b"ping %d\n" % n)
            if not conn.recv(64):
                raise ConnectionError("end of stream")
            time.sleep(0.05)
        else:
            data = conn.recv(64)
            if not data:
                raise ConnectionError("end of stream")
            conn.sendall(b"pong " + data)
    except OSError as exc:
        status(role, f"closed {type(exc).__name__}: {exc}")
        break
    n += 1
    if n == 1:
        status(role, "connected")
while True:
    time.sleep(1)
"""


def test_open_connection_in_the_hosts_namespace_needs_an_option(hosts, workdir: Path, reaper) -> None:
    tree = workdir / "pair"
    tree.mkdir()
    (tree / "pair.py").write_text(TCP_PAIR)
    pid = apps.start_tree(A, tree, [sys.executable, str(tree / "pair.py")], reaper)

    def statuses() -> dict[str, str]:
        return {r: (tree / f"{r}.status").read_text() for r in ("server", "client") if (tree / f"{r}.status").exists()}

    apps.wait_for("the pair connected", lambda: statuses() == {"server": "connected", "client": "connected"})
    images = workdir / "images"
    res = run_cli("checkpoint", "--pid", str(pid), "--images", str(images), host="a")
    assert res.code == 8, res.stderr
    error = res.last("error")
    assert error["error"] == "CriuRefused", error
    first = error["message"].splitlines()[0]
    assert "open TCP connection" in first and "--tcp-established" in first and "--tcp-close" in first, first
    assert procs.is_running(pid) and statuses() == {"server": "connected", "client": "connected"}
    port = int((tree / "port").read_text())

    with apps.restore_here(pid, workdir, reaper, "a", "--tcp-close") as moved:
        assert moved.checkpoint["processes"] == 2
        apps.wait_for("both ends to see their connection closed",
                      lambda: all(s.startswith("closed ") for s in statuses().values()) and len(statuses()) == 2)
        moved.finish()
    assert procs.is_running(moved.pid) and len(apps.children(moved.pid)) == 1
    connect(A, "127.0.0.1", port).close()  # the listening socket came back open
    apps.record("tcp-close local", {**moved.figures(), "statuses": statuses()})
