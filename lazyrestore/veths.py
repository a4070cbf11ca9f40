"""The veth links that join a tree's own network namespace to ours, as CRIU --external values.

A service that keeps its address across hosts runs in a network namespace of its own, joined by a veth pair to
a bridge of its host (README, "What can be migrated"). CRIU dumps that namespace with the tree and recreates it
on restore; the outer end of each veth pair is not in the tree, so CRIU must be told on restore what to call it
and which bridge to put it in: `--external veth[eth0]:OUTER@BRIDGE`. This module reads that at checkpoint time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import LazyRestoreError, UsageError


@dataclass(frozen=True)
class VethPeer:
    """inner: the link's name in the tree's namespace; outer: its peer's name here; bridge: the peer's master
    bridge here ("" when it has none)."""

    inner: str
    outer: str
    bridge: str

    def external(self) -> str:
        return f"veth[{self.inner}]:{self.outer}" + (f"@{self.bridge}" if self.bridge else "")


def own_netns(pid: int) -> bool:
    """Whether pid lives in another network namespace than ours."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino


def peers(pid: int) -> tuple[VethPeer, ...]:
    """The veth pairs between pid's network namespace and ours ((): it shares ours, or has none)."""
    if not own_netns(pid):
        return ()
    from pyroute2.netlink.exceptions import NetlinkError  # pyroute2 takes 80 ms to import: only when needed
    try:
        return _peers(pid)
    except (OSError, NetlinkError) as exc:
        raise LazyRestoreError(f"cannot read the network links of pid {pid}'s network namespace: {exc}") from exc


def _peers(pid: int) -> tuple[VethPeer, ...]:
    from pyroute2 import IPRoute
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with IPRoute() as ipr:
            nsid = ipr.get_netnsid(fd=fd).get("nsid")
            outer = {link.get("IFLA_LINK"): link for link in ipr.get_links()
                     if _kind(link) == "veth" and link.get("IFLA_LINK_NETNSID") == nsid}
            bridges = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
        if not outer:
            return ()
        with IPRoute(netns=f"/proc/{pid}/ns/net", flags=0) as inner_ipr:
            inner = {link["index"]: link.get("IFLA_IFNAME") for link in inner_ipr.get_links()}
    finally:
        os.close(fd)
    found = []
    for peer_index, link in sorted(outer.items(), key=lambda kv: kv[0] or 0):
        if peer_index in inner:
            master = link.get("IFLA_MASTER")
            found.append(VethPeer(inner[peer_index], link.get("IFLA_IFNAME"), bridges.get(master, "") if master else ""))
    return tuple(found)


def _kind(link) -> str | None:  # noqa: ANN001 (a pyroute2 ifinfmsg)
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info is not None else None


def missing_bridges(externals: tuple[str, ...]) -> list[str]:
    """The bridges named by veth externals (veth[IN]:OUT@BRIDGE) that do not exist in our namespace."""
    wanted = sorted({e.rsplit("@", 1)[1] for e in externals if e.startswith("veth[") and "@" in e})
    if not wanted:
        return []
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    try:
        with IPRoute() as ipr:
            return [b for b in wanted if not ipr.link_lookup(ifname=b)]
    except (OSError, NetlinkError) as exc:
        raise UsageError(f"cannot look up bridges {', '.join(wanted)}: {exc}") from exc
