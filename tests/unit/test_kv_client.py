"""The key-value client of lazyrestore.sample (lr-workload --serve): the answers it expects and what it refuses.

The expected checksums were answered by native/workload/serve.c (seed 1); the client must agree byte for byte.
"""

from __future__ import annotations

import pytest

from lazyrestore import sample
from lazyrestore.errors import VerificationFailed

# Answers of `lr-workload --mib 64 --serve N` (seed 1): the records depend on key and seed only.
KNOWN = {(0, 2000): "6d6382866ebd9ff6", (1048575, 1): "c6d156d4ebd04ee4"}


@pytest.mark.parametrize(("first", "count"), list(KNOWN))
def test_expected_checksums_match_the_server(first: int, count: int) -> None:
    assert sample.kv_expected(first, count) == KNOWN[(first, count)]
    assert sample.kv_check(f"OK {count} {KNOWN[(first, count)]}", first, count) == KNOWN[(first, count)]


def test_records_describe_themselves_and_depend_on_the_seed() -> None:
    assert sample.kv_record(77)[0] == 77
    assert len(sample.kv_record(77)) == sample.KV_WORDS
    assert sample.kv_record(77, seed=2)[1:] != sample.kv_record(77)[1:]
    assert sample.kv_expected(5, 3, seed=2) != sample.kv_expected(5, 3)


@pytest.mark.parametrize("reply", [
    "OK 2000 6d6382866ebd9ff7",   # one bit of the checksum
    "OK 1999 6d6382866ebd9ff6",   # the count
    "ERR keys 0+2000 out of range",
    "OK 2000",
    "",
])
def test_a_wrong_answer_is_refused(reply: str) -> None:
    with pytest.raises(sample.WrongAnswer, match="GET 0 2000") as exc:
        sample.kv_check(reply, 0, 2000)
    assert isinstance(exc.value, VerificationFailed) and exc.value.exit_code == 9


def test_a_single_wrong_word_changes_the_checksum() -> None:
    h = sample.KV_HASH_INIT
    mask = (1 << 64) - 1
    for key in range(10, 13):
        words = sample.kv_record(key)
        if key == 11:
            words[5] ^= 1 << 40
        for w in words:
            h = ((h ^ w) * sample.KV_HASH_PRIME) & mask
    with pytest.raises(sample.WrongAnswer):
        sample.kv_check(f"OK 3 {h:016x}", 10, 3)


def test_table_slots_and_keys_are_inverse() -> None:
    t = sample.KvTable("lr-workload-kv-1", keys=16777216, stride=10368889)  # 1 GiB, as lr-workload lays it out
    for key in (0, 1, 2, 1999, 16777215):
        assert t.key_in(t.slot(key)) == key
    assert len({t.slot(k) // 64 for k in range(2000)}) == 2000  # the hot keys: 2000 pages
