"""CRIU socket/network options: merging, the manifest's criu_options, and what is refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lazyrestore import criuopts
from lazyrestore.criuopts import CriuOptions
from lazyrestore.errors import CorruptCheckpoint, UsageError

VETH = "veth[eth0]:lr-svc-10@lr-br"


def test_a_restore_adds_to_what_the_checkpoint_recorded() -> None:
    recorded = CriuOptions(tcp_established=True, external=(VETH,))
    merged = recorded.merged(CriuOptions(ext_masters=True, external=("unix[1234]",)))
    assert merged == CriuOptions(True, False, True, False, (VETH, "unix[1234]"))


def test_an_external_on_the_command_line_replaces_the_recorded_one_for_the_same_link() -> None:
    merged = CriuOptions(external=(VETH,)).with_external(("veth[eth0]:other@br1",))
    assert merged.external == ("veth[eth0]:other@br1",)


def test_established_and_close_exclude_each_other() -> None:
    with pytest.raises(UsageError, match="exclude each other"):
        CriuOptions(tcp_close=True).merged(CriuOptions(tcp_established=True))


def test_the_options_go_to_criu_as_its_rpc_fields() -> None:
    sent = SimpleNamespace(tcp_established=False, tcp_close=False, ext_masters=False, file_locks=False, external=[],
                           network_lock=1)
    criuopts.apply(CriuOptions(True, False, True, True, (VETH,), "nftables"), sent)
    assert (sent.tcp_established, sent.tcp_close, sent.ext_masters, sent.file_locks, sent.external, sent.network_lock) \
        == (True, False, True, True, [VETH], 2)


def test_the_command_line_network_lock_wins_over_the_recorded_one() -> None:
    assert CriuOptions(network_lock="nftables").merged(CriuOptions(network_lock="iptables")).network_lock == "iptables"
    assert CriuOptions(network_lock="nftables").merged(CriuOptions()).network_lock == "nftables"


def test_the_manifest_field_round_trips_through_json() -> None:
    o = CriuOptions(tcp_close=True, external=(VETH,), network_lock="nftables")
    assert criuopts.from_json(json.loads(json.dumps(criuopts.to_json(o))), "m") == o
    assert criuopts.from_json({}, "m") == CriuOptions()


@pytest.mark.parametrize("raw, says", [
    ([], "expected an object"),
    ({"tcp_established": 1}, "tcp_established has the wrong type"),
    ({"external": "veth[eth0]"}, "external or network_lock has the wrong type"),
    ({"external": [7]}, "external or network_lock has the wrong type"),
    ({"external": ["veth[eth0]:a b"]}, "KIND[ID]"),
    ({"tcp_established": True, "tcp_close": True}, "exclude each other"),
    ({"unknown": True}, "keys from"),
    ({"network_lock": "pf"}, "expected one of iptables, nftables"),
    ({"network_lock": 2}, "external or network_lock has the wrong type"),
    ({"external": [VETH] * 65}, "at most 64"),
])
def test_a_damaged_manifest_field_is_refused_naming_it(raw: object, says: str) -> None:
    with pytest.raises(CorruptCheckpoint, match="criu_options") as info:
        criuopts.from_json(raw, "DIR/lazyrestore/manifest.json")
    assert says in str(info.value)


def test_describe_spells_criu_command_line_options() -> None:
    assert CriuOptions(True, False, True, True, (VETH,)).describe() == \
        f"--tcp-established --enable-external-masters --file-locks --external {VETH}"
    assert CriuOptions().describe() == ""


def test_the_command_line_words_keep_each_value_one_word() -> None:
    o = CriuOptions(tcp_established=True, external=(VETH, "mnt[/data]:data"), network_lock="nftables")
    assert criuopts.to_cli(o) == ["--tcp-established", "--network-lock", "nftables", "--external", VETH,
                                  "--external", "mnt[/data]:data"]
    assert criuopts.to_cli(CriuOptions()) == []
