"""bench/markers.py: bench/local.py rewriting BENCHMARKS.md keeps every other bench's marked section."""

from __future__ import annotations


from bench import markers


def section(name: str, body: str) -> str:
    return f"<!-- {name}:begin -->\n{body}\n<!-- {name}:end -->"


def test_every_marked_section_survives_a_rewrite() -> None:
    old = "# old report\n\n" + "\n\n".join(section(n, f"{n} table") for n in ("remote-bench", "coldstart", "compress"))
    new = markers.keep_remote(old, "# new report\n")
    assert new.startswith("# new report\n")
    assert "old report" not in new
    for name in ("remote-bench", "coldstart", "compress"):
        assert section(name, f"{name} table") in new


def test_a_half_section_is_not_kept_and_none_adds_nothing() -> None:
    old = "# old\n\n<!-- coldstart:begin -->\nno end marker\n" + section("compress", "c")
    new = markers.keep_remote(old, "# new\n")
    assert "no end marker" not in new and section("compress", "c") in new
    assert markers.keep_remote("# nothing marked\n", "# new\n") == "# new\n"
