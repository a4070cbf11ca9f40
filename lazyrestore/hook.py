"""What lazyrestore does inside CRIU's own runs: the plugin's and `lazyrestore hook`'s work.

CRIU (run by a runtime such as runc, or by hand) calls this at two points:

post-dump    after a successful dump: write the lazy index, lazy view, secret and
             manifest into the images dir, so the checkpoint can be served
             (`lazyrestore serve`) like one made by `lazyrestore checkpoint`.
             Skipped for a `--lazy-pages` dump (its pages stay in CRIU's page
             server) and when the checkpoint already has a manifest.
pre-restore  at the start of a restore: when the images dir or work dir holds a
             source description (sourcefile.py) and no lazy-pages daemon listens
             on WORKDIR/lazy-pages.socket, start lr-lazyd (with its guardian,
             detached) for that source and return once it listens.

live-dump    (plugin only, with LAZYRESTORE_LIVE=HOST:PORT in CRIU's environment)
             serve a dump the plugin made live until a destination has it:
             livehook.py.

The CRIU plugin (criu-plugin/lazyrestore.c) runs `lazyrestore hook` at exactly
those points, with CRTOOLS_SCRIPT_ACTION and CRTOOLS_IMAGE_DIR set the way
CRIU's action scripts get them, and the work dir as current directory. As an
action script (`action-script` in a CRIU config file) post-dump works the same;
pre-restore comes too late there: CRIU connects to lazy-pages.socket before it
runs any restore script, so a lazy restore needs the plugin (README).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from . import checkpoint, criu, lazyindex, manifest, remote, sourcefile
from .daemons import Lazyd, LazydOptions, RemoteSource
from .errors import CorruptCheckpoint, ImagesDirError, LazyRestoreError, UsageError
from .images import PE_LAZY, PE_PRESENT, read_pagemap, read_pstree, read_vmas, require_checkpoint_dir
from .verify import verify_for_lazy

SOCKET_NAME = "lazy-pages.socket"
ACTIONS = ("post-dump", "pre-restore")


@dataclass(frozen=True)
class HookResult:
    """What one hook call did: action, what happened ("indexed", "started", "skipped") and why."""

    action: str
    outcome: str
    detail: str
    images_dir: str
    work_dir: str
    made_lazy: bool = False  # CRIU was not asked for --lazy-pages; the plugin turned the restore lazy


def images_dir_from_env(env: dict[str, str]) -> Path:
    """CRTOOLS_IMAGE_DIR (CRIU gives /proc/PID/fd/N): the real directory it names."""
    raw = env.get("CRTOOLS_IMAGE_DIR")
    if not raw:
        raise UsageError("CRTOOLS_IMAGE_DIR is not set: `lazyrestore hook` runs from CRIU (plugin or "
                         "action-script), which sets it to the images directory")
    path = Path(os.path.realpath(raw))
    if not path.is_dir():
        raise ImagesDirError(f"CRTOOLS_IMAGE_DIR={raw}: {path} is not a directory")
    return path


def run(action: str, images_dir: Path, work_dir: Path, pid: int | None, made_lazy: bool = False) -> HookResult:
    if action == "post-dump":
        return post_dump(images_dir, work_dir, pid)
    if action == "pre-restore":
        return pre_restore(images_dir, work_dir, made_lazy)
    return HookResult(action, "skipped", "nothing to do at this action", str(images_dir), str(work_dir))


def _lazy_dump(images_dir: Path) -> bool:
    """A `--lazy-pages` dump: some pagemap entry is lazy but not in the pages file."""
    for proc in read_pstree(images_dir):
        pm = read_pagemap(images_dir, proc.pid)
        if pm is not None and any(e.flags & PE_LAZY and not e.flags & PE_PRESENT for e in pm.entries):
            return True
    return False


def post_dump(images_dir: Path, work_dir: Path, pid: int | None) -> HookResult:
    def skipped(why: str) -> HookResult:
        return HookResult("post-dump", "skipped", why, str(images_dir), str(work_dir))
    if (images_dir / manifest.META_DIR / manifest.MANIFEST_NAME).exists():
        return skipped("the checkpoint already has a manifest")
    if _lazy_dump(images_dir):
        return skipped("a --lazy-pages dump: its pages are served by CRIU's page server")
    root = pid if pid is not None else read_pstree(images_dir)[0].pid
    m = checkpoint.write_metadata(images_dir, criu.find_criu(), root)
    return HookResult("post-dump", "indexed", f"checkpoint {m.checkpoint_id}: {m.lazy_pages} lazy pages, "
                      f"{m.eager_pages} eager; serve it with `lazyrestore serve --images {images_dir}`",
                      str(images_dir), str(work_dir))


def index_existing(images_dir: Path) -> tuple[str, int, int]:
    """`lazyrestore index`: what post-dump does, for a checkpoint CRIU wrote without the plugin; for a
    `--lazy-pages` dump, the index without checksums lr-lazyd --criu-page-server needs. (id, lazy, eager pages)"""
    if not images_dir.is_dir():
        raise ImagesDirError(f"images directory {images_dir} does not exist or is not a directory")
    require_checkpoint_dir(images_dir)
    if (images_dir / manifest.META_DIR / manifest.MANIFEST_NAME).exists():
        raise ImagesDirError(f"{images_dir} is already indexed ({manifest.META_DIR}/{manifest.MANIFEST_NAME} exists)")
    if _lazy_dump(images_dir):
        index = index_lazy_dump(images_dir)
        return index.checkpoint_id.hex(), index.lazy_pages, index.eager_pages
    m = checkpoint.write_metadata(images_dir, criu.find_criu(), read_pstree(images_dir)[0].pid)
    return m.checkpoint_id, m.lazy_pages, m.eager_pages


def index_lazy_dump(images_dir: Path) -> lazyindex.LazyIndex:
    """IMAGES/lazyrestore/index.bin for a `criu dump --lazy-pages`: its ranges, every record RANGE_UNVERIFIED
    (CRIU's page server sends no checksums; the lazy bytes are not here to compute any)."""
    page_size, block = os.sysconf("SC_PAGE_SIZE"), lazyindex.DEFAULT_BLOCK_SIZE
    tree = read_pstree(images_dir)
    entries: list[lazyindex.IndexEntry] = []
    for proc in tree:
        pm = read_pagemap(images_dir, proc.pid)
        if pm is not None:
            entries += lazyindex.plan_ranges(pm, read_vmas(images_dir, proc.pid), page_size,
                                             str(images_dir / f"pagemap-{proc.pid}.img"), lazy_dump=True)
    entries = [replace(e, checksums=(0,) * len(lazyindex.block_spans(e.start, e.nr_pages * page_size, block)))
               for e in sorted(entries, key=lambda e: (e.pid, e.start))]
    index = lazyindex.LazyIndex(page_size, block, len(tree), bytes.fromhex(manifest.new_checkpoint_id()),
                                tuple(entries))
    (images_dir / manifest.META_DIR).mkdir(exist_ok=True)
    lazyindex.write(images_dir / manifest.META_DIR / manifest.INDEX_NAME, index)
    return index


CRIU_TLS_OPTIONS = ("--tls", "--tls-cacert", "--tls-cacrl", "--tls-cert", "--tls-key", "--tls-no-cn-verify")


def refuse_criu_tls(args: list[str]) -> None:
    """CRIU's TLS page-server options: lr-lazyd does not speak TLS to CRIU's page server. Refused (UsageError, exit
    2) before anything is indexed or started."""
    given = [a.partition("=")[0] for a in args if a.partition("=")[0] in CRIU_TLS_OPTIONS]
    if given:
        raise UsageError(f"lazy-pages {given[0]}: TLS to CRIU's page server is not supported; for an "
                         "authenticated link use lazyrestore's own page server (`lazyrestore serve` on the source, "
                         "`lazyrestore restore --from` on the destination), or CRIU's own `criu lazy-pages --tls`")


def criu_common_args(args: list[str]) -> list[str]:
    """CRIU's options every `criu ACTION` takes, as zdtm and runtimes give them to `criu lazy-pages`:
    --no-default-config dropped (lr-lazyd reads no CRIU config file), --verbosity[=N] is lr-lazyd's --verbose."""
    out = []
    for a in args:
        key, eq, val = a.partition("=")
        if a == "--no-default-config":
            continue
        out.append(f"--verbose{eq}{val}" if key == "--verbosity" else a)
    return out


def criu_lazy_pages_args(args: list[str]) -> list[str]:
    """`lazyrestore lazy-pages` with CRIU's `--page-server --address A --port P` (a drop-in for `criu lazy-pages
    --page-server`): lr-lazyd's --criu-page-server A:P, the dump indexed first if it is not. Other args as given,
    but for CRIU's common options (criu_common_args). CRIU's --tls options are refused first."""
    refuse_criu_tls(args)
    args = criu_common_args(args)
    if "--page-server" not in args:
        return args
    out, address, port, images = [], "", "", "."
    it = iter(args)
    for a in it:
        key, eq, val = a.partition("=")
        if key in ("--address", "--port", "-D", "--images-dir") and not eq:
            val = next(it, "")
        if key == "--address":
            address = val
        elif key == "--port":
            port = val
        elif a != "--page-server":
            out += [a] if eq or key not in ("-D", "--images-dir") else [a, val]
            images = val if key in ("-D", "--images-dir") else images
    if not address or not port.isdigit():
        raise UsageError("lazy-pages --page-server needs --address ADDR and --port PORT (CRIU's page server; "
                         "PORT from 1 to 65535)")
    try:  # before the dump is indexed: nothing is written for a bad address
        remote.check_destination(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    except UsageError as exc:
        raise UsageError(f"lazy-pages --address {address!r} --port {port!r}: {exc}") from None
    images_dir = Path(images)
    if not (images_dir / manifest.META_DIR / manifest.INDEX_NAME).exists():
        index_lazy_dump(images_dir)
    return out + ["--criu-page-server", f"{address}:{port}"]


def listening(work_dir: Path) -> bool:
    """Does some process listen on WORK_DIR/lazy-pages.socket? Without connecting: a daemon would take a
    probe for CRIU's restore. Listening unix sockets named so, held by a process whose cwd is work_dir
    (CRIU and lr-lazyd bind the relative name) or bound to the absolute path."""
    want = str(work_dir / SOCKET_NAME)
    inodes = set()
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                cols = line.split()
                if len(cols) >= 8 and cols[5] == "01" and cols[7] in (SOCKET_NAME, want):
                    inodes.add((cols[6], cols[7]))
    except OSError:
        return False
    return any(_held_in(inode, work_dir, name == want) for inode, name in inodes)


def _held_in(inode: str, work_dir: Path, absolute: bool) -> bool:
    link = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not any(os.readlink(f"/proc/{pid}/fd/{fd}") == link for fd in os.listdir(f"/proc/{pid}/fd")):
                continue
            return absolute or os.path.realpath(f"/proc/{pid}/cwd") == os.path.realpath(work_dir)
        except OSError:
            continue
    return False


def pre_restore(images_dir: Path, work_dir: Path, made_lazy: bool = False) -> HookResult:
    """made_lazy: the plugin turned a restore asked without --lazy-pages lazy (LAZYRESTORE_MADE_LAZY=1)."""
    def result(outcome: str, detail: str) -> HookResult:
        if made_lazy:
            detail += "; the restore was asked without --lazy-pages and the plugin made it lazy"
        return HookResult("pre-restore", outcome, detail, str(images_dir), str(work_dir), made_lazy)
    path = sourcefile.find(images_dir, work_dir)
    if path is None:
        return result("skipped", f"no {manifest.META_DIR}/{sourcefile.SOURCE_NAME} in the images or work dir")
    if listening(work_dir):
        return result("skipped", f"a lazy-pages daemon already listens on {work_dir / SOCKET_NAME}")
    src = sourcefile.read(path)
    daemon = start_lazyd(src, images_dir, work_dir)
    return result("started", f"lr-lazyd (guardian pid {daemon.proc.pid}) serves this restore from {src.address} "
                  f"({src.kind} page server); log {daemon.log}")


def _presented(images_dir: Path) -> dict[str, str]:
    """SHA-256 of the CRIU images already in the images dir (CRIU has read inventory.img before we run)."""
    return {n: manifest.sha256_file(images_dir / n) for n in manifest.list_image_files(images_dir)
            if not manifest.is_pages_file(n)}


def start_lazyd(src: sourcefile.SourceFile, images_dir: Path, work_dir: Path) -> Lazyd:
    """lr-lazyd for src, detached; for an lr-pageserver, the fetched checkpoint verified first."""
    options = LazydOptions(sanitized=bool(os.environ.get("LAZYRESTORE_SANITIZED")))
    if src.kind == "criu":
        if not (images_dir / manifest.META_DIR / manifest.INDEX_NAME).exists():
            index_lazy_dump(images_dir)
        return Lazyd(images_dir, work_dir, options, detach=True, criu_page_server=src.address, leave_cgroup=True)
    assert src.secret_file is not None
    before = _presented(images_dir)
    daemon = Lazyd(images_dir, work_dir, options, detach=True,
                   source=RemoteSource(src.address, src.secret_file, src.source_timeout), leave_cgroup=True)
    try:
        m = verify_for_lazy(images_dir)
        listed = {f.name: f.sha256 for f in m.files}
        for name, sha in before.items():
            if name in listed and listed[name] != sha:
                raise CorruptCheckpoint(str(images_dir / name), f"was here before the restore and differs from "
                                        f"checkpoint {m.checkpoint_id} served by {src.address} (another checkpoint?)")
    except (LazyRestoreError, KeyboardInterrupt):
        daemon.stop()
        raise
    return daemon


def made_lazy_from_env(env: dict[str, str]) -> bool:
    """LAZYRESTORE_MADE_LAZY=1: the plugin set CRIU's --lazy-pages itself for this restore."""
    return env.get("LAZYRESTORE_MADE_LAZY") == "1"


def pid_from_env(env: dict[str, str]) -> int | None:
    raw = env.get("CRTOOLS_INIT_PID", "")
    return int(raw) if re.fullmatch(r"[0-9]+", raw) else None
