"""The `lazyrestore` command: parse, call one library function, print the result."""

from __future__ import annotations

import argparse
import ipaddress
import math
import tempfile
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable, TypeVar

import os

from . import (address, checkpoint, criuenv, criuopts, dumpdir, dumpindex, hook, inspection, lazy, lazypages_args,
               livehook, manifest, migratelive, remote, report, restore, secret, serve, settings, status)
from .criuopts import CriuOptions
from .daemons import LazydOptions, RemoteSource
from .errors import DaemonFailed, ImagesDirError, LazyRestoreError, ProcessError, UsageError
from .output import Reporter

# The kernel's largest pid_max (PID_MAX_LIMIT, include/linux/threads.h): every pid is below it.
PID_MAX_LIMIT = 4 << 20
# lr-lazyd's own bounds (native/lazyd/main.c), checked here before anything runs.
MIN_CHUNK, MAX_CHUNK = 4 << 10, 256 << 20
MAX_DRAIN_RATE = 1 << 40
MAX_SOURCE_TIMEOUT_S = 86400

T = TypeVar("T")


def positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


def positive_int_up_to(text: str, maximum: int, unit: str, why: str = "") -> int:
    value = positive_int(text)
    if value > maximum:
        raise argparse.ArgumentTypeError(f"expected {unit} from 1 to {maximum}{why}, got {value}")
    return value


def pid_number(text: str) -> int:
    return positive_int_up_to(text, PID_MAX_LIMIT - 1, "a pid")


def timeout_seconds(text: str) -> int:
    return positive_int_up_to(text, MAX_SOURCE_TIMEOUT_S, "seconds")


def demo_mib(text: str) -> int:
    memory_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    return positive_int_up_to(text, memory_mib, "MiB", " (this machine's memory)")


def images_path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a directory path, got an empty string")
    return Path(text).absolute()


def file_path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file path, got an empty string")
    return Path(text).absolute()


def parse_size(text: str) -> int | None:
    """A size such as 65536, 64K, 1M or 2G in bytes; None if text is not one."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = units.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in units else t
    return int(digits) * mult if digits.isascii() and digits.isdigit() else None


def size_where(text: str, ok: Callable[[int], bool], expected: str) -> int:
    """The size text gives, if ok(size); else an argparse error saying what was expected."""
    value = parse_size(text)
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def power_of_two_size(text: str) -> int:
    return size_where(text, lambda v: 4096 <= v <= 64 << 20 and not v & (v - 1), "a power of two from 4K to 64M")


def prefetch_mode(text: str) -> str:
    """auto, off, or a working-set file that exists (lr-lazyd checks what is in it)."""
    if text in ("auto", "off"):
        return text
    path = Path(text).absolute() if text.strip() else None
    if path is None or not path.is_file():
        raise argparse.ArgumentTypeError(f"expected auto, off or an existing working-set file, got {text!r}")
    return str(path)


def chunk_size(text: str) -> int:
    return size_where(text, lambda v: MIN_CHUNK <= v <= MAX_CHUNK, "a size from 4K to 256M")


def drain_rate(text: str) -> int:
    return size_where(text, lambda v: v <= MAX_DRAIN_RATE, "bytes per second from 0 (no cap) to 1024G, e.g. 200M")


def host_letter(text: str) -> str:
    if text.lower() not in ("a", "b"):
        raise argparse.ArgumentTypeError(f"expected a test host, a or b, got {text!r}")
    return text


def bounded_number(text: str, maximum: float, unit: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= maximum:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected {unit} from 0 to {maximum:g} (0: none), got {text!r}")
    return value


def delay_ms(text: str) -> float:
    from .testhosts import MAX_DELAY_MS  # pyroute2 loads only for testhosts
    return bounded_number(text, MAX_DELAY_MS, "milliseconds")


def rate_mbit(text: str) -> float:
    from .testhosts import MAX_RATE_MBIT
    return bounded_number(text, MAX_RATE_MBIT, "Mbit/s")


def require_process(pid: int) -> None:
    if not Path(f"/proc/{pid}").is_dir():
        raise ProcessError(f"--pid {pid}: no process with pid {pid} (expected the host pid of a running process)")


def require_dir(option: str, path: Path, expected: str) -> None:
    """path is an existing directory, else ImagesDirError naming the option."""
    if not path.is_dir():
        why = "is not a directory" if path.exists() else "does not exist"
        raise ImagesDirError(f"{option} {path}: {why}; expected {expected}")


def require_makeable_dir(option: str, path: Path, error: type[LazyRestoreError] = UsageError,
                         expected: str = "a directory, new or existing") -> None:
    """path is a directory, or `mkdir -p` can make it one (its nearest existing ancestor is a directory)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is not a directory)"
        raise error(f"{option} {path}: is not a directory{where}; expected {expected}")


