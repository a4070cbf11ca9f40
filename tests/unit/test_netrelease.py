"""netrelease: which of CRIU's per-connection iptables rules belong to the tree's connections."""

from __future__ import annotations

from lazyrestore.netrelease import Conn, _names

# CRIU's rule (criu/netfilter.c) as `iptables -S` prints it, for 127.0.0.1:40000 -> 127.0.0.1:7000
RULE = ("-A INPUT -s 127.0.0.1/32 -d 127.0.0.1/32 -p tcp -m tcp --sport 7000 --dport 40000 -m mark ! --mark 0xc114 "
        "-j DROP")


def test_a_rule_names_a_connection_in_either_direction() -> None:
    words = RULE.split()
    assert _names(words, Conn(("127.0.0.1", 40000), ("127.0.0.1", 7000)))
    assert _names(words, Conn(("127.0.0.1", 7000), ("127.0.0.1", 40000)))


def test_another_connection_or_port_is_not_named() -> None:
    words = RULE.split()
    assert not _names(words, Conn(("127.0.0.1", 40001), ("127.0.0.1", 7000)))
    assert not _names(words, Conn(("10.0.0.1", 40000), ("127.0.0.1", 7000)))
    assert not _names("-A INPUT -j DROP".split(), Conn(("127.0.0.1", 40000), ("127.0.0.1", 7000)))
