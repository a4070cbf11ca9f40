"""The `lazyrestore` command: parse, call one library function, print the result."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import os

from . import checkpoint, hook, inspection, lazy, remote, restore, serve, status
from .daemons import LazydOptions, RemoteSource
from .errors import DaemonFailed, LazyRestoreError, UsageError
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


def size_bytes(text: str) -> int:
    """A size such as 65536, 64K, 1M or 2G."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"expected a size such as 65536, 64K or 1M, got {text!r}")
    return int(digits) * mult


def power_of_two_size(text: str) -> int:
    value = size_bytes(text)
    if value < 4096 or value & (value - 1) or value > 64 << 20:
        raise argparse.ArgumentTypeError(f"expected a power of two from 4K to 64M, got {text!r}")
    return value


def cmd_restore(args: argparse.Namespace, rep: Reporter) -> int:
    if args.prepare:
        return prepare_restore(args, rep)
    if (args.images is None) == (args.source is None):
        raise UsageError("restore needs either --images DIR (a local checkpoint) or --from HOST:PORT (a page server)")
    if args.source is not None:
        return restore_from(args, rep)
    if args.detach and not args.lazy:
        raise UsageError("--detach goes with --lazy (an eager restore is complete when it returns)")
    if not args.lazy:
        s = restore.restore(args.images, rep)
        rep.result(restore.summary_text(s), "summary", action="restore", **asdict(s))
        return 0
    ls = lazy.restore_lazy(args.images, args.workdir, args.detach, lazyd_options(args), rep)
    rep.result(lazy.summary_text(ls), "summary", action="restore", lazy=True, **asdict(ls))
    return 0


def lazyd_options(args: argparse.Namespace) -> LazydOptions:
    return LazydOptions(fault_around=args.fault_around, chunk=args.chunk, drain_rate=args.drain_rate,
                        sanitized=bool(os.environ.get("LAZYRESTORE_SANITIZED")))


def restore_from(args: argparse.Namespace, rep: Reporter) -> int:
    """restore --from HOST:PORT: always lazy, from a page server."""
    if args.secret_file is None or args.workdir is None:
        raise UsageError("--from HOST:PORT needs --secret-file FILE (the checkpoint's secret, mode 0600) and "
                         "--workdir DIR (where the checkpoint's metadata is fetched)")
    source = RemoteSource(args.source, args.secret_file, args.source_timeout)
    ls = remote.restore_remote(source, args.workdir, args.detach, lazyd_options(args), rep)
    rep.result(lazy.summary_text(ls), "summary", action="restore", lazy=True, source=args.source, **asdict(ls))
    return 0


def prepare_restore(args: argparse.Namespace, rep: Reporter) -> int:
    """restore --prepare: fetch a served checkpoint's metadata into --images and describe its source there,
    so that a runtime's `criu restore --lazy-pages` (e.g. `runc restore --lazy-pages`) restores it lazily."""
    if args.source is None or args.secret_file is None or args.images is None:
        raise UsageError("--prepare needs --from HOST:PORT, --secret-file FILE and --images DIR (the directory the "
                         "runtime will restore from)")
    s = remote.prepare(RemoteSource(args.source, args.secret_file, args.source_timeout), args.images, rep)
    rep.result(remote.prepare_text(s), "summary", action="prepare", **s)
    return 0


def cmd_hook(args: argparse.Namespace, rep: Reporter) -> int:
    """CRIU's plugin or action script: CRTOOLS_SCRIPT_ACTION says what CRIU is doing."""
    env = dict(os.environ)
    action = env.get("CRTOOLS_SCRIPT_ACTION", "")
    if action not in hook.ACTIONS:
        return 0  # CRIU runs action scripts at every action; only some concern us
    res = hook.run(action, hook.images_dir_from_env(env), Path.cwd(), hook.pid_from_env(env))
    rep.result(f"lazyrestore hook {res.action}: {res.outcome}: {res.detail}", "summary", **asdict(res))
    return 0


def cmd_index(args: argparse.Namespace, rep: Reporter) -> int:
    """Index a checkpoint CRIU wrote by itself (what the plugin does after every dump)."""
    cid, lazy_pages, eager_pages = hook.index_existing(args.images)
    rep.result(f"indexed checkpoint {cid} in {args.images}: {lazy_pages} lazy pages, {eager_pages} eager",
               "summary", action="index", images_dir=str(args.images), checkpoint_id=cid, lazy_pages=lazy_pages,
               eager_pages=eager_pages)
    return 0


