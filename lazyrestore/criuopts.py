"""CRIU options for sockets, network and mounts that a checkpoint is taken with and restored with.

They keep CRIU's meanings. `--tcp-established`: open TCP connections are dumped and restored (CRIU locks the
network meanwhile, with iptables or nftables); `--tcp-close`: they are dumped and restored closed;
`--external`: CRIU's external resources (`veth[IN]:OUT@BRIDGE` for a tree in its own network namespace);
`--enable-external-masters`: bind mounts whose master is outside the tree's mount namespace.

A checkpoint records the options it was taken with in its manifest (`criu_options`), with the external veth
peers found at checkpoint time; restore applies them (they are needed: CRIU refuses to restore established
connections without --tcp-established), plus what its own command line adds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from .errors import CorruptCheckpoint, UsageError

# CRIU's --external KEY[ID]:VALUE, as far as lazyrestore passes it: printable, no spaces, bounded.
_EXTERNAL = re.compile(r"^[a-z]+\[[^\]\s]{1,200}\](:[^\s]{1,200})?$")
MAX_EXTERNAL = 64
KEYS = ("tcp_established", "tcp_close", "ext_masters", "file_locks", "external", "network_lock")
# CRIU's --network-lock METHOD (rpc.proto: criu_network_lock_method); "" leaves CRIU's default (iptables).
NETWORK_LOCKS = {"iptables": 1, "nftables": 2}


@dataclass(frozen=True)
class CriuOptions:
    """The options, as CRIU's RPC takes them (rpc.proto: criu_opts).

    tcp_established: dump and restore open TCP connections (CRIU's --tcp-established).
    tcp_close: dump and restore them closed (--tcp-close); never together with tcp_established.
    ext_masters: --enable-external-masters (mounts whose master is outside the tree).
    file_locks: --file-locks (dump and restore the tree's file locks).
    network_lock: how CRIU locks the network while connections are dumped and restored: "iptables",
      "nftables", or "" for CRIU's default (iptables).
    external: CRIU --external values, e.g. "veth[eth0]:lr-svc0@lr-br".
    """

    tcp_established: bool = False
    tcp_close: bool = False
    ext_masters: bool = False
    file_locks: bool = False
    external: tuple[str, ...] = ()
    network_lock: str = ""

    def merged(self, other: CriuOptions) -> CriuOptions:
        """These options with other's added; an external of other replaces one of ours for the same KEY[ID]."""
        keys = {external_key(e) for e in other.external}
        kept = tuple(e for e in self.external if external_key(e) not in keys)
        return check(CriuOptions(self.tcp_established or other.tcp_established, self.tcp_close or other.tcp_close,
                                 self.ext_masters or other.ext_masters, self.file_locks or other.file_locks,
                                 kept + other.external, other.network_lock or self.network_lock))

    def with_external(self, values: tuple[str, ...]) -> CriuOptions:
        return self.merged(CriuOptions(external=values))

    def describe(self) -> str:
        """The options as CRIU's command line would spell them ("" when none)."""
        return " ".join(to_cli(self))


def external_key(value: str) -> str:
    """KEY[ID] of an --external value."""
    return value.split("]", 1)[0] + "]"


def check_external(value: str) -> str:
    """value, when it is a CRIU --external value lazyrestore passes on; UsageError otherwise."""
    if not isinstance(value, str) or not _EXTERNAL.match(value):
        raise UsageError(f"--external {value!r}: expected CRIU's KIND[ID] or KIND[ID]:VALUE without spaces, e.g. "
                         f"veth[eth0]:lr-svc0@lr-br (the restored namespace's eth0 joined to bridge lr-br)")
    return value


def check(o: CriuOptions) -> CriuOptions:
    if o.tcp_established and o.tcp_close:
        raise UsageError("--tcp-established and --tcp-close exclude each other: keep open TCP connections "
                         "(--tcp-established) or restore them closed (--tcp-close)")
    if o.network_lock and o.network_lock not in NETWORK_LOCKS:
        raise UsageError(f"--network-lock {o.network_lock!r}: expected one of {', '.join(NETWORK_LOCKS)}")
    if len(o.external) > MAX_EXTERNAL:
        raise UsageError(f"--external: at most {MAX_EXTERNAL} values, got {len(o.external)}")
    for e in o.external:
        check_external(e)
    return o


def from_args(tcp_established: bool, tcp_close: bool, ext_masters: bool, file_locks: bool,
              external: list[str] | None, network_lock: str | None = None) -> CriuOptions:
    return check(CriuOptions(tcp_established, tcp_close, ext_masters, file_locks, tuple(external or ()),
                             network_lock or ""))


def apply(o: CriuOptions, rpc_opts: Any) -> None:
    """Set the options on a pycriu request's opts (criu_opts)."""
    if o.tcp_established:
        rpc_opts.tcp_established = True
    if o.tcp_close:
        rpc_opts.tcp_close = True
    if o.ext_masters:
        rpc_opts.ext_masters = True
    if o.file_locks:
        rpc_opts.file_locks = True
    for e in o.external:
        rpc_opts.external.append(e)
    if o.network_lock:
        rpc_opts.network_lock = NETWORK_LOCKS[o.network_lock]


def to_cli(o: CriuOptions) -> list[str]:
    """The options as words of CRIU's command line (for runs that cannot go through RPC)."""
    words = [flag for flag, on in (("--tcp-established", o.tcp_established), ("--tcp-close", o.tcp_close),
                                   ("--enable-external-masters", o.ext_masters), ("--file-locks", o.file_locks)) if on]
    words += ["--network-lock", o.network_lock] if o.network_lock else []
    for e in o.external:
        words += ["--external", e]
    return words


def to_json(o: CriuOptions) -> dict[str, Any]:
    return {"tcp_established": o.tcp_established, "tcp_close": o.tcp_close, "ext_masters": o.ext_masters,
            "file_locks": o.file_locks, "external": list(o.external), "network_lock": o.network_lock}


def from_json(raw: Any, where: str) -> CriuOptions:
    """The manifest's criu_options; CorruptCheckpoint naming the field when it is not what we write."""
    if not isinstance(raw, dict) or set(raw) - set(KEYS):
        raise CorruptCheckpoint(where, f"criu_options {raw!r}: expected an object with keys from {', '.join(KEYS)}")
    flags = {k: raw.get(k, False) for k in KEYS[:4]}
    bad = [k for k, v in flags.items() if not isinstance(v, bool)]
    external, lock = raw.get("external", []), raw.get("network_lock", "")
    if bad or not isinstance(external, (list, tuple)) or not all(isinstance(e, str) for e in external) \
            or not isinstance(lock, str):
        raise CorruptCheckpoint(where, f"criu_options: {', '.join(bad) or 'external or network_lock'} has the wrong "
                                f"type (booleans, a list of strings for external, a string for network_lock)")
    try:
        return check(replace(CriuOptions(**flags), external=tuple(external), network_lock=lock))
    except UsageError as exc:
        raise CorruptCheckpoint(where, f"criu_options: {exc}") from exc
