"""The check every migration and restore of the bench ends with: does the restored sample workload read back as it
was checkpointed (its checksums, and no BAD line in its log since the checkpoint)?"""

from __future__ import annotations

from pathlib import Path

from lazyrestore import sample

REPORT_TIMEOUT_S = 300.0


def check_restored(pid: int, log: Path, log_size: int, roles: tuple[str, ...],
                   checksums: dict[str, str]) -> tuple[str, dict[str, str]]:
    """"ok", or what differed: the restored tree's checksums against the original's, BAD lines the tree wrote
    into log past log_size; and the checksums it reported."""
    after = sample.Workload(pid, log, roles).request_report(timeout=REPORT_TIMEOUT_S)
    got = {role: rep.checksum for role, rep in after.items()}
    wrong = [f"{role} {checksums[role]} -> {got.get(role)}" for role in roles if got.get(role) != checksums[role]]
    with open(log, "rb") as f:
        f.seek(log_size)
        bad = [ln for ln in f.read().decode(errors="replace").splitlines() if "BAD" in ln]
    problems = ([f"checksum mismatch: {', '.join(wrong)}"] if wrong else []) + \
               ([f"{len(bad)} BAD line(s), first: {bad[0]}"] if bad else [])
    return ("; ".join(problems) or "ok"), got
