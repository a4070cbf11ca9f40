"""Two "test hosts" on one machine: network namespaces whose bridges a veth pair joins.

A migration is meant to cross a network: the page server (`lazyrestore serve` /
`migrate`) runs on the source host and the lazy restore (`restore --from
HOST:PORT`) on the destination. To exercise and benchmark that path on a single
machine, run the page server inside host A and the restore inside host B: the
pages then really travel over TCP between two network stacks, and never over the
root namespace's loopback.

Layout (all built with pyroute2 over netlink, never with `ip` or `tc`)::

    netns lr-host-a                              netns lr-host-b
    lr-br 10.231.0.1/24                          lr-br 10.231.0.2/24
      +-- lr-veth-a <--------------------------> lr-veth-b --+
      +-- (services: lr-svc-N, see hostservice.py)            +-- (services restored here)

Each host's address sits on a bridge of its own, lr-br, whose port lr-veth-a (lr-veth-b) joins the other host:
one L2 segment, 10.231.0.0/24. A service that must keep its address across a migration runs in a network
namespace of its own with an address of that segment, joined to its host's bridge by a veth pair; CRIU dumps
that namespace with it and recreates it on the other host, its outer veth end joined to the bridge there
(hostservice.py, README "What can be migrated").

Optionally a netem qdisc on BOTH veth ends emulates a slower network: each
direction gets the delay (so the round-trip time is twice the delay) and the rate.
netem needs a kernel with CONFIG_NET_SCH_NETEM; without it `up()` with a delay or a
rate raises NetemUnavailable (and leaves nothing behind).

Use ``inside(name)`` to run code (and the subprocesses it starts) in a host, or
``enter(name)`` as the ``preexec_fn`` of a subprocess. Everything here needs root.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import IPRoute, netns
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWQDISC, TC_H_ROOT
from pyroute2.netlink.rtnl.tcmsg import sched_netem, tcmsg
from pyroute2.netlink.rtnl.tcmsg.common import tick_in_usec, time2tick

from .errors import LazyRestoreError, NotPermitted, UsageError

# $LAZYRESTORE_TESTHOSTS_PREFIX (default "lr") names the hosts, so that two users (a test
# suite and a benchmark) can each have their own pair on one machine.
PREFIX = os.environ.get("LAZYRESTORE_TESTHOSTS_PREFIX", "lr")
HOST_A = f"{PREFIX}-host-a"
HOST_B = f"{PREFIX}-host-b"
VETH_A = f"{PREFIX}-veth-a"[:15]  # interface names: at most 15 bytes
VETH_B = f"{PREFIX}-veth-b"[:15]
BRIDGE = f"{PREFIX}-br"[:15]  # the same name on both hosts: a restored service's veth joins it
ADDR_A = "10.231.0.1"
ADDR_B = "10.231.0.2"
PREFIXLEN = 24

MAX_DELAY_MS = 10_000.0
# netem's TCA_NETEM_RATE carries bytes per second in 32 bits, and pyroute2 0.9.7
# cannot encode TCA_NETEM_RATE64: 0xFFFFFFFF B/s * 8 = 34359.7 Mbit/s.
MAX_RATE_MBIT = 34_359.0
# netem's queue in packets (tc's default is 1000): deep enough that the emulated
# link does not tail-drop at large bandwidth-delay products.
NETEM_LIMIT = 100_000
NETEM_HANDLE = 0x10000  # "1:"
BR_STATE_FORWARDING = 3  # linux/if_bridge.h

_ERRORS = (OSError, NetlinkError)


class NetemUnavailable(LazyRestoreError):
    """The kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so no delay or rate."""


@dataclass(frozen=True)
class TestHosts:
    """The two hosts: namespace names, addresses and the emulated link per direction."""

    __test__ = False  # not a pytest test class, despite its name

    a: str
    b: str
    addr_a: str
    addr_b: str
    delay_ms: float  # one-way delay on each veth end (RTT = 2 x delay); 0: none
    rate_mbit: float  # rate limit on each veth end; 0: unlimited
    veth_a: str = VETH_A
    veth_b: str = VETH_B
    prefixlen: int = PREFIXLEN
    bridge: str = BRIDGE


def host_name(letter: str) -> str:
    """"a"/"A" -> HOST_A, "b"/"B" -> HOST_B."""
    hosts = {"a": HOST_A, "b": HOST_B}
    name = hosts.get(letter.lower()) if isinstance(letter, str) else None
    if name is None:
        raise UsageError(f"test host: expected 'a' or 'b', got {letter!r}")
    return name


def up(delay_ms: float = 0, rate_mbit: float = 0) -> TestHosts:
    """(Re)create both hosts; any existing ones are removed first.

    delay_ms > 0 or rate_mbit > 0 attaches netem to both veth ends, so each
    direction is delayed by delay_ms (RTT = 2 x delay_ms) and limited to rate_mbit.
    On failure whatever was created is removed again and LazyRestoreError raised.
    """
    _require_root()
    delay_us = _check_delay(delay_ms)
    rate_bytes = _check_rate(rate_mbit)
    down()
    try:
        _build(delay_us, rate_bytes)
    except LazyRestoreError:
        down()
        raise
    except _ERRORS as exc:
        down()
        raise LazyRestoreError(f"cannot set up test hosts {HOST_A} and {HOST_B}: {_describe(exc)}") from exc
    return TestHosts(HOST_A, HOST_B, ADDR_A, ADDR_B, delay_us / 1000, rate_bytes * 8 / 1e6)


def down() -> list[str]:
    """Remove both hosts (their veth ends go with them); return the names removed."""
    _require_root()
    removed: list[str] = []
    for name in (HOST_A, HOST_B):
        if name in netns.listnetns():
            try:
                netns.remove(name)
            except OSError as exc:
                raise LazyRestoreError(f"cannot remove network namespace {name}: {_describe(exc)}") from exc
            removed.append(name)
    return removed


def exists() -> TestHosts | None:
    """The hosts as they are now, or None unless both namespaces and veth ends exist.

    delay_ms and rate_mbit are read back from the netem qdisc on lr-veth-a (up()
    puts the same one on both ends); 0 when there is no netem or it has none.
    """
    _require_root()
    if not all(name in netns.listnetns() for name in (HOST_A, HOST_B)):
        return None
    try:
        with _ipr(HOST_A) as ipr_a, _ipr(HOST_B) as ipr_b:
            index_a = ipr_a.link_lookup(ifname=VETH_A)
            if not index_a or not ipr_b.link_lookup(ifname=VETH_B) or not ipr_a.link_lookup(ifname=BRIDGE) \
                    or not ipr_b.link_lookup(ifname=BRIDGE):
                return None
            delay_ms, rate_mbit = _read_netem(ipr_a, index_a[0])
    except _ERRORS as exc:
        raise LazyRestoreError(f"cannot read test hosts {HOST_A} and {HOST_B}: {_describe(exc)}") from exc
    return TestHosts(HOST_A, HOST_B, ADDR_A, ADDR_B, delay_ms, rate_mbit)


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the calling thread in netns `name`; its previous netns comes back on exit.

    Only this thread moves. Sockets created inside belong to `name` for good;
    subprocesses and threads started inside inherit `name`.
    """
    _require_root()
    path = _ns_path(name)
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(path, name)
        try:
            yield
        finally:
            _setns(saved, "the previous network namespace")
    finally:
        os.close(saved)