def require_empty_dir(option: str, path: Path, error: type[LazyRestoreError]) -> None:
    """path is an empty directory, or one `mkdir -p` can make."""
    expected = "a new or empty directory"
    require_makeable_dir(option, path, error, expected)
    if path.is_dir() and any(path.iterdir()):
        raise error(f"{option} {path}: is not empty; expected {expected}")


def require_new_images(path: Path) -> None:
    """checkpoint/migrate --images: new or empty, in an existing directory."""
    if path.is_dir() and any(path.iterdir()):
        raise dumpdir.not_empty("--images", path)
    require_empty_dir("--images", path, ImagesDirError)
    if not path.parent.is_dir():
        raise ImagesDirError(f"--images {path}: cannot be created, {path.parent} does not exist; "
                             "expected a new or empty directory")


def require_valid(option: str, check: Callable[[T], object], value: T, expected: str = "") -> None:
    """check(value); its UsageError raised again naming the option (and what it expects)."""
    try:
        check(value)
    except UsageError as exc:
        raise UsageError(f"{option}: {exc}" + (f" (expected {expected})" if expected else "")) from None


SECRET_EXPECTED = f"a copy of the checkpoint's lazyrestore/secret: {secret.SECRET_SIZE} bytes, mode 0600"
SECRET_EXPECTED_SHARED = (f"a secret shared with the destination: {secret.SECRET_SIZE} random bytes, mode 0600 "
                          f"(umask 077; head -c {secret.SECRET_SIZE} /dev/urandom > FILE)")


def cmd_checkpoint(args: argparse.Namespace, rep: Reporter) -> int:
    require_process(args.pid)
    require_new_images(args.images)
    s = checkpoint.checkpoint(args.pid, args.images, args.leave_running, args.allow_host_pids, rep, criu_options(args))
    rep.result(checkpoint.summary_text(s), "summary", action="checkpoint", **asdict(s))
    return 0


def cmd_restore(args: argparse.Namespace, rep: Reporter) -> int:
    if args.prepare:
        return prepare_restore(args, rep)
    if (args.images is None) == (args.source is None):
        raise UsageError("restore needs either --images DIR (a local checkpoint) or --from HOST:PORT (a page server)")
    if args.source is not None:
        return restore_from(args, rep)
    if args.detach and not args.lazy:
        raise UsageError("--detach goes with --lazy (an eager restore is complete when it returns)")
    require_dir("--images", args.images, "a checkpoint directory")
    if args.workdir is not None:
        require_makeable_dir("--workdir", args.workdir)
    if not args.lazy:
        s = restore.restore(args.images, rep, criu_options(args))
        rep.result(restore.summary_text(s), "summary", action="restore", **asdict(s))
        return 0
    ls = lazy.restore_lazy(args.images, args.workdir, args.detach, lazyd_options(args), rep, criu_options(args))
    rep.result(lazy.summary_text(ls), "summary", action="restore", lazy=True, **asdict(ls))
    return 0


def criu_options(args: argparse.Namespace) -> CriuOptions:
    return criuopts.from_args(args.tcp_established, args.tcp_close, args.ext_masters, args.file_locks, args.external,
                              args.network_lock)


