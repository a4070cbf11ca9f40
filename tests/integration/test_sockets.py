"""TCP and the service's address across a migration: a service in its own network namespace (hostservice.py)
keeps its address and, with --tcp-established, its open connections; --tcp-close brings them back closed; the
options a checkpoint was taken with are recorded and applied by its restores."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from lazyrestore import hostservice, testhosts

from .helpers import run_cli
from .migration import finished, restore_on_b

# One address per test: a new service at an address another one had would wait for its neighbours' stale ARP
# entries to expire (a migrated service keeps its MAC address; a new one does not).
ADDRESSES = itertools.count(20)
PORT = 7000
# A line-echo server that also counts the lines it has seen on each connection: an answer proves the connection's
# state (and the server's memory) survived, not just that something listens.
SERVER = """
import socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        n = 0
        for line in self.rfile:
            n += 1
            self.wfile.write(str(n).encode() + b" " + line)
            self.wfile.flush()
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
S(("0.0.0.0", PORT), H).serve_forever()
""".replace("PORT", str(PORT))


class Client:
    """A TCP connection to the service, opened from test host A (in this thread's namespace there)."""

    def __init__(self, address: str) -> None:
        with testhosts.inside(testhosts.HOST_A):
            self.sock = socket.create_connection((address, PORT), timeout=30)
        self.sent = 0
        self.file = self.sock.makefile("rb")

    def ask(self, text: str) -> bytes:
        self.sent += 1
        self.sock.sendall(text.encode() + b"\n")
        return self.file.readline()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def service(hosts, workdir: Path, reaper) -> hostservice.HostService:
    script = workdir / "echo.py"
    script.write_text(SERVER)
    s = hostservice.start(testhosts.HOST_A, workdir / "svc", [sys.executable, str(script)],
                          f"10.231.0.{next(ADDRESSES)}")
    reaper.add(s.pid)
    deadline = time.monotonic() + 20
    while True:
        try:
            Client(s.address).close()
            return s
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_connection_open_before_a_remote_migration_answers_after_it(service, workdir: Path, reaper) -> None:
    client = Client(service.address)
    assert client.ask("before") == b"1 before\n"
    images = workdir / "images"
    mig = run_cli_background_migrate(service.pid, images, "--tcp-established")
    dst = restore_on_b(mig.address, images, workdir / "dst", until=("resumed",))
    reaper.add(dst.first("resumed")["pid"])
    summary = finished(dst)
    assert summary["resident_s"] is not None
    assert mig.run.finish(timeout=60).code == 0
    recorded = json.loads((images / "lazyrestore" / "manifest.json").read_text())["criu_options"]
    assert recorded["tcp_established"] is True
    assert recorded["external"] == [f"veth[eth0]:{service.outer}@{testhosts.BRIDGE}"]
    # the same connection, its count of lines carried over: the server's state and the socket's
    assert client.ask("after") == b"2 after\n"
    client.close()
    fresh = Client(service.address)
    assert fresh.ask("new") == b"1 new\n"
    fresh.close()
    with testhosts.inside(testhosts.HOST_B):
        assert _veth_master(service.outer) == testhosts.BRIDGE  # the namespace came back joined to B's bridge


def test_tcp_close_on_restore_brings_open_connections_back_closed(service, workdir: Path, reaper) -> None:
    client = Client(service.address)
    assert client.ask("one") == b"1 one\n"
    images = workdir / "images"
    res = run_cli("checkpoint", "--pid", str(service.pid), "--images", str(images), "--tcp-established",
                  "--network-lock", "nftables", host="a")
    assert res.code == 0, res.stderr
    assert json.loads((images / "lazyrestore" / "manifest.json").read_text())["criu_options"]["network_lock"] == \
        "nftables"
    res = run_cli("restore", "--images", str(images), "--lazy", "--tcp-close", host="a")
    assert res.code == 0, res.stderr
    reaper.add(res.last("summary")["pid"])
    # the server restored its side closed: the client's connection ends; the service still listens
    client.sock.settimeout(10)
    with _ends():
        answer = client.ask("two")
        assert answer == b"", f"a closed connection answered {answer!r}"
    client.close()
    fresh = Client(service.address)
    assert fresh.ask("fresh") == b"1 fresh\n"
    fresh.close()


def test_a_restore_names_a_missing_bridge_before_criu_runs(service, workdir: Path) -> None:
    images = workdir / "images"
    res = run_cli("checkpoint", "--pid", str(service.pid), "--images", str(images), host="a")
    assert res.code == 0, res.stderr
    res = run_cli("restore", "--images", str(images), "--lazy", "--external", "veth[eth0]:lrt-x@no-such-br", host="a")
    assert res.code != 0
    message = res.last("error")["message"]
    assert "bridge no-such-br" in message and "veth[eth0]:lrt-x@no-such-br" in message, message
    assert not list((images / "lazyrestore").glob("runs/*/restore.log")), "CRIU ran"


class _ends:
    """The block must end in a closed connection: EOF (the assert inside) or a reset."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:  # noqa: ANN001
        return kind is None or issubclass(kind, ConnectionError)


class _Migrate:
    def __init__(self, run) -> None:  # noqa: ANN001
        self.run = run
        self.address = f"{testhosts.ADDR_A}:{run.first('listening')['port']}"


def run_cli_background_migrate(pid: int, images: Path, *extra: str) -> _Migrate:
    from .helpers import Background
    return _Migrate(Background(["migrate", "--pid", str(pid), "--images", str(images), "--listen",
                                f"{testhosts.ADDR_A}:0", *extra], ("listening",), host="a"))


def _veth_master(name: str) -> str:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=name)[0])[0]
        master = link.get("IFLA_MASTER")
        return ipr.get_links(master)[0].get("IFLA_IFNAME") if master else ""


def test_a_live_migration_rolled_back_keeps_open_connections_working(service, workdir: Path) -> None:
    """--tcp-established: CRIU locks the network and puts the connections in repair mode while it holds the
    tree; a rollback (no destination came) must give both back, so the client's connection answers again."""
    client = Client(service.address)
    assert client.ask("before") == b"1 before\n"
    mig = run_cli_background_migrate(service.pid, workdir / "images", "--tcp-established")
    mig.run.proc.send_signal(signal.SIGINT)
    res = mig.run.finish(timeout=60)
    rolled = [e for e in mig.run.events if e["event"] == "rolled_back"]
    assert res.code != 0 and rolled, res.stderr
    assert rolled[0]["released"], "the connection's repair mode and CRIU's lock are released"
    client.sock.settimeout(10)
    assert client.ask("after") == b"2 after\n"
    client.close()
    fresh = Client(service.address)
    assert fresh.ask("new") == b"1 new\n"
    fresh.close()

