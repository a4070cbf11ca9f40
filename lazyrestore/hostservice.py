"""A service on a test host that keeps its address when it migrates: its own pid and network namespaces.

    unshare -p -n -f setsid sh -c 'wait for the network; exec COMMAND > LOG 2>&1'

runs as the init of a new pid namespace and a new network namespace, started from inside test host A or B.
Then a veth pair joins that namespace (inner end eth0, ADDRESS/24, default route via its host) to the host's
bridge (outer end lr-svc-N); only then does COMMAND start. `lazyrestore checkpoint` finds the veth pair and
records `--external veth[eth0]:lr-svc-N@lr-br`, so any restore recreates the namespace with its address and
joins it to the bridge of the host it runs on: clients on the segment reach it at the same address, and
connections open at checkpoint time go on with --tcp-established (README, "What can be migrated").
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import procs, testhosts
from .errors import LazyRestoreError

READY_FILE = "network-ready"
INNER = "eth0"


@dataclass(frozen=True)
class HostService:
    """pid: the service's root (init of its pid and network namespaces); address: its IPv4 address;
    outer: the veth end in the host's namespace; log: COMMAND's output."""

    pid: int
    address: str
    outer: str
    log: Path


def outer_name(address: str) -> str:
    """The host-side veth name for a service address: PREFIX-svc-<last octet> (15 bytes at most)."""
    return f"{testhosts.PREFIX}-svc-{address.rsplit('.', 1)[-1]}"[:15]


def start(host: str, workdir: Path, argv: list[str], address: str, timeout: float = 30.0) -> HostService:
    """Start argv on test host `host` (a name from testhosts) in namespaces of its own, at address (in the
    test hosts' /24, e.g. 10.231.0.10); returns once argv has been started."""
    workdir.mkdir(parents=True, exist_ok=True)
    log, ready = workdir / "service.log", workdir / READY_FILE
    ready.unlink(missing_ok=True)
    script = (f"while [ ! -e {shlex.quote(str(ready))} ]; do sleep 0.02; done; "
              f"exec {shlex.join(argv)} > {shlex.quote(str(log))} 2>&1")
    with open(workdir / "unshare.log", "wb") as ulog:
        unshare = subprocess.Popen(["unshare", "-p", "-n", "-f", "setsid", "sh", "-c", script], cwd=workdir,
                                   stdin=subprocess.DEVNULL, stdout=ulog, stderr=ulog, start_new_session=True,
                                   preexec_fn=testhosts.enter(host))
    pid = procs.wait_pidns_init(unshare, time.monotonic() + timeout, f"service {argv[0]}")
    outer = outer_name(address)
    try:
        _join(host, pid, outer, address)
    except (OSError, NetlinkError) as exc:
        os.kill(pid, signal.SIGKILL)  # the init: its whole pid namespace goes
        raise LazyRestoreError(f"cannot join the service's network namespace to {host}: {exc}") from exc
    ready.touch()
    return HostService(pid, address, outer, log)


def _join(host: str, pid: int, outer: str, address: str) -> None:
    with IPRoute(netns=host, flags=0) as ipr:
        ipr.link("add", ifname=outer, kind="veth", peer={"ifname": INNER, "net_ns_pid": pid})
        index = ipr.link_lookup(ifname=outer)[0]
        ipr.link("set", index=index, master=ipr.link_lookup(ifname=testhosts.BRIDGE)[0])
        ipr.link("set", index=index, state="up")
    gateway = testhosts.ADDR_A if host == testhosts.HOST_A else testhosts.ADDR_B
    with IPRoute(netns=f"/proc/{pid}/ns/net", flags=0) as inner:
        inner.link("set", index=inner.link_lookup(ifname="lo")[0], state="up")
        index = inner.link_lookup(ifname=INNER)[0]
        inner.addr("add", index=index, address=address, prefixlen=testhosts.PREFIXLEN)
        inner.link("set", index=index, state="up")
        inner.route("add", dst="default", gateway=gateway)
