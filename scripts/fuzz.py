#!/usr/bin/env python3
"""Runs the libFuzzer harnesses of native/fuzz/ (built by `make fuzz-build`) and keeps their seed corpus.

  fuzz.py run   --seconds N --summary PATH   fuzz each harness N seconds, starting from a copy of its committed
                                             corpus in build/fuzz-corpus/TARGET (the repo stays clean)
  fuzz.py smoke --seconds N --summary PATH   replay every committed seed once, then fuzz as `run` does (its corpus
                                             copy, logs and artifacts in build/fuzz/smoke/: a smoke run by the
                                             tests does not disturb a long run)
  fuzz.py seeds                              rewrite native/fuzz/corpus/ (run with .venv/bin/python: it uses
                                             lazyrestore.lazyindex, the real index writer, and xxhash)

The summary is JSON, one object per target: seconds, executions, exec_per_s, corpus_size, new_units, crashes,
coverage, features, peak_rss_mb, artifacts (and replayed for smoke), parsed from libFuzzer's final stats.
Exit status 1 when any harness crashed (its input is in build/fuzz/artifacts/TARGET/).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FUZZ_SRC = REPO / "native" / "fuzz"
CORPUS = FUZZ_SRC / "corpus"
BIN_DIR = REPO / "build" / "native" / "fuzz"
WORK_CORPUS = REPO / "build" / "fuzz-corpus"
OUT = REPO / "build" / "fuzz"
TARGETS = ("frame", "handshake", "index")
ARTIFACT_PREFIXES = ("crash-", "leak-", "timeout-", "oom-")


# ---------------------------------------------------------------- running

def _stat(log: str, name: str) -> int:
    m = re.search(rf"^stat::{name}:\s*(\d+)", log, re.M)
    return int(m.group(1)) if m else 0


def _status(log: str, field: str) -> int:
    """The last value of FIELD ('cov', 'ft', 'corp') in libFuzzer's status lines."""
    values = re.findall(rf"\b{field}: (\d+)", log)
    return int(values[-1]) if values else 0


def _artifacts(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.startswith(ARTIFACT_PREFIXES)} if directory.is_dir() else set()


def _fuzz_args(target: str, seconds: int, artifacts: Path) -> list[str]:
    args = [str(BIN_DIR / f"fuzz_{target}"), f"-max_total_time={seconds}", "-print_final_stats=1",
            "-timeout=10", "-rss_limit_mb=2048", f"-artifact_prefix={artifacts}/"]
    dictionary = FUZZ_SRC / f"{target}.dict"
    return args + ([f"-dict={dictionary}"] if dictionary.exists() else [])


def replay(target: str, out: Path) -> dict:
    """Every committed seed once (regression inputs included): a crash fails the target."""
    seeds = sorted(p for p in (CORPUS / target).iterdir() if p.is_file())
    log = out / f"{target}-replay.log"
    with open(log, "w") as f:
        p = subprocess.run([str(BIN_DIR / f"fuzz_{target}"), *map(str, seeds)], stdout=f, stderr=subprocess.STDOUT)
    return {"replayed": len(seeds), "replay_ok": p.returncode == 0, "replay_log": str(log.relative_to(REPO))}


