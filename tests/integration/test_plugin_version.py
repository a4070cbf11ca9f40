"""The CRIU plugin in a CRIU it was not built for: it reads CRIU's `opts`, whose layout is that of the CRIU tree it
was built against, so it checks the running CRIU's version first and disables itself in another one.

Real `criu dump` and `criu restore` runs with `-L DIR` (CRIU's plugin directory) pointing at a plugin built into a
temporary directory: once for the running CRIU (a control: it indexes the dump), once for a made-up CRIU 0.0.0
(`make PLUGIN_CFLAGS=-DLR_CRIU_BUILT_FOR=...`). The disabled plugin must leave a dump alone (it succeeds, not
indexed), fail a restore whose images dir holds lazyrestore/source.json, and leave any other restore alone.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lazyrestore import criu, sample

REPO = Path(__file__).resolve().parents[2]
SOURCE = {"lazyrestore_source": 1, "kind": "criu", "address": "127.0.0.1:9"}


def build_plugin(dest: Path, built_for: str | None = None, *make_vars: str) -> Path:
    """The plugin built by the Makefile's own rule into dest (alone there: CRIU loads every .so of -L DIR)."""
    args = ["make", "-s", "--no-print-directory", "-C", str(REPO), f"NATIVE={dest}", f"{dest}/lazyrestore_plugin.so",
            *make_vars]
    if built_for is not None:
        args.append(f"PLUGIN_CFLAGS=-DLR_CRIU_BUILT_FOR='\"{built_for}\"'")
    res = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return dest


def criu_run(*args: str, libdir: Path, timeout: float = 120,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`criu ARGS -L libdir`: only the plugin in libdir, enabled as a runtime's CRIU would have it (env: more)."""
    return subprocess.run([criu.find_criu().path, *args, "-L", str(libdir)], capture_output=True, text=True,
                          timeout=timeout, env=criu_env(env), stdin=subprocess.DEVNULL)


def criu_env(more: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the plugin enabled and loaded from -L only, and more."""
    return {**{k: v for k, v in os.environ.items() if k not in ("LAZYRESTORE_PLUGIN", "CRIU_LIBS_DIR")}, **(more or {})}


def dump(workdir: Path, reaper, libdir: Path) -> tuple[Path, str, sample.Workload, str]:
    """A dumped 16 MiB workload: its images dir, CRIU's dump log, the workload and its checksum before the dump."""
    w = sample.start(workdir, 16)
    reaper.add(w.pid)
    checksum = w.request_report()["main"].checksum
    images = workdir / "images"
    images.mkdir()
    res = criu_run("dump", "-t", str(w.pid), "-D", str(images), "-o", "dump.log", libdir=libdir)
    log = (images / "dump.log").read_text()
    assert res.returncode == 0, res.stderr + log[-3000:]
    return images, log, w, checksum


def disabled_line(built_for: str) -> str:
    running = criu.find_criu().version
    return (f"lazyrestore: plugin built for CRIU {built_for}, running in CRIU {running}: disabled; "
            "rebuild it with `make plugin`")


def test_the_plugin_built_for_the_running_criu_works(workdir: Path, reaper) -> None:
    """The control: built for the running CRIU, the plugin indexes a dump and says nothing about versions."""
    libdir = build_plugin(workdir / "plugin")
    images, log, _, _ = dump(workdir, reaper, libdir)
    assert "disabled; rebuild it" not in log
    assert (images / "lazyrestore" / "manifest.json").is_file(), log[-3000:]


@pytest.fixture
def other_criu_plugin(workdir: Path) -> Path:
    return build_plugin(workdir / "plugin-0.0.0", built_for="0.0.0")


def test_in_another_criu_a_dump_goes_on_without_the_plugin(workdir: Path, reaper, other_criu_plugin: Path) -> None:
    images, log, _, _ = dump(workdir, reaper, other_criu_plugin)
    assert log.count(disabled_line("0.0.0")) == 1, log[-3000:]  # asked once: at init, not again at fini
    assert not (images / "lazyrestore").exists()  # the post-dump hook did not run


def test_in_another_criu_a_lazyrestore_restore_fails_and_others_restore(workdir: Path, reaper,
                                                                        other_criu_plugin: Path) -> None:
    images, _, w, before = dump(workdir, reaper, other_criu_plugin)
    (images / "lazyrestore").mkdir()
    (images / "lazyrestore" / "source.json").write_text(json.dumps(SOURCE))
    pidfile = workdir / "restored.pid"
    res = criu_run("restore", "-D", str(images), "-d", "--pidfile", str(pidfile), "-o", "refused.log",
                   libdir=other_criu_plugin)
    log = (images / "refused.log").read_text()
    assert res.returncode != 0, log[-3000:]
    assert disabled_line("0.0.0") in log
    assert "holds lazyrestore/source.json" in log and "refusing the restore" in log
    assert not pidfile.exists()

    # The same images without source.json are no concern of lazyrestore's: the disabled plugin stays out of the way.
    (images / "lazyrestore" / "source.json").unlink()
    res = criu_run("restore", "-D", str(images), "-d", "--pidfile", str(pidfile), "-o", "restore.log",
                   libdir=other_criu_plugin)
    log = (images / "restore.log").read_text()
    assert res.returncode == 0, res.stderr + log[-3000:]
    restored = sample.Workload(reaper.add(int(pidfile.read_text())), w.log, w.roles)
    assert "disabled; rebuild it" not in log  # the version is asked only when the plugin would read opts
    assert restored.request_report()["main"].checksum == before


def test_a_criu_that_reads_lazy_pages_before_plugins_gets_no_eager_restore(workdir: Path, reaper) -> None:
    """Built for a CRIU whose restore read --lazy-pages before starting plugins (PLUGINS_FIRST=0), the plugin cannot
    turn a restore lazy: it fails a restore of a served checkpoint asked without --lazy-pages, saying why."""
    libdir = build_plugin(workdir / "plugin-late", None, "PLUGINS_FIRST=0")
    images, _, _, _ = dump(workdir, reaper, libdir)
    (images / "lazyrestore" / "source.json").write_text(json.dumps(SOURCE))
    pidfile = workdir / "restored.pid"
    res = criu_run("restore", "-D", str(images), "-d", "--pidfile", str(pidfile), "-o", "refused.log", libdir=libdir)
    log = (images / "refused.log").read_text()
    assert res.returncode != 0, log[-3000:]
    assert "reads --lazy-pages before it starts plugins" in log and "refusing an eager restore" in log
    assert "made lazy" not in log and not pidfile.exists()
