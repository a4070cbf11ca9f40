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

Its helpers, by job: criuenv.py (what CRIU's environment says), dumpindex.py (indexing), lazysocket.py (is a
daemon listening), lazypages_args.py (`lazyrestore lazy-pages`'s CRIU arguments).

The CRIU plugin (criu-plugin/lazyrestore.c) runs `lazyrestore hook` at exactly
those points, with CRTOOLS_SCRIPT_ACTION and CRTOOLS_IMAGE_DIR set the way
CRIU's action scripts get them, and the work dir as current directory. As an
action script (`action-script` in a CRIU config file) post-dump works the same;
pre-restore comes too late there: CRIU connects to lazy-pages.socket before it
runs any restore script, so a lazy restore needs the plugin (README).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import checkpoint, criu, dumpindex, manifest, sourcefile
from .daemons import Lazyd, LazydOptions, RemoteSource
from .errors import CorruptCheckpoint, LazyRestoreError
from .images import read_pstree
from .layout import SOCKET_NAME
from .lazysocket import listening
from .verify import verify_for_lazy

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


def run(action: str, images_dir: Path, work_dir: Path, pid: int | None, made_lazy: bool = False,
        sanitized: bool = False) -> HookResult:
    """sanitized: start the ASan/UBSan build of lr-lazyd (settings.py)."""
    if action == "post-dump":
        return post_dump(images_dir, work_dir, pid)
    if action == "pre-restore":
        return pre_restore(images_dir, work_dir, made_lazy, sanitized)
    return HookResult(action, "skipped", "nothing to do at this action", str(images_dir), str(work_dir))


def post_dump(images_dir: Path, work_dir: Path, pid: int | None) -> HookResult:
    def skipped(why: str) -> HookResult:
        return HookResult("post-dump", "skipped", why, str(images_dir), str(work_dir))
    if (images_dir / manifest.META_DIR / manifest.MANIFEST_NAME).exists():
        return skipped("the checkpoint already has a manifest")
    if dumpindex.is_lazy_dump(images_dir):
        return skipped("a --lazy-pages dump: its pages are served by CRIU's page server")
    root = pid if pid is not None else read_pstree(images_dir)[0].pid
    m = checkpoint.write_metadata(images_dir, criu.find_criu(), root)
    return HookResult("post-dump", "indexed", f"checkpoint {m.checkpoint_id}: {m.lazy_pages} lazy pages, "
                      f"{m.eager_pages} eager; serve it with `lazyrestore serve --images {images_dir}`",
                      str(images_dir), str(work_dir))


def pre_restore(images_dir: Path, work_dir: Path, made_lazy: bool = False, sanitized: bool = False) -> HookResult:
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
    daemon = start_lazyd(src, images_dir, work_dir, sanitized)
    return result("started", f"lr-lazyd (guardian pid {daemon.proc.pid}) serves this restore from {src.address} "
                  f"({src.kind} page server); log {daemon.log}")


def _presented(images_dir: Path) -> dict[str, str]:
    """SHA-256 of the CRIU images already in the images dir (CRIU has read inventory.img before we run)."""
    return {n: manifest.sha256_file(images_dir / n) for n in manifest.list_image_files(images_dir)
            if not manifest.is_pages_file(n)}


def start_lazyd(src: sourcefile.SourceFile, images_dir: Path, work_dir: Path, sanitized: bool = False) -> Lazyd:
    """lr-lazyd for src, detached; for an lr-pageserver, the fetched checkpoint verified first."""
    options = LazydOptions(sanitized=sanitized)
    if src.kind == "criu":
        if not (images_dir / manifest.META_DIR / manifest.INDEX_NAME).exists():
            dumpindex.index_lazy_dump(images_dir)
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


