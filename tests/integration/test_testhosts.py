"""lazyrestore.testhosts: two network namespaces joined by a veth pair, optionally netem.

The delay and rate tests need a kernel with netem (CONFIG_NET_SCH_NETEM) and skip
without it; the request netem gets is checked on every kernel.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute, netns
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from lazyrestore import testhosts
from lazyrestore.errors import LazyRestoreError, NotPermitted, UsageError
from lazyrestore.testhosts import ADDR_A, ADDR_B, HOST_A, HOST_B, TestHosts

PORT = 47123


def _ours() -> list[str]:
    return sorted(set(netns.listnetns()) & {HOST_A, HOST_B})


@pytest.fixture
def hosts_down() -> Iterator[None]:
    """Start and end with no test hosts, whatever the test did."""
    testhosts.down()
    try:
        yield
    finally:
        testhosts.down()
        assert _ours() == []


def _up_or_skip(delay_ms: float = 0, rate_mbit: float = 0) -> TestHosts:
    try:
        return testhosts.up(delay_ms=delay_ms, rate_mbit=rate_mbit)
    except testhosts.NetemUnavailable as exc:
        assert _ours() == [], "a failed up() must leave nothing behind"
        pytest.skip(str(exc))


def _listen_in_a() -> socket.socket:
    with testhosts.inside(HOST_A):
        return socket.create_server((ADDR_A, PORT), backlog=128)


def _connect_time_from_b() -> float:
    with testhosts.inside(HOST_B):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(5)
        start = time.perf_counter()
        sock.connect((ADDR_A, PORT))
        return time.perf_counter() - start


def _median_connect_ms(tries: int = 11) -> float:
    with _listen_in_a():
        _connect_time_from_b()  # the first one also resolves the neighbour (ARP)
        return statistics.median(_connect_time_from_b() for _ in range(tries)) * 1000


def _netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def test_up_connects_the_hosts_and_isolates_them(hosts_down: None) -> None:
    hosts = testhosts.up()
    assert (hosts.a, hosts.b, hosts.addr_a, hosts.addr_b) == (HOST_A, HOST_B, ADDR_A, ADDR_B)
    assert (hosts.delay_ms, hosts.rate_mbit) == (0, 0)
    assert _ours() == [HOST_A, HOST_B]
    assert testhosts.exists() == hosts

    with _listen_in_a() as server:
        with testhosts.inside(HOST_B):
            client = socket.create_connection((ADDR_A, PORT), timeout=5)
        with client:
            conn, (peer, _) = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
        assert peer == ADDR_B

        # the root namespace has no route to the hosts
        with pytest.raises(OSError):
            socket.create_connection((ADDR_A, PORT), timeout=0.5).close()

        # a subprocess moved by enter() reaches A from B too
        code = f"import socket; socket.create_connection(({ADDR_A!r}, {PORT}), timeout=5).sendall(b'sub')"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=30, preexec_fn=testhosts.enter(HOST_B))
        conn, (peer, _) = server.accept()
        with conn:
            assert conn.recv(3) == b"sub"
        assert peer == ADDR_B

    assert sorted(testhosts.down()) == [HOST_A, HOST_B]
    assert _ours() == []
    assert testhosts.exists() is None
    assert testhosts.down() == []


def test_hosts_answer_at_once_and_keep_their_mac_when_services_come_and_go(hosts_down: None, tmp_path) -> None:
    from lazyrestore import hostservice

    testhosts.up()
    with _listen_in_a():  # up() returns once both bridge ports forward: the first ARP request is answered
        assert _connect_time_from_b() < 0.5

    def bridge_mac() -> str:
        with IPRoute(netns=HOST_A, flags=0) as ipr:
            return ipr.get_links(ipr.link_lookup(ifname=testhosts.BRIDGE)[0])[0].get("IFLA_ADDRESS")

    mac = bridge_mac()
    for i in range(8):  # random veth addresses: about half are below the bridge's, which a bridge would take
        svc = hostservice.start(HOST_A, tmp_path / str(i), ["sleep", "60"], f"10.231.0.{200 + i}")
        try:
            assert bridge_mac() == mac
        finally:
            os.kill(svc.pid, signal.SIGKILL)
    assert bridge_mac() == mac


def test_up_replaces_leftovers(hosts_down: None) -> None:
    netns.create(HOST_A)  # as if an earlier run crashed halfway
    testhosts.up()
    testhosts.up()
    assert _ours() == [HOST_A, HOST_B]
    assert testhosts.exists() is not None


def test_inside_restores_the_namespace(hosts_down: None) -> None:
    testhosts.up()
    before = _netns_inode()
    with pytest.raises(RuntimeError):
        with testhosts.inside(HOST_A):
            assert _netns_inode() != before
            assert os.path.exists(f"/proc/sys/net/ipv4/conf/{testhosts.VETH_A}")
            raise RuntimeError("boom")
    assert _netns_inode() == before

    # a thread already running stays where it is: only the calling thread moves
    seen: list[int] = []
    go = threading.Event()

    def other_thread() -> None:
        go.wait(10)
        seen.append(_netns_inode())

    thread = threading.Thread(target=other_thread)
    thread.start()
    with testhosts.inside(HOST_B):
        go.set()
        thread.join()
        inside_b = _netns_inode()
    assert seen == [before] and inside_b != before


def test_unknown_host_is_an_error(hosts_down: None) -> None:
    with pytest.raises(LazyRestoreError, match=HOST_A):
        with testhosts.inside(HOST_A):
            pass
    with pytest.raises(LazyRestoreError, match=HOST_B):
        testhosts.enter(HOST_B)


def test_netem_request_units() -> None:
    """1 ms is 15625 psched ticks of 64 ns, 100 Mbit/s is 12.5e6 bytes/s, and no TCA_RATE."""
    with open("/proc/net/psched") as f:
        ns_per_us, ns_per_tick = (int(x, 16) for x in f.read().split()[:2])
    msg = testhosts._netem_request(7, 1000, testhosts._check_rate(100))
    msg.encode()
    parsed = tcmsg(msg.data)
    parsed.decode()
    assert [name for name, _ in parsed["attrs"]] == ["TCA_KIND", "TCA_OPTIONS"]
    assert parsed.get_attr("TCA_KIND") == "netem"
    options = parsed.get_attr("TCA_OPTIONS")
    assert options["delay"] == 1000 * ns_per_us // ns_per_tick == 15625
    assert options.get_attr("TCA_NETEM_RATE")["rate"] == 12_500_000
    assert (parsed["index"], parsed["parent"]) == (7, 0xFFFFFFFF)


def test_delay_sets_the_round_trip_time(hosts_down: None) -> None:
    testhosts.up()
    assert _median_connect_ms() < 5

    hosts = _up_or_skip(delay_ms=5)
    assert hosts.delay_ms == 5
    assert testhosts.exists() == hosts
    rtt_ms = _median_connect_ms()
    assert 9 <= rtt_ms < 40, f"5 ms per direction gave a median connect time of {rtt_ms:.2f} ms"


def test_rate_limits_a_transfer(hosts_down: None) -> None:
    hosts = _up_or_skip(rate_mbit=100)
    assert (hosts.delay_ms, hosts.rate_mbit) == (0, 100)
    assert testhosts.exists() == hosts

    size = 4 << 20  # 4 MiB at 100 Mbit/s: at least 0.34 s
    with _listen_in_a() as server:
        with testhosts.inside(HOST_B):
            client = socket.create_connection((ADDR_A, PORT), timeout=30)
        conn, _ = server.accept()
        conn.settimeout(30)
        with client, conn:
            start = time.perf_counter()
            sender = threading.Thread(target=client.sendall, args=(bytes(size),))
            sender.start()
            received = 0
            while received < size:
                received += len(conn.recv(1 << 20))
            elapsed = time.perf_counter() - start
            sender.join()
    expected = size * 8 / 100e6
    assert elapsed >= 0.7 * expected, f"{size} bytes took {elapsed:.3f} s, under 100 Mbit/s they take {expected:.3f} s"


@pytest.mark.parametrize("kwargs, option", [
    ({"delay_ms": -1}, "delay_ms"),
    ({"delay_ms": 10_001}, "delay_ms"),
    ({"delay_ms": float("nan")}, "delay_ms"),
    ({"delay_ms": "5"}, "delay_ms"),
    ({"rate_mbit": -0.5}, "rate_mbit"),
    ({"rate_mbit": 100_001}, "rate_mbit"),
    ({"rate_mbit": float("inf")}, "rate_mbit"),
])
def test_bad_arguments(hosts_down: None, kwargs: dict[str, object], option: str) -> None:
    with pytest.raises(UsageError, match=option) as info:
        testhosts.up(**kwargs)  # type: ignore[arg-type]
    assert "expected" in str(info.value)
    assert _ours() == []


def test_host_name() -> None:
    assert testhosts.host_name("a") == testhosts.host_name("A") == HOST_A
    assert testhosts.host_name("b") == testhosts.host_name("B") == HOST_B
    for bad in ("c", "", "ab"):
        with pytest.raises(UsageError, match="'a' or 'b'"):
            testhosts.host_name(bad)


def test_needs_root(hosts_down: None) -> None:
    os.seteuid(65534)
    try:
        for call in (testhosts.up, testhosts.down, testhosts.exists, lambda: testhosts.enter(HOST_A)):
            with pytest.raises(NotPermitted, match="root"):
                call()
    finally:
        os.seteuid(0)
    assert _ours() == []
