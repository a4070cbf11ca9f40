"""criu-plugin/plugins-first.sh: may the plugin turn a restore lazy in this CRIU tree? (1 only when cr_restore_tasks
starts plugins before its first lazy-pages step.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "criu-plugin" / "plugins-first.sh"
PLUGINS = "\tif (cr_plugin_init(CR_PLUGIN_STAGE__RESTORE))\n\t\treturn -1;\n"
LAZY = "\tif (prepare_lazy_pages_socket() < 0)\n\t\tgoto clean_cgroup;\n"
EARLY_READ = "\tif (opts.lazy_pages && !kdat.has_uffd)\n\t\treturn -1;\n"


def answer(tmp_path: Path, body: str | None) -> str:
    if body is not None:
        (tmp_path / "criu").mkdir()
        (tmp_path / "criu" / "cr-restore.c").write_text(
            "static int other(void)\n{\n" + LAZY + "}\n\nint cr_restore_tasks(void)\n{\n" + body + "\treturn 0;\n}\n")
    res = subprocess.run(["sh", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=True)
    return res.stdout.strip()


@pytest.mark.parametrize("body, expected", [
    (PLUGINS + LAZY, "1"),            # CRIU 4.2.1's order
    (LAZY + PLUGINS, "0"),            # the socket prepared first
    (EARLY_READ + PLUGINS + LAZY, "0"),  # the option read before plugins start
    (PLUGINS, "0"),                   # no lazy step found: not known, so no
    (LAZY, "0"),
])
def test_order(tmp_path: Path, body: str, expected: str) -> None:
    assert answer(tmp_path, body) == expected


def test_a_tree_without_the_file_is_no(tmp_path: Path) -> None:
    assert answer(tmp_path, None) == "0"


def test_the_bootstrap_tree_is_yes() -> None:
    tree = Path("/var/cache/lazyrestore/criu")
    if not (tree / "criu" / "cr-restore.c").exists():
        pytest.skip("no CRIU tree at /var/cache/lazyrestore/criu (make build has not run)")
    assert answer(tree, None) == "1"
