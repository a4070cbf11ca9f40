"""scripts/cycles.py: the circles it finds in import and call graphs (strongly connected components)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .scripts import load

cycles = load("cycles")


def test_no_circle_in_a_chain() -> None:
    assert cycles.circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_a_circle_and_what_hangs_off_it() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert cycles.circles(g) == [["a", "b", "c"]]


def test_two_circles() -> None:
    g = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c", "a"}}
    assert sorted(cycles.circles(g)) == [["a", "b"], ["c", "d"]]


def test_python_imports_found_at_any_depth(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "x.py").write_text("from . import y\n")
    (pkg / "y.py").write_text("def f():\n    from .x import g\n")
    (pkg / "z.py").write_text("import pkg.x\n")
    assert cycles.python_graph(pkg) == {"x": {"y"}, "y": {"x"}, "z": {"x"}}
    assert cycles.circles(cycles.python_graph(pkg)) == [["x", "y"]]


def test_the_bench_package_is_checked_and_has_no_circle() -> None:
    assert cycles.PY_PACKAGES == ("lazyrestore", "bench")
    graph = cycles.python_graph(cycles.REPO / "bench")
    assert {"__main__", "local", "remote", "cells", "summaries", "render"} <= set(graph)
    assert "cells" in graph["local_report"] and "summaries" in graph["render"]
    assert cycles.circles(graph) == []


def test_the_tree_has_no_circle() -> None:
    """Issue 19's shape, kept: no import circle in lazyrestore/ or bench/, no call circle in native/lazyd or
    native/pageserver (what `make cycles` prints; each C file compiled on its own, ~3 s)."""
    res = subprocess.run([sys.executable, str(cycles.REPO / "scripts" / "cycles.py")], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 4 and all(line.endswith("no circle") for line in lines), res.stdout
    assert any(line.startswith("native/lazyd/ (calls)") for line in lines), res.stdout