def fuzz(target: str, seconds: int, out: Path, corpus_root: Path) -> dict:
    """Fuzz one harness for `seconds` from a fresh copy of its committed corpus; its final stats."""
    work, artifacts = corpus_root / target, out / "artifacts" / target
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(CORPUS / target, work)
    artifacts.mkdir(parents=True, exist_ok=True)
    before, log_path = _artifacts(artifacts), out / f"{target}.log"
    start = time.monotonic()
    with open(log_path, "w") as f:
        p = subprocess.run(_fuzz_args(target, seconds, artifacts) + [str(work)], stdout=f, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - start
    log = log_path.read_text(errors="replace")
    new = sorted(_artifacts(artifacts) - before)
    executions = _stat(log, "number_of_executed_units")
    return {
        "seconds": seconds, "elapsed": round(elapsed, 1), "executions": executions,
        "exec_per_s": _stat(log, "average_exec_per_sec") or int(executions / max(elapsed, 1e-9)),
        "corpus_size": sum(1 for q in work.iterdir() if q.is_file()), "new_units": _stat(log, "new_units_added"),
        "crashes": max(len(new), int(p.returncode != 0)), "coverage": _status(log, "cov"),
        "features": _status(log, "ft"), "peak_rss_mb": _stat(log, "peak_rss_mb"), "exit_code": p.returncode,
        "artifacts": [str((artifacts / n).relative_to(REPO)) for n in new], "log": str(log_path.relative_to(REPO)),
    }


def run_all(seconds: int, summary: Path, smoke: bool) -> int:
    missing = [t for t in TARGETS if not (BIN_DIR / f"fuzz_{t}").exists()]
    if missing:
        print(f"fuzz: not built: {', '.join(missing)} (make fuzz-build)", file=sys.stderr)
        return 2
    out = OUT / "smoke" if smoke else OUT
    corpus_root = out / "corpus" if smoke else WORK_CORPUS
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for t in TARGETS:
        r = replay(t, out) if smoke else {}
        r.update(fuzz(t, seconds, out, corpus_root))
        if smoke and not r["replay_ok"]:
            r["crashes"] = max(r["crashes"], 1)
        results[t] = r
        print(f"fuzz_{t}: {r['executions']} executions ({r['exec_per_s']}/s) in {r['elapsed']} s, coverage {r['coverage']}"
              f" features {r['features']}, corpus {r['corpus_size']}, crashes {r['crashes']}"
              + (f", {r['replayed']} seeds replayed" if smoke else ""), flush=True)
        for a in r["artifacts"]:
            print(f"  crashing input: {a} (log: {r['log']})")
        if smoke and not r["replay_ok"]:
            print(f"  a committed seed crashed: see {r['replay_log']}")
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(results, indent=2) + "\n")
    print(f"fuzz: summary in {summary}")
    return 1 if any(r["crashes"] for r in results.values()) else 0


# ---------------------------------------------------------------- seeds

MAGIC = 0x3150524C
VERSION = 3
(HELLO, CHALLENGE, AUTH, WELCOME, LIST, FILES, GET_FILE, FILE_DATA, GET_PAGES, PAGES, HINT, BULK_START, BULK_END,
 DONE, ERROR, WORKINGSET, TUNE, COMMIT, ABORT) = range(1, 20)
F_MORE, F_ZSTD, F_COMPRESS, F_SUM = 1, 2, 4, 8
URGENT, BULK = 1, 2
META, PAGES_FILE = 1, 2
# fuzz_handshake.c's control bits.
GOOD_MAC, LIVE_SESSION, HANG_UP = 4, 8, 16  # the low two bits: the client slot
# native/fuzz/fixture.c: its page and block size and fx_ranges (pid, flags, start, nr_pages, pages_id).
PS, BS = 4096, 8192
FIXTURE = [(10, 1, 0x10000, 3, 1), (10, 0, 0x21000, 4, 1), (11, 1, 0x40000, 1, 2), (12, 1, 0x7F0000001000, 5, 1)]


def frame(kind: int, payload: bytes = b"", req_id: int = 1, flags: int = 0, length: int | None = None) -> bytes:
    return struct.pack("<IHHIIQ", MAGIC, kind, flags, len(payload) if length is None else length, 0, req_id) + payload


def summed(kind: int, payload: bytes = b"", req_id: int = 1, flags: int = 0) -> bytes:
    """A frame flagged F_SUM with its checksum (lr_proto.h): XXH3-64 of the payload seeded with XXH3-64 of the
    header (sum 0), low 32 bits."""
    import xxhash

    head = struct.pack("<IHHIIQ", MAGIC, kind, flags | F_SUM, len(payload), 0, req_id)
    total = xxhash.xxh3_64_intdigest(payload, seed=xxhash.xxh3_64_intdigest(head)) & 0xFFFFFFFF
    return struct.pack("<IHHIIQ", MAGIC, kind, flags | F_SUM, len(payload), total, req_id) + payload


def damaged(data: bytes, at: int) -> bytes:
    """data with the byte at `at` flipped (a frame that fails its checksum)."""
    return data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1:]


