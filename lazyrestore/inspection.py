"""`lazyrestore inspect`: what a checkpoint holds, and whether it is intact."""

from __future__ import annotations

import os
from bisect import bisect_right
from pathlib import Path
from typing import Any

from . import lazyindex, manifest
from .errors import LazyRestoreError
from .images import Pagemap, Vma, read_pagemap, read_pstree, read_vmas, require_checkpoint_dir
from .output import human_bytes
from .verify import verify_checkpoint_index


def vma_report(vma: Vma, ranges: list[lazyindex.IndexEntry]) -> dict[str, Any]:
    lazy = sum(r.nr_pages for r in ranges if r.lazy)
    eager = sum(r.nr_pages for r in ranges if not r.lazy)
    return {"start": vma.start, "end": vma.end, "size": vma.size, "prot": vma.prot_text, "kinds": vma.kinds,
            "pages_present": lazy + eager, "pages_lazy": lazy, "pages_eager": eager}


def process_report(images_dir: Path, pid: int, ppid: int, threads: tuple[int, ...], page_size: int) -> dict[str, Any]:
    vmas = read_vmas(images_dir, pid)
    pagemap = read_pagemap(images_dir, pid)
    ranges = _ranges(pagemap, vmas, page_size, images_dir)
    starts = [v.start for v in vmas]
    per_vma: list[list[lazyindex.IndexEntry]] = [[] for _ in vmas]
    for r in ranges:
        per_vma[bisect_right(starts, r.start) - 1].append(r)
    vma_rows = [vma_report(v, rs) for v, rs in zip(vmas, per_vma)]
    return {
        "pid": pid, "ppid": ppid, "threads": list(threads), "zombie": pagemap is None, "vmas": vma_rows,
        "pages_id": pagemap.pages_id if pagemap else None,
        "pages_present": sum(v["pages_present"] for v in vma_rows),
        "pages_lazy": sum(v["pages_lazy"] for v in vma_rows),
        "pages_eager": sum(v["pages_eager"] for v in vma_rows),
        "pagemap_lazy_pages": sum(e.nr_pages for e in pagemap.entries if e.lazy) if pagemap else 0,
        "anon_private_bytes": sum(v.size for v in vmas if "VMA_ANON_PRIVATE" in v.kinds),
    }


def _ranges(pagemap: Pagemap | None, vmas: list[Vma], page_size: int, images_dir: Path) -> list[lazyindex.IndexEntry]:
    if pagemap is None:
        return []
    return lazyindex.plan_ranges(pagemap, vmas, page_size, str(images_dir / f"pagemap-{pagemap.pid}.img"))


def consistency(images_dir: Path) -> dict[str, Any]:
    try:
        m, index = verify_checkpoint_index(images_dir, pages=True)
    except LazyRestoreError as exc:
        return {"consistent": False, "problem": str(exc), "error": exc.kind}
    return {"consistent": True, "problem": None, "checkpoint_id": m.checkpoint_id, "created": m.created,
            "criu_version": m.criu_version, "index": {
                "records": len(index.entries), "lazy_pages": index.lazy_pages, "eager_pages": index.eager_pages,
                "block_size": index.block_size, "checksum": m.checksum, "task_count": index.task_count}}


def inspect(images_dir: Path) -> dict[str, Any]:
    """The full report; raises only when the directory is not a checkpoint at all."""
    require_checkpoint_dir(images_dir)
    page_size = os.sysconf("SC_PAGE_SIZE")
    report: dict[str, Any] = {"images_dir": str(images_dir), "page_size": page_size}
    report.update(consistency(images_dir))
    report["processes"] = [process_report(images_dir, p.pid, p.ppid, p.threads, page_size)
                           for p in read_pstree(images_dir)]
    files = [{"name": n, "size": (images_dir / n).stat().st_size} for n in manifest.list_image_files(images_dir)]
    report["files"] = files
    report["images_bytes"] = sum(f["size"] for f in files)
    report["totals"] = {key: sum(p[key] for p in report["processes"])
                        for key in ("pages_present", "pages_lazy", "pages_eager", "pagemap_lazy_pages",
                                    "anon_private_bytes")}
    report["totals"]["processes"] = len(report["processes"])
    report["totals"]["threads"] = sum(len(p["threads"]) for p in report["processes"])
    return report


def report_text(r: dict[str, Any]) -> str:
    ps = r["page_size"]
    t = r["totals"]
    state = "consistent" if r["consistent"] else f"NOT CONSISTENT: {r['problem']}"
    lines = [f"checkpoint {r.get('checkpoint_id') or '?'} in {r['images_dir']}: {state}",
             f"  {t['processes']} process(es), {t['threads']} thread(s); images {human_bytes(r['images_bytes'])}",
             f"  pages present {t['pages_present']} ({human_bytes(t['pages_present'] * ps)}): "
             f"lazy {t['pages_lazy']}, eager {t['pages_eager']}"]
    for p in r["processes"]:
        lines.append(f"  pid {p['pid']} (ppid {p['ppid']}, threads {p['threads']}): "
                     f"{len(p['vmas'])} VMAs, lazy {p['pages_lazy']} / eager {p['pages_eager']} pages"
                     + (" [zombie]" if p["zombie"] else ""))
        for v in p["vmas"]:
            kinds = ",".join(k.replace("VMA_", "").lower() for k in v["kinds"]) or "none"
            lines.append(f"    {v['start']:#014x}-{v['end']:#014x} {v['prot']} {human_bytes(v['size']):>10} "
                         f"{kinds:<32} lazy {v['pages_lazy']:>7} eager {v['pages_eager']:>4}")
    return "\n".join(lines)
