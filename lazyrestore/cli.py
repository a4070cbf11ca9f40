"""The `lazyrestore` command: parse, call one library function, print the result."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from . import checkpoint, inspection, restore
from .errors import LazyRestoreError
from .output import Reporter


def positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


def images_path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a directory path, got an empty string")
    return Path(text).absolute()


def cmd_checkpoint(args: argparse.Namespace, rep: Reporter) -> int:
    s = checkpoint.checkpoint(args.pid, args.images, args.leave_running, args.allow_host_pids, rep)
    rep.result(checkpoint.summary_text(s), "summary", action="checkpoint", **asdict(s))
    return 0


def cmd_restore(args: argparse.Namespace, rep: Reporter) -> int:
    s = restore.restore(args.images, rep)
    rep.result(restore.summary_text(s), "summary", action="restore", **asdict(s))
    return 0


def cmd_inspect(args: argparse.Namespace, rep: Reporter) -> int:
    report = inspection.inspect(args.images)
    rep.result(inspection.report_text(report), "report", **report)
    return 0 if report["consistent"] else 7


def cmd_demo(args: argparse.Namespace, rep: Reporter) -> int:
    from . import demo
    return demo.run(args.mib, args.workdir, rep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lazyrestore", description="Post-copy checkpoint, restore and migration on CRIU.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("checkpoint", help="dump a process tree and index its pages")
    c.add_argument("--pid", type=positive_int, required=True, help="root of the tree (init of its own pid namespace)")
    c.add_argument("--images", "-D", type=images_path, required=True, help="new or empty directory (tmpfs recommended)")
    c.add_argument("--leave-running", action="store_true", help="keep the tree running after the dump")
    c.add_argument("--allow-host-pids", action="store_true",
                   help="accept a tree in the host pid namespace (its pids must be free where it is restored)")
    c.set_defaults(func=cmd_checkpoint)

    r = sub.add_parser("restore", help="verify a checkpoint and restore it (eagerly)")
    r.add_argument("--images", "-D", type=images_path, required=True, help="checkpoint directory")
    r.set_defaults(func=cmd_restore)

    i = sub.add_parser("inspect", help="show what a checkpoint holds and whether it is intact")
    i.add_argument("--images", "-D", type=images_path, required=True, help="checkpoint directory")
    i.set_defaults(func=cmd_inspect)

    d = sub.add_parser("demo", help="checkpoint and restore a built-in sample workload, comparing checksums")
    d.add_argument("--mib", type=positive_int, default=1024, help="workload memory in MiB (default 1024)")
    d.add_argument("--workdir", type=images_path, default=None, help="where to keep images (default: a new dir in /dev/shm)")
    d.set_defaults(func=cmd_demo)

    for sp in (c, r, i, d):
        sp.add_argument("--json", action="store_true", help="print JSON events, one object per line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rep = Reporter(json_mode=args.json)
    func: Callable[[argparse.Namespace, Reporter], int] = args.func
    try:
        return func(args, rep)
    except LazyRestoreError as exc:
        return report_error(rep, exc.kind, str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return report_error(rep, "Interrupted", "interrupted", 130)


def report_error(rep: Reporter, kind: str, message: str, code: int) -> int:
    rep.event("error", code=code, error=kind, message=message)
    sys.stderr.write(f"lazyrestore: error: {message}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
