"""The source description: where a lazy restore driven by CRIU (a runtime) gets its pages.

A JSON file at IMAGES/lazyrestore/source.json (or WORKDIR/lazyrestore/source.json),
written by `lazyrestore serve --kit`, `lazyrestore restore --prepare` or by hand:

  {"lazyrestore_source": 1, "kind": "lazyrestore", "address": "10.231.0.1:7411",
   "secret_file": "secret", "source_timeout": 30}
  {"lazyrestore_source": 1, "kind": "criu", "address": "10.231.0.1:27000"}

kind "lazyrestore": an lr-pageserver (`lazyrestore serve`), with the checkpoint's
secret (a relative secret_file is relative to the description's directory);
kind "criu": CRIU's own page server (`criu dump --lazy-pages --page-server`,
`runc checkpoint --lazy-pages --page-server`), no secret. When CRIU starts a
lazy restore and finds one, the plugin (or `lazyrestore hook`) starts lr-lazyd
for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .address import check_destination
from .errors import UsageError
from .manifest import META_DIR
from .layout import SOURCE_NAME

FORMAT = 1
KINDS = ("lazyrestore", "criu")


@dataclass(frozen=True)
class SourceFile:
    """A parsed description. secret_file is absolute (None for kind "criu")."""

    path: Path
    kind: str
    address: str
    secret_file: Path | None
    source_timeout: int = 30


def find(images_dir: Path, work_dir: Path) -> Path | None:
    """The description CRIU's restore should use: the images dir's first, then the work dir's."""
    for d in (images_dir, work_dir):
        p = d / META_DIR / SOURCE_NAME
        if p.is_file():
            return p
    return None


def _field(raw: dict[str, Any], key: str, kind: type, path: Path, expected: str) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UsageError(f"{path}: field {key!r} is {value!r}; expected {expected}")
    return value


def read(path: Path) -> SourceFile:
    """Parse and check a description; UsageError names the file and the field."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable JSON source description ({exc})") from None
    if not isinstance(raw, dict) or raw.get("lazyrestore_source") != FORMAT:
        raise UsageError(f"{path}: expected a JSON object with \"lazyrestore_source\": {FORMAT}")
    kind = _field(raw, "kind", str, path, f"one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise UsageError(f"{path}: field 'kind' is {kind!r}; expected one of {', '.join(KINDS)}")
    address = _field(raw, "address", str, path, "HOST:PORT of the page server")
    try:
        check_destination(address)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    timeout = raw.get("source_timeout", 30)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 1 <= timeout <= 86400:
        raise UsageError(f"{path}: field 'source_timeout' is {timeout!r}; expected seconds from 1 to 86400")
    secret_file = None
    if kind == "lazyrestore":
        secret_file = path.parent / _field(raw, "secret_file", str, path, "the path of the checkpoint's secret")
    return SourceFile(path, kind, address, secret_file, timeout)


def write(directory: Path, kind: str, address: str, secret_file: str | None, source_timeout: int = 30) -> Path:
    """DIRECTORY/lazyrestore/source.json (atomically); returns its path."""
    check_destination(address)
    meta = directory / META_DIR
    meta.mkdir(parents=True, exist_ok=True)
    raw: dict[str, Any] = {"lazyrestore_source": FORMAT, "kind": kind, "address": address,
                           "source_timeout": source_timeout}
    if secret_file is not None:
        raw["secret_file"] = secret_file
    path = meta / SOURCE_NAME
    tmp = path.with_name(SOURCE_NAME + ".tmp")
    tmp.write_text(json.dumps(raw, indent=1) + "\n")
    os.replace(tmp, path)
    return path
