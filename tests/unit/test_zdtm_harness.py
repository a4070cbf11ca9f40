"""scripts/zdtm.py (`make zdtm`): which tests it runs, how it changes its zdtm copy, how it reads zdtm's report."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import scripts


@pytest.fixture(scope="module")
def zdtm():
    return scripts.load("zdtm")


def test_the_set_is_criu_ci_lazy_set_from_the_sources(zdtm, tmp_path: Path) -> None:
    for sub, names in {"static": ["maps00", "maps04", "futex", "cmdlinenv00", "pipe00", "uffd-events"],
                       "transition": ["fork", "maps007", "lazy-thp", "epoll"]}.items():
        (tmp_path / "zdtm" / sub).mkdir(parents=True)
        for n in names:
            (tmp_path / "zdtm" / sub / f"{n}.c").write_text("")
    assert zdtm.select_tests(tmp_path) == ["zdtm/static/futex", "zdtm/static/maps00", "zdtm/static/uffd-events",
                                           "zdtm/transition/fork", "zdtm/transition/lazy-thp"]


def test_patches_apply_once_and_refuse_a_changed_zdtm(zdtm) -> None:
    text = "PLUGINS_DIR = os.path.join(\n    x)\n" + "        if not test_flag(self.__desc, 'suid'):\n"
    out = zdtm.patch(text)
    assert "LR_ZDTM_PLUGINS_DIR" in out and "LR_ZDTM_AS_ROOT" in out
    with pytest.raises(zdtm.HarnessError, match="tests run as root.*exactly once, found it 0 times"):
        zdtm.patch("PLUGINS_DIR = os.path.join(\n")


def test_the_real_zdtm_takes_the_patches(zdtm) -> None:
    real = zdtm.CRIU_TREE / "test" / "zdtm.py"
    if not real.exists():
        pytest.skip(f"{real} not built here (make bootstrap builds it)")
    assert "LR_ZDTM_AS_ROOT" in zdtm.patch(real.read_text())


def test_the_tap_report_is_read_and_an_unreported_test_is_missing(zdtm) -> None:
    tap = ("TAP version 13\n1..4\nok 1 - zdtm/static/maps00\nnot ok 2 - zdtm/static/futex flavor ns\n"
           "ok 3 - zdtm/transition/maps008 # SKIP no flavors\n")
    got = zdtm.parse_tap(tap, ["zdtm/static/maps00", "zdtm/static/futex", "zdtm/transition/maps008",
                               "zdtm/static/maps06"])
    assert [o.result for o in got] == ["pass", "fail", "skip: no flavors", "missing"]


def test_the_table_counts_passes_over_tests_that_ran(zdtm) -> None:
    results = {"lazy-pages": {"stock": {"zdtm/static/a": "pass", "zdtm/static/b": "skip: x"},
                              "lazyrestore": {"zdtm/static/a": "fail", "zdtm/static/b": "skip: x"}}}
    text = zdtm.table(results, ["zdtm/static/a", "zdtm/static/b"])
    assert "| static/a | pass | fail |" in text and "| **passed** | 1/1 | 0/1 |" in text


def test_sysctls_are_raised_and_put_back(zdtm, tmp_path: Path) -> None:
    low, high = tmp_path / "low", tmp_path / "high"
    low.write_text("0\n")
    high.write_text("8388608\n")
    old = zdtm.sysctls_set({low: 1, high: 4 << 20})
    assert low.read_text() == "1" and high.read_text() == "8388608\n" and old == {low: 0}
    zdtm.restore_sysctls(old)
    assert low.read_text() == "0"


def test_the_summary_has_a_row_per_mode_and_names_the_skips(zdtm) -> None:
    results = {"lazy-pages": {"stock": {"zdtm/static/a": "pass"}, "lazyrestore": {"zdtm/static/a": "fail"}},
               "lazy-migrate": {"lazyrestore": {"zdtm/static/a": "pass", "zdtm/transition/b": "skip: no flavors"}}}
    text = zdtm.summary_table(results, {"lazy-pages/stock": 46.2, "lazy-pages/lazyrestore": 57.0})
    assert "| lazy-pages | 1/1 | 46 | 0/1 | 57 | – |" in text
    assert "| lazy-migrate | – | – | 1/1 | 0 | transition/b (no flavors) |" in text
