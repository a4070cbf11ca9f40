"""Option types shared by the benches' argument parsers (argparse `type=` callables)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def positive(text: str) -> int:
    """A positive whole number."""
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def csv_ints(text: str) -> list[int]:
    """Sizes in MiB, comma-separated: 256,1024."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes in MiB such as 256,1024, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive sizes in MiB, got {text!r}")
    return values


def csv_choice(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """A type for a comma-separated list of some of choices."""
    def parse(text: str) -> list[str]:
        got = [x.strip() for x in text.split(",") if x.strip()]
        if not got or any(x not in choices for x in got):
            raise argparse.ArgumentTypeError(f"expected a list from {','.join(choices)}, got {text!r}")
        return got
    return parse
