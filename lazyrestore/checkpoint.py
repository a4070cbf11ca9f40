"""`lazyrestore checkpoint`: dump a process tree with CRIU, then index and describe it."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pycriu

from . import criu, criuopts, dumpdir, lazyindex, lazyview, manifest, procs, secret, veths
from .criuopts import CriuOptions
from .errors import CriuFailed, ImagesDirError, LazyRestoreError
from .images import read_dump_stats, read_pagemap, read_pstree
from .manifest import Manifest
from .output import Reporter, human_bytes
from .verify import plan_index
from .layout import DUMP_LOG



@dataclass(frozen=True)
class CheckpointSummary:
    """What `checkpoint` reports. Times in seconds; frozen_s is CRIU's own figure."""

    images_dir: str
    checkpoint_id: str
    pid: int
    processes: int
    threads: int
    lazy_pages: int
    eager_pages: int
    page_size: int
    images_bytes: int
    frozen_s: float
    dump_s: float
    index_s: float
    leave_running: bool
    criu_options: str = ""  # what its restores apply, as CRIU's options ("" when none)
    live: bool = False  # a live migration's: the tree stays frozen until a destination has every page


def prepare_dir(images_dir: Path) -> None:
    """Create the images directory if its parent exists; refuse a non-empty one."""
    if images_dir.exists():
        if not images_dir.is_dir():
            raise ImagesDirError(f"{images_dir} exists and is not a directory")
        if any(images_dir.iterdir()):
            raise dumpdir.not_empty("images directory", images_dir)
        if not os.access(images_dir, os.W_OK):
            raise ImagesDirError(f"images directory {images_dir} is not writable "
                                 f"({os.strerror(errno.EROFS) if _read_only(images_dir) else 'permission denied'})")
        return
    if not images_dir.parent.is_dir():
        raise ImagesDirError(f"cannot create images directory {images_dir}: {images_dir.parent} does not exist")
    try:
        images_dir.mkdir(mode=0o700)
    except OSError as exc:
        raise ImagesDirError(f"cannot create images directory {images_dir}: {exc.strerror}") from exc


def _read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


@contextmanager
def plugin_off() -> Iterator[None]:
    """CRIU runs started here skip lazyrestore's CRIU plugin: this code indexes the checkpoint itself."""
    old = os.environ.get("LAZYRESTORE_PLUGIN")
    os.environ["LAZYRESTORE_PLUGIN"] = "off"
    try:
        yield
    finally:
        if old is None:
            del os.environ["LAZYRESTORE_PLUGIN"]
        else:
            os.environ["LAZYRESTORE_PLUGIN"] = old


def dump(binary: criu.CriuBinary, pid: int, images_dir: Path, leave_running: bool,
         options: CriuOptions = CriuOptions()) -> None:
    """One CRIU dump through RPC; CriuFailed quotes the log on failure."""
    client = pycriu.criu()
    client.use_binary(binary.path)
    fd = os.open(images_dir, os.O_DIRECTORY)
    try:
        client.opts.images_dir_fd = fd
        client.opts.pid = pid
        client.opts.log_file = DUMP_LOG
        client.opts.log_level = binary.log_level
        client.opts.leave_running = leave_running
        criuopts.apply(options, client.opts)
        with plugin_off():
            client.dump()
    except pycriu.CRIUException as exc:
        raise criu.failure("dump", exc, images_dir / DUMP_LOG, pid) from exc
    finally:
        os.close(fd)


def write_metadata(images_dir: Path, binary: criu.CriuBinary, pid: int,
                   block_size: int = lazyindex.DEFAULT_BLOCK_SIZE, options: CriuOptions = CriuOptions(),
                   live: bool = False, secret_from: Path | None = None) -> Manifest:
    """Write the lazy index, then the manifest (last: its presence marks a complete checkpoint). live: a `criu dump
    --lazy-pages` whose lazy pages stay in the stopped tree (RANGE_LIVE records, checksums sent as served).
    secret_from: a pre-shared secret file to serve with instead of a new secret."""
    page_size = os.sysconf("SC_PAGE_SIZE")
    tree = read_pstree(images_dir)
    checkpoint_id = manifest.new_checkpoint_id()
    planned = plan_index(images_dir, page_size, live)
    in_tree = [_unsummed(e, page_size, block_size) for e in planned if e.flags & lazyindex.RANGE_LIVE]
    entries = sorted(_checksummed(images_dir, [e for e in planned if not e.flags & lazyindex.RANGE_LIVE], page_size,
                                  block_size) + in_tree, key=lambda e: (e.pid, e.start))
    index = lazyindex.LazyIndex(page_size, block_size, len(tree), bytes.fromhex(checkpoint_id), tuple(entries))
    (images_dir / manifest.META_DIR).mkdir(exist_ok=True)
    if secret_from is None:
        secret.create(images_dir)
    else:
        secret.install(images_dir, secret_from)
    index_path = images_dir / manifest.META_DIR / manifest.INDEX_NAME
    lazyindex.write(index_path, index)
    view = lazyview.write(images_dir, index)
    files, pages_files = manifest.describe_files(images_dir)
    m = Manifest(
        checkpoint_id=checkpoint_id, created=manifest.utc_now(), criu_version=binary.version,
        source_pid=pid, page_size=page_size, block_size=block_size, processes=len(tree),
        threads=sum(len(p.threads) for p in tree), lazy_pages=index.lazy_pages, eager_pages=index.eager_pages,
        files=files, pages_files=pages_files,
        index=manifest.FileEntry(f"{manifest.META_DIR}/{manifest.INDEX_NAME}", index_path.stat().st_size,
                                 manifest.sha256_file(index_path)),
        lazy_view=view, criu_options=options,
    )
    manifest.write(images_dir, m)
    return m


