"""Circles between files: Python modules that import each other (directly or round a loop), and C files that call
each other round a loop. `make cycles`; exit 1 when there is one, with each circle printed.

Python (the packages in PY_PACKAGES): every `import` and `from ... import` of the package (at any depth, in
functions too) between its modules.
C: each .c file of a directory compiled on its own (-c), then `nm`: a file depends on another when it uses a symbol
the other defines. A circle is a strongly connected component of more than one file (Tarjan).
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY_PACKAGES = ("lazyrestore", "bench")
C_DIRS = {"native/lazyd": ["-Inative/include", "-Inative/lazyd"],
          "native/pageserver": ["-Inative/include", "-Inative/pageserver"]}


def python_graph(pkg: Path) -> dict[str, set[str]]:
    mods = {p.stem for p in pkg.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for p in sorted(pkg.glob("*.py")):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(pkg.name + "."):
                deps.add(node.module.split(".")[1])  # type: ignore[union-attr]
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith(pkg.name + ".")}
        graph[p.stem] = (deps & mods) - {p.stem}
    return graph


def symbols(obj: Path, *flags: str) -> list[str]:
    out = subprocess.run(["nm", *flags, str(obj)], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


def c_graph(src_dir: Path, cflags: list[str], build: Path) -> dict[str, set[str]]:
    defined: dict[str, str] = {}
    used: dict[str, list[str]] = {}
    for src in sorted(src_dir.glob("*.c")):
        obj = build / f"{src.stem}.o"
        subprocess.run(["cc", "-c", "-std=gnu11", *cflags, "-o", str(obj), str(src)], cwd=REPO, check=True)
        defined.update({s: src.name for s in symbols(obj, "--defined-only", "-g")})
        used[src.name] = symbols(obj, "-u")
    return {f: {defined[s] for s in u if s in defined and defined[s] != f} for f, u in used.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(iter(it), None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.parse_args()
    graphs = {f"{pkg}/ (imports)": python_graph(REPO / pkg) for pkg in PY_PACKAGES}
    with tempfile.TemporaryDirectory() as tmp:
        for d, flags in C_DIRS.items():
            build = Path(tmp) / d.replace("/", "_")
            build.mkdir()
            graphs[f"{d}/ (calls)"] = c_graph(REPO / d, flags, build)
    bad = 0
    for name, graph in graphs.items():
        found = circles(graph)
        bad += len(found)
        print(f"{name}: {len(graph)} files, " + (f"{len(found)} circle(s)" if found else "no circle"))
        for comp in found:
            print(f"  {len(comp)} files: {' '.join(comp)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