def add_criu_options(p: argparse.ArgumentParser, restoring: bool) -> None:
    """CRIU's socket, network and mount options, with CRIU's meanings (criuopts.py)."""
    when = "a restore applies what the checkpoint was taken with; this adds to it" if restoring else \
        "recorded in the checkpoint: its restores apply it"
    p.add_argument("--tcp-established", action="store_true",
                   help=f"keep open TCP connections: CRIU dumps and restores them, locking the network meanwhile ({when})")
    p.add_argument("--tcp-close", action="store_true", help=f"restore open TCP connections closed ({when})")
    p.add_argument("--enable-external-masters", dest="ext_masters", action="store_true",
                   help="allow bind mounts whose master is outside the tree's mount namespace (CRIU's option)")
    p.add_argument("--file-locks", action="store_true", help=f"dump and restore the tree's file locks ({when})")
    p.add_argument("--network-lock", choices=tuple(criuopts.NETWORK_LOCKS), default=None,
                   help=f"how CRIU locks the network while connections are dumped and restored (CRIU's default: "
                        f"iptables; {when})")
    p.add_argument("--external", action="append", type=external_value, default=None, metavar="KIND[ID]:VALUE",
                   help="a CRIU --external value, repeatable; e.g. veth[eth0]:OUTER@BRIDGE on restore")


