"""`python -m bench COMMAND [OPTIONS]`: run one benchmark suite, or render the reports from the committed summaries.

COMMAND is local, remote, coldstart, compress, soak (each with its own options: `python -m bench local --help`) or
render. Run it from the repository's root (as the Makefile does), with the venv's Python: bench is not installed. The process configuration a suite needs is applied here, before its module (and lazyrestore.testhosts,
which reads its prefix once) is imported: the CRIU baselines of local and remote run with LAZYRESTORE_PLUGIN=off
(CRIU as CRIU: lazyrestore's plugin would index every dump they time), and each suite that sets up test hosts
names them with its own LAZYRESTORE_TESTHOSTS_PREFIX (unless one is set), apart from the tests' and each other's.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Command:
    """A subcommand: the module whose main(argv) runs it, its help line, and the environment it sets (env) or
    defaults (env_default) before that module is imported."""

    module: str
    help: str
    env: dict[str, str] = field(default_factory=dict)
    env_default: dict[str, str] = field(default_factory=dict)


COMMANDS = {
    "local": Command("bench.local", "eager restore, CRIU's local lazy mode and lr-lazyd side by side (BENCHMARKS.md)",
                     env={"LAZYRESTORE_PLUGIN": "off"}),
    "remote": Command("bench.remote", "remote migration, lazyrestore against CRIU and eager (its section)",
                      env={"LAZYRESTORE_PLUGIN": "off"}, env_default={"LAZYRESTORE_TESTHOSTS_PREFIX": "lrbench"}),
    "coldstart": Command("bench.coldstart", "time to the first correct answer of a restored server (its section)",
                         env_default={"LAZYRESTORE_TESTHOSTS_PREFIX": "lrcs"}),
    "compress": Command("bench.compress", "migration over slow links with --compress off, on, auto (its section)",
                        env_default={"LAZYRESTORE_TESTHOSTS_PREFIX": "lrcz"}),
    "soak": Command("bench.soak", "migrate one workload back and forth for a while (RELIABILITY.md's soak)",
                    env_default={"LAZYRESTORE_TESTHOSTS_PREFIX": "lrsoak"}),
    "render": Command("bench.render", "run nothing: rewrite BENCHMARKS.md and RELIABILITY.md from the summaries"),
}


def parse_command(argv: list[str]) -> tuple[str, list[str]]:
    """The subcommand and the arguments that follow it (its own parser reads them, --help included)."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        sub.add_parser(name, help=cmd.help, add_help=False)
    args, rest = p.parse_known_args(argv)
    return args.command, rest


def main(argv: list[str]) -> int:
    name, rest = parse_command(argv)
    cmd = COMMANDS[name]
    os.environ.update(cmd.env)
    for key, value in cmd.env_default.items():
        os.environ.setdefault(key, value)
    module = importlib.import_module(cmd.module)
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