def _fixture_bytes(rec: int, a: int, b: int) -> bytes:
    """Checkpoint addresses [a, b) of fixture record rec, as fixture.c's page_byte writes them."""
    _, _, start, _, pages_id = FIXTURE[rec]
    offset = sum(r[3] * PS for r in FIXTURE[:rec] if r[4] == pages_id) + a - start
    return bytes(((o * 7) ^ (o >> 9) ^ pages_id) & 0xFF for o in range(offset, offset + b - a))


def pages_payload(rec: int, first: int, n: int) -> bytes:
    """A PAGES payload for blocks [first, first + n) of a fixture record, with the right checksums."""
    import xxhash

    _, _, start, nr_pages, _ = FIXTURE[rec]
    base, end = start // BS * BS, start + nr_pages * PS
    spans = [(max(start, base + k * BS), min(end, base + (k + 1) * BS)) for k in range(first, first + n)]
    data = b"".join(_fixture_bytes(rec, x, y) for x, y in spans)
    sums = b"".join(struct.pack("<Q", xxhash.xxh3_64_intdigest(_fixture_bytes(rec, x, y))) for x, y in spans)
    return struct.pack("<QIIQ", rec, first, n, len(data)) + sums + data


def zstd_frame(data: bytes, rle: bool = False) -> bytes:
    """data as one zstd frame built by hand (no encoder needed): a single-segment frame header with the content
    size, then one raw block (or, rle, one RLE block repeating data's first byte). At most 128 KiB."""
    size = len(data)
    if size < 256:
        head = bytes([0x20]) + struct.pack("<B", size)
    elif size < 65792:
        head = bytes([0x60]) + struct.pack("<H", size - 256)
    else:
        head = bytes([0xA0]) + struct.pack("<I", size)
    block = (size << 3) | (1 << 1 if rle else 0) | 1  # last block; type 0 raw, 1 RLE
    return struct.pack("<I", 0xFD2FB528) + head + struct.pack("<I", block)[:3] + (data[:1] if rle else data)


def zstd_pages_payload(rec: int, first: int, n: int) -> bytes:
    """pages_payload with its data as a zstd frame (LR_F_ZSTD)."""
    plain = pages_payload(rec, first, n)
    prefix = 24 + 8 * n
    return plain[:prefix] + zstd_frame(plain[prefix:])


def files_payload(entries: list[tuple[str, int, int]]) -> bytes:
    return b"".join(struct.pack("<QII", size, kind, len(name)) + name.encode() for name, size, kind in entries)


def get_file(name: str, req_id: int = 1) -> bytes:
    return frame(GET_FILE, struct.pack("<II", len(name), 0) + name.encode(), req_id)


def page_req(rec: int, first: int, n: int) -> bytes:
    return struct.pack("<QII", rec, first, n)