def cmd_serve(args: argparse.Namespace, rep: Reporter) -> int:
    s = serve.serve(args.images, args.listen, args.once, rep, bool(os.environ.get("LAZYRESTORE_SANITIZED")),
                    args.kit)
    rep.result(serve.summary_text(s), "summary", action="serve", **asdict(s))
    return 0


def cmd_testhosts(args: argparse.Namespace, rep: Reporter) -> int:
    from . import testhosts
    if args.action == "down":
        removed = testhosts.down()
        rep.result(f"removed test hosts: {', '.join(removed) or 'none were there'}", "summary", action="testhosts_down",
                   removed=removed)
        return 0
    if args.action == "exec":
        return exec_in_host(args.host, args.cmd)
    h = testhosts.up(args.delay, args.rate)
    rep.result(f"test hosts up: {h.a} {h.veth_a} {h.addr_a}/{h.prefixlen} <-> {h.b} {h.veth_b} {h.addr_b}/{h.prefixlen}"
               f"; delay {h.delay_ms:g} ms and rate {h.rate_mbit:g} Mbit/s each way (0: none)\n"
               f"  run a command in one: lazyrestore testhosts exec a -- COMMAND", "summary", action="testhosts_up",
               **asdict(h))
    return 0


def exec_in_host(host: str, cmd: list[str]) -> int:
    from . import testhosts
    cmd = cmd[1:] if cmd[:1] == ["--"] else cmd
    if not cmd:
        raise UsageError("testhosts exec needs a host and a command: lazyrestore testhosts exec a|b -- COMMAND [ARGS]")
    name = testhosts.host_name(host)
    testhosts.enter(name)()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        raise UsageError(f"testhosts exec: cannot run {cmd[0]!r}: {exc.strerror}") from exc
    return 1


def cmd_migrate(args: argparse.Namespace, rep: Reporter) -> int:
    cp, s = serve.migrate(args.pid, args.images, args.listen, rep, bool(os.environ.get("LAZYRESTORE_SANITIZED")))
    if not s.delivered:
        raise DaemonFailed(f"the page server stopped before a destination had every page; the checkpoint in "
                           f"{args.images} is intact: `lazyrestore serve --images {args.images} --listen {args.listen}`")
    rep.result(serve.summary_text(s), "summary", action="migrate", checkpoint=asdict(cp), **asdict(s))
    return 0


def cmd_status(args: argparse.Namespace, rep: Reporter) -> int:
    found = status.status(args.images, args.workdir)
    rep.result(status.status_text(found), "status", **found)
    return 0