def _unsummed(e: lazyindex.IndexEntry, page_size: int, block_size: int) -> lazyindex.IndexEntry:
    """A live record with its checksums 0 (lr-pageserver sends them with the bytes it reads)."""
    n = lazyindex.block_count(e.start, e.nr_pages * page_size, block_size)
    return lazyindex.IndexEntry(e.pid, e.flags, e.start, e.nr_pages, e.pages_id, e.offset, (0,) * n)


def _checksummed(images_dir: Path, planned: list[lazyindex.IndexEntry], page_size: int,
                 block_size: int) -> list[lazyindex.IndexEntry]:
    by_file: dict[int, list[lazyindex.IndexEntry]] = {}
    for e in planned:
        by_file.setdefault(e.pages_id, []).append(e)
    for proc in read_pstree(images_dir):
        pm = read_pagemap(images_dir, proc.pid)
        if pm is not None:
            by_file.setdefault(pm.pages_id, [])
    out = []
    for pages_id, entries in sorted(by_file.items()):
        out += lazyindex.checksum_entries(entries, images_dir / f"pages-{pages_id}.img", page_size, block_size)
    out.sort(key=lambda e: (e.pid, e.start))
    return out


def recorded_options(pid: int, options: CriuOptions, reporter: Reporter) -> CriuOptions:
    """options plus the veth peers of the tree's own network namespace, which its restores need."""
    found = veths.peers(pid)
    for p in found:
        reporter.event("network", inner=p.inner, outer=p.outer, bridge=p.bridge)
        reporter.progress(f"network namespace of its own: {p.inner} joined to {p.outer}"
                          + (f" in bridge {p.bridge}" if p.bridge else "") + "; restores recreate it so")
    return CriuOptions(external=tuple(p.external() for p in found)).merged(options)


def checkpoint(pid: int, images_dir: Path, leave_running: bool, allow_host_pids: bool,
               reporter: Reporter, options: CriuOptions = CriuOptions(),
               secret_from: Path | None = None) -> CheckpointSummary:
    procs.require_root()
    binary = criu.find_criu()
    procs.check_checkpointable(pid, allow_host_pids)
    recorded = recorded_options(pid, options, reporter)
    prepare_dir(images_dir)
    reporter.event("dumping", pid=pid, images_dir=str(images_dir), criu=binary.path,
                   criu_options=criuopts.to_json(recorded))
    reporter.progress(f"dumping process tree {pid} into {images_dir} with criu {binary.version}"
                      + (f" ({options.describe()})" if options.describe() else ""))
    t0 = time.monotonic()
    try:  # prepare_dir made sure images_dir was new or empty: what is in it now, the dump wrote
        dump(binary, pid, images_dir, leave_running, options)
    except CriuFailed as exc:
        raise dumpdir.after_failed_dump(images_dir, DUMP_LOG, pid, exc)
    t1 = time.monotonic()
    reporter.event("dumped", seconds=round(t1 - t0, 6))
    reporter.progress(f"dumped in {t1 - t0:.2f} s; indexing and checksumming pages")
    try:
        m = write_metadata(images_dir, binary, pid, options=recorded, secret_from=secret_from)
    except (LazyRestoreError, OSError) as exc:
        raise dumpdir.after_failed_index(images_dir, DUMP_LOG, pid, leave_running, exc)
    return summary(images_dir, m, pid, t1 - t0, time.monotonic() - t1, leave_running)


def summary(images_dir: Path, m: Manifest, pid: int, dump_s: float, index_s: float,
            leave_running: bool, live: bool = False) -> CheckpointSummary:
    stats = read_dump_stats(images_dir)
    return CheckpointSummary(
        images_dir=str(images_dir), checkpoint_id=m.checkpoint_id, pid=pid, processes=m.processes,
        threads=m.threads, lazy_pages=m.lazy_pages, eager_pages=m.eager_pages, page_size=m.page_size,
        images_bytes=sum(f.size for f in m.files + m.pages_files) + m.index.size,
        frozen_s=stats.get("frozen_time", 0) / 1e6, dump_s=dump_s, index_s=index_s, leave_running=leave_running,
        criu_options=m.criu_options.describe(), live=live,
    )


def summary_text(s: CheckpointSummary) -> str:
    ps = s.page_size
    state = "left running" if s.leave_running else "stopped"
    return (
        f"checkpoint {s.checkpoint_id} of pid {s.pid} in {s.images_dir}\n"
        f"  processes {s.processes}, threads {s.threads} (source {state})\n"
        f"  memory    {human_bytes((s.lazy_pages + s.eager_pages) * ps)} in pages: "
        f"{s.lazy_pages} lazy ({human_bytes(s.lazy_pages * ps)}), {s.eager_pages} eager\n"
        f"  images    {human_bytes(s.images_bytes)}\n"
        + (f"  frozen    until a destination has every page (live); dump {s.dump_s:.3f} s, index {s.index_s:.3f} s"
           if s.live else f"  frozen    {s.frozen_s:.3f} s (CRIU); dump {s.dump_s:.3f} s, index {s.index_s:.3f} s")
        + (f"\n  restores  apply {s.criu_options}" if s.criu_options else "")
    )