def frame_seeds() -> dict[str, bytes]:
    listed = [("lazyrestore/manifest.json", 52, META), ("lazyrestore/index.bin", 424, META), ("inventory.img", 9, META),
              ("pages-1.img", 12 * PS, PAGES_FILE), ("lazyrestore/view-pagemap-10.img", 7, META)]
    return {
        "pages-rec0-all": frame(PAGES, pages_payload(0, 0, 2)),
        "pages-rec1-middle-block": frame(PAGES, pages_payload(1, 1, 1)),
        "pages-rec2-one-page": frame(PAGES, pages_payload(2, 0, 1)),
        "pages-rec3-all": frame(PAGES, pages_payload(3, 0, 3)),
        "files-list": frame(FILES, files_payload(listed)),
        "files-dotdot": frame(FILES, files_payload([("lazyrestore/view-..", 1, META), ("../etc", 1, META)])),
        "error-range": frame(ERROR, struct.pack("<II", 5, 0) + b"record 9 is outside the index"),
        "challenge": frame(CHALLENGE, struct.pack("<II", 1, 0) + b"\xc1" * 16 + b"\x22" * 32),
        "list": frame(LIST),
        "get-file-manifest": get_file("lazyrestore/manifest.json"),
        "get-pages-rec0": frame(GET_PAGES, page_req(0, 0, 2)),
        "get-pages-rec3-tail": frame(GET_PAGES, page_req(3, 1, 2)),
        "hint-rec2": frame(HINT, page_req(2, 0, 0)),
        "requests-then-done": frame(LIST) + frame(GET_PAGES, page_req(1, 0, 3), 2) + frame(DONE, req_id=3),
        "bad-magic": struct.pack("<IHHIIQ", 0x3150524D, LIST, 0, 0, 0, 1),
        "too-long-request": frame(GET_FILE, b"x" * 16, length=4097),
        "short-header": frame(LIST)[:10],
        "pages-zstd-rec0": frame(PAGES, zstd_pages_payload(0, 0, 2), flags=F_ZSTD),
        "pages-zstd-rle-rec2": frame(PAGES, pages_payload(2, 0, 1)[:32] + zstd_frame(bytes(PS), rle=True), flags=F_ZSTD),
        "get-pages-compressed": frame(GET_PAGES, page_req(3, 0, 3), flags=F_ZSTD | F_COMPRESS),
        "tune-then-done": frame(TUNE, flags=F_ZSTD | F_COMPRESS) + frame(DONE, req_id=2),
        "workingset-two-frames": frame(WORKINGSET, b"LRWSET1\0" + struct.pack("<II", 2, PS), flags=F_MORE)
        + frame(WORKINGSET, b"\x00" * 48, req_id=2) + frame(DONE, req_id=3),
        "files-list-summed": summed(FILES, files_payload(listed)),
        "files-list-bad-sum": damaged(summed(FILES, files_payload(listed)), 40),
        "file-data-summed": summed(FILE_DATA, b'{"format": "lazyrestore-manifest"}', flags=F_MORE),
        "error-summed": summed(ERROR, struct.pack("<II", 10, 0) + b"GET_FILE frame of 33 bytes fails its checksum"),
        "requests-summed": summed(LIST) + summed(GET_PAGES, page_req(0, 0, 2), 2) + summed(DONE, req_id=3),
        "request-bad-sum": damaged(summed(GET_PAGES, page_req(0, 0, 2)), 30),
        "workingset-bad-sum": damaged(summed(WORKINGSET, b"LRWSET1\0" + struct.pack("<II", 2, PS), flags=F_MORE), 26)
        + summed(WORKINGSET, b"\x00" * 48, req_id=2) + summed(DONE, req_id=3),
        "commit-then-abort": summed(COMMIT) + summed(COMMIT, req_id=2) + summed(ABORT, req_id=3)
        + summed(DONE, req_id=4),
        "commit-bad-sum": damaged(summed(COMMIT), 17) + summed(ABORT, req_id=2),
        "commit-with-payload": summed(COMMIT, b"x"),
    }


def hello(channel: int, session: int = 0) -> bytes:
    return summed(HELLO, struct.pack("<IIQ", VERSION, channel, session) + b"\x11" * 32, req_id=0)


def auth() -> bytes:
    return frame(AUTH, b"\0" * 32, req_id=0)


def steps(*pairs: tuple[int, bytes]) -> bytes:
    """fuzz_handshake's input: a control byte before each frame."""
    return b"".join(bytes([ctl]) + f for ctl, f in pairs)


