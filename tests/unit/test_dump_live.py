"""criu-plugin/dump-live.sh: may the plugin make a dump live in this CRIU tree? (1 only when cr_dump_tasks starts
plugins before anything reads --lazy-pages, --ps-socket or --status-fd, and cr_dump_finish serves the lazy pages
before the plugins' fini.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "criu-plugin" / "dump-live.sh"
PLUGINS = "\tif (cr_plugin_init(CR_PLUGIN_STAGE__DUMP))\n\t\tgoto err;\n"
CONNECT = "\tif (connect_to_page_server_to_send() < 0)\n\t\tgoto err;\n"
EARLY_READ = "\tif (opts.ps_socket >= 0)\n\t\tgoto err;\n"
SERVE = "\tif (!ret && opts.lazy_pages)\n\t\tret = cr_lazy_mem_dump();\n"
FINI = "\tcr_plugin_fini(CR_PLUGIN_STAGE__DUMP, ret);\n"


def answer(tmp_path: Path, dump: str | None, finish: str = SERVE + FINI) -> str:
    if dump is not None:
        (tmp_path / "criu").mkdir()
        (tmp_path / "criu" / "cr-dump.c").write_text(
            "static int cr_dump_finish(int ret)\n{\n" + finish + "\treturn ret;\n}\n\n"
            "int cr_dump_tasks(pid_t pid)\n{\n" + dump + "\treturn cr_dump_finish(0);\n}\n")
    res = subprocess.run(["sh", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=True)
    return res.stdout.strip()


@pytest.mark.parametrize("dump, finish, expected", [
    (PLUGINS + CONNECT, SERVE + FINI, "1"),      # CRIU 4.2.1's order
    (CONNECT + PLUGINS, SERVE + FINI, "0"),      # a page server connected before plugins start
    (EARLY_READ + PLUGINS, SERVE + FINI, "0"),   # the option read before plugins start
    (PLUGINS + CONNECT, FINI + SERVE, "0"),      # lazy pages served after the plugins' fini
    (PLUGINS, FINI, "0"),                        # no lazy step found: not known, so no
    (CONNECT, SERVE + FINI, "0"),
])
def test_order(tmp_path: Path, dump: str, finish: str, expected: str) -> None:
    assert answer(tmp_path, dump, finish) == expected


def test_a_tree_without_the_file_is_no(tmp_path: Path) -> None:
    assert answer(tmp_path, None) == "0"


def test_the_bootstrap_tree_is_yes() -> None:
    tree = Path("/var/cache/lazyrestore/criu")
    if not (tree / "criu" / "cr-dump.c").exists():
        pytest.skip("no CRIU tree at /var/cache/lazyrestore/criu (make build has not run)")
    assert answer(tree, None) == "1"