@contextmanager
def rate_limit(rate_mbit: float) -> Iterator[None]:
    """Limit both veth ends to rate_mbit with a token bucket (tbf) until the block ends: a slower link where
    the kernel has no netem. The hosts must be up."""
    _require_root()
    rate_bytes = _check_rate(rate_mbit)
    burst = max(rate_bytes // 100, 64 << 10)  # 10 ms of traffic, at least 64 KiB
    try:
        for name, veth in ((HOST_A, VETH_A), (HOST_B, VETH_B)):
            with _ipr(name) as ipr:
                ipr.tc("replace", "tbf", ipr.link_lookup(ifname=veth)[0], 0x10000, rate=rate_bytes, burst=burst,
                       latency=50000)
    except (*_ERRORS, IndexError) as exc:
        _remove_tbf()
        raise LazyRestoreError(f"cannot limit the test hosts' link to {rate_mbit} Mbit/s: {_describe(exc)}") from exc
    try:
        yield
    finally:
        _remove_tbf()


def _remove_tbf() -> None:
    for name, veth in ((HOST_A, VETH_A), (HOST_B, VETH_B)):
        with _ipr(name) as ipr:
            index = ipr.link_lookup(ifname=veth)
            try:
                ipr.tc("del", index=index[0], root=True) if index else None
            except NetlinkError as exc:
                if exc.code != errno.ENOENT and exc.code != errno.EINVAL:  # not there: nothing to remove
                    raise


def enter(name: str) -> Callable[[], None]:
    """A subprocess `preexec_fn` that moves the child into netns `name`."""
    _require_root()
    path = _ns_path(name)

    def preexec() -> None:
        netns.setns(path, flags=0)

    return preexec


def _require_root() -> None:
    if os.geteuid() != 0:
        raise NotPermitted("test hosts need root (network namespaces, veth and qdiscs): run as root")


def _check_number(option: str, value: float, maximum: float, unit: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= maximum
    if not ok:
        raise UsageError(f"{option}: expected a number of {unit} from 0 to {maximum:g} (0: none), got {value!r}")
    return float(value)


def _check_delay(delay_ms: float) -> int:
    """The one-way delay in microseconds."""
    delay_us = round(_check_number("delay_ms", delay_ms, MAX_DELAY_MS, "milliseconds") * 1000)
    if delay_ms > 0 and delay_us == 0:
        raise UsageError(f"delay_ms: expected 0 or at least 0.001 ms (1 microsecond), got {delay_ms!r}")
    return delay_us


def _check_rate(rate_mbit: float) -> int:
    """The rate in bytes per second, as netem takes it."""
    rate_bytes = math.floor(_check_number("rate_mbit", rate_mbit, MAX_RATE_MBIT, "Mbit/s") * 1e6 / 8)
    if rate_mbit > 0 and rate_bytes == 0:
        raise UsageError(f"rate_mbit: expected 0 or at least 0.000008 Mbit/s (1 byte/s), got {rate_mbit!r}")
    return rate_bytes


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"netlink error {exc.code} ({os.strerror(exc.code)})"
    return str(exc)


def _ns_path(name: str) -> str:
    if not name or "/" in name or name not in netns.listnetns():
        raise LazyRestoreError(f"no network namespace {name!r} in {netns.NETNS_RUN_DIR} (run testhosts.up() first)")
    return f"{netns.NETNS_RUN_DIR}/{name}"


def _setns(target: str | int, label: str) -> None:
    try:
        netns.setns(target, flags=0)
    except OSError as exc:
        raise LazyRestoreError(f"cannot enter {label}: {exc}") from exc


def _ipr(name: str) -> IPRoute:
    """An RTNL socket in netns `name` (flags=0: never create it as a side effect)."""
    return IPRoute(netns=name, flags=0)


def _build(delay_us: int, rate_bytes: int) -> None:
    for name in (HOST_A, HOST_B):
        netns.create(name)
        if name not in netns.listnetns():
            raise LazyRestoreError(f"cannot create network namespace {name}")
    with _ipr(HOST_A) as ipr_a:
        ipr_a.link("add", ifname=VETH_A, kind="veth", peer={"ifname": VETH_B, "net_ns_fd": HOST_B})
        _configure(ipr_a, VETH_A, ADDR_A, delay_us, rate_bytes)
    with _ipr(HOST_B) as ipr_b:
        _configure(ipr_b, VETH_B, ADDR_B, delay_us, rate_bytes)
    for name, veth in ((HOST_A, VETH_A), (HOST_B, VETH_B)):
        _wait_forwarding(name, veth)


def _configure(ipr: IPRoute, veth: str, addr: str, delay_us: int, rate_bytes: int) -> None:
    ipr.link("set", index=_index(ipr, "lo"), state="up")
    ipr.link("add", ifname=BRIDGE, kind="bridge")
    bridge = _index(ipr, BRIDGE)
    index = _index(ipr, veth)
    # The bridge's MAC address set once and for all (its veth's): left to itself, a bridge takes the lowest of its
    # ports' addresses, so a service's veth joining or leaving it (hostservice.py, restores) would change the
    # host's address on the segment and leave the other host's ARP entry stale (seconds of lost packets).
    ipr.link("set", index=bridge, address=ipr.get_links(index)[0].get("IFLA_ADDRESS"))
    ipr.link("set", index=index, master=bridge)
    ipr.addr("add", index=bridge, address=addr, prefixlen=PREFIXLEN)
    ipr.link("set", index=bridge, state="up")
    ipr.link("set", index=index, state="up")
    if delay_us or rate_bytes:
        _add_netem(ipr, index, veth, delay_us, rate_bytes)


def _wait_forwarding(name: str, veth: str, timeout: float = 5.0) -> None:
    """Until the bridge port veth forwards: the kernel turns a new link's carrier on in its link-watch work, up to
    a second later; until then the port drops what comes (the other host's first ARP request went unanswered and
    its first connection took a second longer)."""
    deadline = time.monotonic() + timeout
    with _ipr(name) as ipr:
        index = _index(ipr, veth)
        while True:  # a dump: RTM_GETLINK of one index in AF_BRIDGE leaves IFLA_PROTINFO out
            states = [link.get("IFLA_PROTINFO").get("IFLA_BRPORT_STATE") for link in
                      ipr.get_links(family=socket.AF_BRIDGE) if link["index"] == index and link.get("IFLA_PROTINFO")]
            if states == [BR_STATE_FORWARDING] and _oper_up(ipr, BRIDGE) and _oper_up(ipr, veth):
                return
            if time.monotonic() > deadline:
                raise LazyRestoreError(f"bridge port {veth} in {name} does not forward after {timeout:g} s")
            time.sleep(0.01)


def _oper_up(ipr: IPRoute, ifname: str) -> bool:
    """The link is operationally up (carrier on: the link-watch work has run for it)."""
    link = ipr.get_links(_index(ipr, ifname))[0]
    return link.get("IFLA_OPERSTATE") == "UP" and link.get("IFLA_CARRIER") == 1


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LazyRestoreError(f"interface {ifname} is missing")
    return found[0]


def _netem_request(index: int, delay_us: int, rate_bytes: int) -> tcmsg:
    """RTM_NEWQDISC adding netem as the root qdisc of `index`.

    Built by hand: IPRoute.tc("add", "netem", rate=...) in pyroute2 0.9.7 also turns
    `rate` into a TCA_RATE attribute and fails to encode. netem takes the delay in
    psched ticks (sched_netem converts microseconds) and the rate in bytes/s.
    """
    params = {"delay": delay_us, "limit": NETEM_LIMIT}
    if rate_bytes:
        params["rate"] = rate_bytes
    msg = tcmsg()
    msg["index"] = index
    msg["handle"] = NETEM_HANDLE
    msg["parent"] = TC_H_ROOT
    msg["attrs"] = [["TCA_KIND", "netem"], ["TCA_OPTIONS", sched_netem.get_parameters(params)]]
    msg["header"]["type"] = RTM_NEWQDISC
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return msg


def _add_netem(ipr: IPRoute, index: int, veth: str, delay_us: int, rate_bytes: int) -> None:
    try:
        ipr.nlm_request_batch([_netem_request(index, delay_us, rate_bytes)])
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:
            raise NetemUnavailable("this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), "
                                   "so test hosts cannot emulate a delay or a rate") from exc
        raise
    got = _netem_options(ipr, index)
    expected = (int(time2tick(delay_us)), rate_bytes)
    if got is None or (got["delay"], _netem_rate(got)) != expected:
        raise LazyRestoreError(f"netem on {veth} did not take delay {delay_us} us and rate {rate_bytes} B/s: "
                               f"dumped back {got}")


def _netem_options(ipr: IPRoute, index: int) -> sched_netem.options | None:
    """The decoded TCA_OPTIONS of the netem qdisc on `index`, None without one."""
    for qdisc in ipr.get_qdiscs(index=index):
        if qdisc.get_attr("TCA_KIND") == "netem":
            return qdisc.get_attr("TCA_OPTIONS")
    return None


def _netem_rate(options: sched_netem.options) -> int:
    rate = options.get_attr("TCA_NETEM_RATE")
    return rate["rate"] if rate is not None else 0


def _read_netem(ipr: IPRoute, index: int) -> tuple[float, float]:
    """(delay_ms, rate_mbit) of the netem qdisc on `index`, (0, 0) without one."""
    options = _netem_options(ipr, index)
    if options is None:
        return 0.0, 0.0
    delay_us = round(options["delay"] / tick_in_usec)
    return delay_us / 1000, _netem_rate(options) * 8 / 1e6
