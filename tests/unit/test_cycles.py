"""scripts/cycles.py: the circles it finds in import and call graphs (strongly connected components)."""

from __future__ import annotations

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
