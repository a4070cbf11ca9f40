"""lr-lazyd's copy of CRIU's page-server header (native/lazyd/criu_ps.h) against the CRIU tree the bootstrap built.

CRIU's struct page_server_iov is not packed and its layout changed in 4.2 (nr_pages u32 -> u64: 24 -> 32 bytes on
x86-64). A copy that no longer matches the CRIU lr-lazyd talks to shows only as a hung or garbled lazy restore; here
both definitions are compiled side by side and every field of CRIU's must sit where lr-lazyd's is, at the same size,
and the commands lr-lazyd sends must have CRIU's numbers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CRIU_TREE = Path(os.environ.get("CRIU_TREE", "/var/cache/lazyrestore/criu"))  # the Makefile's default
PAGE_XFER = CRIU_TREE / "criu" / "page-xfer.c"
CRIU_PS_H = REPO_ROOT / "native" / "lazyd" / "criu_ps.h"

pytestmark = [
    pytest.mark.skipif(not PAGE_XFER.is_file(), reason=f"no CRIU tree at {CRIU_TREE} (run `make bootstrap`)"),
    pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler"),
]


def criu_struct() -> tuple[str, list[str]]:
    """CRIU's struct page_server_iov definition and its field names, from page-xfer.c."""
    m = re.search(r"struct page_server_iov \{(.*?)\};", PAGE_XFER.read_text(), re.S)
    assert m, f"no struct page_server_iov in {PAGE_XFER}"
    fields = re.findall(r"\b(?:u8|u16|u32|u64)\s+(\w+);", m.group(1))
    assert fields, f"no fields parsed from CRIU's struct page_server_iov: {m.group(1)!r}"
    return m.group(0), fields


def criu_defines(names: list[str]) -> dict[str, int]:
    text = PAGE_XFER.read_text()
    out = {}
    for n in names:
        m = re.search(rf"^#define\s+{n}\s+(0x[0-9a-fA-F]+|\d+)\s*$", text, re.M)
        assert m, f"no #define {n} in {PAGE_XFER}"
        out[n] = int(m.group(1), 0)
    return out


def layouts(tmp_path: Path) -> dict[str, tuple[int, int]]:
    """{"criu.FIELD" | "lr.FIELD": (offset, size)}, "criu.sizeof"/"lr.sizeof", and lr-lazyd's PS_* values."""
    definition, fields = criu_struct()
    lines = [f'\tF(criu_page_server_iov, criu, {f}); F(page_server_iov, lr, {f});' for f in fields]
    src = "\n".join([
        "#include <stdio.h>", "#include <stddef.h>", "#include <stdint.h>",
        "typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;",
        definition.replace("struct page_server_iov", "struct criu_page_server_iov"),
        '#include "criu_ps.h"',
        '#define F(s, tag, f) printf(#tag "." #f " %zu %zu\\n", offsetof(struct s, f), sizeof(((struct s *)0)->f))',
        "int main(void)", "{", *lines,
        '\tprintf("criu.sizeof %zu 0\\nlr.sizeof %zu 0\\n", sizeof(struct criu_page_server_iov), '
        "sizeof(struct page_server_iov));",
        '\tprintf("PS_IOV_ADD_F %d 0\\nPS_IOV_GET %d 0\\nPS_IOV_CLOSE %d 0\\nPS_CMD_MASK %u 0\\n", PS_IOV_ADD_F, '
        "PS_IOV_GET, PS_IOV_CLOSE, PS_CMD_MASK);",
        "\treturn 0;", "}", ""])
    (tmp_path / "layout.c").write_text(src)
    exe = tmp_path / "layout"
    cc = subprocess.run(["cc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{REPO_ROOT / 'native' / 'include'}",
                         f"-I{CRIU_PS_H.parent}", "-o", str(exe), str(tmp_path / "layout.c")],
                        capture_output=True, text=True, timeout=60)
    assert cc.returncode == 0, f"{cc.stderr}\n{src}"  # a field of CRIU's that lr-lazyd lacks fails here
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=10, check=True).stdout
    return {name: (int(a), int(b)) for name, a, b in (line.split() for line in out.splitlines())}


def test_lr_lazyd_lays_out_the_header_as_the_criu_tree_does(tmp_path: Path) -> None:
    got = layouts(tmp_path)
    _, fields = criu_struct()
    for f in fields:
        assert got[f"lr.{f}"] == got[f"criu.{f}"], (
            f"page_server_iov.{f}: lr-lazyd has offset/size {got[f'lr.{f}']}, CRIU {CRIU_TREE.resolve().name} "
            f"{got[f'criu.{f}']}")
    assert got["lr.sizeof"] == got["criu.sizeof"], f"sizeof: lr-lazyd {got['lr.sizeof']}, CRIU {got['criu.sizeof']}"


def test_lr_lazyd_sends_criu_s_command_numbers(tmp_path: Path) -> None:
    got = layouts(tmp_path)
    want = criu_defines(["PS_IOV_ADD_F", "PS_IOV_GET", "PS_IOV_CLOSE", "PS_CMD_BITS"])
    assert got["PS_IOV_ADD_F"][0] == want["PS_IOV_ADD_F"]
    assert got["PS_IOV_GET"][0] == want["PS_IOV_GET"]
    assert got["PS_IOV_CLOSE"][0] == want["PS_IOV_CLOSE"]
    assert got["PS_CMD_MASK"][0] == (1 << want["PS_CMD_BITS"]) - 1
