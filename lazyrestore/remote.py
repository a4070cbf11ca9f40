"""`lazyrestore restore --from HOST:PORT`: a lazy restore of a checkpoint another host serves.

lr-lazyd connects to the page server (`lazyrestore serve` / `migrate`), proves it
knows the checkpoint's secret, and fetches the manifest, the metadata images, the
lazy view and the eager page ranges into WORKDIR/images (pages files stay sparse:
their lazy bytes arrive later, verified block by block). Here every fetched file is
checked against the manifest's sizes and SHA-256 before CRIU reads it; then the
tree resumes and lr-lazyd streams the rest (faults first) until every page is
placed, when it tells the server DONE. Nothing on the source is ever changed, so a
failed restore can simply be started again.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import criu, procs, secret, sourcefile
from .address import check_destination
from .daemons import Lazyd, LazydOptions, RemoteSource, fetch_only
from .errors import LazyRestoreError, UsageError
from .lazy import LazySummary, resume_and_follow
from .output import Reporter
from .criuopts import CriuOptions
from .restore import check_pids_free, criu_options_for
from .verify import verify_for_lazy
from .layout import IMAGES_SUBDIR, RUN_SUBDIR



def prepare_workdir(workdir: Path) -> tuple[Path, Path]:
    """WORKDIR/images (the fetched checkpoint) and WORKDIR/run (CRIU's work dir), both new."""
    images, run = workdir / IMAGES_SUBDIR, workdir / RUN_SUBDIR
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--workdir {workdir}: exists and is not a directory")
    for sub in (images, run):
        if sub.exists() and any(sub.iterdir()):
            raise UsageError(f"--workdir {workdir}: {sub} is not empty (from an earlier restore?); "
                             "give a new or empty work dir")
    images.mkdir(parents=True, exist_ok=True)
    run.mkdir(exist_ok=True)
    return images, run


def restore_remote(source: RemoteSource, workdir: Path, detach: bool, options: LazydOptions,
                   reporter: Reporter, extra: CriuOptions = CriuOptions()) -> LazySummary:
    procs.require_root()
    check_destination(source.address)
    secret.check_file(source.secret_file)
    binary = criu.find_criu()
    images, run = prepare_workdir(workdir)
    reporter.progress(f"fetching the checkpoint from {source.address} into {images}")
    t0 = time.monotonic()
    daemon = Lazyd(images, run, options, detach, source)
    try:
        m = verify_for_lazy(images)
        check_pids_free(images)
        criu_options = criu_options_for(images, m, extra)
    except (LazyRestoreError, KeyboardInterrupt):
        daemon.stop()
        raise
    fetch_s = time.monotonic() - t0
    reporter.event("fetched", source=source.address, checkpoint_id=m.checkpoint_id, seconds=round(fetch_s, 6),
                   images=str(images))
    reporter.progress(f"fetched and verified checkpoint {m.checkpoint_id} in {fetch_s:.3f} s "
                      f"({m.processes} process(es)); resuming")
    return resume_and_follow(binary, images, m, run, daemon, fetch_s, reporter, criu_options)


def prepare(source: RemoteSource, images: Path, reporter: Reporter, sanitized: bool = False) -> dict[str, object]:
    """restore --prepare: fetch the checkpoint's metadata and eager pages into images (new or empty), verify
    them, and describe the source there (lazyrestore/source.json): a runtime's lazy restore from images then
    gets its lr-lazyd from the CRIU plugin."""
    procs.require_root()
    check_destination(source.address)
    secret.check_file(source.secret_file)
    if images.exists() and (not images.is_dir() or any(images.iterdir())):
        raise UsageError(f"--images {images}: give a new or empty directory for the fetched checkpoint")
    images.mkdir(parents=True, exist_ok=True)
    reporter.progress(f"fetching the checkpoint from {source.address} into {images}")
    log = images.parent / f"{images.name}-prepare.log"
    fetch_only(images, source, log, sanitized)
    m = verify_for_lazy(images)
    desc = sourcefile.write(images, "lazyrestore", source.address, str(source.secret_file), source.timeout_s)
    reporter.event("prepared", images=str(images), checkpoint_id=m.checkpoint_id, source=str(desc))
    return {"images_dir": str(images), "checkpoint_id": m.checkpoint_id, "source_file": str(desc),
            "address": source.address, "lazy_pages": m.lazy_pages, "log": str(log)}


def prepare_text(s: dict[str, object]) -> str:
    return (f"prepared checkpoint {s['checkpoint_id']} in {s['images_dir']} ({s['lazy_pages']} lazy pages stay on "
            f"{s['address']});\n  restore it with the CRIU plugin installed, e.g. `runc restore --lazy-pages "
            f"--image-path {s['images_dir']} --work-path WORKDIR ID`")
