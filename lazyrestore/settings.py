"""lazyrestore's settings from its environment, read once (cli.main) and passed down to what needs them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SANITIZED_ENV = "LAZYRESTORE_SANITIZED"


@dataclass(frozen=True)
class Settings:
    sanitized: bool = False  # run the ASan/UBSan builds of lr-lazyd and lr-pageserver (build/native/san/; tests)


def from_env(env: Mapping[str, str]) -> Settings:
    return Settings(sanitized=bool(env.get(SANITIZED_ENV)))