def external_value(text: str) -> str:
    try:
        return criuopts.check_external(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--external {text!r}: ")) from exc


def lazyd_options(args: argparse.Namespace) -> LazydOptions:
    return LazydOptions(fault_around=args.fault_around, chunk=args.chunk, drain_rate=args.drain_rate,
                        prefetch=args.prefetch, compress=args.compress,
                        sanitized=args.settings.sanitized)


def restore_from(args: argparse.Namespace, rep: Reporter) -> int:
    """restore --from HOST:PORT: always lazy, from a page server."""
    if args.secret_file is None or args.workdir is None:
        raise UsageError("--from HOST:PORT needs --secret-file FILE (the checkpoint's secret, mode 0600) and "
                         "--workdir DIR (where the checkpoint's metadata is fetched)")
    require_valid("--from", address.check_destination, args.source)
    require_valid("--secret-file", secret.check_file, args.secret_file, SECRET_EXPECTED)
    require_makeable_dir("--workdir", args.workdir)
    source = RemoteSource(args.source, args.secret_file, args.source_timeout)
    ls = remote.restore_remote(source, args.workdir, args.detach, lazyd_options(args), rep, criu_options(args))
    rep.result(lazy.summary_text(ls), "summary", action="restore", lazy=True, source=args.source, **asdict(ls))
    return 0


def prepare_restore(args: argparse.Namespace, rep: Reporter) -> int:
    """restore --prepare: fetch a served checkpoint's metadata into --images and describe its source there,
    so that a runtime's `criu restore --lazy-pages` (e.g. `runc restore --lazy-pages`) restores it lazily."""
    if args.source is None or args.secret_file is None or args.images is None:
        raise UsageError("--prepare needs --from HOST:PORT, --secret-file FILE and --images DIR (the directory the "
                         "runtime will restore from)")
    require_valid("--from", address.check_destination, args.source)
    require_valid("--secret-file", secret.check_file, args.secret_file, SECRET_EXPECTED)
    require_empty_dir("--images", args.images, UsageError)
    s = remote.prepare(RemoteSource(args.source, args.secret_file, args.source_timeout), args.images, rep,
                       args.settings.sanitized)
    rep.result(remote.prepare_text(s), "summary", action="prepare", **s)
    return 0


def cmd_hook(args: argparse.Namespace, rep: Reporter) -> int:
    """CRIU's plugin or action script: CRTOOLS_SCRIPT_ACTION says what CRIU is doing."""
    env = dict(os.environ)
    action = env.get("CRTOOLS_SCRIPT_ACTION", "")
    if action == livehook.ACTION:
        return cmd_live_dump(env, rep, args.settings.sanitized)
    if action not in hook.ACTIONS:
        return 0  # CRIU runs action scripts at every action; only some concern us
    res = hook.run(action, criuenv.images_dir_from_env(env), Path.cwd(), criuenv.pid_from_env(env),
                   criuenv.made_lazy_from_env(env), args.settings.sanitized)
    text = f"lazyrestore hook {res.action}: {res.outcome}: {res.detail}"
    if rep.json_mode:  # the plugin's call: both go to CRIU's log, the line for people and the event for runtimes
        rep.err.write(text + "\n")
    rep.result(text, "summary", **asdict(res))
    return 0


def cmd_live_dump(env: dict[str, str], rep: Reporter, sanitized: bool) -> int:
    """The plugin's live dump (LAZYRESTORE_LIVE): served until a destination has every page, else rolled back."""
    images = criuenv.images_dir_from_env(env)
    s = livehook.live_dump(env, images, Path.cwd(), rep, sanitized)
    rep.result(serve.summary_text(s), "summary", action=livehook.ACTION, **asdict(s))
    return 0


def cmd_index(args: argparse.Namespace, rep: Reporter) -> int:
    """Index a checkpoint CRIU wrote by itself (what the plugin does after every dump)."""
    require_dir("--images", args.images, "a directory of CRIU images")
    cid, lazy_pages, eager_pages = dumpindex.index_existing(args.images)
    rep.result(f"indexed checkpoint {cid} in {args.images}: {lazy_pages} lazy pages, {eager_pages} eager",
               "summary", action="index", images_dir=str(args.images), checkpoint_id=cid, lazy_pages=lazy_pages,
               eager_pages=eager_pages)
    return 0


def cmd_serve(args: argparse.Namespace, rep: Reporter) -> int:
    require_valid("--listen", address.parse_address, args.listen)
    if args.podman_in is not None or args.containerd_in is not None:
        return serve_archive(args, rep)
    if args.images is None:
        raise UsageError("serve needs --images DIR (a checkpoint directory), --podman-archive FILE (`podman "
                         "container checkpoint --export`) or --containerd-image FILE (`ctr images export`)")
    if args.unpack is not None:
        raise UsageError("serve --unpack: only with --podman-archive or --containerd-image (where to unpack it)")
    require_dir("--images", args.images, "a checkpoint directory")
    if args.kit is not None:
        require_empty_dir("--kit", args.kit, UsageError)
    s = serve.serve(args.images, args.listen, args.once, rep, args.settings.sanitized,
                    args.kit)
    rep.result(serve.summary_text(s), "summary", action="serve", **asdict(s))
    return 0


def serve_archive(args: argparse.Namespace, rep: Reporter) -> int:
    """serve --podman-archive|--containerd-image IN [--unpack DIR] [--kit OUT]: CRIU's images out of the runtime's
    archive into DIR, served; the kit is the same kind of archive without the pages (archives.py)."""
    from . import archives
    given = [k for k in archives.KINDS if getattr(args, k.replace("-", "_") + "_in") is not None]
    if len(given) > 1 or args.images is not None:
        raise UsageError("serve: give one of --images DIR, --podman-archive FILE or --containerd-image FILE")
    kind = given[0]
    option, archive = archives.KINDS[kind], getattr(args, kind + "_in")
    if not archive.is_file():
        raise UsageError(f"{option} {archive}: no such file; expected the archive of " + (
            "`podman container checkpoint --export FILE`" if kind == "podman" else
            "`ctr images export --skip-manifest-json FILE REF` of a checkpoint image"))
    unpacked = args.unpack or archives.default_unpack_dir(archive)
    require_empty_dir("--unpack", unpacked, UsageError)
    if args.kit is not None and (args.kit.exists() or not args.kit.parent.is_dir()):
        raise UsageError(f"--kit {args.kit}: expected a new file in an existing directory (with {option}: the "
                         "destination's archive)")
    archives.check(kind, archive)
    u = archives.unpack(kind, archive, unpacked, rep)
    sanitized = args.settings.sanitized
    if args.kit is None:
        s = serve.serve(u.images, args.listen, args.once, rep, sanitized)
    else:
        kit = args.kit
        with tempfile.TemporaryDirectory(prefix=".lazyrestore-kit-", dir=kit.parent) as tmp:
            s = serve.serve(u.images, args.listen, args.once, rep, sanitized, Path(tmp) / "kit",
                            lambda d: u.pack_kit(d, kit), archives.DEST_COMMAND[kind].format(kit=kit.name))
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
    if args.action == "service":
        return start_service(args, rep)
    h = testhosts.up(args.delay, args.rate)
    rep.result(f"test hosts up: {h.a} {h.veth_a} {h.addr_a}/{h.prefixlen} <-> {h.b} {h.veth_b} {h.addr_b}/{h.prefixlen}"
               f"; delay {h.delay_ms:g} ms and rate {h.rate_mbit:g} Mbit/s each way (0: none)\n"
               f"  run a command in one: lazyrestore testhosts exec a -- COMMAND", "summary", action="testhosts_up",
               **asdict(h))
    return 0


def start_service(args: argparse.Namespace, rep: Reporter) -> int:
    """testhosts service a|b --address IP -- CMD: CMD as the init of its own pid and network namespaces,
    joined to the host's bridge at IP (hostservice.py)."""
    from . import hostservice, testhosts
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise UsageError("testhosts service needs a command: lazyrestore testhosts service --host a|b --address IP -- COMMAND")
    if testhosts.exists() is None:
        raise UsageError("testhosts service: the test hosts are not up; run `lazyrestore testhosts up` first")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lazyrestore-service-", dir="/dev/shm"))
    s = hostservice.start(testhosts.host_name(args.host), workdir, cmd, args.address)
    rep.result(f"service pid {s.pid} at {s.address} on test host {args.host} (veth {s.outer}); output {s.log}\n"
               f"  checkpoint it from the host: lazyrestore testhosts exec {args.host} -- lazyrestore checkpoint "
               f"--pid {s.pid} --images DIR", "summary", action="testhosts_service", pid=s.pid, address=s.address,
               outer=s.outer, log=str(s.log))
    return 0


def service_address(text: str) -> str:
    from . import testhosts
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an IPv4 address in 10.231.0.0/24, got {text!r}") from exc
    net = ipaddress.IPv4Network(f"{testhosts.ADDR_A}/{testhosts.PREFIXLEN}", strict=False)
    if addr not in net or str(addr) in (testhosts.ADDR_A, testhosts.ADDR_B) or addr in (net.network_address,
                                                                                          net.broadcast_address):
        raise argparse.ArgumentTypeError(f"expected a free host address in {net} (not the test hosts' "
                                         f"{testhosts.ADDR_A} or {testhosts.ADDR_B}), got {text!r}")
    return str(addr)


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
    require_process(args.pid)
    require_new_images(args.images)
    require_valid("--listen", address.parse_address, args.listen)
    if args.secret_file is not None:
        require_valid("--secret-file", secret.check_file, args.secret_file, SECRET_EXPECTED_SHARED)
    run = serve.migrate if args.via_disk else migratelive.migrate_live
    cp, s = run(args.pid, args.images, args.listen, rep, args.settings.sanitized,
                criu_options(args), args.secret_file)
    if not s.delivered:
        raise DaemonFailed(f"the page server stopped before a destination had every page; the checkpoint in "
                           f"{args.images} is intact: `lazyrestore serve --images {args.images} --listen {args.listen}`")
    rep.result(serve.summary_text(s), "summary", action="migrate", checkpoint=asdict(cp), **asdict(s))
    return 0


def cmd_abort(args: argparse.Namespace, rep: Reporter) -> int:
    require_dir("--images", args.images, "a live migration's images directory")
    pid = migratelive.abort(args.images, args.kill_source)
    rep.result(f"asked the live migration of {args.images} (pid {pid}) to end and kill its source", "abort",
               images_dir=str(args.images), migrate_pid=pid)
    return 0


def cmd_status(args: argparse.Namespace, rep: Reporter) -> int:
    if args.images is not None:
        require_dir("--images", args.images, "a checkpoint directory")
    if args.workdir is not None:
        require_dir("--workdir", args.workdir, "a lazy restore's work dir")
    found = status.status(args.images, args.workdir)
    rep.result(status.status_text(found), "status", **found)
    return 0


def run_lazy_pages(lazyd_args: list[str]) -> int:
    try:
        status.exec_lazyd(lazypages_args.criu_lazy_pages_args(lazyd_args))
    except LazyRestoreError as exc:
        return report_error(Reporter(json_mode=False), exc.kind, str(exc), exc.exit_code)
    return 1


def cmd_inspect(args: argparse.Namespace, rep: Reporter) -> int:
    require_dir("--images", args.images, "a checkpoint directory")
    report = inspection.inspect(args.images)
    rep.result(inspection.report_text(report), "report", **report)
    return 0 if report["consistent"] else 7


def cmd_report(args: argparse.Namespace, rep: Reporter) -> int:
    if args.run_dir is None and args.images is None:
        raise UsageError("report needs RUN_DIR (a lazy restore's work dir) or --images DIR (a checkpoint: its stored "
                         "working set)")
    if args.run_dir is not None:
        require_dir("RUN_DIR", args.run_dir, "a lazy restore's run dir (the work dir `restore --lazy` prints)")
    if args.images is not None:
        require_dir("--images", args.images, "a checkpoint directory")
    if args.output is not None:
        require_valid("-o/--output", report.check_output, args.output, "a .png file in an existing directory")
    s = report.report(args.run_dir, args.images, args.output or report.default_output(args.run_dir, args.images))
    rep.result(report.summary_text(s), "report", **asdict(s))
    return 0


def cmd_demo(args: argparse.Namespace, rep: Reporter) -> int:
    from . import demo
    if args.workdir is not None:
        require_makeable_dir("--workdir", args.workdir)
    return demo.run(args.mib, args.workdir, rep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lazyrestore", description="Post-copy checkpoint, restore and migration on CRIU.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("checkpoint", help="dump a process tree and index its pages")
    c.add_argument("--pid", type=pid_number, required=True, help="root of the tree (init of its own pid namespace)")
    c.add_argument("--images", "-D", type=images_path, required=True, help="new or empty directory (tmpfs recommended)")
    c.add_argument("--leave-running", action="store_true", help="keep the tree running after the dump")
    add_criu_options(c, restoring=False)
    c.add_argument("--allow-host-pids", action="store_true",
                   help="accept a tree in the host pid namespace (its pids must be free where it is restored)")
    c.set_defaults(func=cmd_checkpoint)

    r = sub.add_parser("restore", help="verify a checkpoint and restore it (eagerly, or lazily with --lazy; "
                                       "from a page server with --from)")
    r.add_argument("--images", "-D", type=images_path, default=None, help="checkpoint directory")
    r.add_argument("--from", dest="source", metavar="HOST:PORT", default=None,
                   help="restore lazily from this page server (`lazyrestore serve` / `migrate`)")
    r.add_argument("--secret-file", type=file_path, default=None,
                   help="with --from: a copy of the checkpoint's lazyrestore/secret (mode 0600)")
    r.add_argument("--source-timeout", type=timeout_seconds, default=30,
                   help="with --from: seconds a lost page server may stay away before the tree is stopped (30)")
    r.add_argument("--lazy", action="store_true", help="resume at once; lr-lazyd places memory on demand and in the background")
    r.add_argument("--detach", action="store_true", help="with --lazy: return once the tree runs; see `status`")
    r.add_argument("--workdir", type=images_path, default=None,
                   help="CRIU work dir for logs and lazy-pages.socket (default DIR/lazyrestore/runs/restore-...); "
                        "with --from: a new dir for the fetched checkpoint (images/) and the restore (run/)")
    r.add_argument("--fault-around", type=power_of_two_size, default=64 << 10, help="bytes placed per fault (64K)")
    r.add_argument("--chunk", type=chunk_size, default=1 << 20, help="bytes per background drain step (1M)")
    r.add_argument("--prefetch", type=prefetch_mode, default="auto", metavar="auto|off|FILE",
                   help="place the checkpoint's working set (what earlier lazy restores faulted on) before the tree "
                        "asks: auto uses lazyrestore/workingset when there is one (default); a damaged or stale one "
                        "is ignored with a warning")
    r.add_argument("--compress", choices=("auto", "on", "off"), default="auto",
                   help="with --from: zstd for page data; auto (default) turns it on when the link, measured while "
                        "fetching ahead, is slower than 2 Gbit/s; all-zero blocks never travel as bytes")
    r.add_argument("--drain-rate", type=drain_rate, default=0, help="cap on the background drain, bytes/s (none)")
    add_criu_options(r, restoring=True)
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
    d.add_argument("--mib", type=demo_mib, default=1024, help="workload memory in MiB (default 1024)")
    d.add_argument("--workdir", type=images_path, default=None, help="where to keep images (default: a new dir in /dev/shm)")
    d.set_defaults(func=cmd_demo)

    rp = sub.add_parser("report", help="draw a lazy restore as a PNG: faults over time and address space, memory "
                                       "placed over time, fault latency")
    rp.add_argument("run_dir", nargs="?", type=images_path, default=None, metavar="RUN_DIR",
                    help="the restore's work dir (`restore --lazy` prints it): progress.jsonl and workingset")
    rp.add_argument("--images", "-D", type=images_path, default=None,
                    help="the checkpoint (its lazy index places the faults); alone: plot its stored working set")
    rp.add_argument("--output", "-o", type=file_path, default=None, metavar="OUT.png",
                    help="where to write the PNG (default RUN_DIR/report.png, or DIR/lazyrestore/report.png)")
    rp.set_defaults(func=cmd_report)

    sv = sub.add_parser("serve", help="serve a checkpoint to remote lazy restores (lr-pageserver)")
    sv.add_argument("--images", "-D", type=images_path, default=None, help="checkpoint directory (read only)")
    sv.add_argument("--podman-archive", dest="podman_in", type=file_path, default=None, metavar="FILE",
                    help="instead of --images: serve the checkpoint in this archive of `podman container checkpoint "
                         "--export` (or CRI-O's), unpacked first into --unpack DIR")
    sv.add_argument("--containerd-image", dest="containerd_in", type=file_path, default=None, metavar="FILE",
                    help="instead of --images: serve the checkpoint in this containerd checkpoint image (`ctr "
                         "images export --skip-manifest-json FILE REF` of `ctr containers checkpoint --task`), "
                         "unpacked first into --unpack DIR")
    sv.add_argument("--unpack", type=images_path, default=None, metavar="DIR",
                    help="with --podman-archive or --containerd-image: a new or empty directory to unpack CRIU's "
                         "images into (default: beside the archive, NAME.unpacked)")
    sv.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve on (port 0: any free one)")
    sv.add_argument("--once", action="store_true", help="stop after the first destination has every page")
    sv.add_argument("--kit", type=images_path, default=None, metavar="DIR",
                    help="write a destination kit into DIR (inventory.img, pstree.img, ids-*.img, "
                         "lazyrestore/source.json and the secret): copied to the destination, it is the images dir "
                         "for `runc restore`; with --podman-archive or --containerd-image a new FILE: the same kind of "
                         "archive without the pages, for `podman container restore --import FILE` or `ctr images "
                         "import`")
    sv.set_defaults(func=cmd_serve)

    hk = sub.add_parser("hook", help="run by CRIU (plugin or action-script): index after a dump, start lr-lazyd "
                                     "before a lazy restore, serve a dump the plugin made live (LAZYRESTORE_LIVE) "
                                     "(reads CRTOOLS_SCRIPT_ACTION, CRTOOLS_IMAGE_DIR)")
    hk.set_defaults(func=cmd_hook)

    ix = sub.add_parser("index", help="index a checkpoint CRIU wrote itself (lazy index, view, secret, manifest)")
    ix.add_argument("--images", "-D", type=images_path, required=True, help="checkpoint directory")
    ix.set_defaults(func=cmd_index)

    mg = sub.add_parser("migrate", help="live post-copy migration: serve a stopped tree until a destination has every page")
    mg.add_argument("--pid", type=pid_number, required=True, help="root of the tree (init of its own pid namespace)")
    mg.add_argument("--images", "-D", type=images_path, required=True, help="new or empty directory (tmpfs recommended)")
    mg.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve on (port 0: any free one)")
    mg.add_argument("--via-disk", action="store_true",
                    help="checkpoint every page to DIR first, then serve it (a checkpoint that can also be restored "
                         "again); default: live, only metadata is written and the lazy pages are served from the "
                         "source's memory, CRIU holding it stopped until a destination has every page")
    mg.add_argument("--secret-file", type=file_path, default=None,
                    help="serve with this pre-shared secret (32 bytes, mode 0600) instead of a new one: a destination "
                         "holding a copy can run `restore --from` before this command serves (it waits for it)")
    add_criu_options(mg, restoring=False)
    mg.set_defaults(func=cmd_migrate)

    ab = sub.add_parser("abort", help="end a live migration whose destination holds the tree: kills the source")
    ab.add_argument("--images", "-D", type=images_path, required=True, help="the live migration's images dir")
    ab.add_argument("--kill-source", action="store_true", required=True,
                    help="say it: the stopped source tree is killed, not resumed (a destination may run it)")
    ab.set_defaults(func=cmd_abort)

    th = sub.add_parser("testhosts", help="two network-namespace test hosts (a: 10.231.0.1, b: 10.231.0.2)")
    ths = th.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = ths.add_parser("up", help="create the test hosts (again)")
    up.add_argument("--delay", type=delay_ms, default=0.0, metavar="MS", help="one-way delay on each veth end (netem)")
    up.add_argument("--rate", type=rate_mbit, default=0.0, metavar="MBIT", help="rate limit on each veth end (netem)")
    down = ths.add_parser("down", help="remove the test hosts")
    ex = ths.add_parser("exec", help="run a command in a test host: exec a|b -- COMMAND [ARGS]")
    ex.add_argument("host", type=host_letter, help="a or b")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS]")
    sv2 = ths.add_parser("service", help="start a command in its own pid and network namespaces on a test host, "
                         "at an address of its own that migrations keep: service --host a|b --address IP -- COMMAND")
    sv2.add_argument("--host", type=host_letter, default="a", help="a (default) or b")
    sv2.add_argument("--address", type=service_address, required=True, help="its IPv4 address, e.g. 10.231.0.10")
    sv2.add_argument("--workdir", type=images_path, default=None, help="its output and helper files (default: /dev/shm)")
    sv2.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS]")
    for tp in (up, down, sv2):
        tp.add_argument("--json", action="store_true", help="print JSON events, one object per line")
    th.set_defaults(func=cmd_testhosts)

    for sp in (c, r, i, d, st, sv, mg, hk, ix, rp):
        sp.add_argument("--json", action="store_true", help="print JSON events, one object per line")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lazy-pages"]:  # every option goes to lr-lazyd as given (argparse would take -D itself)
        return run_lazy_pages(argv[1:])
    args = build_parser().parse_args(argv)
    args.settings = settings.from_env(os.environ)  # the environment, read once here
    rep = Reporter(json_mode=getattr(args, "json", False))
    func: Callable[[argparse.Namespace, Reporter], int] = args.func
    rep.event("started", command=args.command, pid=os.getpid())
    try:
        return func(args, rep)
    except LazyRestoreError as exc:
        return report_error(rep, exc.kind, exc.full_message(), exc.exit_code)
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