def handshake_seeds() -> dict[str, bytes]:
    urgent = [(0, hello(URGENT)), (GOOD_MAC, auth())]
    bulk = [(1 | LIVE_SESSION, hello(BULK, 1)), (1 | GOOD_MAC, auth())]
    return {
        "urgent-authenticated": steps(*urgent),
        "urgent-requests": steps(*urgent, (0, frame(LIST, req_id=1)), (0, frame(GET_PAGES, page_req(0, 0, 2), 2)),
                                 (0, frame(HINT, page_req(3, 1, 0), 3)), (0, get_file("inventory.img", 4)),
                                 (0, frame(DONE, req_id=5))),
        "bulk-stream": steps(*urgent, *bulk, (1, frame(BULK_START, page_req(3, 0, 0), 0)),
                             (0, frame(GET_PAGES, page_req(2, 0, 1), 5)), (0, frame(DONE, req_id=6))),
        "bulk-then-urgent-hangs-up": steps(*urgent, *bulk, (HANG_UP, frame(LIST, req_id=1))),
        "wrong-mac": steps((0, hello(URGENT)), (0, auth())),
        "wrong-version": steps((0, frame(HELLO, struct.pack("<IIQ", 1, URGENT, 0) + b"\x11" * 32))),
        "damaged-hello": steps((0, damaged(hello(URGENT), 30)), (0, hello(URGENT))),
        "bulk-unknown-session": steps((0, hello(BULK, 12345)), (GOOD_MAC, auth())),
        "auth-first": steps((0, auth())),
        "request-before-auth": steps((0, hello(URGENT)), (0, frame(LIST))),
        "hang-up-after-hello": steps((HANG_UP, hello(URGENT)), (0, hello(URGENT))),
        "full-server-evicts": steps(*[(k, hello(URGENT)) for k in range(4)], (0, auth())),
        "two-destinations-commit": steps(*urgent, (1, hello(URGENT)), (1 | GOOD_MAC, auth()),
                                         (0, summed(COMMIT)), (1, summed(COMMIT)), (HANG_UP, summed(LIST, req_id=2)),
                                         (1, hello(URGENT)), (1 | GOOD_MAC, auth()), (1, summed(COMMIT)),
                                         (1, summed(ABORT, req_id=2)), (2, hello(URGENT)), (2 | GOOD_MAC, auth()),
                                         (2, summed(COMMIT))),
        "full-server-busy": steps(*urgent, *[(k, hello(URGENT)) for k in (1, 2)], (1 | GOOD_MAC, auth()),
                                  (2 | GOOD_MAC, auth()), (3, hello(URGENT)), (3, hello(URGENT))),
    }


def index_seeds() -> dict[str, bytes]:
    import tempfile

    from lazyrestore import lazyindex
    from lazyrestore.lazyindex import RANGE_LAZY, RANGE_UNVERIFIED, IndexEntry, LazyIndex

    cid = bytes(range(16))
    with tempfile.TemporaryDirectory() as tmp:  # checksums the way a checkpoint gets them: from its pages file
        pages = Path(tmp) / "pages-1.img"
        pages.write_bytes(bytes((i * 13 + (i >> 12)) & 0xFF for i in range(24 * PS)))
        plan = [IndexEntry(1, RANGE_LAZY, 0x400000, 16, 1, 0), IndexEntry(1, 0, 0x7FFF0000, 2, 1, 16 * PS),
                IndexEntry(7, RANGE_LAZY, 0x5000, 6, 1, 18 * PS)]
        entries = tuple(lazyindex.checksum_entries(plan, pages, PS, 64 * 1024))
        small_blocks = tuple(lazyindex.checksum_entries(plan, pages, PS, 2 * PS))
    valid = lazyindex.encode(LazyIndex(PS, 64 * 1024, 2, cid, entries))
    unverified = IndexEntry(3, RANGE_LAZY | RANGE_UNVERIFIED, 0x10000, 20, 1, 0, (0, 0))  # 2 blocks of 64 KiB
    return {
        "valid-two-pids": valid,
        "valid-8k-blocks": lazyindex.encode(LazyIndex(PS, 2 * PS, 2, cid, small_blocks)),
        "valid-empty": lazyindex.encode(LazyIndex(PS, 64 * 1024, 1, cid, ())),
        "valid-unverified": lazyindex.encode(LazyIndex(PS, 64 * 1024, 1, cid, (unverified,))),
        "valid-16k-pages": lazyindex.encode(LazyIndex(16384, 65536, 1, cid, (IndexEntry(5, 0, 0x40000, 3, 1, 0, (1,)),))),
        "truncated-header": valid[:40],
        "bad-trailer": valid[:-8] + b"\0" * 8,
    }


def write_seeds() -> None:
    for target, seeds in (("frame", frame_seeds()), ("handshake", handshake_seeds()), ("index", index_seeds())):
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (d / name).write_bytes(data)
        print(f"{d.relative_to(REPO)}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "smoke"):
        p = sub.add_parser(name)
        p.add_argument("--seconds", type=int, default=60 if name == "run" else 20)
        p.add_argument("--summary", type=Path, default=OUT / ("results.json" if name == "run" else "smoke.json"))
    sub.add_parser("seeds")
    args = ap.parse_args()
    if args.cmd == "seeds":
        write_seeds()
        return 0
    return run_all(args.seconds, args.summary, smoke=args.cmd == "smoke")


if __name__ == "__main__":
    sys.exit(main())