def run_lazy_pages(lazyd_args: list[str]) -> int:
    try:
        status.exec_lazyd(hook.criu_lazy_pages_args(lazyd_args))
    except LazyRestoreError as exc:
        return report_error(Reporter(json_mode=False), exc.kind, str(exc), exc.exit_code)
    return 1


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

    r = sub.add_parser("restore", help="verify a checkpoint and restore it (eagerly, or lazily with --lazy; "
                                       "from a page server with --from)")
    r.add_argument("--images", "-D", type=images_path, default=None, help="checkpoint directory")
    r.add_argument("--from", dest="source", metavar="HOST:PORT", default=None,
                   help="restore lazily from this page server (`lazyrestore serve` / `migrate`)")
    r.add_argument("--secret-file", type=images_path, default=None,
                   help="with --from: a copy of the checkpoint's lazyrestore/secret (mode 0600)")
    r.add_argument("--source-timeout", type=positive_int, default=30,
                   help="with --from: seconds a lost page server may stay away before the tree is stopped (30)")
    r.add_argument("--lazy", action="store_true", help="resume at once; lr-lazyd places memory on demand and in the background")
    r.add_argument("--detach", action="store_true", help="with --lazy: return once the tree runs; see `status`")
    r.add_argument("--workdir", type=images_path, default=None,
                   help="CRIU work dir for logs and lazy-pages.socket (default DIR/lazyrestore/runs/restore-...); "
                        "with --from: a new dir for the fetched checkpoint (images/) and the restore (run/)")
    r.add_argument("--fault-around", type=power_of_two_size, default=64 << 10, help="bytes placed per fault (64K)")
    r.add_argument("--chunk", type=size_bytes, default=1 << 20, help="bytes per background drain step (1M)")
    r.add_argument("--drain-rate", type=size_bytes, default=0, help="cap on the background drain, bytes/s (none)")
    r.add_argument("--prepare", action="store_true",
                   help="with --from, --secret-file and --images DIR: fetch the checkpoint's metadata into DIR and "
                        "describe its source there, for a runtime's `restore --lazy-pages` with the CRIU plugin")
    r.set_defaults(func=cmd_restore)

    st = sub.add_parser("status", help="progress of a lazy restore (e.g. one started with --detach)")
    st.add_argument("--images", "-D", type=images_path, default=None, help="checkpoint directory: its newest restore")
    st.add_argument("--workdir", type=images_path, default=None, help="the restore's work dir")
    st.set_defaults(func=cmd_status)

    sub.add_parser("lazy-pages", add_help=False,
                   help="drop-in for `criu lazy-pages -D DIR [-W DIR] [--status-fd N]`: runs lr-lazyd (see lr-lazyd --help)")

    i = sub.add_parser("inspect", help="show what a checkpoint holds and whether it is intact")
    i.add_argument("--images", "-D", type=images_path, required=True, help="checkpoint directory")
    i.set_defaults(func=cmd_inspect)

    d = sub.add_parser("demo", help="checkpoint and restore a built-in sample workload, comparing checksums")
    d.add_argument("--mib", type=positive_int, default=1024, help="workload memory in MiB (default 1024)")
    d.add_argument("--workdir", type=images_path, default=None, help="where to keep images (default: a new dir in /dev/shm)")
    d.set_defaults(func=cmd_demo)

    sv = sub.add_parser("serve", help="serve a checkpoint to remote lazy restores (lr-pageserver)")
    sv.add_argument("--images", "-D", type=images_path, required=True, help="checkpoint directory (read only)")
    sv.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve on (port 0: any free one)")
    sv.add_argument("--once", action="store_true", help="stop after the first destination has every page")
    sv.add_argument("--kit", type=images_path, default=None, metavar="DIR",
                    help="write a destination kit into DIR (inventory.img, lazyrestore/source.json and the secret): "
                         "copied to the destination, it is the images dir for `runc restore --lazy-pages`")
    sv.set_defaults(func=cmd_serve)

    hk = sub.add_parser("hook", help="run by CRIU (plugin or action-script): index after a dump, start lr-lazyd "
                                     "before a lazy restore (reads CRTOOLS_SCRIPT_ACTION, CRTOOLS_IMAGE_DIR)")
    hk.set_defaults(func=cmd_hook)

    ix = sub.add_parser("index", help="index a checkpoint CRIU wrote itself (lazy index, view, secret, manifest)")
    ix.add_argument("--images", "-D", type=images_path, required=True, help="checkpoint directory")
    ix.set_defaults(func=cmd_index)

    mg = sub.add_parser("migrate", help="checkpoint a tree and serve it until a destination has every page")
    mg.add_argument("--pid", type=positive_int, required=True, help="root of the tree (init of its own pid namespace)")
    mg.add_argument("--images", "-D", type=images_path, required=True, help="new or empty directory (tmpfs recommended)")
    mg.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve on (port 0: any free one)")
    mg.set_defaults(func=cmd_migrate)

    th = sub.add_parser("testhosts", help="two network-namespace test hosts (a: 10.231.0.1, b: 10.231.0.2)")
    ths = th.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = ths.add_parser("up", help="create the test hosts (again)")
    up.add_argument("--delay", type=float, default=0.0, metavar="MS", help="one-way delay on each veth end (netem)")
    up.add_argument("--rate", type=float, default=0.0, metavar="MBIT", help="rate limit on each veth end (netem)")
    down = ths.add_parser("down", help="remove the test hosts")
    ex = ths.add_parser("exec", help="run a command in a test host: exec a|b -- COMMAND [ARGS]")
    ex.add_argument("host", help="a or b")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS]")
    for tp in (up, down):
        tp.add_argument("--json", action="store_true", help="print JSON events, one object per line")
    th.set_defaults(func=cmd_testhosts)

    for sp in (c, r, i, d, st, sv, mg, hk, ix):
        sp.add_argument("--json", action="store_true", help="print JSON events, one object per line")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lazy-pages"]:  # every option goes to lr-lazyd as given (argparse would take -D itself)
        return run_lazy_pages(argv[1:])
    args = build_parser().parse_args(argv)
    rep = Reporter(json_mode=getattr(args, "json", False))
    func: Callable[[argparse.Namespace, Reporter], int] = args.func
    rep.event("started", command=args.command, pid=os.getpid())
    try:
        return func(args, rep)
    except LazyRestoreError as exc:
        return report_error(rep, exc.kind, str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return report_error(rep, "Interrupted", "interrupted", 130)


def hook_main() -> int:
    """`lazyrestore-hook`: `lazyrestore hook` as one word, for CRIU config files (`action-script PATH`)."""
    return main(["hook", *sys.argv[1:]])


def report_error(rep: Reporter, kind: str, message: str, code: int) -> int:
    rep.event("error", code=code, error=kind, message=message)
    sys.stderr.write(f"lazyrestore: error: {message}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
